"""``python -m genwire_bench.floor --modes chain --front none,grpc``: the floor of the gRPC front.

The chain (``genwire_bench.floor_chain``) measures what the Kafka path costs at the least: its
client publishes and reads the last topic itself. The gRPC path puts a gateway in front; this
is the least a gateway can cost: a process (``Front``) that serves one unary gRPC method with
bytes in and out (no proto: a generic handler), decodes the record, names a partition of the
chain's last topic for its reply (``FloorRecord.reply_to``, as the gateway names one of
``genwire.replies``), registers the call's waiter, publishes with the services' producer
(``ServiceRuntime``: idempotent, ``acks=all``, spans to Kafka when tracing is on), waits for the
acknowledgement and then for the reply, read by a group-less consumer of that one partition
with the services' settings (``floor.Reader``), and answers. The last relay publishes there.

``--front none,grpc`` runs both at each concurrency, one after the other on the same relays,
and the report ends with what the front adds per request (``front_difference``). floor.py runs
the processes; this module holds the front's server and client and that line.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import grpc
from genwire_gateway.config import GatewaySettings
from genwire_gateway.telemetry import ENTRYPOINT_GRPC, carrier_of, start_server_span
from opentelemetry import trace

from genwire.gateway_tls import grpc_channel
from genwire.service.runtime import ServiceRuntime
from genwire.settings import ServiceSettings
from genwire.topics import ReplyTo
from genwire_bench.floor_chain import ChainRow, FloorRecord

FRONTS = ("none", "grpc")
"""``none``: the chain's client publishes itself (the Kafka path); ``grpc``: through a front."""
FRONT_PARTITION = 0
"""The last topic's partition the front reads (the gateway reads one of its own, too)."""
SERVICE = "genwire.floor.Front"
METHOD = "Call"
CALL_TIMEOUT_S = 30.0


def parse_fronts(text: str) -> list[str]:
    """``--front``'s value: a comma list of ``FRONTS``, each once, in the order given."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(names) - set(FRONTS))
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(FRONTS)}, each once; got {text!r}"
        )
    return names


class Replies(Protocol):
    """What the front needs of its reply reader (``floor.Reader``): a future per key."""

    async def start(self) -> None: ...

    def expect(self, key: bytes) -> asyncio.Future[float]: ...

    async def stop(self) -> None: ...


class Front:
    """The do-nothing gateway's one method: publish the request, wait for its reply, answer."""

    def __init__(self, runtime: ServiceRuntime, replies: Replies, topic: str, reply_to: str):
        self._runtime = runtime
        self._replies = replies
        self._topic = topic
        self._reply_to = reply_to

    async def call(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        # As the gateway: its SERVER span (joining a caller's traceparent), the request
        # validated once, the waiter registered before the publish so no reply is missed.
        span = start_server_span(
            self._runtime.tracer,
            f"{SERVICE}/{METHOD}",
            entrypoint=ENTRYPOINT_GRPC,
            carrier=carrier_of(context.invocation_metadata() or ()),
            attributes={},
        )
        with trace.use_span(span, end_on_exit=True):
            record = FloorRecord.model_validate_json(request)
            key = record.request_id.encode()
            seen = self._replies.expect(key)
            named = record.model_copy(update={"reply_to": self._reply_to})
            value = named.model_dump_json(exclude_none=True).encode()
            await (await self._runtime.producer.send(self._topic, value, key=key))
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await seen
        return key


def _server(front: Front) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server like the gateway's (``build_server``: its message limit, no port
    sharing, no thread pool) on a free loopback port; returns it (not started) and the port."""
    limit = GatewaySettings.model_fields["grpc_max_message_bytes"].default
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    # No serializers: the method takes and returns the message's bytes as they are.
    handler = grpc.unary_unary_rpc_method_handler(front.call)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        raise OSError("the front could not bind a loopback port")
    return server, port


@asynccontextmanager
async def serving(
    args: argparse.Namespace, replies: Replies, topic_in: str, topic_out: str
) -> AsyncIterator[int]:
    """The front up (its runtime, reply reader and server) for the ``with`` block: yields its
    port; stops everything after, the server first (no call is left waiting on the rest)."""
    settings = ServiceSettings(
        kafka_bootstrap_servers=args.bootstrap_servers,
        service_name=args.group,
        event_loop=args.loop,
    )
    runtime = ServiceRuntime(settings, "floor-front", set_global_tracer=False)
    reply_to = ReplyTo(topic_out, FRONT_PARTITION).encode().decode()
    server, port = _server(Front(runtime, replies, topic_in, reply_to))
    await runtime.start()
    await replies.start()
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=1.0)
        await replies.stop()
        await runtime.stop()
        runtime.tracer_provider.shutdown()


class FrontClient:
    """The chain's client calling the front over one gRPC channel, as the bench's gRPC
    driver calls the gateway."""

    def __init__(self, port: int) -> None:
        self._channel = grpc_channel(f"127.0.0.1:{port}")
        self._call = self._channel.unary_unary(f"/{SERVICE}/{METHOD}")

    async def ready(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self._channel.channel_ready()

    async def call(self, value: bytes) -> float:
        """One call with ``value`` as its request: call → answer, in ms."""
        start = time.perf_counter()
        await self._call(value, timeout=CALL_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000.0

    async def close(self) -> None:
        await self._channel.close()


def front_difference(rows: Sequence[ChainRow]) -> list[str]:
    """For each phase through the front with a plain chain phase of the same concurrency (and
    shape) in the run: what the front adds per request, in CPU (in all; above idle; without
    the measuring client, whose gRPC calls stand in for genwire bench's) and in p50."""
    plain = {_shape(r): r for r in rows if not r.cost.fronted}
    lines: list[str] = []
    for r in rows:
        k = plain.get(_shape(r)) if r.cost.fronted else None
        if k is None or r.cost.total is None or k.cost.total is None:
            continue
        detail = f"total {r.cost.total:.2f} against {k.cost.total:.2f}"
        if r.cost.above_idle is not None and k.cost.above_idle is not None:
            detail += f"; above idle {r.cost.above_idle - k.cost.above_idle:.2f}"
        if r.cost.client is not None and k.cost.client is not None:
            # genwire bench's pipeline figure leaves its client out: so does this one
            served = (r.cost.total - r.cost.client) - (k.cost.total - k.cost.client)
            detail += f"; without the client {served:.2f}"
        line = (
            f"c={r.concurrency}: front − kafka client: {r.cost.total - k.cost.total:.2f} core-ms "
            f"per request ({detail})"
        )
        if r.p50_ms is not None and k.p50_ms is not None:
            line += f", p50 {r.p50_ms - k.p50_ms:+.2f} ms"
        lines.append(line)
    return lines


def _shape(row: ChainRow) -> tuple[int, int, int, bool]:
    return row.concurrency, row.stages, row.size, row.tracing
