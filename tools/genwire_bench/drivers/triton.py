"""The baseline: the same token ids and sampling sent straight to Triton (tritonclient.grpc.aio).

The request tensors are the inference service's own (``genwire.triton_io.infer_inputs``); with
``max_batch_size > 0`` in the model config every tensor gets a leading batch of 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from tritonclient.grpc import aio as grpcaio

from genwire import triton_admin
from genwire.triton_io import Output, infer_inputs, scalar
from genwire_bench.drivers.base import Driver, RequestFailed, TraceContext
from genwire_bench.records import MODEL_MS, BenchRequest, RequestRecord


def model_ms(final: Any) -> float | None:
    """The model's own time for the request (its queue and compute), from its final response."""
    queue, compute = scalar(final, Output.QUEUE_MS), scalar(final, Output.COMPUTE_MS)
    if queue is None or compute is None:
        return None
    return float(queue) + float(compute)


class TritonDriver(Driver):
    """``ModelStreamInfer`` to the decoupled model, one stream per request."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        version: str = "",
        stream: bool,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(timeout_s)
        self._version = version
        self._batched = False
        self.name = "triton-stream" if stream else "triton"
        self.streaming = stream
        self._url = url
        self._model = model
        self._client: grpcaio.InferenceServerClient | None = None

    async def start(self) -> None:
        """Connect and check the model is ready."""
        self._client = grpcaio.InferenceServerClient(self._url)
        if not await self._client.is_model_ready(self._model, self._version):
            raise RuntimeError(
                f"Triton at {self._url} has no ready model {self._model!r} "
                f"(version {self._version or 'latest'})"
            )
        config = await self._client.get_model_config(
            self._model, self._version, headers=triton_admin.headers(grpc=True), as_json=True
        )
        self._batched = int(config.get("config", {}).get("max_batch_size", 0) or 0) > 0

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            await self._client.close()

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        assert self._client is not None, "start() first"
        done = asyncio.Event()
        request = {
            "model_name": self._model,
            "model_version": self._version,
            "inputs": infer_inputs(
                req.input_ids,
                max_tokens=req.sampling.max_tokens,
                temperature=req.sampling.temperature,
                top_p=req.sampling.top_p,
                top_k=req.sampling.top_k,
                seed=req.sampling.seed,
                stream=self.streaming,
                stop_token_ids=req.stop_token_ids,
                batched=self._batched,
            ),
            "request_id": record.request_id,
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request
            await done.wait()  # keep our side open until the final response is in

        responses = self._client.stream_infer(
            requests(), headers={"traceparent": trace.traceparent}
        )
        ended = False  # Triton sent the request's last response (final or error)
        try:
            async for result, error in responses:
                if error is not None:
                    ended = True
                    raise RequestFailed("triton", str(error))
                ids = result.as_numpy(Output.TOKEN_IDS)
                n = 0 if ids is None else int(ids.size)
                if n:
                    record.chunks += 1
                    record.output_tokens += n
                    if self.streaming and record.first_token is None:
                        record.first_token = time.perf_counter()
                completion = scalar(result, Output.COMPLETION_TOKENS)
                if completion is not None:
                    record.output_tokens = max(record.output_tokens, int(completion))
                prompt = scalar(result, Output.PROMPT_TOKENS)
                if prompt is not None:
                    record.prompt_tokens = int(prompt)
                if bool(scalar(result, Output.FINISHED)):
                    record.end = time.perf_counter()
                    ended = True
                    at_model = model_ms(result)
                    if at_model is not None:
                        record.extra[MODEL_MS] = at_model
                    break
            else:
                raise RequestFailed(
                    "incomplete", "triton ended the stream before the final response"
                )
        finally:
            done.set()
            if ended:
                # Let the answered call complete: cancelling it pins the model version in
                # Triton 2.51 (it never unloads; see genwire_model.client.end_call).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        async for _ in responses:
                            pass
            responses.cancel()  # a no-op once the call completed
