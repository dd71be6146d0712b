"""``python -m genwire_bench.redis_persistence``: what keeping requests durable costs Redis.

Every request leaves up to four keys in Redis for the result's TTL (``genwire.results``: its
result, its id's claim, its route, its caller's key name). How Redis keeps them durable decides
how often each is written to disk again while it lives: an RDB snapshot (``save <s> <n>``)
writes every key each interval, so a key is written TTL / interval times; the append-only file
writes each command once, and its rewrite (at ``auto-aof-rewrite-percentage`` growth) writes
the live keys again only as often as the file doubles.

This starts a private ``redis-server`` (own port and directory, append-only like the stack's,
no snapshot schedule, no automatic rewrite), stores ``--requests`` requests' keys with the
values the services write (a 32-token result, a claim's fingerprint, a route, an owner), then
times ``BGSAVE`` and ``BGREWRITEAOF``: the child's CPU (read from the server's reaped-children
times), the fork (``latest_fork_usec``: the server answers nobody meanwhile) and the file. It
prints the cost per request of one pass and over a request's life under each schedule, which
does not depend on the request rate (more requests per second: more keys, and each pass
longer in proportion). No stack needed; the stack's Redis is not touched.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from genwire_preprocess.routing import Route
from genwire_stack.health import free_port
from redis import Redis

from genwire.events import GenerationResult, Timings, Usage
from genwire.request import GenerationRequest, fingerprint
from genwire.results import claim_key, owner_key, result_key, route_key
from genwire_bench.args import positive_float, positive_int

KEYS = ("result", "claim", "route", "owner")
"""What a request can leave: ``owner`` only with an API key; the rest on every request."""

BATCH = 2000
"""Requests per pipeline while storing."""


@dataclass(frozen=True)
class Pass:
    """One background write of the whole data set (a snapshot or a rewrite)."""

    cpu_s: float
    """The child's CPU, user and system."""
    wall_s: float
    fork_ms: float
    """The fork, during which the server answers no command."""
    file_bytes: int


@dataclass(frozen=True)
class Stored:
    """What storing the requests left in the server."""

    requests: int
    keys: int
    seconds: float
    memory_bytes: int
    """``used_memory`` added."""
    aof_bytes: int
    """Append-only file written while storing."""


def snapshots_per_life(ttl_s: float, interval_s: float) -> float:
    """How often a key is written by snapshots every ``interval_s`` while it lives."""
    return ttl_s / interval_s


def rewrites_per_life(aof_per_request: float, base_per_request: float, growth_pct: float) -> float:
    """How often a key is written by AOF rewrites while it lives, in the steady state.

    With N requests live, the rewritten file's base is ``base_per_request`` × N; the next rewrite
    comes when the commands appended since reach ``growth_pct`` % of it, after ``base ×
    growth_pct / 100 / aof_per_request`` more requests, which at any rate is that fraction of a
    TTL (N is the rate × the TTL): a key lives through the inverse of it.
    """
    return aof_per_request / (base_per_request * growth_pct / 100.0)


def sample_values(request_id: str) -> dict[str, str]:
    """The values the services store for one request (what a 32-token completion leaves)."""
    request = GenerationRequest(request_id=request_id, prompt="Tell me about Kafka.", max_tokens=32)
    result = GenerationResult(
        request_id=request_id,
        model="genwire-gpt",
        model_version="1",
        text=" the broker and its partitions, a log of records kept" * 3,
        finish_reason="length",
        usage=Usage(prompt_tokens=17, completion_tokens=32, total_tokens=49),
        timings=Timings(
            received=1796275278831.8418,
            prepared=1796275278832.772,
            inference_start=1796275278834.198,
            first_token=1796275278855.009,
            inference_end=1796275278964.1384,
            completed=1796275278965.5454,
            triton_queue_ms=7.9048380851745605,
            triton_compute_ms=117.48139953613281,
        ),
        arm="default",
    )
    return {
        # As postprocess's put_first, preprocess's claim_routed and the gateway's owner record.
        "result": result.model_dump_json(exclude_none=True),
        "claim": fingerprint(request),
        "route": Route(model="genwire-gpt", version="1", arm="default").encode(),
        "owner": "bench",
    }


