"""The runtime every service shares: telemetry, producer, consumers, supervised tasks, readiness.

The runner (``genwire.service.runner``) builds one ``ServiceRuntime`` per app in its lifespan
and keeps it on ``app.state.runtime``; nothing here is a module global, so tests build as many
as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from genwire.health import Dependencies
from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka.consumer import Decoder, Handler, InT
from genwire.kafka.failures import FailureEvents
from genwire.kafka.replay import ParkedRecord, Replayer, decode_parked
from genwire.metrics import ConsumerMetrics
from genwire.settings import STAGE_ONLY, ServiceSettings
from genwire.telemetry import configure_tracing
from genwire.topics import Topic

log = logging.getLogger(__name__)

TASKS_STOP_S = 5.0
"""How long a stop waits for its cancelled background tasks (they end at once when well)."""


class ServiceRuntime:
    """Owns a service's long-lived clients and background tasks, and their orderly stop."""

    def __init__(
        self,
        settings: ServiceSettings,
        stage: str,
        *,
        span_exporter: SpanExporter | None = None,
        set_global_tracer: bool = True,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.registry = CollectorRegistry()
        self.consumer_metrics = ConsumerMetrics(self.registry)
        self.tracer_provider: TracerProvider = configure_tracing(
            settings, settings.service_name, span_exporter, set_global=set_global_tracer
        )
        self.tracer: Tracer = self.tracer_provider.get_tracer(f"genwire.{stage}")
        self.dependencies = Dependencies(
            stage,
            self.registry,
            unready_after_s=settings.unready_after_s,
            forget_after_s=3 * settings.retry_backoff_max_s,
        )
        self.producer = EventProducer(
            settings.kafka_bootstrap_servers,
            client_id=settings.service_name,
            tracer=self.tracer,
            on_reset=self.consumer_metrics.producer_resets.labels(stage).inc,
        )
        self.consumers: list[EventConsumer[Any]] = []
        self._replayer: EventConsumer[ParkedRecord] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._checks: list[Callable[[], list[str]]] = []
        self.failed: str | None = None
        self.failure = asyncio.Event()  # set by ``fail``: ``serve`` stops on it, no polling
        self._stopping = False
        self.started = False

    def consumer(
        self,
        topic: str,
        model: type[InT],
        handler: Handler[InT],
        *,
        group: bool = True,
        failure_events: FailureEvents | None = None,
        decoder: Decoder[InT] | None = None,
        concurrency: int | None = None,
        root_spans: bool = True,
        ordered_keys: bool = False,
        quiet: bool = False,
    ) -> EventConsumer[InT]:
        """Create (not start) a consumer with this service's settings and telemetry.

        ``group=False``: no consumer group; every partition from its end (every instance sees
        every record from now on, and nothing is left on the broker when it stops).
        ``root_spans=False``: records without a trace context are processed untraced.
        ``ordered_keys``: records with the same key run in partition order, one at a time.
        ``quiet``: a topic no request passes through (control, retries); its fetches wait
        ``kafka_quiet_fetch_max_wait_ms``.
        """
        s = self.settings
        consumer = self._new_consumer(
            topic,
            model,
            handler,
            group_id=s.service_name if group else None,
            concurrency=concurrency or s.concurrency,
            failure_events=failure_events,
            decoder=decoder,
            root_spans=root_spans,
            ordered_keys=ordered_keys,
            quiet=quiet,
        )
        self.consumers.append(consumer)
        return consumer

    def _new_consumer(
        self,
        topic: str,
        model: type[InT],
        handler: Handler[InT],
        *,
        group_id: str | None,
        concurrency: int,
        failure_events: FailureEvents | None = None,
        decoder: Decoder[InT] | None = None,
        root_spans: bool = True,
        ordered_keys: bool = False,
        quiet: bool = False,
    ) -> EventConsumer[InT]:
        s = self.settings
        refused = s.not_read & STAGE_ONLY
        if refused:  # what it refuses at start would be read here, silently at defaults
            raise RuntimeError(
                f"{type(s).__name__} refuses {sorted(refused)} as unread, and a stage "
                "consumer reads them: take them out of its not_read"
            )
        return EventConsumer(
            topic=topic,
            group_id=group_id,
            model=model,
            handler=handler,
            producer=self.producer,
            bootstrap_servers=s.kafka_bootstrap_servers,
            stage=self.stage,
            concurrency=concurrency,
            outage_budget_s=s.outage_budget_s,
            retry_backoff_s=s.retry_backoff_s,
            retry_backoff_max_s=s.retry_backoff_max_s,
            retry_probe_s=s.retry_probe_s,
            max_replays=s.max_replays,
            replay_delay_s=s.replay_delay_s,
            drain_timeout_s=s.drain_timeout_s,
            failure_events=failure_events,
            decoder=decoder,
            tracer=self.tracer,
            root_spans=root_spans,
            metrics=self.consumer_metrics,
            dependencies=self.dependencies,
            on_fatal=self.fail,
            session_timeout_ms=s.kafka_session_timeout_ms,
            fetch_max_wait_ms=(
                s.kafka_quiet_fetch_max_wait_ms if quiet else s.kafka_fetch_max_wait_ms
            ),
            commit_interval_s=s.kafka_commit_interval_ms / 1000.0,
            ordered_keys=ordered_keys,
        )

    def _add_replayer(self) -> None:
        """Replays this stage's parked records from genwire.retry (group ``<service>-retry``)."""
        topics = {c.topic for c in self.consumers if c.group_id is not None}
        if topics:
            self._replayer = self._new_consumer(
                Topic.RETRY,
                ParkedRecord,
                Replayer(topics).handle,
                group_id=f"{self.settings.service_name}-retry",
                concurrency=self.settings.concurrency,
                decoder=decode_parked,
                quiet=True,
            )

    def add_check(self, check: Callable[[], list[str]]) -> None:
        """Add a service's own readiness check: it returns why it is not ready (empty: it is)."""
        self._checks.append(check)

    def fail(self, reason: str) -> None:
        """Give up loudly: not ready from now on, and (under ``serve``) stop and exit with
        ``EXIT_FAILED``, so the supervisor restarts us."""
        if self.failed:
            return
        self.failed = reason
        self.failure.set()
        log.error("cannot make progress: %s; stopping the service", reason)

    def supervise(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task; if it dies, /readyz fails and the process exits non-zero."""
        task = asyncio.create_task(coro, name=name)

        def _done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or self.failed:
                return
            exc = t.exception()
            if exc is None:
                return
            if self._stopping:
                # Raised while being stopped (its clean-up failed): logged, not a failure, so
                # a requested stop still exits 0 and no supervisor restarts us for it.
                log.warning("stopping: %s ended with %r", name, exc)
                return
            self.fail(f"background task {name} died: {exc!r}")

        task.add_done_callback(_done)
        self._tasks.append(task)
        return task

    async def start(self) -> None:
        """Start the producer and every consumer (each consuming in a supervised task)."""
        await self.producer.start()
        self._add_replayer()
        for consumer in self._all_consumers():
            await consumer.start()
            self.supervise(consumer.run(), f"consume:{consumer.topic}")
        self.supervise(self._watch_progress(), "watch-progress")
        self.started = True

    def _all_consumers(self) -> list[EventConsumer[Any]]:
        return [*self.consumers, *([self._replayer] if self._replayer is not None else [])]

    def stalled(self) -> list[str]:
        """Partitions with work and no progress for the stall timeout, as readable lines.

        The replayer is left out: its records wait for their replay time on purpose.
        """
        threshold = self.settings.stall_timeout_s
        return [
            f"partition {tp.topic}-{tp.partition} made no progress for {waited:.0f} s"
            for consumer in self.consumers
            for tp, waited in consumer.stalled(threshold).items()
        ]

    def undelivered(self) -> list[str]:
        """The producer's oldest record, when it has waited the stall timeout for the broker's
        acknowledgement: a client that accepts records and delivers none cannot make progress,
        though no publish has failed (the gateway's heartbeat, one record a second, makes this
        true of an idle gateway too)."""
        waited = self.producer.unacknowledged_s()
        if waited < self.settings.stall_timeout_s:
            return []
        return [f"a record has waited {waited:.0f} s for Kafka's acknowledgement"]

    def reasons(self) -> list[str]:
        """Why this service cannot make progress now (empty: it can)."""
        out: list[str] = []
        if not self.started:
            out.append("starting")
        if self.failed:
            out.append(self.failed)
        out += [
            f"consumer of {c.topic} has not joined its group"
            for c in self._all_consumers()
            if self.started and not c.ready
        ]
        out += self.dependencies.reasons()
        out += self.stalled()
        out += self.undelivered()
        for check in self._checks:
            out += check()
        return out

    @property
    def ready(self) -> bool:
        """Started, no fatal error, consumers joined, no dependency down, no stalled partition,
        no record waiting the stall timeout for its acknowledgement, and every check added by
        the service passes."""
        return not self.reasons()

    async def _watch_progress(self, interval_s: float = 2.0) -> None:
        """Keep the stall gauges current for Prometheus (readiness computes its own)."""
        m = self.consumer_metrics
        threshold = self.settings.stall_timeout_s
        shown: set[tuple[str, str, str]] = set()
        while True:
            now: set[tuple[str, str, str]] = set()
            for consumer in self.consumers:
                for tp, waited in consumer.progress().items():
                    labels = (tp.topic, str(tp.partition), self.stage)
                    now.add(labels)
                    m.progress_age.labels(*labels).set(waited)
                    m.stalled.labels(*labels).set(1 if waited >= threshold else 0)
            unacknowledged = self.producer.unacknowledged_s()
            m.producer_unacknowledged.labels(self.stage).set(unacknowledged)
            # The threshold travels as 0/1 so that the alert honours this service's setting.
            m.producer_stuck.labels(self.stage).set(1 if unacknowledged >= threshold else 0)
            for labels in shown - now:  # revoked: another instance reports it now
                m.progress_age.remove(*labels)
                m.stalled.remove(*labels)
            shown = now
            await asyncio.sleep(interval_s)

    async def _end_tasks(self, timeout_s: float) -> None:
        """Cancel the supervised tasks and wait for them to end, within ``timeout_s``.

        A task still running half the bound after its cancel either lost the cancel (a library
        caught it, as ``asyncio.wait_for`` can on Python 3.11) or cleans up slowly: it is
        cancelled once more, and logged. One still running at the bound is logged and left:
        a stop never hangs on a task.
        """
        pending = {t for t in self._tasks if not t.done()}
        for cancel, then in (("its cancel", "cancelled again"), ("a second cancel", "left")):
            for task in pending:
                task.cancel()
            if pending:
                _, pending = await asyncio.wait(pending, timeout=timeout_s / 2)
            if pending:
                log.warning(
                    "stopping: %s still running %.1f s after %s; %s",
                    ", ".join(sorted(t.get_name() for t in pending)),
                    timeout_s / 2,
                    cancel,
                    then,
                )
        for task in self._tasks:  # retrieved: no "exception was never retrieved" later
            if task.done() and not task.cancelled():
                task.exception()

    async def stop(self) -> None:
        """Stop consuming, drain, flush the producer, flush and close telemetry."""
        timeout = self.settings.shutdown_timeout_s
        self._stopping = True
        for consumer in self._all_consumers():
            with contextlib.suppress(Exception):
                await consumer.stop(timeout)
        await self._end_tasks(TASKS_STOP_S)
        with contextlib.suppress(Exception):
            await self.producer.stop()
        # Flushing joins the exporter's thread: keep it off the event loop.
        await asyncio.to_thread(self.tracer_provider.shutdown)
