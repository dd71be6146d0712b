"""Per-key limits at admission, usage on completion: the gateway core wrapped per caller.

``MeteredGateway`` is the ``Gateway`` both transports call. For a request whose caller was
authenticated (``auth.PRINCIPAL``) it:

1. admits it against the key's limits (``limits.Limiter``; refused: 429 / RESOURCE_EXHAUSTED
   with the wait, nothing published);
2. runs it (the plain ``Gateway``);
3. on completion, in the background: corrects the token charge to the real usage, counts the
   key's tokens in ``/metrics`` (``genwire_gateway_key_tokens_total{key, kind}``) and publishes
   a ``UsageEvent`` on ``genwire.usage``. A repeat of a named request answered by another
   call's generation (its stored result, or one in flight) is counted as a request
   (``outcome="repeat"``) and gets its token charge back: that generation is metered once, by
   the call that published it (or, if its caller left, by this instance following it);
4. when the key opted in (``capture_content``), records the prompt and completion text on the
   request's span (its SERVER span; a batch's prompt: that prompt's span), after redaction. A
   redaction hook that fails withholds the text (``CONTENT_WITHHELD``); the request goes on.

Why the gateway emits usage and not postprocess: the gateway is where the key was checked and
where its token charge must be corrected, so one place holds the key, the charge and the
result, and usage never depends on a Kafka header any producer could set (the key's name does
go downstream, header ``genwire_principal``, for the stages' own use). What it does not see:
requests produced straight to ``genwire.requests`` (their
producers are authorised by Kafka ACLs, docs/security.md) and the completion of an unnamed
request whose caller left (its charge stays at the admission estimate; no event). A named one
runs on for the caller's retry, so it is followed like a ``Submit``.

Limits are admitted per request, or per batch of prompts as one (``admit``: all or none). A
limiter that fails lets limited keys through uncounted for at most ``auth_stale_s`` from its
first failure in a row, then refuses them (``LimiterOutage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn, cast

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter

from genwire.apikeys import SCOPE_ADMIN, KeyRecord
from genwire.events import GenerationResult
from genwire.request import ErrorCode
from genwire.results import ClaimOutcome, ResultStore
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire.usage import SOURCE_GATEWAY, UsageEvent
from genwire_gateway.auth import Principal, current_principal, retry_after
from genwire_gateway.errors import PERMISSION_DENIED, RATE_LIMITED, GatewayError
from genwire_gateway.handlers import Chunk, Gateway, Prepared, ResultStatus
from genwire_gateway.limits import Limiter, LimitExceeded, Ticket, TooLarge, prompt_estimate

log = logging.getLogger(__name__)

METRIC_KEY_TOKENS = "genwire_gateway_key_tokens_total"
METRIC_KEY_REQUESTS = "genwire_gateway_key_requests_total"
OTHER_KEYS = "other"
"""Label of every key name past ``max_keys`` distinct ones."""
REASON_WITHHELD = "(reason withheld: the redaction hook failed)"
"""A cancel's reason when the redaction hook raised on it: the cancel goes on without it."""
CONTENT_WITHHELD = "(content withheld: the redaction hook failed)"
"""Captured prompt or completion text when the redaction hook raised on it (or returned no
text): the request goes on without it."""
OUTAGE_LOG_S = 10.0
"""While the limiter keeps failing, one log line per this many seconds (not one per request)."""
MAX_WAITS_PER_KEY = 64
"""``GetResult`` calls that wait (``wait_ms`` > 0) at once per key name, on one gateway: they
take no request slot (a key over its rpm still polls its jobs), so this bounds what one key's
long-polls hold (a waiter and a Redis poll each, up to ``max_timeout_s``). Past it:
``rate_limited`` (RESOURCE_EXHAUSTED)."""


