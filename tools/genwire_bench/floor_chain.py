"""``python -m genwire_bench.floor --modes chain``: the pipeline's floor, N do-nothing stages.

The request path is three stages joined by four Kafka hops (client → preprocess → inference →
postprocess → client). ``chain`` builds the same shape with relays whose handler does nothing
(each one built like a service, ``genwire_bench.floor.Relay``): the client publishes on topic
``floor-<run>-0``, relay ``i`` forwards ``floor-<run>-i`` → ``floor-<run>-(i+1)``, and the
client reads ``floor-<run>-N``. Its end-to-end latency is the least the architecture can cost
per request on this machine, and client + relays + broker CPU per record the least it can
burn; the pipeline's overhead and CPU per request are judged against it (docs/benchmarks.md,
*The pipeline's floor*).

This module is the pure part (names, the report); floor.py runs the processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from pydantic import BaseModel

from genwire.topics import ReplyTo
from genwire_bench.stats import distribution
from genwire_bench.traces import PROCESS_SUFFIX, PUBLISH_SUFFIX, Breakdown, Span

DEFAULT_STAGES = 3  # preprocess, inference, postprocess

Sides = tuple[str, str]
"""A ``--client``'s (consumer, producer) libraries: ``aiokafka`` or ``librdkafka``."""
SIDES: dict[str, Sides] = {
    "aiokafka": ("aiokafka", "aiokafka"),  # the services' runtime (floor.relay_main)
    "runtime-librdkafka": ("librdkafka", "librdkafka"),  # the same on KAFKA_CLIENT=librdkafka
    "plain-aiokafka": ("aiokafka", "aiokafka"),  # the others: floor_clients.Relay
    "mixed": ("aiokafka", "librdkafka"),
    "mixed-consumer": ("librdkafka", "aiokafka"),
    "librdkafka": ("librdkafka", "librdkafka"),
    "adapters-librdkafka": ("librdkafka", "librdkafka"),  # genwire's adapters, no runtime
}
CLIENTS = tuple(SIDES)
"""``floor --client``; the runtime's relays are ``floor.relay_main``, the others are built in
``floor_clients``, which imports confluent-kafka (so the default needs none)."""
RUNTIME = frozenset({"aiokafka", "runtime-librdkafka"})
"""The clients whose relays are genwire's runtime, on ``KAFKA_CLIENT`` = their consumer side."""
ADAPTERS = "adapters-librdkafka"
"""``floor_clients.Relay`` on genwire's librdkafka adapters (``RdConsumer``, ``RdProducer``):
between the bare ``librdkafka`` relay and ``runtime-librdkafka``, it tells the adapters' cost
from the runtime's."""


class FloorRecord(BaseModel):
    """What the relay decodes: a request id and a body (a stand-in for an event)."""

    request_id: str
    body: str
    reply_to: str | None = None
    """``<topic>:<partition>`` (``genwire.topics.ReplyTo``), set by a front (``--front grpc``):
    the relay publishing on that topic names that partition, as postprocess does a request's
    ``genwire_reply_to``; None (left out of the JSON): the key's partition."""

    def partition_on(self, topic: str) -> int | None:
        """The partition to publish on ``topic``: the reply's if it goes there, else the key's."""
        if self.reply_to is None:
            return None
        reply = ReplyTo.parse(self.reply_to.encode())
        return reply.partition if reply.topic == topic else None


def chain_topics(run: str, stages: int) -> list[str]:
    """The chain's topics in order: the client's, then each relay's output (``stages + 1``)."""
    if stages < 1:
        raise ValueError(f"a chain needs at least one stage, got {stages}")
    return [f"floor-{run}-{i}" for i in range(stages + 1)]


def chain_group(run: str, stage: int) -> str:
    """Relay ``stage``'s consumer group (its retry replayer's: this + ``-retry``).

    ``floor-…``, never ``genwire-…``: the fault suite's stuck-partition check reads every
    ``genwire…`` group, and a relay's replayer reads the shared ``genwire.retry``.
    """
    return f"floor-{run}-stage{stage}"


