"""``acknowledged``: a record the broker refused is that failure, even while another record of
the same output waits; only when nothing failed does the wait's end make it a timeout (which
the consumer retries as an outage)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from genwire.kafka.failures import acknowledged


async def test_a_refusal_is_raised_before_a_wait_times_out() -> None:
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[object] = loop.create_future()
    refused.set_exception(MessageSizeTooLargeError("too large"))
    waiting: asyncio.Future[object] = loop.create_future()
    with pytest.raises(MessageSizeTooLargeError):
        await acknowledged([refused, waiting], 0.05)
    with pytest.raises(KafkaTimeoutError, match="1 record"):
        await acknowledged([waiting], 0.05)
    waiting.set_result(0)
    await acknowledged([waiting], 0.05)
