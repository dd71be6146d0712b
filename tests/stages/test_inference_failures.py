"""How the inference stage classifies the model's in-stream errors (a refusal of the request,
a whole-batch failure that may pass, one that will not), and what its metrics count (time per
output token of n choices, shadow copies)."""

from __future__ import annotations

import pytest
from genwire_inference import handlers
from genwire_inference.handlers import MEMORY_TRIES, Inference
from genwire_inference.metrics import InferenceMetrics
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from genwire.errors import GenwireError, PermanentError, RetryableError
from genwire.events import ChoiceOutput, GenerationChunk, Timings
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire.triton_stream import TRITON
from stages.test_inference import ErrorBackend, _collect, _req

TPOT_SUM = f"{sc.METRIC_TPOT_SECONDS}_sum"
TTFT_COUNT = f"{sc.METRIC_TTFT_SECONDS}_count"
TOKENS = sc.METRIC_TOKENS if sc.METRIC_TOKENS.endswith("_total") else f"{sc.METRIC_TOKENS}_total"

# -- whole-batch failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "generation failed: CUDA error: out of memory",
        "generation failed: MemoryError: boom gather",
        "generation failed: MemoryError",
        "generation failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
        "prefill failed: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code "
        "returned while running MatMul node. Failed to allocate memory for requested buffer",
        "request failed: MemoryError: ",
    ],
)
async def test_a_batch_that_ran_out_of_memory_is_retried(message: str) -> None:
    """Every request of the failed batch gets this error: memory running short is not theirs,
    and a retry may pass; dead-lettering them all lost good requests."""
    inf = Inference(ErrorBackend([True], True, message), triton_wait_s=0.01)
    with pytest.raises(RetryableError) as caught:
        await _collect(inf, _req())
    assert caught.value.dependency == TRITON
    assert caught.value.message == f"triton: {message}"
    # Bounded: one too large for memory alone is parked, not retried for the outage budget.
    assert caught.value.max_tries == MEMORY_TRIES


@pytest.mark.parametrize(
    "message",
    [
        "generation failed: IndexError: index -1 is out of bounds for axis 0 with size 0",
        "prefill failed: ValueError: shapes do not match",
        "request failed: RecursionError: maximum recursion depth exceeded",
        "generation failed: RuntimeError: CUDA error: device-side assert triggered",
        "generation failed: RuntimeError: CUDA error: an illegal memory access was encountered",
    ],
)
async def test_a_batch_failure_that_will_not_pass_stays_permanent(message: str) -> None:
    """A request that fails the model every time must not hold the stage for the outage
    budget: dead-lettered, as before."""
    inf = Inference(ErrorBackend([True], True, message), triton_wait_s=0.01)
    with pytest.raises(GenwireError) as caught:
        await _collect(inf, _req())
    assert type(caught.value) is PermanentError
    assert caught.value.code == ErrorCode.INFERENCE_FAILED and caught.value.dead_letter


async def test_memory_words_outside_a_model_failure_do_not_make_it_retryable() -> None:
    """Only the model's own failure messages are read for them (a refusal quoting the words
    is the request's fault)."""
    message = "some other error: out of memory"
    inf = Inference(ErrorBackend([True], True, message), triton_wait_s=0.01)
    with pytest.raises(GenwireError) as caught:
        await _collect(inf, _req())
    assert type(caught.value) is PermanentError


