"""Gateway logic with in-memory fakes of the producer and Redis (the transports are not here)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import GatewayError
from genwire_gateway.handlers import Gateway, ResultStatus
from genwire_gateway.replies import WaiterRegistry
from redis.exceptions import OutOfMemoryError

from genwire.errors import PermanentError
from genwire.events import ControlEvent, Event, GenerationResult, TokenEvent, Usage, now_ms
from genwire.request import GenerationRequest, fingerprint, parse_request
from genwire.results import ClaimOutcome
from genwire.telemetry import semconv as sc
from genwire.topics import ReplyTo

Reply = Callable[[GenerationRequest, WaiterRegistry], None]


class FakeProducer:
    """Records what is sent; ``reply`` plays the pipeline for each request."""

    def __init__(self, registry: WaiterRegistry, reply: Reply | None = None) -> None:
        self.registry = registry
        self.reply = reply
        self.requests: list[GenerationRequest] = []
        self.events: list[Event] = []
        self.headers: list[dict[str, bytes]] = []
        self.values: list[bytes] = []
        self.fail_delivery = False
        self.cancel_delivery = False

    async def send(
        self, topic: str, value: bytes, headers: Any = (), **_: Any
    ) -> asyncio.Future[object]:
        request = GenerationRequest.model_validate_json(value)
        self.requests.append(request)
        self.values.append(value)
        self.headers.append(dict(headers))
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.cancel_delivery:
            fut.cancel()  # the producer dropped it (replaced after a fatal error)
        elif self.fail_delivery:
            fut.set_exception(ConnectionError("broker down"))
        else:
            fut.set_result(None)
            if self.reply is not None:
                asyncio.get_running_loop().call_soon(self.reply, request, self.registry)
        return fut

    async def publish_and_wait(self, event: Event) -> None:
        self.events.append(event)

    def cancels(self) -> list[str]:
        return [e.request_id for e in self.events if isinstance(e, ControlEvent)]


class FakeStore:
    """Redis semantics of ResultStore in a dict."""

    def __init__(self) -> None:
        self.results: dict[str, GenerationResult] = {}
        self.claims: dict[str, str] = {}
        self.ttls: list[float] = []
        self.calls: list[str] = []
        """Every round trip to Redis, by method."""
        self.published: list[bytes | None] = []
        """What each claim said it would publish (``published``)."""
        self.gets = 0

    async def get(self, request_id: str) -> GenerationResult | None:
        self.calls.append("get")
        self.gets += 1
        return self.results.get(request_id)

    async def claim(
        self, request: GenerationRequest, ttl_s: float, *, published: bytes | None = None
    ) -> ClaimOutcome:
        self.calls.append("claim")
        self.ttls.append(ttl_s)
        self.published.append(published)
        rid = request.request_id
        assert rid is not None
        mine = fingerprint(request)
        owner = rid not in self.claims  # SET NX
        holder = self.claims.setdefault(rid, mine)
        if holder != mine:
            return ClaimOutcome(owner=False, conflict=True)
        if rid in self.results:
            return ClaimOutcome(owner=False, result=self.results[rid])
        return ClaimOutcome(owner=owner)

    async def release(self, request_id: str) -> None:
        self.calls.append("release")
        self.claims.pop(request_id, None)

    async def known(self, request_id: str) -> bool:
        return request_id in self.claims


def _gateway(
    reply: Reply | None = None, **settings: Any
) -> tuple[Gateway, FakeProducer, FakeStore]:
    registry = WaiterRegistry()
    producer = FakeProducer(registry, reply)
    store = FakeStore()
    cfg = GatewaySettings(result_poll_s=0.05, **settings)
    return Gateway(cfg, producer, store, registry), producer, store  # type: ignore[arg-type]


def _echo(request: GenerationRequest, registry: WaiterRegistry) -> None:
    assert request.request_id is not None
    registry.resolve(
        GenerationResult(
            request_id=request.request_id,
            text=f"echo:{request.prompt}",
            finish_reason="stop",
            usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
        )
    )


def test_prepare_validates_like_preprocess_and_sets_the_deadline() -> None:
    gateway, _, _ = _gateway(request_timeout_s=7.0)
    before = now_ms()
    prepared = gateway.prepare({"prompt": "hi", "temperature": None})
    assert prepared.request.request_id and not prepared.named
    assert prepared.request.deadline_ms is not None
    assert prepared.request.deadline_ms - before == pytest.approx(7000, abs=500)
    with pytest.raises(GatewayError) as info:
        gateway.prepare({"prompt": "hi", "temperature": 9.0})
    assert info.value.code == "out_of_range"
    with pytest.raises(GatewayError) as info:
        gateway.prepare({})
    assert info.value.code == "missing_prompt"
    with pytest.raises(GatewayError) as info:
        gateway.prepare({"prompt": "hi"}, request_id="bad id with spaces")
    assert info.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("margin_s", "timeout_s", "expected_s"),
    [(0.25, 7.0, 6.75), (0.25, 1.0, 0.8), (0.0, 7.0, 7.0), (5.0, 60.0, 55.0)],
)
def test_the_pipeline_stops_the_margin_before_the_caller(
    margin_s: float, timeout_s: float, expected_s: float
) -> None:
    """The partial result inference publishes at ``deadline_ms`` needs time to come back: the
    margin (at most a fifth of the wait) is taken off the caller's wait; the wait is not."""
    gateway, _, _ = _gateway(deadline_margin_s=margin_s)
    prepared = gateway.prepare({"prompt": "hi"}, timeout_s=timeout_s)
    request = prepared.request
    assert request.deadline_ms is not None and request.received_ms is not None
    assert request.deadline_ms - request.received_ms == pytest.approx(expected_s * 1000)
    assert prepared.timeout_s == timeout_s


