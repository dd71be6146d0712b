"""Pure async handlers of the postprocess service (no Kafka or HTTP imports).

GenerationChunk → TokenEvent* (+ GenerationResult on the final chunk).

Streaming: chunks of a request are applied in token order, by their token ``offset``: only
the tokens past those already applied are, so a redelivered chunk, or a retried generation
that replays the same tokens cut into other chunks, adds nothing twice; a chunk past a gap
waits. Text is detokenized incrementally, never splitting a character, and text that might be
the start of a stop sequence (or of an output-filter match) is held until resolved. Each
TokenEvent carries its character offset, so a reader can dedupe exactly. A stop sequence that
ends within the first ``min_tokens`` - 1 tokens is not one (the model went on past it).

A rerun of a chunk (``rerun``: the consumer handles the same record again because its outputs
were not acknowledged, or a replay from ``genwire.retry``) finds its tokens applied already:
it restates what its first run returned (the same TokenEvents, at the same ``text_offset``;
readers dedupe them like any redelivery), since those outputs may never have been published.
Only the last chunk of a stream that produced outputs is kept for that: the consumer reruns a
record before its request's next one starts (``ordered_keys``). A replay from ``genwire.retry``
comes a minute or more later, past the stream's last chunk: it restates nothing, and the piece
it lost is in the final text (readers fill it from the result, as after a restart).

The result is built from the final chunk alone (it carries every generated token id), so it
never depends on having seen the intermediate chunks: a restart loses at most the streamed
pieces, never the answer. The first result stored in Redis wins; a redelivered request gets
that same result again.

``n > 1``: every choice is its own stream (state keyed by request id and choice); the final
chunk carries every choice (``GenerationChunk.choices``) and each choice's stream ends with its
own final TokenEvent. Logprobs (when asked for) are turned from token ids into token text and
offsets here (``logprobs.py``), cut where the text is cut, and streamed with the text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from genwire.errors import GenwireError
from genwire.events import (
    ChoiceOutput,
    ControlEvent,
    ErrorInfo,
    Event,
    GenerationChunk,
    GenerationResult,
    OutputLogprob,
    ResultChoice,
    ShadowResult,
    TokenEvent,
    Usage,
    now_ms,
)
from genwire.filters import ContentFilter
from genwire.policy import ARM_ATTRIBUTE, SHADOW_ATTRIBUTE
from genwire.request import MAX_N, ErrorCode
from genwire.results import replaceable
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore, ModelAssets
from genwire.usage import SOURCE_KAFKA, UsageEvent
from genwire_postprocess.logprobs import LogprobTracker, TokenTexts, output_logprobs
from genwire_postprocess.text import (
    IncrementalDetokenizer,
    find_stop,
    partial_stop_start,
    stop_floor,
    truncate_at_stop,
)

log = logging.getLogger(__name__)

FINISH_STOP = "stop"
FINISH_CONTENT_FILTER = "content_filter"
MAX_PENDING_CHUNKS = 256
THREAD_MIN_WORK = 2_048
"""A result whose building decodes at least this many tokens (generated tokens, times 1 +
``top_logprobs`` when logprobs are asked for) is built in a worker thread, not on the event
loop: n=16 x 250 tokens x 20 alternatives took 0.3-0.7 s, during which no other request moved.
At it, the build takes about 3-8 ms of CPU; below it the thread hop (~0.1 ms and a GIL
hand-over) is not worth it."""


class ResultWriter(Protocol):
    """Stores a result unless one exists; returns the one that is stored
    (``genwire.results.ResultStore``; the unit tests use a dict)."""

    async def put_first(self, result: GenerationResult) -> GenerationResult: ...


@dataclass
class _Stream:
    """Streaming state of one request."""

    detok: IncrementalDetokenizer | None  # None while the model's tokenizer loads
    stops: list[str]
    pending: dict[int, GenerationChunk] = field(default_factory=dict)  # by token offset
    text: str = ""  # all text decoded so far
    emitted: int = 0  # characters already published
    next_token_index: int = 0
    stream: bool = True  # False: chunks only to catch stop sequences early (no TokenEvents)
    ended: bool = False  # a stop sequence or filter hit: nothing more is streamed
    touched: float = field(default_factory=time.monotonic)
    choice: int = 0
    logprobs: LogprobTracker | None = None  # when the request asked for logprobs
    n: int = 1
    min_tokens: int = 0
    floor: int | None = None  # ``stop_floor`` once the first min_tokens - 1 tokens are in
    sent: tuple[tuple[int, int, int], list[Event]] | None = None
    """What the last chunk that produced outputs returned, by its ``_ident``: restated on its
    rerun (only that one: bounded memory, logprobs included)."""

    @property
    def applied(self) -> list[int]:
        """The token ids applied so far (their text is in ``text`` or held by ``detok``)."""
        return self.detok.ids if self.detok is not None else []

    def stop_floor(self) -> int:
        """Characters of ``text`` no stop sequence may end in (``text.stop_floor``)."""
        if self.floor is not None:
            return self.floor
        if self.detok is None or len(self.applied) < self.min_tokens - 1:
            return len(self.text)  # all of it comes from tokens before min_tokens
        self.floor = stop_floor(self.detok.decode, self.applied, self.min_tokens)
        return self.floor


def _key(request_id: str, choice: int) -> str:
    """The streaming state's key: the request id (choice 0) or the id and the choice."""
    return request_id if choice == 0 else f"{request_id}\x00{choice}"


