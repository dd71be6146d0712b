"""The request path through the REAL broker, Redis and Triton (the ``stack`` fixture).

A request produced to genwire.requests comes back on genwire.results and in Redis; streamed
requests also give ordered pieces on genwire.tokens that add up to the result; every kind of
bad input gets its error result plus a DLQ record, and the next good request still works.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from genwire.events import ControlEvent, GenerationResult, TokenEvent, dump, now_ms
from genwire.request import ErrorCode, GenerationRequest
from genwire.results import result_key
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WAIT_S = 60.0


@dataclass
class Seen:
    """Everything read for one key."""

    results: list[GenerationResult] = field(default_factory=list)
    tokens: list[TokenEvent] = field(default_factory=list)
    dlq: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)


class Pipeline:
    """Produces requests and reads genwire.results / genwire.tokens / genwire.dlq from now on."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        boot = settings.kafka_bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=boot, max_request_size=16 << 20)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None)
        self.redis: Redis[bytes] = Redis.from_url(settings.redis_url)
        self.seen: dict[str, Seen] = {}
        self.keyless_dlq: list[ConsumerRecord[bytes, bytes]] = []
        self._reader: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        tps = [
            TopicPartition(t, p)
            for t in (Topic.RESULTS, Topic.TOKENS, Topic.DLQ)
            for p in await self.producer.partitions_for(t)  # waits for the metadata
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now: everything produced later is seen
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
        await self.consumer.stop()
        await self.producer.stop()
        await self.redis.aclose()  # type: ignore[attr-defined]

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    if r.key is None:
                        if r.topic == Topic.DLQ:
                            self.keyless_dlq.append(r)
                        continue
                    seen = self.seen.setdefault(r.key.decode("utf-8", "replace"), Seen())
                    if r.topic == Topic.RESULTS:
                        seen.results.append(GenerationResult.model_validate_json(r.value or b""))
                    elif r.topic == Topic.TOKENS:
                        seen.tokens.append(TokenEvent.model_validate_json(r.value or b""))
                    else:
                        seen.dlq.append(r)
            if batch:
                self._new.set()

    async def send_raw(
        self, key: str | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        await (
            await self.producer.send(
                Topic.REQUESTS, value, key=key.encode() if key else None, headers=headers
            )
        )

    async def send(self, request: GenerationRequest, **kw: list[tuple[str, bytes]]) -> str:
        key, value = request.to_kafka()
        await self.send_raw(key.decode(), value, **kw)
        return key.decode()

    async def wait(
        self, rid: str, *, results: int = 1, dlq: int = 0, final_token: bool = False
    ) -> Seen:
        async with asyncio.timeout(WAIT_S):
            while True:
                seen = self.seen.get(rid, Seen())
                if (
                    len(seen.results) >= results
                    and len(seen.dlq) >= dlq
                    and (not final_token or any(t.final for t in seen.tokens))
                ):
                    return seen
                self._new.clear()
                await self._new.wait()

    async def stored(self, rid: str) -> GenerationResult | None:
        raw = await self.redis.get(result_key(rid))
        return GenerationResult.model_validate_json(raw) if raw else None


@pytest.fixture(scope="module")
async def pipeline(stack: CommonSettings) -> AsyncIterator[Pipeline]:
    p = Pipeline(stack)
    await p.start()
    yield p
    await p.stop()


def _rid(tag: str) -> str:
    return f"t-{tag}-{uuid.uuid4().hex[:10]}"


def _ok(result: GenerationResult, max_tokens: int) -> None:
    assert result.error is None, result.error
    assert result.finish_reason in ("stop", "length")
    assert result.model == "genwire-gpt" and result.model_version
    assert result.usage.prompt_tokens > 0
    assert 1 <= result.usage.completion_tokens <= max_tokens
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    t = result.timings
    assert t.received and t.prepared and t.inference_start and t.inference_end and t.completed
    assert t.received <= t.prepared <= t.inference_start <= t.inference_end <= t.completed


async def test_result_on_kafka_and_in_redis(pipeline: Pipeline) -> None:
    rid = await pipeline.send(
        GenerationRequest(
            request_id=_rid("ok"), prompt="Once upon a time", max_tokens=16, metadata={"k": "v"}
        )
    )
    (result,) = (await pipeline.wait(rid)).results
    _ok(result, 16)
    assert result.metadata == {"k": "v"}
    assert await pipeline.stored(rid) == result
    assert pipeline.seen[rid].tokens == []  # not streamed


async def test_chat_request(pipeline: Pipeline) -> None:
    rid = await pipeline.send(
        GenerationRequest.model_validate(
            {
                "request_id": _rid("chat"),
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Name a colour."},
                ],
                "max_tokens": 12,
            }
        )
    )
    _ok((await pipeline.wait(rid)).results[0], 12)


async def test_stream_pieces_add_up_to_the_result(pipeline: Pipeline) -> None:
    rid = await pipeline.send(
        GenerationRequest(request_id=_rid("stream"), prompt="The model", max_tokens=48, stream=True)
    )
    seen = await pipeline.wait(rid, final_token=True)
    result = seen.results[0]
    _ok(result, 48)
    tokens = seen.tokens
    assert [t.index for t in tokens] == list(range(len(tokens)))  # ordered, no gaps
    assert tokens[-1].final and not any(t.final for t in tokens[:-1])
    assert tokens[-1].finish_reason == result.finish_reason
    assert "".join(t.text for t in tokens) == result.text
    if result.usage.completion_tokens > 1 and len(result.text) > 1:
        assert len([t for t in tokens if t.text]) >= 2  # really streamed, not one lump


async def test_redelivered_request_gives_the_same_result(pipeline: Pipeline) -> None:
    request = GenerationRequest(
        request_id=_rid("again"), prompt="Tell me a story", max_tokens=24, temperature=1.0
    )
    rid = await pipeline.send(request)
    first = (await pipeline.wait(rid)).results[0]
    await pipeline.send(request)  # the same record again, as a redelivery would
    seen = await pipeline.wait(rid, results=2)
    assert seen.results[1].text == first.text
    assert seen.results[1] == first  # the stored (first) result, published again
    assert await pipeline.stored(rid) == first


async def test_same_seed_same_text_and_stop_sequences(pipeline: Pipeline) -> None:
    base = {"prompt": "In the beginning", "max_tokens": 32, "seed": 1234, "temperature": 0.8}
    rid = await pipeline.send(GenerationRequest.model_validate({**base, "request_id": _rid("s")}))
    text = (await pipeline.wait(rid)).results[0].text
    rid2 = await pipeline.send(GenerationRequest.model_validate({**base, "request_id": _rid("s")}))
    assert (await pipeline.wait(rid2)).results[0].text == text  # the seed fixes the text
    if len(text.strip()) < 6:
        pytest.skip(f"the model wrote too little to cut: {text!r}")
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    rid3 = await pipeline.send(
        GenerationRequest.model_validate(
            {**base, "request_id": _rid("s"), "stop": [stop], "stream": True}
        )
    )
    seen = await pipeline.wait(rid3, final_token=True)
    result = seen.results[0]
    assert result.finish_reason == "stop"
    assert result.text == text[: text.find(stop)]
    assert "".join(t.text for t in seen.tokens) == result.text


BAD_INPUTS: list[tuple[str, bytes, str]] = [
    ("notjson", b"this is not json", ErrorCode.INVALID_JSON),
    ("utf8", b'{"prompt": "caf\xe9 \xff"}', ErrorCode.INVALID_ENCODING),
    ("types", b'{"prompt": 12, "max_tokens": "many"}', ErrorCode.INVALID_REQUEST),
    ("noprompt", b'{"max_tokens": 5}', ErrorCode.MISSING_PROMPT),
    ("range", b'{"prompt": "hi", "temperature": 7.5}', ErrorCode.OUT_OF_RANGE),
    ("version", b'{"prompt": "hi", "schema_version": 9}', ErrorCode.UNSUPPORTED_SCHEMA_VERSION),
    ("model", b'{"prompt": "hi", "model": "no-such-model"}', ErrorCode.MODEL_NOT_FOUND),
    ("context", json.dumps({"prompt": "word " * 5000}).encode(), ErrorCode.CONTEXT_LENGTH_EXCEEDED),
    ("huge", b'{"prompt": "' + b"x" * (10 << 20) + b'"}', ErrorCode.REQUEST_TOO_LARGE),
]


@pytest.mark.parametrize(("tag", "value", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_gets_an_error_result_and_a_dlq_record(
    pipeline: Pipeline, tag: str, value: bytes, code: str
) -> None:
    rid = _rid(tag)
    await pipeline.send_raw(rid, value)
    seen = await pipeline.wait(rid, dlq=1)
    (result,) = seen.results
    assert result.error is not None and result.error.code == code, result.error
    assert result.error.message
    headers = dict(seen.dlq[0].headers)
    assert headers[sc.HEADER_DLQ_CODE].decode() == code
    assert headers[sc.HEADER_DLQ_REASON].decode() == result.error.message[:1000]
    assert headers[sc.HEADER_DLQ_STAGE] == b"preprocess"
    assert seen.dlq[0].value == value  # the original bytes, untouched
    assert await pipeline.stored(rid) == result
    # ... and the service is still there: the next good request works
    good = await pipeline.send(
        GenerationRequest(request_id=_rid("after"), prompt="Once upon a time", max_tokens=4)
    )
    _ok((await pipeline.wait(good)).results[0], 4)


async def test_an_outcome_gets_an_error_result_but_no_dlq_record(pipeline: Pipeline) -> None:
    """A passed deadline is an answer for the caller, not poison: the DLQ stays clean."""
    rid = _rid("deadline")
    await pipeline.send_raw(rid, json.dumps({"prompt": "hi", "deadline_ms": now_ms() - 1}).encode())
    seen = await pipeline.wait(rid)
    (result,) = seen.results
    assert result.error is not None and result.error.code == ErrorCode.DEADLINE_EXCEEDED
    await asyncio.sleep(1.0)  # a DLQ record would have been published before the result
    assert seen.dlq == []


async def test_a_request_id_reused_with_another_body_is_refused(pipeline: Pipeline) -> None:
    """Over Kafka like over HTTP: the second body gets idempotency_conflict (and a DLQ record),
    never the first body's text, and the stored result stays the first one's."""
    rid = _rid("reuse")
    first = await pipeline.send(GenerationRequest(request_id=rid, prompt="hi", max_tokens=4))
    _ok((await pipeline.wait(first)).results[0], 4)
    await pipeline.send_raw(rid, json.dumps({"prompt": "another body", "max_tokens": 4}).encode())
    seen = await pipeline.wait(rid, results=2, dlq=1)
    conflict = seen.results[1]
    assert conflict.error is not None and conflict.error.code == ErrorCode.IDEMPOTENCY_CONFLICT
    assert conflict.text == ""
    assert dict(seen.dlq[0].headers)[sc.HEADER_DLQ_CODE] == b"idempotency_conflict"
    assert await pipeline.stored(rid) == seen.results[0]


async def test_request_id_from_json_when_there_is_no_key(pipeline: Pipeline) -> None:
    rid = _rid("nokey")
    raw = json.dumps({"request_id": rid, "prompt": "x", "top_p": 3}).encode()
    await pipeline.send_raw(None, raw)
    (result,) = (await pipeline.wait(rid)).results
    assert result.error is not None and result.error.code == ErrorCode.OUT_OF_RANGE
    # the DLQ record is the original record as it was: no key
    assert any(r.value == raw for r in pipeline.keyless_dlq)


async def test_cancel_before_start(pipeline: Pipeline) -> None:
    rid = _rid("cancel")
    cancel = ControlEvent(request_id=rid, action="cancel", reason="test")
    await (await pipeline.producer.send(Topic.CONTROL, dump(cancel), key=rid.encode()))
    # Every inference instance reads the control topic from "now" (a record ends its fetch at
    # once): 3 s leaves room for a loaded broker; the cancel is remembered for 600 s.
    await asyncio.sleep(3.0)
    await pipeline.send(GenerationRequest(request_id=rid, prompt="hello", max_tokens=64))
    (result,) = (await pipeline.wait(rid)).results
    assert result.finish_reason == "cancelled" and result.error is None
    assert result.usage.completion_tokens == 0


async def test_one_trace_across_the_stages(pipeline: Pipeline) -> None:
    trace_id = os.urandom(16).hex()
    rid = await pipeline.send(
        GenerationRequest(request_id=_rid("trace"), prompt="trace me", max_tokens=8),
        headers=[("traceparent", f"00-{trace_id}-{os.urandom(8).hex()}-01".encode())],
    )
    await pipeline.wait(rid)
    url = f"{pipeline.settings.jaeger_ui_url}/api/traces/{trace_id}"
    want = {"genwire-preprocess", "genwire-inference", "genwire-postprocess"}
    spans: list[dict[str, object]] = []
    services: set[str] = set()
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while not (
            want <= services and any(s["operationName"] == "triton.generate" for s in spans)
        ):
            await asyncio.sleep(1.0)
            resp = await client.get(url)
            if resp.status_code != 200:
                continue
            (data,) = resp.json()["data"]
            spans = data["spans"]
            services = {p["serviceName"] for p in data["processes"].values()}
    (gen,) = [s for s in spans if s["operationName"] == "triton.generate"]
    tags = {t["key"]: t["value"] for t in gen["tags"]}  # type: ignore[attr-defined]
    assert tags[sc.GEN_AI_REQUEST_MODEL] == "genwire-gpt"
    assert tags[sc.GEN_AI_SYSTEM] == "triton"
    assert sc.GEN_AI_PROMPT not in tags  # no content unless trace_content


async def test_replies_go_to_the_named_partition_too(pipeline: Pipeline) -> None:
    tp = TopicPartition(Topic.REPLIES, 23)
    replies = AIOKafkaConsumer(
        bootstrap_servers=pipeline.settings.kafka_bootstrap_servers, group_id=None
    )
    await replies.start()
    try:
        replies.assign([tp])
        await replies.seek_to_end(tp)
        await replies.position(tp)
        rid = await pipeline.send(
            GenerationRequest(request_id=_rid("reply"), prompt="Once upon a time", stream=True),
            headers=[(sc.HEADER_REPLY_TO, b"genwire.replies:23")],
        )
        seen = await pipeline.wait(rid, final_token=True)
        kinds: list[bytes] = []
        async with asyncio.timeout(WAIT_S):
            while b"GenerationResult" not in kinds:
                for record in (await replies.getmany(tp, timeout_ms=200)).get(tp, []):
                    if record.key == rid.encode():
                        kinds.append(dict(record.headers)[sc.HEADER_EVENT_TYPE])
                        if kinds[-1] == b"GenerationResult":
                            reply = GenerationResult.model_validate_json(record.value or b"")
    finally:
        await replies.stop()
    # The same records as genwire.tokens/genwire.results carry (which still get everything).
    assert kinds == [b"TokenEvent"] * len(seen.tokens) + [b"GenerationResult"]
    assert reply == seen.results[0]


@pytest.mark.parametrize(
    "address",
    [b"genwire.requests:0", b"not an address", b"genwire.replies:999", b"\xff:1"],
)
async def test_a_bad_reply_address_does_not_stop_the_result(
    pipeline: Pipeline, address: bytes
) -> None:
    rid = await pipeline.send(
        GenerationRequest(request_id=_rid("badreply"), prompt="Once upon a time", max_tokens=8),
        headers=[(sc.HEADER_REPLY_TO, address)],
    )
    (result,) = (await pipeline.wait(rid)).results
    _ok(result, 8)
    assert await pipeline.stored(rid) == result