def test_caller_deadlines_are_capped() -> None:
    gateway, _, _ = _gateway(request_timeout_s=5.0, max_timeout_s=10.0)
    assert gateway.timeout_for(None) == 5.0
    assert gateway.timeout_for(3.0) == 3.0
    assert gateway.timeout_for(3600.0) == 10.0


async def test_generate_publishes_once_and_returns_the_result() -> None:
    gateway, producer, _ = _gateway(_echo)
    result = await gateway.generate(gateway.prepare({"prompt": "hi"}))
    assert result.text == "echo:hi"
    assert len(producer.requests) == 1 and producer.requests[0].stream is False
    assert len(gateway.registry) == 0


async def test_error_results_raise_their_code() -> None:
    def reject(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        registry.resolve(
            GenerationResult.model_validate(
                {
                    "request_id": request.request_id,
                    "error": {"code": "context_length_exceeded", "message": "too long"},
                }
            )
        )

    gateway, _, _ = _gateway(reject)
    with pytest.raises(GatewayError) as info:
        await gateway.generate(gateway.prepare({"prompt": "hi"}))
    assert info.value.code == "context_length_exceeded"


async def test_expired_deadline_cancels_downstream() -> None:
    gateway, producer, _ = _gateway(None)
    prepared = gateway.prepare({"prompt": "hi"}, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(GatewayError) as info:
        await gateway.generate(prepared)
    assert info.value.code == "deadline_exceeded"
    # Its 0.2 s, not the 60 s default (room for a loaded machine's stalls)
    assert time.monotonic() - started < 10.0
    await gateway.drain()
    assert producer.cancels() == [prepared.request_id]


async def test_cancelled_caller_cancels_downstream() -> None:
    gateway, producer, _ = _gateway(None)
    prepared = gateway.prepare({"prompt": "hi"})
    task = asyncio.create_task(gateway.generate(prepared))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gateway.drain()
    assert producer.cancels() == [prepared.request_id]


async def test_a_named_request_outlives_its_caller() -> None:
    """The caller sent an idempotency key: its retry collects the result, so nothing cancels."""
    gateway, producer, _ = _gateway(None)
    prepared = gateway.prepare({"prompt": "hi"}, request_id="named-1")
    task = asyncio.create_task(gateway.generate(prepared))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stream = gateway.stream(gateway.prepare({"prompt": "hi"}, request_id="named-2", stream=True))
    pending = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.05)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await stream.aclose()
    await gateway.drain()
    assert producer.cancels() == []
    assert [r.request_id for r in producer.requests] == ["named-1", "named-2"]


async def test_a_delivery_our_producer_cancelled_is_unavailable_not_the_callers_cancel() -> None:
    """A cancel code would read as the caller leaving (no error budget spent)."""
    gateway, producer, _ = _gateway(None)
    producer.cancel_delivery = True
    with pytest.raises(GatewayError) as info:
        await gateway.generate(gateway.prepare({"prompt": "hi"}))
    assert info.value.code == "unavailable"


async def test_failed_delivery_is_unavailable() -> None:
    gateway, producer, _ = _gateway(None)
    producer.fail_delivery = True
    with pytest.raises(GatewayError) as info:
        await gateway.generate(gateway.prepare({"prompt": "hi"}))
    assert info.value.code == "unavailable"


async def test_stream_dedupes_redelivered_tokens_and_ends_with_the_result() -> None:
    def tokens(request: GenerationRequest, registry: WaiterRegistry) -> None:
        rid = request.request_id
        assert rid is not None
        for index, offset, text, final in [
            (0, 0, "Hel", False),
            (0, 0, "Hel", False),
            (1, 3, "lo", False),
            (2, 5, " w", True),
        ]:
            registry.push(
                TokenEvent(request_id=rid, index=index, text=text, text_offset=offset, final=final)
            )
        registry.resolve(
            GenerationResult(
                request_id=rid,
                text="Hello w",
                finish_reason="length",
                usage=Usage(prompt_tokens=1, completion_tokens=3, total_tokens=4),
            )
        )

    gateway, producer, _ = _gateway(tokens)
    chunks = [c async for c in gateway.stream(gateway.prepare({"prompt": "x"}, stream=True))]
    assert [c.text for c in chunks] == ["Hel", "lo", " w", ""]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert chunks[-1].final and chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert producer.requests[0].stream is True
    await gateway.drain()
    assert producer.cancels() == []


async def test_a_stream_with_a_lost_piece_yields_no_hole_and_the_result_fills_it() -> None:
    """A piece whose publish failed never comes (its retry states it again later, or not at
    all): the pieces after it start past what was yielded and are held back, so the caller's
    text is the result's, in order, with nothing lost or repeated."""

    def tokens(request: GenerationRequest, registry: WaiterRegistry) -> None:
        rid = request.request_id
        assert rid is not None
        for index, offset, text in [
            (0, 0, "The quick"),
            # (1, 9, " brown") was lost
            (2, 15, " fox"),
            (1, 9, " brown"),  # its retry, late: after it, the next comes again
            (2, 15, " fox"),
            (3, 19, " jumps"),
        ]:
            registry.push(TokenEvent(request_id=rid, index=index, text=text, text_offset=offset))
        registry.resolve(GenerationResult(request_id=rid, text="The quick brown fox jumps again"))

    gateway, _, _ = _gateway(tokens)
    chunks = [c async for c in gateway.stream(gateway.prepare({"prompt": "x"}, stream=True))]
    assert [c.text for c in chunks] == ["The quick", " brown", " fox", " jumps", " again"]

    def lost(request: GenerationRequest, registry: WaiterRegistry) -> None:
        rid = request.request_id
        assert rid is not None
        registry.push(TokenEvent(request_id=rid, index=0, text="The quick", text_offset=0))
        registry.push(TokenEvent(request_id=rid, index=2, text=" fox", text_offset=15))
        registry.resolve(GenerationResult(request_id=rid, text="The quick brown fox again"))

    gateway, _, _ = _gateway(lost)
    chunks = [c async for c in gateway.stream(gateway.prepare({"prompt": "x"}, stream=True))]
    assert "".join(c.text for c in chunks) == "The quick brown fox again"


async def test_abandoned_stream_cancels_downstream() -> None:
    def one_token(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        registry.push(TokenEvent(request_id=request.request_id, index=0, text="a"))

    gateway, producer, _ = _gateway(one_token)
    prepared = gateway.prepare({"prompt": "x"}, stream=True)
    stream = gateway.stream(prepared)
    first = await anext(stream)
    assert first.text == "a" and not first.final
    await stream.aclose()
    await gateway.drain()
    assert producer.cancels() == [prepared.request_id]


async def test_each_claim_names_the_exact_value_it_publishes() -> None:
    """The claim keeps the digest of the published value (``published_digest``): how
    preprocess tells the claim holder's own record among those it refuses."""
    gateway, producer, store = _gateway(_echo)
    await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="job-g"))
    async for _ in gateway.stream(
        gateway.prepare({"prompt": "yo"}, request_id="job-s", stream=True)
    ):
        pass
    await gateway.submit(gateway.prepare({"prompt": "hey"}, request_id="job-a"))
    await gateway.drain()
    assert len(producer.values) == 3 and store.published == producer.values


