"""Stalled partitions: the tracker's bookkeeping and the ``partition_stalled`` rule (pure)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from genwire_monitor import page, promexport
from genwire_monitor.config import MonitorSettings
from genwire_monitor.handlers import MonitorEngine, parse_alert
from genwire_monitor.rules import stall_id
from genwire_monitor.stalls import PartitionSample, PartitionStatus, StallTracker
from genwire_monitor.worker import EngineWorker

from genwire.telemetry import semconv as sc
from genwire.topics import Topic

from .simulate import fast_settings

T0 = 1_800_000_000.0
G, T = "genwire-inference", "genwire.prepared"


def _s(committed: int | None, end: int, partition: int = 0, start: int = 0) -> PartitionSample:
    return PartitionSample(G, T, partition, committed, start, end)


def _one(tracker: StallTracker, sample: PartitionSample, now: float) -> PartitionStatus:
    (status,) = tracker.observe(sample.group, [sample], now)
    return status


# ---- the tracker ----------------------------------------------------------------------------


def test_no_lag_is_never_stalled() -> None:
    tr = StallTracker(threshold_s=60)
    for i in range(10):
        st = _one(tr, _s(100, 100), T0 + i * 30)
        assert (st.lag, st.stalled_s, st.stalled) == (0, 0.0, False)


def test_a_lagging_partition_whose_commit_stands_still_stalls_after_the_threshold() -> None:
    tr = StallTracker(threshold_s=60)
    assert not _one(tr, _s(100, 100), T0).stalled  # idle for a long time: no clock running
    st = _one(tr, _s(100, 105), T0 + 3600)  # records arrive: the clock starts now, not at T0
    assert (st.lag, st.stalled_s, st.stalled) == (5, 0.0, False)
    assert not _one(tr, _s(100, 107), T0 + 3600 + 59.9).stalled
    st = _one(tr, _s(100, 107), T0 + 3660)
    assert st.stalled and st.stalled_s == pytest.approx(60) and st.lag == 7
    assert tr.stalled() == [st]


def test_a_moving_commit_restarts_the_clock_and_catching_up_clears() -> None:
    tr = StallTracker(threshold_s=60)
    _one(tr, _s(100, 200), T0)
    assert _one(tr, _s(100, 200), T0 + 61).stalled
    st = _one(tr, _s(150, 250), T0 + 62)  # progress, though records still wait
    assert (st.stalled, st.stalled_s, st.lag) == (False, 0.0, 100)
    assert not _one(tr, _s(150, 250), T0 + 121).stalled
    assert _one(tr, _s(150, 250), T0 + 122).stalled  # stuck again for 60 s
    st = _one(tr, _s(150, 150), T0 + 123)  # nothing waits (end == committed): clear
    assert (st.stalled, st.stalled_s, st.lag) == (False, 0.0, 0)
    assert not _one(tr, _s(150, 151), T0 + 124).stalled  # new lag: a fresh clock


def test_a_group_without_a_commit_waits_from_the_log_start() -> None:
    tr = StallTracker(threshold_s=10)
    st = _one(tr, _s(None, 30, start=0), T0)
    assert st.lag == 30 and st.committed is None
    assert _one(tr, _s(None, 30), T0 + 10).stalled
    # Retention deleted everything: nothing waits for a group that never committed.
    assert _one(tr, _s(None, 30, start=30), T0 + 11).lag == 0
    # A commit below the log start reads from the log start too.
    assert _one(tr, _s(5, 30, start=20), T0 + 12).lag == 10


def test_partitions_are_kept_apart_and_missing_ones_forgotten() -> None:
    tr = StallTracker(threshold_s=10)
    tr.observe(G, [_s(0, 5, 0), _s(0, 0, 1), _s(3, 9, 2)], T0)
    (other,) = tr.observe("other", [PartitionSample("other", "x", 0, 0, 0, 4)], T0)
    out = tr.observe(G, [_s(0, 5, 0), _s(0, 0, 1), _s(4, 9, 2)], T0 + 10)
    assert [s.stalled for s in out] == [True, False, False]  # only 0 stood still with lag
    tr.observe(G, [_s(0, 5, 0)], T0 + 11)  # partitions 1 and 2 gone (topic shrank or deleted)
    assert [(s.group, s.partition) for s in tr.snapshot()] == [(G, 0), ("other", 0)]
    assert tr.snapshot()[1] == other  # the other group's last verdict stands until read again
    with pytest.raises(ValueError):
        tr.observe(G, [PartitionSample("other", "x", 0, 0, 0, 4)], T0 + 12)


# ---- the rule -------------------------------------------------------------------------------


def _engine(**extra: Any) -> tuple[MonitorEngine, StallTracker]:
    engine = MonitorEngine(fast_settings(stall_alert_s=60, **extra))
    return engine, StallTracker(engine.settings.stall_alert_s)


def _tick(engine: MonitorEngine, tr: StallTracker, samples: list[PartitionSample], now: float):  # type: ignore[no-untyped-def]
    tr.observe(G, samples, now)
    engine.set_partitions(tr.snapshot())
    return [e for e in engine.tick(now) if e.kind == "partition_stalled"]


def test_the_alert_fires_after_the_threshold_and_resolves_when_the_offset_moves() -> None:
    engine, tr = _engine()
    aid = stall_id(G, T, 2)
    assert _tick(engine, tr, [_s(100, 120, 2)], T0) == []
    assert _tick(engine, tr, [_s(100, 120, 2)], T0 + 59) == []
    (fired,) = _tick(engine, tr, [_s(100, 125, 2)], T0 + 60)
    assert (fired.id, fired.status, fired.kind, fired.severity) == (
        aid,
        "firing",
        "partition_stalled",
        "page",
    )
    assert fired.labels == {"group": G, "topic": T, "partition": "2"}
    assert fired.figures == {
        "group": G,
        "topic": T,
        "partition": 2,
        "committed": 100,
        "end": 125,
        "lag": 25,
        "stalled_s": 60.0,
    }
    assert "1m" in fired.rule and G in fired.title
    assert _tick(engine, tr, [_s(100, 130, 2)], T0 + 70) == []  # still firing: no new event
    (active,) = engine.book.active(T0 + 70)
    assert active.figures["stalled_s"] == 70.0 and active.figures["lag"] == 30  # live figures
    (resolved,) = _tick(engine, tr, [_s(101, 130, 2)], T0 + 75)  # the commit moved
    assert (resolved.id, resolved.status) == (aid, "resolved")
    assert resolved.resolved_at is not None and resolved.figures["committed"] == 101
    assert engine.book.active(T0 + 75) == []


def test_the_alert_resolves_when_the_lag_is_gone() -> None:
    engine, tr = _engine()
    _tick(engine, tr, [_s(None, 3)], T0)
    (fired,) = _tick(engine, tr, [_s(None, 3)], T0 + 61)
    assert fired.figures["committed"] == -1 and "no committed offset" in fired.summary
    (resolved,) = _tick(engine, tr, [_s(3, 3)], T0 + 65)
    assert resolved.status == "resolved" and "no records waiting" in resolved.summary


def test_no_alert_for_a_partition_without_lag_however_old_its_commit() -> None:
    engine, tr = _engine()
    for i in range(20):
        assert _tick(engine, tr, [_s(42, 42), _s(7, 7, 1)], T0 + i * 60) == []
    assert engine.book.known() == []


def test_a_partition_no_longer_reported_resolves() -> None:
    engine, tr = _engine()
    _tick(engine, tr, [_s(0, 9)], T0)
    assert len(_tick(engine, tr, [_s(0, 9)], T0 + 60)) == 1
    engine.set_partitions([])  # e.g. the group is no longer watched
    (resolved,) = [e for e in engine.tick(T0 + 61) if e.kind == "partition_stalled"]
    assert resolved.status == "resolved" and resolved.id == stall_id(G, T, 0)


def test_metrics_and_page_show_the_partitions_and_the_alert() -> None:
    engine, tr = _engine()
    _tick(engine, tr, [_s(0, 9), _s(5, 5, 1)], T0)
    _tick(engine, tr, [_s(0, 9), _s(5, 5, 1)], T0 + 61)
    collector = promexport.MonitorCollector()
    collector.latest = promexport.figures(engine, T0 + 61)
    samples = {
        (m.name, s.labels.get("partition")): s.value
        for m in collector.collect()
        for s in m.samples
        if m.name.startswith("genwire_monitor_partition")
    }
    assert samples == {
        (sc.METRIC_MONITOR_PARTITION_LAG, "0"): 9,
        (sc.METRIC_MONITOR_PARTITION_LAG, "1"): 0,
        (sc.METRIC_MONITOR_PARTITION_STALLED_S, "0"): 61,
        (sc.METRIC_MONITOR_PARTITION_STALLED_S, "1"): 0,
    }
    html = page.render(page.snapshot(engine, T0 + 61))
    assert f'data-alert-id="{stall_id(G, T, 0)}"' in html
    assert 'id="partitions"' in html and html.count('class="partition-row"') == 2


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = MonitorSettings()
    assert s.watched_groups == {
        "genwire-preprocess": Topic.REQUESTS.value,
        "genwire-inference": Topic.PREPARED.value,
        "genwire-postprocess": Topic.GENERATIONS.value,
    }
    assert (s.stall_alert_s, s.stall_check_interval_s) == (60.0, 5.0)
    monkeypatch.setenv("GENWIRE_MONITOR_WATCHED_GROUPS", '{"g": "t"}')
    monkeypatch.setenv("GENWIRE_MONITOR_STALL_ALERT_S", "5")
    s = MonitorSettings(window_scale=1 / 360)
    assert s.watched_groups == {"g": "t"} and s.stall_alert_s == 5.0  # not scaled


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.topics: list[str] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        self.sent.append(value)
        self.topics.append(topic)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_the_worker_carries_verdicts_to_the_engine_and_the_alert_out() -> None:
    producer = _Producer()
    now = [T0]
    worker = EngineWorker(
        fast_settings(stall_alert_s=30, alert_state_topic="test.alert-state"),
        producer,  # type: ignore[arg-type]
        promexport.MonitorCollector(),
        clock=lambda: now[0],
    )
    tr = StallTracker(30)
    try:
        for t in (T0, T0 + 31):
            now[0] = t
            tr.observe(G, [_s(1, 4)], t)
            await worker.partitions(tr.snapshot())
            await worker.evaluate_once()
        cfg = worker.settings
        sent = list(zip(producer.topics, producer.sent, strict=True))
        by_topic = {
            topic: [parse_alert(v) for t, v in sent if t == topic]
            for topic in (cfg.alerts_topic, cfg.alert_state_topic)
        }
        (event,) = by_topic[cfg.alerts_topic]
        assert event.kind == "partition_stalled" and event.status == "firing"
        assert by_topic[cfg.alert_state_topic] == [event]  # the same event, for a restart
        status = await worker.status()
        assert status["partitions"] == [
            {
                "group": G,
                "topic": T,
                "partition": 0,
                "committed": 1,
                "end": 4,
                "lag": 3,
                "stalled_s": 31.0,
                "stalled": True,
            }
        ]
    finally:
        await worker.close()
