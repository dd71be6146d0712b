"""The proto mapping: every request option to genwire fields, Timestamp/Duration timings,
choices and logprobs out, and what Cancel says about ids."""

from __future__ import annotations

import pytest
from genwire_gateway.errors import GatewayError
from genwire_gateway.grpc_service import request_fields, timings_message, to_response
from genwire_gateway.handlers import Chunk

from genwire.events import (
    GenerationResult,
    OutputLogprob,
    ResultChoice,
    Timings,
    TopLogprob,
    Usage,
)
from genwire.proto.v1 import generation_pb2 as pb
from genwire.request import GenerationRequest


def test_every_proto_option_becomes_a_request_field() -> None:
    message = pb.GenerateRequest(
        prompt_token_ids=[1, 2, 3],
        n=2,
        logprobs=True,
        top_logprobs=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        min_p=0.05,
        logit_bias={7: -100.0},
        min_tokens=2,
        ignore_eos=True,
        stop_token_ids=[9],
        guided=pb.Guided(kind=pb.Guided.KIND_REGEX, spec="[a-z]+"),
        model_version="2",
        max_tokens=8,
    )
    fields = {k: v for k, v in request_fields(message).items() if v is not None}
    request = GenerationRequest.model_validate({"request_id": "r1", **fields})
    assert request.prompt_token_ids == [1, 2, 3] and request.n == 2
    assert (request.logprobs, request.top_logprobs) == (True, 3)
    assert (request.presence_penalty, request.frequency_penalty) == (0.5, -0.5)
    assert request.repetition_penalty == pytest.approx(1.1)
    assert request.min_p == pytest.approx(0.05)
    assert request.logit_bias_ids() == {7: -100.0}
    assert (request.min_tokens, request.ignore_eos, request.stop_token_ids) == (2, True, [9])
    assert request.guided is not None and request.guided.kind == "regex"
    assert request.model_version == "2" and request.schema_version == 2
    # Nothing set: nothing but the defaults (a plain v1 request).
    plain = {k: v for k, v in request_fields(pb.GenerateRequest(prompt="hi")).items() if v}
    assert plain == {"prompt": "hi"}


def test_a_guided_constraint_without_a_kind_is_refused() -> None:
    with pytest.raises(GatewayError) as info:
        request_fields(pb.GenerateRequest(prompt="x", guided=pb.Guided(spec="{}")))
    assert info.value.param == "guided"


def test_timings_are_timestamps_and_durations() -> None:
    t = timings_message(
        Timings(
            received=1_700_000_000_000.0,
            first_token=1_700_000_000_250.5,
            completed=1_700_000_001_000.0,
            triton_queue_ms=1.5,
        )
    )
    assert t.received.seconds == 1_700_000_000 and t.received.nanos == 0
    assert t.first_token.ToMilliseconds() == 1_700_000_000_250
    assert t.time_to_first_token.ToNanoseconds() == 250_500_000
    assert t.total.ToMilliseconds() == 1000
    assert t.triton_queue.ToMicroseconds() == 1500
    assert not t.HasField("prepared") and not t.HasField("triton_compute")


def _lp(token: str, token_id: int) -> OutputLogprob:
    alt = TopLogprob(token="x", token_id=5, logprob=-3.0, bytes=[120])
    return OutputLogprob(
        token=token, token_id=token_id, logprob=-0.25, bytes=list(token.encode()), top=[alt]
    )


def test_choices_and_logprobs_reach_the_response() -> None:
    choices = [
        ResultChoice(index=0, text="ab", finish_reason="stop", logprobs=[_lp("ab", 1)]),
        ResultChoice(index=1, text="cd", finish_reason="length", logprobs=[_lp("cd", 2)]),
    ]
    result = GenerationResult(
        request_id="r1",
        text="ab",
        finish_reason="stop",
        logprobs=choices[0].logprobs,
        choices=choices,
        usage=Usage(prompt_tokens=1, completion_tokens=2),
    )
    response = to_response(result, model="m", trace_id="t")
    assert [c.text for c in response.choices] == ["ab", "cd"]
    assert [c.finish_reason for c in response.choices] == ["stop", "length"]
    assert response.choices[1].logprobs[0].token == "cd"
    assert response.logprobs[0].bytes == b"ab"
    assert response.logprobs[0].top_logprobs[0].token_id == 5