async def test_named_request_returns_the_stored_result_without_publishing() -> None:
    gateway, producer, store = _gateway(_echo)
    first = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="job-1"))
    store.results["job-1"] = first
    await gateway.drain()
    # One round trip: the claim. Nothing after the result (postprocess keeps the claim as long
    # as the result when it stores it: ResultStore.put_first).
    assert store.calls == ["claim"]
    assert store.ttls == [pytest.approx(60.0 + 30.0)]  # in flight: the deadline plus a grace
    again = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="job-1"))
    assert again.text == first.text
    assert len(producer.requests) == 1
    streamed = [
        c
        async for c in gateway.stream(
            gateway.prepare({"prompt": "hi"}, request_id="job-1", stream=True)
        )
    ]
    assert [(c.text, c.final) for c in streamed] == [("echo:hi", True)]
    assert len(producer.requests) == 1


@pytest.mark.parametrize("named", [False, True])
async def test_a_claim_redis_refuses_is_unavailable_on_every_way_in(named: bool) -> None:
    """Redis down, or full (``maxmemory``, no eviction: it refuses writes with an error)."""
    gateway, producer, store = _gateway(_echo)

    async def refused(request: GenerationRequest, ttl_s: float, **_: object) -> ClaimOutcome:
        raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    store.claim = refused  # type: ignore[method-assign]
    prepared = gateway.prepare({"prompt": "hi"}, request_id="job-9" if named else None)
    with pytest.raises(GatewayError) as submitted:
        await gateway.submit(prepared)
    assert submitted.value.code == "unavailable" and "maxmemory" in submitted.value.message
    if named:  # generate claims a named request only
        with pytest.raises(GatewayError) as generated:
            await gateway.generate(prepared)
        assert generated.value.code == "unavailable"
    assert producer.requests == []  # nothing published without its claim


