"""A final chunk postprocess cannot handle: its error result is stored (best effort, never over
a real result) besides being published, and its reply copy goes out even from a fresh process
whose producer has not loaded the reply topic's metadata yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from genwire_postprocess import app as app_module
from genwire_postprocess.app import FailureStore, failure_outputs, setup
from genwire_postprocess.config import PostprocessSettings
from genwire_postprocess.replies import ReplyRouter
from prometheus_client import CollectorRegistry

from genwire.errors import GenwireError, PermanentError
from genwire.events import ErrorInfo, GenerationChunk, GenerationResult, dump
from genwire.kafka.failures import Output, RawRecord
from genwire.request import ErrorCode
from genwire.results import replaceable
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

FailureEvents = Callable[[ConsumerRecord, GenwireError], Sequence[Output]]  # type: ignore[type-arg]


class FakeStore:
    """``put_first`` as Redis does it: the first stored wins (a server-side error is replaced by
    a real result, ``replaceable``)."""

    def __init__(self, fail: BaseException | None = None, hang: bool = False) -> None:
        self.data: dict[str, GenerationResult] = {}
        self.fail = fail
        self.hang = hang
        self.closed = False

    async def put_first(self, result: GenerationResult) -> GenerationResult:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        stored = self.data.get(result.request_id)
        if stored is None or (replaceable(stored) and result.error is None):
            self.data[result.request_id] = result
            return result
        return stored

    async def close(self) -> None:
        self.closed = True


class FakeProducer:
    """A fresh producer: no topic metadata until asked for it."""

    def __init__(self) -> None:
        self.loaded: dict[str, frozenset[int]] = {}
        self.refreshes = 0

    def partitions(self, topic: str) -> frozenset[int] | None:
        return self.loaded.get(topic)

    async def refresh_partitions(self, topic: str, timeout_s: float = 5.0) -> frozenset[int]:
        self.refreshes += 1
        await asyncio.sleep(0)
        self.loaded[topic] = frozenset(range(4))
        return self.loaded[topic]


class FakeRuntime:
    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.registry = CollectorRegistry()
        self.options: dict[str, Any] = {}

    def consumer(self, topic: str, model: type, handler: object, **options: Any) -> None:
        self.options = options


def _chunk(rid: str, **fields: Any) -> GenerationChunk:
    base: dict[str, Any] = {"request_id": rid, "index": 3, "final": True, "model": "gone"}
    return GenerationChunk(**(base | fields))


def _record(
    chunk: GenerationChunk | bytes, headers: Sequence[tuple[str, bytes]] = ()
) -> ConsumerRecord:  # type: ignore[type-arg]
    value = chunk if isinstance(chunk, bytes) else dump(chunk)
    return ConsumerRecord(
        topic=Topic.GENERATIONS.value,
        partition=0,
        offset=1,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=list(headers),
    )


NOT_FOUND = PermanentError("model 'gone' version 7 not found", code=ErrorCode.MODEL_NOT_FOUND)


@pytest.fixture
async def wired(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FailureEvents, FakeStore, FakeRuntime]]:
    """The service's own wiring (``setup``) on fakes: its failure hook, store and producer."""
    store = FakeStore()
    monkeypatch.setattr(app_module.ResultStore, "connect", lambda *a, **k: store)
    runtime = FakeRuntime()
    web = SimpleNamespace(state=SimpleNamespace())
    async with contextlib.AsyncExitStack() as stack:
        running = await stack.enter_async_context(setup(PostprocessSettings(), runtime, web))  # type: ignore[arg-type]
        # Entered once the runtime has started, as the runner does.
        await stack.enter_async_context(running or contextlib.nullcontext())
        yield runtime.options["failure_events"], store, runtime
    assert store.closed


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_failed_final_chunks_error_is_stored(
    wired: tuple[FailureEvents, FakeStore, FakeRuntime],
) -> None:
    failure_events, store, _ = wired
    outputs = failure_events(_record(_chunk("nf")), NOT_FOUND)
    (published,) = [o for o in outputs if isinstance(o, GenerationResult)]
    await _settle()
    assert store.data["nf"] == published
    assert published.error is not None and published.error.code == ErrorCode.MODEL_NOT_FOUND


