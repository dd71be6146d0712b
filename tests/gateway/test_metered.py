"""``MeteredGateway``'s Redis round trips per request, with in-memory fakes: a named request's
owner record rides in its claim (one round trip, nothing after the result), another key's id
is refused in that same round trip, and the owner records of anonymous requests are written
together off the hot path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from genwire_gateway.auth import PRINCIPAL, Principal
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import PERMISSION_DENIED, GatewayError
from genwire_gateway.replies import WaiterRegistry
from genwire_gateway.usage import (
    METRIC_KEY_REQUESTS,
    REASON_WITHHELD,
    MeteredGateway,
    UsageMetrics,
)
from prometheus_client import CollectorRegistry

from genwire.apikeys import SCOPE_ADMIN, SCOPE_GENERATE, KeyRecord
from genwire.events import ControlEvent, Event
from genwire.redaction import DEFAULT_PATTERNS, Redactor
from genwire.request import GenerationRequest
from genwire.results import ClaimOutcome

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
    ) -> ClaimOutcome:
        rid = request.request_id or ""
        if key_owner:
            held = self.owners.setdefault(rid, key_owner)
            if held != key_owner and not any_owner:
                self.calls.append("claim")
                return ClaimOutcome(owner=False, key_owner=held, foreign=True)
        outcome = await super().claim(request, ttl_s)
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
