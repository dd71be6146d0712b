"""The native stack: Kafka, Redis, Triton, Jaeger and genwire's services on 127.0.0.1.

``genwire up`` / ``make up`` and the test fixtures use the same API::

    from genwire.stack import ensure_up, down, status
    ensure_up(["kafka", "redis"])   # start what is missing, wait until healthy
"""

from genwire.stack.components import INFRA, SERVICES
from genwire.stack.errors import StackError
from genwire.stack.manager import (
    DEFAULT_MODEL,
    ComponentStatus,
    down,
    ensure_model_loaded,
    ensure_up,
    format_table,
    status,
)

__all__ = [
    "DEFAULT_MODEL",
    "INFRA",
    "SERVICES",
    "ComponentStatus",
    "StackError",
    "down",
    "ensure_model_loaded",
    "ensure_up",
    "format_table",
    "status",
]
