"""``MeteredGateway``'s Redis round trips per request, with in-memory fakes: a named request's
owner record rides in its claim (one round trip, nothing after the result), another key's id
is refused in that same round trip, and the owner records of anonymous requests are written
together off the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from genwire_gateway import usage
from genwire_gateway.auth import PRINCIPAL, AuthMiddleware, Principal
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import PERMISSION_DENIED, RATE_LIMITED, GatewayError
from genwire_gateway.http_api import install_error_handlers, openai_router
from genwire_gateway.limits import LimitExceeded, Ticket, TooLarge
from genwire_gateway.replies import WaiterRegistry
from genwire_gateway.telemetry import GatewayMetrics
from genwire_gateway.usage import (
    METRIC_KEY_REQUESTS,
    METRIC_KEY_TOKENS,
    REASON_WITHHELD,
    MeteredGateway,
    UsageMetrics,
)
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from genwire.apikeys import SCOPE_ADMIN, SCOPE_GENERATE, KeyRecord
from genwire.events import ControlEvent, Event, GenerationResult, Usage
from genwire.redaction import DEFAULT_PATTERNS, Redactor
from genwire.request import ErrorCode, GenerationRequest
from genwire.results import ClaimOutcome
from genwire.usage import UsageEvent

from .test_handlers import FakeProducer, FakeStore, _echo


class Producer(FakeProducer):
    async def publish(self, event: Event, **_: Any) -> None:
        self.events.append(event)


class Store(FakeStore):
    """``FakeStore`` plus owner records (the claim's ``key_owner``, ``own``, ``own_all``)."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[str, str] = {}
        self.owner_batches: list[list[str]] = []
        self.ttl_s = 86_400

    async def claim(  # type: ignore[override]
        self,
        request: GenerationRequest,
        ttl_s: float,
        *,
        key_owner: str | None = None,
        owner_ttl_s: float = 0.0,
        any_owner: bool = False,
        published: bytes | None = None,
    ) -> ClaimOutcome:
        rid = request.request_id or ""
        if key_owner:
            held = self.owners.setdefault(rid, key_owner)
            if held != key_owner and not any_owner:
                self.calls.append("claim")
                return ClaimOutcome(owner=False, key_owner=held, foreign=True)
        outcome = await super().claim(request, ttl_s, published=published)
        return ClaimOutcome(
            owner=outcome.owner,
            result=outcome.result,
            conflict=outcome.conflict,
            key_owner=self.owners.get(rid),
        )

    async def own(self, request_id: str, name: str, ttl_s: float) -> str:
        self.calls.append("own")
        return self.owners.setdefault(request_id, name)

    async def own_all(self, owners: list[tuple[str, str]], ttl_s: float) -> None:
        self.calls.append("own_all")
        await asyncio.sleep(0.01)  # a round trip: what comes meanwhile waits for the next
        self.owner_batches.append([rid for rid, _ in owners])
        for rid, name in owners:
            self.owners.setdefault(rid, name)


def _metered() -> tuple[MeteredGateway, Producer, Store, CollectorRegistry]:
    registry = WaiterRegistry()
    producer = Producer(registry, _echo)
    store = Store()
    metrics = CollectorRegistry()
    gateway = MeteredGateway(
        GatewaySettings(result_poll_s=0.05),
        producer,
        store,
        registry,
        usage_metrics=UsageMetrics(metrics),
    )
    return gateway, producer, store, metrics


def _as(name: str, *scopes: str) -> None:
    record = KeyRecord(name=name, hash=name * 8, scopes=list(scopes) or [SCOPE_GENERATE])
    PRINCIPAL.set(Principal(record=record))


async def test_a_named_request_is_one_round_trip_with_its_owner_in_the_claim() -> None:
    gateway, producer, store, _ = _metered()
    _as("team-a")
    result = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="m-1"))
    await gateway.drain()
    assert result.text == "echo:hi"
    assert store.calls == ["claim"]  # no separate owner record, nothing after the result
    assert store.owners == {"m-1": "team-a"}
    assert len(producer.requests) == 1


