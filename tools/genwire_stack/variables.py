"""The ``GENWIRE_*`` variables of the environment the stack starts its services in: each one is
read by a setting or a tool, or ``genwire up`` refuses to start, naming it.

A service refuses what it would not read under its own prefix, and the plain names of its own
settings (``genwire.settings.unread_variables``); it cannot tell a plain name meant for another
service or a tool from a typo. The stack knows them all: before it changes anything it refuses
what a service would stop at, and a plain ``GENWIRE_<NAME>`` that no setting and no tool reads
and that is a near miss of one that is (``GENWIRE_KAFKA_BOOTSTRAP_SERVER``, one letter short,
used to leave every service on the default broker); another such name it names and goes on (a
service of the user's own may read it).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from pydantic_settings import BaseSettings

from genwire.settings import CommonSettings, ServiceSettings, unread_variables

PLAIN = str(CommonSettings.model_config.get("env_prefix") or "GENWIRE_")

TOOL_VARIABLES: Mapping[str, str] = {
    "GENWIRE_API_KEY": "the clients' API key (CLI, bench, `GenwireClient`; docs/security.md)",
    "GENWIRE_BENCH_FLOOD_KEY": "`python -m genwire_bench.limits flood`: the flooding key, "
    "handed to its flood process (set by the tool)",
    "GENWIRE_BENCH_GATEWAY_GRPC": "`genwire bench`: the gateway's gRPC address",
    "GENWIRE_BENCH_GATEWAY_HTTP": "`genwire bench`: the gateway's HTTP address",
    "GENWIRE_EXTRAS": "`make venv`: the package extras installed (docs/install.md)",
    "GENWIRE_GRAFANA_ADMIN_PASSWORD": "compose: Grafana's admin password (docs/observability.md)",
    "GENWIRE_MIN_FREE_GB": "`make venv` and `genwire up`: the free space (GB) their checks ask "
    "for before a new venv or Jaeger's build; 0 turns the checks off (docs/install.md)",
    "GENWIRE_MODEL_BACKEND": "the model in Triton: its backend for every model (docs/model.md)",
    "GENWIRE_PYTHON": "`make venv`: the Python 3.11 interpreter to use",
    "GENWIRE_STUB_SITE_PACKAGES": "the model in Triton: its packages (set by the stack)",
    "GENWIRE_TENSORRT_BUILD_ON_LOAD": "the model in Triton: 0 builds no engine on load "
    "(docs/model.md)",
    "GENWIRE_UNLOCKED": "`make venv`: 1 installs the newest releases (docs/install.md)",
}
"""What reads each ``GENWIRE_*`` variable that is no setting (tests/common/test_variables.py
keeps it complete)."""


def unread_environment(
    environ: Mapping[str, str], services: Mapping[str, type[ServiceSettings]]
) -> tuple[list[str], list[str]]:
    """What ``environ`` sets that ``services`` and the tools would not read: ``(refused,
    unknown)``. Refused: what a service would stop at (``unread_variables``, and what it has no
    use for, ``not_read``), and a plain name one letter or so from a known one (a typo).
    Unknown: another plain name no setting and no tool here reads (a service of the user's own
    may: said, not refused)."""
    upper = {key.upper() for key in environ}
    refused = [
        f"{short}: {problem}"
        for short, cls in services.items()
        for problem in unread_variables(cls, environ)
    ]
    prefixes = tuple(
        str(cls.model_config.get("env_prefix") or "").upper() for cls in services.values()
    )
    plain = set(TOOL_VARIABLES) | _plain_names([CommonSettings])  # what a plain name sets
    known = plain | _plain_names([ServiceSettings, *services.values()])  # what is read at all
    unknown = []
    for variable in sorted(upper):
        if not variable.startswith(PLAIN) or variable.startswith(prefixes):
            continue  # not ours, or a service's own (checked above)
        if variable in known or variable.split("__", 1)[0] in known:  # a nested setting's key
            continue
        near = [] if _own_prefix(variable, known) else _near(variable, plain)
        if near:
            refused.append(f"{variable}: no setting or tool reads it (did you mean {near[0]}?)")
        else:
            unknown.append(f"{variable}: no genwire setting or tool reads it")
    return refused, unknown


NEAR = 0.88
"""How alike (``difflib``'s ratio) a plain name no one reads must be to a known one to be
taken for a typo of it and refused: ``GENWIRE_KAFKA_BOOTSTRAP_SERVER`` is 0.98 from
``GENWIRE_KAFKA_BOOTSTRAP_SERVERS``, ``GENWIRE_REDIS_ULR`` 0.94 from ``GENWIRE_REDIS_URL``,
``GENWIRE_HOMEDIR`` 0.89 from ``GENWIRE_HOME``; variables of the user's own services are further
off (``GENWIRE_MYSVC_REDIS_URL`` 0.85 from ``GENWIRE_REDIS_URL``, ``GENWIRE_RANKER_HOST`` 0.78
from ``GENWIRE_GRPC_HOST``)."""


def _own_prefix(variable: str, known: set[str]) -> bool:
    """``GENWIRE_<WORD>_<a known name>`` (``GENWIRE_RANKER_KAFKA_BOOTSTRAP_SERVERS``): a
    service of the user's own on genwire's runtime, reading that setting under its prefix."""
    rest = variable[len(PLAIN) :]
    return any(f"{PLAIN}{rest[at + 1 :]}" in known for at, char in enumerate(rest) if char == "_")


def _near(variable: str, candidates: set[str]) -> list[str]:
    return difflib.get_close_matches(variable, sorted(candidates), 1, cutoff=NEAR)


def _plain_names(classes: Iterable[type[BaseSettings]]) -> set[str]:
    return {f"{PLAIN}{name}".upper() for cls in classes for name in cls.model_fields}