class UsageMetrics:
    """Tokens and requests per key name; at most ``max_keys`` names, the rest ``other``."""

    def __init__(self, registry: CollectorRegistry, max_keys: int = 1000) -> None:
        self.max_keys = max_keys
        self._names: set[str] = set()
        self.tokens = Counter(
            METRIC_KEY_TOKENS,
            "Tokens used per API key name (kind: prompt or completion); names past the "
            "configured number fold into 'other'.",
            ["key", "kind"],
            registry=registry,
        )
        self.requests = Counter(
            METRIC_KEY_REQUESTS,
            "Requests per API key name by outcome: ok, error (a pipeline error result), "
            "rate_limited, quota_exceeded, too_large, forbidden (another key's request id), "
            "repeat (a named request answered by another call's generation: no tokens), "
            "unavailable (the limiter failed for longer than it may be bypassed).",
            ["key", "outcome"],
            registry=registry,
        )

    def label(self, name: str) -> str:
        """``name``, or ``other`` once ``max_keys`` names have been seen."""
        if name in self._names:
            return name
        if len(self._names) >= self.max_keys:
            return OTHER_KEYS
        self._names.add(name)
        return name

    def count(self, name: str, outcome: str) -> None:
        self.requests.labels(self.label(name), outcome).inc()

    def add_tokens(self, name: str, prompt: int, completion: int) -> None:
        label = self.label(name)
        self.tokens.labels(label, "prompt").inc(prompt)
        self.tokens.labels(label, "completion").inc(completion)


@dataclass
class Charge:
    """One call's metering, filled in as it goes."""

    ticket: Ticket | None = None
    """What admission charged (None: no limits, or not counted while the limiter failed)."""
    admitted: bool = False
    """Charged ahead with its batch (``MeteredGateway.admit``): not admitted again."""
    owner: bool = False
    """Its claim made this call the one that publishes the request (named or submitted)."""
    repeat: bool = False
    """Answered by another call's generation (a stored result, or one in flight): that call
    meters it, this one is charged no tokens."""


@dataclass(frozen=True)
class Metered(Prepared):
    """A prepared request with its call's ``Charge``: the same object travels through the plain
    ``Gateway`` (its claim hook marks a repeat on it), so each call, and each prompt of a
    batch, has its own."""

    charge: Charge = field(default_factory=Charge, compare=False)


def metered(prepared: Prepared) -> Metered:
    """``prepared`` with a charge of its own (kept if it has one: admitted with its batch)."""
    if isinstance(prepared, Metered):
        return prepared
    return Metered(**{f.name: getattr(prepared, f.name) for f in fields(Prepared)})


OUTAGE_GAP_BOUNDS = 2.0
"""A limiter failure this many bounds (``auth_stale_s``) after the previous one, with no
admission asked in between, starts a new outage (``LimiterOutage``): far longer than the
bound, so sparse traffic (a burst a minute) against a limiter that stays broken is still one
outage and refused once the bound has passed."""


class LimiterOutage:
    """The limiter's (Redis's) failures in a row. While they last, limited keys are served
    without their limits being counted, for at most ``bound_s`` (``auth_stale_s``, the bound
    of serving a cached key while Redis is down) and then refused: an outage of the limiter
    alone (Redis out of memory refuses the script's writes but not the key reads; an ACL
    without EVALSHA) must not lift every limit for good. Logged when it starts, every
    ``OUTAGE_LOG_S`` while it lasts, when the bound passes, and when it ends."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self.since: float | None = None
        self.failures = 0
        self._logged = 0.0
        self._last = 0.0
        self._refusing = False

    def failed(self, exc: Exception) -> bool:
        """Count a failure; whether the bound has passed (the request is to be refused). A
        failure ``OUTAGE_GAP_BOUNDS`` bounds after the last one, with no admission asked in
        between (no limited traffic), starts a new outage: two blips an hour apart are not one
        outage."""
        now = time.monotonic()
        if self.since is not None and now - self._last >= OUTAGE_GAP_BOUNDS * self.bound_s:
            self.since, self._refusing = None, False  # the last one ended unseen: a new one
        self._last = now
        if self.since is None:
            self.since, self.failures, self._logged = now, 0, now
            log.warning(
                "rate limits not checked (the limiter failed: %s): limited keys are served "
                "without them for at most %g s (auth_stale_s), then refused until it answers",
                exc,
                self.bound_s,
            )
        self.failures += 1
        down_s = now - self.since
        refuse = down_s >= self.bound_s
        if refuse and not self._refusing:
            self._refusing = True
            log.warning(
                "the limiter has failed for %.0f s (%d failures): refusing limited keys (503) "
                "until it answers: %s",
                down_s,
                self.failures,
                exc,
            )
            self._logged = now
        elif now - self._logged >= OUTAGE_LOG_S:
            self._logged = now
            log.warning(
                "rate limits still not checked after %.0f s (%d failures; %s): %s",
                down_s,
                self.failures,
                "refusing limited keys" if refuse else "serving limited keys unlimited",
                exc,
            )
        return refuse

    def ok(self) -> None:
        """The limiter answered: the outage, if any, is over."""
        if self.since is None:
            return
        log.warning(
            "the limiter answers again after %.1f s (%d failures): rate limits are counted",
            time.monotonic() - self.since,
            self.failures,
        )
        self.since, self._refusing = None, False

    def down_s(self) -> float:
        """Seconds the limiter has failed in a row (0: it answers)."""
        return 0.0 if self.since is None else time.monotonic() - self.since


def budget(prepared: Prepared) -> int:
    """Tokens charged at admission: the prompt's estimate plus ``max_tokens`` × ``n``."""
    request = prepared.request
    ids = getattr(request, "prompt_token_ids", None)
    prompt = len(ids) if ids else prompt_estimate(request.prompt, request.messages)
    return prompt + request.max_tokens * getattr(request, "n", 1)


