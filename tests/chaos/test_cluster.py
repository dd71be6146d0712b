"""The three-broker scenario starts its load only on a settled cluster."""

from __future__ import annotations

from typing import Any

from genwire_chaos.cluster import _settled


def _topic(*partitions: tuple[int, list[int]]) -> dict[str, Any]:
    return {"partitions": [{"leader": leader, "isr": isr} for leader, isr in partitions]}


def test_a_settled_cluster_has_every_partition_led_and_fully_in_sync() -> None:
    assert _settled([_topic((1, [1, 2, 3]), (2, [2, 3, 1]))], replicas=3)


def test_a_partition_without_a_leader_is_not_settled() -> None:
    assert not _settled([_topic((1, [1, 2, 3]), (-1, [2, 3]))], replicas=3)


def test_a_replica_still_catching_up_is_not_settled() -> None:
    assert not _settled([_topic((1, [1, 2]))], replicas=3)


def test_no_partitions_at_all_is_not_settled() -> None:
    assert not _settled([], replicas=3)
    assert not _settled([{"partitions": []}], replicas=3)
