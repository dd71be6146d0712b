"""``python -m genwire_bench.floor``: what one Kafka hop costs at the least, with genwire's clients.

Two measurements, each against two private topics it creates (and deletes afterwards):

- ``bare`` — the floor: an ``EventProducer`` (the services' producer: idempotent, ``acks=all``,
  ``linger_ms`` 0) publishes a record and a consumer with ``EventConsumer``'s client settings
  (``genwire.kafka.consumer.consumer_options``) sees it. Latency is publish → seen; core-ms per
  record is this process's CPU (producer and consumer, like a service) and the broker's.
- ``hop`` — one pipeline hop: the record goes to a relay process built like a service
  (``ServiceRuntime``: tracer provider, producer, an ``EventConsumer`` that decodes the record
  with pydantic and publishes it on, awaits the acknowledgement, commits; the retry replayer), and
  the reader sees what it published. ``hop`` − ``bare`` is what a hop through a stage costs
  beyond the floor when the stage's own work is nothing; the relay's CPU per record is that
  stage's runtime cost.
- ``chain`` — the pipeline's floor: ``--stages`` relays (default 3, the request path's stages)
  in a chain over private topics ``floor-<run>-0`` → … → ``floor-<run>-N``; latency end to end,
  CPU per record of the client, every relay and the broker (``genwire_bench.floor_chain``);
  ``--front none,grpc``: also behind a do-nothing gRPC front (``genwire_bench.floor_front``).

``--client`` (default ``aiokafka``: genwire's own clients and runtime, as above): the same
phases with the runtime on librdkafka (``runtime-librdkafka``), on bare aiokafka, on bare
librdkafka, on one of each, or with bare relays on genwire's librdkafka adapters
(``genwire_bench.floor_clients``).

Closed loop: ``-c`` workers each publish a record and wait until it is seen; with ``--pace-ms``
each waits that long before its next, so that every process on the path goes idle between two
records, as the pipeline's stages do at c=1 (back to back their code and data stay in the
caches, and a bare hop reads about a third of its cost at the pipeline's spacing). Figures are
printed (and kept with ``--json``); nothing is asserted. Measure on a quiet machine: on two
shared cores a busy neighbour shows up in every latency (the CPU figures are steadier).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from genwire.kafka import EventProducer, ensure_topics
from genwire.kafka.admin import delete_groups, delete_topics
from genwire.kafka.consumer import COMMIT_INTERVAL_S, FETCH_MAX_WAIT_MS, consumer_options
from genwire.kafka.failures import RawRecord
from genwire.kafka_security import client_options
from genwire.service import loop as event_loop
from genwire.topics import TOPIC_SPECS, Topic, TopicSpec
from genwire_bench.drivers.base import new_trace
from genwire_bench.floor_chain import (
    CLIENTS,
    DEFAULT_STAGES,
    RUNTIME,
    SIDES,
    ChainCost,
    ChainRow,
    FloorRecord,
    TracedRecord,
    beyond_floor,
    chain_group,
    chain_groups,
    chain_topics,
    hop_rows,
    per_record,
    publish_split,
    render_chain,
    render_hops,
)
from genwire_bench.floor_front import (
    FRONT_PARTITION,
    FrontClient,
    front_difference,
    parse_fronts,
    serving,
)
from genwire_bench.floor_model import READY, ModelLoad, beside_model
from genwire_bench.resources import JIT_MIN_CPU_S, JIT_WARNING_SHARE, jit_seconds
from genwire_bench.stats import distribution
from genwire_bench.traces import JaegerClient, breakdown

PARTITIONS = 3  # as the request path's topics (genwire.topics.TOPIC_SPECS)
if TYPE_CHECKING:  # floor_clients imports confluent-kafka: only for the other --client
    from genwire_bench.floor_clients import PlainProducer, RdProducer, RdReader

    FloorProducer = EventProducer | PlainProducer | RdProducer  # by --client
MODES = ("bare", "hop", "idle", "chain")


@dataclass
class Phase:
    """One measured phase: latency (ms) and CPU (core-ms per record)."""

    mode: str
    concurrency: int
    records: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    client_core_ms: float | None
    """The measuring process (its producer and its consumer) per record."""
    relay_core_ms: float | None
    """The relay process per record (``hop``; ``idle``: per second)."""
    broker_core_ms: float | None
    """The broker's process per record (``idle``: per second; None: not found here)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _latency(lat: list[float]) -> dict[str, Any]:
    """A phase's record count and latency fields from its measured latencies (ms)."""
    dist = distribution(lat)
    assert dist is not None
    return {
        "records": len(lat),
        "p50_ms": dist.p50,
        "p95_ms": dist.p95,
        "p99_ms": dist.p99,
        "mean_ms": dist.mean,
    }


def _topics(run: str) -> tuple[str, str]:
    return f"genwire.floor.{run}.in", f"genwire.floor.{run}.out"


def broker_process(bootstrap_servers: str) -> psutil.Process | None:
    """The local process listening on the first bootstrap address's port, if any."""
    port = int(bootstrap_servers.split(",", maxsplit=1)[0].rsplit(":", 1)[-1])
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            addr = conn.laddr
            if conn.status == psutil.CONN_LISTEN and conn.pid and addr and addr[1] == port:
                return psutil.Process(conn.pid)
    return None


