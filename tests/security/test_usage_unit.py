"""Usage of requests produced straight to Kafka (postprocess) and request ownership: the logic,
without a broker (the real stack: test_usage_stack.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from genwire_postprocess.app import usage_principal
from genwire_postprocess.handlers import Postprocessor

from genwire.events import ErrorInfo, GenerationChunk, GenerationResult, ShadowResult, Timings
from genwire.kafka.producer import forward_headers
from genwire.request import ErrorCode
from genwire.results import replaceable
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from genwire.usage import KAFKA_PRINCIPAL, SOURCE_KAFKA, UsageEvent, first_per_request


class FakeStore:
    """``ResultStore.put_first``: the first result of an id wins, later ones get it back, but
    a real result replaces a stored server-side error (``replaceable``)."""

    def __init__(self) -> None:
        self.data: dict[str, GenerationResult] = {}

    async def put_first(self, result: GenerationResult) -> GenerationResult:
        stored = self.data.get(result.request_id)
        if stored is None or (replaceable(stored) and result.error is None):
            self.data[result.request_id] = result
            return result
        return stored


def _final(rid: str, **fields: object) -> GenerationChunk:
    # No output ids: the result needs no tokenizer (the usage comes from the counts).
    values: dict[str, object] = {
        "request_id": rid,
        "index": 0,
        "final": True,
        "model": "m",
        "model_version": "2",
        "finish_reason": "length",
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "output_ids": [],
        "timings": Timings(received=1000.0),
    }
    values.update(fields)
    return GenerationChunk.model_validate(values)


def _usage(events: Sequence[object]) -> list[UsageEvent]:
    return [e for e in events if isinstance(e, UsageEvent)]


@pytest.fixture
def post(tmp_path: Path) -> Postprocessor:
    return Postprocessor(AssetStore(tmp_path), FakeStore())


async def test_a_kafka_clients_request_is_metered_once_even_when_redelivered(
    post: Postprocessor,
) -> None:
    first = await post.handle(_final("k1"), usage_of="team-a")
    (event,) = _usage(first)
    assert (event.request_id, event.key_name, event.source) == ("k1", "team-a", SOURCE_KAFKA)
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (5, 7, 12)
    assert (event.model, event.model_version, event.finish_reason) == ("m", "2", "length")
    assert event.latency_ms > 0 and event.charged_tokens == 0
    again = await post.handle(_final("k1"), usage_of="team-a")  # a redelivery
    assert [type(e) for e in again] == [GenerationResult]


async def test_gateway_requests_and_shadow_copies_are_not_metered_here(
    post: Postprocessor,
) -> None:
    assert _usage(await post.handle(_final("g1"), usage_of=None)) == []
    shadow = await post.handle(_final("s1", shadow=True), usage_of="team-a")
    assert [type(e) for e in shadow] == [ShadowResult]


async def test_refusals_are_metered_server_side_errors_not_their_replacement_is(
    post: Postprocessor,
) -> None:
    """A refusal is the request's answer: metered. A server-side error that generated nothing
    is none (a real result may replace it: a dlq replay after the fix, the record's next
    owner), so not metered; the result that replaces it is, once. A conflict is another
    request's id."""
    refused = _final("e0", error=ErrorInfo(code=ErrorCode.OUT_OF_RANGE, message="too long"))
    (event,) = _usage(await post.handle(refused, usage_of="kafka"))
    assert (event.finish_reason, event.error_code) == ("error", ErrorCode.OUT_OF_RANGE)
    for rid, code in (("e1", ErrorCode.INFERENCE_FAILED), ("e2", ErrorCode.UNAVAILABLE)):
        failed = _final(rid, error=ErrorInfo(code=code, message="boom"), completion_tokens=0)
        assert _usage(await post.handle(failed, usage_of="kafka")) == []
    (replaced,) = _usage(await post.handle(_final("e1"), usage_of="kafka"))
    assert (replaced.request_id, replaced.finish_reason) == ("e1", "length")
    assert _usage(await post.handle(_final("e1"), usage_of="kafka")) == []  # once
    # A stream that failed midway made (and streamed) its tokens: metered, error and all.
    midway = _final("e4", error=ErrorInfo(code=ErrorCode.INFERENCE_FAILED, message="ended"))
    (event,) = _usage(await post.handle(midway, usage_of="kafka"))
    assert (event.completion_tokens, event.error_code) == (7, ErrorCode.INFERENCE_FAILED)
    conflict = _final("e3", error=ErrorInfo(code=ErrorCode.IDEMPOTENCY_CONFLICT, message="x"))
    assert _usage(await post.handle(conflict, usage_of="kafka")) == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(sc.HEADER_ORIGIN, b"gw-1"), (sc.HEADER_PRINCIPAL, b"team-a")], None),
        ([(sc.HEADER_PRINCIPAL, b"team-b")], "team-b"),
        ([], KAFKA_PRINCIPAL),
        ([(sc.HEADER_PRINCIPAL, b"no spaces or\nnewlines allowed")], KAFKA_PRINCIPAL),
    ],
)
def test_whom_a_request_is_attributed_to(
    headers: list[tuple[str, bytes]], expected: str | None
) -> None:
    token = forward_headers(headers)
    try:
        assert usage_principal(_final("p1")) == expected
    finally:
        from genwire.kafka.producer import _forwarded

        _forwarded.reset(token)


def test_readers_keep_the_first_event_of_a_request() -> None:
    events = [
        UsageEvent(request_id="a", key_name="x", total_tokens=1),
        UsageEvent(request_id="b", key_name="x", total_tokens=2),
        UsageEvent(request_id="a", key_name="x", total_tokens=3),
    ]
    assert [e.total_tokens for e in first_per_request(events)] == [1, 2]
