"""Many generations on one Triton gRPC stream (``ModelStreamInfer``), responses routed by id.

Used by the inference service's backend and by ``genwire model bench --shared-stream`` (the
way the service talks to Triton); only Triton's callers import it (it needs tritonclient).

A stream per request costs Triton, the model's stub and this client a call set-up and
tear-down each (1.2–2.5 core-ms per request at the echo model's floor, and a millisecond of
time to first token): here requests share one call. Three things make that safe:

- **Cancelling one request**: cancelling the call would stop every request on it, so a
  request is cancelled by a cancel message on the same stream (``CANCEL_PARAMETER``), which
  only model versions that understand it receive: each (model, version) is probed once
  (``CANCEL_ACK_PROBE``: an empty final response says yes); the others keep one call each.
- **Unloading**: Triton 2.51 keeps a model version UNLOADING while a stream that carried its
  requests stays open, so each version has its own call, which takes new requests for
  ``rotate_s`` only (busy or idle); then a new call takes them and the old one is half-closed
  once its last request ends. An unload therefore waits ``rotate_s`` at most beyond the
  version's own requests in flight (as it always waits for those).
- **Failures**: a call that fails fails every request on it with the call's status, read by
  ``classify_status`` as for a call of their own (Triton restarting: retryable; a status that
  waiting will not change, ``UNIMPLEMENTED`` say: permanent); the next request opens a new one.
  Every request asks for an empty final response, so a request the model ends with the final
  flag alone (a send that failed) is seen ending, instead of waiting for ever.

The public ``stream_infer`` of tritonclient's asyncio client drops a failed response's request
id, which routing needs: calls go through the client's gRPC stub with the request built by
tritonclient's own helper (``_get_inference_request``; pyproject pins tritonclient's minor
version for these two private names, and the tests exercise both).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from genwire.errors import PermanentError, RetryableError
from genwire.request import ErrorCode
from genwire.triton_io import CANCEL_ACK_PROBE, CANCEL_PARAMETER, infer_inputs

log = logging.getLogger(__name__)

TRITON = "triton"
"""The dependency name of the model server in readiness reasons, logs and metrics."""
PROBE_TIMEOUT_S = 10.0
"""How long a version's cancel probe may take before the request is retried."""
DRAIN_TIMEOUT_S = 30.0
"""A half-closed call still open this long after its last request (a model that never sends
its final flag) is cancelled."""

# gRPC status codes (of the call, or of Triton's own answers) that mean "not now", not "never":
# the server restarting, overloaded, or the call cut off.
_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


def classify_status(code: grpc.StatusCode | None, message: str) -> RetryableError | PermanentError:
    """A Triton failure by its gRPC status code: retry later, or a model error for good. The
    one rule for a call of a request's own and a shared call (``Call``)."""
    if code is None or code in _RETRYABLE_CODES:
        return RetryableError(
            f"triton: {code.name if code else 'no status'}: {message}",
            code=ErrorCode.UNAVAILABLE,
            dependency=TRITON,
        )
    return PermanentError(f"triton: {code.name}: {message}", code=ErrorCode.INFERENCE_FAILED)


_FINAL = "triton_final_response"
_EMPTY_FINAL = "triton_enable_empty_final_response"  # reserved prefix: set on the message


class StreamClosed(Exception):
    """The shared call ended before this request's last response (carries the cause: its
    status as ``classify_status`` reads it)."""

    def __init__(self, error: RetryableError | PermanentError) -> None:
        super().__init__(error.message)
        self.error = error


def build_request(
    model: str,
    version: str,
    inputs: list[Any],
    request_id: str,
    parameters: dict[str, str] | None = None,
    *,
    empty_final: bool = False,
) -> Any:
    """A ``ModelInferRequest`` message (tritonclient's own builder)."""
    message = _get_inference_request(
        model_name=model,
        inputs=inputs,
        model_version=version,
        request_id=request_id,
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=parameters,
    )
    if empty_final:
        message.parameters[_EMPTY_FINAL].bool_param = True
    return message


def cancel_request(model: str, version: str, target: str, request_id: str) -> Any:
    """The message that cancels ``target`` on its stream (a minimal valid request, which a
    model that understands ``CANCEL_PARAMETER`` never generates for)."""
    inputs = infer_inputs(
        [0], max_tokens=1, temperature=0.0, top_p=1.0, top_k=0, seed=0, stream=False
    )
    return build_request(
        model, version, inputs, request_id, {CANCEL_PARAMETER: target}, empty_final=True
    )


