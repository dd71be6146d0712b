"""docs/settings.md: every setting of every service, generated from the settings classes.

``python -m genwire_cli.settings_doc > docs/settings.md`` writes it; a test keeps the file equal to
what the classes say, so a new field is documented the day it is added (its ``description`` is
the text). Each row names the environment variable that sets it.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any

from genwire_gateway.config import GatewaySettings
from genwire_inference.config import InferenceSettings
from genwire_monitor.config import MonitorSettings
from genwire_postprocess.config import PostprocessSettings
from genwire_preprocess.config import PreprocessSettings
from genwire_stack.variables import TOOL_VARIABLES
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from genwire.settings import CommonSettings, ServiceSettings, default_home
from genwire.telemetry.setup import OTEL_VARIABLES

SERVICES: dict[str, type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "preprocess": PreprocessSettings,
    "inference": InferenceSettings,
    "postprocess": PostprocessSettings,
    "monitor": MonitorSettings,
}

HEADER = """# Settings

Every setting of every service, from its settings class (generated: `python -m
genwire_cli.settings_doc > docs/settings.md`; tests/common/test_settings_doc.py keeps this file
equal to the classes). Where a setting is explained at length: docs/stages.md (the runtime's),
docs/api.md (the gateway's API), docs/monitor.md (SLOs, drift, rollbacks), docs/security.md.

- **Shared** settings (`genwire.settings.CommonSettings`) are read as `GENWIRE_<NAME>` for every
  service and tool at once; a service's own `GENWIRE_<SERVICE>_<NAME>` wins over it. A service
  that does not read one (marked *not read by*) lets the plain name pass and refuses its own.
- **Stage** settings (`genwire.settings.ServiceSettings`) are read per service, as
  `GENWIRE_<SERVICE>_<NAME>`. A service refuses the ones marked *refused by*: the gateway and
  the monitor run no stage consumer (their readers have settings of their own), and inference
  and the monitor use no Redis.
- A service's **own** settings are read as `GENWIRE_<SERVICE>_<NAME>`; the monitor's nested
  ones also as `GENWIRE_MONITOR_<NAME>__<KEY>`.
- A list, a map or a nested setting is given as JSON. A value that does not validate stops the
  service at start, naming the setting.
- A variable that sets nothing stops the service at start too, naming it: one under the
  service's own prefix that is none of its settings (`GENWIRE_INFERENCE_CONCURENCY`: the
  closest setting is suggested), and the plain name of a stage or own setting
  (`GENWIRE_CONCURRENCY`: each service reads its own `GENWIRE_<SERVICE>_CONCURRENCY`). The
  plain names of shared settings, and any other `GENWIRE_…` variable, pass.
"""


def _default(field: FieldInfo) -> str:
    if field.default_factory is default_home:
        return "`~/.cache/genwire`"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "(empty)" if not value.get_secret_value() else "(set)"
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(mode="json") for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    text = json.dumps(value, sort_keys=True, default=str)
    return f"`{text}`"


def _overrides(field: FieldInfo, base: FieldInfo) -> bool:
    """A service's redefinition of a stage setting: another default or another text."""
    return _default(field) != _default(base) or field.description != base.description


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _row(variable: str, field: FieldInfo, note: str = "") -> str:
    description = field.description or ""
    if note:
        description = f"*{note}.* {description}"
    return f"| `{variable}` | {_default(field)} | {_cell(description)} |"


def _table(rows: list[str]) -> list[str]:
    return ["| variable | default | what it does |", "|---|---|---|", *rows, ""]


def _unread(name: str) -> str:
    by = [s for s, cls in SERVICES.items() if name in cls.not_read]
    if not by:
        return ""
    if len(by) == len(SERVICES):
        return "not read by any service (the stack's or a client's)"
    return f"not read by {', '.join(by[:-1])}{' and ' if len(by) > 1 else ''}{by[-1]}"


def render() -> str:
    out = [HEADER]
    common = CommonSettings.model_fields
    out += ["## Shared (every service and tool)", ""]
    out += _table([_row(f"GENWIRE_{name.upper()}", f, _unread(name)) for name, f in common.items()])
    stage = {n: f for n, f in ServiceSettings.model_fields.items() if n not in common}
    out += ["## Stage settings (every service; `<SERVICE>` is its name in capitals)", ""]
    rows: list[str] = []
    for name, field in stage.items():
        by = [s for s, cls in SERVICES.items() if name in cls.not_read]
        note = f"refused by {' and '.join(by)}" if by else ""
        rows.append(_row(f"GENWIRE_<SERVICE>_{name.upper()}", field, note))
    out += _table(rows)
    out += [
        "Each service sets its own `SERVICE_NAME` and `PORT` defaults (below, where it "
        "overrides them).",
        "",
    ]
    for short, cls in SERVICES.items():
        prefix = f"GENWIRE_{short.upper()}_"
        own = {
            n: f
            for n, f in cls.model_fields.items()
            if n not in common and (n not in stage or _overrides(f, stage[n]))
        }
        out += [f"## {short} (`{cls.__module__}.{cls.__name__}`)", ""]
        rows = [_row(f"{prefix}{name.upper()}", field) for name, field in own.items()]
        for name, field in own.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                for key, sub in annotation.model_fields.items():
                    rows.append(_row(f"{prefix}{name.upper()}__{key.upper()}", sub))
        out += _table(rows)
    out += [
        "## OpenTelemetry's variables (every service)",
        "",
        "The standard names the services read besides their own settings "
        "(`genwire.telemetry.setup`); other `OTEL_*` variables reach the SDK as usual. "
        "`genwire up` refuses, before it starts anything, a value every service would stop at "
        "(`otel_refusals`).",
        "",
        "| variable | what it does |",
        "|---|---|",
        *(f"| `{name}` | {_cell(what)} |" for name, what in OTEL_VARIABLES.items()),
        "",
    ]
    out += [
        "## Tools' variables (no service reads them)",
        "",
        "`genwire up` refuses, before it changes anything, a plain `GENWIRE_<NAME>` that no "
        "setting above and none of these reads and that is a near miss of one that is (a typo), "
        "and names any other such name (a service of your own may read it; "
        "`genwire_stack.variables`).",
        "",
        "| variable | read by |",
        "|---|---|",
        *(f"| `{name}` | {_cell(what)} |" for name, what in sorted(TOOL_VARIABLES.items())),
        "",
    ]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