# -- refusals of the request -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "param"),
    [
        ("top_p must be in (0, 1], got 0.0", ErrorCode.OUT_OF_RANGE, "top_p"),
        (
            "repetition_penalty must be in (0, 10], got 0.0",
            ErrorCode.OUT_OF_RANGE,
            "repetition_penalty",
        ),
        (
            "n must be at most 8 on this model (its max_batch: every choice decodes in the same "
            "batch), got 12",
            ErrorCode.OUT_OF_RANGE,
            "n",
        ),
        ("logit_bias[7] must be in [-100, 100], got 200.0", ErrorCode.OUT_OF_RANGE, "logit_bias"),
        (
            "min_tokens (5) must not exceed max_tokens (2)",
            ErrorCode.OUT_OF_RANGE,
            "min_tokens",
        ),
        (
            "input_ids out of range [0, 512): min 0, max 900",
            ErrorCode.OUT_OF_RANGE,
            "prompt_token_ids",
        ),
        (
            "prompt of 300 tokens is longer than the context window allows (context 256 tokens, "
            "room needed for at least one new token)",
            ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            None,
        ),
        (
            "the JSON schema nests arrays and objects more than 124 levels deep (the limit)",
            ErrorCode.INVALID_REQUEST,
            None,
        ),
    ],
)
async def test_a_refusal_by_the_model_is_the_callers_error(
    message: str, code: str, param: str | None
) -> None:
    """A parameter preprocess passed and the model refused: a 4xx error naming it, not
    ``inference_failed`` (502) and not a question to Triton about readiness."""
    backend = ErrorBackend([True], True, f"{handlers.MODEL_REFUSAL}{message}")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    inf = Inference(backend, triton_wait_s=0.01, tracer=provider.get_tracer("t"))
    with pytest.raises(GenwireError) as caught:
        await _collect(inf, _req())
    err = caught.value
    assert type(err) is PermanentError and err.dead_letter
    assert err.code == code and err.param == param
    assert message in err.message
    assert backend.waited == []
    # The failed call's span carries the code: the monitor reads none as a server failure.
    (call,) = [s for s in spans.get_finished_spans() if s.name == "triton.generate"]
    assert (call.attributes or {})[sc.ERROR_CODE] == code


# -- metrics -----------------------------------------------------------------------------------


def _final(*, n: int, shadow: bool = False) -> GenerationChunk:
    """n choices of 101 tokens each, generated in parallel, 1000 ms after the first token."""
    choices = [
        ChoiceOutput(
            index=i, output_ids=list(range(101)), finish_reason="length", completion_tokens=101
        )
        for i in range(n)
    ]
    return GenerationChunk(
        request_id="r",
        index=0,
        final=True,
        model="genwire-gpt",
        finish_reason="length",
        completion_tokens=101 * n,
        output_ids=list(range(101)),
        choices=choices if n > 1 else None,
        shadow=shadow,
        timings=Timings(inference_start=0.0, first_token=100.0, inference_end=1100.0),
    )


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    value = registry.get_sample_value(name, labels)
    return None if value is None else float(value)


@pytest.mark.parametrize("n", [1, 4])
def test_time_per_output_token_counts_one_choices_tokens(n: int) -> None:
    """The choices are generated together: 100 tokens after the first in 1 s is 10 ms per
    token whatever n (dividing by every choice's tokens made it 2.5 ms at n=4)."""
    registry = CollectorRegistry()
    InferenceMetrics(registry).observe(_final(n=n))
    total = _sample(registry, TPOT_SUM, model="genwire-gpt")
    assert total == pytest.approx(0.01)


def test_a_choice_longer_than_choice_zero_sets_the_time_per_token() -> None:
    registry = CollectorRegistry()
    final = _final(n=2)
    assert final.choices is not None
    final.choices[1].completion_tokens = 201  # the request ended with its longest choice
    InferenceMetrics(registry).observe(final)
    total = _sample(registry, TPOT_SUM, model="genwire-gpt")
    assert total == pytest.approx(0.005)


def test_a_shadow_copy_is_not_counted_under_the_served_model() -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    metrics.observe(_final(n=1, shadow=True))
    assert _sample(registry, TTFT_COUNT, model="genwire-gpt") in (
        None,
        0.0,
    )
    assert _sample(registry, TOKENS, model="genwire-gpt", finish_reason="length") is None
    metrics.observe(_final(n=1))
    assert _sample(registry, TTFT_COUNT, model="genwire-gpt") == 1
    assert _sample(registry, TOKENS, model="genwire-gpt", finish_reason="length") == 101
