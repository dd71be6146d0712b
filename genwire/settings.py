"""Settings every service shares; each service subclasses them with its own env prefix."""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from genwire import gosyntax

JAEGER_MEMORY_LIMIT_FLOOR = 256 * 2**20
"""The least ``jaeger_memory_limit`` accepted: 157 MiB of Jaeger's heap was live at rest
(docs/benchmarks.md); at a limit near that, its collector would run without pause."""


FETCH_WAIT_LIMIT_MS = 30_000
"""The longest fetch wait accepted: a fetch is a request like any other to the Kafka client,
and one held past its request timeout (aiokafka's ``request_timeout_ms``, 40 s) fails and
drops the connection, so the wait stays well under it."""


def default_home() -> Path:
    """Where genwire keeps downloads, builds, models, logs and state: outside any clone."""
    return Path.home() / ".cache" / "genwire"


KafkaClient = Literal["aiokafka", "librdkafka"]
"""The Kafka clients a data path can run on (``kafka_client``)."""

_KAFKA_SASL = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
"""Settings only a SASL_* ``kafka_security_protocol`` reads."""
_KAFKA_SSL = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
"""Settings only SSL and SASL_SSL read."""


class CommonSettings(BaseSettings):
    """Connection and telemetry settings, read from ``GENWIRE_*`` variables."""

    # A rule across fields (below) would print every value given, passwords included.
    model_config = SettingsConfigDict(
        env_prefix="GENWIRE_", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(default_factory=default_home, description="Cache and state root.")
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Kafka client of this process connects: PLAINTEXT (the default "
        "native stack), SSL, SASL_PLAINTEXT or SASL_SSL (`genwire up --secure`). The kafka_ssl_* "
        "settings need SSL or SASL_SSL, the kafka_sasl_* ones a SASL_* protocol: set with "
        "another, they are refused.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str = Field(
        "", description="SASL user (one per service in the secure stack: its ACLs follow it)."
    )
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password of kafka_sasl_username (never logged)."
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="CA certificate (PEM) the brokers' certificates are checked against "
        "(SSL/SASL_SSL); unset: the system's trust store.",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for brokers that ask for one (SSL)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Private key (PEM) of kafka_ssl_certfile."
    )
    kafka_client: KafkaClient = Field(
        "aiokafka",
        description="The Kafka client of the data path: every stage's consumer group and every "
        "service's event producer. aiokafka (pure Python, the default) or librdkafka "
        "(confluent-kafka; less CPU per record, docs/benchmarks.md). Other readers (the "
        "gateway's replies, the monitor, the span exporter) stay on aiokafka.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis connection URL. TLS and a password go in the URL: "
        "rediss://:PASSWORD@HOST:PORT/0?ssl_ca_certs=/path/ca.pem (the secure stack's form).",
    )
    gateway_tls: Literal["auto", "on", "off"] = Field(
        "auto",
        description="How a client (genwire CLI, bench, demo, GenwireClient) reaches the gateway: "
        "auto (TLS when a CA or client certificate below is set, else when the stack of "
        "GENWIRE_HOME is secure: its secure/ca.pem, and secure/client.pem with mtls), on (TLS; "
        "no CA file: the system's trust store) or off (plaintext).",
    )
    gateway_ca_file: Path | None = Field(
        None, description="CA (PEM) a client checks the gateway's certificate against."
    )
    gateway_client_certfile: Path | None = Field(
        None, description="Client certificate (PEM) a client presents to an mTLS gateway."
    )
    gateway_client_keyfile: Path | None = Field(
        None, description="Private key (PEM) of gateway_client_certfile."
    )
    triton_admin_key: SecretStr = Field(
        SecretStr(""),
        description="Secret sent (header genwire-triton-admin) with Triton's repository and "
        "model-config calls; a secure stack's Triton refuses them without it. Unset: "
        "<home>/secure/triton-admin-key if present, else nothing is sent.",
    )
    triton_grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC host:port.")
    triton_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="The native stack runs Triton this far below the other components' CPU "
        "priority (its nice value and, where the kernel groups sessions, its session's group). "
        "Where the model shares the cores with Kafka and the stages, its compute then yields "
        "to the records between stages: on 2 cores at 8 concurrent 200-token streams, chunks "
        "reached callers in bursts 0.3–1.5 s late at the same priority. 0: the same priority.",
    )
    kafka_jmx_port: int | None = Field(
        None,
        ge=1024,
        le=65533,  # node 3 of a cluster takes this + 2
        description="The native stack's broker serves JMX on 127.0.0.1 at this port (node n of a "
        "cluster at this port + n − 1), without authentication: for measuring, e.g. "
        "`python -m genwire_bench.census` counting the broker's requests. Refused with a secure "
        "stack. None (default): no JMX. Takes effect at the broker's next start.",
    )
    triton_http_url: str = Field("127.0.0.1:8000", description="Triton HTTP host:port.")
    jaeger_ui_url: str = Field(
        "http://127.0.0.1:16686", description="Jaeger UI and query API base URL."
    )
    jaeger_memory_limit: str = Field(
        "1GiB",
        description="Soft memory limit of the stack's Jaeger (Go's GOMEMLIMIT: bytes, or a "
        "number with B, KiB, MiB, GiB or TiB, at least 256MiB; off: none). Near it, its garbage "
        "collector runs more often instead of letting the heap double; it does not cap data "
        "that is live. Takes effect at Jaeger's next start (`genwire restart --only jaeger`).",
    )
    jaeger_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="The native stack runs Jaeger this far below the pipeline's CPU priority (its "
        "nice value and, where the kernel groups sessions, its session's group), level with "
        "Triton's default. Storing spans is not on any request's path, and Badger's periodic "
        "compactions take a core for several seconds: on 2 cores at the same priority one "
        "cost the pipeline up to 39 % of its rate while it ran (22 % at nice 10). Spans wait on "
        "otlp_spans meanwhile. 0: the same priority. Takes effect at Jaeger's next start.",
    )
    jaeger_span_ttl: str = Field(
        "72h",
        description="How long the stack's Jaeger keeps a span (Badger's TTL, a Go duration of "
        "at least 1s: 72h, 24h, 90m). Jaeger's disk grows with what it keeps. Applies to spans "
        "written after Jaeger's next start; those stored before keep the TTL they had.",
    )
    trace_url_template: str = Field(
        "http://127.0.0.1:8090/traces/{trace_id}",
        description="Where trace links point; {trace_id} is replaced. Default: the monitor's "
        "trace view (the native Jaeger has no UI); compose: the Jaeger UI's /trace/{trace_id}.",
    )
    model_repository: Path | None = Field(
        None, description="Triton model repository; default: <home>/models/repository."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(False, description="Log JSON lines (with trace ids) instead of text.")
    trace_content: bool = Field(
        False,
        description="Opt in to the completion's text on postprocess's span (`gen_ai.completion`; "
        "off: none is recorded). The other services record no text whatever it says; an API "
        "key's `--capture-content` is the gateway's per-key switch.",
    )
    traces_sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Head sampling ratio for new traces."
    )

    @model_validator(mode="after")
    def _kafka_security_used(self) -> CommonSettings:
        """Refuse Kafka TLS or SASL settings the protocol would ignore: a CA file or a SASL
        user set with PLAINTEXT would otherwise connect in the clear without a word."""
        protocol = self.kafka_security_protocol
        uses_sasl, uses_ssl = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
        sasl = [] if uses_sasl else [n for n in _KAFKA_SASL if self._kafka_given(n)]
        ssl = [] if uses_ssl else [n for n in _KAFKA_SSL if self._kafka_given(n)]
        if not sasl and not ssl:
            return self
        plain = str(CommonSettings.model_config.get("env_prefix") or "").upper()
        own = str(self.model_config.get("env_prefix") or "").upper()
        names = ", ".join(f"{plain}{n.upper()}" for n in sasl + ssl)
        if (uses_sasl or sasl) and (uses_ssl or ssl):
            wanted = "SASL_SSL"
        else:
            wanted = "SASL_SSL or SASL_PLAINTEXT" if sasl else "SSL or SASL_SSL"
        also = f" (this service reads each also as {own}<NAME>)" if own != plain else ""
        raise ValueError(
            f"{names}: set, but {plain}KAFKA_SECURITY_PROTOCOL is {protocol}, which ignores "
            f"{'them' if len(sasl + ssl) > 1 else 'it'} (Kafka would be reached without that "
            f"TLS or SASL login): set {plain}KAFKA_SECURITY_PROTOCOL to {wanted}, or unset "
            f"{'them' if len(sasl + ssl) > 1 else 'it'}{also}"
        )

    def _kafka_given(self, name: str) -> bool:
        value = getattr(self, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        # The mechanism has a default: given only when set (to anything).
        return name in self.model_fields_set if name == "kafka_sasl_mechanism" else bool(value)

    @field_validator(*_KAFKA_SSL, mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # Set but empty (compose's ${VAR:-} passing nothing on): unset, not the directory "."
        return None if value == "" else value

    @field_validator("jaeger_memory_limit")
    @classmethod
    def _go_memory_limit(cls, value: str) -> str:
        if value == "":  # set but empty: the default, as compose's ${VAR:-default} reads it
            return str(cls.model_fields["jaeger_memory_limit"].default)
        # Go aborts at start on a malformed value; a tiny one makes its collector run nonstop.
        if value != "off" and gosyntax.byte_count(value) < JAEGER_MEMORY_LIMIT_FLOOR:
            raise ValueError("jaeger_memory_limit must be at least 256MiB (or off)")
        return value

    @field_validator("jaeger_span_ttl")
    @classmethod
    def _go_span_ttl(cls, value: str) -> str:
        if value == "":  # set but empty: the default, as compose's ${VAR:-default} reads it
            return str(cls.model_fields["jaeger_span_ttl"].default)
        # Badger expires a span TTL after its write: under a second, spans vanish as written.
        if gosyntax.duration_ns(value) < 10**9:
            raise ValueError("jaeger_span_ttl must be at least 1s")
        return value

    @field_validator("trace_url_template")
    @classmethod
    def _has_trace_id(cls, value: str) -> str:
        if "{trace_id}" not in value:
            raise ValueError("trace_url_template must contain {trace_id}")
        return value

    def trace_url(self, trace_id: str) -> str:
        """The link to one trace (demo output, alert links): ``trace_url_template`` filled in."""
        return self.trace_url_template.replace("{trace_id}", trace_id)

    @property
    def repository(self) -> Path:
        """The Triton model repository in use."""
        return self.model_repository or self.home / "models" / "repository"


STAGE_ONLY = frozenset(
    {
        "concurrency",
        "outage_budget_s",
        "retry_backoff_s",
        "retry_probe_s",
        "replay_delay_s",
        "max_replays",
        "drain_timeout_s",
        "kafka_fetch_max_wait_ms",
        "kafka_quiet_fetch_max_wait_ms",
        "kafka_commit_interval_ms",
        "kafka_session_timeout_ms",
    }
)
"""The settings of a consumer stage's group (``ServiceRuntime.consumer`` and the retry replayer
read them); a service without one declares those it never reads in ``not_read``."""

STACK_ONLY = frozenset(
    {"triton_nice", "kafka_jmx_port", "jaeger_memory_limit", "jaeger_nice", "jaeger_span_ttl"}
)
"""Shared settings only the native stack reads (it starts Triton, the broker and Jaeger with
them): every service declares them in ``not_read``."""

CLIENT_ONLY = frozenset(
    {"gateway_tls", "gateway_ca_file", "gateway_client_certfile", "gateway_client_keyfile"}
)
"""Shared settings of the gateway's clients (the CLI, the bench, the demo, ``GenwireClient``:
``genwire.gateway_tls`` reads their plain names): every service declares them in ``not_read``."""


class SharedEnvSource(EnvSettingsSource):
    """The plain ``GENWIRE_<NAME>`` variables of :class:`CommonSettings`' fields, for a service
    whose own prefix is ``GENWIRE_<SVC>_``: one variable sets it for every service (the stack
    exports ``GENWIRE_HOME``, users ``GENWIRE_KAFKA_CLIENT``), and the service's own variable
    wins. A service's own fields (port, concurrency, …) are read with its prefix only."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, env_prefix=CommonSettings.model_config.get("env_prefix"))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name not in CommonSettings.model_fields:
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        # A nested field (the monitor's ``drift``, its SLOs) is gathered from ``<prefix>NAME__KEY``
        # variables beside ``get_field_value``: only the shared fields may come from here.
        return {k: v for k, v in super().__call__().items() if k in CommonSettings.model_fields}


class ServiceSettings(CommonSettings):
    """What every long-running service has on top: a name and a health/metrics port.

    A subclass reads ``GENWIRE_<SVC>_<NAME>``; the shared settings also fall back to
    ``GENWIRE_<NAME>`` (:class:`SharedEnvSource`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared = SharedEnvSource(settings_cls)
        return init_settings, env_settings, shared, dotenv_settings, file_secret_settings

    service_name: str = Field("genwire", description="OpenTelemetry service.name and group id.")
    host: str = Field("127.0.0.1", description="Address the health/metrics server binds.")
    port: int = Field(8091, description="Port of /healthz, /readyz and /metrics.")
    concurrency: int = Field(64, ge=1, description="Records processed at once by the consumer.")
    outage_budget_s: float = Field(
        300.0,
        gt=0,
        description="How long a record waits out a dependency (Kafka, Redis, Triton) that is "
        "down, retrying with backoff, before it is parked on genwire.retry; if even that cannot "
        "be published for this long, the service exits (its supervisor restarts it).",
    )
    retry_backoff_s: float = Field(
        0.2, gt=0, description="First retry delay; doubles each time up to retry_backoff_max_s."
    )
    retry_backoff_max_s: float = Field(10.0, gt=0, description="Longest delay between retries.")
    retry_probe_s: float = Field(
        1.0,
        gt=0,
        description="While records wait for a dependency, one of them retries at least this "
        "often; when it succeeds, every record waiting for that dependency retries at once "
        "(the others' backoff may have grown to retry_backoff_max_s).",
    )
    replay_delay_s: float = Field(
        60.0,
        ge=0,
        description="A parked record is replayed from genwire.retry after this delay, doubled "
        "for each earlier replay.",
    )
    max_replays: int = Field(
        3,
        ge=0,
        description="Replays from genwire.retry before a record is dead-lettered with an "
        "error result.",
    )
    stall_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A partition with work that made no progress (no record finished, no "
        "commit) for this long is stalled: /readyz fails and genwire_partition_stalled is 1. "
        "A record the producer has held this long without the broker's acknowledgement fails "
        "/readyz too (genwire_producer_stuck is 1).",
    )
    unready_after_s: float = Field(
        5.0,
        ge=0,
        description="A dependency down for longer than this makes /readyz fail (and say why).",
    )
    drain_timeout_s: float = Field(
        15.0,
        gt=0,
        description="On a rebalance, how long records of revoked partitions may finish before "
        "they are cancelled (their new owner handles them).",
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=6_000,
        description="Consumer group session timeout: how long a crashed instance keeps its "
        "partitions before the group moves them.",
    )
    kafka_fetch_max_wait_ms: int = Field(
        500,
        ge=0,
        le=FETCH_WAIT_LIMIT_MS,
        description="How long the broker holds a fetch of the service's event consumer that "
        "finds no record (fetch.min.bytes is 1, so a fetch returns at the first record: this "
        "sets only how often an idle consumer polls).",
    )
    kafka_quiet_fetch_max_wait_ms: int = Field(
        5_000,
        ge=0,
        le=FETCH_WAIT_LIMIT_MS,
        description="The same for the service's consumers of topics the requests do not "
        "pass through (its retry replayer, inference's control reader, the policy feed, the "
        "monitor's feedback source): they poll while the pipeline is busy too, and a record "
        "still ends their fetch at once.",
    )
    kafka_commit_interval_ms: int = Field(
        250,
        ge=0,
        le=10_000,
        description="Finished records' offsets are committed at most this often (each only "
        "after all its outputs are acknowledged; longer: fewer commit round trips, more "
        "records redelivered after a crash; 250 rather than 50: a quarter of the commits, "
        "0.2–1.5 core-ms less broker CPU per request, docs/benchmarks.md).",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="The service's event loop: uvloop (C), asyncio (the standard library's), "
        "or auto: uvloop when it is installed, else asyncio.",
    )
    redis_timeout_s: float = Field(
        2.0, gt=0, description="Timeout of one Redis command (connection errors are retried)."
    )
    shutdown_timeout_s: float = Field(20.0, gt=0, description="How long stop waits for work.")
    http_keep_alive_s: int = Field(
        75,
        ge=1,
        description="How long the HTTP port keeps an idle keep-alive connection open. Longer "
        "than httpx's and the OpenAI SDK's pools (5 s) and common proxies' (60 s): a server "
        "that closes first races the client's next request on that connection, which then "
        "fails with a reset (uvicorn's own default is 5 s).",
    )
    tls_certfile: Path | None = Field(
        None,
        description="Certificate chain (PEM): when set, the service's HTTP port (and the "
        "gateway's gRPC port) serve TLS only.",
    )
    tls_keyfile: Path | None = Field(None, description="Private key (PEM) of tls_certfile.")
    tls_client_ca_file: Path | None = Field(
        None,
        description="mTLS: when set (with tls_certfile), every client must present a certificate "
        "signed by this CA (PEM); a client without one is refused during the handshake.",
    )

    not_read: ClassVar[frozenset[str]] = frozenset()
    """Fields this service has no use for: of :data:`STAGE_ONLY` in the gateway and the
    monitor (they run no stage consumer), :data:`STACK_ONLY` and :data:`CLIENT_ONLY` in every
    service, and the shared settings of what the service does not use (Redis, Triton, Jaeger).
    A service's own field given a value stops it at start; so does a shared one set in the
    process environment under the service's own ``GENWIRE_<SVC>_<NAME>``, while the plain
    ``GENWIRE_<NAME>`` is for every service and tool, and one that does not use it lets it
    pass. (The services read no ``.env`` file; a shared field given as an argument passes.)"""

    @model_validator(mode="after")
    def _nothing_ignored(self) -> ServiceSettings:
        prefix = str(self.model_config.get("env_prefix") or "")
        # Own fields given by any source (the environment's shared ones: unread_variables).
        own = {name for name in self.not_read if name not in CommonSettings.model_fields}
        given = own & self.model_fields_set
        if given:
            names = ", ".join(f"{prefix}{name.upper()}" for name in sorted(given))
            raise ValueError(
                f"{names}: not read by this service (it has no use for it, or reads it under "
                "other settings; docs/settings.md): unset it"
            )
        return self

    @model_validator(mode="after")
    def _every_variable_read(self) -> ServiceSettings:
        """Refuse what the environment sets that no setting reads: a variable under the
        service's own prefix that names none of its settings (a typo, a removed setting), and
        the plain ``GENWIRE_<NAME>`` of a setting each service has for itself (``CONCURRENCY``,
        ``PORT``): read under ``GENWIRE_<SVC>_<NAME>`` only, so the plain one would do nothing."""
        problems = unread_variables(type(self), os.environ)
        if problems:
            raise ValueError("; ".join(problems) + " (docs/settings.md)")
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> ServiceSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_certfile is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_certfile and tls_keyfile")
        return self


def unread_variables(cls: type[ServiceSettings], environ: Mapping[str, str]) -> list[str]:
    """What ``environ`` sets for ``cls`` that it would not read (``_every_variable_read``), one
    line each, with the setting it may have meant."""
    plain = str(CommonSettings.model_config.get("env_prefix") or "").upper()
    prefix = str(cls.model_config.get("env_prefix") or "").upper()
    if not prefix or prefix == plain:  # a class read under the plain names: every tool's too
        return []
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "").upper()
    shared = {f"{plain}{name}".upper() for name in CommonSettings.model_fields}
    own = [
        name
        for name in cls.model_fields
        if name not in CommonSettings.model_fields and name not in cls.not_read
    ]
    problems = []
    for variable in sorted({key.upper() for key in environ}):  # read case-insensitively
        if variable.startswith(prefix) and variable not in shared:  # GENWIRE_GATEWAY_TLS: shared
            rest = variable[len(prefix) :]
            if rest.lower() in cls.not_read:  # a setting it has no use for (Redis, …)
                problems.append(
                    f"{variable}: not read by this service (it has no use for it, or reads it "
                    "under other settings)"
                )
            elif not _names_a_field(cls, rest.lower(), delimiter.lower()):
                read = [name for name in cls.model_fields if name not in cls.not_read]
                near = difflib.get_close_matches(rest.lower(), read, 1)
                hint = f" (did you mean {prefix}{near[0].upper()}?)" if near else ""
                problems.append(f"{variable}: not a setting of this service{hint}")
        elif variable.startswith(plain) and variable not in shared:
            rest = variable[len(plain) :].lower()
            head = rest.split(delimiter.lower(), 1)[0] if delimiter else rest
            if head in own:
                problems.append(
                    f"{variable}: each service reads this setting under its own name (here "
                    f"{prefix}{rest.upper()}); the plain name is not read by it"
                )
    return problems


def _names_a_field(cls: type[BaseModel], name: str, delimiter: str) -> bool:
    """Whether ``name`` (lower case) is a field of ``cls``, or with ``delimiter`` a path to a
    field of a nested model (``drift__psi_threshold``)."""
    if name in cls.model_fields:
        return True
    if not delimiter or delimiter not in name:
        return False
    head, rest = name.split(delimiter, 1)
    field = cls.model_fields.get(head)
    if field is None:
        return False
    for kind in _kinds(field.annotation):  # ``Model | None`` and the like: each alternative
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if _names_a_field(kind, rest, delimiter):
                return True
        elif kind is dict or typing.get_origin(kind) in (dict, Mapping):
            return True  # a map's entry: ``WATCHED_GROUPS__<group>``, any key
    return False


def _kinds(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (``X | None``), else the annotation itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)