async def test_named_request_reused_for_another_prompt_is_refused() -> None:
    gateway, _, _ = _gateway(_echo)
    await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="job-2"))
    with pytest.raises(GatewayError) as info:
        await gateway.generate(gateway.prepare({"prompt": "other"}, request_id="job-2"))
    assert info.value.code == "idempotency_conflict"


async def test_repeat_in_flight_waits_for_the_first_call() -> None:
    gateway, producer, _ = _gateway(None)
    first = asyncio.create_task(
        gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="j3"))
    )
    await asyncio.sleep(0.02)
    second = asyncio.create_task(
        gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="j3"))
    )
    await asyncio.sleep(0.02)
    assert len(producer.requests) == 1
    _echo(producer.requests[0], gateway.registry)
    assert (await first).text == (await second).text == "echo:hi"


async def test_get_result_reports_pending_done_and_not_found() -> None:
    gateway, _, store = _gateway(None)
    prepared = gateway.prepare({"prompt": "hi"}, request_id="sub-1")
    assert await gateway.submit(prepared) == "sub-1"
    assert (await gateway.get_result("sub-1"))[0] == ResultStatus.PENDING
    assert (await gateway.get_result("nope"))[0] == ResultStatus.NOT_FOUND
    waiting = asyncio.create_task(gateway.get_result("sub-1", wait_s=5.0))
    await asyncio.sleep(0.02)
    gateway.registry.resolve(GenerationResult(request_id="sub-1", text="done"))
    status, result = await waiting
    assert status == ResultStatus.DONE and result is not None and result.text == "done"
    store.results["sub-2"] = GenerationResult.model_validate(
        {"request_id": "sub-2", "error": {"code": "internal", "message": "x"}}
    )
    assert (await gateway.get_result("sub-2"))[0] == ResultStatus.FAILED


async def test_a_result_only_in_redis_ends_the_wait() -> None:
    def store_only(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        results[request.request_id] = GenerationResult(request_id=request.request_id, text="r")

    gateway, _, store = _gateway(store_only)
    results = store.results
    result = await gateway.generate(gateway.prepare({"prompt": "hi"}, timeout_s=5.0))
    assert result.text == "r"


def test_request_json_is_what_preprocess_parses() -> None:
    gateway, _, _ = _gateway()
    prepared = gateway.prepare({"prompt": "hi", "stop": ["x"]}, request_id="k1", stream=True)
    key, value = prepared.request.to_kafka()
    assert key == b"k1"
    body = json.loads(value)
    assert body["prompt"] == "hi" and body["stream"] is True and body["deadline_ms"] > 0


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "hi", "max_tokens": "64"},
        {"prompt": "hi", "top_p": 0.0, "stop": ["a", "b", "c", "d", "e"]},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "", "metadata": {"k": "v" * 600}},
        {"prompt": "hi", "frequency_penalty": 3.0},
    ],
)
def test_prepare_answers_what_preprocess_answers(fields: dict[str, Any]) -> None:
    """Validated once, without the JSON round trip, yet the same code and message as the
    Kafka path (``parse_request``) gives the same request."""
    gateway, _, _ = _gateway()
    with pytest.raises(GatewayError) as info:
        gateway.prepare(fields, request_id="same-1")
    body = {**fields, "request_id": "same-1", "stream": False}
    with pytest.raises(PermanentError) as kafka:
        parse_request(json.dumps(body).encode())
    assert (info.value.code, info.value.message) == (kafka.value.code, kafka.value.message)