async def test_cancel_says_whether_the_id_was_known() -> None:
    from genwire_gateway.grpc_service import GenerationServicer

    class FakeGateway:
        def __init__(self) -> None:
            self.cancelled: list[str] = []

        async def known(self, request_id: str) -> bool:
            return request_id == "exists"

        async def cancel(self, request_id: str, reason: str = "") -> bool:
            """No keys here: anyone's cancel is published (ownership: tests/security)."""
            self.cancelled.append(request_id)
            return request_id != "refused"

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

    from genwire_gateway.telemetry import GatewayMetrics
    from opentelemetry import trace
    from prometheus_client import CollectorRegistry

    gateway = FakeGateway()
    servicer = GenerationServicer(
        gateway,  # type: ignore[arg-type]
        trace.get_tracer("test"),
        GatewayMetrics(CollectorRegistry()),
    )
    known = await servicer.Cancel(pb.CancelRequest(request_id="exists"), Context())  # type: ignore[arg-type]
    unknown = await servicer.Cancel(pb.CancelRequest(request_id="nope"), Context())  # type: ignore[arg-type]
    # A cancel the gateway did not publish (a key's of an id nobody knows) is not accepted.
    refused = await servicer.Cancel(pb.CancelRequest(request_id="refused"), Context())  # type: ignore[arg-type]
    assert (known.accepted, known.known) == (True, True)
    assert (unknown.accepted, unknown.known) == (True, False)
    assert (refused.accepted, refused.known) == (False, False)
    assert gateway.cancelled == ["exists", "nope", "refused"]


def test_stream_pieces_carry_their_choice_and_logprobs() -> None:
    from genwire_gateway.grpc_service import to_stream_response

    result = GenerationResult(request_id="r1", text="x", timings=Timings(triton_compute_ms=3))
    piece = Chunk(
        index=3, text="x", choice=2, finish_reason="stop", logprobs=[_lp("x", 4)], result=result
    )
    message = to_stream_response(piece, "r1", "t", model="genwire-gpt:5")
    assert (message.choice, message.finish_reason, message.final) == (2, "stop", False)
    assert message.logprobs[0].token_id == 4 and not message.HasField("usage")
    assert not message.HasField("timings")
    assert message.model == "genwire-gpt:5"  # every piece names the model, as OpenAI's chunks


def test_a_streams_last_message_carries_the_results_timings() -> None:
    from genwire_gateway.grpc_service import to_stream_response

    result = GenerationResult(
        request_id="r1",
        text="ab",
        usage=Usage(prompt_tokens=1, completion_tokens=2),
        timings=Timings(received=1_700_000_000_000.0, triton_queue_ms=0.5, triton_compute_ms=30),
    )
    last = Chunk(index=4, text="", final=True, finish_reason="stop", result=result)
    message = to_stream_response(last, "r1", "t", model="genwire-gpt:5")
    assert message.timings.triton_compute.ToMilliseconds() == 30
    assert message.timings.triton_queue.ToMicroseconds() == 500
    assert message.timings.received.seconds == 1_700_000_000
    assert message.model == "genwire-gpt:5"


@pytest.mark.parametrize(("wait_ms", "waited_s"), [(2**32 - 1, 5.0), (1500, 1.5), (0, 0.0)])
async def test_get_result_waits_no_longer_than_the_gateways_ceiling(
    wait_ms: int, waited_s: float
) -> None:
    """``wait_ms`` is the caller's to choose, up to ``max_timeout_s`` like every other wait."""
    from genwire_gateway.config import GatewaySettings
    from genwire_gateway.grpc_service import GenerationServicer
    from genwire_gateway.handlers import Gateway, ResultStatus
    from genwire_gateway.telemetry import GatewayMetrics
    from opentelemetry import trace
    from prometheus_client import CollectorRegistry

    class FakeGateway:
        settings = GatewaySettings(max_timeout_s=5.0)
        timeout_for = Gateway.timeout_for

        def __init__(self) -> None:
            self.waits: list[float] = []

        async def get_result(self, request_id: str, wait_s: float) -> tuple[str, None]:
            self.waits.append(wait_s)
            return ResultStatus.PENDING, None

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

        def time_remaining(self) -> None:
            return None  # no deadline: only the gateway's ceiling bounds the wait

    gateway = FakeGateway()
    servicer = GenerationServicer(
        gateway,  # type: ignore[arg-type]
        trace.get_tracer("test"),
        GatewayMetrics(CollectorRegistry()),
    )
    request = pb.GetResultRequest(request_id="r1", wait_ms=wait_ms)
    answer = await servicer.GetResult(request, Context())  # type: ignore[arg-type]
    assert answer.status == pb.GetResultResponse.STATUS_PENDING
    assert gateway.waits == [waited_s]