def is_final(response: Any) -> bool:
    """Whether a stream response is its request's last (Triton's decoupled final flag)."""
    flag = response.infer_response.parameters.get(_FINAL)
    return bool(flag is not None and flag.bool_param)


class Call:
    """One ``ModelStreamInfer`` call shared by many requests."""

    def __init__(self, start: Callable[[AsyncIterator[Any]], Any], on_end: Callable[[Call], None]):
        self._outgoing: asyncio.Queue[Any] = asyncio.Queue()  # None: half-close
        self.waiters: dict[str, asyncio.Queue[Any]] = {}
        self.opened = time.monotonic()
        self.retired = False
        self.ended = False
        self._on_end = on_end
        self._drainer: asyncio.Future[None] | None = None
        self._grpc = start(self._requests())
        self.reader = asyncio.ensure_future(self._read())

    async def _requests(self) -> AsyncIterator[Any]:
        while (message := await self._outgoing.get()) is not None:
            yield message

    def send(self, message: Any, request_id: str) -> asyncio.Queue[Any]:
        """Send a request; its responses (and a ``StreamClosed`` at a failure) come on the
        returned queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.waiters[request_id] = queue
        self._outgoing.put_nowait(message)
        return queue

    def send_only(self, message: Any) -> None:
        """Send a message whose responses nobody reads (a cancel)."""
        self._outgoing.put_nowait(message)

    def forget(self, request_id: str) -> None:
        """The request's caller is done with it: later responses are dropped."""
        self.waiters.pop(request_id, None)
        self._close_if_done()

    def retire(self) -> None:
        """Take no new requests; half-close once the last one is done."""
        self.retired = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.retired and not self.waiters and not self.ended:
            self.ended = True
            self._outgoing.put_nowait(None)
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        # Triton completes the call once every request on it sent its final flag.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await asyncio.shield(self.reader)
        if not self.reader.done():
            log.warning("a drained Triton stream did not end in %.0f s: cancelled", DRAIN_TIMEOUT_S)
            self._grpc.cancel()

    async def _read(self) -> None:
        error: RetryableError | PermanentError | None = None
        try:
            async for response in self._grpc:
                queue = self.waiters.get(response.infer_response.id)
                if queue is not None:
                    queue.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            # As a call of the request's own: UNIMPLEMENTED or PERMISSION_DENIED (say) will
            # not pass by waiting, and retrying them for the outage budget held the stage.
            error = classify_status(exc.code(), str(exc.details()))
        except asyncio.CancelledError:
            error = RetryableError(
                "triton stream cancelled", code=ErrorCode.UNAVAILABLE, dependency=TRITON
            )
        except Exception as exc:  # the channel itself failed: every request retries
            error = RetryableError(
                f"triton stream failed: {exc}", code=ErrorCode.UNAVAILABLE, dependency=TRITON
            )
        finally:
            self.ended = True
            # Ends the request side: grpc.aio's task writing our requests would otherwise
            # wait on this queue until the dead call is collected ("Task was destroyed but it
            # is pending!", then an aclose() error for the generator), once per Triton failure.
            self._outgoing.put_nowait(None)
            closed = StreamClosed(
                error
                or RetryableError(
                    "triton closed the stream before the final response",
                    code=ErrorCode.UNAVAILABLE,
                    dependency=TRITON,
                )
            )
            for queue in self.waiters.values():
                queue.put_nowait(closed)
            self.waiters.clear()
            self._on_end(self)

    def cancel(self) -> None:
        """End the call now (shutdown): its requests fail as retryable."""
        self.ended = True
        self._grpc.cancel()


