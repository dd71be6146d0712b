"""Detection times with real load through the running stack (``genwire monitor-bench --live``).

The simulated-clock table (``detection.py``) is the engine fed synthetic spans; this is the
whole monitor service fed the stack's real spans: requests go through the gateway, every stage
exports its spans to ``otlp_spans`` as in production, and a monitor app started here (its own
consumer group from the latest offset, windows scaled, publishing to a private alerts topic so
nothing reaches ``genwire.alerts``) judges them.

Per bad share ``p``: a fresh monitor per objective ``o`` (the objectives change only the
monitor's configuration, so they share the traffic), then ``warm`` production seconds of good
traffic (by default the longest page rule's long window, 6 h, so the page must outweigh
a *full* long window), then a share ``p`` of bad requests until ``latency:e2e:page`` fires (or
``timeout_factor`` × the Workbook's time has passed). A bad request is a long generation
(``--bad-tokens``, with ``min_tokens`` so that it cannot stop early), a good one short; the SLO's
threshold sits between them (checked by a calibration round first). Times are printed in
production time (real seconds / scale) beside ``f (1 - o) L / p``. The false alarms of the warm
phase are counted. Other traffic on the stack counts too: run it on a quiet machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    import uvicorn

from genwire_stack.health import free_port

from genwire.apikeys import auth_headers
from genwire.kafka.admin import delete_groups, delete_topics
from genwire.settings import CommonSettings
from genwire_bench.monitor.detection import workbook_s

GATEWAY = "http://127.0.0.1:8080"
PAGE = "latency:e2e:page"
FIXED_ALLOWANCE_S = 15 * 60.0
"""Production seconds added to every case's time limit (see ``one_case``)."""


@dataclass
class Load:
    """Requests through the gateway at ``rate`` per second, a share ``bad`` of them long."""

    rate: float
    good_tokens: int
    bad_tokens: int
    bad: float = 0.0
    sent: int = 0
    failed: int = 0

    def body(self, rng: random.Random) -> dict[str, object]:
        long = rng.random() < self.bad
        n = self.bad_tokens if long else self.good_tokens
        body: dict[str, object] = {"prompt": "Once upon a time", "max_tokens": n}
        if long:
            body["min_tokens"] = n
        return body

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event, seed: int) -> None:
        rng = random.Random(seed)
        tasks: set[asyncio.Task[None]] = set()

        async def one(body: dict[str, object]) -> None:
            try:
                r = await client.post("/v1/completions", json=body)
                self.failed += r.status_code != 200
            except httpx.HTTPError:
                self.failed += 1

        while not stop.is_set():
            started = time.monotonic()
            task = asyncio.create_task(one(self.body(rng)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            self.sent += 1
            await asyncio.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))
        if tasks:
            await asyncio.wait(tasks, timeout=30)


async def _latency_ms(client: httpx.AsyncClient, body: dict[str, object], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.monotonic()
        r = await client.post("/v1/completions", json=body)
        r.raise_for_status()
        times.append((time.monotonic() - t) * 1000)
    return statistics.median(times)


async def calibrate(good_tokens: int, bad_tokens: int) -> tuple[float, float]:
    """Median end-to-end ms of a good and of a bad request, as the caller sees them."""
    async with httpx.AsyncClient(base_url=GATEWAY, timeout=60, headers=auth_headers()) as c:
        good = await _latency_ms(c, {"prompt": "Once upon a time", "max_tokens": good_tokens}, 5)
        body = {"prompt": "Once upon a time", "max_tokens": bad_tokens, "min_tokens": bad_tokens}
        bad = await _latency_ms(c, body, 3)
    return good, bad


@dataclass
class Monitor:
    """One monitor app judging the shared load at one objective."""

    objective: float
    url: str
    server: uvicorn.Server
    serving: asyncio.Task[None]
    workbook: float | None
    alerts_topic: str
    group: str
    fired: float | None = None
    false_alarms: int = 0


async def _start_monitor(
    objective: float, bad: float, scale: float, threshold_ms: float
) -> Monitor:
    import uvicorn
    from genwire_monitor.app import create_app
    from genwire_monitor.config import LatencySLO, MonitorSettings

    from genwire.kafka import ensure_topics
    from genwire.topics import TopicSpec

    common = CommonSettings()
    tag = uuid.uuid4().hex[:8]
    alerts = f"bench.monitor.alerts.{tag}"
    await ensure_topics(common.kafka_bootstrap_servers, [TopicSpec(alerts, 1, 3_600_000)])
    cfg = MonitorSettings.model_validate(
        {
            "window_scale": scale,
            "trace_idle_s": 1.0,
            "min_events": 5,
            "slos": [
                LatencySLO(
                    name="e2e", stage="end_to_end", threshold_ms=threshold_ms, objective=objective
                )
            ],
            "watched_groups": {},
            "alert_state_topic": "",
            "config_topic": "",
            "feedback_topic": "",
            "alerts_topic": alerts,
            "group_id": f"bench-monitor-{tag}",
            "auto_offset_reset": "latest",
            "port": free_port(),
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg), host="127.0.0.1", port=cfg.port, log_config=None)
    )
    return Monitor(
        objective=objective,
        url=f"http://127.0.0.1:{cfg.port}",
        server=server,
        serving=asyncio.create_task(server.serve()),
        workbook=workbook_s(cfg.burn_rules, objective, bad),
        alerts_topic=alerts,
        group=cfg.group_id,
    )