class MeteredGateway(Gateway):
    """``Gateway`` plus per-key limits, usage events, key metrics and opted-in content."""

    def __init__(
        self,
        *args: Any,
        limiter: Limiter | None = None,
        usage_metrics: UsageMetrics | None = None,
        redact: Callable[[str], str] | None = None,
        usage_topic: str = Topic.USAGE.value,
        max_waits_per_key: int = MAX_WAITS_PER_KEY,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.limiter = limiter
        self.usage_metrics = usage_metrics
        self.redact = redact
        # Logged once: a broken hook would otherwise log every cancel and captured request.
        self._hook_failed = False
        self.usage_topic = usage_topic
        self._settling: set[asyncio.Task[None]] = set()
        self._owners = OwnerWriter(self.store, self._owner_ttl_s)
        self._waits = WaitSlots(max_waits_per_key)
        self.limiter_outage = LimiterOutage(self.settings.auth_stale_s)

    def request_headers(self, prepared: Prepared) -> list[tuple[str, bytes]]:
        """Name the caller's key on the published request (``genwire_principal``)."""
        principal = current_principal()
        return [(sc.HEADER_PRINCIPAL, principal.name.encode())] if principal is not None else []

    # -- the three ways in ----------------------------------------------------------------------

    async def generate(self, prepared: Prepared) -> GenerationResult:
        principal = current_principal()
        if principal is None:
            return await super().generate(prepared)
        call = metered(prepared)
        ticket = await self._admit(principal, call)
        await self._own(principal, call, ticket)
        started = time.monotonic()
        self._capture_prompt(principal.record, call)
        try:
            result = await super().generate(call)
        except GatewayError as exc:
            self._failed(principal, call, ticket, started, exc)
            raise
        except asyncio.CancelledError:
            self._left(principal, call, started)
            raise
        self._capture_completion(principal.record, result.text)
        self._settle(principal, call, ticket, started, result, None)
        return result

    async def stream(self, prepared: Prepared) -> AsyncIterator[Chunk]:
        principal = current_principal()
        if principal is None:
            async with contextlib.aclosing(_generator(super().stream(prepared))) as plain:
                async for chunk in plain:
                    yield chunk
            return
        call = metered(prepared)
        ticket = await self._admit(principal, call)
        await self._own(principal, call, ticket)
        started = time.monotonic()
        self._capture_prompt(principal.record, call)
        ended = False
        try:
            async with contextlib.aclosing(_generator(super().stream(call))) as chunks:
                async for chunk in chunks:
                    if chunk.final:
                        ended = True
                        if chunk.result is not None:
                            self._capture_completion(principal.record, chunk.result.text)
                        self._settle(principal, call, ticket, started, chunk.result, None)
                    yield chunk
        except GatewayError as exc:
            ended = True
            self._failed(principal, call, ticket, started, exc)
            raise
        finally:
            if not ended:  # the caller left (closed the stream, or was cancelled)
                self._left(principal, call, started)

    async def submit(self, prepared: Prepared) -> str:
        principal = current_principal()
        if principal is None:
            return await super().submit(prepared)
        call = metered(prepared)
        ticket = await self._admit(principal, call)
        await self._own(principal, call, ticket, wait=True)
        started = time.monotonic()
        try:
            request_id = await super().submit(call)
        except GatewayError as exc:
            self._settle(principal, call, ticket, started, None, exc)
            raise
        if call.charge.repeat:  # accepted before: the Submit that published it meters it
            self._settle(principal, call, ticket, started, None, None)
            return request_id
        # The caller does not wait: this instance waits for the result in the background
        # (polling Redis) to correct the charge and publish the usage.
        self._in_background(self._follow(principal, call, ticket, started))
        return request_id

    def claimed(self, prepared: Prepared, claim: ClaimOutcome) -> None:
        """Note on the call's charge whether it publishes the request or repeats another's."""
        if isinstance(prepared, Metered):
            prepared.charge.owner = claim.owner
            prepared.charge.repeat = not claim.owner

    def _left(self, principal: Principal, call: Metered, started: float) -> None:
        """The caller left before the result. A repeat generated nothing: settled as one. A
        named request it published runs on for the caller's retry, which is a repeat (not
        metered): followed here, like a Submit, so its usage is metered once. Any other keeps
        its charge at the estimate."""
        if call.charge.repeat:
            self._settle(principal, call, call.charge.ticket, started, None, None)
        elif call.named and call.charge.owner:
            self._in_background(self._follow(principal, call, call.charge.ticket, started))

    # -- ownership (GetResult and Cancel of another key's request) -----------------------------

    def _owner_ttl_s(self) -> float:
        return self.store.ttl_s + self.settings.max_timeout_s + self.settings.claim_grace_s

    async def _own(
        self, principal: Principal, prepared: Prepared, ticket: Ticket | None, wait: bool = False
    ) -> None:
        """Record the caller's key as the request's owner before it is published.

        A submitted request (its id is answered at once) waits for the record: an id another
        key owns, or one that exists with no owner (a Kafka client's: it is not recorded as
        the caller's, ``ResultStore.own``), is refused (403) unless the caller is an admin. A
        named one that is waited for gets the same check in its claim's round trip
        (``claim_named``). An anonymous request's id is new and only known to its caller once
        it runs, so its record is written off the hot path, with those of the other anonymous
        requests of the moment (``_owners``: one round trip).
        """
        if not wait:
            if not prepared.named:
                self._owners.add(prepared.request_id, principal.name)
            return
        try:
            owner = await self.store.own(prepared.request_id, principal.name, self._owner_ttl_s())
        except Exception as exc:  # the claim needs Redis too: it answers unavailable
            log.warning("owner of %s not recorded (Redis): %s", prepared.request_id, exc)
            return
        if owner != principal.name and not principal.record.allows(SCOPE_ADMIN):
            if ticket is not None and self.limiter is not None:
                with contextlib.suppress(Exception):
                    await self.limiter.adjust(ticket, 0)
            self._count(principal.name, "forbidden")
            raise GatewayError(_not_yours(prepared.request_id), code=PERMISSION_DENIED)

    async def claim_named(self, prepared: Prepared) -> ClaimOutcome:
        """The claim, recording the caller's key as the id's owner in the same round trip; an
        id another key owns is refused (403) before anything is claimed, unless the caller
        is an admin."""
        principal = current_principal()
        if principal is None:
            return await super().claim_named(prepared)
        claim = await self.store.claim(
            prepared.request,
            prepared.timeout_s + self.settings.claim_grace_s,
            key_owner=principal.name,
            owner_ttl_s=self._owner_ttl_s(),
            any_owner=principal.record.allows(SCOPE_ADMIN),
            published=prepared.value,
        )
        if claim.foreign:
            raise _Forbidden(_not_yours(prepared.request_id), code=PERMISSION_DENIED)
        return claim

    async def _access(self, principal: Principal, request_id: str) -> Access:
        """What ``request_id`` is to the caller's key: its own (recorded, or queued in the
        anonymous owners' batch not written yet), another's or an existing unowned one
        (``FOREIGN``), or an id nobody knows (``UNKNOWN``). Redis down: ``unavailable``."""
        queued = self._owners.queued(request_id)
        if queued == principal.name:
            return Access.MINE
        try:
            found = await self.store.ownership(request_id)
        except Exception as exc:
            raise GatewayError(
                f"the owner of {request_id!r} cannot be checked: {exc}",
                code=ErrorCode.UNAVAILABLE,
            ) from exc
        if found.owner == principal.name:
            return Access.MINE
        if found.owner is not None or found.known or queued is not None:
            return Access.FOREIGN
        return Access.UNKNOWN

    async def _still_mine(self, principal: Principal, request_id: str) -> None:
        """After a wait, the result goes to the caller only if the id is still its key's: what
        was checked before the wait may have changed while it lasted."""
        if await self._access(principal, request_id) is not Access.MINE:
            self._forbid(principal, request_id)

    def _forbid(self, principal: Principal, request_id: str) -> NoReturn:
        """Refuse another key's (or an unowned) id: 403, counted ``forbidden``."""
        self._count(principal.name, "forbidden")
        raise GatewayError(_not_yours(request_id), code=PERMISSION_DENIED)

    async def get_result(
        self, request_id: str, wait_s: float = 0.0
    ) -> tuple[str, GenerationResult | None]:
        """``GetResult`` for the caller's key. For a non-admin: an id nobody knows is
        ``not_found`` at once (no wait: a wait on an id another key may send later would get
        that key's answer), another key's is refused, and a result found after a wait is
        checked against its owner again. A waiting call holds one of the key's
        ``MAX_WAITS_PER_KEY`` slots."""
        principal = current_principal()
        if principal is None:
            return await super().get_result(request_id, wait_s)
        admin = principal.record.allows(SCOPE_ADMIN)
        if not admin:
            access = await self._access(principal, request_id)
            if access is Access.FOREIGN:
                self._forbid(principal, request_id)
            if access is Access.UNKNOWN:
                return ResultStatus.NOT_FOUND, None
        if wait_s <= 0:
            return await super().get_result(request_id, wait_s)
        with self._waits.hold(principal.name, self._count):
            status, result = await super().get_result(request_id, wait_s)
        if result is not None and not admin:
            await self._still_mine(principal, request_id)
        return status, result

    # -- admission ------------------------------------------------------------------------------

    def early_refusal(self, principal: Principal) -> LimitExceeded | None:
        """A refusal known without Redis (a key still over its requests per minute): the
        transports answer it before reading the body (a flood costs as little as possible)."""
        if self.limiter is None or not principal.record.rpm:
            return None
        refusal = self.limiter.refusal(principal.record)
        if refusal is not None:
            self._count(principal.name, "rate_limited")
        return refusal

    async def admit(self, batch: Sequence[Prepared]) -> list[Prepared]:
        """Charge a batch's prompts together before any runs: one request and its token
        budget each, all or none (a refusal charges nothing; a batch the key's limits can
        never hold is a 400). Each prompt then runs on its share of the charge."""
        principal = current_principal()
        if principal is None or len(batch) < 2:
            return list(batch)
        if self.limiter is None or not principal.record.limited:
            return list(batch)
        calls = [metered(p) for p in batch]
        tickets = await self._charge(principal, [budget(c) for c in calls])
        admitted: list[Prepared] = []
        for i, call in enumerate(calls):
            call.charge.ticket = tickets[i] if tickets is not None else None
            call.charge.admitted = True
            admitted.append(call)
        return admitted

    async def _admit(self, principal: Principal, call: Metered) -> Ticket | None:
        """Charge one request (unless its batch was charged for it): its ticket."""
        if not call.charge.admitted:
            if self.limiter is None or not principal.record.limited:
                return None
            tickets = await self._charge(principal, [budget(call)])
            call.charge.ticket = tickets[0] if tickets is not None else None
        return call.charge.ticket

    async def _charge(self, principal: Principal, budgets: list[int]) -> list[Ticket] | None:
        """The limiter's admission of ``budgets`` (one request each), its refusals turned into
        the caller's errors; None while the limiter fails (within the outage's bound)."""
        record = principal.record
        assert self.limiter is not None
        try:
            tickets = await self.limiter.admit_all(record, budgets)
        except LimitExceeded as exc:
            self.limiter_outage.ok()  # a refusal is an answer: the limiter works
            per_day = exc.limit == "tokens_per_day"
            self._count(record.name, "quota_exceeded" if per_day else "rate_limited")
            principal.retry_after_s = exc.retry_after_s
            if principal.grpc_context is not None and exc.retry_after_s is not None:
                with contextlib.suppress(Exception):
                    principal.grpc_context.set_trailing_metadata(
                        (("retry-after", retry_after(exc.retry_after_s)),)
                    )
            raise GatewayError(exc.message, code=exc.code) from None
        except TooLarge as exc:
            self.limiter_outage.ok()
            self._count(record.name, "too_large")
            raise GatewayError(str(exc), code=ErrorCode.INVALID_REQUEST) from None
        except Exception as exc:
            # The limits cannot be counted: serve the key unlimited rather than fail everyone,
            # for a bounded time (LimiterOutage), then refuse it.
            if self.limiter_outage.failed(exc):
                self._count(record.name, "unavailable")
                raise GatewayError(self._limiter_down(record), code=ErrorCode.UNAVAILABLE) from None
            return None
        self.limiter_outage.ok()
        return tickets

    def _limiter_down(self, record: KeyRecord) -> str:
        outage = self.limiter_outage
        return (
            f"the limits of the key {record.name!r} cannot be checked: the rate limiter (Redis) "
            f"has failed for {outage.down_s():.0f} s, longer than the {outage.bound_s:g} s a "
            "key is served without them (auth_stale_s); retry when it is back"
        )

    # -- completion -----------------------------------------------------------------------------

    def _count(self, name: str, outcome: str) -> None:
        if self.usage_metrics is not None:
            self.usage_metrics.count(name, outcome)

    def _failed(
        self,
        principal: Principal,
        prepared: Metered,
        ticket: Ticket | None,
        started: float,
        exc: GatewayError,
    ) -> None:
        """A waited request failed: refused as another key's (its charge given back, counted
        ``forbidden``, no usage), or settled like any failure."""
        if not isinstance(exc, _Forbidden):
            self._settle(principal, prepared, ticket, started, None, exc)
            return
        self._count(principal.name, "forbidden")
        if ticket is not None and self.limiter is not None:
            self._in_background(self._give_back(ticket))

    async def _give_back(self, ticket: Ticket) -> None:
        assert self.limiter is not None
        with contextlib.suppress(Exception):
            await self.limiter.adjust(ticket, 0)

    def _settle(
        self,
        principal: Principal,
        prepared: Metered,
        ticket: Ticket | None,
        started: float,
        result: GenerationResult | None,
        error: GatewayError | None,
    ) -> None:
        """Correct the charge, count and publish the usage of a finished request (background).
        A repeat generated nothing for this call: counted, its token charge given back."""
        if prepared.charge.repeat:
            self._count(principal.name, "repeat")
            if ticket is not None and self.limiter is not None:
                self._in_background(self._give_back(ticket))
            return
        latency_ms = (time.monotonic() - started) * 1000.0
        self._in_background(
            self._record_usage(principal.record, prepared, ticket, latency_ms, result, error)
        )

    async def _record_usage(
        self,
        record: KeyRecord,
        prepared: Prepared,
        ticket: Ticket | None,
        latency_ms: float,
        result: GenerationResult | None,
        error: GatewayError | None,
    ) -> None:
        counts = result.usage.counts() if result is not None else None
        if result is None and error is not None and error.code in _NOT_RUN:
            counts = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        charged = ticket.tokens if ticket is not None else 0
        if ticket is not None and counts is not None:
            charged = counts["total_tokens"]
            try:
                assert self.limiter is not None
                await self.limiter.adjust(ticket, charged)
            except Exception as exc:
                log.warning("token charge of %s not corrected: %s", prepared.request_id, exc)
        if counts is None:  # cancelled, deadline, unavailable: what ran is unknown here
            self._count(record.name, "error")
            return
        if error is not None and error.code == ErrorCode.IDEMPOTENCY_CONFLICT:
            # The id is another request's: an event under it would be that request's second
            # (``genwire usage`` keeps the first per id, which this could be).
            self._count(record.name, "error")
            return
        failed = error is not None or (result is not None and result.error is not None)
        self._count(record.name, "error" if failed else "ok")
        if self.usage_metrics is not None:
            self.usage_metrics.add_tokens(
                record.name, counts["prompt_tokens"], counts["completion_tokens"]
            )
        event = UsageEvent(
            request_id=prepared.request_id,
            key_name=record.name,
            key_id=record.id,
            source=SOURCE_GATEWAY,
            model=(result.model if result is not None else "")
            or prepared.request.model
            or self.settings.default_model,
            model_version=result.model_version if result is not None else "",
            prompt_tokens=counts["prompt_tokens"],
            completion_tokens=counts["completion_tokens"],
            total_tokens=counts["total_tokens"],
            latency_ms=round(latency_ms, 3),
            finish_reason=(result.finish_reason or "") if result is not None else "error",
            error_code=error.code if error is not None else "",
            stream=prepared.request.stream,
            charged_tokens=charged,
        )
        try:
            await self.producer.publish(event)
        except Exception as exc:
            log.warning("usage of %s not published: %s", prepared.request_id, exc)

    async def _follow(
        self, principal: Principal, prepared: Prepared, ticket: Ticket | None, started: float
    ) -> None:
        """Wait for a submitted request's result, then settle it like a waited one: until the
        caller's deadline and ``claim_grace_s`` (at least 1 s; the pipeline stops at its own
        deadline, the margin before the caller's, and its partial result comes back in that
        margin), not the longest any caller may wait. A result later still is not metered."""
        received_ms = prepared.request.received_ms
        wait_s = self.settings.max_timeout_s
        if received_ms is not None:  # the caller's own deadline (the pipeline's comes sooner)
            left_s = received_ms / 1000.0 + prepared.timeout_s - time.time()
            wait_s = min(wait_s, max(0.0, left_s) + max(self.settings.claim_grace_s, 1.0))
        try:
            # The plain wait: the request is the caller's own, and this one is ours, not theirs.
            _, result = await super().get_result(prepared.request_id, wait_s)
        except Exception as exc:
            log.debug("no result to meter for %s: %s", prepared.request_id, exc)
            return
        if result is None:
            return
        error = GatewayError(result.error.message, code=result.error.code) if result.error else None
        await self._record_usage(
            principal.record,
            prepared,
            ticket,
            (time.monotonic() - started) * 1000.0,
            result,
            error,
        )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Also let the usage of finished requests reach the broker before the producer stops,
        and the owner records queued reach Redis."""
        await super().drain(timeout_s)
        await self._owners.flushed(timeout_s)
        followers = {t for t in self._settling if not t.done()}
        if followers:
            await asyncio.wait(followers, timeout=timeout_s)
            for task in followers:
                task.cancel()

    # -- content (opted in per key) -------------------------------------------------------------

    def _capture_prompt(self, record: KeyRecord, prepared: Prepared) -> None:
        if not record.capture_content:
            return
        request = prepared.request
        text = request.prompt or "\n".join(f"{m.role}: {m.content}" for m in request.messages or ())
        if text:
            redacted = self._safely_redacted(text, "a captured prompt", CONTENT_WITHHELD)
            trace.get_current_span().set_attribute(sc.GEN_AI_PROMPT, redacted)

    def _capture_completion(self, record: KeyRecord, text: str) -> None:
        if record.capture_content and text:
            redacted = self._safely_redacted(text, "a captured completion", CONTENT_WITHHELD)
            trace.get_current_span().set_attribute(sc.GEN_AI_COMPLETION, redacted)

    def _redacted(self, text: str) -> str:
        return self.redact(text) if self.redact is not None else text

    def _safely_redacted(self, text: str, what: str, withheld: str) -> str:
        """``text`` redacted, or ``withheld`` when the operator's hook raises or returns no
        text: a broken hook must neither fail the request (its charge would stay unsettled)
        nor let the text through. Logged once, with the exception's type only (its message
        may quote the text)."""
        try:
            redacted = self._redacted(text)
            if not isinstance(redacted, str):
                raise TypeError(f"the hook returned {type(redacted).__name__}, not text")
        except Exception as exc:
            if not self._hook_failed:
                log.warning("the redaction hook failed on %s (%s)", what, type(exc).__name__)
            self._hook_failed = True
            return withheld
        return redacted

    async def cancel(self, request_id: str, reason: str = "") -> bool:
        """A caller's ``Cancel``. A non-admin's of an id nobody knows is not published (False):
        inference remembers an early cancel, so the id's request, sent later by whoever owns
        it, would end ``cancelled`` at once. The caller's own anonymous request whose owner
        record is still queued is its own (``_access``)."""
        principal = current_principal()
        if principal is not None and not principal.record.allows(SCOPE_ADMIN):
            access = await self._access(principal, request_id)
            if access is Access.FOREIGN:
                self._forbid(principal, request_id)
            if access is Access.UNKNOWN:
                log.debug("cancel of %s not published: no such request", request_id)
                return False
        return await super().cancel(request_id, reason)

    async def publish_cancel(self, request_id: str, reason: str = "") -> None:
        # The caller's free text goes on the request's trace (genwire.cancel.reason); the
        # gateway's own cancels pass the hook too, so a broken one must not stop them.
        why = self._safely_redacted(reason, "a cancel's reason", REASON_WITHHELD)
        await super().publish_cancel(request_id, why)


class _Forbidden(GatewayError):
    """Another key's request id (``claim_named``): 403, counted ``forbidden``."""


