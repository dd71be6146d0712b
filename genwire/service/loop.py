"""The event loop a genwire process runs on: uvloop when it is installed, else asyncio's own.

Every service spends a fifth to two fifths of its busy time in the event loop's own scheduling
(docs/benchmarks.md, *Where the time goes (profile)*); uvloop runs the same loop in C. The
setting ``event_loop`` (``GENWIRE_<SERVICE>_EVENT_LOOP``) chooses: ``auto`` (uvloop if
installed), ``uvloop`` (required: an error when it is missing, never a silent fallback) or
``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopName = Literal["auto", "asyncio", "uvloop"]
EVENT_LOOPS: tuple[str, ...] = ("auto", "asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``name`` asks for (None: asyncio's default loop)."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event loop {name!r}: expected one of {', '.join(EVENT_LOOPS)}")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if name == "uvloop":
            raise RuntimeError("event_loop=uvloop, but uvloop is not installed") from exc
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def label(name: str) -> str:
    """``uvloop`` or ``asyncio``: what ``name`` runs on here (``loop_factory``'s errors)."""
    return "asyncio" if loop_factory(name) is None else "uvloop"


def run(main: Coroutine[Any, Any, T], name: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``name`` asks for."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def describe(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``uvloop`` or ``asyncio``: what the running (or given) loop is."""
    current = loop if loop is not None else asyncio.get_running_loop()
    return "uvloop" if type(current).__module__.startswith("uvloop") else "asyncio"
