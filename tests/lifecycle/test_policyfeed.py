"""PolicyStore: records applied in order, corrupt ones counted and skipped, tombstones."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from genwire.policy import ModelPolicy
from genwire.policyfeed import PolicyStore


def test_records_apply_and_corrupt_ones_keep_the_policy_in_force() -> None:
    registry = CollectorRegistry()
    store = PolicyStore(registry)
    seen: list[tuple[str, int | None]] = []
    store.on_change(lambda m, p: seen.append((m, p.revision if p else None)))
    first = ModelPolicy(model="m", aliases={"champion": "1"}, revision=1)
    assert store.apply(b"m", first.value())
    assert store.get("m") == first
    for key, bad in [
        (b"m", b"not json"),
        (b"m", b'{"model": "m", "weights": {"1": 50}}'),
        (b"other", first.value()),
        (None, first.value()),
    ]:
        assert not store.apply(key, bad)
    assert store.get("m") == first
    assert store.skipped == 4
    assert registry.get_sample_value("genwire_policy_records_total", {"outcome": "skipped"}) == 4
    assert registry.get_sample_value("genwire_policy_revision", {"model": "m"}) == 1
    second = first.changed(by="t", weights={"1": 100})
    assert store.apply(b"m", second.value())
    assert store.get("m") == second
    assert store.apply(b"m", None)
    assert store.get("m") is None
    assert registry.get_sample_value("genwire_policy_revision", {"model": "m"}) is None
    assert seen == [("m", 1), ("m", 2), ("m", None)]


def test_only_a_corrupt_latest_record_is_news() -> None:
    store = PolicyStore(log_skipped=False)
    good = ModelPolicy(model="m", aliases={"champion": "1"})
    store.apply(b"m", b"{bad")
    assert "m" in store.corrupt_latest
    store.apply(b"m", good.value())
    assert store.corrupt_latest == {} and store.get("m") == good
    store.apply(b"m", b"{bad")
    assert "not JSON" in store.corrupt_latest["m"] and store.get("m") == good


def test_history_is_read_quietly(caplog: pytest.LogCaptureFixture) -> None:
    store = PolicyStore()
    with caplog.at_level(logging.DEBUG, logger="genwire.policyfeed"):
        store.apply(b"m", b"{bad", quiet=True)
        assert [r.levelno for r in caplog.records] == [logging.DEBUG]
        store.apply(b"m", b"{bad")
        assert caplog.records[-1].levelno == logging.WARNING
    assert store.skipped == 2


def test_a_replay_never_takes_the_store_back_to_an_older_revision() -> None:
    """History read again on the same store (the monitor rebuilds a failed feed on it) brings
    revisions older than the one held: they are skipped and counted, never applied (the store
    once held revision 4 again while revision 6 was in force, and the monitor rolled it back)."""
    registry = CollectorRegistry()
    store = PolicyStore(registry)
    seen: list[int | None] = []
    store.on_change(lambda m, p: seen.append(p.revision if p else None))
    four = ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 75, "2": 25}, revision=4)
    five = four.changed(by="monitor", weights={"1": 100})
    six = five.changed(by="cli:op", aliases={"champion": "2"}, weights={"2": 100})
    topic = [four, five, six]
    for policy in topic:
        assert store.apply(b"m", policy.value())
    for policy in topic:  # the replay, from offset 0
        store.apply(b"m", policy.value(), quiet=True)
        assert store.get("m") == six
    assert store.stale == 2 and seen == [4, 5, 6, 6]  # the same revision again is harmless
    assert registry.get_sample_value("genwire_policy_records_total", {"outcome": "stale"}) == 2
    assert registry.get_sample_value("genwire_policy_revision", {"model": "m"}) == 6
    # A tombstone has no revision: the model starts over, from any revision.
    assert store.apply(b"m", None) and store.get("m") is None
    fresh = ModelPolicy(model="m", aliases={"champion": "1"})
    assert store.apply(b"m", fresh.value()) and store.get("m") == fresh


def test_a_stale_record_read_live_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    store = PolicyStore()
    two = ModelPolicy(model="m", aliases={"champion": "1"}, revision=2)
    store.apply(b"m", two.value())
    with caplog.at_level(logging.DEBUG, logger="genwire.policyfeed"):
        store.apply(b"m", two.model_copy(update={"revision": 1}).value(), quiet=True)
        store.apply(b"m", two.model_copy(update={"revision": 1}).value())
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.WARNING]
    assert "revision 1 is older than revision 2 in force" in caplog.records[-1].getMessage()
    assert store.get("m") == two
