"""deploy/native/kafka/log4j.properties: start-up at INFO, what repeats while serving at WARN.

With everything at INFO kafka.log grew to 400 MB in 16 h, mostly the group coordinator's
rebalances and the KRaft controller's per-change lines; genwire rotates it at 64 MiB into one
kafka.log.1, so chatter would push out everything worth keeping within minutes. After those, the
bulk was the log manager, partitions, segments and the dynamic config publisher. The levels are
read here as log4j 1.x does: a logger without its own level takes its nearest ancestor's
(dot-separated).
"""

from __future__ import annotations

from pathlib import Path

import pytest

PROPERTIES = (
    Path(__file__).resolve().parents[2] / "deploy" / "native" / "kafka" / "log4j.properties"
)


def levels() -> dict[str, str]:
    """``log4j.logger.<name>`` → level (``rootLogger`` as ``""``)."""
    out: dict[str, str] = {}
    for raw in PROPERTIES.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        level = value.split(",")[0].strip()
        if key == "log4j.rootLogger":
            out[""] = level
        elif key.startswith("log4j.logger."):
            out[key.removeprefix("log4j.logger.")] = level
    return out


def effective(name: str) -> str:
    table = levels()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        found = table.get(".".join(parts[:end]))
        if found is not None:
            return found
    return table[""]


@pytest.mark.parametrize(
    "logger",
    [
        "kafka.coordinator.group.GroupCoordinator",  # joins, rebalances, stable generations
        "kafka.coordinator.group.GroupMetadataManager",  # the 10-minute offset expiry sweep
        "org.apache.kafka.coordinator.group.GroupMetadataManager",  # KIP-848's, when on
        "org.apache.kafka.controller.QuorumController",
        "kafka.controller.KafkaController",
        "state.change.logger",
        "kafka.log.LogCleaner",
        "kafka.log.UnifiedLog",
        "kafka.log.LocalLog",
        "kafka.log.LocalLog$",
        "kafka.request.logger",
        "kafka.authorizer.logger",  # the secure broker's per-request ACL verdicts
        "kafka.log.LogManager",  # lines per log: loaded at each start, created, deleted
        "kafka.cluster.Partition",  # leader, ISR and high-watermark changes
        "org.apache.kafka.storage.internals.log.LogSegment",  # segment deletions
        "kafka.server.metadata.DynamicConfigPublisher",  # a line per config change
    ],
)
def test_what_repeats_while_serving_logs_warnings_only(logger: str) -> None:
    assert effective(logger) == "WARN"


@pytest.mark.parametrize(
    "logger",
    [
        "kafka.server.KafkaRaftServer",  # "Kafka Server started", the shutdown
        "kafka.server.KafkaConfig",  # the configuration the broker runs with
        "org.apache.kafka.common.utils.AppInfoParser",  # its version
        "kafka.Kafka",
        "org.apache.kafka.raft.KafkaRaftClient",  # a cluster's leader elections
    ],
)
def test_the_start_up_essentials_stay_at_info(logger: str) -> None:
    assert effective(logger) == "INFO"


def test_everything_still_reaches_kafka_log() -> None:
    """genwire reads kafka.log only for its last error or line (health.last_words): every
    logger writes to the one stdout appender, none is cut off from it."""
    text = PROPERTIES.read_text()
    assert "log4j.rootLogger=INFO, stdout" in text
    assert "additivity" not in text
    assert all(value in {"INFO", "WARN"} for value in levels().values())
