"""``RdConsumer``: ``AIOKafkaConsumer``'s face on librdkafka, for a grouped ``EventConsumer``
(``kafka_client=librdkafka``, genwire.kafka.rdkafka).

One thread makes every call on the librdkafka consumer: confluent-kafka serialises a consumer's
calls behind a poll in progress, so a commit from the loop would wait for the poll. Between
polls of up to ``POLL_S`` the thread serves the loop's commands (commits), applies the pauses
the loop wants, and hands batches of records to the loop. A rebalance callback runs inside a
poll: the thread runs the listener (``EventConsumer``'s drain) on the loop and serves its
commits until it returns, as aiokafka completes a rebalance only after its listener.

After a broker outage longer than the session, librdkafka drops its member id (its partitions
are lost) and joins again under a new one. A restarted coordinator still holds the old member
(reloaded from ``__consumer_offsets``) and answers the new join only once the old one expires,
a whole session after the broker's return. aiokafka keeps its member id and is not held; here
the loop asks the coordinator to drop the old id (a LeaveGroup, what a clean close sends) as
soon as the new one shows the coordinator answers (docs/benchmarks.md, *Leaving the lost
member*).

What is whose: ``_records``, ``_paused``, ``_taken``, ``_left`` and ``_leaving`` are written
by the loop only; ``_assignment``, ``_commits``, ``_applied_pause``, ``_throttled``, ``_handed``,
``_member``, ``_lost_member`` and ``_failure`` by the thread only (each side reads the other's
whole values, safe under the GIL); the command queue and ``_stopped`` are shared behind a
lock. ``_starts`` is the loop's while an assignment's listener runs (its seeks) and the thread's
once the listener has returned, which the thread waits for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from confluent_kafka import Consumer, KafkaException, Message
from confluent_kafka import KafkaError as RdError
from confluent_kafka import TopicPartition as RdPartition

from genwire.kafka.admin import leave_group
from genwire.kafka.rdkafka import DENIED, RECONNECT, STATS_INTERVAL_MS, _on_error, _on_stats
from genwire.kafka_security import rdkafka_options

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How long the thread blocks in one poll with nothing fetched: the longest a commit or a pause
from the loop waits for it, and how soon a stop is seen."""
BATCH = 500
"""Records taken from librdkafka's queue at once after a poll returns one."""
MAX_HANDED = 4 * BATCH
"""Records handed to the loop and not yet taken, past which the thread pauses every partition
in librdkafka (it polls on) until the loop is down to half: what is not fetched yet waits on the
broker. The loop's own pauses (a full pool, an outage wait) stay in ``getmany``: pausing
librdkafka discards what it prefetched, so it is done only for this bound."""
QUEUED_KBYTES = 16 * 1024
"""librdkafka's prefetch queue per consumer (``queued.max.messages.kbytes``; its default is
64 MiB)."""
COMMIT_TIMEOUT_S = 10.0
"""How long a commit waits for the coordinator's answer before it counts as failed (its offsets
are committed again later): during an outage there is none, and the commit loop must say so."""
COMMITTED_TIMEOUT_S = 4.0
"""How long the thread waits for the group's committed offset (``committed``), serving nothing
else meanwhile: one answer fits the 5 s an ``EventConsumer`` gives a resume at the default
session (a shorter session, or a coordinator that answers none, cuts the resume short: its
records are then delivered again)."""
STOP_TIMEOUT_S = 30.0
"""How long a stop waits for the thread to leave the group."""

_CommitKey = frozenset[tuple[str, int, int]]


class LeftMember(NamedTuple):
    """A member id lost with a session that the coordinator was asked to drop."""

    member: str
    answer: str
    """:func:`leave_group`'s: ``left``, ``unknown member``, ``gave up: …``."""
    at: float
    """When it was answered (``time.monotonic()``)."""