class Postprocessor:
    """The postprocess stage's logic: per-request streaming state, results, the store."""

    def __init__(
        self,
        assets: AssetStore,
        store: ResultWriter,
        *,
        output_filter: ContentFilter | None = None,
        filter_holdback_chars: int = 32,
        state_ttl_s: float = 600.0,
        max_states: int = 100_000,
        trace_content: bool = False,
        on_result: Callable[[GenerationResult], None] | None = None,
    ) -> None:
        self.assets = assets
        self.store = store
        self.output_filter = output_filter or ContentFilter([])
        self.holdback = filter_holdback_chars if self.output_filter else 0
        self.state_ttl_s = state_ttl_s
        self.max_states = max_states
        self.trace_content = trace_content
        self.on_result = on_result
        self.streams: OrderedDict[str, _Stream] = OrderedDict()
        self._blind: OrderedDict[str, float] = OrderedDict()  # joined mid-stream: wait for final
        self._texts: dict[tuple[str, str], tuple[ModelAssets, TokenTexts]] = {}

    async def handle(
        self, chunk: GenerationChunk, *, usage_of: str | None = None, rerun: bool = False
    ) -> list[Event]:
        """Apply one chunk; return the TokenEvents (and on the final chunk, the result).

        ``usage_of``: a request no gateway meters (a Kafka client's): its final chunk also
        returns a ``UsageEvent`` attributed to that name, once per request id (docs/security.md).
        ``rerun``: this record was handled before and its outputs may not have been published:
        a chunk already applied restates what it returned then.
        """
        if chunk.shadow:
            return await self._shadow(chunk)  # a shadow copy is never metered
        if chunk.final:
            return await self._final(chunk, usage_of)
        return await self._stream(chunk, rerun)

    def token_texts(self, assets: ModelAssets) -> TokenTexts:
        """The cache of single tokens' text of a model version (one per loaded version)."""
        key = (assets.name, assets.version)
        known = self._texts.get(key)
        if known is None or known[0] is not assets:  # first use, or the version reloaded
            known = self._texts[key] = (assets, TokenTexts(assets.decode))
        return known[1]

    # -- streaming --------------------------------------------------------------------------

    async def _stream(self, chunk: GenerationChunk, rerun: bool = False) -> list[Event]:
        rid = _key(chunk.request_id, chunk.choice)
        state = self.streams.get(rid)
        if state is None:
            if chunk.index != 0 or rid in self._blind:
                # We did not see the start (a restart): stream nothing; the final chunk
                # still gives the whole text (at offset 0) and the result.
                self._blind[rid] = time.monotonic()
                self._evict()
                return []
            return await self._new_stream(chunk)
        state.touched = time.monotonic()
        self.streams.move_to_end(rid)
        if rerun and state.sent is not None and state.sent[0] == _ident(chunk):
            # Its tokens are applied: as a duplicate it would add nothing, but its first run's
            # outputs may be the ones never published. Restated as they were (same offsets).
            return list(state.sent[1])
        if state.ended:
            return []  # already stopped
        _hold(state, chunk)
        if state.detok is None:  # chunk 0's handler applies them once the tokenizer is loaded
            self._check_gap(rid, chunk, state)
            return []
        new_text = self._apply(state)
        if new_text is None:
            self._give_up(rid, chunk, "differs from the tokens already applied")
            return []
        state.text += new_text
        if self._check_gap(rid, chunk, state):
            return []
        out = self._emit(chunk.request_id, state, final=False)
        if out:
            state.sent = (_ident(chunk), out)
        return out

    def _check_gap(self, rid: str, chunk: GenerationChunk, state: _Stream) -> bool:
        """Give up streaming a request whose gap never fills (too many chunks wait past it);
        whether it was given up."""
        if len(state.pending) <= MAX_PENDING_CHUNKS:
            return False
        self._give_up(rid, chunk, f"waits with {len(state.pending)} others past a gap")
        return True

    def _apply(self, state: _Stream) -> str | None:
        """Feed the waiting chunks' tokens past those applied, in token order; return the new
        text (None: a chunk's tokens disagree with those applied at the same positions)."""
        assert state.detok is not None
        new_text = ""
        while state.pending:
            applied = state.applied
            done = [o for o, c in state.pending.items() if _end(c) <= len(applied)]
            for offset in done:  # wholly applied already: a redelivery, a retry's replay
                if not _agrees(state.pending.pop(offset), applied):
                    return None
            ready = [c for c in state.pending.values() if c.offset <= len(applied)]
            if not ready:
                break  # a gap: what follows it waits
            chunk = max(ready, key=_end)
            del state.pending[chunk.offset]
            if not _agrees(chunk, applied):
                return None
            new_text += self._feed(state, chunk, len(applied) - chunk.offset, new_text)
        return new_text

    def _feed(self, state: _Stream, chunk: GenerationChunk, skip: int, before: str) -> str:
        """The text of ``chunk``'s tokens from its ``skip``-th on (``before``: text decoded
        ahead of them in this round, not yet in ``state.text``)."""
        assert state.detok is not None
        ids = chunk.token_ids[skip:]
        if state.logprobs is None:
            return state.detok.feed(ids)
        new_text = ""
        for i, token_id in enumerate(ids, start=skip):  # token by token: each one's offset
            lp = chunk.logprobs[i] if chunk.logprobs and i < len(chunk.logprobs) else None
            state.logprobs.add(token_id, lp, len(state.text) + len(before) + len(new_text))
            new_text += state.detok.feed([token_id])
        return new_text

    def _give_up(self, rid: str, chunk: GenerationChunk, why: str) -> None:
        """Stop streaming a request, loudly: its final piece restates the whole text at
        offset 0 (a replay whose tokens differ, though the seed should make them equal; a gap
        that never fills)."""
        log.warning(
            "request %s choice %d: chunk %d (tokens %d-%d) %s; no more streaming, the final "
            "piece restates the whole text",
            chunk.request_id,
            chunk.choice,
            chunk.index,
            chunk.offset,
            _end(chunk),
            why,
        )
        self.streams.pop(rid, None)
        self._blind[rid] = time.monotonic()

    async def _new_stream(self, chunk: GenerationChunk) -> list[Event]:
        """Start the state of a request at its chunk 0, then apply that chunk.

        The state is registered before the tokenizer is awaited (a first use loads it in a
        thread): chunks handled concurrently meanwhile queue in it instead of finding no state
        and giving up streaming the request.
        """
        rid = _key(chunk.request_id, chunk.choice)
        stops = list(chunk.sampling.stop) if chunk.sampling else []
        state = _Stream(None, stops, stream=chunk.stream, choice=chunk.choice)
        if chunk.sampling is not None:
            state.n = chunk.sampling.n
            state.min_tokens = chunk.sampling.min_tokens
        self.streams[rid] = state
        self._evict()
        try:
            assets = await self.assets.aget(chunk.model, chunk.model_version or None)
        except BaseException:
            if self.streams.get(rid) is state:
                del self.streams[rid]
            raise
        if self.streams.get(rid) is not state:
            return []  # the final chunk (or eviction) came first
        state.detok = IncrementalDetokenizer(assets.decode)
        if chunk.sampling is not None and chunk.sampling.logprobs:
            state.logprobs = LogprobTracker(self.token_texts(assets))
        return await self._stream(chunk)

    def _emit(self, rid: str, state: _Stream, *, final: bool) -> list[Event]:
        """Publish what is safe of ``state.text`` past ``state.emitted``.

        At a stop sequence (or a filter hit) the text ends there, and a cancel goes to
        inference: the model stops now rather than at max_tokens, and the result comes sooner.
        """
        out: list[Event] = []
        maxlen = max((len(s) for s in state.stops), default=0)
        start = max(0, state.emitted - maxlen)
        end = len(state.text)
        pos = find_stop(state.text, state.stops, start, state.stop_floor())
        if pos != -1:
            end, state.ended = pos, True
        hit = self.output_filter.check(state.text[:end]) if self.output_filter else None
        if hit is not None:
            end, state.ended = min(end, hit.start), True
        if state.ended and state.n == 1:  # (n > 1: the other choices go on; the result cuts)
            reason = "stop sequence" if hit is None else "output filter"
            out.append(ControlEvent(request_id=rid, action="cancel", reason=reason))
        elif not final:
            end = min(end, partial_stop_start(state.text[:end], state.stops))
            end = max(state.emitted, end - self.holdback)
        if end <= state.emitted:
            return out
        if state.stream:
            piece = state.text[state.emitted : end]
            lps, lp_offset = state.logprobs.take(end) if state.logprobs else (None, 0)
            out.insert(
                0,
                TokenEvent(
                    request_id=rid,
                    index=state.next_token_index,
                    text=piece,
                    text_offset=state.emitted,
                    choice=state.choice,
                    logprobs=lps,
                    logprob_offset=lp_offset,
                ),
            )
            state.next_token_index += 1
        state.emitted = end
        return out

    def _evict(self) -> None:
        horizon = time.monotonic() - self.state_ttl_s
        while self.streams and (
            len(self.streams) > self.max_states
            or next(iter(self.streams.values())).touched < horizon
        ):
            self.streams.popitem(last=False)
        while self._blind and (
            len(self._blind) > self.max_states or next(iter(self._blind.values())) < horizon
        ):
            self._blind.popitem(last=False)

    async def _shadow(self, chunk: GenerationChunk) -> list[Event]:
        """A shadow copy's chunk: nothing streamed, nothing stored; its final chunk becomes a
        ``ShadowResult`` on ``genwire.shadow`` (docs/lifecycle.md)."""
        if not chunk.final:
            return []
        result = await self.build_result(chunk)
        span = trace.get_current_span()
        span.set_attribute(sc.REQUEST_ID, chunk.request_id)
        span.set_attribute(SHADOW_ATTRIBUTE, True)
        span.set_attribute(sc.MODEL_VERSION, result.model_version)
        span.set_attribute(ARM_ATTRIBUTE, result.arm)
        return [ShadowResult.model_validate(result.model_dump())]

    # -- final ------------------------------------------------------------------------------

    async def _final(self, chunk: GenerationChunk, usage_of: str | None = None) -> list[Event]:
        rid = chunk.request_id
        n = len(chunk.choices) if chunk.choices else 1
        conflict = chunk.error is not None and chunk.error.code == ErrorCode.IDEMPOTENCY_CONFLICT
        if conflict:  # the id's streams are the first request's, maybe still running: untouched
            states: list[_Stream | None] = [None] * n
        else:
            if chunk.error is not None:  # every choice's stream ends, whatever the chunk carries
                n = self._choices_of(chunk, n)
            states = [self.streams.pop(_key(rid, c), None) for c in range(n)]
            for c in range(n):
                self._blind.pop(_key(rid, c), None)
        result = await self.build_result(chunk)
        if conflict:
            # The id's stored result (and token stream) belong to the first request: never
            # answer with it, never store this error over it, never end its stream.
            stored = result
        else:
            stored = await self.store.put_first(result)
        if self.on_result is not None and stored is result:  # count each request once
            self.on_result(stored)
        span = trace.get_current_span()
        span.set_attribute(sc.REQUEST_ID, rid)
        span.set_attribute(sc.MODEL_VERSION, stored.model_version)
        span.set_attribute(ARM_ATTRIBUTE, stored.arm)
        if stored.finish_reason:
            span.set_attribute(sc.GEN_AI_FINISH_REASONS, [stored.finish_reason])
        span.set_attribute(sc.GEN_AI_OUTPUT_TOKENS, stored.usage.completion_tokens)
        if stored.error is not None:
            span.set_attribute(sc.ERROR_CODE, stored.error.code)
        if self.trace_content and stored.text:
            span.set_attribute(sc.GEN_AI_COMPLETION, stored.text)
        out: list[Event] = []
        if chunk.stream and not conflict:
            choices = (
                stored.all_choices()
                if stored.error is None
                else [ResultChoice(index=c) for c in range(n)]  # each choice's stream ends
            )
            for choice in choices:
                state = states[choice.index] if choice.index < len(states) else None
                reason = stored.finish_reason if stored.error is not None else choice.finish_reason
                out.append(
                    self._final_token(chunk, choice, reason, state, failed=stored.error is not None)
                )
        out.append(stored)
        # Once per request: only the first result stored for the id (a redelivery finds it
        # stored); a server-side error is no answer (a real result may replace it, metered
        # then: ``genwire.results.replaceable``); a conflict is another request's id.
        if usage_of is not None and stored is result and not conflict and not _no_answer(result):
            out.append(_usage(result, chunk, usage_of))
        return out

    def _choices_of(self, chunk: GenerationChunk, n: int) -> int:
        """How many choices a failed request has: its chunk's ``n`` (``choices``, ``sampling``),
        or what its streams know (chunk 0's ``sampling.n``, a choice streamed or joined)."""
        rid = chunk.request_id
        if chunk.sampling is not None:
            n = max(n, chunk.sampling.n)
        first = self.streams.get(rid)
        if first is not None:
            n = max(n, first.n)
        for c in range(n, MAX_N):
            if _key(rid, c) in self.streams or _key(rid, c) in self._blind:
                n = c + 1
        return min(n, MAX_N)

    def _final_token(
        self,
        chunk: GenerationChunk,
        choice: ResultChoice,
        finish_reason: str | None,
        state: _Stream | None,
        *,
        failed: bool = False,
    ) -> TokenEvent:
        """A choice's last TokenEvent: the rest of its text (and logprobs), so the pieces add
        up to the result. ``failed``: the request's error ends the stream (no text) where the
        streamed text ends."""
        text, offset, index = choice.text, 0, chunk.index if choice.index == 0 else 0
        lps, lp_offset = choice.logprobs, 0
        if state is not None:
            index = state.next_token_index  # contiguous after the streamed ones
            sent = state.text[: state.emitted]
            if failed:
                text, offset = "", state.emitted
            elif choice.text.startswith(sent):
                text, offset = choice.text[state.emitted :], state.emitted
                if lps is not None and state.logprobs is not None:
                    lp_offset = min(state.logprobs.given, len(lps))
                    lps = lps[lp_offset:]
        return TokenEvent(
            request_id=chunk.request_id,
            index=index,
            text=text,
            text_offset=offset,
            final=True,
            finish_reason=finish_reason,
            choice=choice.index,
            logprobs=lps,
            logprob_offset=lp_offset,
        )

    async def build_result(self, chunk: GenerationChunk) -> GenerationResult:
        """The result of a final chunk: full text, stop sequences and filter applied (to
        every choice), logprobs as token text. A large one is built in a worker thread
        (``THREAD_MIN_WORK``): the loop keeps serving the other requests meanwhile."""
        outputs = _outputs(chunk)
        assets = None
        if chunk.error is None and any(o.output_ids for o in outputs):
            assets = await self.assets.aget(chunk.model, chunk.model_version or None)
        if assets is not None and _work(chunk, outputs) >= THREAD_MIN_WORK:
            self.token_texts(assets)  # registered here: the thread only reads ``_texts``
            return await asyncio.to_thread(self._result, chunk, outputs, assets)
        return self._result(chunk, outputs, assets)

    def _result(
        self, chunk: GenerationChunk, outputs: list[ChoiceOutput], assets: ModelAssets | None
    ) -> GenerationResult:
        """``build_result``'s work, with the model's assets loaded (None: no tokens)."""
        choices: list[ResultChoice] = []
        if chunk.error is None:
            choices = [self._choice(chunk, output, assets) for output in outputs]
        text = choices[0].text if choices else ""
        reason = choices[0].finish_reason if choices else chunk.finish_reason
        logprobs = choices[0].logprobs if choices else None
        timings = chunk.timings.model_copy(update={"completed": now_ms()})
        return GenerationResult(
            request_id=chunk.request_id,
            model=chunk.model,
            model_version=chunk.model_version,
            text=text,
            finish_reason=reason,
            logprobs=logprobs,
            choices=choices if chunk.choices else [],
            usage=Usage(
                prompt_tokens=chunk.prompt_tokens,
                completion_tokens=chunk.completion_tokens,
                total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
            ),
            timings=timings,
            error=chunk.error,
            metadata=chunk.metadata,
            arm=chunk.arm,
        )

    def _choice(
        self, chunk: GenerationChunk, output: ChoiceOutput, assets: ModelAssets | None
    ) -> ResultChoice:
        """One choice of a result: decoded, cut at a stop sequence or a filter hit."""
        text, reason = "", output.finish_reason
        ids = list(output.output_ids)
        logprobs: list[OutputLogprob] | None = None
        if not ids:
            assets = None  # nothing to decode (and no stop floor)
        if assets is not None:
            text = assets.decode(ids)
        stops = list(chunk.sampling.stop) if chunk.sampling else []
        floor = 0
        if assets is not None and chunk.sampling is not None:
            floor = stop_floor(assets.decode, ids, chunk.sampling.min_tokens)
        text, stopped = truncate_at_stop(text, stops, floor)
        if stopped:
            reason = FINISH_STOP
        hit = self.output_filter.check(text) if self.output_filter else None
        if hit is not None:
            text, reason = text[: hit.start], FINISH_CONTENT_FILTER
            trace.get_current_span().set_attribute(sc.FILTER_HITS, 1)
        if chunk.sampling is not None and chunk.sampling.logprobs:
            logprobs = []
            if assets is not None:
                logprobs = output_logprobs(
                    self.token_texts(assets), ids, output.logprobs or [], len(text)
                )
        return ResultChoice(
            index=output.index,
            text=text,
            finish_reason=reason,
            logprobs=logprobs,
            completion_tokens=(
                len(ids) if output.completion_tokens is None else output.completion_tokens
            ),
        )


