"""The gateway's logic, shared by its transports (gRPC, HTTP): validate, publish, wait, cancel.

The gateway consumes no stage's events of its own: these are its handlers of caller requests,
with no transport imports. ``grpc_service`` and ``http_api`` (with ``openai``, the OpenAI
bodies) are the thin transports; ``replies`` hands results and tokens to the local waiters.

Hot path of an anonymous request: validate, register a local waiter, publish to
``genwire.requests`` naming this instance's reply partition (``genwire_reply_to``) and wait
for the reply reader to hand over the result. No Redis round trip, no per-request consumer,
no polling. Named requests (caller-chosen id) add one Redis round trip for the idempotency
claim (one script: with an API key, the id's owner is recorded in it too); nothing after the
result (postprocess keeps the claim as long as the result when it stores it).

Redis is read only off that path: a request another call published (a repeat of a named
request, ``get_result``) is looked up right after its waiter registers and then every
``result_poll_s``, since its replies go to whichever instance published it; a waiter whose
reply partition moved to another instance (a rebalance) does the same from then on; and every
wait has a last look at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from genwire.errors import PermanentError
from genwire.events import (
    ControlEvent,
    ErrorInfo,
    GenerationResult,
    OutputLogprob,
    TokenEvent,
    Usage,
    now_ms,
)
from genwire.kafka import EventProducer
from genwire.request import ErrorCode, GenerationRequest, validate_request
from genwire.results import ClaimOutcome, ResultStore
from genwire.telemetry import semconv as sc
from genwire.topics import ReplyTo
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import IDEMPOTENCY_CONFLICT, GatewayError
from genwire_gateway.replies import Failure, Moved, StreamItem, Waiter, WaiterRegistry

log = logging.getLogger(__name__)

_EVENT_TYPE = (sc.HEADER_EVENT_TYPE, b"GenerationRequest")


class ResultStatus:
    """Answers of ``get_result``."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed answer; the last has ``final`` set and carries the result.

    With ``n > 1`` pieces of the choices interleave (``choice``); a choice's last piece has
    its ``finish_reason``; the request's very last piece is ``final``.
    """

    index: int
    text: str
    final: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    result: GenerationResult | None = None
    choice: int = 0
    logprobs: list[OutputLogprob] | None = None
    """The logprobs of the tokens of this piece (when the request asked for them)."""


@dataclass(frozen=True)
class Prepared:
    """A validated request, its Kafka value, and whether its caller named it (idempotency)."""

    request: GenerationRequest
    value: bytes
    """The request's JSON, as published on ``genwire.requests``."""
    named: bool
    timeout_s: float

    @property
    def request_id(self) -> str:
        """The request's id (always set once prepared)."""
        assert self.request.request_id is not None
        return self.request.request_id


class ReplyRoute(Protocol):
    """Names the reply partition of a request (``replies.ReplyReader``)."""

    def reply_to(self, request_id: str) -> ReplyTo | None: ...


def new_request_id() -> str:
    """An id for a request whose caller named none."""
    return uuid.uuid4().hex


def raise_for_error(result: GenerationResult) -> GenerationResult:
    """Return ``result``, or raise its error as a ``GatewayError``."""
    if result.error is not None:
        raise GatewayError(result.error.message, code=result.error.code, param=result.error.param)
    return result