class RdConsumer:
    """``AIOKafkaConsumer``'s face on librdkafka, for a consumer group (``EventConsumer``)."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        auto_offset_reset: str,
        max_partition_fetch_bytes: int,
        fetch_max_wait_ms: int,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
    ) -> None:
        self._broken: list[RdError] = []
        self._group = group_id
        self._bootstrap = bootstrap_servers
        self._session_s = session_timeout_ms / 1000.0
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            **rdkafka_options(),
            "group.id": group_id,
            "client.id": group_id,
            "enable.auto.commit": False,  # EventConsumer commits, after the outputs' acks
            "auto.offset.reset": auto_offset_reset,
            "max.partition.fetch.bytes": max_partition_fetch_bytes,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "fetch.min.bytes": 1,
            "queued.max.messages.kbytes": QUEUED_KBYTES,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "socket.nagle.disable": True,
            "error_cb": _on_error(group_id, self._broken, DENIED),
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": _on_stats(group_id, self._broken),
            "on_commit": self._on_commit,
            "logger": log,
            **RECONNECT,
        }
        self._topics: list[str] = []
        self._listener: ConsumerRebalanceListener | None = None
        # shared: commands from the loop, served by the thread
        self._lock = threading.Lock()
        self._commands: deque[tuple[Callable[[Consumer], Any], concurrent.futures.Future[Any]]]
        self._commands = deque()
        self._stopped = False  # under _lock: from then on a command fails at once
        self._stopping = threading.Event()
        # the loop's
        self._records: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = {}
        self._paused: set[TopicPartition] = set()
        self._taken = 0
        self._arrived = asyncio.Event()
        self._failure: BaseException | None = None
        self._left: list[LeftMember] = []
        self._leaving: set[asyncio.Task[None]] = set()
        self._starts: dict[TopicPartition, int] = {}  # the assign listener's seeks
        # the thread's
        self._assignment: frozenset[TopicPartition] = frozenset()  # read by the loop
        self._applied_pause: set[TopicPartition] = set()
        self._throttled = False  # the loop is MAX_HANDED behind: librdkafka paused
        self._commits: deque[tuple[_CommitKey, concurrent.futures.Future[None]]] = deque()
        self._rebalance: str | None = None  # inside a rebalance callback: revoke, lost, assign
        self._handed = 0
        self._member = ""  # librdkafka's member id, the last one it had
        self._lost_member: str | None = None  # lost with the session, not yet asked to leave
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self._topics, self._listener = list(topics), listener

    async def start(self) -> None:
        """Start the thread; the group is joined in the background, as aiokafka's does."""
        self._loop = asyncio.get_running_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"{self._group}-consumer", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(started)

    # --- on the thread ---

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        try:
            consumer = Consumer(self._config)
            consumer.subscribe(
                self._topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            while not self._stopping.is_set():
                self._serve(consumer)
                self._apply_pauses(consumer)
                if self._broken:
                    raise KafkaException(self._broken[0])
                self._fetch(consumer)  # polls even when all is paused: callbacks run
                self._watch_member(consumer)
            self._serve(consumer)
        except BaseException as exc:  # told at once: the loop's next getmany raises it
            self._failed(exc)
        finally:
            try:
                consumer.close()  # leaves the group (its revoke runs the listener: drained)
            except BaseException as exc:
                self._failed(exc)
            finally:
                self._shut()
                self._call_soon(self._arrived.set)

    def _failed(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.error("kafka consumer %s stopped: %s", self._group, exc)
            self._call_soon(self._arrived.set)

    def _fetch(self, consumer: Consumer) -> None:
        first = consumer.poll(POLL_S)
        if first is None:
            return
        records = []
        for msg in (first, *consumer.consume(BATCH, 0)):
            err = msg.error()
            if err is None:
                records.append(_record(msg))
            elif err.fatal() or err.code() in DENIED:
                raise KafkaException(err)
            else:  # a partition's fetch failed: librdkafka retries it
                log.info("kafka consumer %s: %s", self._group, err.str())
        if records:
            self._handed += len(records)
            self._call_soon(self._add, records)

    def _watch_member(self, consumer: Consumer) -> None:
        """Once librdkafka has a new member id after a lost session (the coordinator answered
        its join), have the loop ask the coordinator to drop the old one. Never before: a
        session lost another way may keep its id, and a leave would then evict this member."""
        member = consumer.memberid() or ""
        if not member or member == self._member:
            return  # "": none yet (or reset with the session); the old id is kept until then
        lost, self._member = self._lost_member, member
        if lost is not None and lost != member:
            self._lost_member = None
            self._call_soon(self._leave, lost)

    def _serve(self, consumer: Consumer) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command, done = self._commands.popleft()
            if not done.set_running_or_notify_cancel():
                continue  # the loop stopped waiting for it (a cancelled commit): skip it
            try:
                result = command(consumer)
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(result)

    def _apply_pauses(self, consumer: Consumer) -> None:
        """Pause every assigned partition in librdkafka while the loop has ``MAX_HANDED``
        records not taken yet, and resume them once it is down to half. The thread polls on
        either way: rebalances and commits are served in a poll, and librdkafka leaves the
        group of a consumer that does not poll for ``max.poll.interval.ms``."""
        behind = self._handed - self._taken
        if behind >= MAX_HANDED:
            self._throttled = True
        elif behind <= MAX_HANDED // 2:
            self._throttled = False
        want = self._assignment if self._throttled else frozenset()
        pause = want - self._applied_pause
        resume = self._applied_pause - want
        if pause:
            consumer.pause([RdPartition(tp.topic, tp.partition) for tp in pause])
        if resume:
            consumer.resume([RdPartition(tp.topic, tp.partition) for tp in resume])
        self._applied_pause = set(want)

    def _shut(self) -> None:
        with self._lock:
            self._stopped = True
            commands, self._commands = self._commands, deque()
        for _, done in commands:
            if done.set_running_or_notify_cancel():
                done.set_exception(ConsumerStoppedError())
        while self._commits:
            _, answer = self._commits.popleft()
            _answer(answer, ConsumerStoppedError())

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_commit(self, err: RdError | None, parts: list[RdPartition]) -> None:
        """An asynchronous commit's answer (served by a poll): settles the commit it answers,
        found by its offsets (the same offsets twice: the older first, as they were sent)."""
        key = _commit_key(parts)
        entry = next((e for e in self._commits if e[0] == key), None)
        if entry is None:  # not ours: never guessed (a wrong match could lie)
            log.debug("kafka consumer %s: an answer to no pending commit: %s", self._group, parts)
            return
        self._commits.remove(entry)
        failed = err or next((p.error for p in parts if p.error is not None), None)
        _answer(entry[1], None if failed is None else KafkaError(f"commit failed: {failed}"))

    def _on_assign(self, consumer: Consumer, parts: list[RdPartition]) -> None:
        tps = {_tp(p) for p in parts}
        self._assignment = frozenset(tps)
        self._lost_member = None  # joined again: the old member has gone, or never was held
        self._listen(consumer, "on_partitions_assigned", tps, "assign")
        starts, self._starts = self._starts, {}
        if starts:  # the listener's seeks: there, not at the group's commit (p.offset: unset)
            # An eager assignment (no assignment strategy is set: librdkafka's default, range
            # and roundrobin) takes the whole list; a cooperative one would need
            # incremental_assign. confluent-kafka then assigns nothing more itself.
            sought = [
                RdPartition(p.topic, p.partition, starts.get(_tp(p), p.offset)) for p in parts
            ]
            try:
                consumer.assign(sought)
            except KafkaException as exc:  # as if never sought: at the group's commit
                log.warning("kafka consumer %s: seek on assignment failed: %s", self._group, exc)
                consumer.assign(parts)

    def _on_revoke(self, consumer: Consumer, parts: list[RdPartition]) -> None:
        self._revoked(consumer, parts, "revoke")

    def _on_lost(self, consumer: Consumer, parts: list[RdPartition]) -> None:
        # The session expired (a broker outage, say): the partitions may be someone else's
        # already. Drained like a revoke, but nothing of theirs can be committed any more.
        # (Commits librdkafka holds from before, for a coordinator that did not answer, may
        # still go out after the rejoin: acknowledged positions, so at worst an offset moves
        # back and records are delivered again, never skipped. EventConsumer keeps what it
        # finished and resumes there if the group gives the partitions back.)
        if self._member:
            self._lost_member = self._member
        self._revoked(consumer, parts, "lost")

    def _revoked(self, consumer: Consumer, parts: list[RdPartition], why: str) -> None:
        tps = {_tp(p) for p in parts}
        self._listen(consumer, "on_partitions_revoked", tps, why)
        # librdkafka keeps an application's pause across an unassign and a later reassign:
        # cleared here, or a partition paused now could come back paused for good.
        if parts:
            consumer.resume(parts)
        self._applied_pause -= tps
        self._assignment = frozenset(self._assignment - tps)
        self._call_soon(self._drop, tps)

    def _listen(self, consumer: Consumer, what: str, tps: set[TopicPartition], why: str) -> None:
        """Run the listener on the loop, serving its commands (its drain's commit) meanwhile."""
        loop = self._loop
        if self._listener is None or loop is None or loop.is_closed():
            return
        call = getattr(self._listener, what)(tps)
        self._rebalance = why  # before the listener can run: its commits and seeks read it
        try:
            try:
                done = asyncio.run_coroutine_threadsafe(call, loop)
            except RuntimeError:  # the loop closed meanwhile: nobody is left to listen
                call.close()
                return
            while not loop.is_closed():
                try:
                    done.result(timeout=0.01)
                    break
                except concurrent.futures.TimeoutError:
                    self._serve(consumer)
                except Exception as exc:  # the listener's own failure: logged, the group goes on
                    log.warning("rebalance listener %s failed: %s", what, exc)
                    break
            self._serve(consumer)  # a commit queued in the listener's last moment
        finally:
            self._rebalance = None

    # --- on the loop ---

    def _leave(self, member: str) -> None:
        if self._stopping.is_set():  # queued by the thread's last turns: stop() has cancelled
            return
        task = asyncio.ensure_future(self._leave_lost(member))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _leave_lost(self, member: str) -> None:
        # Within a session: by then the coordinator has expired the old member itself.
        try:
            said = await leave_group(self._bootstrap, self._group, member, self._session_s)
        except Exception as exc:  # a TLS failure, say: the group waits a session, as before
            said = f"gave up: {exc!r}"
        self._left.append(LeftMember(member, said, time.monotonic()))
        level = logging.WARNING if said.startswith("gave up") else logging.INFO
        log.log(level, "kafka consumer %s: the member lost with the session: %s", self._group, said)

    @property
    def member_id(self) -> str:
        """librdkafka's member id, the last one it had (the thread's, read whole)."""
        return self._member

    @property
    def left_members(self) -> list[LeftMember]:
        """The member ids lost with a session that the coordinator was asked to drop."""
        return list(self._left)

    def _add(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        dropped = 0
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp in self._assignment:
                self._records.setdefault(tp, deque()).append(record)
            else:
                dropped += 1  # revoked meanwhile: its new owner reads it from the commit
        self._taken += dropped
        self._arrived.set()

    def _drop(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._taken += len(self._records.pop(tp, ()))
        self._paused -= tps

    def _command(self, command: Callable[[Consumer], Any]) -> asyncio.Future[Any]:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if not self._stopped:
                self._commands.append((command, done))
                return asyncio.wrap_future(done)
        done.set_exception(ConsumerStoppedError())
        return asyncio.wrap_future(done)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Records of unpaused partitions, waiting up to ``timeout_ms`` for some; partitions
        take turns (one with a backlog does not starve the others)."""
        if not self._ready():
            self._arrived.clear()
            if timeout_ms > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_ms / 1000.0):
                        await self._arrived.wait()
        if self._failure is not None:
            raise KafkaError(f"librdkafka consumer: {self._failure}") from self._failure
        if self._stopped:
            raise ConsumerStoppedError()
        room = max_records if max_records is not None else 1 << 30
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in list(self._records):
            if room <= 0:
                break
            if tp in self._paused:
                continue
            queue = self._records.pop(tp)
            take = [queue.popleft() for _ in range(min(room, len(queue)))]
            if queue:
                self._records[tp] = queue  # to the back of the line
            if take:
                room -= len(take)
                out[tp] = take
        self._taken += sum(len(v) for v in out.values())
        return out

    def _ready(self) -> bool:
        return (
            self._stopped
            or self._failure is not None
            or any(queue and tp not in self._paused for tp, queue in self._records.items())
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assignment

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        """``getmany`` hands out nothing of these; what is fetched meanwhile waits here (up to
        ``MAX_HANDED`` records, then the thread pauses librdkafka too)."""
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        if self._paused & set(tps):
            self._paused -= set(tps)
            self._arrived.set()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``; returns once the coordinator accepted them, raises otherwise.

        Sent by the thread at its next turn (≤ ``POLL_S``), asynchronously: the thread polls on
        while the answer is awaited (a synchronous commit held it for a whole broker outage).
        Inside a rebalance callback (a drain's commit) no poll can serve an answer, so there it
        is synchronous, as librdkafka's own examples commit on revoke; partitions lost with
        the session are not committed at all, nor are partitions no longer assigned.
        """
        parts = [RdPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        answer: concurrent.futures.Future[None] = concurrent.futures.Future()

        def send(consumer: Consumer) -> None:
            if self._rebalance == "lost":
                raise KafkaError("the partitions were lost with the group session")
            gone = {tp for tp in offsets if tp not in self._assignment}
            if gone:  # another member's now: a late commit could move its offset back
                raise KafkaError(f"not assigned any more: {sorted(gone)}")
            if self._rebalance is not None and self._stopping.is_set():
                # The revoke of a stop: EventConsumer.stop committed just before, so this is
                # what that commit could not (a broker outage); a synchronous one would hold
                # the stop until the broker returns. Redelivered instead.
                raise KafkaError("not committed while leaving the group")
            if self._rebalance is not None:
                done = consumer.commit(offsets=parts, asynchronous=False) or []
                refused = [p for p in done if p.error is not None]
                _answer(answer, KafkaError(f"commit failed: {refused}") if refused else None)
                return
            consumer.commit(offsets=parts, asynchronous=True)
            self._commits.append((_commit_key(parts), answer))

        try:
            await self._command(send)
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await asyncio.wrap_future(answer)
        except (ConsumerStoppedError, KafkaError):
            raise
        except TimeoutError as exc:
            raise KafkaError(f"commit: no answer within {COMMIT_TIMEOUT_S:.0f} s") from exc
        except Exception as exc:
            raise KafkaError(f"librdkafka commit: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (None: none yet), asked by the thread at its
        next turn (inside a rebalance, at once); raises as aiokafka's does when it cannot."""

        def ask(consumer: Consumer) -> int | None:
            (part,) = consumer.committed([RdPartition(tp.topic, tp.partition)], COMMITTED_TIMEOUT_S)
            if part.error is not None:
                raise KafkaError(f"committed offset of {tp}: {part.error}")
            return part.offset if part.offset >= 0 else None

        try:
            result: int | None = await self._command(ask)
        except (ConsumerStoppedError, KafkaError):
            raise
        except Exception as exc:  # librdkafka's KafkaException: a timeout, no coordinator
            raise KafkaError(f"librdkafka committed: {exc}") from exc
        return result

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Start ``tp`` at ``offset``: only inside ``on_partitions_assigned`` (what
        ``EventConsumer`` needs), where the thread assigns the partitions there once the
        listener returns. Elsewhere it raises, rather than leave records fetched before it."""
        if self._rebalance != "assign" or tp not in self._assignment:
            raise IllegalStateError(f"seek {tp}: only inside its assignment's listener")
        self._starts[tp] = offset

    async def stop(self) -> None:
        """Leave the group (the revoke's listener runs first) and stop the thread; bounded,
        because leaving needs a coordinator (what is uncommitted is redelivered)."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("kafka consumer %s: not closed in %.0f s", self._group, STOP_TIMEOUT_S)
        # A leave in flight is cancelled: this process no longer reads, and a successor's
        # consumer leaves its own lost member.
        leaving = list(self._leaving)
        for task in leaving:
            task.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        with self._lock:
            self._stopped = True
        self._arrived.set()


def _tp(part: RdPartition) -> TopicPartition:
    return TopicPartition(part.topic, part.partition)


def _commit_key(parts: Sequence[RdPartition]) -> _CommitKey:
    return frozenset((p.topic, p.partition, p.offset) for p in parts)


def _answer(answer: concurrent.futures.Future[None], exc: BaseException | None) -> None:
    """Settle a commit's answer from the thread, unless the loop gave up on it."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled: timed out
        if exc is None:
            answer.set_result(None)
        else:
            answer.set_exception(exc)


def _record(m: Message) -> ConsumerRecord[bytes, bytes]:
    key, value = m.key(), m.value()
    _, ts = m.timestamp()
    raw_headers: list[Any] = list(m.headers() or [])  # (str, bytes | None) pairs, as aiokafka's
    return ConsumerRecord(
        topic=m.topic() or "",
        partition=m.partition() or 0,
        offset=m.offset() or 0,
        timestamp=ts,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key) if key is not None else -1,
        serialized_value_size=len(value) if value is not None else -1,
        headers=[(str(k), v) for k, v in raw_headers],
    )
