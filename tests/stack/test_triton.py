"""Triton of the native stack: load a model through the repository API, infer over gRPC.

Triton's model repository is fixed when the server starts, so the test writes a tiny Python
backend model (named per test session) into the real repository, loads it with
``POST /v2/repository/models/<name>/load``, infers with tritonclient over gRPC, then unloads it and
deletes its folder. The model reports what ``GENWIRE_STUB_SITE_PACKAGES`` it saw and where numpy
came from, which proves the venv's packages reach Triton's Python stub.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from genwire_stack.default_model import DEFAULT_MODEL
from genwire_stack.health import free_port, http_status, wait_until
from genwire_stack.paths import StackPaths, site_packages
from genwire_stack.servers import Triton

from genwire.settings import CommonSettings

CONFIG = """\
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "SITE" data_type: TYPE_STRING dims: [ 2 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

MODEL_PY = textwrap.dedent(
    '''
    """Doubles X; reports the stub's site-packages variable and numpy's location."""
    import os
    import sys

    SITE = os.environ.get("GENWIRE_STUB_SITE_PACKAGES", "")
    if SITE and SITE not in sys.path:
        sys.path.insert(0, SITE)

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            site = np.array([SITE.encode(), np.__file__.encode()], dtype=np.object_)
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                responses.append(
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("Y", (x * 2).astype(np.float32)),
                         pb_utils.Tensor("SITE", site)]
                    )
                )
            return responses
    '''
)


@pytest.fixture
def test_model(infra: CommonSettings) -> Iterator[str]:
    """A throwaway model in the real repository, loaded, then unloaded and removed."""
    name = f"genwire-stack-selftest-{os.getpid()}"
    folder = Path(infra.repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "1" / "model.py").write_text(MODEL_PY)
    base = f"http://{infra.triton_http_url}"
    try:
        with httpx.Client(base_url=base, timeout=120, trust_env=False) as http:
            loaded = http.post(f"/v2/repository/models/{name}/load")
            assert loaded.status_code == 200, loaded.text
            yield name
            http.post(f"/v2/repository/models/{name}/unload")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_load_through_repository_api_and_infer_over_grpc(
    infra: CommonSettings, test_model: str
) -> None:
    client = grpcclient.InferenceServerClient(infra.triton_grpc_url)
    assert client.is_model_ready(test_model)
    x = np.array([1.0, 2.5, -3.0], dtype=np.float32)
    inp = grpcclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        test_model,
        [inp],
        outputs=[grpcclient.InferRequestedOutput("Y"), grpcclient.InferRequestedOutput("SITE")],
    )
    np.testing.assert_allclose(result.as_numpy("Y"), x * 2)
    seen_site, numpy_file = (v.decode() for v in result.as_numpy("SITE"))
    assert seen_site == str(site_packages()), "GENWIRE_STUB_SITE_PACKAGES did not reach the stub"
    assert numpy_file.startswith(seen_site), "the stub imported numpy from outside the venv"


def test_repository_index_lists_the_loaded_model(infra: CommonSettings, test_model: str) -> None:
    with httpx.Client(timeout=10, trust_env=False) as http:
        index = http.post(f"http://{infra.triton_http_url}/v2/repository/index").json()
    states = {entry["name"]: entry.get("state") for entry in index}
    assert states.get(test_model) == "READY"


