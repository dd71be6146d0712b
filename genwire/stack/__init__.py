"""The native stack: Kafka, Redis, Triton, Jaeger and genwire's services on 127.0.0.1.

``genwire up`` / ``make up`` and the test fixtures use the same API::

    from genwire.stack import ensure_up, down, status
    ensure_up(["kafka", "redis"])   # start what is missing, wait until healthy

Every component runs under a supervisor (:mod:`genwire.stack.supervise`) that restarts it when it
exits; :func:`child_pid` and :func:`restart_count` say what runs and how often it came back.

The names are imported lazily: ``python -m genwire.stack.supervise`` imports this package, and a
supervisor should cost no more than the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genwire.stack.components import INFRA, SERVICES
    from genwire.stack.errors import StackError
    from genwire.stack.layout import SCALABLE, StackLayout
    from genwire.stack.manager import (
        DEFAULT_MODEL,
        ComponentStatus,
        child_pid,
        current_layout,
        down,
        ensure_model_loaded,
        ensure_up,
        format_table,
        kafka_bootstrap,
        restart_count,
        status,
        supervisor_state,
    )

_WHERE = {
    "INFRA": "genwire.stack.components",
    "SCALABLE": "genwire.stack.layout",
    "SERVICES": "genwire.stack.components",
    "StackError": "genwire.stack.errors",
    "StackLayout": "genwire.stack.layout",
    "DEFAULT_MODEL": "genwire.stack.manager",
    "ComponentStatus": "genwire.stack.manager",
    "child_pid": "genwire.stack.manager",
    "down": "genwire.stack.manager",
    "ensure_model_loaded": "genwire.stack.manager",
    "ensure_up": "genwire.stack.manager",
    "format_table": "genwire.stack.manager",
    "kafka_bootstrap": "genwire.stack.manager",
    "current_layout": "genwire.stack.manager",
    "restart_count": "genwire.stack.manager",
    "status": "genwire.stack.manager",
    "supervisor_state": "genwire.stack.manager",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'genwire.stack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_MODEL",
    "INFRA",
    "SCALABLE",
    "SERVICES",
    "ComponentStatus",
    "StackError",
    "StackLayout",
    "child_pid",
    "current_layout",
    "down",
    "ensure_model_loaded",
    "ensure_up",
    "format_table",
    "kafka_bootstrap",
    "restart_count",
    "status",
    "supervisor_state",
]