class Gateway:
    """Turns caller requests into Kafka events and waits for their results."""

    def __init__(
        self,
        settings: GatewaySettings,
        producer: EventProducer,
        store: ResultStore,
        registry: WaiterRegistry,
        replies: ReplyRoute | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.store = store
        self.registry = registry
        self.replies = replies
        """None: no direct replies (every wait looks in Redis)."""
        self._background: set[asyncio.Task[None]] = set()
        self.instance_id = uuid.uuid4().hex[:16]
        """Names this instance in the requests it publishes and in its heartbeats."""
        self._origin = (sc.HEADER_ORIGIN, self.instance_id.encode())

    # -- validation ---------------------------------------------------------------------------

    def timeout_for(self, caller_timeout_s: float | None) -> float:
        """The wait a caller gets: its own deadline, else the default; never above the max."""
        wanted = self.settings.request_timeout_s if caller_timeout_s is None else caller_timeout_s
        return max(0.0, min(wanted, self.settings.max_timeout_s))

    def margin_for(self, timeout_s: float) -> float:
        """How much sooner than the caller's wait the pipeline stops: the time a partial result
        needs to come back (a fifth of a short wait, so the work keeps most of it)."""
        return min(self.settings.deadline_margin_s, timeout_s / 5)

    def prepare(
        self,
        fields: Mapping[str, Any],
        *,
        request_id: str | None = None,
        stream: bool = False,
        timeout_s: float | None = None,
    ) -> Prepared:
        """Validate like preprocess does (same model, same codes); raises ``GatewayError``."""
        timeout = self.timeout_for(timeout_s)
        received = now_ms()
        body = {k: v for k, v in fields.items() if v is not None}
        body["request_id"] = request_id or new_request_id()
        body["stream"] = stream
        body["received_ms"] = received
        body["deadline_ms"] = received + (timeout - self.margin_for(timeout)) * 1000.0
        try:
            request, value = validate_request(body)
        except PermanentError as exc:
            raise GatewayError(exc.message, code=exc.code, param=exc.param) from None
        return Prepared(request, value, named=request_id is not None, timeout_s=timeout)

    async def admit(self, batch: Sequence[Prepared]) -> list[Prepared]:
        """Admit a batch of prompts as one, before any of them runs (``usage.MeteredGateway``:
        all or none against the caller's limits); here there are no limits."""
        return list(batch)

    # -- unary --------------------------------------------------------------------------------

    async def generate(self, prepared: Prepared) -> GenerationResult:
        """Publish (unless an identical named request exists) and wait for the result."""
        deadline = time.monotonic() + prepared.timeout_s
        rid = prepared.request_id
        claim = await self._claim(prepared)
        if claim.result is not None:
            return raise_for_error(claim.result)
        reply = self._reply_to(rid) if claim.owner else None
        with self.registry.waiting(rid, reply_partition=_partition(reply)) as waiter:
            if claim.owner:
                await self._publish(prepared, waiter, reply)
            else:  # another call owns it (maybe on another instance): wait for its result
                stored = await self._stored(rid)
                if stored is not None:
                    return raise_for_error(stored)
            result = await self._wait(waiter, deadline, owner=claim.owner, keep=prepared.named)
        return raise_for_error(result)

    async def _wait(
        self, waiter: Waiter, deadline: float, *, owner: bool, keep: bool = False
    ) -> GenerationResult:
        """Wait for the result (``_result``); cancel on expiry.

        A caller who leaves cancels the work, unless it is ``keep`` (named: the caller's retry
        collects it) — the same rule inference applies when a whole gateway dies.
        """
        rid = waiter.request_id
        try:
            result = await self._result(waiter, deadline)
            if result is None:
                raise self._expired(rid, owner)
            return result
        except asyncio.CancelledError:  # the caller went away: stop the work downstream
            if owner and not keep:
                self.cancel_soon(rid, "caller cancelled")
            raise

    async def _result(self, waiter: Waiter, deadline: float) -> GenerationResult | None:
        """The waiter's result, or None at the deadline.

        A direct waiter waits for its reply, no Redis read; any other (or one whose reply
        partition moved) looks in Redis at once and then every ``result_poll_s``. Either takes
        a last look in Redis at the deadline.
        """
        rid = waiter.request_id
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self._stored(rid)
            if waiter.direct:
                await asyncio.wait(
                    (waiter.result, waiter.moved),
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            else:
                await asyncio.wait(
                    (waiter.result,), timeout=min(remaining, self.settings.result_poll_s)
                )
            if waiter.result.done():
                return waiter.result.result()
            if not waiter.direct:  # polled, or moved just now
                stored = await self._stored(rid)
                if stored is not None:
                    return stored

    def _expired(self, request_id: str, owner: bool) -> GatewayError:
        if owner:
            self.cancel_soon(request_id, "deadline exceeded")
        return GatewayError(
            f"no result for {request_id} before the deadline", code=ErrorCode.DEADLINE_EXCEEDED
        )

    # -- streaming ----------------------------------------------------------------------------

    async def stream(self, prepared: Prepared) -> AsyncIterator[Chunk]:
        """Publish a streamed request and yield its text chunks, then a final chunk.

        A repeat of a named request (its tokens were or are being streamed to its first
        caller) gets the whole result as one final chunk.
        """
        deadline = time.monotonic() + prepared.timeout_s
        rid = prepared.request_id
        claim = await self._claim(prepared)
        if claim.result is not None:
            for chunk in _tails(raise_for_error(claim.result), {}, {}, 0):
                yield chunk
            return
        if not claim.owner:
            with self.registry.waiting(rid) as waiter:
                stored = await self._stored(rid)
                result = stored or await self._wait(waiter, deadline, owner=False)
            for chunk in _tails(raise_for_error(result), {}, {}, 0):
                yield chunk
            return
        reply = self._reply_to(rid)
        with self.registry.waiting(rid, stream=True, reply_partition=_partition(reply)) as waiter:
            await self._publish(prepared, waiter, reply)
            finished = False
            try:
                async with contextlib.aclosing(self._chunks(waiter, deadline)) as chunks:
                    async for chunk in chunks:
                        finished = chunk.final
                        yield chunk
            finally:
                # The caller left, or the wait failed before any result: stop generating,
                # unless the caller named the request (its retry collects the result).
                if not finished and not waiter.result.done() and not prepared.named:
                    self.cancel_soon(rid, "stream abandoned")

    async def _chunks(self, waiter: Waiter, deadline: float) -> AsyncGenerator[Chunk, None]:
        """Chunks from the waiter's queue, deduplicated by character offset.

        Direct: no Redis read until the deadline. Once its reply partition moved, the rest
        comes from Redis (the result: its text past what was yielded is the final chunk).
        """
        assert waiter.chunks is not None
        held: dict[int, int] = {}  # characters of text already yielded, by choice
        held_lps: dict[int, int] = {}  # logprobs already yielded, by choice
        index = 0
        while True:
            remaining = deadline - time.monotonic()
            item: StreamItem | None
            if remaining <= 0:
                stored = await self._stored(waiter.request_id)  # a last look
                if stored is None:
                    raise GatewayError(
                        f"{waiter.request_id} did not finish before the deadline",
                        code=ErrorCode.DEADLINE_EXCEEDED,
                    )
                item = stored
            else:
                try:  # what is queued already needs no timer (one per piece adds up)
                    item = waiter.chunks.get_nowait()
                except asyncio.QueueEmpty:
                    item = await self._next_item(waiter, remaining)
                if item is None or isinstance(item, Moved):
                    if waiter.direct:
                        continue  # a direct wait timed out: the deadline; the loop looks last
                    stored = await self._stored(waiter.request_id)
                    if stored is None:
                        continue
                    item = stored
            if isinstance(item, Failure):
                raise item.exc
            if isinstance(item, TokenEvent):
                c = item.choice
                new = _new_text(item, held.get(c, 0))
                lps = _new_logprobs(item, held_lps.get(c, 0))
                if new or lps:
                    held[c] = held.get(c, 0) + len(new)
                    if lps:
                        held_lps[c] = held_lps.get(c, 0) + len(lps)
                    yield Chunk(index=index, text=new, choice=c, logprobs=lps)
                    index += 1
                continue
            assert isinstance(item, GenerationResult)
            for chunk in _tails(raise_for_error(item), held, held_lps, index):
                yield chunk
            return

    async def _next_item(self, waiter: Waiter, remaining: float) -> StreamItem | None:
        """The waiter's next queued item, or None when the wait (direct: the deadline; else
        ``result_poll_s``) ends first."""
        assert waiter.chunks is not None
        wait = remaining if waiter.direct else min(remaining, self.settings.result_poll_s)
        try:
            async with asyncio.timeout(wait):
                return await waiter.chunks.get()
        except TimeoutError:
            return None

    # -- asynchronous -------------------------------------------------------------------------

    async def submit(self, prepared: Prepared) -> str:
        """Accept a request: published and acknowledged by the broker (or already known)."""
        try:
            claim = await self.store.claim(
                prepared.request,
                self.settings.max_timeout_s + self.settings.claim_grace_s,
                published=prepared.value,
            )
        except Exception as exc:  # Redis down or full: the caller may retry, as for generate
            log.warning("idempotency claim of %s failed (Redis): %s", prepared.request_id, exc)
            raise _unavailable(exc) from exc
        if claim.conflict:
            raise _conflict(prepared.request_id, claim.refused)
        self.claimed(prepared, claim)
        if claim.owner:
            try:
                await (await self._send(prepared))
            except Exception as exc:
                await self._release(prepared)
                raise _unavailable(exc) from exc
        return prepared.request_id

    async def get_result(
        self, request_id: str, wait_s: float = 0.0
    ) -> tuple[str, GenerationResult | None]:
        """(status, result) of a request; waits up to ``wait_s`` for a pending one."""
        stored = await self._stored(request_id)
        if stored is None and wait_s > 0:
            deadline = time.monotonic() + wait_s
            with self.registry.waiting(request_id) as waiter:
                stored = await self._stored(request_id)
                if stored is None:
                    stored = await self._result(waiter, deadline)
        if stored is not None:
            return (ResultStatus.FAILED if stored.error else ResultStatus.DONE), stored
        known = await self.store.known(request_id)
        return (ResultStatus.PENDING if known else ResultStatus.NOT_FOUND), None

    async def known(self, request_id: str) -> bool:
        """Whether ``request_id`` names a request: waited for here, claimed by the pipeline
        (preprocess claims every id it accepts), or with a stored result. A request still in
        ``genwire.requests`` and sent by another instance is not known yet."""
        if self.registry.wants(request_id):
            return True
        try:
            if await self.store.known(request_id):
                return True
            return await self.store.get(request_id) is not None
        except Exception as exc:  # Redis down: say what is known here only
            log.warning("Redis lookup of %s failed: %s", request_id, exc)
            return False

    async def cancel(self, request_id: str, reason: str = "") -> bool:
        """A caller's cancel (gRPC ``Cancel``): publish it; whether it was published (here
        always; ``usage.MeteredGateway`` publishes none for an id a non-admin key cannot name,
        so that nobody cancels a request before its sender sends it)."""
        await self.publish_cancel(request_id, reason)
        return True

    async def publish_cancel(self, request_id: str, reason: str = "") -> None:
        """Publish a cancel for ``request_id`` and wait for the broker's acknowledgement (the
        gateway's own cancels come here straight: deadlines, callers that left)."""
        event = ControlEvent(request_id=request_id, action="cancel", reason=reason)
        try:
            await self.producer.publish_and_wait(event)
        except Exception as exc:
            raise _unavailable(exc) from exc

    def cancel_soon(self, request_id: str, reason: str) -> None:
        """Cancel in the background (callers that are themselves being cancelled use this)."""
        self._background_task(self._cancel_quietly(request_id, reason))

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` off the caller's path, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_quietly(self, request_id: str, reason: str) -> None:
        try:
            await self.publish_cancel(request_id, reason)
        except Exception as exc:
            log.warning("could not publish the cancel of %s: %s", request_id, exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let background cancels reach the broker before the producer stops."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    # -- plumbing -----------------------------------------------------------------------------

    async def _claim(self, prepared: Prepared) -> ClaimOutcome:
        if not prepared.named:
            return ClaimOutcome(owner=True)
        try:
            claim = await self.claim_named(prepared)
        except GatewayError:
            raise
        except Exception as exc:
            log.warning("idempotency claim of %s failed (Redis): %s", prepared.request_id, exc)
            raise _unavailable(exc) from exc
        if claim.conflict:
            raise _conflict(prepared.request_id, claim.refused)
        self.claimed(prepared, claim)
        return claim

    def claimed(self, prepared: Prepared, claim: ClaimOutcome) -> None:
        """Told how a named (or submitted) request's claim went (``usage.MeteredGateway``: a
        repeat, answered by another call's generation, is not metered again)."""

    async def claim_named(self, prepared: Prepared) -> ClaimOutcome:
        """The claim's round trip (``usage.MeteredGateway`` also records the caller's key as
        the id's owner in it, and refuses another key's id)."""
        return await self.store.claim(
            prepared.request,
            prepared.timeout_s + self.settings.claim_grace_s,
            published=prepared.value,
        )

    async def _release(self, prepared: Prepared) -> None:
        try:
            await self.store.release(prepared.request_id)
        except Exception as exc:
            log.warning("could not release the claim of %s: %s", prepared.request_id, exc)

    async def _stored(self, request_id: str) -> GenerationResult | None:
        try:
            return await self.store.get(request_id)
        except Exception as exc:  # Redis is the fallback path: its failure must not end a wait
            log.warning("Redis lookup of %s failed: %s", request_id, exc)
            return None

    def _reply_to(self, request_id: str) -> ReplyTo | None:
        return self.replies.reply_to(request_id) if self.replies is not None else None

    async def _send(
        self, prepared: Prepared, reply: ReplyTo | None = None
    ) -> asyncio.Future[object]:
        key = prepared.request_id.encode()
        topic = self.settings.requests_topic
        # Who waits, whether the work outlives this instance (named: a retry collects it), and
        # where its replies go.
        headers = [_EVENT_TYPE, self._origin, (sc.HEADER_KEEP, b"1" if prepared.named else b"0")]
        if reply is not None:
            headers.append((sc.HEADER_REPLY_TO, reply.encode()))
        headers.extend(self.request_headers(prepared))
        return await self.producer.send(topic, prepared.value, key=key, headers=headers)

    def request_headers(self, prepared: Prepared) -> list[tuple[str, bytes]]:
        """More headers for a published request (``usage.MeteredGateway``: who sent it)."""
        return []

    async def heartbeat(self) -> None:
        """Say this instance lives, every ``heartbeat_interval_s``, until cancelled."""
        beat = ControlEvent(request_id="", action="heartbeat", origin=self.instance_id)
        while True:
            try:
                await self.producer.publish(beat, traced=False)
            except Exception as exc:  # the broker is down: requests cannot flow either
                log.debug("heartbeat not published: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _publish(self, prepared: Prepared, waiter: Waiter, reply: ReplyTo | None) -> None:
        """Queue the request; a failed delivery ends the wait with UNAVAILABLE."""
        try:
            ack = await self._send(prepared, reply)
        except Exception as exc:
            if prepared.named:
                await self._release(prepared)
            raise _unavailable(exc) from exc

        def _delivered(fut: asyncio.Future[object]) -> None:
            if fut.cancelled():
                # Our producer dropped the record (replaced after a fatal error): a failure of
                # ours, retryable, not the caller leaving.
                waiter.fail(_unavailable(RuntimeError("its publish was cancelled")))
            elif fut.exception() is not None:
                waiter.fail(_unavailable(fut.exception()))

        # Not awaited: the result takes longer than the acknowledgement, and awaiting would
        # add the acknowledgement's round trip to the latency for nothing.
        ack.add_done_callback(_delivered)


def _partition(reply: ReplyTo | None) -> int | None:
    return reply.partition if reply is not None else None


def _new_text(token: TokenEvent, held: int) -> str:
    """The part of ``token`` not yet yielded, given ``held`` characters were. None of it when
    it starts past them: a piece before it never came (its publish failed; postprocess states
    it again when it retries), and yielding this one would leave a hole the caller cannot see.
    The pieces from the missing one on come again or with the result (``_tails``)."""
    skip = held - token.text_offset
    if skip < 0:
        return ""
    return token.text[skip:]


def _new_logprobs(token: TokenEvent, held: int) -> list[OutputLogprob] | None:
    """The logprobs of ``token`` not yet yielded, given ``held`` were (none past a gap, as
    ``_new_text``)."""
    if not token.logprobs or token.logprob_offset > held:
        return None
    return token.logprobs[held - token.logprob_offset :] or None


def _tails(
    result: GenerationResult, held: dict[int, int], held_lps: dict[int, int], index: int
) -> list[Chunk]:
    """The last piece of every choice (the text and logprobs past what was yielded, and its
    finish reason); the request's last piece is ``final`` and carries the result."""
    choices = result.all_choices()
    out = []
    for k, choice in enumerate(choices):
        c = choice.index
        lps = choice.logprobs[held_lps.get(c, 0) :] if choice.logprobs is not None else None
        last = k == len(choices) - 1
        out.append(
            Chunk(
                index=index + k,
                text=choice.text[held.get(c, 0) :],
                final=last,
                finish_reason=choice.finish_reason,
                usage=result.usage if last else None,
                result=result if last else None,
                choice=c,
                logprobs=lps,
            )
        )
    return out


def _conflict(request_id: str, refused: ErrorInfo | None = None) -> GatewayError:
    """409: the id belongs to another request; when that one was refused, the refusal is
    quoted (its code and message, never its text): a caller who corrected a refused request
    and sent it under the same key learns why the key is used up."""
    why = ""
    if refused is not None:
        why = (
            f" (which was refused: {refused.code}: {refused.message}); send the corrected "
            "request under a new key"
        )
    return GatewayError(
        f"request id {request_id!r} was already used for a different request{why}",
        code=IDEMPOTENCY_CONFLICT,
    )


def _unavailable(exc: BaseException | None) -> GatewayError:
    return GatewayError(f"the pipeline is unavailable: {exc}", code=ErrorCode.UNAVAILABLE)
