"""``python -m genwire_bench.rejoin``: how long a librdkafka consumer group takes to read again
after a Kafka outage, and whether leaving its lost member id shortens it.

What kept ``KAFKA_CLIENT=librdkafka`` from being the default (docs/benchmarks.md, *After a Kafka
outage*): an outage longer than the session timeout expires the group session on librdkafka's
side, which resets its member id. The restarted coordinator reloads the old member from
``__consumer_offsets`` and holds the new member's join until the old one expires, a whole
session timeout (10 s) after the broker's return. aiokafka keeps its member id and reads again
at once. The ``leave`` variant sends a LeaveGroup for the old member id as soon as the broker
answers (``genwire.kafka.admin.leave_group``), which is what a consumer closing cleanly sends
for itself. The ``genwire`` variant reads with genwire's own ``RdConsumer`` (what a service on
``KAFKA_CLIENT=librdkafka`` runs), which sends that LeaveGroup itself once librdkafka has its
new member id.

A private single-node broker (the stack's jars, a temporary home, free ports), a topic of three
partitions, a producer at ~20 records/s, one librdkafka consumer with genwire's session (10 s),
heartbeat (3 s) and reconnect settings (``RdConsumer``'s; in ``genwire``, ``RdConsumer``). The
broker is stopped for ``--outage-s`` (longer than the session) and started again. Printed, per
round, in seconds from the broker answering again (``ensure_up`` returning): when the consumer
was assigned its partitions again (the group's part), and when it consumed its first record
(which also waits for the producer to reconnect); with ``leave`` and ``genwire``, when the
LeaveGroup was answered. Figures are printed (and kept with ``--json``, written after each
round); nothing is asserted.

    python -m genwire_bench.rejoin --variants plain,leave,genwire --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as RdPartition
from genwire_stack import down, ensure_up
from genwire_stack.components import Kafka

from genwire.kafka import ensure_topics
from genwire.kafka.admin import leave_group
from genwire.kafka.rdkafka import RECONNECT
from genwire.kafka.rdkafka_consumer import RdConsumer
from genwire.kafka_security import client_options
from genwire.settings import CommonSettings
from genwire.topics import HOUR_MS, TopicSpec

VARIANTS = ("plain", "leave", "genwire")


@dataclass(frozen=True)
class Round:
    variant: str
    outage_s: float
    assigned_s: float | None
    """From the broker answering to the consumer's next assignment (negative: it came before
    the start call saw the broker answer); None: none in the wait."""
    first_record_s: float | None
    """From the broker answering to the first record consumed; None: none in the wait."""
    leave: str
    """What the LeaveGroup got (``left``, ``unknown member``, ``gave up: …``); ``-``: not sent."""
    leave_s: float | None
    """From the broker answering to the LeaveGroup's answer; None: not sent."""
    member_reset: bool
    """librdkafka rejoined with a new member id (the session expired on its side)."""


class _Times:
    """When a reader was assigned partitions and consumed records; a wait for the first record
    after a moment, from a thread."""

    def __init__(self) -> None:
        self.assigned: list[float] = []
        self.seen: list[float] = []
        self._arrived = threading.Event()

    def _consumed(self, n: int) -> None:
        self.seen += [time.monotonic()] * n
        self._arrived.set()

    def wait_after(self, t: float, timeout_s: float) -> float | None:
        """Seconds from ``t`` to the first record consumed after it (None: none in time)."""
        deadline = time.monotonic() + timeout_s
        while (first := _first_after(self.seen, t)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._arrived.wait(min(left, 0.1))
            self._arrived.clear()
        return first


class _Reader(_Times):
    """One librdkafka consumer in the group, polled on a thread; the times records arrive."""

    def __init__(self, bootstrap: str, group: str, topic: str, session_ms: int) -> None:
        super().__init__()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,  # as RdConsumer; nothing here needs the offsets
                "auto.offset.reset": "latest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": min(3_000, session_ms // 3),  # genwire's, or less
                **RECONNECT,
            }
        )
        self._consumer.subscribe([topic], on_assign=self._on_assign)
        self.member = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            self.member = self._consumer.memberid() or self.member
            if msg is not None and msg.error() is None:
                self._consumed(1)
        self._consumer.close()

    def _on_assign(self, _consumer: Consumer, parts: list[RdPartition]) -> None:
        if parts:
            self.assigned.append(time.monotonic())

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)


