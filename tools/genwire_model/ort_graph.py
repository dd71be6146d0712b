"""ONNX Runtime's copy of a version's graph, with the transformer fusions applied at build time.

``model.onnx`` is the portable graph (TensorRT builds its engines from it, on the GPU machine at
load time too). ONNX Runtime's own graph optimisations at load fold constants and fuse a few
patterns, but leave most of the traced graph's per-op overhead: the shape arithmetic in front of
every ``Reshape`` (``Shape`` → ``Gather`` → ``Unsqueeze`` → ``Concat``), the residual ``Add``
before each ``LayerNormalization``. ``onnxruntime.transformers.optimizer`` (shipped with
onnxruntime) rewrites those into ONNX Runtime's contrib ``SkipLayerNormalization`` and
constant reshapes (the GELU is ``FastGelu`` after ONNX Runtime's own load-time pass either
way): the default model's decode pass runs 182 kernels instead of
344, which at a batch of one row, where each kernel's dispatch costs more than its arithmetic,
is most of a pass (docs/model.md, *Round 18*). Contrib operators are ONNX Runtime's alone, so
the result is a second file, ``model.ort.onnx``, that only ``OnnxRuntimeRunner`` reads.

The fused graph is held to the same checks as the portable one (``export.validate_onnx``
against torch, and the cache contract: each layer's past goes into one ``Concat`` that is its
present, so the runner's bound outputs take the concatenation in place). A fusion that fails
either leaves the version on the portable graph, with the reason in the manifest.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from genwire_model.checkpoint import CheckpointInfo, _first
from genwire_model.runtime.runners import ORT_GRAPH_FILE as FILE

log = logging.getLogger(__name__)


# The optimizer's GPT-2 fusions are the generic ones (layer norms, GELU, reshapes, MatMul with
# its bias) plus GPT-2's attention pattern, which the per-layer cache graph does not match; a
# Llama-family graph gets the generic ones that match it. Validation decides either way.
_OPTIMIZER_MODEL_TYPE = "gpt2"


def cache_concat_problem(graph: Any) -> str | None:
    """Why ``graph`` (an ``onnx.GraphProto``) breaks the cache contract's in-place concatenation,
    or None: every ``present_*`` output must be made by a ``Concat`` that reads its ``past_*``
    input, and that past must feed nothing else."""
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    presents = [o.name for o in graph.output if o.name.startswith("present")]
    if not presents:
        return "the graph has no present_* outputs"
    for present in presents:
        past = "past" + present[len("present") :]
        node = producer.get(present)
        if node is None or node.op_type != "Concat" or past not in node.input:
            made = "nothing" if node is None else node.op_type
            return f"{present} is made by {made}, not a Concat of {past}"
        if len(readers[past]) != 1:
            return f"{past} feeds {len(readers[past])} nodes, not only its Concat"
    return None


def fuse(info: CheckpointInfo, model: Any, portable: Path, out: Path) -> dict[str, Any]:
    """Write ``out / FILE`` from ``portable`` and validate it; the manifest's record.

    Never raises for a fusion that fails or disagrees: the record then has ``file`` None and
    the reason, the file is removed, and ONNX Runtime serves ``model.onnx``.
    """
    from genwire_model import export

    target = out / FILE
    record: dict[str, Any] = {"file": None}
    try:
        # onnxruntime.transformers puts its own folder on sys.path when imported (it imports
        # its modules by their bare names): a broken install is a reason, not a failed build.
        from onnxruntime.transformers.onnx_model import OnnxModel

        record["optimizer"] = _describe()
        fused, fusions = _optimize(info, portable)
        problem = cache_concat_problem(fused.graph)
        if problem is not None:
            raise ValueError(f"the fused graph breaks the cache contract: {problem}")
        # Its save declares the contrib operators' domain (com.microsoft) in the opset imports.
        OnnxModel.save(fused, str(target))
        validation = export.validate_onnx(info, model, target)
        nodes = {"model.onnx": _count(portable), FILE: len(fused.graph.node)}
    except Exception as exc:  # the portable graph is a working fallback, not a failed build
        target.unlink(missing_ok=True)
        record["reason"] = f"{type(exc).__name__}: {exc}"
        log.warning("ONNX Runtime serves the portable graph: %s", record["reason"])
        return record
    record.update(
        file=FILE,
        fusions=fusions,
        nodes=nodes,
        validation=validation.to_json(),
    )
    return record


def _describe() -> str:
    import onnxruntime

    return (
        f"onnxruntime.transformers.optimizer {onnxruntime.__version__} "
        f"(model_type {_OPTIMIZER_MODEL_TYPE}, opt_level 0)"
    )


def _optimize(info: CheckpointInfo, portable: Path) -> tuple[Any, dict[str, int]]:
    """The fused ``onnx.ModelProto`` and the count of each fusion that matched."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    # Only its attention fusion reads these (0: it guesses): the checkpoint's own names.
    heads = int(_first(info.config, "num_attention_heads", "n_head") or 0)
    hidden = int(_first(info.config, "hidden_size", "n_embd") or 0)
    # opt_level 0: the Python rewrites only; ONNX Runtime applies its own (hardware-specific)
    # optimisations when the runner loads the file, as for the portable graph. The optimizer
    # prints its progress: kept out of the build's output, which says what matters.
    with contextlib.redirect_stdout(io.StringIO()):
        optimized = optimizer.optimize_model(
            str(portable),
            model_type=_OPTIMIZER_MODEL_TYPE,
            num_heads=heads,
            hidden_size=hidden,
            optimization_options=FusionOptions(_OPTIMIZER_MODEL_TYPE),
            opt_level=0,
        )
    fusions = {
        name: int(count)
        for name, count in optimized.get_fused_operator_statistics().items()
        if count
    }
    return optimized.model, fusions


def _count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)
