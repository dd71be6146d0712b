"""End to end with two instances of every stage: ``genwire up --scale`` on the shared stack.

Scales gateway, preprocess, inference and postprocess to two instances each (the layout is
remembered in the run dir, as ``genwire up --scale`` does), sends requests through *both*
gateways over gRPC (unary and streaming, ``GenwireClient``) and HTTP (``/v1/completions``), and
checks that every one completes with the text the one-of-each stack gives for the same greedy
request; that each stage's consumer group, and the gateways' reply group, has two members
sharing its topic's partitions (admin describe groups); and that every instance of every stage
handled records. The request ids
are chosen so that their keys land on every partition, so each member gets work by construction.
The previous layout (one of each) is restored in a ``finally``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.partitioner import DefaultPartitioner
from genwire_gateway.client import GenwireClient
from genwire_stack import SCALABLE, StackLayout, current_layout, ensure_up, status
from genwire_stack.catalog import GATEWAY_GRPC_PORT, SERVICE_PORTS
from genwire_stack.layout import instance_name, instance_port
from genwire_stack.paths import StackPaths
from genwire_stack.process import port_free, read_record

from genwire.apikeys import auth_headers
from genwire.settings import CommonSettings
from genwire.topics import TOPIC_SPECS

INSTANCES = 2
PARTITIONS = 3
"""Partitions of genwire.requests, genwire.prepared and genwire.generations (README topics)."""
STAGE_INPUTS = {
    "preprocess": "genwire.requests",
    "inference": "genwire.prepared",
    "postprocess": "genwire.generations",
}
"""Each consumer stage: its consumer group is ``genwire-<stage>``, reading this topic."""
GROUPS = {
    **{f"genwire-{stage}": topic for stage, topic in STAGE_INPUTS.items()},
    "genwire-gateway-replies": "genwire.replies",
}
"""Every consumer group the scaled services share, and its topic (the gateways' reply readers
share the reply partitions, docs/architecture.md "Direct replies")."""
PROMPTS = ("The little robot", "Once upon a time", "In the morning the cat")
PARAMS: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0, "seed": 11}
TRANSPORTS = ("grpc", "grpc-stream", "http")


def _ids_per_partition(prefix: str) -> list[str]:
    """One fresh request id per partition: its key hashes there (Kafka's default partitioner)."""
    partitioner = DefaultPartitioner()
    every = list(range(PARTITIONS))
    found: dict[int, str] = {}
    while len(found) < PARTITIONS:
        rid = f"{prefix}-{uuid.uuid4().hex[:12]}"
        found.setdefault(partitioner(rid.encode(), every, every), rid)
    return [found[p] for p in every]


async def _assignments(bootstrap: str, group: str) -> list[list[tuple[str, list[int]]]]:
    """Each member of ``group``: the (topic, partitions) it is assigned."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses: list[Any] = await admin.describe_consumer_groups([group])
        groups = [g for r in responses for g in r.to_object()["groups"] if g["group"] == group]
        return [
            [
                (topic, sorted(parts))
                for topic, parts in ConsumerProtocolMemberAssignment.decode(
                    m["member_assignment"]
                ).assignment
            ]
            for g in groups
            for m in g["members"]
        ]
    finally:
        await admin.close()


def _partitions(topic: str) -> int:
    return next(spec.partitions for spec in TOPIC_SPECS if spec.name == topic)


def _shares(members: list[list[tuple[str, list[int]]]], topic: str) -> bool:
    """Whether ≥ 2 members each own part of ``topic`` and together all of it, without overlap."""
    owned = [sorted(p for t, parts in m for p in parts if t == topic) for m in members]
    owned = [o for o in owned if o]
    flat = sorted(p for o in owned for p in o)
    return len(owned) >= INSTANCES and flat == list(range(_partitions(topic)))


async def _await_sharing(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Wait until every group has settled on ≥ 2 members sharing its partitions."""
    async with asyncio.timeout(timeout_s):
        for group, topic in GROUPS.items():
            # The group rebalances after the new instance joins: there is no event to wait on.
            while not _shares(await _assignments(bootstrap, group), topic):  # noqa: ASYNC110
                await asyncio.sleep(0.5)


_OK = re.compile(r"^genwire_messages_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$", re.M)


async def _handled(http: httpx.AsyncClient, stage: str, index: int) -> float:
    """Records of the stage's input topic that instance ``index`` finished with outcome ok."""
    port = instance_port(SERVICE_PORTS[stage], index)
    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        float(m["value"])
        for m in _OK.finditer(text)
        if 'outcome="ok"' in m["labels"] and f'topic="{STAGE_INPUTS[stage]}"' in m["labels"]
    )


async def _counts(http: httpx.AsyncClient) -> dict[tuple[str, int], float]:
    return {
        (stage, i): await _handled(http, stage, i)
        for stage in STAGE_INPUTS
        for i in range(1, INSTANCES + 1)
    }