def store(client: Redis[bytes], requests: int, keys: tuple[str, ...], ttl_s: int) -> float:
    """Store ``requests`` requests' ``keys`` with ``ttl_s``; returns the seconds it took."""
    key_of: dict[str, Callable[[str], str]] = {
        "result": result_key,
        "claim": claim_key,
        "route": route_key,
        "owner": owner_key,
    }
    placeholder = "x" * 32
    template = sample_values(placeholder)
    started = time.monotonic()
    for first in range(0, requests, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(first + BATCH, requests)):
            rid = f"{n:032x}"  # as long as the gateway's uuid4().hex ids
            for name in keys:
                value = template[name]
                if name == "result":  # the only value that names its request
                    value = value.replace(placeholder, rid)
                pipe.set(key_of[name](rid), value, ex=ttl_s)
        pipe.execute()
    return time.monotonic() - started


def _info(client: Redis[bytes], section: str) -> dict[str, object]:
    return dict(client.info(section))


def _children_cpu(server: psutil.Process) -> float:
    times = server.cpu_times()
    return times.children_user + times.children_system


def background_pass(
    client: Redis[bytes], server: psutil.Process, kind: str, timeout_s: float = 600.0
) -> Pass:
    """Run one ``BGSAVE`` (``kind`` "rdb") or ``BGREWRITEAOF`` ("aof") and measure it.

    The child's CPU is the server's reaped-children time, read once the server has reaped it
    (its ``…_in_progress`` is 0 only after that), so it is exact, not sampled.
    """
    busy, path_of = (
        ("rdb_bgsave_in_progress", _rdb_file)
        if kind == "rdb"
        else ("aof_rewrite_in_progress", _aof_base)
    )
    before = _children_cpu(server)
    started = time.monotonic()
    if kind == "rdb":
        client.bgsave()
    else:
        client.bgrewriteaof()
    deadline = started + timeout_s
    while True:
        persistence = _info(client, "persistence")
        if not persistence[busy] and not persistence.get("aof_rewrite_scheduled"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kind} pass still running after {timeout_s:.0f} s")
        time.sleep(0.02)
    wall = time.monotonic() - started
    status = persistence["rdb_last_bgsave_status" if kind == "rdb" else "aof_last_bgrewrite_status"]
    if status != "ok":
        raise RuntimeError(f"the {kind} pass failed: {status}")
    fork_us = float(str(_info(client, "stats")["latest_fork_usec"]))
    directory = Path(str(client.config_get("dir")["dir"]))
    return Pass(
        cpu_s=_children_cpu(server) - before,
        wall_s=wall,
        fork_ms=fork_us / 1000.0,
        file_bytes=path_of(directory).stat().st_size,
    )


def _rdb_file(directory: Path) -> Path:
    return directory / "dump.rdb"


def _aof_base(directory: Path) -> Path:
    folder = directory / "appendonlydir"
    bases = sorted(folder.glob("*.base.rdb"), key=lambda p: p.stat().st_mtime)
    if not bases:
        raise FileNotFoundError(f"no AOF base file in {folder}")
    return bases[-1]


