"""``genwire_bench.footprint``: bytes a request leaves per topic, in Redis and in Jaeger, and
what a sustained rate holds in the steady state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from genwire_bench import footprint
from genwire_bench.footprint import (
    Footprint,
    allocated_bytes,
    live_log_dir,
    segment_sizes,
    steady_state,
    topic_growth,
)
from genwire_stack.paths import StackPaths
from redis import Redis

from genwire.settings import CommonSettings
from genwire.topics import Topic


def test_each_place_holds_its_bytes_for_its_retention() -> None:
    fp = Footprint(
        "kafka",
        100,
        {Topic.SPANS: 4_000.0, Topic.USAGE: 500.0, Topic.REQUESTS: 0.0, "__consumer_offsets": 70},
        redis=1_700.0,
        jaeger=8_000.0,
    )
    held = steady_state(fp, result_ttl_s=86_400, span_ttl_s=3 * 86_400)
    assert held == {
        f"Kafka {Topic.SPANS}": 4_000 * 86_400,  # a day
        f"Kafka {Topic.USAGE}": 500 * 90 * 86_400,  # 90 days
        "Redis (memory)": 1_700 * 86_400,
        "Jaeger (Badger)": 8_000 * 3 * 86_400,
    }  # a topic nothing was written to, and one genwire does not define, are left out
    lines = footprint.report(fp, 86_400, 3 * 86_400)
    assert lines[0] == "kafka: 100 requests, bytes per request"
    assert any(line.startswith("  held per request/s sustained: Kafka 3.94 GiB") for line in lines)
    unmeasured = Footprint("grpc", 10, {}, redis=1.0, jaeger=None)
    assert "Jaeger (Badger)" not in steady_state(unmeasured, 1, 1)


def test_growth_per_topic_reads_the_segments_of_the_live_log_dir(tmp_path: Path) -> None:
    def segment(logs: str, partition: str, name: str, size: int) -> Path:
        path = tmp_path / logs / partition / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / logs / "meta.properties").touch()
        path.write_bytes(b"x" * size)
        return path

    segment("kafka", f"{Topic.SPANS}-0", "00.log", 10)  # a layout's stale logs
    old = segment("kafka-1", f"{Topic.SPANS}-0", "00.log", 300)
    segment("kafka-1", "genwire.alert-state-0", "00.log", 5)
    segment("kafka-1", f"{Topic.SPANS}-1.0a1b2c-delete", "00.log", 50)  # being deleted
    logs = live_log_dir(tmp_path)
    assert logs == tmp_path / "kafka-1"
    before = segment_sizes(logs)
    old.write_bytes(b"x" * 340)  # appended to
    segment("kafka-1", f"{Topic.SPANS}-2", "00.log", 60)  # a new segment
    segment("kafka-1", "genwire.alert-state-0", "00.log", 0).unlink()  # deleted: not -5
    assert topic_growth(before, segment_sizes(logs)) == {Topic.SPANS: 100}
    assert live_log_dir(tmp_path / "none") is None
    # A segment Kafka deletes between the listing and its stat (a deleted test topic's, found
    # by CI) is left out, not an error: a link to nothing stands for it.
    gone = tmp_path / "kafka-1" / "floor-d360d103-0-1"
    gone.mkdir()
    (gone / "00.log").symlink_to(tmp_path / "deleted.log")
    assert live_log_dir(tmp_path) == logs
    assert gone / "00.log" not in segment_sizes(logs)


def test_a_partition_deleted_while_it_is_listed_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka renames a deleted topic's partition, then removes it: a glob of its segments can
    find the directory gone (found by CI, after the hop-floor tests deleted their topics)."""
    logs = tmp_path / "kafka"
    for partition in (f"{Topic.SPANS}-0", "floor-24c82415-0-1"):
        (logs / partition).mkdir(parents=True)
        (logs / partition / "00.log").write_bytes(b"x" * 8)
    (logs / "meta.properties").touch()
    glob = Path.glob

    def vanishing(self: Path, pattern: str) -> Any:
        if self.name.startswith("floor-"):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return glob(self, pattern)

    monkeypatch.setattr(Path, "glob", vanishing)
    assert live_log_dir(tmp_path) == logs
    assert segment_sizes(logs) == {logs / f"{Topic.SPANS}-0" / "00.log": 8}


def test_allocated_bytes_counts_blocks_not_lengths(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    with (tmp_path / "keys" / "00001.mem").open("wb") as f:
        f.truncate(64 * 2**20)  # a preallocated, empty memtable: no blocks
    (tmp_path / "keys" / "000001.sst").write_bytes(b"s" * 2**20)  # written: its blocks
    assert 2**20 <= allocated_bytes(tmp_path) < 3 * 2**20


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_on_the_stack_leaves_bytes_on_each_topic_of_its_path(stack: CommonSettings) -> None:
    redis: Redis[bytes] = Redis.from_url(stack.redis_url)
    try:
        fp = footprint.measure(
            "kafka", 100, 3.0, StackPaths.from_settings(stack), redis, flush_jaeger=None
        )
    finally:
        redis.close()
    for topic in (Topic.REQUESTS, Topic.PREPARED, Topic.GENERATIONS, Topic.RESULTS, Topic.SPANS):
        assert fp.topics[topic] > 100, topic  # a record of each request at least
    assert fp.redis > 100 and fp.jaeger is None  # its result, claim and route
