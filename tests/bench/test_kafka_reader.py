"""How the Kafka driver's reader matches answers to waiters (pure logic, no broker)."""

from __future__ import annotations

from genwire_bench.drivers.kafka import KafkaReader, to_request
from genwire_bench.records import BenchRequest, SamplingSpec

from genwire.events import ErrorInfo, GenerationResult, TokenEvent, Usage
from genwire.request import parse_request
from genwire.topics import Topic


def result(rid: str, error: ErrorInfo | None = None) -> bytes:
    usage = Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)
    return GenerationResult(request_id=rid, usage=usage, error=error).model_dump_json().encode()


def token(rid: str, index: int, text: str, final: bool = False) -> bytes:
    return (
        TokenEvent(request_id=rid, index=index, text=text, final=final).model_dump_json().encode()
    )


def test_a_unary_request_completes_with_its_result() -> None:
    reader = KafkaReader("unused:9092")
    pending = reader.expect("r1", stream=False)
    reader._deliver(pending, Topic.RESULTS, result("r1"), now=2.0)
    assert pending.done.is_set() and pending.result_at == 2.0
    assert pending.result is not None and pending.result.usage.completion_tokens == 5


def test_a_streamed_request_needs_its_result_and_its_final_token() -> None:
    reader = KafkaReader("unused:9092")
    pending = reader.expect("r2", stream=True)
    reader._deliver(pending, Topic.TOKENS, token("r2", 0, ""), now=1.0)  # empty: not a token yet
    reader._deliver(pending, Topic.TOKENS, token("r2", 1, "Hi"), now=1.5)
    reader._deliver(pending, Topic.RESULTS, result("r2"), now=1.7)
    assert not pending.done.is_set()
    reader._deliver(pending, Topic.TOKENS, token("r2", 2, "!", final=True), now=1.9)
    assert pending.done.is_set()
    assert (pending.first_token, pending.final_token, pending.chunks) == (1.5, 1.9, 3)


def test_an_error_result_ends_a_stream_at_once_and_garbage_is_an_error() -> None:
    reader = KafkaReader("unused:9092")
    pending = reader.expect("r3", stream=True)
    reader._deliver(pending, Topic.RESULTS, result("r3", ErrorInfo(code="x", message="y")), 1.0)
    assert pending.done.is_set()
    broken = reader.expect("r4", stream=False)
    reader._deliver(broken, Topic.RESULTS, b"{not json", 1.0)
    assert broken.done.is_set() and broken.result is not None and broken.result.error is not None
    assert broken.result.error.code == "bench_unreadable"


def test_the_request_on_the_topic_is_valid_request_v1() -> None:
    req = BenchRequest(3, "Once upon a time", (1, 2), SamplingSpec(max_tokens=7, seed=42))
    key, value = to_request(req, "bench-x-kafka-1-3", "genwire-gpt", stream=True).to_kafka()
    parsed = parse_request(value, key=key)
    assert parsed.request_id == "bench-x-kafka-1-3" and parsed.stream
    assert (parsed.max_tokens, parsed.seed, parsed.temperature) == (7, 42, 0.0)
