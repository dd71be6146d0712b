"""``python -m genwire_bench.footprint``: what each request leaves behind, and what a sustained
rate needs in disk and memory.

Runs ``genwire bench`` for each target on the running native stack and reads what grew: the
Kafka broker's log segments per topic (the first broker's log directory; every broker holds a
copy at replication 3), Redis's ``used_memory``, and, with ``--flush-jaeger``, Jaeger's Badger
store (restarted before and after the run, so its in-memory table is on disk both times; its
allocated size, which is what the volume holds). Then, per request/s sustained for the longest
retention, it prints what each holds in the steady state: each topic's bytes × its retention
(``genwire.topics.TOPIC_SPECS``), Redis's × ``--result-ttl``, Jaeger's × its span TTL
(``GENWIRE_JAEGER_SPAN_TTL``).

Needs the native stack (``make up``); it reads its data directory, so not compose's or a
cluster's. Everything else on the stack writes too (heartbeats, the monitor): run it idle.
Redis's figure adds back what keys expiring during the run held, at the mean key's size.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genwire_stack import down, ensure_up
from genwire_stack.paths import StackPaths
from redis import Redis

from genwire import gosyntax
from genwire.settings import CommonSettings
from genwire.topics import TOPIC_SPECS, Topic
from genwire_bench.args import positive_float, positive_int

DAY_S = 86_400


PARTITION_DIR = re.compile(r"^(?P<topic>.+)-(?P<partition>[0-9]+)$")
"""A partition's log directory (not one Kafka is deleting, ``…-N.<id>-delete``, or a stray)."""

LOG_DIRS = ("kafka", "kafka-1", "kafka-secure", "kafka-1-secure")
"""Where the native stack's (first) broker keeps its logs, by layout."""


def live_log_dir(data: Path) -> Path | None:
    """The log directory written last: a layout's stale one (``kafka`` after ``--brokers 3``)
    stays behind."""
    found = []
    for name in LOG_DIRS:
        if (data / name / "meta.properties").is_file():
            stats = (_stat(f) for p in _partitions(data / name) for f in _segments(p))
            newest = max((s.st_mtime for s in stats if s is not None), default=0.0)
            found.append((newest, data / name))
    return max(found)[1] if found else None


def _partitions(logs: Path) -> list[Path]:
    """The partition directories in ``logs``."""
    return [p for p in logs.iterdir() if PARTITION_DIR.match(p.name)]


def _segments(partition: Path) -> list[Path]:
    """A partition's log segments (none once Kafka has deleted it: a deleted topic's partition
    is renamed, then removed, at any time)."""
    try:
        return list(partition.glob("*.log"))
    except FileNotFoundError:
        return []


def segment_sizes(logs: Path) -> dict[Path, int]:
    """The size of every log segment of every partition in ``logs`` (a partition or segment
    that Kafka deletes while this reads, a deleted topic's or one retention removed, is left
    out)."""
    out: dict[Path, int] = {}
    for partition in _partitions(logs):
        for segment in _segments(partition):
            stat = _stat(segment)
            if stat is not None:
                out[segment] = stat.st_size
    return out


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s stat, or None when it is gone (Kafka deletes segments and whole partitions
    of deleted topics at any time)."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def topic_growth(before: dict[Path, int], after: dict[Path, int]) -> dict[str, int]:
    """Bytes appended to each topic between two readings: segments that grew or are new
    (one that retention or compaction deleted meanwhile is not counted as shrinking)."""
    out: collections.Counter[str] = collections.Counter()
    for segment, size in after.items():
        match = PARTITION_DIR.match(segment.parent.name)
        if match is not None:
            out[match["topic"]] += max(0, size - before.get(segment, 0))
    return dict(out)