async def test_another_keys_id_is_refused_in_the_claim_and_nothing_is_published() -> None:
    gateway, producer, store, metrics = _metered()
    _as("team-a")
    first = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="m-2"))
    store.results["m-2"] = first  # stored, as postprocess does
    _as("team-b")
    for call in (
        gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="m-2")),
        _drain_stream(gateway, "m-2"),
    ):
        with pytest.raises(GatewayError) as info:
            await call
        assert info.value.code == PERMISSION_DENIED
    assert len(producer.requests) == 1
    forbidden = metrics.get_sample_value(
        METRIC_KEY_REQUESTS, {"key": "team-b", "outcome": "forbidden"}
    )
    assert forbidden == 2
    _as("ops", SCOPE_ADMIN)  # an admin may read it again
    again = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="m-2"))
    assert again.text == "echo:hi" and len(producer.requests) == 1


async def _drain_stream(gateway: MeteredGateway, rid: str) -> None:
    prepared = gateway.prepare({"prompt": "hi"}, request_id=rid, stream=True)
    async for _ in gateway.stream(prepared):
        pass


async def test_owners_of_anonymous_requests_are_written_together() -> None:
    gateway, _, store, _ = _metered()
    _as("team-a")

    async def one(i: int) -> str:
        prepared = gateway.prepare({"prompt": f"hi {i}"})
        await gateway.generate(prepared)
        return prepared.request_id

    ids = await asyncio.gather(*(one(i) for i in range(8)))
    await gateway.drain()
    assert "claim" not in store.calls and "own" not in store.calls
    assert sorted(rid for batch in store.owner_batches for rid in batch) == sorted(ids)
    assert len(store.owner_batches) < len(ids)  # together, not one round trip each
    assert {store.owners[rid] for rid in ids} == {"team-a"}


def _redacting(redact: Redactor) -> tuple[MeteredGateway, Producer]:
    registry = WaiterRegistry()
    producer = Producer(registry, _echo)
    gateway = MeteredGateway(
        GatewaySettings(result_poll_s=0.05),
        producer,
        Store(),
        registry,
        usage_metrics=UsageMetrics(CollectorRegistry()),
        redact=redact,
    )
    return gateway, producer


async def test_a_cancels_reason_is_redacted_before_it_is_published() -> None:
    """The caller's free text goes onto the request's trace: redacted like captured content."""
    gateway, producer = _redacting(Redactor(list(DEFAULT_PATTERNS)))
    await gateway.cancel("r-1", "mail me at someone@example.com when done")
    (event,) = producer.events
    assert isinstance(event, ControlEvent) and event.request_id == "r-1"
    assert event.reason == "mail me at [REDACTED:email] when done"


async def test_a_failing_redaction_hook_withholds_the_reason_and_the_cancel_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The operator's hook runs on every cancel's reason, the gateway's own too: one that
    raises must not stop the cancel (the model would run on), nor let the text through."""

    def broken(text: str) -> str:
        raise RuntimeError(f"hook bug on {text}")

    def mute(text: str) -> str:
        return None  # type: ignore[return-value]

    for hook, error in ((broken, "RuntimeError"), (mute, "TypeError")):
        gateway, producer = _redacting(Redactor(list(DEFAULT_PATTERNS), hook))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            await gateway.cancel("r-1", "secret text")
            await gateway.cancel("r-2", "deadline exceeded")
        assert [(e.request_id, e.reason) for e in producer.events] == [
            ("r-1", REASON_WITHHELD),
            ("r-2", REASON_WITHHELD),
        ]
        logged = [r.getMessage() for r in caplog.records]
        assert logged == [f"the redaction hook failed on a cancel's reason ({error})"]
        assert "secret" not in caplog.text


# -- limits: batches, repeats, a failing limiter ------------------------------------------------


class FakeLimiter:
    """``limits.Limiter``'s bookkeeping in memory (one window, no clock): the request slots and
    tokens charged, and each admission's size; ``down`` fails admissions like Redis would."""

    def __init__(self) -> None:
        self.requests = 0
        self.tokens = 0
        self.admissions: list[int] = []
        self.down = False

    def refusal(self, record: KeyRecord) -> None:
        return None

    async def admit_all(self, record: KeyRecord, budgets: list[int]) -> list[Ticket]:
        if self.down:
            raise ConnectionError("redis down")
        self.admissions.append(len(budgets))
        rpm = record.rpm or 0
        if rpm and len(budgets) > rpm:
            raise TooLarge(
                f"this batch has {len(budgets)} prompts: above {rpm} requests per minute"
            )
        if rpm and self.requests + len(budgets) > rpm:
            raise LimitExceeded(RATE_LIMITED, "rpm", f"{rpm} requests per minute", 30.0)
        self.requests += len(budgets)
        self.tokens += sum(budgets)
        return [Ticket(record.id, b, 0, 0, True, False) for b in budgets]

    async def admit(self, record: KeyRecord, tokens: int) -> Ticket:
        (ticket,) = await self.admit_all(record, [tokens])
        return ticket

    async def adjust(self, ticket: Ticket, actual_tokens: int) -> None:
        self.tokens += actual_tokens - ticket.tokens