async def _call(
    transport: str, gateway: int, prompt: str, rid: str, http: httpx.AsyncClient
) -> str:
    """One request through gateway instance ``gateway``; returns the generated text."""
    if transport == "http":
        port = instance_port(SERVICE_PORTS["gateway"], gateway)
        response = await http.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"prompt": prompt, **PARAMS},
            headers={"idempotency-key": rid, **auth_headers()},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == rid
        body = response.json()
        assert body["choices"][0]["finish_reason"] in ("length", "stop")
        return str(body["choices"][0]["text"])
    target = f"127.0.0.1:{instance_port(GATEWAY_GRPC_PORT, gateway)}"
    async with GenwireClient(target, timeout_s=60.0) as client:
        if transport == "grpc":
            result = await client.generate(prompt, request_id=rid, **PARAMS)
            assert result.request_id == rid and result.completion_tokens > 0
            return result.text
        chunks = [c async for c in client.stream(prompt, request_id=rid, **PARAMS)]
    assert chunks and chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert {c.request_id for c in chunks} == {rid}
    return "".join(c.text for c in chunks)


def _scale_to(settings: CommonSettings, counts: Mapping[str, int]) -> list[Any]:
    return ensure_up(list(SCALABLE), settings=settings, scale=dict(counts))


async def test_two_of_every_stage_serve_both_gateways(stack: CommonSettings) -> None:
    paths = StackPaths.from_settings(stack)
    before = current_layout(stack)
    restore = {svc: before.instances(svc) for svc in SCALABLE}
    assert restore == dict.fromkeys(SCALABLE, 1), "the shared stack runs one of each"
    async with httpx.AsyncClient(timeout=60.0) as http:
        # What the one-of-each stack answers (greedy: the same request gives the same text).
        async with GenwireClient(f"127.0.0.1:{GATEWAY_GRPC_PORT}") as client:
            expected = {
                p: (await client.generate(p, request_id=f"ref-{uuid.uuid4().hex}", **PARAMS)).text
                for p in PROMPTS
            }
        assert all(expected.values())
        try:
            rows = await asyncio.to_thread(_scale_to, stack, dict.fromkeys(SCALABLE, INSTANCES))
            names = [instance_name(s, i) for s in SCALABLE for i in range(1, INSTANCES + 1)]
            assert {r.name: r.state for r in rows} == dict.fromkeys(names, "running")
            assert current_layout(stack) == StackLayout(scale=dict.fromkeys(SCALABLE, INSTANCES))
            listed = {r.name: r.state for r in status(settings=stack)}
            assert all(listed[name] == "running" for name in names)
            await _await_sharing(stack.kafka_bootstrap_servers)
            handled_before = await _counts(http)

            calls = []
            for gateway in range(1, INSTANCES + 1):
                for transport in TRANSPORTS:
                    ids = _ids_per_partition(f"scale-{transport}-{gateway}")
                    for prompt, rid in zip(PROMPTS, ids, strict=True):
                        calls.append((transport, gateway, prompt, rid))
            texts = await asyncio.gather(*(_call(*c, http) for c in calls))
            wrong = [
                (c, text) for c, text in zip(calls, texts, strict=True) if text != expected[c[2]]
            ]
            assert not wrong, f"texts differ from the one-of-each stack's: {wrong}"

            # Still shared after the traffic (no member left or took everything over).
            for group, topic in GROUPS.items():
                members = await _assignments(stack.kafka_bootstrap_servers, group)
                assert _shares(members, topic), (group, members)
            handled_after = await _counts(http)
            idle = [k for k, v in handled_after.items() if v <= handled_before[k]]
            assert not idle, f"instances that handled none of the requests: {idle}"
        finally:
            await asyncio.to_thread(_scale_to, stack, restore)
    assert current_layout(stack) == before
    for svc in SCALABLE:
        assert read_record(paths.run, instance_name(svc, INSTANCES)) is None
        assert port_free(instance_port(SERVICE_PORTS[svc], INSTANCES))
    assert not {instance_name(s, INSTANCES) for s in SCALABLE} & {
        r.name for r in status(settings=stack)
    }


def test_sharing_needs_two_members_that_split_every_partition() -> None:
    topic = "genwire.requests"
    assert not _shares([[(topic, [0, 1, 2])]], topic)
    assert not _shares([[(topic, [0, 1, 2])], [("genwire.retry", [0])]], topic)
    assert not _shares([[(topic, [0, 1])], [(topic, [1])]], topic)
    assert _shares([[(topic, [0, 2])], [(topic, [1])]], topic)


def test_request_ids_cover_every_partition() -> None:
    every = list(range(PARTITIONS))
    ids = _ids_per_partition("t")
    assert [DefaultPartitioner()(rid.encode(), every, every) for rid in ids] == every
    assert len(set(ids)) == PARTITIONS
