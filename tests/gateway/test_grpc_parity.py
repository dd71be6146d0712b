"""The gRPC service keeps the HTTP API's rules (docs/api.md), called in-process: a field the proto
does not know is refused, the idempotency-key metadata is named in its refusals, the answer
echoes the model the caller asked for, and health and reflection cover FeedbackService."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from genwire_gateway import grpc_service
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import GatewayError
from genwire_gateway.feedback import FEEDBACK_SERVICE, FeedbackServicer
from genwire_gateway.grpc_service import (
    SERVICE_NAME,
    GenerationServicer,
    _unknown_field,
    build_server,
    refuse_unknown_fields,
    set_serving,
)
from genwire_gateway.handlers import Chunk, Gateway, Prepared, ResultStatus
from genwire_gateway.telemetry import GatewayMetrics
from google.protobuf import struct_pb2
from google.protobuf.internal import api_implementation
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from genwire.events import GenerationResult
from genwire.proto.v1 import feedback_pb2
from genwire.proto.v1 import generation_pb2 as pb

DEFAULT_MODEL = "genwire-gpt"
SERVED_MODEL = "served-name"
UNKNOWN_99 = bytes([0x98, 0x06, 0x01])
"""Field 99, varint 1: a field no genwire proto message has."""


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """What a servicer reads of a call: its metadata and deadline; ``abort`` raises."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeGateway:
    """Gateway's own validation; every request answered at once by a model of another name."""

    settings = GatewaySettings(default_model=DEFAULT_MODEL)
    prepare = Gateway.prepare
    timeout_for = Gateway.timeout_for
    margin_for = Gateway.margin_for

    def __init__(self) -> None:
        self.prepared: list[Prepared] = []

    def _result(self, request_id: str) -> GenerationResult:
        return GenerationResult(
            request_id=request_id, text="hi", model=SERVED_MODEL, model_version="6"
        )

    async def generate(self, prepared: Prepared) -> GenerationResult:
        self.prepared.append(prepared)
        return self._result(prepared.request_id)

    async def submit(self, prepared: Prepared) -> str:
        self.prepared.append(prepared)
        return prepared.request_id

    async def stream(self, prepared: Prepared) -> Any:
        self.prepared.append(prepared)
        raise AssertionError("not reached: refused before")
        yield  # pragma: no cover

    async def get_result(self, request_id: str, wait_s: float) -> tuple[str, GenerationResult]:
        return ResultStatus.DONE, self._result(request_id)

    async def known(self, request_id: str) -> bool:
        return True

    async def cancel(self, request_id: str, reason: str = "") -> bool:
        return True


def _servicer(gateway: FakeGateway | None = None) -> GenerationServicer:
    return GenerationServicer(
        gateway or FakeGateway(),  # type: ignore[arg-type]
        trace.get_tracer("test"),
        GatewayMetrics(CollectorRegistry()),
    )


def _with_unknown(message: Any, extra: bytes = UNKNOWN_99) -> Any:
    """``message`` as a newer client would send it: with a field this proto does not know."""
    return type(message).FromString(message.SerializeToString() + extra)


async def _call(servicer: GenerationServicer, method: str, message: Any, context: Context) -> Any:
    if method == "GenerateStream":
        return [m async for m in servicer.GenerateStream(message, context)]  # type: ignore[arg-type]
    return await getattr(servicer, method)(message, context)


# -- unknown fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("Generate", pb.GenerateRequest(prompt="Hi", max_tokens=2)),
        ("GenerateStream", pb.GenerateRequest(prompt="Hi", max_tokens=2)),
        ("Submit", pb.GenerateRequest(prompt="Hi", max_tokens=2)),
        ("GetResult", pb.GetResultRequest(request_id="r1")),
        ("Cancel", pb.CancelRequest(request_id="r1")),
    ],
)
async def test_a_field_the_proto_does_not_know_is_refused(method: str, message: Any) -> None:
    gateway = FakeGateway()
    with pytest.raises(Aborted) as info:
        await _call(_servicer(gateway), method, _with_unknown(message), Context())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details == "unsupported_parameter: unknown field 99"
    assert gateway.prepared == []  # refused before anything is published


