"""Requests produced straight to genwire.requests and what the pipeline writes back, for the
stack tests (run under the stack lock)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from genwire.events import GenerationResult, PreparedRequest, ShadowResult, now_ms
from genwire.kafka.security import client_options
from genwire.request import GenerationRequest
from genwire.settings import CommonSettings
from genwire.topics import Topic

WAIT_S = 60.0
"""How long a request may take to be answered on a busy machine."""

T = TypeVar("T", ShadowResult, PreparedRequest)


class Traffic(Generic[T]):
    """Produces requests for ``model``; from the moment it starts, reads genwire.results (the
    first result of each request id, in ``results``) and the ``watch`` topic (every record of
    each request id, in arrival order, in ``watched``). An async context manager."""

    def __init__(
        self, settings: CommonSettings, model: str, prefix: str, watch: tuple[Topic, type[T]]
    ) -> None:
        boot = settings.kafka_bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=boot, **client_options())
        self.consumer = AIOKafkaConsumer(bootstrap_servers=boot, **client_options())
        self.model = model
        self.prefix = prefix
        self.watch, self.parse = watch
        self.results: dict[str, GenerationResult] = {}
        self.watched: dict[str, list[T]] = {}
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic[T]:
        await self.producer.start()
        await self.consumer.start()
        tps = [
            TopicPartition(topic, p)
            for topic in (Topic.RESULTS, self.watch)
            for p in await self.producer.partitions_for(topic)
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == self.watch:
                        seen = self.parse.model_validate_json(record.value or b"")
                        self.watched.setdefault(seen.request_id, []).append(seen)
                    else:
                        result = GenerationResult.model_validate_json(record.value or b"")
                        self.results.setdefault(result.request_id, result)
            if batches:
                self._arrived.set()

    def request(self, **fields: Any) -> GenerationRequest:
        """A short greedy request for the model (``fields`` override)."""
        return GenerationRequest.model_validate(
            {
                "request_id": f"{self.prefix}-{uuid.uuid4().hex[:12]}",
                "model": self.model,
                "prompt": "The quick brown fox",
                "max_tokens": 4,
                "temperature": 0.0,
                "received_ms": now_ms(),
                **fields,
            }
        )

    async def send(self, request: GenerationRequest) -> str:
        """Produce ``request`` (again, if it was sent before); its id."""
        key, value = request.to_kafka()
        await self.producer.send_and_wait(Topic.REQUESTS, value, key=key)
        return request.request_id or ""

    async def until(self, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        """Wait until ``check()`` holds over what was read; TimeoutError after ``timeout_s``."""

        async def wait() -> None:
            while not check():
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(wait(), timeout_s)

    async def result(self, rid: str, timeout_s: float = WAIT_S) -> GenerationResult | None:
        """The result of request ``rid``, or None if none came within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await self.until(lambda: rid in self.results, timeout_s)
        return self.results.get(rid)

    async def ask(self, **fields: Any) -> GenerationResult:
        """Send a request (``fields`` over the defaults) and return its result."""
        found = await self.result(await self.send(self.request(**fields)))
        assert found is not None, f"no result for {fields}"
        return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Poll ``check()`` until true (policies reach every stage within about a second)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "the policy was not followed"
        await asyncio.sleep(0.2)
