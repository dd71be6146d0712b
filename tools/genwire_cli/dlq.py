"""``genwire dlq``: list and replay records of ``genwire.dlq`` and ``genwire.retry``.

A dead-lettered record is poison (or a request whose dependency stayed down through every
replay); a parked one waits on ``genwire.retry`` for its automatic replay. Either can be sent
back to the topic it came from once its cause is fixed: the original key, value and headers
(trace context included) go back, without the ``genwire_dlq_*``/``genwire_retry_*`` details,
plus ``genwire_replayed_from`` (``<topic>:<partition>:<offset>``). Replaying is safe to repeat:
the stages are idempotent by request id, and a stored server-side error result (a 5xx code,
``model_not_found``: ``genwire.results.replaceable``) is replaced by the replay's real result
(any other stored result stays). A dead letter whose value was cut
to fit Kafka (``genwire_dlq_truncated``) is listed but never replayed: its bytes are not the
request's.
A tombstone's dead letter (``genwire_dlq_null_value``) is not replayed either: the letter's
value is empty, not the null that came, and a null request is refused again anyway.

Replay sends in (partition, offset) order of the source topic and confirms each send in
order, so a replay that stops (a failed send, Ctrl-C) names the last record confirmed:
``--after <topic>:<partition>:<offset>`` resumes after it. Records whose code is a caller's
fault (``PERMANENT_CODES``: a replay sends the same bytes, refused the same way) are skipped
unless asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from genwire.kafka import EventProducer
from genwire.kafka.failures import HEADER_DLQ_NULL_VALUE, header
from genwire.kafka_security import client_options
from genwire.request import ERROR_HTTP_STATUS, ErrorCode
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

SOURCES = {"dlq": Topic.DLQ, "retry": Topic.RETRY}

PERMANENT_CODES = frozenset(
    str(code)
    for code, status in ERROR_HTTP_STATUS.items()
    if 400 <= status < 500 and code != ErrorCode.MODEL_NOT_FOUND
)
"""Codes that are the caller's fault (a 4xx): the request itself is refused (malformed, out of
range, too long for the model, filtered, its id taken), so replaying the same bytes is refused
the same way. ``model_not_found`` is not among them: a model loaded since can answer it
(``genwire.results.replaceable``)."""

SEND_WINDOW = 256
"""Sends in flight at once during a replay (each is confirmed in order)."""


@dataclass(frozen=True)
class Letter:
    """One record of the DLQ or the retry topic, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    origin_topic: str
    code: str
    stage: str
    reason: str
    truncated: int | None = None
    """The original value's size, when only its start was dead-lettered (too large for Kafka)."""
    null_value: bool = False
    """The original value was null (a tombstone; ``genwire_dlq_null_value``): ``value`` is empty."""
    origin_partition: int | None = None
    origin_offset: int | None = None

    @property
    def where(self) -> str:
        """``<topic>:<partition>:<offset>`` of this record."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def replayable(self) -> bool:
        """Whether replay can send it back: it says where from, and its value is the original."""
        return bool(self.origin_topic) and self.truncated is None and not self.null_value

    def request_ids(self) -> set[str]:
        """The request ids this record may carry: its key, the value's ``request_id`` (when
        the value is a JSON object), and for a keyless record the id preprocess gives it
        (``anon-<partition>-<offset>`` of the topic it came from)."""
        if self.key:  # preprocess's rule: a record's key is its request id
            return {self.key.decode("utf-8", "replace")}
        ids: set[str] = set()
        parsed = None
        if b'"request_id"' in self.value:  # a parse only where there is one to find
            try:
                parsed = json.loads(self.value)
            except (ValueError, RecursionError):  # poison: deeply nested input is here too
                parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("request_id"), str):
            ids.add(parsed["request_id"])
        elif self.origin_topic == Topic.REQUESTS and self.origin_partition is not None:
            ids.add(f"anon-{self.origin_partition}-{self.origin_offset}")
        return ids


def _text(record: ConsumerRecord[bytes, bytes], dlq: str, retry: str) -> str:
    raw = header(record, dlq) or header(record, retry) or b""
    return raw.decode("utf-8", "replace")


def letter(record: ConsumerRecord[bytes, bytes]) -> Letter:
    """Read the ``genwire_dlq_*`` or ``genwire_retry_*`` headers of ``record``."""
    return Letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=tuple(record.headers or ()),
        origin_topic=_text(record, sc.HEADER_DLQ_TOPIC, sc.HEADER_RETRY_TOPIC),
        code=_text(record, sc.HEADER_DLQ_CODE, sc.HEADER_RETRY_CODE),
        stage=_text(record, sc.HEADER_DLQ_STAGE, sc.HEADER_RETRY_STAGE),
        reason=_text(record, sc.HEADER_DLQ_REASON, sc.HEADER_RETRY_REASON),
        truncated=_size(header(record, sc.HEADER_DLQ_TRUNCATED)),
        null_value=header(record, HEADER_DLQ_NULL_VALUE) == b"true",
        origin_partition=_int(header(record, sc.HEADER_DLQ_PARTITION)),
        origin_offset=_int(header(record, sc.HEADER_DLQ_OFFSET)),
    )


def _int(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _size(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return -1  # cut, its size unreadable: still never replayed


@dataclass(frozen=True)
class Selection:
    """Which letters to act on (every criterion given must match)."""

    codes: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    limit: int | None = None
    origins: frozenset[str] = frozenset()
    """Only records that came from one of these topics."""
    after: tuple[str, int, int] | None = None
    """``(topic, partition, offset)``: only records of ``topic`` past it in (partition,
    offset) order, the order replay sends in (resuming a replay that stopped)."""
    permanent: bool = True
    """False: records whose code is in ``PERMANENT_CODES`` are left out (and counted)."""

    @property
    def filtered(self) -> bool:
        """Whether any criterion narrows the selection (``limit`` does not: it takes any)."""
        return bool(self.codes or self.stages or self.keys or self.origins or self.after)

    def matches(self, item: Letter) -> bool:
        """Whether ``item`` is selected (whatever its code's permanence: see ``excludes``)."""
        return (
            (not self.codes or item.code in self.codes)
            and (not self.stages or item.stage in self.stages)
            and (not self.origins or item.origin_topic in self.origins)
            and (
                self.after is None
                or item.topic != self.after[0]
                or (item.partition, item.offset) > self.after[1:]
            )
            and (not self.keys or bool(item.request_ids() & self.keys))
        )

    def excludes(self, item: Letter) -> bool:
        """Whether a matching ``item`` is left out for its code: the caller's fault."""
        return not self.permanent and item.code in PERMANENT_CODES


@dataclass
class Tally:
    """What a read saw besides what it selected."""

    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(code, stage) of every record read."""
    permanent: Counter[str] = field(default_factory=Counter)
    """Codes of the records that matched but were left out as the caller's fault."""


def parse_after(text: str) -> tuple[str, int, int]:
    """``<topic>:<partition>:<offset>`` as ``(topic, partition, offset)``; ValueError if not."""
    topic, _, rest = text.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    if not topic:
        raise ValueError(f"expected TOPIC:PARTITION:OFFSET, got {text!r}")
    return topic, int(partition), int(rest)


async def read_letters(
    bootstrap_servers: str, topic: str, selection: Selection, tally: Tally | None = None
) -> list[Letter]:
    """Every selected record of ``topic`` up to its end now (no group: nothing is committed),
    in (partition, offset) order; ``tally`` counts what was seen and left out."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **client_options(),
    )
    await consumer.start()
    try:
        # No public async metadata call on the consumer (aiokafka 0.14, pinned): this is what
        # the producer's public partitions_for() awaits.
        known = await consumer._client._wait_on_metadata(topic) or ()
        parts = [TopicPartition(topic, p) for p in known]
        if not parts:
            return []
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[Letter] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    item = letter(record)
                    if tally is not None:
                        tally.seen[(item.code, item.stage)] += 1
                    if not selection.matches(item):
                        continue
                    if selection.excludes(item):
                        if tally is not None:
                            tally.permanent[item.code] += 1
                        continue
                    out.append(item)
        # The limit after the sort, not while reading (fetches mix partitions): the first N in
        # (partition, offset) order, so ``--after`` the last of them skips nothing.
        return sorted(out, key=_order)[: selection.limit]
    finally:
        await consumer.stop()


def replay_headers(item: Letter) -> list[tuple[str, bytes]]:
    """The original headers, without the dead-letter/parking details, marked as replayed."""
    kept = [
        (k, v)
        for k, v in item.headers
        if not k.startswith(("genwire_dlq", "genwire_retry", sc.HEADER_REPLAYED_FROM))
    ]
    return [*kept, (sc.HEADER_REPLAYED_FROM, item.where.encode())]


def _order(item: Letter) -> tuple[str, int, int]:
    return item.topic, item.partition, item.offset


class ReplayError(Exception):
    """A replay that stopped: ``sent`` were confirmed (in order), ``cause`` stopped it."""

    def __init__(
        self, sent: list[Letter], cause: BaseException, failed: Letter | None = None
    ) -> None:
        self.sent = sent
        self.cause = cause
        self.failed = failed
        last = sent[-1].where if sent else "none"
        at = f"; it failed at {failed.where}" if failed is not None else ""
        super().__init__(
            f"replay stopped after {len(sent)} confirmed record(s) (last: {last}{at}): "
            f"{type(cause).__name__}: {cause}"
        )


async def replay(bootstrap_servers: str, letters: Iterable[Letter]) -> list[Letter]:
    """Send each letter back to the topic it came from, in (partition, offset) order; returns
    those sent (not those without an origin topic, whose value was cut, or whose value was
    null). Each send is confirmed in order: a failure (or a cancel) raises ``ReplayError``
    with those confirmed before it."""
    producer = EventProducer(bootstrap_servers, client_id="genwire-dlq-replay")
    sent: list[Letter] = []
    pending: deque[tuple[Letter, asyncio.Future[object]]] = deque()
    current: Letter | None = None  # the record being sent or confirmed
    await producer.start()
    try:
        for item in sorted(letters, key=_order):
            if not item.replayable:
                continue  # nowhere to send it back to, or not the bytes that came
            current = item
            fut = await producer.send(
                item.origin_topic, item.value, key=item.key, headers=replay_headers(item)
            )
            pending.append((item, fut))
            while len(pending) > SEND_WINDOW:
                current, fut = pending[0]
                await fut
                sent.append(pending.popleft()[0])
        while pending:
            current, fut = pending[0]
            await fut
            sent.append(pending.popleft()[0])
    except (Exception, asyncio.CancelledError) as exc:
        for _, fut in pending:
            fut.cancel()  # not confirmed: counted as not sent (a resume sends them again)
        failed = current if isinstance(exc, Exception) else None
        raise ReplayError(sent, exc, failed) from exc
    finally:
        await producer.stop()
    return sent
