"""The baseline: the same token ids and sampling sent straight to Triton (tritonclient.grpc.aio)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import aio as grpcaio

from genwire_bench.drivers.base import Driver, RequestFailed, TraceContext
from genwire_bench.records import BenchRequest, RequestRecord


def build_inputs(
    req: BenchRequest, stream: bool, batched: bool = False
) -> list[grpcclient.InferInput]:
    """The model contract's inputs for ``req``, as the inference service builds them.

    With ``max_batch_size > 0`` in the model config every tensor gets a leading batch of 1.
    """
    s = req.sampling
    tensors: list[tuple[str, str, np.ndarray[Any, Any]]] = [
        ("input_ids", "INT32", np.asarray(req.input_ids, dtype=np.int32)),
        ("max_tokens", "INT32", np.asarray([s.max_tokens], dtype=np.int32)),
        ("temperature", "FP32", np.asarray([s.temperature], dtype=np.float32)),
        ("top_p", "FP32", np.asarray([s.top_p], dtype=np.float32)),
        ("top_k", "INT32", np.asarray([s.top_k], dtype=np.int32)),
        ("seed", "INT64", np.asarray([s.seed], dtype=np.int64)),
        ("stream", "BOOL", np.asarray([stream], dtype=np.bool_)),
    ]
    if req.stop_token_ids:
        tensors.append(("stop_token_ids", "INT32", np.asarray(req.stop_token_ids, np.int32)))
    inputs = []
    for name, dtype, values in tensors:
        array = values.reshape(1, -1) if batched else values
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _scalar(result: grpcclient.InferResult, name: str) -> Any:
    array = result.as_numpy(name)
    return None if array is None or array.size == 0 else array.reshape(-1)[0]


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
        config = await self._client.get_model_config(self._model, self._version, as_json=True)
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
            "inputs": build_inputs(req, self.streaming, self._batched),
            "request_id": record.request_id,
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request
            await done.wait()  # keep our side open until the final response is in

        responses = self._client.stream_infer(
            requests(), headers={"traceparent": trace.traceparent}
        )
        try:
            async for result, error in responses:
                if error is not None:
                    raise RequestFailed("triton", str(error))
                ids = result.as_numpy("token_ids")
                n = 0 if ids is None else int(ids.size)
                if n:
                    record.chunks += 1
                    record.output_tokens += n
                    if self.streaming and record.first_token is None:
                        record.first_token = time.perf_counter()
                completion = _scalar(result, "completion_tokens")
                if completion is not None:
                    record.output_tokens = max(record.output_tokens, int(completion))
                prompt = _scalar(result, "prompt_tokens")
                if prompt is not None:
                    record.prompt_tokens = int(prompt)
                if bool(_scalar(result, "finished")):
                    record.end = time.perf_counter()
                    break
            else:
                raise RequestFailed(
                    "incomplete", "triton ended the stream before the final response"
                )
        finally:
            done.set()
            responses.cancel()
