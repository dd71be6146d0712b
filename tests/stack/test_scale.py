"""``genwire up --scale preprocess=2`` on the shared stack: an extra instance in the same
consumer group, on its own port, supervised, listed by status; ``--scale preprocess=1`` stops it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from genwire_stack import StackLayout, child_pid, current_layout, ensure_up, status
from genwire_stack.health import http_status
from genwire_stack.paths import StackPaths
from genwire_stack.process import port_free, read_record

from genwire.settings import CommonSettings


async def _members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses: list[Any] = await admin.describe_consumer_groups([group])
        groups = [g for response in responses for g in response.to_object()["groups"]]
        return sum(len(g["members"]) for g in groups if g["group"] == group)
    finally:
        await admin.close()


async def test_scale_a_stage_out_and_back(stack: CommonSettings) -> None:
    paths = StackPaths.from_settings(stack)
    assert current_layout(stack) == StackLayout(), "the shared stack runs one of each"
    try:
        began = time.monotonic()
        rows = await asyncio.to_thread(
            ensure_up, ["preprocess"], settings=stack, scale={"preprocess": 2}
        )
        print(f"preprocess-2 ready in {time.monotonic() - began:.1f} s")
        assert [(r.name, r.state) for r in rows] == [
            ("preprocess", "running"),
            ("preprocess-2", "running"),
        ]
        assert current_layout(stack) == StackLayout(scale={"preprocess": 2})
        assert http_status("http://127.0.0.1:8191/readyz") == 200
        assert child_pid("preprocess-2", stack) is not None
        record = read_record(paths.run, "preprocess-2")
        assert record is not None and record.supervised
        assert "preprocess-2" in {r.name for r in status(settings=stack)}
        assert await _members(stack.kafka_bootstrap_servers, "genwire-preprocess") == 2
    finally:
        await asyncio.to_thread(ensure_up, ["preprocess"], settings=stack, scale={"preprocess": 1})
    assert current_layout(stack) == StackLayout()
    assert read_record(paths.run, "preprocess-2") is None
    assert port_free(8191)
    assert "preprocess-2" not in {r.name for r in status(settings=stack)}
