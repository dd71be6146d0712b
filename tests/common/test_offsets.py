"""PartitionOffsets: commit positions never skip an unfinished record."""

from genwire.kafka.offsets import PartitionOffsets


def test_nothing_committable_before_any_record_finishes() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None
    offsets.started(5)
    assert offsets.committable() == 5


def test_out_of_order_completion_holds_commit_at_oldest_unfinished() -> None:
    offsets = PartitionOffsets()
    for o in (10, 11, 12):
        offsets.started(o)
    offsets.finished(12)
    offsets.finished(11)
    assert offsets.committable() == 10  # 10 is still running: a crash must redeliver it
    offsets.finished(10)
    assert offsets.committable() == 13
    assert offsets.pending == 0


def test_new_records_after_completion_move_the_position() -> None:
    offsets = PartitionOffsets()
    offsets.started(0)
    offsets.finished(0)
    offsets.started(1)
    assert offsets.committable() == 1
    offsets.finished(1)
    assert offsets.committable() == 2