@pytest.mark.parametrize(
    ("message", "where"),
    [
        (
            pb.GenerateRequest(
                messages=[
                    pb.ChatMessage(role="user", content="a"),
                    _with_unknown(pb.ChatMessage(role="user", content="b")),
                ]
            ),
            "messages[1]",
        ),
        (
            pb.GenerateRequest(
                prompt="x", guided=_with_unknown(pb.Guided(kind=pb.Guided.KIND_REGEX, spec="a"))
            ),
            "guided",
        ),
    ],
)
async def test_an_unknown_field_in_a_nested_message_is_refused(message: Any, where: str) -> None:
    # Built as parsed from the wire: the unknown field survives serialization of the parent.
    raw = pb.GenerateRequest.FromString(message.SerializeToString())
    with pytest.raises(Aborted) as info:
        await _servicer().Generate(raw, Context())  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details == f"unsupported_parameter: unknown field 99 in {where}"


async def test_feedback_refuses_a_field_the_proto_does_not_know() -> None:
    servicer = FeedbackServicer(FakeGateway())  # type: ignore[arg-type]
    request = _with_unknown(feedback_pb2.FeedbackRequest(request_id="r1", rating=1))
    with pytest.raises(Aborted) as info:
        await servicer.Feedback(request, Context())  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown field 99" in info.value.details


async def test_a_request_of_known_fields_is_answered() -> None:
    answer = await _servicer().Generate(pb.GenerateRequest(prompt="Hi"), Context())  # type: ignore[arg-type]
    assert answer.text == "hi"


def _chat(turns: int, last: pb.ChatMessage | None = None) -> pb.GenerateRequest:
    """A ``turns``-message chat as parsed from the wire, ``last`` its last message if given."""
    messages = [pb.ChatMessage(role="user", content=f"turn {i}") for i in range(turns)]
    if last is not None:
        messages[-1] = last
    request = pb.GenerateRequest(messages=messages, metadata={"user": "u"}, logit_bias={5: 1.0})
    return pb.GenerateRequest.FromString(request.SerializeToString())


def _verdict(message: Any) -> str | None:
    """What refuse_unknown_fields says of ``message``: its refusal, or None."""
    try:
        refuse_unknown_fields(message)
    except GatewayError as exc:
        return exc.message
    return None


def _walked(message: Any) -> str | None:
    """What the full walk alone says of ``message``, in refuse_unknown_fields' words."""
    found = _unknown_field(message)
    if found is None:
        return None
    number, where = found
    return f"unknown field {number}" + (f" in {where}" if where else "")


def _nested_list(depth: int) -> struct_pb2.ListValue:
    """A ListValue ``depth`` lists deep (2 messages a level) with field 99 at the bottom."""
    inner = struct_pb2.ListValue.FromString(UNKNOWN_99)
    for _ in range(depth):
        outer = struct_pb2.ListValue()
        outer.values.add().list_value.CopyFrom(inner)
        inner = outer
    return struct_pb2.ListValue.FromString(inner.SerializeToString())


_BASE = pb.GenerateRequest(prompt="x").SerializeToString()
_METADATA_ENTRY = b"\x0a\x01a\x12\x01b\x18\x01"  # key "a", value "b", field 3 = 1
_LOGIT_BIAS_ENTRY = b"\x08\x05\x11" + bytes(8) + b"\x18\x01"  # key 5, value 0.0, field 3 = 1
_WIRE = {
    "top": _BASE + UNKNOWN_99,
    "two unknown fields (the first is named)": _BASE + bytes([0xA0, 0x06, 0x01]) + UNKNOWN_99,
    "a group": _BASE + bytes([0x9B, 0x06, 0x08, 0x01, 0x9C, 0x06]),
    "a known number with the wrong wire type": bytes([0x10, 0x05]),  # prompt (2) as a varint
    "a metadata entry": _BASE + bytes([0x5A, len(_METADATA_ENTRY)]) + _METADATA_ENTRY,
    "a logit_bias entry": _BASE + bytes([0x9A, 0x01, len(_LOGIT_BIAS_ENTRY)]) + _LOGIT_BIAS_ENTRY,
    # Known fields only, encoded unlike protobuf would: an explicit default, an unpacked list.
    "no unknown field (non-canonical)": bytes([0x12, 0x00, 0xB0, 0x01, 0x05, 0xB0, 0x01, 0x06]),
}


