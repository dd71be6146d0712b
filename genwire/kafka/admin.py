"""Explicit topic creation (broker auto-create is off) and broker readiness; groups: deleting
stopped ones, dropping a member lost in an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.group import LeaveGroupRequest

from genwire.kafka_security import client_options
from genwire.settings import CommonSettings
from genwire.topics import MAX_RECORD_BYTES, TOPIC_SPECS, TopicSpec


async def ensure_topics(
    bootstrap_servers: str,
    specs: Iterable[TopicSpec] = TOPIC_SPECS,
    timeout_s: float = 60.0,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
    settings: CommonSettings | None = None,
) -> list[str]:
    """Create the topics that are missing; returns the names it created.

    A cluster of three brokers uses ``replication_factor=3, min_insync_replicas=2``: with
    ``acks=all`` a write then survives the loss of any one broker. ``settings``: whose Kafka
    security to connect with (default: the process's, :mod:`genwire.kafka_security`).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, **client_options(settings), request_timeout_ms=10000
    )
    async with asyncio.timeout(timeout_s):
        await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        if not wanted:
            return []
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=replication_factor,
                topic_configs={
                    "retention.ms": str(s.retention_ms),
                    "max.message.bytes": str(MAX_RECORD_BYTES),
                    **({"cleanup.policy": "compact"} if s.compact else {}),
                    **(
                        {"min.insync.replicas": str(min_insync_replicas)}
                        if min_insync_replicas is not None
                        else {}
                    ),
                },
            )
            for s in wanted
        ]
        # The broker answers per topic (create_topics does not raise): another process may
        # create one meanwhile, which is what we wanted; any other error must not pass silently.
        response = await admin.create_topics(new)
        for name, code, *detail in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise for_code(code)(
                    f"creating topic {name!r} failed: {detail[0] if detail else ''}"
                )
        return [s.name for s in wanted]
    finally:
        await admin.close()


async def delete_topics(
    bootstrap_servers: str, topics: Iterable[str], *, settings: CommonSettings | None = None
) -> None:
    """Delete ``topics`` (a tool's or a test's own: their committed offsets go with them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        response = await admin.delete_topics(list(topics))
    finally:
        await admin.close()
    # The broker answers per topic (delete_topics does not raise): say what was left behind.
    for name, code, *_ in response.topic_error_codes:
        if code not in (0, UnknownTopicOrPartitionError.errno):
            raise for_code(code)(f"deleting topic {name!r} failed")


async def delete_groups(
    bootstrap_servers: str, groups: Iterable[str], *, settings: CommonSettings | None = None
) -> list[str]:
    """Delete stopped (empty) consumer groups; returns those left behind (still in use, or
    refused). aiokafka's admin client has no call for it, so this sends Kafka's DeleteGroups
    request (API 42) to each group's coordinator."""
    from aiokafka.protocol.admin import DeleteGroupsRequest

    left: list[str] = []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        by_node: dict[int, list[str]] = {}
        for group in groups:
            by_node.setdefault(await admin.find_coordinator(group), []).append(group)
        for node, names in by_node.items():
            response = await admin._send_request(DeleteGroupsRequest(names), node)
            # 0: deleted; 69 (GROUP_ID_NOT_FOUND): never created (e.g. a run that failed early)
            left += [str(g) for g, code in response.results if code not in (0, 69)]
    finally:
        await admin.close()
    return left


LEAVE_RETRY_S = 0.1
"""The pause between two LeaveGroup tries while no broker or coordinator answers."""


async def leave_group(
    bootstrap_servers: str,
    group: str,
    member: str,
    timeout_s: float,
    *,
    settings: CommonSettings | None = None,
) -> str:
    """Ask ``group``'s coordinator to drop ``member``, as a consumer closing cleanly asks for
    itself: ``left``, ``unknown member`` (the group has none by that id), or ``gave up: <why>``.

    For a member id its consumer no longer uses (librdkafka's after its session expired in an
    outage: ``RdConsumer``): until it expires, a restarted coordinator holds the group's next
    join for it. Retried while no broker or coordinator answers or its answer is retriable (a
    coordinator still loading the group), up to ``timeout_s``; any other answer ends it.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, **client_options(settings))
    last: BaseException | None = None
    bootstrapped = False
    try:
        async with asyncio.timeout(timeout_s):  # a send to a broker that went away included
            while True:
                try:
                    if not bootstrapped:  # once: a retry reuses its metadata and connections
                        await client.bootstrap()
                        bootstrapped = True
                    node = await client.coordinator_lookup(CoordinationType.GROUP, group)
                    response = await client.send(node, LeaveGroupRequest(group, member))
                    if response.error_code == 0:
                        return "left"
                    if response.error_code == UnknownMemberIdError.errno:
                        return "unknown member"
                    error = for_code(response.error_code)
                    if not error.retriable:
                        return f"gave up: {error.__name__}"
                    last = error()
                except KafkaError as exc:  # no broker or coordinator answering yet
                    last = exc
                await asyncio.sleep(LEAVE_RETRY_S)
    except TimeoutError:
        return f"gave up: no answer in {timeout_s:g} s ({last!r})"
    finally:
        await client.close()
