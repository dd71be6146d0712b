"""``python -m genwire_bench.jaeger_memory``: Jaeger's memory while it reads a backlog of spans.

The stack's Jaeger reads ``otlp_spans`` from Kafka. After a restart behind a long outage, or a
new deployment (a new consumer group starts at the oldest retained span), it reads everything
the topic holds at once, and its Go heap grows with what is in flight plus the garbage
collector's headroom (by default the heap may double before a collection). This starts a
private Jaeger per memory limit (``GENWIRE_JAEGER_MEMORY_LIMIT``, Go's GOMEMLIMIT): its own
ports, data directory and consumer group, reading the running stack's ``otlp_spans`` from the
oldest record up to the end offsets taken at its start. It prints, per limit, the time to catch
up, the peak and final resident memory of the Jaeger process and its peak Go heap.

Needs the running stack's Kafka (plaintext: the private Jaeger has no credentials of a
``--secure`` stack) and the Jaeger binary ``genwire up`` built; the stack's own Jaeger is not
touched.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from genwire_stack import child_pid, down, ensure_up
from genwire_stack.components import Jaeger
from genwire_stack.paths import StackPaths

from genwire.kafka.admin import delete_groups
from genwire.settings import CommonSettings
from genwire.topics import TOPIC_SPECS, Topic

HEAP = re.compile(r"^otelcol_process_runtime_heap_alloc_bytes\{[^}]*\} (\S+)$", re.M)


@dataclass
class Result:
    """One private Jaeger's read of the backlog."""

    limit: str
    records: int
    caught_up_s: float | None
    peak_rss_mib: float
    end_rss_mib: float
    peak_heap_mib: float | None
    """None: the collector's heap metric was never read."""
    store_mib: float
    """Badger's files once Jaeger stopped, as allocated on disk (its value log is sparse)."""


async def _backlog(bootstrap: str) -> tuple[int, dict[int, int]]:
    """Records ``otlp_spans`` holds now, and the end offset of each partition that holds any
    (an empty one never gets a committed offset: nothing there to wait for)."""
    spec = next(s for s in TOPIC_SPECS if s.name == Topic.SPANS)
    parts = [TopicPartition(Topic.SPANS, p) for p in range(spec.partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
    finally:
        await consumer.stop()
    held = {tp.partition: ends[tp] for tp in parts if ends[tp] > starts[tp]}
    return sum(ends[tp] - starts[tp] for tp in parts), held


async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == Topic.SPANS}


async def _forget_group(bootstrap: str, group: str, infra: CommonSettings) -> None:
    """Delete the private Jaeger's group: Kafka refuses while its member has not left yet."""
    for _ in range(20):
        if not await delete_groups(bootstrap, [group], settings=infra):
            return
        await asyncio.sleep(1.0)
    print(f"consumer group {group} left behind (Kafka expires it in a week)", file=sys.stderr)


def _allocated_mib(path: Path) -> float:
    # st_size would count the value log Badger preallocates (2 GiB, nearly all holes).
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


async def measure(limit: str, infra: CommonSettings, timeout_s: float, interval_s: float) -> Result:
    """Start a private Jaeger at ``limit``, sample it until it caught up or ``timeout_s``."""
    bootstrap = infra.kafka_bootstrap_servers
    records, ends = await _backlog(bootstrap)
    with tempfile.TemporaryDirectory(prefix="genwire-jaeger-memory-") as tmp:
        settings = CommonSettings(home=Path(tmp), jaeger_memory_limit=limit)
        paths = StackPaths.from_settings(settings)
        group = f"bench-jaeger-memory-{uuid.uuid4().hex[:8]}"
        jaeger = Jaeger.beside(infra, settings, group=group, initial_offset="earliest")
        catalog = {"jaeger": jaeger}
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        peak_rss = end_rss = 0.0
        peak_heap: float | None = None
        caught_up: float | None = None
        try:
            t0 = time.monotonic()
            await asyncio.to_thread(
                ensure_up, ["jaeger"], settings=settings, catalog=catalog, model=False
            )
            pid = child_pid("jaeger", settings)
            if pid is None:
                raise RuntimeError("the private Jaeger did not start")
            proc = psutil.Process(pid)
            metrics = f"http://127.0.0.1:{jaeger.ports()['metrics']}/metrics"
            async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
                while time.monotonic() - t0 < timeout_s:
                    end_rss = proc.memory_info().rss / 2**20
                    peak_rss = max(peak_rss, end_rss)
                    try:
                        match = HEAP.search((await http.get(metrics)).text)
                        if match:
                            heap = float(match.group(1)) / 2**20
                            peak_heap = max(peak_heap or 0.0, heap)
                    except httpx.HTTPError:
                        pass
                    done = await _committed(admin, group)
                    if all(done.get(p, -1) >= end for p, end in ends.items()):
                        caught_up = time.monotonic() - t0
                        break
                    await asyncio.sleep(interval_s)
        finally:
            await admin.close()
            await asyncio.to_thread(down, settings=settings, catalog=catalog)
            await _forget_group(bootstrap, group, infra)
        store = _allocated_mib(paths.data / "jaeger")  # stopped: its memtables are flushed
    return Result(limit, records, caught_up, peak_rss, end_rss, peak_heap, store)


def render(results: list[Result]) -> str:
    """The table the docs quote; "caught up" counts from the start command, Jaeger's start
    included."""
    lines = [
        "| GOMEMLIMIT | records | caught up | peak RSS | RSS at end | peak Go heap | Badger |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        took = f"{r.caught_up_s:.1f} s" if r.caught_up_s is not None else "not in time"
        heap = f"{r.peak_heap_mib:,.0f} MiB" if r.peak_heap_mib is not None else "not read"
        lines.append(
            f"| {r.limit} | {r.records:,} | {took} | {r.peak_rss_mib:,.0f} MiB | "
            f"{r.end_rss_mib:,.0f} MiB | {heap} | {r.store_mib:,.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genwire_bench.jaeger_memory",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--limits",
        default="off,1GiB,512MiB",
        help="GOMEMLIMIT values, one private Jaeger each, in order (default off,1GiB,512MiB)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per Jaeger (default 600)"
    )
    parser.add_argument(
        "--interval", type=float, default=0.25, help="seconds between samples (default 0.25)"
    )
    args = parser.parse_args(argv)
    infra = CommonSettings()
    if infra.kafka_security_protocol != "PLAINTEXT":
        parser.error(
            "a plaintext stack only: the private Jaeger holds no secure stack's credentials"
        )
    limits = [x.strip() for x in args.limits.split(",") if x.strip()]
    for limit in limits:  # all of them before the first Jaeger starts
        try:
            CommonSettings(jaeger_memory_limit=limit)
        except ValueError as exc:
            parser.error(f"--limits: {limit!r} is not a GOMEMLIMIT value: {exc}")
    results = []
    for limit in limits:
        result = asyncio.run(measure(limit, infra, args.timeout, args.interval))
        print(render([result]).splitlines()[-1], flush=True)
        results.append(result)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
