"""``python -m genwire_bench.rejoin``: how long a librdkafka consumer group takes to read again
after a Kafka outage, and whether leaving its lost member id shortens it.

What keeps ``KAFKA_CLIENT=librdkafka`` from being the default (docs/benchmarks.md, *After a
Kafka outage*): an outage longer than the session timeout expires the group session on
librdkafka's side, which resets its member id. The restarted coordinator reloads the old member
from ``__consumer_offsets`` and holds the new member's join until the old one expires, a whole
session timeout (10 s) after the broker's return. aiokafka keeps its member id and reads again
at once. The ``leave`` variant sends a LeaveGroup for the old member id as soon as the broker
answers (aiokafka's protocol classes), which is what a consumer closing cleanly sends for
itself.

A private single-node broker (the stack's jars, its own home and free ports), a topic of three
partitions, a producer at ~20 records/s, one librdkafka consumer with genwire's session,
heartbeat and reconnect settings (``RdConsumer``'s). The broker is stopped for ``--outage-s``
(longer than the session) and started again. Printed, per round: the outage, and the seconds
from the broker's port answering to the first record consumed again. Figures are printed (and
kept with ``--json``); nothing is asserted.

    python -m genwire_bench.rejoin --variants plain,leave --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from confluent_kafka import Consumer
from genwire_stack import down, ensure_up
from genwire_stack.components import Kafka
from genwire_stack.health import free_port
from genwire_stack.paths import StackPaths

from genwire.kafka import ensure_topics
from genwire.kafka.rdkafka import RECONNECT
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec

VARIANTS = ("plain", "leave")
UNKNOWN_MEMBER_ID = 25
"""The coordinator's answer to a LeaveGroup for a member it no longer has."""
GROUP_COORDINATOR = 0
"""FindCoordinator's key type of a consumer group."""


@dataclass(frozen=True)
class Round:
    variant: str
    outage_s: float
    first_record_s: float | None
    """From the broker's port answering to the first record consumed; None: none in the wait."""
    leave: str
    """What the LeaveGroup got (``left``, ``unknown member``, ``gave up: …``); ``-``: not sent."""
    member_reset: bool
    """librdkafka rejoined with a new member id (the session expired on its side)."""


