"""``genwire dlq``: list and replay against the real broker; the result store's replay rule
against the real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from genwire_cli.dlq import Selection, read_letters, replay
from genwire_cli.main import main

from genwire.events import ErrorInfo, GenerationResult
from genwire.kafka import EventProducer
from genwire.results import ResultStore
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

from .support import _read

Env = tuple[str, str, EventProducer]


async def test_dead_letters_are_selected_and_replayed_to_their_topic(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap, topic, producer = env
    run = f"fix-dlq-{uuid.uuid4().hex[:8]}"
    keys = {f"{run}-a": "invalid_json", f"{run}-b": "unavailable"}
    for key, code in keys.items():
        headers = [
            ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            (sc.HEADER_DLQ_CODE, code.encode()),
            (sc.HEADER_DLQ_TOPIC, topic.encode()),
            (sc.HEADER_DLQ_STAGE, b"inference"),
            (sc.HEADER_DLQ_REASON, b"because"),
        ]
        await (await producer.send(Topic.DLQ, key.encode(), key=key.encode(), headers=headers))
    chosen = await read_letters(
        bootstrap, Topic.DLQ, Selection(codes=frozenset({"unavailable"}), keys=frozenset(keys))
    )
    assert [(c.key, c.code, c.origin_topic) for c in chosen] == [
        (f"{run}-b".encode(), "unavailable", topic)
    ]
    assert await replay(bootstrap, chosen) == chosen
    (back,) = await _read(bootstrap, topic, {f"{run}-b".encode()})
    headers = dict(back.headers)
    assert back.value == f"{run}-b".encode()
    assert headers[sc.HEADER_REPLAYED_FROM] == chosen[0].where.encode()
    assert "traceparent" in headers and sc.HEADER_DLQ_CODE not in headers
    # The command line: a dry run lists and sends nothing; invalid_json is the caller's fault,
    # left out unless asked for.
    dry = ["dlq", "replay", "--key", f"{run}-a", "--dry-run"]
    assert await asyncio.to_thread(main, dry) == 0
    out = capsys.readouterr().out
    assert "0 record(s) selected" in out and "skipped 1 record(s)" in out
    assert await asyncio.to_thread(main, [*dry, "--include-permanent"]) == 0
    out = capsys.readouterr().out
    assert f"key={run}-a" in out and "code=invalid_json" in out and "1 record(s) selected" in out


async def test_a_dead_letter_cut_to_fit_is_listed_but_never_replayed(env: Env) -> None:
    """Its value is only the start of what came (``genwire_dlq_truncated``): replaying it
    would send the stage bytes that are not the request."""
    bootstrap, topic, producer = env
    key = f"cut-{uuid.uuid4().hex[:8]}"
    headers = [
        (sc.HEADER_DLQ_CODE, b"request_too_large"),
        (sc.HEADER_DLQ_TOPIC, topic.encode()),
        (sc.HEADER_DLQ_TRUNCATED, b"16777016"),
    ]
    await (await producer.send(Topic.DLQ, b'{"request_id": "', key=key.encode(), headers=headers))
    (chosen,) = await read_letters(bootstrap, Topic.DLQ, Selection(keys=frozenset({key})))
    assert chosen.truncated == 16777016 and chosen.origin_topic == topic
    assert await replay(bootstrap, [chosen]) == []


async def test_a_replayed_result_replaces_a_server_side_error_only(
    infra: CommonSettings,
) -> None:
    store = ResultStore.connect(infra.redis_url, ttl_s=60)
    rid = f"replace-{uuid.uuid4().hex[:8]}"
    down = GenerationResult(request_id=rid, error=ErrorInfo(code="unavailable", message="x"))
    real = GenerationResult(request_id=rid, text="generated after the replay")
    other = GenerationResult(request_id=rid, text="a later duplicate")
    try:
        assert await store.put_first(down) == down
        assert await store.put_first(real) == real  # the outage error was never an answer
        assert await store.put_first(other) == real  # a real answer is never replaced
        filtered = GenerationResult(
            request_id=f"{rid}-f", error=ErrorInfo(code="content_filtered", message="y")
        )
        await store.put_first(filtered)
        assert await store.put_first(real.model_copy(update={"request_id": f"{rid}-f"})) == filtered
        # A failure postprocess stored for a chunk it could not handle: replaced too.
        for code in ("internal", "model_not_found", "inference_failed"):
            failed = GenerationResult(
                request_id=f"{rid}-{code}", error=ErrorInfo(code=code, message="z")
            )
            await store.put_first(failed)
            fixed = real.model_copy(update={"request_id": f"{rid}-{code}"})
            assert await store.put_first(fixed) == fixed
        refused = GenerationResult(
            request_id=f"{rid}-r", error=ErrorInfo(code="out_of_range", message="w")
        )
        await store.put_first(refused)
        assert await store.put_first(real.model_copy(update={"request_id": f"{rid}-r"})) == refused
    finally:
        await store.close()
