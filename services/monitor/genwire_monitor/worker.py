"""Runs the engine on its own thread and carries its alert events to Kafka and the webhook.

Every engine call goes through one single-thread executor: decoding and aggregation never
block the event loop, and the engine is never touched by two threads at once.

The webhook (Alertmanager) gets every transition, retried at each evaluation until accepted,
and every ``alertmanager_resend_s`` all the alerts firing now (those rebuilt after a restart
included, at the first evaluation): Alertmanager resolves an alert nobody sends again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from genwire.kafka import EventProducer
from genwire.policy import ModelPolicy
from genwire_monitor import alertstate, handlers, page, promexport
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import MonitorSettings
from genwire_monitor.handlers import MonitorEngine
from genwire_monitor.policyfollow import PolicyFollower
from genwire_monitor.rollback import Decision
from genwire_monitor.stalls import PartitionStatus
from genwire_monitor.webhook import AlertmanagerClient

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_EVAL_INTERVAL_S = 0.1
MAX_UNSENT = 1000  # alert events kept for retry while Kafka is unreachable
RESEND_HORIZON = 4
"""A firing alert sent to the webhook ends this many resend intervals ahead unless sent again
(Prometheus's factor): a post or two lost does not resolve it, a dead monitor's alerts do."""
ACK_WAIT_S = 5.0
"""Longest an evaluation waits for the broker to acknowledge its records (alerts, alert
state, a rollback): a broker that hangs (aiokafka never fails a record while it knows the
leader) would otherwise hold every later evaluation, page and webhook post. Records not
acknowledged by then are sent again at the next evaluation (at least once: a receiver may see
one twice); the runtime's readiness names the record that keeps waiting."""
STALE_EVALUATIONS = 5
"""Evaluation intervals without a successful evaluation before /readyz fails (at least
``4 * ACK_WAIT_S``: an evaluation may wait that long for its rollback, twice: its send, then its
acknowledgement, then its alerts and state)."""


class EngineWorker:
    """The engine, its thread, and where its alerts go."""

    def __init__(
        self,
        settings: MonitorSettings,
        producer: EventProducer,
        collector: promexport.MonitorCollector,
        webhook: AlertmanagerClient | None = None,
        clock: Callable[[], float] = time.time,
        policies: PolicyFollower | None = None,
    ) -> None:
        self.settings = settings
        self.policies = policies  # genwire.config followed live (None: no rollback)
        self.engine = MonitorEngine(settings)
        self._producer = producer
        self._collector = collector
        self._webhook = webhook
        self._clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="genwire-monitor-engine")
        self.published: list[AlertEvent] = []  # recent events sent (bounded), for the API
        self._unsent: list[AlertEvent] = []
        self._unsent_state: list[AlertEvent] = []  # for the alert-state topic (retried apart)
        self.restored: list[str] = []  # ids of the alerts rebuilt from the state at start
        self._hook_queue: list[AlertEvent] = []  # transitions the webhook has not accepted
        self._hook_sent: float | None = None  # when it last accepted every firing alert
        # What could not be published (alerts, alert state, a rollback): since when, and what.
        self._waiting: dict[str, tuple[float, str]] = {}
        # Rollbacks sent but not acknowledged in time, still queued in the producer.
        self._settling: dict[tuple[str, int], tuple[Decision, asyncio.Future[object]]] = {}
        self._evaluated = clock()  # last successful evaluation (start: not stale at once)
        collector.health = self.health

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def ingest(self, values: list[bytes]) -> None:
        """Decode and aggregate a batch of Kafka values."""
        await self._call(self.engine.ingest, values, self._clock())

    async def feedback(self, values: list[bytes]) -> None:
        """Count a batch of ``genwire.feedback`` values per model version."""
        await self._call(self.engine.add_feedback, values, self._clock())

    async def restore(self) -> list[str]:
        """Rebuild the alerts the alert-state topic says are firing (before the first
        evaluation); returns their ids."""
        topic = self.settings.alert_state_topic
        if not topic:
            return []
        events = await alertstate.firing_alerts(
            self.settings.kafka_bootstrap_servers, topic, self.settings.restore_timeout_s
        )
        self.restored = await self._call(self.engine.restore, events)
        rebuilt = set(self.restored)  # a receiver may have missed them: sent at the first tick
        self._hook_queue += [e for e in events if e.id in rebuilt]
        if self.restored:
            log.info("rebuilt %d firing alerts: %s", len(self.restored), ", ".join(self.restored))
        return self.restored

    async def partitions(self, statuses: list[PartitionStatus]) -> None:
        """Hand the stall watch's latest verdicts to the engine (evaluated with the rules)."""
        await self._call(self.engine.set_partitions, list(statuses))

    async def evaluate_once(self) -> list[AlertEvent]:
        """One evaluation: transitions published (and acknowledged), figures refreshed."""
        now = self._clock()
        await self._settle()
        follower = self.policies
        policies = dict(follower.store.policies) if follower is not None else {}
        current = follower.current if follower is not None else True
        events, due = await self._call(self._tick, now, policies, current)
        self._forget_rollbacks(due)
        for decision in due:
            await self._publish_rollback(decision)
        self._collector.latest = await self._call(promexport.figures, self.engine, now)
        for event in events:
            log.info("alert %s %s: %s", event.status, event.id, event.title)
        self._unsent = (self._unsent + events)[-MAX_UNSENT:]
        if self._unsent:
            await self._publish()
        elif self._unsent_state:
            await self._publish_state()
        await self._notify(events, now)
        self._evaluated = now
        return events

    def _tick(
        self, now: float, policies: dict[str, ModelPolicy], current: bool
    ) -> tuple[list[AlertEvent], list[Decision]]:
        self.engine.set_policies(policies, current)
        events = self.engine.tick(now)
        return events, list(self.engine.due)

    def _superseded(self, decision: Decision) -> str:
        """Why a rollback decided a moment ago must not go out now ("" : it may): the feed
        stopped being current, or a newer revision came in meanwhile (publishing would undo
        it: stages apply records in the topic's order)."""
        follower = self.policies
        if follower is None:
            return ""
        if not follower.current:
            return f"{follower.topic} is not read to its end"
        held = follower.store.get(decision.model)
        if held is None or held.revision != decision.from_revision:
            now_in_force = "no policy" if held is None else f"revision {held.revision}"
            return f"its policy is {now_in_force} now, not revision {decision.from_revision}"
        return ""

    async def _publish_rollback(self, decision: Decision) -> None:
        """Publish a rollback's policy on ``genwire.config`` (acknowledged by the broker),
        unless superseded; a failure is logged and decided again at the next evaluation."""
        policy = decision.policy
        why = self._superseded(decision)
        if why:
            log.info("not rolling back %s: %s; decided again", policy.model, why)
            self._waiting.pop(_rollback_key(decision), None)  # not a failure to publish
            await self._call(self.engine.rollback.failed, decision, why)
            return
        try:
            async with asyncio.timeout(ACK_WAIT_S):
                sent = asyncio.ensure_future(
                    await self._producer.send(
                        self.settings.config_topic, policy.value(), key=policy.key()
                    )
                )
        except Exception as exc:
            await self._rollback_failed(decision, exc)
            return
        # Wait without cancelling: a record that timed out may still be delivered later.
        await asyncio.wait({sent}, timeout=ACK_WAIT_S)
        if not sent.done():
            why = f"not acknowledged in {ACK_WAIT_S:g} s; still queued in the producer"
            log.warning("the rollback of %s is unsettled: %s", policy.model, why)
            self._settling[(decision.model, decision.from_revision)] = (decision, sent)
            self._wait(_rollback_key(decision), f"the rollback of {policy.model}: {why}")
            await self._call(self.engine.rollback.unsettled, decision, why)
            return
        await self._rollback_settled(decision, sent)

    async def _rollback_settled(self, decision: Decision, sent: asyncio.Future[object]) -> None:
        """Record the outcome of a rollback's send, once the producer has settled it."""
        exc = asyncio.CancelledError() if sent.cancelled() else sent.exception()
        if exc is not None:
            await self._rollback_failed(decision, exc)
            return
        self._waiting.pop(_rollback_key(decision), None)
        await self._call(self.engine.rollback.published, decision, self._clock())

    async def _rollback_failed(self, decision: Decision, exc: BaseException) -> None:
        reason = str(exc) or f"{type(exc).__name__} (not acknowledged in {ACK_WAIT_S:g} s)"
        model = decision.model
        log.warning("publishing the rollback of %s failed, will retry: %s", model, reason)
        self._wait(_rollback_key(decision), f"the rollback of {model} failed: {reason}")
        await self._call(self.engine.rollback.failed, decision, reason)

    async def _settle(self) -> None:
        """Record the rollbacks the producer has settled since they timed out (only then may
        their revision be decided again). One whose policy moved on meanwhile (read to its
        end: a newer revision in force) has nothing left to decide: forgotten, the controller
        told (a future a producer reset orphaned may never settle)."""
        for key, (decision, sent) in list(self._settling.items()):
            if sent.done():
                del self._settling[key]
                await self._rollback_settled(decision, sent)
            elif self._moved_on(decision):
                del self._settling[key]
                self._waiting.pop(_rollback_key(decision), None)
                why = "its policy moved on before the send settled"
                await self._call(self.engine.rollback.failed, decision, why)

    def _moved_on(self, decision: Decision) -> bool:
        """Whether a newer revision of the decision's policy is in force (the feed read to its
        end: a feed that is not is no evidence either way)."""
        follower = self.policies
        if follower is None or not follower.current:
            return False
        held = follower.store.get(decision.model)
        return held is None or held.revision != decision.from_revision

    def _forget_rollbacks(self, due: list[Decision]) -> None:
        """A failed rollback waits only while it is decided again (or still settling): one no
        longer decided (its alert gone, its policy moved on) has nothing left to publish."""
        live = {_rollback_key(d) for d in due}
        live |= {_rollback_key(d) for d, _ in self._settling.values()}
        for key in [k for k in self._waiting if k.startswith("rollback:") and k not in live]:
            del self._waiting[key]

    def _wait(self, key: str, what: str) -> None:
        """Note that ``what`` could not be published (since the first failure of ``key``)."""
        since = self._waiting.get(key, (self._clock(), ""))[0]
        self._waiting[key] = (since, what)

    def health(self) -> tuple[float, float]:
        """Seconds the oldest unpublished record has waited (0: none) and since the last
        successful evaluation (the gauges of ``promexport``)."""
        now = self._clock()
        oldest = min((since for since, _ in self._waiting.values()), default=now)
        return now - oldest, now - self._evaluated

    def not_ready(self) -> list[str]:
        """Why no alert or rollback can be counted on now (empty: ready): a record unpublished
        for the stall timeout, or no successful evaluation for ``STALE_EVALUATIONS``
        intervals."""
        now = self._clock()
        limit = self.settings.stall_timeout_s
        out = [
            f"{what} (unpublished for {now - since:.0f} s)"
            for since, what in self._waiting.values()
            if now - since >= limit
        ]
        interval = max(MIN_EVAL_INTERVAL_S, self.settings.scaled(self.settings.eval_interval_s))
        stale = max(STALE_EVALUATIONS * interval, 4 * ACK_WAIT_S)
        if now - self._evaluated >= stale:
            out.append(
                f"no successful evaluation for {now - self._evaluated:.0f} s "
                f"(every {interval:g} s expected): alerts and rollbacks are not being decided"
            )
        return out

    async def run(self) -> None:
        """Evaluate every ``eval_interval_s`` (scaled, at least 0.1 s) until cancelled."""
        interval = max(MIN_EVAL_INTERVAL_S, self.settings.scaled(self.settings.eval_interval_s))
        while True:
            started = time.monotonic()
            try:
                await self.evaluate_once()
            except Exception:  # keep monitoring: a bad evaluation must not end the service
                log.exception("evaluation failed; trying again next interval")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _publish(self) -> None:
        """Send unsent events in order; on failure keep them for the next evaluation."""
        events = list(self._unsent)
        if not await self._send(self.settings.alerts_topic, events, handlers.alert_record):
            return
        self._unsent = self._unsent[len(events) :]
        self.published = (self.published + events)[-100:]
        if self.settings.alert_state_topic:
            self._unsent_state = latest_per_alert(self._unsent_state + events)
            await self._publish_state()

    async def _notify(self, events: list[AlertEvent], now: float) -> None:
        """Post to the webhook the transitions it has not accepted yet and, when a resend is
        due, every alert firing now (until ``RESEND_HORIZON`` intervals ahead); a post that
        fails is made again at the next evaluation."""
        if self._webhook is None:
            return
        self._hook_queue = latest_per_alert(self._hook_queue + events)  # bounded by alert ids
        resend = self.settings.alertmanager_resend_s
        due = resend > 0 and (self._hook_sent is None or now - self._hook_sent >= resend)
        if not (self._hook_queue or due):
            return
        batch, until = list(self._hook_queue), None
        if resend > 0:  # every post carries all firing alerts: each refreshes their endsAt
            firing = await self._call(self.engine.book.active, now)
            ids = {a.id for a in firing}
            batch = firing + [e for e in batch if e.status == "resolved" and e.id not in ids]
            until = datetime.fromtimestamp(now + RESEND_HORIZON * resend, UTC)
        if await self._webhook.post(batch, until):
            self._hook_queue = []
            self._hook_sent = now if resend > 0 else None

    async def _publish_state(self) -> None:
        """Write the transitions to the compacted alert-state topic; a failure is logged and
        retried with the next events, never holding back ``genwire.alerts``."""
        events = list(self._unsent_state)
        if await self._send(self.settings.alert_state_topic, events, handlers.state_record):
            self._unsent_state = self._unsent_state[len(events) :]

    async def _send(
        self,
        topic: str,
        events: list[AlertEvent],
        record: Callable[[AlertEvent], tuple[bytes, bytes]],
    ) -> bool:
        """Send ``events`` to ``topic`` in order and wait for the broker (``ACK_WAIT_S`` at
        most); False (logged) when any failed or was not acknowledged in time: the caller
        keeps them for the next evaluation."""
        try:
            async with asyncio.timeout(ACK_WAIT_S):
                pending = []
                for event in events:
                    key, value = record(event)
                    pending.append(await self._producer.send(topic, value, key=key))
                await asyncio.gather(*pending)
        except Exception as exc:
            # TimeoutError says nothing itself
            reason = str(exc) or f"{type(exc).__name__} (not acknowledged in {ACK_WAIT_S:g} s)"
            log.warning(
                "sending %d records to %s failed, will retry: %s", len(events), topic, reason
            )
            first = events[0].id if events else "?"
            self._wait(topic, f"{len(events)} records for {topic} (first {first}): {reason}")
            return False
        self._waiting.pop(topic, None)
        return True

    async def page(self) -> str:
        """The status page, rendered on the engine's thread."""
        now = self._clock()
        return await self._call(lambda: page.render(page.snapshot(self.engine, now)))

    async def status(self) -> dict[str, object]:
        """Active alerts and stage percentiles as JSON-ready data."""
        now = self._clock()

        def build() -> dict[str, object]:
            return {
                "active": [a.model_dump(mode="json") for a in self.engine.book.active(now)],
                "percentiles": self.engine.percentiles(now),
                "counts": vars(self.engine.counts).copy(),
                "partitions": [vars(p).copy() for p in self.engine.partitions.values()],
                "models": self.engine.model_figures(now),
                "rollbacks": [d.summary() for d in self.engine.rollback.decisions],
                "rollbacks_held": dict(self.engine.rollback.held),
                "policies": {
                    m: p.model_dump(mode="json", exclude={"alert"})
                    for m, p in self.engine.policies.items()
                },
                "policies_current": self.engine.policies_current,
                "drift": [
                    {
                        "model": r.model,
                        "version": r.version,
                        "state": r.state,
                        "scores": {s.feature: vars(s) for s in r.scores},
                    }
                    for r in self.engine.drift_results
                ],
            }

        return await self._call(build)

    async def close(self) -> None:
        """Stop the thread and the webhook client."""
        await asyncio.to_thread(self._executor.shutdown)  # it joins the thread: not on the loop
        if self._webhook is not None:
            await self._webhook.close()


def _rollback_key(decision: Decision) -> str:
    return f"rollback:{decision.model}:{decision.from_revision}"


def latest_per_alert(events: list[AlertEvent]) -> list[AlertEvent]:
    """What the compacted alert-state topic still needs: the latest transition of each alert
    (bounded by the alert ids, so a long outage cannot grow it, and a "resolved" is never
    dropped while the "firing" before it was written)."""
    latest: dict[str, AlertEvent] = {}
    for event in events:
        latest.pop(event.id, None)
        latest[event.id] = event
    return list(latest.values())
