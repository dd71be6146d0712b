"""``genwire_bench.footprint``: bytes a request leaves per topic, in Redis and in Jaeger, and
what a sustained rate holds in the steady state."""

from __future__ import annotations

from pathlib import Path

import pytest
from genwire_bench import footprint
from genwire_bench.footprint import Footprint, allocated_bytes, steady_state, topic_bytes
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


def test_topic_and_allocated_bytes_read_the_files(tmp_path: Path) -> None:
    for part, size in ((f"{Topic.SPANS}-0", 300), (f"{Topic.SPANS}-2", 200), ("genwire.x-1", 7)):
        (tmp_path / "kafka" / part).mkdir(parents=True)
        (tmp_path / "kafka" / part / "00000000000000000000.log").write_bytes(b"x" * size)
        (tmp_path / "kafka" / part / "00000000000000000000.index").write_bytes(b"i" * 99)
    assert topic_bytes(tmp_path) == {Topic.SPANS: 500, "genwire.x": 7}  # segments only
    sparse = tmp_path / "jaeger" / "keys" / "00001.mem"
    sparse.parent.mkdir(parents=True)
    with sparse.open("wb") as f:
        f.truncate(64 * 2**20)  # a preallocated, empty memtable: no blocks
    assert allocated_bytes(tmp_path / "jaeger") < 2**20


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
