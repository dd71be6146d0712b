"""Where a service's settings come from: its own ``GENWIRE_<SVC>_*`` variables, then the plain
``GENWIRE_*`` ones for the settings every process shares (``genwire.settings.SharedEnvSource``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest
from genwire_cli.settings_doc import SERVICES
from genwire_inference.config import InferenceSettings
from genwire_monitor.config import MonitorSettings
from genwire_postprocess.config import PostprocessSettings
from genwire_preprocess.config import PreprocessSettings
from genwire_stack.paths import StackPaths
from genwire_stack.secure import SecureStack
from genwire_stack.servers import Service
from pydantic import SecretStr, ValidationError

from genwire.settings import CommonSettings, ServiceSettings


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GENWIRE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("short", sorted(SERVICES))
def test_a_plain_shared_variable_reaches_every_service(
    short: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENWIRE_HOME", str(tmp_path))
    monkeypatch.setenv("GENWIRE_KAFKA_CLIENT", "librdkafka")
    monkeypatch.setenv("GENWIRE_TRACES_SAMPLE_RATIO", "0.25")
    cfg = SERVICES[short]()
    assert cfg.home == tmp_path
    assert cfg.repository == tmp_path / "models" / "repository"
    assert cfg.kafka_client == "librdkafka"
    assert cfg.traces_sample_ratio == 0.25


def test_the_services_own_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENWIRE_HOME", str(tmp_path / "shared"))
    monkeypatch.setenv("GENWIRE_POSTPROCESS_HOME", str(tmp_path / "own"))
    monkeypatch.setenv("GENWIRE_KAFKA_CLIENT", "librdkafka")
    monkeypatch.setenv("GENWIRE_POSTPROCESS_KAFKA_CLIENT", "aiokafka")
    cfg = PostprocessSettings()
    assert cfg.home == tmp_path / "own" and cfg.kafka_client == "aiokafka"
    assert PreprocessSettings().home == tmp_path / "shared"  # another service: the plain one
    assert PostprocessSettings(home=tmp_path / "given").home == tmp_path / "given"


def test_a_services_own_settings_are_read_with_its_prefix_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENWIRE_PREPROCESS_CONCURRENCY", "5")
    assert PreprocessSettings().concurrency == 5
    # The plain name would set nothing: refused, naming the one that does.
    monkeypatch.setenv("GENWIRE_CONCURRENCY", "3")
    with pytest.raises(ValidationError, match=r"GENWIRE_CONCURRENCY: .* GENWIRE_PREPROCESS_CONC"):
        PreprocessSettings()
    monkeypatch.delenv("GENWIRE_CONCURRENCY")
    monkeypatch.setenv("GENWIRE_PORT", "1")
    with pytest.raises(ValidationError, match=r"GENWIRE_PORT: .* the plain name is not read by it"):
        InferenceSettings()


@pytest.mark.parametrize("short", sorted(SERVICES))
def test_a_variable_under_a_services_prefix_that_names_no_setting_is_refused(
    short: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo or a removed setting stops the service, with the setting it may have meant."""
    prefix = f"GENWIRE_{short.upper()}_"
    monkeypatch.setenv(f"{prefix}SHUTDOWN_TIMEOUT", "30")
    with pytest.raises(ValidationError) as caught:
        SERVICES[short]()
    assert f"{prefix}SHUTDOWN_TIMEOUT: not a setting of this service" in str(caught.value)
    assert f"did you mean {prefix}SHUTDOWN_TIMEOUT_S?" in str(caught.value)


def test_the_setting_suggested_is_one_the_service_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway runs no stage consumer: ``OUTAGE_BUDGET_S`` would be refused too."""
    monkeypatch.setenv("GENWIRE_GATEWAY_OUTAGE_BUDGET", "30")
    with pytest.raises(ValidationError) as caught:
        SERVICES["gateway"]()
    assert "GENWIRE_GATEWAY_OUTAGE_BUDGET: not a setting of this service" in str(caught.value)
    assert "OUTAGE_BUDGET_S" not in str(caught.value)


def test_what_every_service_lets_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain names of shared settings (``GENWIRE_GATEWAY_TLS`` is one, though it begins
    like the gateway's own), the tools' variables, and a setting each service refuses for
    itself (the gateway runs no stage consumer: ``CONCURRENCY`` is not its own)."""
    monkeypatch.setenv("GENWIRE_GATEWAY_TLS", "on")
    monkeypatch.setenv("GENWIRE_GATEWAY_CA_FILE", "/nowhere/ca.pem")
    monkeypatch.setenv("GENWIRE_API_KEY", "gw-key")
    monkeypatch.setenv("GENWIRE_BENCH_GATEWAY_GRPC", "127.0.0.1:1")
    monkeypatch.setenv("GENWIRE_UNLOCKED", "1")
    for cls in SERVICES.values():
        cls()
    monkeypatch.setenv("GENWIRE_CONCURRENCY", "3")
    SERVICES["gateway"]()
    SERVICES["monitor"]()
    with pytest.raises(ValidationError, match="GENWIRE_CONCURRENCY"):
        SERVICES["postprocess"]()