def _limited(
    reply: Any = _echo, **settings: Any
) -> tuple[MeteredGateway, Producer, Store, FakeLimiter, CollectorRegistry]:
    registry = WaiterRegistry()
    producer = Producer(registry, reply)
    store = Store()
    limiter = FakeLimiter()
    metrics = CollectorRegistry()
    gateway = MeteredGateway(
        GatewaySettings(result_poll_s=0.05, **settings),
        producer,
        store,
        registry,
        limiter=limiter,  # type: ignore[arg-type]
        usage_metrics=UsageMetrics(metrics),
    )
    return gateway, producer, store, limiter, metrics


def _limiter_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The limiter outage's clock (``usage``'s ``time.monotonic``), moved by hand: ``clock[0]``
    (on the real one, a stall of the loaded machine in a sleep would move a request past the
    bound, or start a new outage)."""
    clock = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(usage, "time", fake)
    return clock


def _key(**limits: Any) -> KeyRecord:
    record = KeyRecord(name="team", hash="t" * 64, scopes=[SCOPE_GENERATE], **limits)
    PRINCIPAL.set(Principal(record=record))
    return record


def _usage(producer: Producer) -> list[str]:
    return [e.request_id for e in producer.events if isinstance(e, UsageEvent)]


def _requests(metrics: CollectorRegistry, outcome: str) -> float | None:
    return metrics.get_sample_value(METRIC_KEY_REQUESTS, {"key": "team", "outcome": outcome})


class KeyAuth:
    """An ``Authenticator`` that takes every key as ``record``'s."""

    def __init__(self, record: KeyRecord) -> None:
        self.record = record

    async def authenticate(self, header: str | None, scope: str | None) -> Principal:
        return Principal(self.record)


def _http(gateway: MeteredGateway, record: KeyRecord) -> httpx.AsyncClient:
    """The gateway's HTTP routes and auth middleware over ``gateway``."""
    app = FastAPI()
    app.include_router(openai_router())
    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    app.state.runtime = types.SimpleNamespace(tracer=TracerProvider().get_tracer("test"))
    app.state.gateway = gateway
    app.state.gateway_metrics = GatewayMetrics(CollectorRegistry())
    app.state.auth = KeyAuth(record)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def test_a_batch_is_admitted_all_or_nothing() -> None:
    """A completions batch takes its request slots and token budgets in one admission: refused,
    it charges nothing and publishes nothing; larger than the key's rpm, it is a 400 (it can
    never pass) rather than a 429 with a wait; admitted, its prompts are not admitted again."""
    gateway, producer, _, limiter, metrics = _limited()
    record = _key(rpm=3)
    prompts = {"max_tokens": 4}
    async with _http(gateway, record) as http:
        too_many = await http.post("/v1/completions", json={**prompts, "prompt": list("abcd")})
        one = await http.post("/v1/completions", json={**prompts, "prompt": "a"})
        no_room = await http.post("/v1/completions", json={**prompts, "prompt": list("abc")})
        charged = limiter.requests
        fits = await http.post("/v1/completions", json={**prompts, "prompt": list("ab")})
    await gateway.drain()
    assert too_many.status_code == 400, too_many.text
    assert "3 requests per minute" in too_many.json()["error"]["message"]
    assert _requests(metrics, "too_large") == 1
    assert one.status_code == 200 and charged == 1  # the refused batch took no slot
    assert no_room.status_code == 429 and no_room.headers["retry-after"] == "30"
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 2
    assert limiter.admissions == [4, 1, 3, 2]  # each batch once, its prompts not again
    assert limiter.requests == 3 and len(producer.requests) == 3
    assert limiter.tokens == 3 * 3  # every prompt's charge corrected to its usage (3)


