"""The native stack: Kafka, Redis, Triton, Jaeger and genwire's services on 127.0.0.1.

``genwire up`` / ``make up`` and the test fixtures use the same API::

    from genwire_stack import ensure_up, down, status
    ensure_up(["kafka", "redis"])   # start what is missing, wait until healthy

Every component runs under a supervisor (:mod:`genwire_stack.supervise`) that restarts it when it
exits; :func:`child_pid` and :func:`restart_count` say what runs and how often it came back.

The names are imported lazily: ``python -m genwire_stack.supervise`` imports this package, and a
supervisor should cost no more than the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genwire_stack.components import INFRA, SERVICES
    from genwire_stack.default_model import (
        DEFAULT_MODEL,
        ensure_model_loaded,
        restore_after_restart,
    )
    from genwire_stack.errors import StackError
    from genwire_stack.layout import SCALABLE, StackLayout
    from genwire_stack.manager import check_environment, down, ensure_up
    from genwire_stack.observe import (
        ComponentStatus,
        child_pid,
        current_layout,
        format_table,
        kafka_bootstrap,
        restart_count,
        status,
        supervisor_state,
    )

_WHERE = {
    "INFRA": "genwire_stack.components",
    "SCALABLE": "genwire_stack.layout",
    "SERVICES": "genwire_stack.components",
    "StackError": "genwire_stack.errors",
    "StackLayout": "genwire_stack.layout",
    "DEFAULT_MODEL": "genwire_stack.default_model",
    "ComponentStatus": "genwire_stack.observe",
    "check_environment": "genwire_stack.manager",
    "child_pid": "genwire_stack.observe",
    "down": "genwire_stack.manager",
    "ensure_model_loaded": "genwire_stack.default_model",
    "ensure_up": "genwire_stack.manager",
    "restore_after_restart": "genwire_stack.default_model",
    "format_table": "genwire_stack.observe",
    "kafka_bootstrap": "genwire_stack.observe",
    "current_layout": "genwire_stack.observe",
    "restart_count": "genwire_stack.observe",
    "status": "genwire_stack.observe",
    "supervisor_state": "genwire_stack.observe",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'genwire_stack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_MODEL",
    "INFRA",
    "SCALABLE",
    "SERVICES",
    "ComponentStatus",
    "StackError",
    "StackLayout",
    "check_environment",
    "child_pid",
    "current_layout",
    "down",
    "ensure_model_loaded",
    "ensure_up",
    "format_table",
    "kafka_bootstrap",
    "restart_count",
    "restore_after_restart",
    "status",
    "supervisor_state",
]
