"""Waiting for a model on Triton: how often the inference service asks, and its channel's
reconnect backoff (docs/reliability.md: a Triton restart)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from genwire_inference import backend as backend_module
from genwire_inference.backend import READY_POLL_S, TritonBackend, channel_args
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException

from genwire.errors import RetryableError


class _Readiness:
    """``is_model_ready`` answering ``ready`` (or failing like a channel without Triton)."""

    def __init__(self) -> None:
        self.ready: bool | None = False  # None: the call fails
        self.asked = 0

    async def is_model_ready(self, model: str, version: str, client_timeout: float) -> bool:
        self.asked += 1
        await asyncio.sleep(0)
        if self.ready is None:
            raise InferenceServerException("failed to connect to all addresses")
        return self.ready


def _backend() -> tuple[TritonBackend, _Readiness]:
    backend = TritonBackend("127.0.0.1:1", shared_stream_s=0)  # the channel connects lazily
    fake = _Readiness()
    backend.client = fake  # type: ignore[assignment]
    return backend, fake


async def test_records_waiting_for_a_model_share_its_not_yet_answers() -> None:
    backend, fake = _backend()
    fake.ready = None
    waiters, wait_s = 20, 4 * READY_POLL_S
    results = await asyncio.gather(*(backend.wait_ready("m", "1", wait_s) for _ in range(waiters)))
    assert results == [False] * waiters
    # Each asks once itself (a caller decides on that answer); after that one question per
    # half a poll for all of them, where each asking alone would be 20 × 4 more.
    assert waiters < fake.asked <= waiters + 2 * 4 + 2


async def test_a_model_that_comes_back_is_seen_at_the_next_poll() -> None:
    backend, fake = _backend()
    waiting = asyncio.ensure_future(backend.wait_ready("m", "1", 30.0))
    await asyncio.sleep(READY_POLL_S / 2)
    fake.ready = True
    asked = fake.asked
    assert await asyncio.wait_for(waiting, 30.0)
    assert fake.asked == asked + 1  # the first poll after it came back saw it


async def test_a_ready_answer_is_never_reused_and_the_first_question_is_fresh() -> None:
    backend, fake = _backend()
    assert not await backend.wait_ready("m", "1", 0.0)  # "not yet", just heard
    fake.ready = True
    assert await backend.wait_ready("m", "1", 0.0)  # asked again, not the shared "not yet"
    fake.ready = False
    assert not await backend.wait_ready("m", "1", 0.0)  # nor a "ready" kept
    assert fake.asked == 3


def test_the_channel_keeps_tritonclients_arguments_and_reconnects_within_a_second() -> None:
    args = dict(channel_args())
    keepalive = KeepAliveOptions()
    assert args["grpc.max_receive_message_length"] == MAX_GRPC_MESSAGE_SIZE
    assert args["grpc.max_send_message_length"] == MAX_GRPC_MESSAGE_SIZE
    assert args["grpc.keepalive_time_ms"] == keepalive.keepalive_time_ms
    assert args["grpc.keepalive_timeout_ms"] == keepalive.keepalive_timeout_ms
    assert args["grpc.http2.max_pings_without_data"] == keepalive.http2_max_pings_without_data
    assert args["grpc.max_reconnect_backoff_ms"] <= 1000  # gRPC's default: 120 s
    assert args["grpc.initial_reconnect_backoff_ms"] <= args["grpc.max_reconnect_backoff_ms"]
    # Not the connection attempt's own deadline (gRPC's min_reconnect_backoff_ms, 20 s).
    assert "grpc.min_reconnect_backoff_ms" not in args
    assert backend_module.RECONNECT_BACKOFF_MS[1] == args["grpc.max_reconnect_backoff_ms"]


async def test_a_hung_triton_fails_the_model_config_lookup_in_time() -> None:
    """The version's config is looked up on its first request and after every Triton recovery,
    before a cancel or deadline can reach the call: against a server that never answers it
    fails retryably within its bound instead of holding the record for good."""

    async def never(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelConfig": grpc.unary_unary_rpc_method_handler(never)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend = TritonBackend(f"127.0.0.1:{port}", shared_stream_s=0)
    try:
        started = time.monotonic()
        with pytest.raises(RetryableError):
            await asyncio.wait_for(backend._is_batched("m", "1"), 10.0)
        assert time.monotonic() - started < 5.0
    finally:
        await backend.close()
        await server.stop(0)