def chain_groups(run: str, stages: int) -> list[str]:
    """Every group the chain's relays join: each stage's own and its retry replayer's."""
    names: list[str] = []
    for i in range(stages):
        names += [chain_group(run, i), f"{chain_group(run, i)}-retry"]
    return names


def per_record(before: float | None, after: float | None, records: int) -> float | None:
    """CPU milliseconds per record between two readings in seconds (None: not measured)."""
    if before is None or after is None or records <= 0:
        return None
    return (after - before) * 1000.0 / records


@dataclass(frozen=True)
class ChainCost:
    """Core-ms per record of one chain phase, by process."""

    client: float | None
    relays: Sequence[float | None]
    broker: float | None
    idle: float | None = None
    """What the same processes burn with nothing sent, over the phase's time, per record."""
    front: float | None = None
    """The gRPC front's process (``--front grpc``; None: not measured)."""
    fronted: bool = False
    """Whether the phase went through a front (its CPU then belongs in the total)."""

    @property
    def relays_sum(self) -> float | None:
        """All relays together (None when any one was not measured)."""
        if not self.relays or any(r is None for r in self.relays):
            return None
        return sum(r for r in self.relays if r is not None)

    @property
    def total(self) -> float | None:
        """Client (+ front) + relays + broker: the architecture's CPU per request (None: a part
        missing)."""
        parts = [self.client, self.relays_sum, self.broker, *([self.front] if self.fronted else [])]
        if any(p is None for p in parts):
            return None
        return sum(p for p in parts if p is not None)

    @property
    def above_idle(self) -> float | None:
        """``total`` less ``idle``: what the records themselves cost (None: either missing)."""
        total = self.total
        return None if total is None or self.idle is None else total - self.idle


@dataclass(frozen=True)
class ChainRow:
    """What the chain table shows for one phase."""

    stages: int
    concurrency: int
    records: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    cost: ChainCost
    tracing: bool
    size: int
    pace_ms: float = 0.0
    """Each worker's pause between one record seen and its next send (``--pace-ms``)."""


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_chain(rows: Sequence[ChainRow]) -> str:
    """The chain phases as a table: latency end to end, and CPU per record by process (the
    front's column only when a phase went through one)."""
    fronted = any(r.cost.fronted for r in rows)
    lines = [
        "| chain | c | records | rec/s | p50 ms | p95 | p99 | p50 per hop | client core-ms/rec "
        + ("| front " if fronted else "")
        + "| relays core-ms/rec (each) | relays sum | broker | total core-ms/rec | above idle |",
        "|---|---|---|---|---|---|---|---|---|"
        + ("---|" if fronted else "")
        + "---|---|---|---|---|",
    ]
    for r in rows:
        hops = r.stages + 1
        per_hop = None if r.p50_ms is None else r.p50_ms / hops
        each = " / ".join(_f(x) for x in r.cost.relays)
        rate = r.records / r.seconds if r.seconds > 0 else 0.0
        label = f"{r.stages} stages, {r.size} B, tracing {'on' if r.tracing else 'off'}"
        label += ", gRPC front" if r.cost.fronted else ""
        label += f", {r.pace_ms:g} ms apart" if r.pace_ms else ""
        front = f"| {_f(r.cost.front) if r.cost.fronted else '–'} " if fronted else ""
        lines.append(
            f"| {label} | {r.concurrency} | {r.records} | {rate:.0f} | {_f(r.p50_ms)} "
            f"| {_f(r.p95_ms)} | {_f(r.p99_ms)} | {_f(per_hop)} | {_f(r.cost.client)} "
            f"{front}| {each} | {_f(r.cost.relays_sum)} | {_f(r.cost.broker)} | {_f(r.cost.total)} "
            f"| {_f(r.cost.above_idle)} |"
        )
    return "\n".join(lines)