def broker_jit_warning(
    jit_before: dict[int, float], jit_after: dict[int, float], cpu_s: float | None
) -> str:
    """A warning when the broker's JIT compiler threads (``resources.jit_seconds`` before and
    after the run) took over ``JIT_WARNING_SHARE`` of the ``cpu_s`` it used meanwhile; "" when
    not, or when it used too little to tell. A compiler thread HotSpot stopped between the
    two readings is missed, so the share can read low, never high."""
    if cpu_s is None or cpu_s < JIT_MIN_CPU_S:
        return ""
    used = sum(max(0.0, s - jit_before.get(tid, 0.0)) for tid, s in jit_after.items())
    if used / cpu_s <= JIT_WARNING_SHARE:
        return ""
    return (
        f"warning: the Kafka broker spent {used / cpu_s:.0%} of its CPU in this run compiling "
        "its hot code: latencies and its CPU per record read high; warm it with a few thousand "
        "pipeline requests (`genwire bench --targets kafka -c 8 -n 1500`) and measure again"
    )


def tree_cpu_s(proc: psutil.Process | None) -> float | None:
    """CPU seconds of a process and its children (None: no process, or it is gone)."""
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
        total = times.user + times.system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                total += ct.user + ct.system
        return total
    except psutil.Error:
        return None


