"""``genwire.service`` resolves its names on first use: importing the package (or ``loop``
alone, as the benchmarks and the model tools do) does not load the service runtime."""

from __future__ import annotations

import subprocess
import sys

from genwire import service


def test_every_exported_name_resolves_to_its_modules_object() -> None:
    from genwire.service import http, runner, runtime

    modules = {"http": http, "runner": runner, "runtime": runtime}
    assert sorted(service._LAZY) == sorted(service.__all__)
    assert set(service.__all__) <= set(dir(service))
    for name, module in service._LAZY.items():
        assert getattr(service, name) is getattr(modules[module], name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        getattr(service, "no_such_name")  # noqa: B009
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_loop_loads_no_service_runtime() -> None:
    heavy = ("fastapi", "uvicorn", "aiokafka", "opentelemetry", "genwire.service.runtime")
    code = (
        "import sys; from genwire.service import loop; import genwire.service; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    # ... and the names still work from a fresh process
    code = "from genwire.service import run, ServiceRuntime; print(run.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "genwire.service.runner"