def test_a_nested_setting_is_checked_key_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENWIRE_MONITOR_DRIFT__PSI_THRESHOLD", "0.3")
    assert MonitorSettings().drift.psi_threshold == 0.3
    monkeypatch.setenv("GENWIRE_MONITOR_DRIFT__PSI_THRESHLD", "0.3")
    with pytest.raises(ValidationError, match="GENWIRE_MONITOR_DRIFT__PSI_THRESHLD: not a set"):
        MonitorSettings()


def test_trace_content_is_postprocess_s_switch_under_its_plain_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not PostprocessSettings().trace_content
    monkeypatch.setenv("GENWIRE_TRACE_CONTENT", "true")  # as docs/architecture.md gives it
    assert PostprocessSettings().trace_content


def test_a_bad_plain_value_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENWIRE_KAFKA_CLIENT", "kafka-python")
    with pytest.raises(ValidationError, match="kafka_client"):
        InferenceSettings()


def test_the_stack_and_its_services_agree_on_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GENWIRE_HOME=/elsewhere make up`: the stack builds the model repository under that home,
    and each service it starts reads the same one (before, the services read
    ``GENWIRE_<SVC>_HOME`` only and looked under ``~/.cache/genwire``)."""
    monkeypatch.setenv("GENWIRE_HOME", str(tmp_path))
    stack = CommonSettings()
    assert stack.model_repository is None
    for short, settings_cls in SERVICES.items():
        service = Service(StackPaths.from_settings(stack), stack, short, port=18000)
        with monkeypatch.context() as env:
            for name, value in service.environment().items():
                env.setenv(name, value)
            assert (
                settings_cls().repository == stack.repository == tmp_path / "models" / "repository"
            )


def test_a_plain_variable_reaches_no_nested_setting_of_the_monitor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The monitor's nested settings (``GENWIRE_MONITOR_DRIFT__…``) are its own: a plain
    ``GENWIRE_DRIFT__…`` would set nothing, and is refused."""
    monkeypatch.setenv("GENWIRE_MONITOR_DRIFT__PSI_THRESHOLD", "0.3")
    assert MonitorSettings().drift.psi_threshold == 0.3
    for variable in ("GENWIRE_DRIFT__PSI_THRESHOLD", "GENWIRE_ERROR_SLO__OBJECTIVE"):
        with monkeypatch.context() as env:
            env.setenv(variable, "0.5")
            with pytest.raises(ValidationError, match=f"{variable}: each service reads"):
                MonitorSettings()
            PreprocessSettings()  # not a setting of preprocess: not its business


@pytest.mark.parametrize(
    ("variable", "refused"),
    [
        ("GENWIRE_GATEWAY_CONCURRENCY", True),
        ("GENWIRE_GATEWAY_KAFKA_COMMIT_INTERVAL_MS", True),
        ("GENWIRE_GATEWAY_KAFKA_SESSION_TIMEOUT_MS", False),  # its reply reader's group
        ("GENWIRE_MONITOR_KAFKA_COMMIT_INTERVAL_MS", True),  # it has COMMIT_INTERVAL_S
        ("GENWIRE_MONITOR_OUTAGE_BUDGET_S", True),
        ("GENWIRE_MONITOR_KAFKA_QUIET_FETCH_MAX_WAIT_MS", False),  # feedback and policies
        ("GENWIRE_PREPROCESS_KAFKA_COMMIT_INTERVAL_MS", False),  # a stage reads them all
    ],
)
def test_a_stage_setting_given_to_a_service_without_a_group_is_refused(
    variable: str, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = variable.split("_")[1].lower()
    monkeypatch.setenv(variable, "7000")  # no setting's default, within every bound
    if refused:
        with pytest.raises(ValidationError, match=f"{variable}: not read by this service"):
            SERVICES[short]()
    else:
        assert getattr(SERVICES[short](), variable.split("_", 2)[2].lower()) == 7000


@pytest.mark.parametrize(
    ("variable", "refused"),
    [
        ("GENWIRE_INFERENCE_REDIS_URL", True),  # inference uses no Redis
        ("GENWIRE_INFERENCE_REDIS_TIMEOUT_S", True),
        ("GENWIRE_MONITOR_TRITON_GRPC_URL", True),
        ("GENWIRE_MONITOR_MODEL_REPOSITORY", True),
        ("GENWIRE_PREPROCESS_TRITON_NICE", True),  # the stack's
        ("GENWIRE_POSTPROCESS_GATEWAY_TLS", True),  # a client's
        ("GENWIRE_GATEWAY_TRACE_CONTENT", True),  # postprocess's switch
        ("GENWIRE_GATEWAY_GATEWAY_TLS", True),  # the clients read the plain name only
        ("GENWIRE_PREPROCESS_REDIS_URL", False),  # a reader
        ("GENWIRE_GATEWAY_TRITON_ADMIN_KEY", False),  # read since this check came
        ("GENWIRE_INFERENCE_TRITON_ADMIN_KEY", False),
        ("GENWIRE_MONITOR_JAEGER_UI_URL", False),
    ],
)
def test_a_shared_setting_under_the_name_of_a_service_that_does_not_read_it_is_refused(
    variable: str, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    short, name = variable.split("_", 2)[1].lower(), variable.split("_", 2)[2]
    field = name.lower()
    plain, own = {
        "TRITON_NICE": ("5", "7"),
        "REDIS_TIMEOUT_S": ("5", "7"),
        "GATEWAY_TLS": ("off", "on"),
        "TRACE_CONTENT": ("false", "true"),
    }.get(name, ("plain:1", "own:2"))
    # The plain name is for every service and tool: one that does not read it lets it pass.
    monkeypatch.setenv(f"GENWIRE_{name}", plain)
    if field in CommonSettings.model_fields:
        SERVICES[short]()
    monkeypatch.setenv(variable, own)
    if refused:
        with pytest.raises(ValidationError, match=f"{variable}: not read by this service"):
            SERVICES[short]()
    else:
        value = getattr(SERVICES[short](), field)
        assert (value.get_secret_value() if isinstance(value, SecretStr) else value) == own


def test_the_base_class_refuses_no_plain_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ServiceSettings`` itself (the bench's relays, tests) reads the plain names as its own:
    a stack-only setting exported for the stack is no reason to stop it."""
    monkeypatch.setenv("GENWIRE_JAEGER_MEMORY_LIMIT", "2GiB")
    monkeypatch.setenv("GENWIRE_TRITON_NICE", "3")
    assert ServiceSettings().triton_nice == 3
    for cls in SERVICES.values():
        cls()

    class Unprefixed(ServiceSettings):  # a class with the plain prefix that declares one unread
        not_read: ClassVar[frozenset[str]] = frozenset({"triton_nice"})

    assert Unprefixed().triton_nice == 3


def test_postprocess_refuses_a_context_length_it_never_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Postprocess decodes what was generated: no context length is checked there, so one set
    for it would silently do nothing. Preprocess, which checks prompts against it, reads it."""
    with pytest.raises(ValidationError, match="POSTPROCESS_DEFAULT_CONTEXT_LENGTH: not read"):
        PostprocessSettings(default_context_length=4096)
    monkeypatch.setenv("GENWIRE_POSTPROCESS_DEFAULT_CONTEXT_LENGTH", "4096")
    with pytest.raises(ValidationError, match="POSTPROCESS_DEFAULT_CONTEXT_LENGTH: not read"):
        PostprocessSettings()
    monkeypatch.setenv("GENWIRE_PREPROCESS_DEFAULT_CONTEXT_LENGTH", "4096")
    assert PreprocessSettings().default_context_length == 4096


def test_a_refused_name_is_matched_as_the_settings_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings reads variables case-insensitively; so is the refusal."""
    monkeypatch.setenv("genwire_inference_redis_url", "redis://elsewhere:6379/0")
    with pytest.raises(ValidationError, match="GENWIRE_INFERENCE_REDIS_URL: not read"):
        InferenceSettings()


@pytest.mark.parametrize("short", sorted(SERVICES))
def test_what_a_service_declares_unread_it_does_not_read(short: str) -> None:
    """``not_read`` stays true: a field the service's code starts reading leaves it."""
    source = " ".join(
        path.read_text()
        for path in (Path(__file__).parents[2] / "services" / short / f"genwire_{short}").glob(
            "*.py"
        )
        if path.name != "config.py"
    )
    # Read through a property or a helper under another name.
    aliases = {"model_repository": "repository", "trace_url_template": "trace_url"}
    assert SERVICES[short].not_read
    for name in SERVICES[short].not_read:
        for read in (name, aliases.get(name, name)):
            # An attribute read, not a module of the library (``genwire.gateway_tls``).
            assert not re.search(rf"(?<!genwire)\.{read}\b", source), (
                f"genwire_{short} reads {name}"
            )


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("short", sorted(SERVICES))
def test_the_stack_sets_no_variable_a_service_refuses(
    short: str, secure: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack sets both names of what it decides (its value wins over a user's own
    variable), but not a service's own name for a setting that service refuses; in a secure
    stack too (its Kafka user, the Triton admin secret, TLS)."""
    stack = CommonSettings(home=tmp_path, model_repository=tmp_path / "repo")
    paths = StackPaths.from_settings(stack)
    security = None
    if secure:
        security = SecureStack(paths, "mtls")
        security.ensure()
    service = Service(
        paths, stack, short, port=18000, redis_url="redis://r:6379/0", security=security
    )
    env = service.environment()
    assert env["GENWIRE_REDIS_URL"] == "redis://r:6379/0"
    if "home" not in SERVICES[short].not_read:  # a user's own variable, which the stack's beats
        monkeypatch.setenv(f"GENWIRE_{short.upper()}_HOME", str(tmp_path / "a user's"))
    assert env["GENWIRE_MODEL_REPOSITORY"] == str(tmp_path / "repo")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = SERVICES[short]()  # refuses nothing it was given
    own = f"GENWIRE_{short.upper()}_"
    assert (f"{own}REDIS_URL" in env) == ("redis_url" not in cfg.not_read)
    assert (f"{own}MODEL_REPOSITORY" in env) == ("model_repository" not in cfg.not_read)
    if "redis_url" not in cfg.not_read:
        assert cfg.redis_url == "redis://r:6379/0"
    if "home" not in cfg.not_read:  # the stack's home wins over a user's own variable
        assert cfg.home == tmp_path
    if security is not None:
        assert cfg.kafka_sasl_username == short
        admin = "triton_admin_key" not in cfg.not_read
        assert (f"{own}TRITON_ADMIN_KEY" in env) == admin == (short in ("gateway", "inference"))


async def test_a_service_cannot_run_a_stage_consumer_on_settings_it_refuses() -> None:
    """``not_read`` is checked where the fields are read: a gateway or monitor that started a
    stage consumer (or followed the policies) would read them at their defaults."""
    from genwire_gateway.config import GatewaySettings

    from genwire.events import PreparedRequest
    from genwire.policyfeed import followed
    from genwire.service.runtime import ServiceRuntime
    from genwire.topics import Topic

    async def handler(event: PreparedRequest) -> list[object]:
        return []

    runtime = ServiceRuntime(GatewaySettings(), "gateway", set_global_tracer=False)
    with pytest.raises(RuntimeError, match="not_read"):
        runtime.consumer(Topic.PREPARED.value, PreparedRequest, handler)  # type: ignore[arg-type]
    monitor = ServiceRuntime(MonitorSettings(), "monitor", set_global_tracer=False)
    with pytest.raises(RuntimeError, match="not_read"):
        monitor.consumer(Topic.PREPARED.value, PreparedRequest, handler)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="policy feed reads it"):
        async with followed(runtime):
            pass


def test_the_stack_names_the_refused_variable_when_a_service_stops_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make up` quotes a service's last error: for a refused setting, pydantic's exception
    line says only that one failed; the stack quotes the entries below it too (not the values:
    they may be secrets), and nothing after them (the next run's log)."""
    import traceback

    from genwire_stack.health import last_words

    def refused() -> str:
        try:
            PreprocessSettings()
        except ValidationError:
            return traceback.format_exc()
        raise AssertionError("not refused")

    log = tmp_path / "preprocess.log"
    monkeypatch.setenv("GENWIRE_PREPROCESS_CONCURENCY", "3")
    monkeypatch.setenv("GENWIRE_PREPROCESS_REDIS_URL", "redis://:hunter2@nowhere:6379/0")
    log.write_text(
        refused()
        + "=== genwire supervisor: preprocess: pid 1 ended with exit code 1 after 1.5 s\n"
        + "WARNING connecting to rediss://:s3cret@elsewhere:6379/0\n"
    )
    words = last_words(log)
    assert words.startswith("last error: 'pydantic_core._pydantic_core.ValidationError: 1 ")
    assert "GENWIRE_PREPROCESS_CONCURENCY: not a setting of this service (did you mean" in words
    assert "hunter2" not in words and "errors.pydantic.dev" not in words
    assert "s3cret" not in words
    # A field's own error: its name, then its message.
    monkeypatch.delenv("GENWIRE_PREPROCESS_CONCURENCY")
    monkeypatch.setenv("GENWIRE_PREPROCESS_CONCURRENCY", "0")
    log.write_text(refused())
    assert "for PreprocessSettings concurrency Input should be greater than or equal to 1'" in (
        last_words(log)
    )


def test_a_map_setting_takes_its_entries_as_nested_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydantic-settings reads ``<MAP>__<key>`` as one entry of a map: any key is a setting."""
    monkeypatch.setenv("GENWIRE_MONITOR_WATCHED_GROUPS__mygroup", "mytopic")
    assert MonitorSettings().watched_groups["mygroup"] == "mytopic"
