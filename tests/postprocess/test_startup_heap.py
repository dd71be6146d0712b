"""The postprocess service's start-up heap is frozen (``gc.freeze``) once its garbage is collected:
later full collections skip it (a ~100 ms pause on the request path before), and nothing that
was already garbage is kept forever."""

from __future__ import annotations

import gc
import weakref

from genwire_postprocess.app import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_startup_heap_is_collected_then_frozen() -> None:
    gc.unfreeze()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    try:
        freeze_startup_heap()
        assert gone() is None  # collected, not frozen with the rest
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() == frozen  # later collections leave it alone
        assert kept.me is kept
    finally:
        gc.unfreeze()