def redis_server_binary() -> str:
    """The ``redis-server`` the stack runs (Debian's package)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise SystemExit("redis-server not found: apt-get install redis-server (or `make up`)")
    return found


@contextmanager
def private_redis(binary: str, directory: Path) -> Iterator[tuple[Redis[bytes], psutil.Process]]:
    """A redis-server of its own: durable like the stack's (append-only, fsync every second)
    but with no snapshot schedule and no automatic rewrite, so only the passes asked for run."""
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
    argv += ["--auto-aof-rewrite-percentage", "0", "--logfile", str(directory / "redis.log")]
    errors = (directory / "stderr").open("wb")  # a bad argument is told here, not in the log
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
    client: Redis[bytes] = Redis(host="127.0.0.1", port=port, socket_timeout=60)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    # Both in a directory about to be removed: their tails go in the message.
                    told = [directory / "stderr", directory / "redis.log"]
                    tail = "".join(
                        p.read_text(errors="replace")[-2000:] for p in told if p.exists()
                    )
                    raise RuntimeError(f"redis-server did not start:\n{tail}") from exc
                time.sleep(0.05)
        yield client, psutil.Process(proc.pid)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        errors.close()


def _keys(text: str) -> tuple[str, ...]:
    names = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in names if k not in KEYS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"keys are a comma list of {', '.join(KEYS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genwire_bench.redis_persistence", description=__doc__
    )
    parser.add_argument(
        "-n", "--requests", type=positive_int, default=300_000, help="requests stored"
    )
    parser.add_argument(
        "--keys", type=_keys, default=KEYS, help="each request's keys (default: all four)"
    )
    parser.add_argument(
        "--ttl", type=positive_int, default=86_400, help="their TTL, s (postprocess result_ttl_s)"
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=300.0,
        help="the snapshot interval to price, s (`save 300 10` snapshots every 300 s under load)",
    )
    parser.add_argument(
        "--growth",
        type=positive_float,
        default=100.0,
        help="auto-aof-rewrite-percentage to price (Redis's default 100)",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=80.0,
        help="requests/s for the projected data set and fork (the cost per request is the same "
        "at any rate)",
    )
    parser.add_argument("--repeat", type=positive_int, default=3, help="passes of each kind")
    args = parser.parse_args(argv)
    binary = redis_server_binary()
    with (
        tempfile.TemporaryDirectory(prefix="genwire-redis-persistence-") as tmp,
        private_redis(binary, Path(tmp)) as (client, server),
    ):
        version = _info(client, "server")["redis_version"]
        memory0 = int(str(_info(client, "memory")["used_memory"]))
        aof0 = int(str(_info(client, "persistence")["aof_current_size"]))
        seconds = store(client, args.requests, args.keys, args.ttl)
        stored = Stored(
            requests=args.requests,
            keys=int(client.dbsize()),
            seconds=seconds,
            memory_bytes=int(str(_info(client, "memory")["used_memory"])) - memory0,
            aof_bytes=int(str(_info(client, "persistence")["aof_current_size"])) - aof0,
        )
        rdb = [background_pass(client, server, "rdb") for _ in range(args.repeat)]
        aof = [background_pass(client, server, "aof") for _ in range(args.repeat)]
    report(args, str(version), stored, rdb, aof)
    return 0


def report(
    args: argparse.Namespace, version: str, stored: Stored, rdb: list[Pass], aof: list[Pass]
) -> None:
    """Print the figures and what they cost per request over its life."""
    n = stored.requests
    print(
        f"Redis {version}, private server; {n:,} requests stored ({', '.join(args.keys)}: "
        f"{stored.keys:,} keys, TTL {args.ttl:,} s) in {stored.seconds:.1f} s"
    )
    per_request_memory = stored.memory_bytes / n
    print(
        f"memory: {per_request_memory:,.0f} B per request "
        f"(used_memory +{_mib(stored.memory_bytes)})"
    )
    rdb_cpu = statistics.median(p.cpu_s for p in rdb)
    aof_cpu = statistics.median(p.cpu_s for p in aof)
    base = aof[-1].file_bytes
    print(
        f"append-only file: {stored.aof_bytes / n:,.0f} B appended per request; "
        f"rewritten, its base is {base / n:,.0f} B per request"
    )
    print(
        f"{'median of ' + str(len(rdb)):<24} {'child CPU':>10} {'per request':>12} "
        f"{'fork (Redis blocked)':>21} {'file':>10}"
    )
    kinds = (("RDB snapshot (BGSAVE)", rdb, rdb_cpu), ("AOF rewrite", aof, aof_cpu))
    for name, passes, cpu in kinds:
        fork = statistics.median(p.fork_ms for p in passes)
        print(
            f"{name:<24} {cpu:>8.2f} s {cpu / n * 1e6:>9.1f} µs {fork:>18.1f} ms "
            f"{_mib(passes[-1].file_bytes):>10}"
        )
    snaps = snapshots_per_life(args.ttl, args.interval)
    rewrites = rewrites_per_life(stored.aof_bytes / n, base / n, args.growth)
    print(f"over a request's life (TTL {args.ttl:,} s), at any rate sustained that long:")
    print(
        f"  RDB snapshots every {args.interval:g} s: {snaps:,.0f} per life, "
        f"{snaps * rdb_cpu / n * 1e3:.3f} core-ms per request"
    )
    print(
        f"  AOF rewrites at {args.growth:g} % growth: {rewrites:.1f} per life, "
        f"{rewrites * aof_cpu / n * 1e3:.3f} core-ms per request (a lower bound: the services' "
        "scripts, logged in MULTI/EXEC, and expiry's DELs append about a third more than "
        "these plain SETs)"
    )
    live = args.rate * args.ttl
    print(
        f"at {args.rate:g} requests/s sustained for a TTL: {live:,.0f} requests live, "
        f"{live * per_request_memory / 2**30:.1f} GiB; a snapshot every {args.interval:g} s, "
        f"a rewrite every {args.ttl / rewrites / 3600:.1f} h, each pass's CPU {live / n:,.0f}x "
        "this run's (the fork grows less than in proportion)"
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
