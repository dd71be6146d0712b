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