async def test_repeats_of_a_named_request_are_charged_no_tokens_and_metered_once() -> None:
    """Repeats answered from the stored result (generate, stream, submit) count as requests
    (rpm, ``outcome="repeat"``) but charge no tokens, add no key tokens and publish no usage."""
    gateway, producer, store, limiter, metrics = _limited()
    _key(tpm=100_000)
    first = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="job-42"))
    store.results["job-42"] = first  # stored, as postprocess does
    for _ in range(2):
        again = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="job-42"))
        assert again.text == first.text
    await _drain_stream(gateway, "job-42")
    assert await gateway.submit(gateway.prepare({"prompt": "hi"}, request_id="job-42")) == "job-42"
    await gateway.drain()
    assert len(producer.requests) == 1
    assert _usage(producer) == ["job-42"]
    assert limiter.requests == 5 and limiter.tokens == 3  # one generation's usage
    tokens = metrics.get_sample_value(METRIC_KEY_TOKENS, {"key": "team", "kind": "completion"})
    assert tokens == 2
    assert (_requests(metrics, "ok"), _requests(metrics, "repeat")) == (1, 4)


async def test_a_repeat_joined_in_flight_and_a_left_caller_are_metered_once() -> None:
    """A repeat that joins the first call's generation is not metered; a named request whose
    caller left runs on for the retry, and is metered once when it lands (followed, like a
    Submit), its retry not at all."""
    gateway, producer, store, limiter, _ = _limited(reply=None)
    _key(tpm=100_000)
    calls = [
        asyncio.create_task(gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="j-1")))
        for _ in range(3)
    ]
    await asyncio.sleep(0.05)
    left_repeat = calls.pop()  # a repeat whose caller left: its charge is given back too
    left_repeat.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left_repeat
    _echo(producer.requests[0], gateway.registry)
    assert {(await c).text for c in calls} == {"echo:hi"}
    left = asyncio.create_task(
        gateway.generate(gateway.prepare({"prompt": "bye"}, request_id="j-2"))
    )
    await asyncio.sleep(0.05)
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    request = producer.requests[1]
    store.results["j-2"] = GenerationResult(
        request_id="j-2", text="late", usage=Usage(prompt_tokens=1, completion_tokens=4)
    )
    retry = await gateway.generate(gateway.prepare({"prompt": "bye"}, request_id="j-2"))
    await gateway.drain()
    assert retry.text == "late" and request.request_id == "j-2"
    assert sorted(_usage(producer)) == ["j-1", "j-2"]
    assert limiter.tokens == 3 + 5  # each generation's real usage, once


async def test_a_conflicting_request_publishes_no_usage_under_the_ids_owner() -> None:
    """A different body under a named id already used is refused (409) and its charge given
    back, but no usage event is published: the id is the first request's, and ``genwire
    usage`` keeps one event per id (a 0-token conflict published first would hide its real
    tokens)."""
    gateway, producer, store, limiter, metrics = _limited()
    _key(tpm=100_000)
    first = await gateway.generate(gateway.prepare({"prompt": "hi"}, request_id="j-c"))
    store.results["j-c"] = first
    with pytest.raises(GatewayError) as info:
        await gateway.generate(gateway.prepare({"prompt": "other"}, request_id="j-c"))
    assert info.value.code == ErrorCode.IDEMPOTENCY_CONFLICT
    await gateway.drain()
    assert _usage(producer) == ["j-c"]  # the first request's, once
    assert limiter.tokens == 3  # the conflict's charge was given back
    assert _requests(metrics, "error") == 1