class Access(enum.Enum):
    """What a request id is to the caller's key (``MeteredGateway._access``)."""

    MINE = "mine"
    """Its key name owns it (recorded, or queued to be)."""
    FOREIGN = "foreign"
    """Another key owns it, or it exists and no key owns it: an admin's only."""
    UNKNOWN = "unknown"
    """Nobody knows it (no owner, claim or result): nothing to read or cancel yet."""


class WaitSlots:
    """``GetResult`` waits in flight per key name (at most ``per_key`` each). A name's entry
    lives while it has one: the dict holds only the names waiting now."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, name: str, count: Callable[[str, str], None]) -> Iterator[None]:
        """Hold one of ``name``'s slots for the block; none left: ``rate_limited`` (counted
        with ``count``)."""
        held = self._held.get(name, 0)
        if held >= self.per_key:
            count(name, "rate_limited")
            raise GatewayError(
                f"the key {name!r} already has {held} GetResult calls waiting on this gateway "
                f"(at most {self.per_key}): wait for one to end, or poll without wait_ms",
                code=RATE_LIMITED,
            )
        self._held[name] = held + 1
        try:
            yield
        finally:
            left = self._held[name] - 1
            if left:
                self._held[name] = left
            else:
                del self._held[name]

    def held(self, name: str) -> int:
        """Slots ``name`` holds now."""
        return self._held.get(name, 0)


class OwnerWriter:
    """Owner records of anonymous requests, off the hot path: the ones queued while a write
    is in flight go together in the next one (one pipelined round trip), so their cost per
    request falls as the load grows and no request waits for them."""

    def __init__(self, store: ResultStore, ttl_s: Callable[[], float]) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._pending: list[tuple[str, str]] = []
        self._unwritten: dict[str, str] = {}
        """Request id → key name, queued or in a write not done yet (``queued``)."""
        self._task: asyncio.Task[None] | None = None

    def add(self, request_id: str, name: str) -> None:
        """Queue ``name`` as the owner of ``request_id`` (written at the next write)."""
        self._pending.append((request_id, name))
        self._unwritten[request_id] = name
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._store.own_all(batch, self._ttl_s())
            except Exception as exc:
                log.warning("owners of %d requests not recorded (Redis): %s", len(batch), exc)
            finally:
                for request_id, _ in batch:
                    self._unwritten.pop(request_id, None)

    def queued(self, request_id: str) -> str | None:
        """The key name queued as the owner of ``request_id`` and not written yet (None: none):
        a caller's own cancel or read right after its answer must not wait for the write."""
        return self._unwritten.get(request_id)

    async def flushed(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for the queued records to be written."""
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=timeout_s)


def _not_yours(request_id: str) -> str:
    return (
        f"request {request_id!r} was not sent with this API key (only its owner's keys or "
        "an admin key may read, cancel or repeat it)"
    )


def _generator(chunks: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    """``Gateway.stream`` is an async generator (it has ``aclose``): closed when we are."""
    return cast(AsyncGenerator[Chunk, None], chunks)


_NOT_RUN = frozenset(
    {
        ErrorCode.INVALID_REQUEST,
        ErrorCode.MISSING_PROMPT,
        ErrorCode.OUT_OF_RANGE,
        ErrorCode.CONTEXT_LENGTH_EXCEEDED,
        ErrorCode.MODEL_NOT_FOUND,
        ErrorCode.IDEMPOTENCY_CONFLICT,
        ErrorCode.INVALID_JSON,
    }
)
"""Errors raised before any generation ran: the whole charge is given back."""
