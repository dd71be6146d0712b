"""What every driver does: send one request, time it, never raise."""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from genwire_bench.records import BenchRequest, RequestRecord


@dataclass(frozen=True)
class TraceContext:
    """A W3C trace context the benchmark starts, so it can find the request's trace in Jaeger."""

    trace_id: str
    span_id: str
    sampled: bool = True
    """The W3C sampled flag: off, every service honours it (parent-based) and records no span."""

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


class RequestFailed(Exception):
    """The entry point answered with an error; ``kind`` groups errors in the report."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def new_trace(sampled: bool = True) -> TraceContext:
    """A fresh random trace id and parent span id."""
    return TraceContext(
        trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8), sampled=sampled
    )


class Driver(ABC):
    """Sends benchmark requests to one entry point."""

    name: str = ""
    streaming: bool = False
    baseline: str | None = None
    """Name of the direct-Triton driver this one is compared with (None for baselines)."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect; raise a clear error when the entry point is not reachable."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Disconnect."""

    async def send(self, req: BenchRequest, request_id: str, trace: TraceContext) -> RequestRecord:
        """Send ``req``; the record carries timings, token counts, or the error."""
        record = RequestRecord(
            target=self.name,
            index=req.index,
            request_id=request_id,
            start=time.perf_counter(),
            trace_id=trace.trace_id,
        )
        # Wall clock too, to place the request against its spans (same machine, same clock).
        record.extra["wall_start_ms"] = time.time() * 1000.0
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._send(req, record, trace)
        except TimeoutError:
            record.error = f"timeout: no answer within {self.timeout_s:g} s"
        except RequestFailed as exc:
            record.error = str(exc)[:500]
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:500]
        if record.end == 0.0 or record.error is not None:
            record.end = time.perf_counter()
        return record

    @abstractmethod
    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        """Do the request: stamp ``record.first_token`` and ``record.end`` (when the last answer
        arrived; else the return is used) and fill the token counts."""
