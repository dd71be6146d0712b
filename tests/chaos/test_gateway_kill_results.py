"""The gateway-kill scenario's bookkeeping (pure logic): a stream's request counts as published
once it is seen on genwire.requests, and its result is found by id or by its label."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from genwire_chaos.gateway_kill import _Results
from genwire_chaos.gateway_streams import LABEL, Stream

from genwire.events import GenerationResult, Usage
from genwire.request import GenerationRequest
from genwire.topics import Topic


def _record(topic: str, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, 0, 0, 0, None, value, None, 0, len(value), [])


async def test_published_streams_and_their_results() -> None:
    results = _Results()
    seen, unseen = (Stream("grpc", True, 1, "queued") for _ in range(2))
    _, value = GenerationRequest(
        request_id="r1", prompt="hi", metadata={LABEL: seen.label}
    ).to_kafka()
    results.sink(_record(Topic.REQUESTS, value), 0.0)
    results.sink(_record(Topic.REQUESTS, b"{not json"), 0.0)  # ignored, not fatal
    assert await results.wait_published([seen], 1.0) == []
    assert await results.wait_published([seen, unseen], 0.3) == [unseen]
    result = GenerationResult(
        request_id="r1",
        usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
        metadata={LABEL: seen.label},
    )
    results.sink(_record(Topic.RESULTS, result.model_dump_json().encode()), 0.0)
    assert [r.request_id for r in results.of(seen)] == ["r1"] and not results.of(unseen)


def test_the_backlog_holds_triton_for_the_time_asked_at_the_measured_rate() -> None:
    from genwire_chaos.gateway_kill import backlog_size

    # 2,200 tokens/s (a full batch here), 28 s to hold, 240 tokens each: 1.5 × 61,600 tokens.
    assert backlog_size(2_200.0, 28.0, 240) == 385
    # A slower stack needs fewer requests for the same time, never fewer than the old 128.
    assert backlog_size(1_000.0, 28.0, 240) == 175
    assert backlog_size(100.0, 28.0, 240) == 128
    assert backlog_size(0.0, 28.0, 240) == 128  # nothing measured: the old fixed count
    # A mismeasured rate cannot queue an hour of work.
    assert backlog_size(1e9, 28.0, 240) == 2_000
    # Requests that stop early hold Triton for less each: more of them.
    assert backlog_size(2_200.0, 28.0, 120.0) == 770


def test_the_rate_is_taken_over_the_generating_window_by_the_results_own_timings() -> None:
    from genwire_chaos.gateway_kill import generation_rate

    from genwire.events import Timings

    def done(start_ms: float, end_ms: float | None, tokens: int) -> GenerationResult:
        return GenerationResult(
            request_id=f"r{start_ms}",
            usage=Usage(prompt_tokens=1, completion_tokens=tokens, total_tokens=tokens + 1),
            timings=Timings(inference_start=start_ms, inference_end=end_ms),
        )

    # Three requests generating from t=1,000 ms to t=3,000 ms: 600 tokens over 2 s, 200 each;
    # one without an end (an error, say) does not count.
    rate, each = generation_rate(
        [
            done(1_000, 2_500, 200),
            done(1_200, 3_000, 240),
            done(1_500, 2_900, 160),
            done(0, None, 9),
        ]
    )
    assert (rate, each) == (300.0, 200.0)
    assert generation_rate([]) == (0.0, 0.0)
    assert generation_rate([done(1_000, 1_000, 5)]) == (0.0, 5.0)