@contextlib.contextmanager
def _serve_privately(infra: CommonSettings, repository: Path) -> Iterator[str]:
    """The command line the stack's supervisor restarts Triton with, on a private repository
    and free ports: yields its HTTP base URL once the server answers ready (nothing loaded
    through the repository API)."""
    settings = infra.model_copy(update={"model_repository": repository})
    triton = Triton(
        StackPaths.from_settings(settings),
        settings,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    log = (repository.parent / "triton.log").open("wb")
    server = subprocess.Popen(
        [*triton.command(), *triton.restart_arguments()],  # as its supervisor restarts it
        env={**os.environ, **triton.environment()},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{triton.http_port}"
    try:
        wait_until(
            lambda: server.poll() is not None or http_status(f"{base}/v2/health/ready") == 200,
            what="a private Triton",
            timeout_s=120.0,
        )
        assert server.poll() is None, (repository.parent / "triton.log").read_text()[-2000:]
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _model(repository: Path, name: str, code: str = MODEL_PY) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CONFIG)
    (repository / name / "1" / "model.py").write_text(code)


def test_a_restarted_triton_serves_the_default_model_before_it_answers_ready(
    infra: CommonSettings, tmp_path: Path
) -> None:
    # Requests flow again without waiting for the supervisor's after-restart step (seconds
    # on busy cores): the server loads the default model before it answers at all.
    repository = tmp_path / "repository"
    _model(repository, DEFAULT_MODEL)
    _model(repository, "other")  # a model the server must not load by itself
    with _serve_privately(infra, repository) as base:
        assert http_status(f"{base}/v2/models/{DEFAULT_MODEL}/ready") == 200
        assert http_status(f"{base}/v2/models/other/ready") != 200


BROKEN_PY = MODEL_PY + textwrap.dedent(
    """
    class TritonPythonModel(TritonPythonModel):
        def initialize(self, args):
            raise RuntimeError("this version cannot load")
    """
)


def test_a_restarted_triton_serves_without_a_default_model_it_cannot_load(
    infra: CommonSettings, tmp_path: Path
) -> None:
    # Missing (not built yet) or failing: the server still comes up, and the after-restart
    # step (or `genwire up`) builds, loads or reports it.
    repository = tmp_path / "repository"
    repository.mkdir()
    with _serve_privately(infra, repository) as base:
        assert http_status(f"{base}/v2/models/{DEFAULT_MODEL}/ready") != 200
        assert http_status(f"{base}/v2/health/live") == 200
    _model(repository, DEFAULT_MODEL, BROKEN_PY)
    with _serve_privately(infra, repository) as base:
        assert http_status(f"{base}/v2/models/{DEFAULT_MODEL}/ready") != 200
        assert http_status(f"{base}/v2/health/live") == 200


def _no_build(*args: object, **kwargs: object) -> str:
    raise AssertionError("the default model was built after a crash-restart")


def _restoring(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str | None]]:
    """Spies for a restore on a private Triton: building fails the test; what restores the
    models `genwire model load` served, and what brings the model up as `genwire up` does,
    are recorded (the latter answers version "7")."""
    import genwire_model
    from genwire_stack import default_model

    monkeypatch.setattr(genwire_model, "ensure_default_model", _no_build)
    restored: list[str] = []
    brought_up: list[str | None] = []
    monkeypatch.setattr(
        default_model, "restore_loaded_models", lambda cfg, base, out: restored.append(base)
    )

    def bring_up(cfg: CommonSettings, triton_http: str | None = None, out: object = None) -> str:
        brought_up.append(triton_http)
        return "7"

    monkeypatch.setattr(default_model, "ensure_model_loaded", bring_up)
    return restored, brought_up


@contextlib.contextmanager
def _restarted(infra: CommonSettings, repository: Path) -> Iterator[tuple[CommonSettings, str]]:
    """A private Triton started as its supervisor restarts it: the settings and ``host:port``
    a restore step is given."""
    with _serve_privately(infra, repository) as base:
        yield (
            infra.model_copy(update={"model_repository": repository}),
            base.removeprefix("http://"),
        )


def _name_versions(repository: Path, versions: str) -> None:
    """The default model's config.pbtxt names ``versions`` (a ``specific`` policy)."""
    config = repository / DEFAULT_MODEL / "config.pbtxt"
    config.write_text(CONFIG + f"version_policy: {{ specific: {{ versions: [ {versions} ] }} }}\n")


