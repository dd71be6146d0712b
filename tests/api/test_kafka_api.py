"""The Kafka entry point against the real stack: schema v1 still read, v2 options honoured or
answered with an error result naming the field (``error.param``), nothing silently ignored."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from genwire.events import GenerationResult
from genwire.settings import CommonSettings
from genwire.topics import Topic

from .conftest import MODEL, Served


class Results:
    """Produces raw requests and collects genwire.results by key from now on."""

    def __init__(self, settings: CommonSettings) -> None:
        boot = settings.kafka_bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=boot)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None)
        self.results: dict[str, GenerationResult] = {}
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        tps = [
            TopicPartition(Topic.RESULTS, p)
            for p in await self.producer.partitions_for(Topic.RESULTS)
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        async for record in self.consumer:
            if record.key:
                result = GenerationResult.model_validate_json(record.value or b"")
                self.results.setdefault(record.key.decode(), result)
                self._new.set()

    async def ask(self, body: dict[str, object]) -> GenerationResult:
        rid = f"kafka-api-{uuid.uuid4().hex[:12]}"
        await self.producer.send_and_wait(
            Topic.REQUESTS, json.dumps(body).encode(), key=rid.encode()
        )
        async with asyncio.timeout(60):
            while rid not in self.results:
                self._new.clear()
                await self._new.wait()
        return self.results[rid]


@pytest.fixture(scope="module")
async def kafka(stack: CommonSettings) -> AsyncIterator[Results]:
    results = Results(stack)
    await results.start()
    yield results
    await results.stop()


async def test_a_v1_record_is_still_answered(kafka: Results) -> None:
    result = await kafka.ask(
        {"schema_version": 1, "prompt": "Once upon a time", "max_tokens": 4, "model": MODEL}
    )
    assert result.error is None and result.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"schema_version": 1, "logprobs": True}, "invalid_request", "logprobs"),
        ({"n": 99}, "out_of_range", "n"),
        ({"logit_bias": {"99999999": 5}}, "out_of_range", "logit_bias"),
        ({"n": 16, "max_tokens": 32000}, "out_of_range", "n"),
        ({"suffix": "x"}, "invalid_request", "suffix"),
        (
            {"guided": {"kind": "json_schema", "spec": '{"type": "integr"}'}},
            "invalid_request",
            "guided",
        ),
        ({"guided": {"kind": "regex", "spec": "a" * 70_000}}, "out_of_range", "guided.spec"),
    ],
)
async def test_bad_options_get_an_error_result_naming_the_field(
    kafka: Results, body: dict[str, object], code: str, param: str
) -> None:
    result = await kafka.ask({"prompt": "Once upon a time", "model": MODEL, **body})
    assert result.error is not None, result
    assert (result.error.code, result.error.param) == (code, param), result.error


async def test_v2_options_are_honoured_or_refused_by_name(kafka: Results, served: Served) -> None:
    result = await kafka.ask(
        {
            "prompt": "Once upon a time",
            "model": MODEL,
            "n": 2,
            "logprobs": True,
            "max_tokens": 6,
            "temperature": 1.0,
        }
    )
    expect = served.expect("n", "logprobs")
    if result.error is not None:
        assert expect is not True, result.error
        assert result.error.code == "unsupported_parameter"
        assert result.error.param in ("n", "logprobs")
        return
    assert expect is not False
    assert [c.index for c in result.choices] == [0, 1]
    for choice in result.choices:
        assert choice.logprobs is not None and len(choice.logprobs) <= choice.completion_tokens
    assert result.text == result.choices[0].text