@pytest.mark.parametrize(
    "message",
    [
        *(pb.GenerateRequest.FromString(raw) for raw in _WIRE.values()),
        _chat(200),
        _chat(200, _with_unknown(pb.ChatMessage(role="user", content="last"))),
        _chat(3, _with_unknown(pb.ChatMessage())),
        pb.GenerateRequest.FromString(
            pb.GenerateRequest(prompt="x", guided=_with_unknown(pb.Guided())).SerializeToString()
        ),
        pb.GenerateRequest(prompt="x"),
        _with_unknown(pb.CancelRequest(request_id="r1")),
        pb.CancelRequest(request_id="r1"),
        _with_unknown(feedback_pb2.FeedbackRequest(request_id="r1", rating=1)),
        _nested_list(40),
        _nested_list(3),
    ],
    ids=[
        *_WIRE,
        "chat200",
        "chat200 unknown in the last",
        "chat3 unknown in an empty last",
        "guided",
        "plain",
        "cancel unknown",
        "cancel",
        "feedback unknown",
        "recursive 40 deep",
        "recursive 3 deep",
    ],
)
def test_the_refusal_is_the_full_walks(message: Any) -> None:
    """The cheap check decides nothing itself: the verdict is always the walk's (same text)."""
    assert _verdict(message) == _walked(message)


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        (pb.GenerateRequest.FromString(_WIRE["top"]), "unknown field 99"),
        (pb.GenerateRequest.FromString(_WIRE["a group"]), "unknown field 99"),
        (
            pb.GenerateRequest.FromString(_WIRE["two unknown fields (the first is named)"]),
            "unknown field 100",
        ),
        (
            pb.GenerateRequest.FromString(_WIRE["a known number with the wrong wire type"]),
            "unknown field 2",
        ),
        (
            _chat(200, _with_unknown(pb.ChatMessage(role="user", content="last"))),
            "unknown field 99 in messages[199]",
        ),
        (_nested_list(40), "unknown field 99 in " + ".".join(["values[0].list_value"] * 40)),
        (pb.GenerateRequest.FromString(_WIRE["no unknown field (non-canonical)"]), None),
        (_chat(200), None),
    ],
    ids=[
        "top",
        "group",
        "first of two",
        "wrong wire type",
        "chat200 last",
        "recursive",
        "non-canonical",
        "chat200",
    ],
)
def test_unknown_fields_are_named_where_they_are(message: Any, refusal: str | None) -> None:
    # "recursive": a type that can hold itself (at any depth, past the 64 messages upb's
    # DiscardUnknownFields reaches) is always walked, never cleared by sizes alone.
    assert _verdict(message) == refusal


@pytest.mark.skipif(api_implementation.Type() != "upb", reason="upb's handling of map entries")
@pytest.mark.parametrize(
    ("entry", "number"), [("a metadata entry", 11), ("a logit_bias entry", 19)]
)
def test_a_map_entry_with_an_unknown_field_is_refused(entry: str, number: int) -> None:
    # The request maps hold scalars; upb keeps an entry with a field it does not know as an
    # unknown field of the request (not in the map): refused, naming the map's number.
    assert _verdict(pb.GenerateRequest.FromString(_WIRE[entry])) == f"unknown field {number}"