class _GenwireReader(_Times, ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    """genwire's ``RdConsumer`` in the group, read from the loop as ``EventConsumer`` reads it;
    it leaves its lost member id itself. The same face as ``_Reader``."""

    def __init__(self, bootstrap: str, group: str, topic: str, session_ms: int) -> None:
        super().__init__()
        self.consumer = RdConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="latest",
            max_partition_fetch_bytes=1 << 20,
            fetch_max_wait_ms=100,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=min(3_000, session_ms // 3),
        )
        self.consumer.subscribe([topic], self)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def member(self) -> str:
        return self.consumer.member_id

    async def start(self) -> None:
        await self.consumer.start()
        self._tasks.append(asyncio.create_task(self._read()))

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            if batches:
                self._consumed(sum(map(len, batches.values())))

    def left(self) -> tuple[str, float | None]:
        """What the consumer's own LeaveGroup got (the last one) and when; ``-``: none sent."""
        left = self.consumer.left_members
        return (left[-1].answer, left[-1].at) if left else ("-", None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self.assigned.append(time.monotonic())

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def close(self) -> None:
        """Stop reading and leave; a read that failed (the consumer broke) is raised here."""
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.consumer.stop()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"the genwire consumer failed: {failed[0]!r}") from failed[0]


def _first_after(times: list[float], t: float) -> float | None:
    return next((s - t for s in times if s > t), None)


def assigned_since(times: list[float], restarted: float, back: float) -> float | None:
    """The first assignment once the broker was started again (``restarted``), from its return
    (``back``, when the start call saw it answer): negative when the group rejoined before
    that (a loaded machine), not missing."""
    return next((s - back for s in times if s > restarted), None)


async def one_round(args: argparse.Namespace, variant: str, home: Path) -> Round:
    settings = CommonSettings(home=home / f"rejoin-{uuid.uuid4().hex[:8]}")
    kafka = Kafka.beside(CommonSettings(), settings)
    catalog = {"kafka": kafka}

    def broker(up: bool) -> None:
        if up:
            ensure_up(["kafka"], settings=settings, catalog=catalog)  # returns once it answers
        else:
            down(["kafka"], settings=settings, catalog=catalog)

    async with contextlib.AsyncExitStack() as cleanup:  # the broker goes last, whatever failed
        cleanup.push_async_callback(asyncio.to_thread, broker, False)
        await asyncio.to_thread(broker, True)
        topic, group = "rejoin", f"rejoin-{uuid.uuid4().hex[:8]}"
        await ensure_topics(kafka.bootstrap, [TopicSpec(topic, 3, HOUR_MS)])
        reader: _Reader | _GenwireReader
        if variant == "genwire":
            reader = _GenwireReader(kafka.bootstrap, group, topic, args.session_ms)
            await reader.start()
        else:
            reader = _Reader(kafka.bootstrap, group, topic, args.session_ms)
        cleanup.push_async_callback(reader.close)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap, **client_options(), request_timeout_ms=5000
        )
        await producer.start()
        cleanup.push_async_callback(producer.stop)
        stop = asyncio.Event()
        feeding = asyncio.create_task(_feed(producer, topic, stop))
        cleanup.callback(stop.set)
        await asyncio.sleep(args.settle_s)
        if not reader.seen:
            raise RuntimeError(f"nothing consumed in {args.settle_s:.0f} s before the outage")
        old = reader.member
        await asyncio.to_thread(broker, False)
        stopped = time.monotonic()
        await asyncio.sleep(args.outage_s)
        restarted = time.monotonic()
        await asyncio.to_thread(broker, True)
        back = time.monotonic()
        left, leave_s = "-", None
        if variant == "leave":
            left = await leave_group(kafka.bootstrap, group, old, 30.0)
            leave_s = time.monotonic() - back
        first = await asyncio.to_thread(reader.wait_after, back, args.wait_s)
        stop.set()
        await feeding
        assigned = assigned_since(reader.assigned, restarted, back)
        if isinstance(reader, _GenwireReader):
            left, at = reader.left()
            leave_s = None if at is None else at - back
        return Round(variant, back - stopped, assigned, first, left, leave_s, reader.member != old)
    raise AssertionError("unreachable")  # mypy: the exit stack does not swallow


async def _feed(producer: AIOKafkaProducer, topic: str, stop: asyncio.Event) -> None:
    """~20 records a second; a send that fails in the outage is dropped (only arrivals count)."""
    i = 0
    while not stop.is_set():
        with contextlib.suppress(KafkaError, TimeoutError):  # in the outage
            async with asyncio.timeout(2.0):
                ack = await producer.send(topic, b"x", key=str(i).encode())
            ack.add_done_callback(_dropped)
        i += 1
        await asyncio.sleep(0.05)


def _dropped(ack: asyncio.Future[object]) -> None:
    """A record the outage failed is not waited for: its error is read, so not reported."""
    if not ack.cancelled():
        ack.exception()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m genwire_bench.rejoin",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--variants", default="plain,leave", help=f"a comma list of: {', '.join(VARIANTS)}"
    )
    p.add_argument("--rounds", type=int, default=1, help="each variant, alternated")
    p.add_argument("--outage-s", type=float, default=20.0, help="the broker stopped this long")
    p.add_argument("--session-ms", type=int, default=10_000, help="the group session (genwire's)")
    p.add_argument("--settle-s", type=float, default=15.0, help="reading before the outage")
    p.add_argument("--wait-s", type=float, default=40.0, help="the longest wait after it")
    p.add_argument(
        "--home", type=Path, help="where the rounds' brokers live (default: a temporary folder)"
    )
    p.add_argument("--json", type=Path, help="also write the rounds here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser().error(f"--variants: a comma list of {', '.join(VARIANTS)}")
    if args.outage_s * 1000 <= args.session_ms:
        parser().error("--outage-s must outlast --session-ms: a shorter outage keeps the session")
    rounds: list[Round] = []
    with contextlib.ExitStack() as stack:
        home = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for _ in range(args.rounds):
            for variant in variants:
                result = asyncio.run(one_round(args, variant, home))
                rounds.append(result)
                print(_line(result), flush=True)
                if args.json is not None:  # each round kept as it ends
                    args.json.write_text(json.dumps([asdict(r) for r in rounds], indent=2))
    return 0


def _line(r: Round) -> str:
    def s(value: float | None) -> str:
        return "none" if value is None else f"{value:.2f} s"

    leave = "" if r.leave_s is None else f"  leave: {r.leave} at {s(r.leave_s)}"
    return (
        f"{r.variant:7} outage {r.outage_s:5.1f} s  after the return: assigned {s(r.assigned_s)},"
        f" first record {s(r.first_record_s)}{leave}  member reset: {r.member_reset}"
    )


if __name__ == "__main__":
    # aiokafka's producer logs every failed connection of the outage: the rounds' lines matter
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    sys.exit(main())