async def one_case(
    objectives: tuple[float, ...],
    bad: float,
    *,
    scale: float,
    threshold_ms: float,
    load: Load,
    warm_s: float,
    timeout_factor: float,
) -> list[Monitor]:
    """One bad share judged by a fresh monitor per objective, all fed the same load.

    The objectives only change the monitor's configuration, not the traffic, so they share one
    warm phase and one incident: each monitor's ``fired`` is its time to page in production
    seconds (None: no page within ``timeout_factor`` × the Workbook's time), ``false_alarms``
    the page polls that found it firing while warming.
    """
    monitors = [await _start_monitor(o, bad, scale, threshold_ms) for o in objectives]
    stop = asyncio.Event()
    try:
        async with (
            httpx.AsyncClient(timeout=5) as mon,
            httpx.AsyncClient(base_url=GATEWAY, timeout=120, headers=auth_headers()) as gw,
        ):
            for m in monitors:
                for _ in range(300):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await mon.get(m.url + "/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)

            async def paging(m: Monitor) -> bool:
                status = (await mon.get(m.url + "/api/status")).json()
                return any(a["id"] == PAGE for a in status["active"])

            load.bad = 0.0
            driving = asyncio.create_task(load.run(gw, stop, seed=7))
            deadline = time.monotonic() + warm_s * scale
            while time.monotonic() < deadline:
                for m in monitors:
                    m.false_alarms += await paging(m)
                await asyncio.sleep(0.5)
            load.bad = bad
            began = time.monotonic()
            # The fixed real delays (trace completion, export batching, the bad request's own
            # duration: ~2 s) are ~2 production minutes at 1/60: a limit of a few Workbook
            # times alone would give up on the 0.999 rows before their page could arrive.
            limits = {
                id(m): ((m.workbook or warm_s) * timeout_factor + FIXED_ALLOWANCE_S) * scale
                for m in monitors
            }
            waiting = list(monitors)
            while waiting:
                elapsed = time.monotonic() - began
                for m in list(waiting):
                    if await paging(m):
                        m.fired = (time.monotonic() - began) / scale
                        waiting.remove(m)
                    elif elapsed >= limits[id(m)]:
                        waiting.remove(m)
                await asyncio.sleep(0.1)
            stop.set()
            await driving
            return monitors
    finally:
        stop.set()
        for m in monitors:
            m.server.should_exit = True
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(m.serving for m in monitors))
        finally:
            await _clean_up(monitors)


async def _clean_up(monitors: list[Monitor]) -> None:
    """Delete each monitor's own alerts topic and group; say what is left behind."""
    bootstrap = CommonSettings().kafka_bootstrap_servers
    try:
        await delete_topics(bootstrap, [m.alerts_topic for m in monitors])
    except Exception as exc:
        print(f"monitor-bench: alerts topics left on the broker: {exc!r}", file=sys.stderr)
    try:
        left = await delete_groups(bootstrap, [m.group for m in monitors])
    except Exception as exc:
        left = [f"{m.group} ({exc!r})" for m in monitors]
    if left:
        print(f"monitor-bench: groups left on the broker: {left}", file=sys.stderr)


def live_detection(
    scale: float,
    objectives: tuple[float, ...],
    shares: tuple[float, ...],
    rate: float,
    good_tokens: int,
    bad_tokens: int,
    warm_h: float,
    threshold_ms: float = 0.0,
) -> None:
    """Print the table (see the module's docstring)."""
    good_ms, bad_ms = asyncio.run(calibrate(good_tokens, bad_tokens))
    # Between the two, geometrically, unless given: on a shared machine good requests' tail
    # reaches the geometric mean, and a threshold near the bad ones keeps them good.
    threshold = threshold_ms or (good_ms * bad_ms) ** 0.5
    print(
        f"calibration: good {good_ms:.0f} ms, bad {bad_ms:.0f} ms -> SLO e2e under "
        f"{threshold:.0f} ms; scale {scale:g}, {rate:g} requests/s, warm {warm_h:g} h"
    )
    if bad_ms < 1.5 * good_ms:
        print("bad requests are not slower than good ones: raise --bad-tokens")
        return
    print("objective  bad share  time to page (live)  Workbook  false alarms while warm")
    for share in shares:
        load = Load(rate, good_tokens, bad_tokens)
        monitors = asyncio.run(
            one_case(
                objectives,
                share,
                scale=scale,
                threshold_ms=threshold,
                load=load,
                warm_s=warm_h * 3600,
                timeout_factor=3.0,
            )
        )
        for m in monitors:
            live = "no page" if m.fired is None else f"{m.fired / 60:.1f} min"
            wb = "never" if m.workbook is None else f"{m.workbook / 60:.1f} min"
            print(
                f"{m.objective:<10g} {share:<10.0%} {live:<20} {wb:<9} {m.false_alarms}"
                f"   ({load.sent} requests, {load.failed} failed)",
                flush=True,
            )
