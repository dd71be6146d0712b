"""Feedback: POST /v1/feedback and the gRPC FeedbackService validate, look the request up,
and publish one FeedbackEvent keyed by the request id (unknown ids accepted, marked)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from genwire_gateway.feedback import FeedbackServicer, feedback_router

from genwire.events import GenerationResult
from genwire.feedback import FeedbackEvent
from genwire.proto.v1 import feedback_pb2
from genwire.topics import Topic


class FakeStore:
    def __init__(self, results: dict[str, GenerationResult]) -> None:
        self.results = results

    async def get(self, request_id: str) -> GenerationResult | None:
        return self.results.get(request_id)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[FeedbackEvent] = []

    async def publish_and_wait(self, event: FeedbackEvent) -> None:
        self.sent.append(event)


class FakeGateway:
    def __init__(self) -> None:
        self.store = FakeStore(
            {"req-1": GenerationResult(request_id="req-1", model="m", model_version="2", arm="x")}
        )
        self.producer = FakeProducer()

    async def known(self, request_id: str) -> bool:
        return request_id == "in-flight"


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def client(gateway: FakeGateway) -> TestClient:
    app = FastAPI()
    app.include_router(feedback_router())
    app.state.gateway = gateway
    return TestClient(app)


def test_feedback_of_a_known_request_is_published_with_its_version(
    client: TestClient, gateway: FakeGateway
) -> None:
    r = client.post("/v1/feedback", json={"request_id": "req-1", "rating": 1, "label": "good"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known"] is True and body["model_version"] == "2" and body["object"] == "feedback"
    (event,) = gateway.producer.sent
    assert FeedbackEvent.TOPIC == Topic.FEEDBACK and event.key() == b"req-1"
    assert (event.rating, event.label, event.model, event.model_version, event.arm) == (
        1.0,
        "good",
        "m",
        "2",
        "x",
    )
    assert event.entrypoint == "http" and event.feedback_id == body["id"]


def test_unknown_request_ids_are_accepted_but_marked(
    client: TestClient, gateway: FakeGateway
) -> None:
    r = client.post("/v1/feedback", json={"request_id": "nope", "correction": "better text"})
    assert r.status_code == 200 and r.json()["known"] is False
    r = client.post("/v1/feedback", json={"request_id": "in-flight", "rating": -1})
    assert r.json()["known"] is True  # waited for / claimed: known, version not yet stored
    assert [e.known for e in gateway.producer.sent] == [False, True]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "req-1"}, None),  # nothing to say
        ({"request_id": "", "rating": 1}, "request_id"),
        ({"request_id": "req-1", "rating": 9}, "rating"),
        ({"request_id": "req-1", "label": "x" * 65}, "label"),
        ({"request_id": "req-1", "rating": 1, "extra": 1}, "extra"),
    ],
)
def test_bad_feedback_is_a_400_in_openai_shape_and_nothing_is_published(
    client: TestClient, gateway: FakeGateway, body: dict[str, Any], param: str | None
) -> None:
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]
    if param:
        assert error["param"] == param
    assert gateway.producer.sent == []
    assert client.post("/v1/feedback", content=b"{not json").status_code == 400


class Aborted(Exception):
    pass


class FakeContext:
    code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def test_grpc_feedback(gateway: FakeGateway) -> None:
    servicer = FeedbackServicer(gateway)  # type: ignore[arg-type]
    reply = asyncio.run(
        servicer.Feedback(
            feedback_pb2.FeedbackRequest(request_id="req-1", rating=4, comment="ok"),
            FakeContext(),  # type: ignore[arg-type]
        )
    )
    assert reply.known and reply.model_version == "2" and reply.feedback_id
    (event,) = gateway.producer.sent
    assert event.entrypoint == "grpc" and event.rating == 4.0 and event.comment == "ok"
    ctx = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(
            servicer.Feedback(feedback_pb2.FeedbackRequest(request_id="req-1"), ctx)  # type: ignore[arg-type]
        )
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and len(gateway.producer.sent) == 1


@pytest.mark.parametrize("given", ["req-1", "cmpl-req-1", "chatcmpl-req-1"])
def test_feedback_by_the_openai_response_id_finds_its_request(
    client: TestClient, gateway: FakeGateway, given: str
) -> None:
    """FeedbackBody.request_id takes the response's ``id`` (its prefix and the request id)."""
    r = client.post("/v1/feedback", json={"request_id": given, "rating": 1})
    assert r.status_code == 200, r.text
    assert (r.json()["request_id"], r.json()["known"]) == ("req-1", True)
    (event,) = gateway.producer.sent
    assert event.key() == b"req-1" and event.model_version == "2"


def test_a_request_id_that_looks_like_a_response_id_is_found_as_given(
    client: TestClient, gateway: FakeGateway
) -> None:
    gateway.store.results["cmpl-mine"] = GenerationResult(request_id="cmpl-mine", model="m")
    r = client.post("/v1/feedback", json={"request_id": "cmpl-mine", "rating": 1})
    assert (r.json()["request_id"], r.json()["known"]) == ("cmpl-mine", True)
    # Found nowhere: taken as a response id (the request id inside it is published).
    r = client.post("/v1/feedback", json={"request_id": "chatcmpl-gone", "rating": 1})
    assert (r.json()["request_id"], r.json()["known"]) == ("gone", False)
    # Not a response id around a valid request id: kept as given.
    r = client.post("/v1/feedback", json={"request_id": "cmpl-", "rating": 1})
    assert r.json()["request_id"] == "cmpl-"


def test_a_batchs_response_id_names_its_first_prompts_request(
    client: TestClient, gateway: FakeGateway
) -> None:
    """A batch answers with prompt 0's id (``x-request-id`` too): ``<key>-0`` when named."""
    gateway.store.results["key-0"] = GenerationResult(request_id="key-0", model="m")
    r = client.post("/v1/feedback", json={"request_id": "cmpl-key-0", "rating": 1})
    assert (r.json()["request_id"], r.json()["known"]) == ("key-0", True)


def test_grpc_feedback_by_the_response_id(gateway: FakeGateway) -> None:
    servicer = FeedbackServicer(gateway)  # type: ignore[arg-type]
    reply = asyncio.run(
        servicer.Feedback(
            feedback_pb2.FeedbackRequest(request_id="chatcmpl-req-1", rating=1),
            FakeContext(),  # type: ignore[arg-type]
        )
    )
    assert (reply.request_id, reply.known, reply.model_version) == ("req-1", True, "2")


def test_a_feedback_body_over_the_limit_is_a_413(client: TestClient, gateway: FakeGateway) -> None:
    from genwire_gateway.http_api import MAX_BODY_BYTES

    big = b'{"request_id": "req-1", "rating": 1, "comment": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = client.post("/v1/feedback", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert gateway.producer.sent == []