def allocated_bytes(path: Path) -> int:
    """Disk blocks a directory's files hold (Badger's files are sparse: their length is not)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class Footprint:
    """Bytes one request left, per place."""

    target: str
    requests: int
    topics: dict[str, float]
    redis: float
    jaeger: float | None
    """None: not measured (``--flush-jaeger`` not given)."""


def steady_state(fp: Footprint, result_ttl_s: float, span_ttl_s: float) -> dict[str, float]:
    """Bytes held per request/s sustained: each place's bytes per request × how long it keeps
    them (a topic its retention, Redis the results' TTL, Jaeger the spans' TTL)."""
    retention = {s.name: s.retention_ms / 1000 for s in TOPIC_SPECS}
    held = {
        f"Kafka {t}": b * retention[t] for t, b in fp.topics.items() if t in retention and b > 0
    }
    held["Redis (memory)"] = fp.redis * result_ttl_s
    if fp.jaeger is not None:
        held["Jaeger (Badger)"] = fp.jaeger * span_ttl_s
    return held


def measure(
    target: str,
    n: int,
    settle_s: float,
    paths: StackPaths,
    redis: Redis[bytes],
    flush_jaeger: Callable[[], None] | None,
) -> Footprint:
    """Run ``n`` requests of ``target`` and read what grew."""
    if flush_jaeger is not None:
        flush_jaeger()
    logs = live_log_dir(paths.data)
    if logs is None:
        raise RuntimeError(f"no Kafka log directory under {paths.data}: is the native stack up?")
    jaeger0 = allocated_bytes(paths.data / "jaeger") if flush_jaeger else 0
    segments0 = segment_sizes(logs)
    memory0, dataset0, expired0 = _redis_now(redis)
    per_key = dataset0 / max(1, int(redis.dbsize()))
    bench = ["bench", "--targets", target, "-c", "8", "-n", str(n), "--warmup", "0"]
    run = subprocess.run(
        [sys.executable, "-m", "genwire_cli", *bench, "--no-traces", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"genwire bench failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    time.sleep(settle_s)  # the stages' and Jaeger's last records
    topics = topic_growth(segments0, segment_sizes(logs))
    if not topics.get(Topic.REQUESTS):
        raise RuntimeError(f"nothing reached {Topic.REQUESTS} in {logs}: another broker's logs?")
    memory1, _, expired1 = _redis_now(redis)
    jaeger = None
    if flush_jaeger is not None:
        flush_jaeger()
        jaeger = (allocated_bytes(paths.data / "jaeger") - jaeger0) / n
    return Footprint(
        target=target,
        requests=n,
        topics={t: b / n for t, b in topics.items()},
        # Keys of earlier requests expire meanwhile (a day old, on a stack that ran then): what
        # they held, at the mean key's share of the data set, is added back.
        redis=(memory1 - memory0 + (expired1 - expired0) * per_key) / n,
        jaeger=jaeger,
    )


def _redis_now(redis: Redis[bytes]) -> tuple[int, int, int]:
    """Redis's ``used_memory``, the part of it its keys hold (``used_memory_dataset``) and the
    count of keys it has expired so far: one reading of each section."""
    memory = redis.info("memory")
    expired = int(redis.info("stats")["expired_keys"])
    return int(memory["used_memory"]), int(memory["used_memory_dataset"]), expired


def report(fp: Footprint, result_ttl_s: float, span_ttl_s: float) -> list[str]:
    """The per-request bytes and the steady state per request/s, as lines."""
    out = [f"{fp.target}: {fp.requests:,} requests, bytes per request"]
    for topic, b in sorted(fp.topics.items(), key=lambda kv: -kv[1]):
        if b >= 1:
            out.append(f"  Kafka {topic:<22} {b:>8,.0f}")
    out.append(f"  {'Redis (used_memory)':<28} {fp.redis:>8,.0f}")
    jaeger = "not measured (--flush-jaeger)" if fp.jaeger is None else f"{fp.jaeger:>8,.0f}"
    out.append(f"  {'Jaeger (Badger, allocated)':<28} {jaeger}")
    held = steady_state(fp, result_ttl_s, span_ttl_s)
    kafka = sum(v for k, v in held.items() if k.startswith("Kafka"))
    out.append(
        f"  held per request/s sustained: Kafka {kafka / 2**30:,.2f} GiB per broker (retention "
        "alone: a segment stays until its newest record expires, docs/kubernetes.md, Sizing)"
    )
    topics = [(k, v) for k, v in held.items() if k.startswith("Kafka")]
    for place, b in sorted(topics, key=lambda kv: -kv[1])[:4]:  # the largest
        out.append(f"    {place:<30} {b / 2**30:>8,.2f} GiB")
    for place in ("Redis (memory)", "Jaeger (Badger)"):
        if place in held:
            out.append(f"  {place}: {held[place] / 2**30:,.3f} GiB per request/s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genwire_bench.footprint", description=__doc__)
    parser.add_argument("--targets", default="kafka,grpc", help="comma list (default kafka,grpc)")
    parser.add_argument("-n", "--requests", type=positive_int, default=2000, help="per target")
    parser.add_argument(
        "--result-ttl", type=positive_int, default=DAY_S, help="postprocess result_ttl_s (s)"
    )
    parser.add_argument(
        "--settle",
        type=positive_float,
        default=15.0,
        help="seconds after each run for the last records and spans (Jaeger's included)",
    )
    parser.add_argument(
        "--flush-jaeger",
        action="store_true",
        help="restart Jaeger before and after each run to measure its store",
    )
    args = parser.parse_args(argv)
    settings = CommonSettings()
    paths = StackPaths.from_settings(settings)
    if live_log_dir(paths.data) is None:
        parser.error(f"no Kafka log directory under {paths.data}: is the native stack up?")
    span_ttl_s = gosyntax.duration_ns(settings.jaeger_span_ttl) / 1e9

    def flush() -> None:
        down(["jaeger"], settings=settings)
        ensure_up(["jaeger"], settings=settings, model=False)

    redis: Redis[bytes] = Redis.from_url(settings.redis_url)
    try:
        for target in (t.strip() for t in args.targets.split(",") if t.strip()):
            fp = measure(
                target,
                args.requests,
                args.settle,
                paths,
                redis,
                flush if args.flush_jaeger else None,
            )
            print("\n".join(report(fp, args.result_ttl, span_ttl_s)), flush=True)
    finally:
        redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