def _outputs(chunk: GenerationChunk) -> list[ChoiceOutput]:
    """A final chunk's choices (one without ``choices``: the chunk's own output)."""
    return chunk.choices or [
        ChoiceOutput(
            index=0,
            output_ids=chunk.output_ids if chunk.output_ids is not None else chunk.token_ids,
            finish_reason=chunk.finish_reason,
            logprobs=chunk.logprobs,
        )
    ]


def _work(chunk: GenerationChunk, outputs: list[ChoiceOutput]) -> int:
    """About how many tokens building the result decodes (``THREAD_MIN_WORK``)."""
    tokens = sum(len(o.output_ids) for o in outputs)
    if chunk.sampling is None or not chunk.sampling.logprobs:
        return tokens
    return tokens * (1 + chunk.sampling.top_logprobs)


def _ident(chunk: GenerationChunk) -> tuple[int, int, int]:
    """What tells a chunk of a stream from another: its index and its tokens' span."""
    return chunk.index, chunk.offset, len(chunk.token_ids)


def _end(chunk: GenerationChunk) -> int:
    """The token position just past ``chunk``'s tokens."""
    return chunk.offset + len(chunk.token_ids)


def _hold(state: _Stream, chunk: GenerationChunk) -> None:
    """Queue ``chunk`` by its token offset (of two from there, the one reaching further)."""
    held = state.pending.get(chunk.offset)
    if held is None or _end(chunk) > _end(held):
        state.pending[chunk.offset] = chunk


