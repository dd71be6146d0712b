"""The secret header that opens Triton's model-control APIs in a secure stack.

``genwire up --secure`` starts Triton with ``--http-restricted-api`` and
``--grpc-restricted-protocol`` on :data:`RESTRICTED` (the repository API that loads and unloads
models, model configurations, shared memory, tracing and logging settings): a call without
:data:`HEADER` set to the stack's secret is refused (HTTP 403, gRPC UNAVAILABLE "This protocol is
restricted"). Health, metadata, inference and statistics stay open to whoever reaches the
loopback ports, as before.

Every caller of those APIs sends :func:`headers` (HTTP) or :func:`headers` with ``grpc=True``
(Triton expects the gRPC metadata key with the prefix :data:`GRPC_PREFIX`): the gateway's model
list, inference's model config and state lookups, ``genwire model``, the default model's load
and the bench's Triton baseline. The secret comes from ``triton_admin_key`` of the settings
given (a service passes its own, so its ``GENWIRE_<SVC>_TRITON_ADMIN_KEY`` wins over the plain
``GENWIRE_TRITON_ADMIN_KEY``; the stack sets both for its services), else
``<GENWIRE_HOME>/secure/triton-admin-key`` (0600, made by ``genwire up --secure``), else there
is none and nothing is sent: a plaintext stack's Triton is not restricted. Sending it to an
unrestricted Triton is harmless (the header is ignored).
"""

from __future__ import annotations

from pathlib import Path

from genwire.settings import CommonSettings

HEADER = "genwire-triton-admin"
"""The header (HTTP) / metadata key (gRPC, after :data:`GRPC_PREFIX`) Triton checks."""
GRPC_PREFIX = "triton-grpc-protocol-"
"""Triton's gRPC server looks for ``triton-grpc-protocol-<key>`` (measured on Triton 2.x in the
nvidia-pytriton wheel: a plain ``<key>`` is refused)."""
KEY_FILE = "secure/triton-admin-key"
"""Under ``GENWIRE_HOME``: the secret ``genwire up --secure`` generated."""
RESTRICTED = ("model-repository", "model-config", "shared-memory", "trace", "logging")
"""Triton's API groups that need the header in a secure stack."""


def key_path(home: Path) -> Path:
    """Where the stack of ``home`` keeps the secret."""
    return home / KEY_FILE


def admin_key(settings: CommonSettings | None = None) -> str:
    """The secret: ``triton_admin_key`` (``GENWIRE_TRITON_ADMIN_KEY``), else the home's file,
    else "" (a plaintext stack)."""
    cfg = settings or CommonSettings()
    value = cfg.triton_admin_key.get_secret_value()
    if value:
        return value
    try:
        return key_path(cfg.home.expanduser()).read_text().strip()
    except OSError:
        return ""


def headers(settings: CommonSettings | None = None, *, grpc: bool = False) -> dict[str, str]:
    """What to send with a repository/model-config call: ``{}`` when there is no secret."""
    key = admin_key(settings)
    if not key:
        return {}
    return {(GRPC_PREFIX + HEADER) if grpc else HEADER: key}


def restriction_arguments(key: str) -> list[str]:
    """tritonserver's arguments restricting :data:`RESTRICTED` to callers sending ``key``."""
    rule = f"{','.join(RESTRICTED)}:{HEADER}={key}"
    return ["--http-restricted-api", rule, "--grpc-restricted-protocol", rule]
