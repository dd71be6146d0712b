"""Cardinality: labels taken from client input are bounded. 10,000 made-up model names make no
new series in the services' metrics (unit level here; on the running stack in
``test_cardinality_stack.py``). The monitor's own bound is in ``test_models.py``."""

from __future__ import annotations

from genwire_inference.metrics import InferenceMetrics
from genwire_postprocess.metrics import ResultMetrics
from prometheus_client import CollectorRegistry

from genwire.events import ErrorInfo, GenerationChunk, GenerationResult, Timings
from genwire.labels import OTHER, UNKNOWN, BoundedLabel, model_label
from genwire.metrics import LATENCY_BUCKETS


def _series(registry: CollectorRegistry) -> int:
    return sum(len(m.samples) for m in registry.collect())


def test_a_bounded_label_keeps_the_first_values_and_folds_the_rest() -> None:
    label = BoundedLabel(3)
    assert [label(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == [
        "a",
        "b",
        "a",
        "c",
        OTHER,
        OTHER,
        "b",
    ]
    assert len(label) == 3 and label("x" * 500) == OTHER
    assert model_label(label, "a", "") == UNKNOWN and model_label(label, "a", "1") == "a"


def test_ten_thousand_made_up_names_make_no_new_postprocess_or_inference_series() -> None:
    post_reg, inf_reg = CollectorRegistry(), CollectorRegistry()
    post, inf = ResultMetrics(post_reg), InferenceMetrics(inf_reg)
    t = Timings(
        received=1.0, completed=5.0, inference_start=2.0, first_token=3.0, inference_end=4.0
    )
    served = GenerationResult(
        request_id="r", model="genwire-gpt", model_version="1", finish_reason="stop", timings=t
    )
    post.observe(served)
    inf.observe(
        GenerationChunk(
            request_id="r",
            index=0,
            final=True,
            model="genwire-gpt",
            model_version="1",
            finish_reason="stop",
            completion_tokens=3,
            timings=t,
        )
    )
    baseline = _series(post_reg), _series(inf_reg)
    rejected = ErrorInfo(code="model_not_found", message="no such model")
    for i in range(10_000):  # rejected before a version was chosen: "unknown"
        post.observe(
            GenerationResult(request_id=f"x{i}", model=f"made-up-{i}", error=rejected, timings=t)
        )
    for i in range(10_000):  # named with a version (a forged prepared record): capped
        inf.observe(
            GenerationChunk(
                request_id=f"y{i}",
                index=0,
                final=True,
                model=f"made-up-{i}",
                model_version="1",
                finish_reason="stop",
                completion_tokens=3,
                timings=t,
            )
        )
    post_after, inf_after = _series(post_reg), _series(inf_reg)
    # postprocess: one more series set, the "unknown" model with its error outcome: a duration
    # histogram (its buckets, +Inf, _count, _sum, _created) and a counter (_total, _created)
    assert post_after - baseline[0] <= len(LATENCY_BUCKETS) + 6, (baseline, post_after)
    # inference: at most the cap (32 names) plus "other", whatever the number of names
    # (genwire-gpt and 31 made-up names fill the 32; "other" takes the rest)
    assert inf_after <= 33 * baseline[1], (baseline, inf_after)
    scraped = "\n".join(
        str(s) for reg in (post_reg, inf_reg) for m in reg.collect() for s in m.samples
    )
    assert "made-up-9999" not in scraped and "made-up-40" not in scraped
    assert "made-up-0" not in "".join(str(s) for m in post_reg.collect() for s in m.samples)
