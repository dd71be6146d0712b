"""Bounds on what a caller (or a direct Kafka producer) can make a service hold or compute:
the redactor is linear on any input, a cancel's reason is cut before it is redacted or
published, and request ids of GetResult, Cancel and control records are request ids (at most
``MAX_REQUEST_ID_CHARS``). Before: a 40 kB reason held the gateway's event loop for seconds
(the e-mail pattern was quadratic), and ids of any size were published and remembered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from genwire_gateway.grpc_service import GenerationServicer
from genwire_gateway.handlers import ResultStatus
from genwire_gateway.telemetry import GatewayMetrics
from genwire_inference.control import InFlight
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from genwire.events import (
    MAX_ORIGIN_CHARS,
    MAX_REASON_CHARS,
    MAX_REQUEST_ID_CHARS,
    REQUEST_ID_PATTERN,
    ControlEvent,
    dump,
)
from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka.failures import RawRecord
from genwire.proto.v1 import generation_pb2 as pb
from genwire.redaction import Redactor
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

SIZE = 200_000
"""Adversarial input size: the quadratic e-mail pattern took minutes on it."""
BOUND_S = 2.0
"""Of this thread's CPU time (a loaded machine's waits are not counted): the linear patterns
take well under 0.5 s here."""

ADVERSARIAL = {
    "letters": "a" * SIZE,
    "digits": "1" * SIZE,
    "dots": "." * SIZE,
    "ats": "@" * SIZE,
    "letter-at": "a@" * (SIZE // 2),
    "spaces": " " * SIZE,
    "mixed": ("ab1.c-d_e%f+g " * (SIZE // 14 + 1))[:SIZE],
    "domain without a dot": "x@" + "b" * SIZE,
    "domain of one-letter labels": "x@" + "a." * (SIZE // 2),
    "glued addresses": "a@b.cc_" * (SIZE // 7),
    "digits and spaces": "1 " * (SIZE // 2),
    "digits and dashes": "1-" * (SIZE // 2),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_the_redactor_is_linear_on_adversarial_input(name: str) -> None:
    redact = Redactor()
    started = time.thread_time()
    redact(ADVERSARIAL[name])
    assert time.thread_time() - started < BOUND_S, f"{name}: the redactor is not linear"


def test_the_linear_e_mail_pattern_masks_what_the_plain_one_did() -> None:
    redact = Redactor()
    assert redact("to a.b+c@mail.example.org now") == "to [REDACTED:email] now"
    assert redact("(ada@example.com)") == "([REDACTED:email])"
    # Glued to the address before it: the plain pattern masked both, so does this one.
    assert redact("a@b.cc_x@y.com") == "[REDACTED:email][REDACTED:email]"
    assert redact("a@b.cc-x@y.com and 4111 1111 1111 1111") == (
        "[REDACTED:email][REDACTED:email] and [REDACTED:card]"
    )
    assert redact("no address @ here, nor x@y") == "no address @ here, nor x@y"


# -- gRPC: ids and reasons ---------------------------------------------------------------------


class Aborted(Exception):
    """What ``context.abort`` raises (grpc's AbortError, here with the status kept)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """The servicer context a unary call sees: no metadata, no deadline."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeGateway:
    """What GetResult and Cancel call; records what reached it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.reasons: list[str] = []

    async def known(self, request_id: str) -> bool:
        self.seen.append(request_id)
        return True

    async def cancel(self, request_id: str, reason: str = "") -> bool:
        self.seen.append(request_id)
        self.reasons.append(reason)
        return True

    def timeout_for(self, wait_s: float) -> float:
        return wait_s

    async def get_result(self, request_id: str, wait_s: float) -> tuple[str, None]:
        self.seen.append(request_id)
        return ResultStatus.PENDING, None


def _servicer(gateway: FakeGateway) -> GenerationServicer:
    return GenerationServicer(
        gateway,  # type: ignore[arg-type]
        trace.get_tracer("test"),
        GatewayMetrics(CollectorRegistry()),
    )


BAD_IDS = {
    "one too long": "r" * (MAX_REQUEST_ID_CHARS + 1),
    "a megabyte": "r" * (1 << 20),
    "a space": "req 1",
    "a leading dash": "-r1",
}


@pytest.mark.parametrize("method", ["GetResult", "Cancel"])
@pytest.mark.parametrize("what", sorted(BAD_IDS))
async def test_get_result_and_cancel_refuse_what_is_no_request_id(method: str, what: str) -> None:
    gateway = FakeGateway()
    servicer = _servicer(gateway)
    message: Any = (pb.GetResultRequest if method == "GetResult" else pb.CancelRequest)(
        request_id=BAD_IDS[what]
    )
    with pytest.raises(Aborted) as info:
        await getattr(servicer, method)(message, Context())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in info.value.details and REQUEST_ID_PATTERN in info.value.details
    assert len(info.value.details) < 500  # the id is not echoed
    assert gateway.seen == [] and gateway.reasons == []


async def test_the_longest_request_id_is_taken() -> None:
    gateway = FakeGateway()
    servicer = _servicer(gateway)
    longest = "r" * MAX_REQUEST_ID_CHARS
    await servicer.GetResult(pb.GetResultRequest(request_id=longest), Context())  # type: ignore[arg-type]
    answer = await servicer.Cancel(pb.CancelRequest(request_id=longest), Context())  # type: ignore[arg-type]
    assert answer.accepted and set(gateway.seen) == {longest}


async def test_a_cancel_reason_is_cut_before_the_gateway_redacts_or_publishes_it() -> None:
    gateway = FakeGateway()
    servicer = _servicer(gateway)
    long = pb.CancelRequest(request_id="r1", reason="x" * 100_000)
    await servicer.Cancel(long, Context())  # type: ignore[arg-type]
    await servicer.Cancel(pb.CancelRequest(request_id="r1"), Context())  # type: ignore[arg-type]
    assert gateway.reasons == ["x" * MAX_REASON_CHARS, "cancelled by caller"]


# -- control records ---------------------------------------------------------------------------


def test_a_control_record_carries_a_request_id_and_a_bounded_reason() -> None:
    for bad in BAD_IDS.values():
        with pytest.raises(ValidationError, match="request_id"):
            ControlEvent(request_id=bad, action="cancel")
    with pytest.raises(ValidationError):
        ControlEvent(request_id="", action="heartbeat", origin="o" * (MAX_ORIGIN_CHARS + 1))
    assert ControlEvent(request_id="", action="heartbeat", origin="gw1").request_id == ""
    # An older gateway's long reason is cut, not refused.
    raw = b'{"request_id": "r1", "action": "cancel", "reason": "%s"}' % (b"y" * 5000)
    event = ControlEvent.model_validate_json(raw)
    assert event.reason == "y" * MAX_REASON_CHARS


def _control_record(value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        Topic.CONTROL, 0, 7, int(time.time() * 1000), 0, None, value, None, 0, len(value), []
    )


async def test_inference_dead_letters_a_control_record_with_an_oversized_id() -> None:
    """A direct producer's cancel of a megabyte id is dead-lettered, not remembered; the next
    record is handled as usual (nothing stalls)."""
    in_flight = InFlight()
    consumer: EventConsumer[ControlEvent] = EventConsumer(
        topic=Topic.CONTROL,
        group_id=None,
        model=ControlEvent,
        handler=in_flight.control,
        producer=EventProducer("k:9092"),
        bootstrap_servers="k:9092",
        stage="inference",
    )
    sent: list[Any] = []

    async def publish(tp: object, out: Any) -> asyncio.Future[object]:
        sent.append(out)
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    consumer._paths._publish = publish
    tp = TopicPartition(Topic.CONTROL, 0)
    huge = b'{"request_id": "%s", "action": "cancel"}' % (b"r" * (1 << 20))
    async with asyncio.timeout(5):
        assert await consumer._handle_record(tp, _control_record(huge)) == "invalid"
        ok = dump(ControlEvent(request_id="r1", action="cancel", reason="bye"))
        assert await consumer._handle_record(tp, _control_record(ok)) == "ok"
    (letter,) = sent
    assert isinstance(letter, RawRecord) and letter.topic == Topic.DLQ
    assert dict(letter.headers)[sc.HEADER_DLQ_CODE] == b"invalid_message"
    assert in_flight._cancelled.keys() == {"r1"}
