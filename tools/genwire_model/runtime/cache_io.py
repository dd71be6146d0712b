"""The graph's KV-cache inputs and outputs: one tensor per layer, or (older graphs) stacked.

Inside the runtime a cache is always a pair of stacked tensors [L, B, H, W, D] (keys, values):
the scheduler re-forms a batch on them in one copy. Graphs exported since manifest field
``shape.cache_io`` = ``"per_layer"`` take and return one tensor per layer: ``past_key_<l>`` and
``past_value_<l>`` [B, H, P, D] in, ``present_key_<l>`` and ``present_value_<l>`` [B, H, P+S, D]
out. The runners feed them per-layer views of the stacked arrays (the layer is the leading axis,
so each view is one contiguous block) and bind the outputs to per-layer views of the buffer the
next step reads, so a decode pass copies the cache once (each layer's concatenation of its past
and the new column, written straight into the output). The stacked contract of earlier graphs
(``past_keys`` / ``present_keys`` [L, B, H, P, D]) copied it three times: split the stack per
layer, concatenate, stack again (docs/model.md, *Round 17*). Those graphs are still read.

Imports nothing but the standard library: it runs inside Triton's Python stub (Python 3.10 in
NGC's images) as well as in the tools.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
STACKED_PAST = ("past_keys", "past_values")
STACKED_PRESENT = ("present_keys", "present_values")
PER_LAYER = "per_layer"
STACKED = "stacked"


@dataclasses.dataclass(frozen=True)
class CacheIO:
    """The names and shapes of one graph's cache tensors."""

    layers: int
    stacked: bool = False

    @classmethod
    def of_names(cls, input_names: Iterable[str], layers: int) -> CacheIO:
        """The contract of a graph with these inputs; ValueError naming what is missing."""
        names = set(input_names)
        if set(STACKED_PAST) <= names:
            return cls(layers, stacked=True)
        found = cls(layers)
        missing = [name for name in found.input_names if name not in names]
        if missing:
            raise ValueError(
                f"the graph has no input {missing[0]!r} for a {layers}-layer KV cache "
                f"(its inputs: {', '.join(sorted(names))})"
            )
        return found

    @classmethod
    def of_shape(cls, shape: dict[str, Any]) -> CacheIO:
        """The contract a version's manifest ``shape`` records (absent: the stacked one)."""
        kind = shape.get("cache_io", STACKED)
        if kind not in (STACKED, PER_LAYER):
            raise ValueError(
                f"unknown cache_io {kind!r} in the manifest (known: {PER_LAYER}, {STACKED})"
            )
        return cls(int(shape["num_layers"]), stacked=kind == STACKED)

    @property
    def kind(self) -> str:
        """The manifest's ``cache_io`` value."""
        return STACKED if self.stacked else PER_LAYER

    @property
    def past_names(self) -> tuple[str, ...]:
        """Cache inputs: keys and values of layer 0, then of layer 1, ... (or the two stacks)."""
        if self.stacked:
            return STACKED_PAST
        return tuple(f"past_{kind}_{layer}" for layer in range(self.layers) for kind in _KINDS)

    @property
    def present_names(self) -> tuple[str, ...]:
        """Cache outputs, in the order of ``past_names``."""
        if self.stacked:
            return STACKED_PRESENT
        return tuple(f"present_{kind}_{layer}" for layer in range(self.layers) for kind in _KINDS)

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*TOKEN_INPUTS, *self.past_names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("logits", *self.present_names)

    @property
    def column_axis(self) -> int:
        """The axis of a cache tensor's columns (the past's length)."""
        return 3 if self.stacked else 2

    def tensor_shape(self, rows: int, heads: int, columns: int, dim: int) -> tuple[int, ...]:
        """The shape of each cache input or output tensor."""
        if self.stacked:
            return (self.layers, rows, heads, columns, dim)
        return (rows, heads, columns, dim)

    def split(self, kv: tuple[Any, Any]) -> list[Any]:
        """Stacked keys and values [L, ...] as the graph's cache tensors, in name order (views:
        ``kv[0][layer]`` of a contiguous stack is one contiguous block)."""
        if self.stacked:
            return [kv[0], kv[1]]
        return [kv[index][layer] for layer in range(self.layers) for index in (0, 1)]

    def past(self, kv: tuple[Any, Any]) -> dict[str, Any]:
        """The cache inputs of a pass over ``kv``."""
        return dict(zip(self.past_names, self.split(kv), strict=True))

    def present(self, kv: tuple[Any, Any]) -> dict[str, Any]:
        """The cache outputs of a pass, bound to ``kv``'s layers (preallocated buffers)."""
        return dict(zip(self.present_names, self.split(kv), strict=True))

    def join(self, tensors: Sequence[Any], stack: Callable[[list[Any]], Any]) -> tuple[Any, Any]:
        """A pass's cache outputs (in ``present_names`` order) as stacked keys and values;
        ``stack`` joins one kind's per-layer tensors along a new leading axis (a copy)."""
        if self.stacked:
            return tensors[0], tensors[1]
        return stack(list(tensors[0::2])), stack(list(tensors[1::2]))

    def feeds(
        self, input_ids: Any, attention_mask: Any, position_ids: Any, kv: tuple[Any, Any]
    ) -> dict[str, Any]:
        """Every input of one pass."""
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **self.past(kv),
        }


_KINDS = ("key", "value")