def _agrees(chunk: GenerationChunk, applied: list[int]) -> bool:
    """Whether ``chunk``'s tokens equal the applied ones where both have a token."""
    overlap = min(_end(chunk), len(applied)) - chunk.offset
    return (
        overlap <= 0 or chunk.token_ids[:overlap] == applied[chunk.offset : chunk.offset + overlap]
    )


def _no_answer(result: GenerationResult) -> bool:
    """A server-side failure that generated nothing: not metered (a real result may replace
    it, metered then). One that generated tokens (a stream that failed midway) is metered: it
    is never replaced, and its tokens were made (and streamed)."""
    return replaceable(result) and result.usage.completion_tokens == 0


def _usage(result: GenerationResult, chunk: GenerationChunk, principal: str) -> UsageEvent:
    """The usage of a Kafka client's request (``charged_tokens`` 0: limits are the gateway's)."""
    counts = result.usage.counts()
    timings = result.timings
    latency = (
        timings.completed - timings.received
        if timings.completed is not None and timings.received is not None
        else 0.0
    )
    return UsageEvent(
        request_id=result.request_id,
        key_name=principal,
        source=SOURCE_KAFKA,
        model=result.model,
        model_version=result.model_version,
        prompt_tokens=counts["prompt_tokens"],
        completion_tokens=counts["completion_tokens"],
        total_tokens=counts["total_tokens"],
        latency_ms=round(max(0.0, latency), 3),
        finish_reason=(result.finish_reason or "") if result.error is None else "error",
        error_code=result.error.code if result.error is not None else "",
        stream=chunk.stream,
    )


def failure_result(
    request_id: str | None, err: GenwireError, stream: bool, n: int = 1
) -> list[Event]:
    """What the caller gets when a chunk cannot be handled (e.g. Redis down through retries).
    ``n``: the request's choices, each of whose token streams ends."""
    if not request_id:
        return []
    out: list[Event] = []
    if stream:  # end the token streams too
        out += [
            TokenEvent(request_id=request_id, index=0, text="", final=True, choice=c)
            for c in range(max(1, min(n, MAX_N)))
        ]
    out.append(
        GenerationResult(
            request_id=request_id,
            finish_reason="error",
            error=ErrorInfo(code=err.code, message=err.message, param=err.param),
        )
    )
    return out