class SharedStreams:
    """The current shared call of each (model, version), rotated every ``rotate_s``; the
    retired ones until they end. One call per version: a retired call stays open until its
    last request ends, which must not hold up another version's unload."""

    def __init__(self, start: Callable[[AsyncIterator[Any]], Any], rotate_s: float) -> None:
        self._start = start
        self.rotate_s = rotate_s
        self._current: dict[tuple[str, str], Call] = {}
        self.calls: set[Call] = set()
        self._ids = itertools.count()
        # Triton's request ids must differ between processes too: the model cancels by id
        # whoever sent it, and a redelivered request may run in two instances at once.
        self._prefix = uuid.uuid4().hex[:8]

    def next_id(self, request_id: str) -> str:
        """A Triton request id unique to this process and request (a redelivered request may
        run twice, here or in another instance)."""
        return f"{request_id}#{self._prefix}.{next(self._ids)}"

    def call(self, model: str, version: str) -> Call:
        """The call that takes a new request of ``model`` ``version`` now."""
        key = (model, version)
        current = self._current.get(key)
        if current is not None and (
            current.ended or time.monotonic() - current.opened >= self.rotate_s
        ):
            self._retire(key, current)
            current = None
        if current is None:
            current = Call(self._start, self._ended)
            self._current[key] = current
            self.calls.add(current)
            # Retired on time even when no request comes after it: an idle call that carried
            # a version's requests would keep that version from unloading.
            asyncio.get_running_loop().call_later(self.rotate_s, self._retire, key, current)
        return current

    def _retire(self, key: tuple[str, str], call: Call) -> None:
        if self._current.get(key) is call:
            del self._current[key]
        call.retire()

    def _ended(self, call: Call) -> None:
        self.calls.discard(call)
        for key, current in list(self._current.items()):
            if current is call:
                del self._current[key]

    async def probe(self, model: str, version: str) -> bool | None:
        """Whether ``version`` of ``model`` understands cancel messages (see module doc): an
        empty final response says yes, a generation says no; None when it refused the probe
        with an error (which may be passing: the version loading, say)."""
        call = self.call(model, version)
        probe_id = self.next_id(CANCEL_ACK_PROBE)
        queue = call.send(cancel_request(model, version, CANCEL_ACK_PROBE, probe_id), probe_id)
        generated = False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                while True:
                    response = await queue.get()
                    if isinstance(response, StreamClosed):
                        raise response.error
                    if response.error_message:
                        return None
                    # An older model generates for it (its final flag on the token's response
                    # or alone after it): no.
                    generated = generated or len(response.infer_response.outputs) > 0
                    if is_final(response):
                        return not generated
        except TimeoutError:
            raise RetryableError(
                f"triton: no answer to the cancel probe of {model} {version} in "
                f"{PROBE_TIMEOUT_S:.0f} s",
                code=ErrorCode.UNAVAILABLE,
                dependency=TRITON,
            ) from None
        finally:
            call.forget(probe_id)

    async def close(self, timeout_s: float) -> None:
        """Half-close every call; cancel the ones still open after ``timeout_s``."""
        for call in list(self.calls):
            call.retire()
        self._current.clear()
        readers = [call.reader for call in self.calls]
        if readers:
            _, pending = await asyncio.wait(readers, timeout=timeout_s)
            if pending:
                log.warning("%d shared Triton streams had not ended at close", len(pending))
                for call in list(self.calls):
                    call.cancel()
                await asyncio.wait(pending, timeout=1.0)


class Result:
    """One ``ModelInferResponse`` read as tritonclient's ``InferResult`` reads it
    (``as_numpy`` by output name, ``get_response``), with the same arrays, for less.

    ``InferResult.as_numpy`` walks the response's outputs to find each name, and a response
    of the model contract is read for a dozen names (``parse_response``): indexed by name once
    here, a response is parsed in 28 µs instead of 48 (docs/model.md *Round 12*)."""

    __slots__ = ("_index", "_response")

    def __init__(self, response: Any) -> None:
        self._response = response
        self._index: dict[str, int] = {}
        for i, output in enumerate(response.outputs):
            self._index.setdefault(output.name, i)  # the first of a name, as InferResult

    def get_response(self) -> Any:
        """The ``ModelInferResponse`` itself (model name, version, id, parameters)."""
        return self._response

    def as_numpy(self, name: str) -> npt.NDArray[Any] | None:
        """Output ``name`` as a numpy array of its shape; None when the response has none."""
        i = self._index.get(name)
        if i is None:
            return None
        output = self._response.outputs[i]
        raw = self._response.raw_output_contents
        array: npt.NDArray[Any]
        if i < len(raw):  # Triton's gRPC frontend sends every output's data raw, in order
            if output.datatype == "BYTES":
                array = deserialize_bytes_tensor(raw[i])
            else:
                array = np.frombuffer(raw[i], dtype=_np_dtype(output.datatype))
        elif len(output.contents.bytes_contents) != 0:
            array = np.array(output.contents.bytes_contents)
        else:
            array = np.empty(0, dtype=_np_dtype(output.datatype))
        return array.reshape(tuple(output.shape))


_DTYPES: dict[str, Any] = {}


def _np_dtype(datatype: str) -> Any:
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        dtype = _DTYPES[datatype] = triton_to_np_dtype(datatype)
    return dtype


def result_of(response: Any) -> Result:
    """The response's ``ModelInferResponse`` as a ``Result`` (what ``parse_response`` reads)."""
    return Result(response.infer_response)
