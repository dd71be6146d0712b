"""Measures the per-key limits on a running stack (docs/security.md, *Measured*).

``accuracy``: a fresh key with a requests-per-minute (or tokens-per-minute) limit, hammered by
N concurrent clients spread over the given gateways; reports the most requests (tokens)
admitted in any 60 s window, against the limit.

``flood``: one key floods (far over its limit, from a process of its own) while another key
sends a steady trickle; reports the trickle's latency without and with the flood.

    python -m genwire_bench.limits accuracy --gateway http://127.0.0.1:8080 \\
        --gateway http://127.0.0.1:8081 --clients 8 --rpm 120 --duration 150
    python -m genwire_bench.limits flood --duration 60

Both create their keys in Redis (``GENWIRE_REDIS_URL``) and revoke them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from genwire.apikeys import KeyStore
from genwire.redisconn import connect
from genwire.settings import CommonSettings

WINDOW_S = 60.0


@dataclass
class Sent:
    """One request: when it was sent, its status, its tokens (200 only), its latency."""

    at: float
    status: int
    tokens: int = 0
    latency_s: float = 0.0


@dataclass
class Accuracy:
    limit: int
    kind: str
    clients: int
    gateways: int
    duration_s: float
    sent: int
    admitted: int
    max_in_window: int
    ratio: float
    statuses: dict[str, int] = field(default_factory=dict)


def max_in_window(points: list[tuple[float, int]], window_s: float = WINDOW_S) -> int:
    """The largest sum of weights of points within any ``window_s`` span (points sorted)."""
    times = [t for t, _ in points]
    prefix = [0]
    for _, w in points:
        prefix.append(prefix[-1] + w)
    best = 0
    for j, (t, _) in enumerate(points):
        i = bisect_left(times, t - window_s + 1e-9)
        best = max(best, prefix[j + 1] - prefix[i])
    return best


async def _one(
    http: httpx.AsyncClient, url: str, key: str, max_tokens: int, started: float
) -> Sent:
    at = time.monotonic()
    try:
        r = await http.post(
            f"{url}/v1/completions",
            json={"prompt": "Once upon a time", "max_tokens": max_tokens},
            headers={"authorization": f"Bearer {key}"},
        )
    except httpx.HTTPError:
        return Sent(at - started, 0)
    tokens = 0
    if r.status_code == 200:
        tokens = int(r.json().get("usage", {}).get("total_tokens", 0))
    return Sent(at - started, r.status_code, tokens, time.monotonic() - at)


async def accuracy(args: argparse.Namespace, store: KeyStore) -> Accuracy:
    kind = "tpm" if args.tpm else "rpm"
    limit = args.tpm or args.rpm
    key, record = await store.create(
        f"bench-limits-{uuid.uuid4().hex[:8]}",
        ["generate"],
        rpm=args.rpm if kind == "rpm" else None,
        tpm=args.tpm or None,
    )
    sent: list[Sent] = []
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=120, trust_env=False) as http:

            async def client(i: int) -> None:
                url = args.gateway[i % len(args.gateway)]
                while time.monotonic() - started < args.duration:
                    s = await _one(http, url, key, args.max_tokens, started)
                    sent.append(s)
                    if s.status != 200:
                        await asyncio.sleep(args.pause_ms / 1000.0)

            await asyncio.gather(*(client(i) for i in range(args.clients)))
    finally:
        await store.revoke(record.id)
    admitted = sorted((s.at, s.tokens if kind == "tpm" else 1) for s in sent if s.status == 200)
    most = max_in_window(admitted)
    statuses: dict[str, int] = {}
    for s in sent:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return Accuracy(
        limit=limit,
        kind=kind,
        clients=args.clients,
        gateways=len(args.gateway),
        duration_s=args.duration,
        sent=len(sent),
        admitted=len(admitted),
        max_in_window=most,
        ratio=round(most / limit, 4),
        statuses=statuses,
    )


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"n": len(values)}
    q = statistics.quantiles(values, n=100)
    return {
        "n": len(values),
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> float:
    return sum(process_cpu_s(p) for p in pids)


async def _flood_clients(
    http: httpx.AsyncClient,
    gateways: list[str],
    key: str,
    clients: int,
    max_tokens: int,
    until: float,
) -> list[Sent]:
    """``clients`` loops sending as fast as the gateways answer until ``until`` (monotonic)."""
    sent: list[Sent] = []
    started = time.monotonic()

    async def flooder(i: int) -> None:
        url = gateways[i % len(gateways)]
        while time.monotonic() < until:
            sent.append(await _one(http, url, key, max_tokens, started))

    await asyncio.gather(*(flooder(i) for i in range(clients)))
    return sent


def _flood_worker(args: argparse.Namespace) -> int:
    """The flood in a process of its own (``_flood-worker``): prints what it sent as JSON.

    Its own process, so that the trickle's latency measures the gateways, not a client event
    loop shared with 16 flooders; with ``--flood-nice`` it also yields the cores to the gateways
    and the trickle, which is what a flood from another host does.
    """
    if args.flood_nice:
        os.nice(args.flood_nice)
    key = os.environ.pop("GENWIRE_BENCH_FLOOD_KEY")

    async def run() -> list[Sent]:
        async with httpx.AsyncClient(timeout=120, trust_env=False) as http:
            until = time.monotonic() + args.duration
            return await _flood_clients(
                http, args.gateway, key, args.flood_clients, args.max_tokens, until
            )

    sent = asyncio.run(run())
    print(json.dumps([[s.status, s.latency_s] for s in sent]))
    return 0


async def _phase(
    http: httpx.AsyncClient, args: argparse.Namespace, calm: str, noisy: str, flooding: bool
) -> dict[str, Any]:
    """Half the duration of the calm trickle, with or without the flood beside it."""
    started = time.monotonic()
    stop = started + args.duration / 2
    calm_sent: list[Sent] = []
    flood_sent: list[Sent] = []

    async def trickle() -> None:
        i = 0
        while time.monotonic() < stop:
            url = args.gateway[i % len(args.gateway)]
            calm_sent.append(await _one(http, url, calm, args.max_tokens, started))
            i += 1
            await asyncio.sleep(1.0 / args.calm_rate)

    async def flood_process() -> None:
        argv = [sys.executable, "-m", "genwire_bench.limits", "_flood-worker"]
        argv += [f"--gateway={g}" for g in args.gateway]
        argv += [
            f"--flood-clients={args.flood_clients}",
            f"--max-tokens={args.max_tokens}",
            f"--duration={stop - time.monotonic()}",
            f"--flood-nice={args.flood_nice}",
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "GENWIRE_BENCH_FLOOD_KEY": noisy},
        )
        out, _ = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"the flood process failed (exit {proc.returncode})")
        flood_sent.extend(Sent(0.0, status, 0, latency) for status, latency in json.loads(out))

    async def flood_here() -> None:
        flood_sent.extend(
            await _flood_clients(
                http, args.gateway, noisy, args.flood_clients, args.max_tokens, stop
            )
        )

    work = [trickle()]
    if flooding:
        work.append(flood_here() if args.flood_in_process else flood_process())
    cpu_before = _cpu(args.gateway_pid)
    await asyncio.gather(*work)
    cpu_s = _cpu(args.gateway_pid) - cpu_before
    return {
        "gateway_cpu_s": round(cpu_s, 3),
        "calm": _quantiles([s.latency_s for s in calm_sent if s.status == 200]),
        "calm_failed": sum(s.status != 200 for s in calm_sent),
        "flood_sent": len(flood_sent),
        "flood_refused": sum(s.status == 429 for s in flood_sent),
        "flood_refusal": _quantiles([s.latency_s for s in flood_sent if s.status == 429]),
    }


async def flood(args: argparse.Namespace, store: KeyStore) -> dict[str, Any]:
    noisy, noisy_record = await store.create(
        f"bench-flood-{uuid.uuid4().hex[:8]}", ["generate"], rpm=args.flood_rpm
    )
    calm, calm_record = await store.create(f"bench-calm-{uuid.uuid4().hex[:8]}", ["generate"])
    try:
        async with httpx.AsyncClient(timeout=120, trust_env=False) as http:
            return {
                "baseline": await _phase(http, args, calm, noisy, flooding=False),
                "flood": await _phase(http, args, calm, noisy, flooding=True),
            }
    finally:
        await store.revoke(noisy_record.id)
        await store.revoke(calm_record.id)


async def _main(args: argparse.Namespace) -> int:
    redis = connect(args.redis_url or CommonSettings().redis_url)
    try:
        store = KeyStore(redis)
        if args.mode == "accuracy":
            result = asdict(await accuracy(args, store))
        else:
            result = await flood(args, store)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genwire_bench.limits", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("mode", choices=("accuracy", "flood", "_flood-worker"))
    parser.add_argument(
        "--gateway",
        action="append",
        default=[],
        help="gateway HTTP base URL (repeatable; default http://127.0.0.1:8080)",
    )
    parser.add_argument("--clients", type=int, default=8, help="accuracy: concurrent clients")
    parser.add_argument("--rpm", type=int, default=120, help="accuracy: the key's rpm limit")
    parser.add_argument(
        "--tpm", type=int, default=0, help="accuracy: measure a tpm limit instead of rpm"
    )
    parser.add_argument("--duration", type=float, default=150.0, help="seconds in all")
    parser.add_argument("--max-tokens", type=int, default=2, help="max_tokens per request")
    parser.add_argument(
        "--pause-ms", type=float, default=10.0, help="accuracy: a client's pause after a 429"
    )
    parser.add_argument("--flood-rpm", type=int, default=60, help="flood: the noisy key's rpm")
    parser.add_argument("--flood-clients", type=int, default=16, help="flood: noisy clients")
    parser.add_argument("--calm-rate", type=float, default=2.0, help="flood: calm requests/s")
    parser.add_argument(
        "--flood-nice",
        type=int,
        default=0,
        help="flood: niceness of the flooding process (e.g. 19 on a machine shared with the "
        "gateways, to stand in for a flood from another host)",
    )
    parser.add_argument(
        "--flood-in-process",
        action="store_true",
        help="flood: run the flood in the measuring process (its event loop then delays the "
        "trickle too)",
    )
    parser.add_argument(
        "--gateway-pid",
        type=int,
        action="append",
        default=[],
        help="flood: a gateway process on this machine whose CPU time to report (repeatable)",
    )
    parser.add_argument("--redis-url", default=None, help="default: GENWIRE_REDIS_URL")
    args = parser.parse_args(argv)
    args.gateway = [g.rstrip("/") for g in args.gateway] or ["http://127.0.0.1:8080"]
    if args.mode == "_flood-worker":
        return _flood_worker(args)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
