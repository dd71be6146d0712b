"""Usage events on ``genwire.usage``: one per completed request, for cost attribution.

Two stages emit them, never both for one request (docs/security.md, "Usage"):

- the gateway (``genwire_gateway.usage.MeteredGateway``) for the requests it received from an
  authenticated caller: ``key_name`` is the API key's name, checked by the gateway;
- postprocess for the requests produced straight to ``genwire.requests`` by a Kafka client
  (no ``genwire_origin`` header: no gateway waits for them): ``key_name`` is the
  ``genwire_principal`` header the producer set, else ``kafka``. Kafka records do not carry the
  producer's authenticated identity, so that name is a claim, as trustworthy as the topic's
  ACLs (in secure mode only named SCRAM users may write ``genwire.requests``).

Each request is counted once: postprocess emits only when its result is the first one stored
for the request id (the result store's ``SET NX``, the stages' dedupe), so a redelivered chunk
emits nothing; ``genwire usage`` also keeps only the first event of a request id.
"""

from __future__ import annotations

from pydantic import Field

from genwire.events import Event, now_ms
from genwire.topics import Topic

SOURCE_GATEWAY = "gateway"
"""Metered by the gateway: ``key_name`` is an API key the gateway checked."""
SOURCE_KAFKA = "kafka"
"""Produced straight to ``genwire.requests``: ``key_name`` is the producer's claim."""
KAFKA_PRINCIPAL = "kafka"
"""``key_name`` of a Kafka client's request that named nobody (no ``genwire_principal``)."""


class UsageEvent(Event):
    """One completed request's usage, on ``genwire.usage`` (keyed by request id)."""

    TOPIC = Topic.USAGE
    key_name: str
    """Who to attribute the cost to: the API key's name (never the key), or for a request
    produced straight to Kafka the ``genwire_principal`` header (else ``kafka``)."""
    key_id: str = ""
    source: str = SOURCE_GATEWAY
    """``gateway`` (an API key the gateway checked) or ``kafka`` (a producer's claim)."""
    model: str = ""
    model_version: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float = 0.0
    """From the gateway (or preprocess, for a Kafka client) receiving the request to its
    result."""
    finish_reason: str = ""
    """``stop``, ``length``, ... or ``error`` (then ``error_code`` says which)."""
    error_code: str = ""
    stream: bool = False
    charged_tokens: int = 0
    """What the key's token limits were charged in the end (0: the key has none, or a Kafka
    client's request: limits are the gateway's)."""
    completed_ms: float = Field(default_factory=now_ms)


def first_per_request(events: list[UsageEvent]) -> list[UsageEvent]:
    """The first event of each request id (a reader's dedupe: a producer retried, or a
    stage emitted after a crash between publishing and committing)."""
    seen: set[str] = set()
    out: list[UsageEvent] = []
    for event in events:
        if event.request_id in seen:
            continue
        seen.add(event.request_id)
        out.append(event)
    return out