async def test_the_limiter_is_bypassed_at_most_auth_stale_s(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limiter that keeps failing (Redis out of memory refuses its script, not the key reads)
    lets limited keys through uncounted for ``auth_stale_s`` from its first failure in a row,
    then refuses them (503) until it answers; logged a few times, not once per request."""
    clock = _limiter_clock(monkeypatch)
    gateway, _, _, limiter, metrics = _limited(auth_stale_s=0.3)
    _key(rpm=100)
    limiter.down = True
    with caplog.at_level(logging.WARNING, logger="genwire_gateway.usage"):
        for i in range(20):
            await gateway.generate(gateway.prepare({"prompt": f"hi {i}"}))
            clock[0] += 0.01  # 0.2 s in all: within the bound
        clock[0] += 0.15  # past it
        for _ in range(3):
            with pytest.raises(GatewayError) as refused:
                await gateway.generate(gateway.prepare({"prompt": "hi"}))
            assert refused.value.code == ErrorCode.UNAVAILABLE
        assert "rate limiter (Redis) has failed" in refused.value.message
        limiter.down = False
        await gateway.generate(gateway.prepare({"prompt": "back"}))
        limiter.down = True  # a new outage: its own bound
        await gateway.generate(gateway.prepare({"prompt": "again"}))
    await gateway.drain()
    assert limiter.requests == 1
    assert _requests(metrics, "unavailable") == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "genwire_gateway.usage"]
    assert len(logged) == 4, logged  # failing, refusing, answering again, failing again
    assert "answers again" in logged[2]


async def test_a_limiter_refusal_ends_its_outage_and_blips_apart_are_two_outages() -> None:
    """A refusal (over the rpm) is the limiter answering: the outage before it is over. And a
    failure long after the last, with no admission asked in between, is a new outage with its
    own bound, not the first one's continuation (which would refuse at once)."""
    gateway, _, _, limiter, metrics = _limited(auth_stale_s=0.3)
    _key(rpm=1)
    await gateway.generate(gateway.prepare({"prompt": "counted"}))  # the key's one slot
    limiter.down = True
    await gateway.generate(gateway.prepare({"prompt": "blip"}))  # served uncounted
    limiter.down = False
    with pytest.raises(GatewayError) as over:
        await gateway.generate(gateway.prepare({"prompt": "over"}))
    assert over.value.code == "rate_limit_exceeded"
    limiter.down = True
    await asyncio.sleep(0.35)  # past the bound since the first blip, a refusal between
    await gateway.generate(gateway.prepare({"prompt": "second blip"}))  # a new outage
    await asyncio.sleep(0.65)  # two bounds, no admission asked meanwhile: it ended unseen
    await gateway.generate(gateway.prepare({"prompt": "third blip"}))
    limiter.down = False
    await gateway.drain()
    assert not _requests(metrics, "unavailable")  # never refused: each blip had its bound


async def test_sparse_traffic_against_a_limiter_that_stays_broken_is_one_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst every little while (well under two bounds apart) does not start a new outage
    each time: once the bound has passed since the first failure, limited keys are refused."""
    clock = _limiter_clock(monkeypatch)
    gateway, _, _, limiter, metrics = _limited(auth_stale_s=0.3)
    _key(rpm=1, tokens_per_day=10)
    limiter.down = True
    for _ in range(4):  # 0.2 s apart: 0.6 s in all, twice the bound
        with contextlib.suppress(GatewayError):
            await gateway.generate(gateway.prepare({"prompt": "burst"}))
        clock[0] += 0.2
    await gateway.drain()
    assert _requests(metrics, "unavailable") == 2  # the last two, past the bound


async def test_a_left_callers_request_is_followed_until_its_deadline_not_the_longest_wait() -> None:
    """Its result never lands (the pipeline lost it, or stopped at the deadline without one):
    the follower gives up at the caller's deadline and ``claim_grace_s`` (1 s at least), not
    after the ``max_timeout_s`` any caller may wait (600 s: such followers would pile up)."""
    gateway, _, _, _, _ = _limited(reply=None, claim_grace_s=0.1)
    _key(tpm=100_000)
    began = time.monotonic()
    left = asyncio.create_task(
        gateway.generate(gateway.prepare({"prompt": "bye"}, request_id="f-1", timeout_s=0.3))
    )
    await asyncio.sleep(0.05)
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    followers = set(gateway._settling)
    assert followers, "followed in the background"
    # When it gave up, measured from before the request (a stall of the loaded machine can
    # only make it later): the caller's 0.3 s and the grace, 1 s at least (not the 0.1 s of
    # claim_grace_s), then not much later: far from the 600 s of max_timeout_s.
    done, _ = await asyncio.wait(followers, timeout=10.0)
    took = time.monotonic() - began
    assert done == followers, "still followed 10 s later: not given up at the deadline"
    assert took > 1.25, f"given up {took:.2f} s after the request: the grace is 1 s at least"
    assert not gateway._settling
