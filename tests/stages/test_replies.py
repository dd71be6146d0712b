"""Direct replies in postprocess: the reply address a request carries, good and bad."""

from __future__ import annotations

import asyncio

import pytest
from genwire_postprocess.replies import ReplyRouter
from prometheus_client import CollectorRegistry

from genwire.events import ControlEvent, Event, GenerationResult, TokenEvent
from genwire.kafka.failures import RawRecord
from genwire.kafka.producer import FORWARDED_HEADERS, forward_headers, forwarded
from genwire.telemetry import semconv as sc
from genwire.topics import ReplyTo, Topic


class FakeProducer:
    """Metadata of one topic: which partitions it has."""

    def __init__(self, partitions: dict[str, frozenset[int]]) -> None:
        self.known = partitions
        self.refreshes = 0

    def partitions(self, topic: str) -> frozenset[int] | None:
        return self.known.get(topic)

    async def refresh_partitions(self, topic: str, timeout_s: float = 5.0) -> frozenset[int]:
        self.refreshes += 1
        return self.known.get(topic, frozenset())


def _router() -> tuple[ReplyRouter, CollectorRegistry, FakeProducer]:
    registry = CollectorRegistry()
    producer = FakeProducer({Topic.REPLIES.value: frozenset(range(24))})
    return ReplyRouter(producer, Topic.REPLIES.value, registry), registry, producer  # type: ignore[arg-type]


def _outputs() -> list[Event]:
    return [
        TokenEvent(request_id="r", index=0, text="hi", final=True),
        ControlEvent(request_id="r", action="cancel"),
        GenerationResult(request_id="r", text="hi"),
    ]


def _count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value(sc.METRIC_REPLY_ROUTES, {"outcome": outcome}) or 0


def test_the_reply_header_is_forwarded_hop_to_hop() -> None:
    assert sc.HEADER_REPLY_TO in FORWARDED_HEADERS

    async def handle() -> bytes | None:
        forward_headers([(sc.HEADER_REPLY_TO, b"genwire.replies:3"), ("other", b"x")])
        return forwarded(sc.HEADER_REPLY_TO)

    assert asyncio.run(handle()) == b"genwire.replies:3"
    assert forwarded(sc.HEADER_REPLY_TO) is None  # only inside the task handling the record


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"genwire.replies",
        b"genwire.replies:",
        b":3",
        b"genwire.replies:-1",
        b"genwire.replies:x",
        b"genwire.replies:1.5",
        b"\xff\xfe:1",
        b"a b:1",
        b"genwire.replies:" + b"9" * 12,
        b"t" * 300 + b":1",
    ],
)
def test_malformed_reply_addresses_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        ReplyTo.parse(raw)


def test_a_reply_address_round_trips() -> None:
    assert ReplyTo.parse(ReplyTo("genwire.replies", 17).encode()) == ReplyTo("genwire.replies", 17)


async def test_chunks_and_result_also_go_to_the_named_partition() -> None:
    router, registry, _ = _router()
    forward_headers([(sc.HEADER_REPLY_TO, b"genwire.replies:5")])
    out = await router.with_replies(_outputs())
    copies = [o for o in out if isinstance(o, RawRecord)]
    assert [(c.topic, c.partition, c.key) for c in copies] == [("genwire.replies", 5, b"r")] * 2
    assert [dict(c.headers)[sc.HEADER_EVENT_TYPE] for c in copies] == [
        b"TokenEvent",
        b"GenerationResult",
    ]
    assert out[2:] == _outputs()  # genwire.tokens/results/control exactly as without replies
    assert _count(registry, "routed") == 1


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (b"genwire.replies:oops", "malformed"),
        (b"\x00\x01", "malformed"),
        (b"genwire.requests:0", "foreign_topic"),  # a header never picks where results go
        (b"genwire.results:1", "foreign_topic"),
        (b"genwire.replies:999", "unknown_partition"),
    ],
)
async def test_a_bad_reply_address_is_counted_and_results_still_flow(
    raw: bytes, outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    router, registry, _ = _router()
    forward_headers([(sc.HEADER_REPLY_TO, raw)])
    assert await router.with_replies(_outputs()) == _outputs()
    assert _count(registry, outcome) == 1 and _count(registry, "routed") == 0
    assert outcome in caplog.text
    # The failure path (no waiting for metadata) judges the same way.
    assert router.with_replies_now(_outputs(), [(sc.HEADER_REPLY_TO, raw)]) == _outputs()
    assert _count(registry, outcome) == 2


async def test_a_partition_added_since_is_found_by_a_metadata_refresh() -> None:
    router, _, producer = _router()
    producer.known = {Topic.REPLIES.value: frozenset(range(24))}
    forward_headers([(sc.HEADER_REPLY_TO, b"genwire.replies:30")])

    class Grown(FakeProducer):
        async def refresh_partitions(self, topic: str, timeout_s: float = 5.0) -> frozenset[int]:
            self.known = {topic: frozenset(range(32))}
            return self.known[topic]

    router.producer = Grown(producer.known)  # type: ignore[assignment]
    out = await router.with_replies(_outputs())
    assert any(isinstance(o, RawRecord) and o.partition == 30 for o in out)


async def test_no_header_no_copies() -> None:
    router, registry, _ = _router()
    forward_headers([])
    assert await router.with_replies(_outputs()) == _outputs()
    assert sum(_count(registry, o) for o in ("routed", "malformed")) == 0


async def test_a_cold_instance_routes_every_reply_while_its_metadata_loads() -> None:
    # A freshly started postprocess knows no partitions yet; records handled concurrently
    # while the first metadata refresh is in flight must wait for it, not give up their reply
    # (seen when scaling out: a lost unary reply, a stream missing its first piece).
    class Cold(FakeProducer):
        async def refresh_partitions(self, topic: str, timeout_s: float = 5.0) -> frozenset[int]:
            self.refreshes += 1
            await asyncio.sleep(0.05)
            self.known = {topic: frozenset(range(24))}
            return self.known[topic]

    producer = Cold({})
    registry = CollectorRegistry()
    router = ReplyRouter(producer, Topic.REPLIES.value, registry)  # type: ignore[arg-type]

    async def one(partition: int) -> list[object]:
        forward_headers([(sc.HEADER_REPLY_TO, f"genwire.replies:{partition}".encode())])
        return list(await router.with_replies(_outputs()))

    outs = await asyncio.gather(*(one(p) for p in range(5)))
    for partition, out in enumerate(outs):
        assert [o.partition for o in out if isinstance(o, RawRecord)] == [partition] * 2
    assert _count(registry, "routed") == 5 and _count(registry, "unknown_partition") == 0
    assert producer.refreshes == 1