def test_a_crash_restart_serves_again_what_was_served_and_builds_nothing(
    infra: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The supervisor's after-restart step (`genwire default-model --restore`): the restarted
    # server loaded the default model as config.pbtxt names; the step keeps that version even
    # when the runtime's code changed on disk (which would make `genwire up` build a new one).
    from genwire_stack import default_model

    repository = tmp_path / "repository"
    _model(repository, DEFAULT_MODEL)
    restored, brought_up = _restoring(monkeypatch)
    with _restarted(infra, repository) as (settings, host):
        assert default_model.restore_after_restart(settings, host) == "1"
        assert restored == [f"http://{host}"]  # what `genwire model load` served comes back too
        assert brought_up == []
        assert http_status(f"http://{host}/v2/models/{DEFAULT_MODEL}/versions/1/ready") == 200


def test_a_named_version_that_is_gone_is_loaded_again_then_reported(
    infra: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config.pbtxt names versions 1 and 3; 3's folder is gone (Triton serves 1 without it):
    # 1 stays served, nothing is built, and the step fails naming 3 (the supervisor logs it).
    from genwire_stack import StackError, default_model

    repository = tmp_path / "repository"
    _model(repository, DEFAULT_MODEL)
    _name_versions(repository, "1, 3")
    restored, brought_up = _restoring(monkeypatch)
    said: list[str] = []
    with _restarted(infra, repository) as (settings, host):
        with pytest.raises(StackError, match=r"version\(s\) 3 that config.pbtxt names"):
            default_model.restore_after_restart(settings, host, said.append)
        assert http_status(f"http://{host}/v2/models/{DEFAULT_MODEL}/versions/1/ready") == 200
    assert any("version(s) 3 of 1, 3 not served" in line for line in said), said
    assert restored == [f"http://{host}"] and brought_up == []


def test_a_named_version_that_fails_takes_the_model_down_and_it_is_brought_up(
    infra: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Triton serves none of a model's versions when one of them fails to load: the step loads
    # once more (Triton's reason in its output), then brings the model up as `genwire up` does.
    from genwire_stack import default_model

    repository = tmp_path / "repository"
    _model(repository, DEFAULT_MODEL)
    (repository / DEFAULT_MODEL / "2").mkdir()
    (repository / DEFAULT_MODEL / "2" / "model.py").write_text(BROKEN_PY)
    _name_versions(repository, "1, 2")
    restored, brought_up = _restoring(monkeypatch)
    said: list[str] = []
    with _restarted(infra, repository) as (settings, host):
        assert default_model.restore_after_restart(settings, host, said.append) == "7"
    assert said[0].endswith("no version served after the restart: loading again"), said
    assert any("this version cannot load" in line for line in said), said
    assert brought_up == [host] and restored == []


def test_a_crash_restart_without_the_default_model_brings_it_up(
    infra: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Triton answers that no version is served, even after one more load (nothing was built
    # yet): the step brings the model up as `genwire up` does.
    from genwire_stack import default_model

    repository = tmp_path / "repository"
    repository.mkdir()
    restored, brought_up = _restoring(monkeypatch)
    with _restarted(infra, repository) as (settings, host):
        assert default_model.restore_after_restart(settings, host) == "7"
    assert brought_up == [host] and restored == []


def test_a_crash_restart_that_cannot_reach_triton_builds_nothing(
    infra: CommonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No answer is not "nothing served": the step fails, it does not build on a guess.
    from genwire_stack import StackError, default_model

    restored, brought_up = _restoring(monkeypatch)
    with pytest.raises(StackError, match="nothing built"):
        default_model.restore_after_restart(infra, f"127.0.0.1:{free_port()}")
    assert brought_up == [] and restored == []


def test_the_supervisor_restores_the_model_and_genwire_up_builds_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Wiring: Triton's after-restart step asks for --restore; the command without it (compose's
    # model-init, `genwire up`'s path) still builds what is missing.
    from genwire_cli.main import main
    from genwire_stack import default_model

    step = Triton(StackPaths.from_settings(CommonSettings()), CommonSettings()).after_restart()
    assert step is not None and step[1][3:5] == ["default-model", "--restore"]
    called: list[str] = []
    monkeypatch.setattr(
        default_model, "restore_after_restart", lambda *a, **k: called.append("restore") or "1"
    )
    monkeypatch.setattr(
        default_model, "ensure_model_loaded", lambda *a, **k: called.append("build") or "1"
    )
    assert main(["default-model", "--restore"]) == 0
    assert main(["default-model"]) == 0
    assert called == ["restore", "build"]