def test_prepare_refuses_a_request_larger_than_preprocess_takes() -> None:
    gateway, _, _ = _gateway()
    big = [{"role": "user", "content": "x" * 100_000}] * 50  # 5 MB of messages
    with pytest.raises(GatewayError) as info:
        gateway.prepare({"messages": big})
    assert info.value.code == "request_too_large"
    prepared = gateway.prepare({"messages": big[:10]})
    assert prepared.value == prepared.request.to_kafka()[1]  # what is published


class Route:
    """This instance owns partition 3 of the reply topic."""

    def reply_to(self, request_id: str) -> ReplyTo | None:
        return ReplyTo("genwire.replies", 3)


def _direct(reply: Reply | None) -> tuple[Gateway, FakeProducer, FakeStore]:
    gateway, producer, store = _gateway(reply)
    gateway.replies = Route()
    return gateway, producer, store


async def test_a_published_request_names_its_reply_partition_and_never_polls_redis() -> None:
    gateway, producer, store = _direct(_echo)
    result = await gateway.generate(gateway.prepare({"prompt": "hi"}, timeout_s=30.0))
    assert result.text == "echo:hi"
    assert producer.headers[0][sc.HEADER_REPLY_TO] == b"genwire.replies:3"
    assert store.gets == 0  # the reply came to the reader: not a single Redis read


async def test_a_waiter_whose_partition_moved_gets_its_result_from_redis() -> None:
    def store_only(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        store.results[request.request_id] = GenerationResult(
            request_id=request.request_id, text="from redis"
        )

    gateway, _, store = _direct(store_only)
    call = asyncio.create_task(gateway.generate(gateway.prepare({"prompt": "hi"}, timeout_s=60)))
    await asyncio.sleep(0.05)
    assert not call.done() and store.gets == 0  # direct: waits for its reply, no polling
    assert gateway.registry.move({3}) == 1  # a rebalance took partition 3 away
    # Woken at once (the deadline is a minute away): the result is in Redis.
    assert (await asyncio.wait_for(call, 10)).text == "from redis"


async def test_a_moved_stream_ends_with_the_rest_of_the_text_from_redis() -> None:
    def first_piece(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        registry.push(TokenEvent(request_id=request.request_id, index=0, text="ab"))
        store.results[request.request_id] = GenerationResult(
            request_id=request.request_id, text="abcd", finish_reason="length"
        )

    gateway, _, store = _direct(first_piece)
    chunks = gateway.stream(gateway.prepare({"prompt": "hi"}, stream=True, timeout_s=60))
    first = await anext(chunks)
    assert first.text == "ab"
    gateway.registry.move({3})
    last = await asyncio.wait_for(anext(chunks), 10)
    assert last.final and last.text == "cd"


async def test_a_reply_that_never_comes_gets_one_last_look_at_the_deadline() -> None:
    def store_only(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        store.results[request.request_id] = GenerationResult(request_id=request.request_id)

    gateway, _, store = _direct(store_only)
    await gateway.generate(gateway.prepare({"prompt": "hi"}, timeout_s=0.3))
    assert store.gets == 1


def test_preparing_a_request_asks_pydantic_for_no_field_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The v2 fields' defaults are computed once: pydantic's ``get_default`` inspects a default
    factory's signature on every call (~0.2 ms each, three times per request here)."""
    from pydantic.fields import FieldInfo

    gateway, _, _ = _gateway(None)
    gateway.prepare({"prompt": "warm"}, request_id="warm")
    calls: list[object] = []
    original = FieldInfo.get_default

    def counted(self: FieldInfo, *args: Any, **kwargs: Any) -> Any:
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FieldInfo, "get_default", counted)
    prepared = gateway.prepare({"prompt": "hi", "min_tokens": 2}, request_id="job-d")
    assert fingerprint(prepared.request)
    assert prepared.request.v2_fields_used() == ["min_tokens"]
    assert calls == []
