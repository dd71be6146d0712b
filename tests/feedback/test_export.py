"""``genwire feedback export``: the join (pure), and end to end on the running stack: a real
request, its feedback through the gateway, the exported line with its prompt and completion."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import httpx
from genwire_cli.feedback import captured_ids, completions, export, join, prompts

from genwire.apikeys import auth_headers, auth_metadata
from genwire.feedback import FeedbackEvent
from genwire.proto.v1 import feedback_pb2, feedback_pb2_grpc
from genwire.redaction import Redactor
from genwire.settings import CommonSettings

GATEWAY = "http://127.0.0.1:8080"


def _rec(value: dict[str, object]) -> tuple[bytes, bytes]:
    return str(value.get("request_id", "")).encode(), json.dumps(value).encode()


def test_the_join_exports_text_only_where_allowed_and_redacts_it() -> None:
    requests = prompts(
        [
            _rec({"request_id": "a", "prompt": "mail me at x@example.com"}),
            _rec({"request_id": "b", "messages": [{"role": "user", "content": "hi"}]}),
            (b"junk", b"not json"),
        ]
    )
    results = completions(
        [
            _rec(
                {
                    "request_id": "a",
                    "text": "ok",
                    "finish_reason": "stop",
                    "model": "m",
                    "model_version": "2",
                }
            ),
            _rec({"request_id": "a", "text": "a redelivery", "finish_reason": "stop"}),
            _rec({"request_id": "b", "text": "hello", "finish_reason": "length"}),
        ]
    )
    usage = [
        _rec({"request_id": "a", "key_name": "team-eval"}),
        _rec({"request_id": "b", "key_name": "team-quiet"}),
    ]
    allowed = captured_ids(usage, {"team-eval"})
    assert allowed == {"a"}
    feedback = [
        FeedbackEvent(request_id="a", rating=1, known=True, correction="card 4111 1111 1111 1111"),
        FeedbackEvent(request_id="b", label="wrong", known=True),
        FeedbackEvent(request_id="gone", rating=-1),
    ]
    rows = {
        r["request_id"]: r
        for r in join(feedback, requests, results, "captured", allowed, Redactor())
    }
    a, b, gone = rows["a"], rows["b"], rows["gone"]
    assert a["content"] == "captured" and a["completion"] == "ok"  # the first result wins
    assert a["prompt"] == "mail me at [REDACTED:email]" and "[REDACTED:card]" in a["correction"]
    assert (a["model"], a["model_version"]) == ("m", "2")  # from the result when not on the event
    assert b["content"] == "not captured" and "completion" not in b and b["label"] == "wrong"
    assert gone["content"] == "missing" and gone["known"] is False
    everything = {r["request_id"]: r for r in join(feedback, requests, results, "all")}
    assert everything["b"]["messages"] == [{"role": "user", "content": "hi"}]
    assert everything["b"]["completion"] == "hello"
    assert all(r["content"] == "omitted" for r in join(feedback, requests, results, "none"))


async def _grpc_feedback(rid: str) -> feedback_pb2.FeedbackReply:
    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        reply: feedback_pb2.FeedbackReply = await stub.Feedback(
            feedback_pb2.FeedbackRequest(request_id=rid, rating=-1, label="via-grpc"),
            metadata=auth_metadata(),
        )
        return reply


def test_export_end_to_end_through_the_gateway(stack: CommonSettings) -> None:
    since_ms = time.time() * 1000 - 5000
    prompt = f"Feedback test {uuid.uuid4().hex[:6]}:"
    with httpx.Client(base_url=GATEWAY, timeout=60, headers=auth_headers()) as client:
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8})
        assert r.status_code == 200, r.text
        answer = r.json()
        rid = r.headers["x-request-id"]
        fb = client.post(
            "/v1/feedback",
            json={"request_id": rid, "rating": 5, "label": "good", "correction": "better"},
        )
        assert fb.status_code == 200, fb.text
        assert fb.json()["known"] is True and fb.json()["model_version"]
        unknown = client.post("/v1/feedback", json={"request_id": f"nope-{rid}", "rating": 1})
        assert unknown.status_code == 200 and unknown.json()["known"] is False
        bad = client.post("/v1/feedback", json={"request_id": rid})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    over_grpc = asyncio.run(_grpc_feedback(rid))
    assert over_grpc.known and over_grpc.model_version == fb.json()["model_version"]
    # The app hands the FeedbackService the gateway's metrics: the call is counted.
    exposed = httpx.get(f"{GATEWAY}/metrics", timeout=10).text
    counted = [
        line
        for line in exposed.splitlines()
        if line.startswith("genwire_requests_total{")
        and 'method="Feedback"' in line
        and 'code="ok"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, counted
    rows, _ = asyncio.run(export(stack.kafka_bootstrap_servers, since_ms, "all"))
    grpc_rows = [r for r in rows if r["request_id"] == rid and r["label"] == "via-grpc"]
    assert len(grpc_rows) == 1 and grpc_rows[0]["principal"]  # the key's name
    mine = {r["request_id"]: r for r in rows if rid in r["request_id"] and r not in grpc_rows}
    row = mine[rid]
    assert row["prompt"] == prompt and row["completion"] == answer["choices"][0]["text"]
    assert (row["rating"], row["label"], row["correction"]) == (5.0, "good", "better")
    assert row["known"] is True and row["model_version"] == fb.json()["model_version"]
    assert mine[f"nope-{rid}"]["content"] == "missing"
    rows, _ = asyncio.run(export(stack.kafka_bootstrap_servers, since_ms, "none"))
    assert {r["content"] for r in rows if r["request_id"] == rid} == {"omitted"}
