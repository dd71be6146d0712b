"""``genwire feedback export``: caller feedback joined with its requests, as JSONL.

Reads ``genwire.feedback`` (every record since ``--since``), then, for the request ids found,
the prompts on ``genwire.requests`` and the completions on ``genwire.results``, and writes
one JSON line per piece of feedback — a data set for fine-tuning (``correction`` beside the
completion) or evaluation (``rating``/``label``).

Text is included according to ``content``:

- ``captured`` (default): only for requests whose API key opted in to content capture
  (``genwire keys create --capture-content``): the key is the one ``genwire.usage`` names for
  the request, its record is read from Redis; the text passes the same redaction (e-mail
  addresses, card numbers) as captured telemetry;
- ``all``: every request's text, unredacted (whoever can read the topics can read it anyway);
- ``none``: feedback and model version only.

A request whose records have left the topics (retention) or that was never seen (feedback
marked ``known: false``) is exported with ``content: "missing"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from genwire.feedback import FeedbackEvent
from genwire.kafka.security import client_options
from genwire.topics import Topic

Content = Literal["captured", "all", "none"]
Record = tuple[bytes | None, bytes | None]


async def read_since(
    bootstrap_servers: str,
    topic: str,
    since_ms: float,
    keep: Callable[[bytes | None], bool] = lambda _: True,
) -> list[Record]:
    """Every ``(key, value)`` of ``topic`` written since ``since_ms`` (epoch ms) up to its end
    offsets now, whose key ``keep`` accepts. A missing topic reads as empty."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **client_options(),
    )
    await consumer.start()
    try:
        known = await consumer._client._wait_on_metadata(topic) or ()  # as genwire dlq does
        parts = [TopicPartition(topic, p) for p in known]
        if not parts:
            return []
        consumer.assign(parts)
        starts = await consumer.offsets_for_times({tp: int(since_ms) for tp in parts})
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        out: list[Record] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp] and keep(r.key):
                        out.append((r.key, r.value))
        return out
    finally:
        await consumer.stop()


def parse_feedback(records: Iterable[Record]) -> tuple[list[FeedbackEvent], int]:
    """The feedback events, in topic order; and how many records were not feedback."""
    events, bad = [], 0
    for _, value in records:
        try:
            events.append(FeedbackEvent.model_validate_json(value or b""))
        except ValidationError:
            bad += 1
    return events, bad


def prompts(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Request id → ``{"prompt": ..., "messages": ...}`` from ``genwire.requests`` values
    (the first record of an id wins: a retry publishes the same request)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in records:
        try:
            data = json.loads(value or b"")
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        rid = str(data.get("request_id") or (key or b"").decode("utf-8", "replace"))
        if rid and rid not in out:
            out[rid] = {"prompt": data.get("prompt"), "messages": data.get("messages")}
    return out


def completions(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Request id → ``{"completion", "finish_reason", "model", "model_version"}`` from
    ``genwire.results`` (the first result of an id wins, as in Redis)."""
    out: dict[str, dict[str, Any]] = {}
    for _, value in records:
        try:
            data = json.loads(value or b"")
        except ValueError:
            continue
        if not isinstance(data, dict) or not data.get("request_id") or data.get("error"):
            continue
        rid = str(data["request_id"])
        if rid not in out:
            out[rid] = {
                "completion": data.get("text", ""),
                "finish_reason": data.get("finish_reason"),
                "model": data.get("model", ""),
                "model_version": data.get("model_version", ""),
            }
    return out


def captured_ids(usage: Iterable[Record], capturing_keys: set[str]) -> set[str]:
    """Request ids whose usage event names a key that opted in to content capture."""
    out: set[str] = set()
    for _, value in usage:
        try:
            data = json.loads(value or b"")
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("key_name") in capturing_keys:
            out.add(str(data.get("request_id", "")))
    return out


def join(
    feedback: Iterable[FeedbackEvent],
    requests: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any]],
    content: Content,
    allowed: set[str] | None = None,
    redact: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """One export row per feedback event. ``allowed`` (for ``captured``): the request ids
    whose text may be exported; ``redact`` is applied to every text exported."""

    def clean(text: Any) -> Any:
        return redact(text) if redact is not None and isinstance(text, str) else text

    rows = []
    for e in feedback:
        row: dict[str, Any] = {
            "request_id": e.request_id,
            "feedback_id": e.feedback_id,
            "received_at": datetime.fromtimestamp(e.received_ms / 1000, UTC).isoformat(),
            "rating": e.rating,
            "label": e.label,
            "correction": e.correction,
            "comment": e.comment,
            "known": e.known,
            "model": e.model or results.get(e.request_id, {}).get("model", ""),
            "model_version": e.model_version
            or results.get(e.request_id, {}).get("model_version", ""),
            "arm": e.arm,
            "principal": e.principal,
        }
        req, res = requests.get(e.request_id), results.get(e.request_id)
        if content == "none":
            row["content"] = "omitted"
        elif req is None and res is None:
            row["content"] = "missing"
        elif content == "captured" and (allowed is None or e.request_id not in allowed):
            row["content"] = "not captured"
        else:
            row["content"] = content
            messages = (req or {}).get("messages")
            if isinstance(messages, list):
                messages = [
                    {**m, "content": clean(m.get("content"))} if isinstance(m, dict) else m
                    for m in messages
                ]
            row |= {
                "prompt": clean((req or {}).get("prompt")),
                "messages": messages,
                "completion": clean((res or {}).get("completion")),
                "finish_reason": (res or {}).get("finish_reason"),
            }
            row["correction"] = clean(row["correction"])
        rows.append(row)
    return rows


async def export(
    bootstrap_servers: str,
    since_ms: float,
    content: Content,
    *,
    capturing_keys: set[str] | None = None,
    redact: Callable[[str], str] | None = None,
    feedback_topic: str = Topic.FEEDBACK.value,
) -> tuple[list[dict[str, Any]], int]:
    """The export rows and the number of unreadable feedback records. ``capturing_keys``:
    the names of the keys with content capture on (``captured``)."""
    feedback, bad = parse_feedback(await read_since(bootstrap_servers, feedback_topic, since_ms))
    ids = {e.request_id.encode() for e in feedback}
    requests: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    allowed: set[str] | None = None
    if feedback:
        # The request and its result precede the feedback: read from a day before.
        start = since_ms - 24 * 3600 * 1000

        def wanted(k: bytes | None) -> bool:
            return k in ids

        results = completions(await read_since(bootstrap_servers, Topic.RESULTS, start, wanted))
        if content != "none":
            requests = prompts(await read_since(bootstrap_servers, Topic.REQUESTS, start, wanted))
        if content == "captured":
            usage = await read_since(bootstrap_servers, Topic.USAGE, start, wanted)
            allowed = captured_ids(usage, capturing_keys or set())
    return join(feedback, requests, results, content, allowed, redact), bad
