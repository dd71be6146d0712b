"""A graph of the stacked KV-cache contract, as versions built before 2026-12-04 have it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from genwire_model import export
from genwire_model.checkpoint import inspect_checkpoint


def stacked_graph(checkpoint: Path, out: Path) -> None:
    """The graph as versions built before the per-layer contract have it (export's wrapper
    of the time): the layers' caches stacked in and out."""
    import torch
    from transformers import DynamicCache

    info = inspect_checkpoint(checkpoint)
    model = export.load_model(info)
    layers = info.num_layers

    class Stacked(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, positions: Any, keys: Any, values: Any) -> Any:
            cache = DynamicCache(config=self.model.config)
            for layer in range(layers):
                cache.update(keys[layer], values[layer], layer)
            got = self.model(
                input_ids=ids,
                attention_mask=export.additive_mask(mask, ids.shape[1]),
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            present = got.cache
            return (
                got.logits[:, -1, :],
                torch.stack([present.layers[n].keys for n in range(layers)]),
                torch.stack([present.layers[n].values for n in range(layers)]),
            )

    shape = (layers, 2, info.num_kv_heads, 3, info.head_dim)
    sample = (
        torch.zeros((2, 2), dtype=torch.int64),
        torch.ones((2, 5), dtype=torch.int64),
        torch.zeros((2, 2), dtype=torch.int64),
        torch.zeros(shape),
        torch.zeros(shape),
    )
    axes = {
        "input_ids": {0: "b", 1: "s"},
        "attention_mask": {0: "b", 1: "t"},
        "position_ids": {0: "b", 1: "s"},
        "past_keys": {1: "b", 3: "p"},
        "past_values": {1: "b", 3: "p"},
        "logits": {0: "b"},
        "present_keys": {1: "b", 3: "t"},
        "present_values": {1: "b", 3: "t"},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Stacked().eval(),
            sample,
            str(out),
            input_names=["input_ids", "attention_mask", "position_ids", "past_keys", "past_values"],
            output_names=["logits", "present_keys", "present_values"],
            dynamic_axes=axes,
            opset_version=export.OPSET,
            dynamo=False,
        )