class Reader:
    """A group-less consumer of ``topic`` (its ``partitions``: all of the run's by default)
    with the services' client settings."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        fetch_max_wait_ms: int,
        partitions: Sequence[int] = tuple(range(PARTITIONS)),
    ) -> None:
        self.topic = topic
        self.partitions = tuple(partitions)
        self._consumer = AIOKafkaConsumer(
            **consumer_options(
                bootstrap_servers, group_id=None, fetch_max_wait_ms=fetch_max_wait_ms
            ),
            client_id="genwire-floor-reader",
        )
        self._waiters: dict[bytes, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, p) for p in self.partitions])
        await self._from_end()
        self._task = asyncio.create_task(self._read())

    async def fetching(self, on: bool) -> None:
        """Pause fetching (a phase through the front: replies go there, not here), or go on
        from the partitions' ends."""
        parts = [TopicPartition(self.topic, p) for p in self.partitions]
        if not on:
            self._consumer.pause(*parts)
            return
        await self._from_end()
        self._consumer.resume(*parts)

    async def _from_end(self) -> None:
        parts = [TopicPartition(self.topic, p) for p in self.partitions]
        await self._consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets now, before the first record is sent
            await self._consumer.position(tp)

    def expect(self, key: bytes) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        return fut

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batches.values():
                for rec in records:
                    fut = self._waiters.pop(rec.key or b"", None)
                    if fut is not None and not fut.done():
                        fut.set_result(now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


def reader_for(
    args: argparse.Namespace, topic: str, partitions: Sequence[int] = tuple(range(PARTITIONS))
) -> Reader | RdReader:
    """The measuring client's consumer of ``topic`` on ``--client``'s library."""
    if SIDES[args.client][0] == "librdkafka":
        from genwire_bench.floor_clients import RdReader

        return RdReader(args.bootstrap_servers, topic, args.fetch_max_wait_ms, partitions)
    return Reader(args.bootstrap_servers, topic, args.fetch_max_wait_ms, partitions)


def producer_for(args: argparse.Namespace) -> FloorProducer:
    """The measuring client's producer on ``--client``'s library."""
    if args.client == "aiokafka":
        return EventProducer(args.bootstrap_servers, client_id="genwire-floor")
    from genwire_bench.floor_clients import new_producer

    return new_producer(SIDES[args.client][1], args.bootstrap_servers, "genwire-floor")


async def _drive(
    producer: FloorProducer,
    reader: Reader | RdReader,
    topic: str,
    *,
    count: int,
    concurrency: int,
    size: int,
    tag: str,
    traced: list[TracedRecord] | None = None,
    traced_count: int = 0,
    acks: list[float] | None = None,
    front: FrontClient | None = None,
    pace_ms: float = 0.0,
) -> list[float]:
    """``count`` records through, ``concurrency`` at a time; each one's publish → seen (ms).

    ``traced_count`` records, spread evenly over the ``count`` (every ``count // traced_count``-th
    from the first), carry a ``traceparent`` of ours and are kept in ``traced``, so the relays'
    spans of exactly those records can be found in Jaeger.
    ``acks`` gets each record's publish → acknowledgement (ms). ``front``: each record is a
    call to the gRPC front instead (``--front grpc``), call → answer; nothing traced.
    ``pace_ms``: each worker waits this long between one record seen and its next send.
    """
    latencies: list[float] = []
    next_index = 0
    body = "x" * max(0, size - 60)

    async def worker() -> None:
        nonlocal next_index
        first = True
        while next_index < count:
            if pace_ms and not first:  # before taking an index: the pause is not a record's
                await asyncio.sleep(pace_ms / 1000.0)
                if next_index >= count:
                    break
            first = False
            i = next_index
            next_index += 1
            rid = f"{tag}-{i}"
            record = FloorRecord(request_id=rid, body=body)
            value = record.model_dump_json(exclude_none=True).encode()
            if front is not None:  # the front publishes, and answers once the record is seen
                latencies.append(await front.call(value))
                continue
            seen = reader.expect(rid.encode())
            trace = new_trace() if traced is not None and _traced(i, count, traced_count) else None
            headers = [("traceparent", trace.traceparent.encode())] if trace else []
            wall_ms = time.time() * 1000.0
            start = time.perf_counter()
            ack = await producer.send(topic, value, key=rid.encode(), headers=headers, traced=False)
            if acks is not None:
                ack.add_done_callback(_ack_timer(acks, start))
            async with asyncio.timeout(30.0):
                at = await seen
            await ack
            latencies.append((at - start) * 1000.0)
            if trace is not None and traced is not None:
                traced.append(TracedRecord(trace.trace_id, wall_ms, wall_ms + latencies[-1]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _traced(index: int, count: int, traced_count: int) -> bool:
    """Whether record ``index`` of ``count`` is one of ``traced_count`` spread evenly."""
    if traced_count <= 0:
        return False
    step = max(1, count // traced_count)
    return index % step == 0 and index // step < traced_count


def _ack_timer(sink: list[float], start: float) -> Callable[[asyncio.Future[object]], None]:
    def done(_: asyncio.Future[object]) -> None:
        sink.append((time.perf_counter() - start) * 1000.0)

    return done


def _ack_extra(acks: list[float]) -> dict[str, float | None]:
    dist = distribution(acks)
    return {
        "client_ack_p50_ms": dist.p50 if dist else None,
        "client_ack_p95_ms": dist.p95 if dist else None,
    }


class Relay:
    """A relay process (``hop``, ``chain``): a ServiceRuntime that forwards in → out; with
    ``role="--front-serve"`` the gRPC front (publishes on in, reads out) instead."""

    def __init__(
        self,
        args: argparse.Namespace,
        topic_in: str,
        topic_out: str,
        group: str,
        role: str = "--relay",
    ) -> None:
        env = dict(os.environ)
        env["OTEL_TRACES_EXPORTER"] = "kafka" if args.tracing else "none"
        cmd = [
            sys.executable,
            "-m",
            "genwire_bench.floor",
            role,
            topic_in,
            topic_out,
            "--bootstrap-servers",
            args.bootstrap_servers,
            "--event-loop",
            args.loop,
            "--fetch-max-wait-ms",
            str(args.fetch_max_wait_ms),
            "--commit-interval-ms",
            str(args.commit_interval_ms),
            "--group",
            group,
            "--client",
            args.client,
        ]
        if args.relay_concurrency is not None:
            cmd += ["--relay-concurrency", str(args.relay_concurrency)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.ps = psutil.Process(self.proc.pid)

    async def ready(self, timeout_s: float = 60.0) -> list[str]:
        """Wait for its ready line; returns what follows ``ready`` on it (the front's port)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await asyncio.to_thread(self.proc.stdout.readline)
        words = line.decode().split()
        if not words or words[0] != READY:
            raise RuntimeError(f"the relay did not start: {line!r}")
        return words[1:]

    def close(self) -> None:
        """Tell the relay to stop (it stops when its stdin closes)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def stop(self) -> None:
        self.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def measure(args: argparse.Namespace) -> list[Phase]:
    """Run the phases ``args`` asks for; returns them in order."""
    run = uuid.uuid4().hex[:8]
    topic_in, topic_out = _topics(run)
    specs = [s for s in TOPIC_SPECS if s.name in (Topic.RETRY, Topic.SPANS)]
    specs += [TopicSpec(t, PARTITIONS, 3_600_000) for t in (topic_in, topic_out)]
    await ensure_topics(args.bootstrap_servers, specs)
    broker = broker_process(args.bootstrap_servers)
    producer = producer_for(args)
    await producer.start()
    phases: list[Phase] = []
    try:
        for mode in args.modes:
            if mode == "idle":
                phases.append(await _idle(args, broker, topic_in, topic_out, run))
                continue
            if mode == "chain":
                phases += await _chain(args, producer, broker, run)
                continue
            for c in args.concurrency:
                phases.append(
                    await _phase(args, mode, c, producer, broker, topic_in, topic_out, run)
                )
    finally:
        await producer.stop()
        # the chain's too, here: deleted while the producer runs, its metadata refresh complains
        chain = chain_topics(run, args.stages) if "chain" in args.modes else []
        await _delete_topics(args.bootstrap_servers, [topic_in, topic_out, *chain])
        if {"hop", "idle"} & set(args.modes):
            group = relay_group(run)
            await _delete_groups(args.bootstrap_servers, [group, f"{group}-retry"])
    return phases


async def _chain(
    args: argparse.Namespace,
    producer: FloorProducer,
    broker: psutil.Process | None,
    run: str,
) -> list[Phase]:
    """``--stages`` relays in a chain, started once and measured at each concurrency.

    Before the first phase, ``--chain-idle-s`` with the chain up and nothing sent: the CPU per
    second the chain's processes burn anyway (polling, timers, and the broker serving the rest
    of the stack), so each phase can say what it cost above that.

    ``--front``: at each concurrency, a phase per front in its order (``none``: the client
    publishes; ``grpc``: it calls the front process, started with the relays and measured
    like them: ``genwire_bench.floor_front``).
    """
    topics = chain_topics(run, args.stages)
    await ensure_topics(
        args.bootstrap_servers, [TopicSpec(t, PARTITIONS, 3_600_000) for t in topics]
    )
    relays: list[Relay] = []
    fronts: list[Relay] = []  # the gRPC front's process (--front grpc): stopped with the relays
    client: FrontClient | None = None
    reader = reader_for(args, topics[-1])
    phases: list[Phase] = []
    try:
        for i in range(args.stages):
            relays.append(Relay(args, topics[i], topics[i + 1], chain_group(run, i)))
        if "grpc" in args.front:
            fronts.append(Relay(args, topics[0], topics[-1], f"floor-{run}-front", "--front-serve"))
        front = fronts[0] if fronts else None
        started = await asyncio.gather(*(r.ready() for r in [*relays, *fronts]))
        if front is not None:
            client = FrontClient(int(started[-1][0]))
            await client.ready()
        await reader.start()
        idle, front_idle = await _chain_idle(args.chain_idle_s, broker, relays, front)
        for c, via in ((c, f) for c in args.concurrency for f in args.front):
            tag = f"chain-c{c}-{uuid.uuid4().hex[:6]}"
            drive = {
                "concurrency": c,
                "size": args.size,
                "front": client if via == "grpc" else None,
            }
            fproc = front if via == "grpc" else None
            await reader.fetching(fproc is None)
            await _drive(producer, reader, topics[0], count=args.warmup, tag=f"{tag}-w", **drive)
            cpu0, b0, f0 = (
                time.process_time(),
                tree_cpu_s(broker),
                tree_cpu_s(fproc.ps if fproc else None),
            )
            r0 = [tree_cpu_s(r.ps) for r in relays]
            traced: list[TracedRecord] = []
            acks: list[float] = []
            n_traced = args.hop_traces if args.tracing and fproc is None else 0
            t0 = time.perf_counter()
            lat = await _drive(
                producer,
                reader,
                topics[0],
                count=args.records,
                tag=tag,
                traced=traced,
                traced_count=n_traced,
                acks=acks,
                pace_ms=args.pace_ms,  # the warm-up runs back to back, as in the other modes
                **drive,
            )
            seconds = time.perf_counter() - t0
            cpu1, b1, f1 = (
                time.process_time(),
                tree_cpu_s(broker),
                tree_cpu_s(fproc.ps if fproc else None),
            )
            r1 = [tree_cpu_s(r.ps) for r in relays]
            phase = _chain_phase(args, c, lat, seconds, (cpu0, cpu1), (b0, b1), r0, r1, idle)
            if fproc is not None:
                phase = _fronted(phase, (f0, f1), front_idle)
            phase.extra |= {"topics": topics, "groups": chain_groups(run, args.stages)}
            phase.extra |= _ack_extra(acks)
            if traced:  # after the CPU readings: fetching is not the chain's cost
                phase.extra["hops"] = await _hops(args, run, traced)
            phases.append(phase)
    finally:
        if client is not None:
            await client.close()
        await reader.stop()
        for r in [*relays, *fronts]:
            r.close()
        for r in [*relays, *fronts]:
            r.stop()
        await _delete_groups(args.bootstrap_servers, chain_groups(run, args.stages))
    return phases


async def _hops(args: argparse.Namespace, run: str, traced: list[TracedRecord]) -> dict[str, Any]:
    """The traced records' per-hop breakdown from Jaeger (``genwire_bench.traces``)."""
    jaeger = JaegerClient(args.jaeger_url)
    try:
        if not await jaeger.reachable():
            print(
                f"floor: Jaeger not reachable at {args.jaeger_url}: no per-hop figures",
                file=sys.stderr,
            )
            return {"found": 0, "wanted": len(traced), "hops": []}
        fetched = await jaeger.fetch_many(
            [t.trace_id for t in traced], min_spans=2 * args.stages, settle_s=2.0
        )
    finally:
        await jaeger.close()
    traces = [fetched.get(t.trace_id, []) for t in traced]
    result = breakdown(traces, len(traced), [(t.sent_ms, t.seen_ms) for t in traced])
    rows = hop_rows(result, run) + publish_split(traces, run)
    rows.sort(key=lambda r: float(r["at_ms"]))  # stable: a process span's own row first
    return {"found": result.traces_found, "wanted": len(traced), "hops": rows}


async def _chain_idle(
    seconds: float, broker: psutil.Process | None, relays: list[Relay], front: Relay | None = None
) -> tuple[float | None, float | None]:
    """Core-ms per second of this process, the relays and the broker with nothing sent; and
    of the front apart (None: no front), since only the phases through it count it."""
    if seconds <= 0:
        return None, None
    await asyncio.sleep(1.0)  # the relays' replayers catch up with genwire.retry first
    c0, b0, r0 = time.process_time(), tree_cpu_s(broker), [tree_cpu_s(r.ps) for r in relays]
    f0, t0 = tree_cpu_s(front.ps if front else None), time.perf_counter()
    await asyncio.sleep(seconds)
    c1, b1, r1 = time.process_time(), tree_cpu_s(broker), [tree_cpu_s(r.ps) for r in relays]
    f1, elapsed = tree_cpu_s(front.ps if front else None), time.perf_counter() - t0
    readings = [(c0, c1), (b0, b1), *zip(r0, r1, strict=True)]
    front_rate = None if f0 is None or f1 is None else (f1 - f0) * 1000.0 / elapsed
    if any(a is None or b is None for a, b in readings):
        return None, front_rate
    total = sum(b - a for a, b in readings if a is not None and b is not None)
    return total * 1000.0 / elapsed, front_rate


def _chain_phase(
    args: argparse.Namespace,
    concurrency: int,
    lat: list[float],
    seconds: float,
    client: tuple[float, float],
    broker: tuple[float | None, float | None],
    relays0: list[float | None],
    relays1: list[float | None],
    idle_per_s: float | None = None,
) -> Phase:
    n = len(lat)
    cost = ChainCost(
        client=per_record(*client, n),
        relays=[per_record(a, b, n) for a, b in zip(relays0, relays1, strict=True)],
        broker=per_record(*broker, n),
        idle=None if idle_per_s is None else idle_per_s * seconds / n,
    )
    return Phase(
        mode="chain",
        concurrency=concurrency,
        seconds=seconds,
        **_latency(lat),
        client_core_ms=cost.client,
        relay_core_ms=cost.relays_sum,
        broker_core_ms=cost.broker,
        extra={
            "stages": args.stages,
            "front": "none",
            "relays_core_ms": list(cost.relays),
            "total_core_ms": cost.total,
            "idle_core_ms_per_s": idle_per_s,
            "total_above_idle_core_ms": cost.above_idle,
            "size": args.size,
            "client": args.client,
            "loop": event_loop.describe(),
            "relay_loop": args.loop,
            "tracing": bool(args.tracing),
            "relay_concurrency": args.relay_concurrency,
            "fetch_max_wait_ms": args.fetch_max_wait_ms,
            "commit_interval_ms": args.commit_interval_ms,
            "pace_ms": args.pace_ms,
        },
    )


def _fronted(
    phase: Phase, front: tuple[float | None, float | None], front_idle_per_s: float | None
) -> Phase:
    """A chain phase that went through the front: its CPU in the total, its idle in the idle."""
    rate = phase.extra["idle_core_ms_per_s"]
    phase.extra |= {
        "front": "grpc",
        "front_core_ms": per_record(*front, phase.records),
        "front_idle_core_ms_per_s": front_idle_per_s,
        "idle_core_ms_per_s": None
        if rate is None or front_idle_per_s is None
        else rate + front_idle_per_s,
    }
    cost = chain_row(phase).cost
    phase.extra |= {"total_core_ms": cost.total, "total_above_idle_core_ms": cost.above_idle}
    return phase


def _idle_per_record(phase: Phase) -> float | None:
    rate = phase.extra.get("idle_core_ms_per_s")
    return None if rate is None or phase.records <= 0 else rate * phase.seconds / phase.records


def pace_of(extra: dict[str, Any]) -> float:
    """A phase's ``--pace-ms`` (0 for a run from before the option)."""
    return float(extra.get("pace_ms") or 0.0)


def chain_row(phase: Phase) -> ChainRow:
    """A ``chain`` phase as the chain table's row."""
    extra = phase.extra
    return ChainRow(
        stages=int(extra["stages"]),
        concurrency=phase.concurrency,
        records=phase.records,
        seconds=phase.seconds,
        p50_ms=phase.p50_ms,
        p95_ms=phase.p95_ms,
        p99_ms=phase.p99_ms,
        cost=ChainCost(
            client=phase.client_core_ms,
            relays=list(extra["relays_core_ms"]),
            broker=phase.broker_core_ms,
            idle=_idle_per_record(phase),
            front=extra.get("front_core_ms"),
            fronted=extra.get("front", "none") != "none",
        ),
        tracing=bool(extra["tracing"]),
        size=int(extra["size"]),
        pace_ms=pace_of(extra),
    )


async def _phase(
    args: argparse.Namespace,
    mode: str,
    concurrency: int,
    producer: FloorProducer,
    broker: psutil.Process | None,
    topic_in: str,
    topic_out: str,
    run: str,
) -> Phase:
    relay = Relay(args, topic_in, topic_out, relay_group(run)) if mode == "hop" else None
    reader = reader_for(args, topic_out if relay else topic_in)
    try:
        if relay is not None:
            await relay.ready()
        await reader.start()
        tag = f"{mode}-c{concurrency}-{uuid.uuid4().hex[:6]}"
        send = topic_in
        await _drive(
            producer,
            reader,
            send,
            count=args.warmup,
            concurrency=concurrency,
            size=args.size,
            tag=f"{tag}-w",
        )
        cpu0, b0 = time.process_time(), tree_cpu_s(broker)
        r0 = tree_cpu_s(relay.ps) if relay else None
        acks: list[float] = []
        t0 = time.perf_counter()
        lat = await _drive(
            producer,
            reader,
            send,
            count=args.records,
            concurrency=concurrency,
            size=args.size,
            tag=tag,
            acks=acks,
            pace_ms=args.pace_ms,
        )
        seconds = time.perf_counter() - t0
        cpu1, b1 = time.process_time(), tree_cpu_s(broker)
        r1 = tree_cpu_s(relay.ps) if relay else None
    finally:
        await reader.stop()
        if relay is not None:
            relay.stop()
    n = len(lat)

    def per_rec(a: float | None, b: float | None) -> float | None:
        return per_record(a, b, n)

    return Phase(
        mode=mode,
        concurrency=concurrency,
        seconds=seconds,
        **_latency(lat),
        client_core_ms=(cpu1 - cpu0) * 1000.0 / n,
        relay_core_ms=per_rec(r0, r1),
        broker_core_ms=per_rec(b0, b1),
        extra={
            "client": args.client,
            "loop": event_loop.describe(),
            "relay_loop": args.loop if relay else None,
            "tracing": bool(args.tracing) if relay else None,
            "fetch_max_wait_ms": args.fetch_max_wait_ms,
            "commit_interval_ms": args.commit_interval_ms,
            "pace_ms": args.pace_ms,
            **_ack_extra(acks),
        },
    )


async def _idle(
    args: argparse.Namespace,
    broker: psutil.Process | None,
    topic_in: str,
    topic_out: str,
    run: str,
) -> Phase:
    """The relay with nothing to do for ``--idle-s``: what its polling and timers cost."""
    relay = Relay(args, topic_in, topic_out, relay_group(run))
    try:
        await relay.ready()
        await asyncio.sleep(2.0)  # let the joining settle
        r0, b0, t0 = tree_cpu_s(relay.ps), tree_cpu_s(broker), time.perf_counter()
        await asyncio.sleep(args.idle_s)
        r1, b1, seconds = tree_cpu_s(relay.ps), tree_cpu_s(broker), time.perf_counter() - t0
    finally:
        relay.stop()

    def per_s(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (b - a) * 1000.0 / seconds

    return Phase(
        mode="idle",
        concurrency=0,
        records=0,
        seconds=seconds,
        p50_ms=None,
        p95_ms=None,
        p99_ms=None,
        mean_ms=None,
        client_core_ms=None,
        relay_core_ms=per_s(r0, r1),
        broker_core_ms=per_s(b0, b1),
        extra={
            "client": args.client,
            "relay_loop": args.loop,
            "tracing": bool(args.tracing),
            "fetch_max_wait_ms": args.fetch_max_wait_ms,
            "commit_interval_ms": args.commit_interval_ms,
        },
    )


def relay_group(run: str) -> str:
    """The relay's consumer group (its retry replayer's is this + ``-retry``, on genwire.retry).

    Not ``genwire-``: the fault suite's stuck-partition check (genwire's groups) must not take
    the replayer's for a stage that stopped reading genwire.retry. Deleted at the end
    (``_delete_groups``); one that cannot be is reported and stays like the tests' ``test-…``.
    """
    return f"floor-{run}"


async def _delete_groups(bootstrap_servers: str, groups: list[str]) -> list[str]:
    """Delete the (stopped, so empty) groups; says on stderr which could not be."""
    try:
        left = await delete_groups(bootstrap_servers, groups)
    except Exception as exc:  # reported, not raised: the figures stand
        print(f"floor: could not delete the groups {groups}: {exc!r}", file=sys.stderr)
        return groups
    if left:
        print(f"floor: these groups are left on the broker: {left}", file=sys.stderr)
    return left


async def _delete_topics(bootstrap_servers: str, topics: list[str]) -> None:
    with contextlib.suppress(Exception):  # a private topic left behind costs nothing here
        await delete_topics(bootstrap_servers, topics)


# --- the relay process -----------------------------------------------------------------------


async def relay_main(args: argparse.Namespace) -> None:
    """Forward every record of ``in`` to ``out`` through a ServiceRuntime, until stdin closes."""
    from genwire.service.runtime import ServiceRuntime
    from genwire.settings import ServiceSettings

    topic_in, topic_out = args.relay
    settings = ServiceSettings(
        kafka_bootstrap_servers=args.bootstrap_servers,
        service_name=args.group,
        kafka_fetch_max_wait_ms=args.fetch_max_wait_ms,
        kafka_commit_interval_ms=args.commit_interval_ms,
        event_loop=args.loop,
    )
    if args.relay_concurrency is not None:
        settings = settings.model_copy(update={"concurrency": args.relay_concurrency})
    runtime = ServiceRuntime(settings, "floor", set_global_tracer=False)

    async def forward(record: FloorRecord) -> RawRecord:
        value = record.model_dump_json(exclude_none=True).encode()
        return RawRecord(
            topic_out, value, record.request_id.encode(), partition=record.partition_on(topic_out)
        )

    consumer = runtime.consumer(topic_in, FloorRecord, forward)
    await runtime.start()
    for _ in range(1200):  # joined: the group's callback sets it (no event to wait on)
        if consumer.ready:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"the relay's consumer did not join its group on {topic_in}")
    print(READY, flush=True)
    try:
        await asyncio.to_thread(sys.stdin.read)  # until the measuring process closes our stdin
    finally:  # also when interrupted (Ctrl-C reaches the relays too): leave the group now
        await runtime.stop()
        runtime.tracer_provider.shutdown()


async def front_main(args: argparse.Namespace) -> None:
    """The gRPC front (``genwire_bench.floor_front``) until stdin closes; its reply reader
    reads the one partition of ``out`` the last relay publishes its replies on."""
    topic_in, topic_out = args.front_serve
    replies = Reader(args.bootstrap_servers, topic_out, args.fetch_max_wait_ms, (FRONT_PARTITION,))
    async with serving(args, replies, topic_in, topic_out) as port:
        print(f"{READY} {port}", flush=True)
        await asyncio.to_thread(sys.stdin.read)


# --- CLI ---------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m genwire_bench.floor",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m genwire_bench.floor                       bare and hop, c=1 and 8\n"
            "  python -m genwire_bench.floor --modes bare -n 2000  the floor alone\n"
            "  python -m genwire_bench.floor --event-loop asyncio --no-tracing   the levers\n"
            "  python -m genwire_bench.floor --modes chain -n 500 -c 1,8   the pipeline's floor\n"
            "  python -m genwire_bench.floor --modes chain --front none,grpc   and its gRPC front's"
        ),
    )
    p.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("GENWIRE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    p.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["bare", "hop"],
        help="bare (the floor), hop (through a relay built like a service), idle (the relay's "
        "CPU per second with nothing to do), chain (--stages relays in a chain: the pipeline's "
        "floor)",
    )
    p.add_argument(
        "--stages",
        type=int,
        default=None,
        help=f"relays in the chain (default {DEFAULT_STAGES}: preprocess, inference, postprocess)",
    )
    p.add_argument("-c", "--concurrency", type=_ints, default=[1, 8])
    p.add_argument("-n", "--records", type=int, default=500, help="measured records per phase")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--idle-s", type=float, default=10.0, help="length of the idle phase")
    p.add_argument("--size", type=int, default=200, help="record value bytes (about)")
    p.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="each worker waits this long after its record is seen before it sends the next (0: "
        "back to back). The pipeline's stages at c=1 see a request every 36-42 ms (a pause of "
        "~30 ms plus the chain's own latency): every process on the path then wakes cold, as "
        "there",
    )
    p.add_argument(
        "--event-loop",
        "--loop",
        dest="loop",
        choices=event_loop.EVENT_LOOPS,
        default="auto",
        help="the event loop of every client and relay (as `genwire bench --event-loop`; "
        "--loop is the older spelling)",
    )
    p.add_argument("--fetch-max-wait-ms", type=int, default=FETCH_MAX_WAIT_MS)
    p.add_argument(
        "--commit-interval-ms",
        type=int,
        default=int(COMMIT_INTERVAL_S * 1000),
        help="the relay's kafka_commit_interval_ms",
    )
    p.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the relay exports its spans to Kafka, as the services do (default on)",
    )
    p.add_argument(
        "--chain-idle-s",
        type=float,
        default=None,
        help="chain: seconds of its CPU with nothing sent, before the first phase (the "
        "'above idle' column; 0: not measured)",
    )
    p.add_argument(
        "--hop-traces",
        type=int,
        default=None,
        help="chain, tracing on: N measured records of each phase, spread evenly over it, "
        "carry our trace context, and their traces are read back from Jaeger for a per-hop "
        "table (0: none)",
    )
    p.add_argument(
        "--jaeger-url",
        default=os.environ.get("GENWIRE_JAEGER_UI_URL", "http://127.0.0.1:16686"),
        help="Jaeger's query API, for --hop-traces",
    )
    p.add_argument(
        "--relay-concurrency",
        type=int,
        default=None,
        help="each relay's records in flight (its consumer's CONCURRENCY; default: the "
        "services' default)",
    )
    p.add_argument(
        "--front",
        type=parse_fronts,
        default=None,
        help="chain: none (the client publishes and reads, the Kafka path; default), grpc (it "
        "calls a do-nothing gRPC front that does), or both, e.g. none,grpc: a phase of each "
        "at every concurrency, and what the front adds per request",
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="aiokafka",
        help="the Kafka clients of the measuring process and the relays: aiokafka (the "
        "services' runtime), runtime-librdkafka (the same runtime on KAFKA_CLIENT=librdkafka), "
        "plain-aiokafka (bare aiokafka clients, no genwire wrapper), mixed "
        "(aiokafka's consumer, librdkafka's producer), mixed-consumer (the other way round), "
        "librdkafka (confluent-kafka), adapters-librdkafka (the bare relay on genwire's "
        "librdkafka adapters, no runtime); the same settings and semantics; all but the two "
        "runtimes need --no-tracing, and the measuring process is librdkafka's on every "
        "client that reads with it (genwire_bench.floor_clients)",
    )
    p.add_argument(
        "--beside-model",
        metavar="MODEL",
        nargs="?",
        const="genwire-gpt",
        help="keep MODEL (default genwire-gpt) decoding on the stack's Triton throughout, "
        "one direct request at a time, as the pipeline's c=1 keeps it busy "
        "(genwire_bench.floor_model)",
    )
    p.add_argument("--json", dest="json_path", help="write the phases as JSON here")
    p.add_argument("--relay", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--front-serve", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    return p


def render(phases: list[Phase]) -> str:
    """The phases as a table (``chain`` phases in a table of their own, after it)."""
    chain = [ph for ph in phases if ph.mode == "chain"]
    others = [ph for ph in phases if ph.mode != "chain"]
    tables = [_render_phases(others)] if others or not chain else []
    if chain:
        rows = [chain_row(ph) for ph in chain]
        bare = {ph.concurrency: ph.p50_ms for ph in others if ph.mode == "bare" and ph.p50_ms}
        below = [*beyond_floor(rows, bare), *front_difference(rows)]
        tables.append("\n".join([render_chain(rows), "", *below]).rstrip())
        tables += [
            render_hops(ph.concurrency, ph.extra["hops"])
            for ph in chain
            if ph.extra.get("hops", {}).get("hops")
        ]
    acked = [ph for ph in phases if ph.extra.get("client_ack_p50_ms") is not None]
    if acked:
        tables.append(
            "The client's publish → acknowledgement (acks=all), p50 / p95 ms: "
            + ", ".join(
                f"{ph.mode} c={ph.concurrency} {ph.extra['client_ack_p50_ms']:.2f} / "
                f"{ph.extra['client_ack_p95_ms']:.2f}"
                for ph in acked
            )
        )
    return "\n\n".join(tables)


def _render_phases(phases: list[Phase]) -> str:
    lines = [
        "| mode | c | records | rec/s | p50 ms | p95 | p99 | client core-ms/rec "
        "| relay core-ms/rec | broker core-ms/rec |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    for ph in phases:
        if ph.mode == "idle":
            lines.append(
                f"| idle ({ph.seconds:.0f} s) | – | – | – | – | – | – | – "
                f"| {f(ph.relay_core_ms)} per s | {f(ph.broker_core_ms)} per s |"
            )
            continue
        pace = pace_of(ph.extra)
        mode = f"{ph.mode}, {pace:g} ms apart" if pace else ph.mode
        lines.append(
            f"| {mode} | {ph.concurrency} | {ph.records} | {ph.records / ph.seconds:.0f} "
            f"| {f(ph.p50_ms)} | {f(ph.p95_ms)} | {f(ph.p99_ms)} | {f(ph.client_core_ms)} "
            f"| {f(ph.relay_core_ms)} | {f(ph.broker_core_ms)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser().error(
            f"--modes: unknown {', '.join(sorted(unknown))} (expected {', '.join(MODES)})"
        )
    chain_only = [
        f
        for f, v in (
            ("--stages", args.stages),
            ("--chain-idle-s", args.chain_idle_s),
            ("--hop-traces", args.hop_traces),
            ("--front", args.front),
        )
        if v is not None
    ]
    if chain_only and "chain" not in args.modes and not args.relay:
        parser().error(f"{', '.join(chain_only)}: only with --modes chain")
    args.stages = DEFAULT_STAGES if args.stages is None else args.stages
    args.chain_idle_s = 3.0 if args.chain_idle_s is None else args.chain_idle_s
    args.hop_traces = 0 if args.hop_traces is None else args.hop_traces
    args.front = ["none"] if args.front is None else args.front
    if args.stages < 1:
        parser().error("--stages: at least 1")
    if args.pace_ms < 0:
        parser().error("--pace-ms: 0 or more")
    if args.pace_ms and not set(args.modes) - {"idle"}:
        parser().error("--pace-ms: only with --modes bare, hop or chain (idle sends nothing)")
    if args.relay_concurrency is not None and args.relay_concurrency < 1:
        parser().error("--relay-concurrency: at least 1")
    if args.hop_traces and not args.tracing:
        parser().error("--hop-traces needs the relays' spans: not with --no-tracing")
    # (a relay's tracing comes in its environment, OTEL_TRACES_EXPORTER, not in --tracing)
    if args.client not in RUNTIME and args.tracing and not args.relay:
        parser().error(f"--client {args.client}: its relays export no spans, add --no-tracing")
    if args.client != "aiokafka" and args.front != ["none"]:
        parser().error(f"--client {args.client}: no gRPC front on this client (--front none)")
    if "librdkafka" in SIDES[args.client] and client_options():
        parser().error(
            f"--client {args.client}: librdkafka is not given the broker's TLS/SASL settings "
            "here; measure it on a PLAINTEXT broker"
        )
    if args.client in RUNTIME:
        # genwire's runtime on the client named, whatever KAFKA_CLIENT the shell exports (for
        # `make up`, say); its relays inherit this environment.
        os.environ["GENWIRE_KAFKA_CLIENT"] = SIDES[args.client][0]
    if args.relay and args.client not in RUNTIME:
        from genwire_bench import floor_clients

        event_loop.run(floor_clients.relay_main(args, READY), args.loop)
        return 0
    if args.relay:
        event_loop.run(relay_main(args), args.loop)
        return 0
    if args.front_serve:
        event_loop.run(front_main(args), args.loop)
        return 0
    load0 = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    broker = broker_process(args.bootstrap_servers)
    jit0, broker0 = (jit_seconds(broker.pid) if broker else {}), tree_cpu_s(broker)
    beside: ModelLoad | None = None
    with contextlib.ExitStack() as stack:
        if args.beside_model:
            from genwire.settings import CommonSettings

            beside = stack.enter_context(
                beside_model(CommonSettings().triton_grpc_url, args.beside_model)
            )
        phases = event_loop.run(measure(args), args.loop)
    broker1 = tree_cpu_s(broker)
    jit_warning = broker_jit_warning(
        jit0,
        jit_seconds(broker.pid) if broker else {},
        broker1 - broker0 if broker0 is not None and broker1 is not None else None,
    )
    load1 = os.getloadavg()
    print(
        f"floor: {started}, broker {args.bootstrap_servers}, client {args.client}, "
        f"loop {args.loop}, "
        f"tracing {'on' if args.tracing else 'off'} (relay), fetch_max_wait_ms "
        f"{args.fetch_max_wait_ms}, load average {load0[0]:.2f} → {load1[0]:.2f}"
        + (
            f", beside {beside.model} decoding one request at a time ({beside.requests} "
            "requests served meanwhile)"
            if beside is not None
            else ""
        )
    )
    print(render(phases))
    if jit_warning:
        print(jit_warning, file=sys.stderr)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(
                {
                    "started": started,
                    "load": [load0[0], load1[0]],
                    "args": {
                        k: v
                        for k, v in vars(args).items()
                        if k not in ("relay", "front_serve", "group")
                    },
                    "phases": [asdict(p) for p in phases],
                    "beside_model": asdict(beside) if beside is not None else None,
                },
                handle,
                indent=2,
            )
    if beside is not None and beside.trouble():
        print(
            f"--beside-model: the model did not decode throughout ({beside.trouble()}): these "
            "figures are not the floor beside a busy model",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