def test_a_chat_of_known_fields_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common case costs no walk in Python (issue 18: ~1 µs a held message)."""

    def walk(message: Any, path: str = "") -> None:
        raise AssertionError(f"walked {path or 'the request'}")

    monkeypatch.setattr(grpc_service, "_unknown_field", walk)
    refuse_unknown_fields(_chat(200))
    refuse_unknown_fields(
        pb.GenerateRequest(prompt="x", guided=pb.Guided(kind=pb.Guided.KIND_REGEX, spec="a"))
    )
    refuse_unknown_fields(pb.CancelRequest(request_id="r1"))


async def test_a_200_message_chat_is_answered_and_one_unknown_field_in_it_refused() -> None:
    answer = await _servicer().Generate(_chat(200), Context())  # type: ignore[arg-type]
    assert answer.text == "hi"
    last = _with_unknown(pb.ChatMessage(role="user", content="last"))
    with pytest.raises(Aborted) as info:
        await _servicer().Generate(_chat(200, last), Context())  # type: ignore[arg-type]
    assert info.value.details == "unsupported_parameter: unknown field 99 in messages[199]"


# -- the idempotency-key metadata ------------------------------------------------------------


@pytest.mark.parametrize("key", ["bad key!", "", "-starts-with-a-dash", "k" * 129])
async def test_a_malformed_idempotency_key_is_refused_naming_the_metadata(key: str) -> None:
    servicer = _servicer()
    context = Context((("idempotency-key", key),))
    with pytest.raises(GatewayError) as info:
        servicer._prepare(pb.GenerateRequest(prompt="Hi"), context, stream=False)  # type: ignore[arg-type]
    error = info.value
    assert (error.code, error.param) == ("invalid_request", "idempotency-key")
    assert "idempotency-key" in error.message and "request_id" not in error.message
    with pytest.raises(Aborted) as aborted:
        await servicer.Generate(pb.GenerateRequest(prompt="Hi"), context)  # type: ignore[arg-type]
    assert aborted.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert aborted.value.details.startswith("invalid_request: the idempotency-key metadata")


async def test_an_idempotency_key_other_than_the_request_id_names_the_metadata() -> None:
    servicer = _servicer()
    context = Context((("idempotency-key", "key-a"),))
    with pytest.raises(GatewayError) as info:
        servicer._prepare(
            pb.GenerateRequest(prompt="Hi", request_id="key-b"), context, stream=False
        )  # type: ignore[arg-type]
    error = info.value
    assert (error.code, error.param) == ("invalid_request", "idempotency-key")


async def test_a_valid_idempotency_key_names_the_request() -> None:
    gateway = FakeGateway()
    context = Context((("idempotency-key", "key-a"),))
    answer = await _servicer(gateway).Generate(pb.GenerateRequest(prompt="Hi"), context)  # type: ignore[arg-type]
    assert answer.request_id == "key-a" and gateway.prepared[0].named


# -- the model an answer names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "answered"),
    [("genwire-gpt:6", "genwire-gpt:6"), (SERVED_MODEL, SERVED_MODEL), ("", DEFAULT_MODEL)],
)
async def test_generate_echoes_the_model_the_caller_asked_for(asked: str, answered: str) -> None:
    """As HTTP (docs/api.md, *Model*): the name sent, as sent, else the default."""
    answer = await _servicer().Generate(pb.GenerateRequest(prompt="Hi", model=asked), Context())  # type: ignore[arg-type]
    assert answer.model == answered
    assert answer.model_version == "6"


class StreamingGateway(FakeGateway):
    """Streams two pieces and the final one, from a model of another name."""

    async def stream(self, prepared: Prepared) -> Any:
        self.prepared.append(prepared)
        result = self._result(prepared.request_id)
        yield Chunk(index=0, text="h")
        yield Chunk(index=1, text="i")
        yield Chunk(index=2, text="", final=True, finish_reason="stop", result=result)


@pytest.mark.parametrize(
    ("asked", "answered"),
    [("genwire-gpt:6", "genwire-gpt:6"), (SERVED_MODEL, SERVED_MODEL), ("", DEFAULT_MODEL)],
)
async def test_every_stream_message_names_the_model_as_generate_does(
    asked: str, answered: str
) -> None:
    """GenerateStreamResponse.model: Generate's rule, in every message (OpenAI's chunks)."""
    request = pb.GenerateRequest(prompt="Hi", model=asked)
    messages = await _call(_servicer(StreamingGateway()), "GenerateStream", request, Context())
    assert [m.final for m in messages] == [False, False, True]
    assert [m.model for m in messages] == [answered] * 3
    unary = await _servicer().Generate(request, Context())  # type: ignore[arg-type]
    assert unary.model == answered


async def test_get_result_names_the_served_model() -> None:
    """The name the request was sent with is not stored: the result's own."""
    answer = await _servicer().GetResult(pb.GetResultRequest(request_id="r1"), Context())  # type: ignore[arg-type]
    assert answer.result.model == SERVED_MODEL


# -- health and reflection -------------------------------------------------------------------


async def test_health_and_reflection_cover_the_feedback_service() -> None:
    from genwire_gateway.feedback import add_to_server
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    gateway = FakeGateway()
    settings = GatewaySettings(grpc_host="127.0.0.1", grpc_port=0, grpc_reflection=True)
    server, health = build_server(settings, _servicer(gateway))
    add_to_server(server, gateway)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await set_serving(health, True)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME, FEEDBACK_SERVICE):
                check = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING, name

        def services() -> list[str]:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                return list(ProtoReflectionDescriptorDatabase(channel).get_services())

        names = await asyncio.to_thread(services)
        assert {SERVICE_NAME, FEEDBACK_SERVICE, "grpc.health.v1.Health"} <= set(names)
    finally:
        await server.stop(None)