def beyond_floor(rows: Sequence[ChainRow], bare_p50: dict[int, float]) -> list[str]:
    """For each chain phase with a ``bare`` phase at its concurrency in the same run: the p50
    end to end less ``stages + 1`` bare hops' p50, and that per stage (what a stage that does
    nothing adds to a hop)."""
    lines: list[str] = []
    for r in rows:
        bare = bare_p50.get(r.concurrency)
        if bare is None or r.p50_ms is None or r.cost.fronted:  # a front's hop is no Kafka hop
            continue
        hops = r.stages + 1
        extra = r.p50_ms - hops * bare
        lines.append(
            f"c={r.concurrency}: chain p50 {r.p50_ms:.2f} ms − {hops} × bare p50 {bare:.2f} ms "
            f"= {extra:.2f} ms, {extra / r.stages:.2f} ms per stage beyond the one-hop floor"
        )
    return lines


@dataclass(frozen=True)
class TracedRecord:
    """A measured record that carried our trace context: its trace and its wall times (ms)."""

    trace_id: str
    sent_ms: float
    seen_ms: float


def hop_rows(result: Breakdown, run: str) -> list[dict[str, Any]]:
    """The breakdown's hops as plain rows, the run's topic prefix shortened to ``floor-…-``."""
    prefix = f"floor-{run}-"
    return [
        {
            "hop": h.hop.replace(prefix, "floor-…-"),
            "per_trace": h.per_trace,
            "at_ms": h.offset_p50_ms,
            "p50_ms": h.ms.p50,
            "p95_ms": h.ms.p95,
        }
        for h in result.hops
    ]


def publish_split(traces: Iterable[Sequence[Span]], run: str) -> list[dict[str, Any]]:
    """Each relay's process span cut at its publish, as rows like ``hop_rows``'.

    ``before its publish``: from the span's start (the record fetched, handed to a task) to the
    ``<topic> publish`` span it parents (decoded, handled); ``publish → end``: from there to the
    span's end, which is the wait for the ``acks=all`` acknowledgement.
    """
    prefix = f"floor-{run}-"
    samples: dict[str, tuple[list[float], list[float]]] = {}
    found = 0
    for spans in traces:
        if not spans:
            continue
        found += 1
        t0 = min(s.start_us for s in spans)
        publishes: dict[str, list[Span]] = {}
        for span in spans:
            if span.name.endswith(PUBLISH_SUFFIX) and span.parent_id:
                publishes.setdefault(span.parent_id, []).append(span)
        for span in spans:
            children = publishes.get(span.span_id)
            if not span.name.endswith(PROCESS_SUFFIX) or not children:
                continue
            at = min(c.start_us for c in children)
            name = span.name.replace(prefix, "floor-…-")
            values, offsets = samples.setdefault(name, ([], []))
            values += [(at - span.start_us) / 1000.0, (span.start_us + span.duration_us - at) / 1e3]
            offsets += [(span.start_us - t0) / 1000.0, (at - t0) / 1000.0]
    rows: list[dict[str, Any]] = []
    for name, (values, offsets) in samples.items():
        for part, label in ((0, "before its publish"), (1, "publish → end (acknowledgement)")):
            dist = distribution(values[part::2])
            assert dist is not None
            rows.append(
                {
                    "hop": f"{name}: {label}",
                    "per_trace": len(values[part::2]) / found,
                    "at_ms": float(median(offsets[part::2])),
                    "p50_ms": dist.p50,
                    "p95_ms": dist.p95,
                }
            )
    return rows


def render_hops(concurrency: int, hops: dict[str, Any]) -> str:
    """One phase's per-hop table (from ``hop_rows``, with how many traces were found)."""
    lines = [
        f"Per hop, c={concurrency} ({hops['found']}/{hops['wanted']} traces):",
        "",
        "| hop | per trace | at p50 ms | p50 ms | p95 ms |",
        "|---|---|---|---|---|",
    ]
    for h in hops["hops"]:
        lines.append(
            f"| {h['hop']} | {h['per_trace']:.1f} | {h['at_ms']:.2f} | {h['p50_ms']:.2f} "
            f"| {h['p95_ms']:.2f} |"
        )
    return "\n".join(lines)