class _Reader:
    """One librdkafka consumer in the group, polled on a thread; the times records arrive."""

    def __init__(self, bootstrap: str, group: str, topic: str, session_ms: int) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "latest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(1, session_ms // 3),
                **RECONNECT,
            }
        )
        self._consumer.subscribe([topic])
        self.seen: list[float] = []
        self.member = ""
        self._arrived = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            self.member = self._consumer.memberid() or self.member
            if msg is not None and msg.error() is None:
                self.seen.append(time.monotonic())
                self._arrived.set()
        self._consumer.close()

    def wait_after(self, t: float, timeout_s: float) -> float | None:
        """Seconds from ``t`` to the first record consumed after it (None: none in time)."""
        deadline = time.monotonic() + timeout_s
        while (first := next((s - t for s in self.seen if s > t), None)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._arrived.wait(min(left, 0.1))
            self._arrived.clear()
        return first

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


async def leave_group(bootstrap: str, group: str, member: str, timeout_s: float = 30.0) -> str:
    """Ask the group's coordinator to drop ``member``, retried while it loads the group."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout_s
    last: object = None
    try:
        await client.bootstrap()
        while time.monotonic() < deadline:
            try:
                node = await client.coordinator_lookup(GROUP_COORDINATOR, group)
                response = await client.send(node, LeaveGroupRequest(group, member))
                if response.error_code == 0:
                    return "left"
                if response.error_code == UNKNOWN_MEMBER_ID:
                    return "unknown member"
                last = response.error_code  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS …
            except KafkaError as exc:  # the coordinator is not reachable yet
                last = exc
            await asyncio.sleep(0.1)
        return f"gave up: {last!r}"
    finally:
        await client.close()


async def one_round(args: argparse.Namespace, variant: str) -> Round:
    infra = CommonSettings()
    settings = CommonSettings(home=Path(args.home) / f"rejoin-{uuid.uuid4().hex[:8]}")
    kafka = Kafka(
        StackPaths.from_settings(settings), settings, free_port(), free_port(), heap="512m"
    )
    kafka.dest.parent.mkdir(parents=True)
    kafka.dest.symlink_to(Kafka(StackPaths.from_settings(infra), infra).dest)  # installed jars
    catalog = {"kafka": kafka}
    ensure_up(["kafka"], settings=settings, catalog=catalog)
    topic, group = "rejoin", f"rejoin-{uuid.uuid4().hex[:8]}"
    reader: _Reader | None = None
    producer: AIOKafkaProducer | None = None
    stop = asyncio.Event()
    try:
        await ensure_topics(kafka.bootstrap, [TopicSpec(topic, 3, 3_600_000)])
        reader = _Reader(kafka.bootstrap, group, topic, args.session_ms)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, request_timeout_ms=5000)
        await producer.start()
        feeding = asyncio.create_task(_feed(producer, topic, stop))
        await asyncio.sleep(args.settle_s)
        if not reader.seen:
            raise RuntimeError(f"nothing consumed in {args.settle_s:.0f} s before the outage")
        old = reader.member
        down(["kafka"], settings=settings, catalog=catalog)
        stopped = time.monotonic()
        await asyncio.sleep(args.outage_s)
        ensure_up(["kafka"], settings=settings, catalog=catalog)  # returns once it answers
        back = time.monotonic()
        left = await leave_group(kafka.bootstrap, group, old) if variant == "leave" else "-"
        first = await asyncio.to_thread(reader.wait_after, back, args.wait_s)
        stop.set()
        await feeding
        return Round(variant, back - stopped, first, left, reader.member != old)
    finally:
        stop.set()
        if producer is not None:
            await producer.stop()
        if reader is not None:
            reader.close()
        down(["kafka"], settings=settings, catalog=catalog)


async def _feed(producer: AIOKafkaProducer, topic: str, stop: asyncio.Event) -> None:
    """~20 records a second; a send that fails in the outage is dropped (only arrivals count)."""
    i = 0
    while not stop.is_set():
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(2.0):
                await producer.send(topic, b"x", key=str(i).encode())
        i += 1
        await asyncio.sleep(0.05)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m genwire_bench.rejoin",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--variants", default="plain,leave", help="a comma list of: plain, leave")
    p.add_argument("--rounds", type=int, default=1, help="each variant, alternated")
    p.add_argument("--outage-s", type=float, default=20.0, help="the broker stopped this long")
    p.add_argument("--session-ms", type=int, default=10_000, help="the group session (genwire's)")
    p.add_argument("--settle-s", type=float, default=15.0, help="reading before the outage")
    p.add_argument("--wait-s", type=float, default=40.0, help="the longest wait after it")
    p.add_argument("--home", default="/tmp", help="where each round's private broker lives")
    p.add_argument("--json", type=Path, help="also write the rounds here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # aiokafka's producer logs every failed connection of the outage: the rounds' lines matter
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser().error(f"--variants: a comma list of {', '.join(VARIANTS)}")
    if args.outage_s * 1000 <= args.session_ms:
        parser().error("--outage-s must outlast --session-ms: a shorter outage keeps the session")
    rounds: list[Round] = []
    for _ in range(args.rounds):
        for variant in variants:
            result = asyncio.run(one_round(args, variant))
            rounds.append(result)
            first = "none" if result.first_record_s is None else f"{result.first_record_s:.2f} s"
            print(
                f"{variant:6} outage {result.outage_s:5.1f} s  first record after the return: "
                f"{first:>8}  leave: {result.leave}  member reset: {result.member_reset}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rounds], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
