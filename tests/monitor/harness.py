"""Running the real monitor app against the real broker, feeding it spans, reading its alerts."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from genwire_bench.monitor.synth import Profile, encode, request_spans
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.app import create_app
from genwire_monitor.config import MonitorSettings
from genwire_monitor.handlers import parse_alert

from genwire.kafka import ensure_topics
from genwire.topics import TopicSpec
from tests.common.support import fresh_topic

HOUR_MS = 3_600_000


async def fresh_topics(bootstrap: str) -> tuple[str, str]:
    """A unique spans topic (3 partitions, like otlp_spans) and a unique alerts topic."""
    spans, alerts = fresh_topic("monitor.spans"), fresh_topic("monitor.alerts")
    await ensure_topics(bootstrap, [TopicSpec(spans, 3, HOUR_MS), TopicSpec(alerts, 1, HOUR_MS)])
    return spans, alerts


@dataclass
class Served:
    """A monitor app served by uvicorn inside the test's event loop."""

    settings: MonitorSettings
    url: str
    server: uvicorn.Server

    async def get(self, path: str) -> httpx.Response:
        """GET from the monitor."""
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.url + path)

    async def status(self) -> dict[str, object]:
        """``/api/status``: active alerts, percentiles, counts."""
        data: dict[str, object] = (await self.get("/api/status")).json()
        return data


@contextlib.asynccontextmanager
async def serve_monitor(settings: MonitorSettings, ready_s: float = 60.0) -> AsyncIterator[Served]:
    """Start the whole app (lifespan, span source, evaluation loop); stop it cleanly after."""
    port = settings.port
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    served = Served(settings, f"http://127.0.0.1:{port}", server)
    try:
        async with asyncio.timeout(ready_s):
            while True:
                if task.done():
                    task.result()  # raises the startup error
                    raise RuntimeError("the monitor exited during startup")
                with contextlib.suppress(httpx.HTTPError):
                    if (await served.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        yield served
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 60)
        except TimeoutError:
            _dump_stacks()
            task.cancel()  # its port and clients are not left to the next tests
            await asyncio.wait({task}, timeout=10)
            raise


def _dump_stacks() -> None:
    """Print where every task and thread is: a stop that hangs says where it hangs."""
    for t in asyncio.all_tasks():
        t.print_stack(file=sys.stdout)
    for ident, frame in sys._current_frames().items():
        print(f"--- thread {ident}")
        traceback.print_stack(frame, file=sys.stdout)


@dataclass
class AlertLog:
    """Every alert event on a topic, with when the test saw it."""

    events: list[tuple[float, AlertEvent]] = field(default_factory=list)

    def of(self, alert_id: str, status: str | None = None) -> list[tuple[float, AlertEvent]]:
        """Events of one alert (optionally of one status)."""
        return [
            (t, e)
            for t, e in self.events
            if e.id == alert_id and (status is None or e.status == status)
        ]


@contextlib.asynccontextmanager
async def read_alerts(bootstrap: str, topic: str) -> AsyncIterator[AlertLog]:
    """Collect alert events in the background while the block runs."""
    log = AlertLog()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()

    async def pump() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    log.events.append((time.time(), parse_alert(r.value or b"")))

    task = asyncio.create_task(pump())
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


class SpanFeed:
    """Publishes synthetic request traces to a spans topic in real time."""

    def __init__(self, bootstrap: str, topic: str, seed: int = 0) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self._rng = random.Random(seed)
        self.requests = 0
        self.payloads = 0

    async def __aenter__(self) -> SpanFeed:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def raw(self, values: list[bytes]) -> None:
        """Publish arbitrary values (malformed input tests)."""
        for v in values:
            await self._producer.send_and_wait(self.topic, v)

    async def run(self, profile: Profile, seconds: float, rate: float, step_s: float = 0.1) -> None:
        """About ``rate`` requests per second, each trace published as its services would."""
        deadline = time.monotonic() + seconds
        carry = 0.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            carry += rate * step_s
            n, carry = int(carry), carry - int(carry)
            by_service: dict[str, list] = {}
            for _ in range(n):
                for service, spans in request_spans(profile, self._rng).items():
                    by_service.setdefault(service, []).extend(spans)
            if by_service:
                await self._producer.send(self.topic, encode(by_service))
                self.requests += n
                self.payloads += 1
            await asyncio.sleep(max(0.0, step_s - (time.monotonic() - started)))
        await self._producer.flush()