async def test_a_real_result_is_never_replaced(
    wired: tuple[FailureEvents, FakeStore, FakeRuntime],
) -> None:
    failure_events, store, _ = wired
    real = GenerationResult(request_id="done", text="hello", finish_reason="stop")
    store.data["done"] = real
    failure_events(_record(_chunk("done")), GenwireError("internal error: boom"))
    await _settle()
    assert store.data["done"] == real


@pytest.mark.parametrize(
    "record",
    [
        _record(_chunk("s", final=False, stream=True)),  # a streamed piece: the final answers
        _record(_chunk("s", shadow=True)),  # a shadow copy: nobody waits for it
        _record(  # another request's id: its stored result is the first request's
            _chunk(
                "s",
                error=ErrorInfo(code=ErrorCode.IDEMPOTENCY_CONFLICT, message="used"),
            )
        ),
        _record(b"{not json"),  # not even a chunk: whether it is a final one is unknown
    ],
    ids=["streamed", "shadow", "conflict", "unparsed"],
)
async def test_what_is_not_stored(
    wired: tuple[FailureEvents, FakeStore, FakeRuntime],
    record: ConsumerRecord,  # type: ignore[type-arg]
) -> None:
    failure_events, store, _ = wired
    failure_events(record, NOT_FOUND)
    await _settle()
    assert store.data == {}


async def test_a_fresh_processs_first_failure_gets_its_reply_copy(
    wired: tuple[FailureEvents, FakeStore, FakeRuntime],
) -> None:
    failure_events, _, runtime = wired
    await _settle()  # the warm-up at start loads the reply topic's partitions
    reply = (sc.HEADER_REPLY_TO, f"{Topic.REPLIES.value}:2".encode())
    outputs = failure_events(_record(_chunk("fresh", stream=True), [reply]), NOT_FOUND)
    copies = [o for o in outputs if isinstance(o, RawRecord) and o.topic == Topic.REPLIES.value]
    assert [c.partition for c in copies] == [2, 2]  # the final piece and the result
    assert runtime.producer.refreshes == 1


async def test_the_failure_path_refreshes_for_the_next_reply() -> None:
    producer = FakeProducer()
    router = ReplyRouter(producer, Topic.REPLIES.value, CollectorRegistry())  # type: ignore[arg-type]
    headers = [(sc.HEADER_REPLY_TO, f"{Topic.REPLIES.value}:1".encode())]
    outputs = failure_outputs(_record(_chunk("r1")), NOT_FOUND)
    assert router.with_replies_now(outputs, headers) == outputs  # no metadata: no copy yet
    await _settle()
    again = router.with_replies_now(outputs, headers)
    assert [o.partition for o in again if isinstance(o, RawRecord)] == [1]


async def test_a_store_that_fails_or_hangs_never_holds_the_failure_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = _record(_chunk("down"))
    outputs = failure_outputs(record, NOT_FOUND)
    for store in (FakeStore(fail=ConnectionError("redis down")), FakeStore(hang=True)):
        failures = FailureStore(store, timeout_s=0.05)
        with caplog.at_level(logging.WARNING, logger="genwire_postprocess.app"):
            failures.keep(record, outputs)  # returns at once
            await failures.close()  # bounded by its timeout
        assert store.data == {}
    assert caplog.text.count("published but not stored") == 2


def test_a_conflicting_chunks_failure_publishes_its_conflict_and_ends_no_stream() -> None:
    """A conflicting body's final chunk that could not be handled: its caller still gets its
    idempotency_conflict (what handling it would have published); the id's token streams are
    the first request's, so no token event ends them."""
    conflict = ErrorInfo(code=ErrorCode.IDEMPOTENCY_CONFLICT, message="another body")
    chunk = _chunk("taken", stream=True, error=conflict, finish_reason="error")
    outputs = failure_outputs(_record(chunk), NOT_FOUND)
    assert [type(o).__name__ for o in outputs] == ["GenerationResult"]
    (result,) = outputs
    assert isinstance(result, GenerationResult) and result.error == conflict
