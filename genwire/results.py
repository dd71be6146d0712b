"""A request's records in Redis: its result (written by postprocess, read by the gateway) and
its idempotency claim (set by the gateway and by preprocess).

- ``genwire:result:<request_id>`` → GenerationResult JSON. Postprocess stores it ``SET NX`` with
  a TTL: the first result wins, so a redelivery never changes the answer. The gateway reads it
  when a result reached no waiter (it landed before the waiter registered, or on another
  instance's watch).
- ``genwire:claim:<request_id>`` → the fingerprint (``genwire.request.fingerprint``) of the
  first request with that id. A named request (the caller chose its id) is claimed by the
  gateway before it is published: the first caller owns it and publishes; a repeat finds the
  stored result, or waits for the one in flight; a different request under the same id is
  refused. Preprocess claims every request the same way, so a Kafka client that reuses an id
  is refused like a gateway caller. Anonymous gateway requests skip the claim here: nothing can
  repeat them. While in flight a gateway's claim lives for the caller's deadline and a grace
  (a gateway that dies before publishing frees the id); storing the result (``put_first``)
  extends the claim to the result's TTL in the same round trip, so an id's fingerprint lives
  at least as long as its answer whoever (or whatever gateway) waits for it. The gateway's
  claim is ``<fingerprint>:<token>:<digest>``: a token of the call, and the digest of the exact
  value it publishes (``published_digest``), by which preprocess knows the claim holder's own
  record when it refuses one that has no fingerprint (a schema a newer preprocess refuses).
- ``genwire:route:<request_id>`` → the route (version, arm, shadow, policy revision) preprocess
  resolved first (SET NX in the claim's round trip, same TTL): a redelivery or a repeat is
  prepared for that version even if the policy changed in between.
- ``genwire:owner:<request_id>`` → the name of the API key whose caller sent the request (SET
  NX, by the gateway, before it publishes; for a named request in the claim's own round trip).
  A named or submitted id is recorded only while it has neither a claim nor a result: an id
  that exists without an owner (produced straight to Kafka, sent while auth was off) stays
  unowned, an admin's to read, and a key that names it is refused (``foreign``). ``GetResult``
  and ``Cancel`` of a request another key owns, or no key owns, are refused unless the caller
  has the ``admin`` scope (docs/security.md).

Every command a request's happy path needs is one round trip: the gateway's claim (owner,
result, claim: one Lua script) and postprocess's ``put_first`` (result, claim's lifetime,
the earlier result: one Lua script).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from genwire.errors import RetryableError
from genwire.events import ErrorInfo, GenerationResult
from genwire.redisconn import REDIS, connect
from genwire.request import ErrorCode, GenerationRequest, fingerprint, http_status

RESULT_KEY_PREFIX = "genwire:result:"
"""Redis key of a stored result: ``genwire:result:<request_id>`` → GenerationResult JSON."""

CLAIM_KEY_PREFIX = "genwire:claim:"
"""``genwire:claim:<request_id>`` → the fingerprint of the first request with that id (SET NX):
a later request with the same id and another fingerprint is an ``idempotency_conflict``."""


ROUTE_KEY_PREFIX = "genwire:route:"
"""``genwire:route:<request_id>`` → the route preprocess resolved first for the request (model
version, arm, shadow, policy revision; SET NX beside the claim, in the same round trip): a
redelivery reuses it, whatever the policy says by then."""


OWNER_KEY_PREFIX = "genwire:owner:"
"""``genwire:owner:<request_id>`` → the name of the API key that sent the request (SET NX)."""


_CLAIM = """
-- KEYS: result, claim, owner. ARGV: claim value, claim TTL, owner name ('' none), owner TTL,
-- '1' when the caller may use an id that is not its key's (admin).
local owner = false
if ARGV[3] ~= '' then
  local fresh = redis.call('EXISTS', KEYS[1], KEYS[2]) == 0
  if fresh then redis.call('SET', KEYS[3], ARGV[3], 'NX', 'EX', ARGV[4]) end
  owner = redis.call('GET', KEYS[3])
  if owner ~= ARGV[3] and ARGV[5] ~= '1' and (owner or not fresh) then
    return {false, false, owner}
  end
end
local stored = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2])
return {stored, redis.call('GET', KEYS[2]), owner}
"""
"""A named request's claim in one round trip: its owner (SET NX, only for an id with neither a
result nor a claim: an id that already exists unowned, a Kafka client's ``anon-<p>-<o>``, must
not become the first key's that names it), its stored result, its claim (SET NX) and who holds
it. An id another key owns, or an existing one no key owns, is refused before anything is
claimed (unless admin)."""

_OWN = """
-- KEYS: owner, result, claim. ARGV: owner name, owner TTL. Returns the owner (nil: none).
if redis.call('EXISTS', KEYS[2], KEYS[3]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
end
return redis.call('GET', KEYS[1])
"""
"""A submitted request's owner, atomically: recorded only for an id with neither a result nor
a claim (as in ``_CLAIM``), then read back."""

_PUT_FIRST = """
-- KEYS: result, claim, owner. ARGV: result value, TTL. Returns the earlier result (nil: stored).
local set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  local left = redis.call('TTL', KEYS[i])
  if left >= 0 and left < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
if set then return false end
return redis.call('GET', KEYS[1])
"""
"""Store a result unless one is stored, keep the id's claim and owner record (each if any, and
expiring sooner) as long as the result, and return the earlier result: one round trip. The
owner record too: a result outliving it would be an existing id no key owns, which its owner's
own retry may not name (``_CLAIM``)."""


_REPLACE = """
-- KEYS: result, claim, owner. ARGV: the value read, the new value, TTL. Returns nil when the
-- new value is stored, else the value stored now (another writer came first).
local now = redis.call('GET', KEYS[1])
if now and now ~= ARGV[1] then return now end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
local ttl = tonumber(ARGV[3])
for i = 2, #KEYS do
  local left = redis.call('TTL', KEYS[i])
  if left >= 0 and left < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return false
"""
"""``put_first``'s replacement of a stored error, compare-and-set: only while the value read is
still the one stored (two real results at once: one stores, the other returns it)."""


def owner_key(request_id: str) -> str:
    """The Redis key of a request id's owning API key name."""
    return f"{OWNER_KEY_PREFIX}{request_id}"


def result_key(request_id: str) -> str:
    """The Redis key under which postprocess stores the result of ``request_id`` (SET NX, TTL)."""
    return f"{RESULT_KEY_PREFIX}{request_id}"


def claim_key(request_id: str) -> str:
    """The Redis key of a request id's idempotency claim."""
    return f"{CLAIM_KEY_PREFIX}{request_id}"


def route_key(request_id: str) -> str:
    """The Redis key of the route preprocess resolved first for ``request_id``."""
    return f"{ROUTE_KEY_PREFIX}{request_id}"


def claimed_fingerprint(value: bytes | str) -> str:
    """The fingerprint in a claim's value (``<fingerprint>``, or the gateway's
    ``<fingerprint>:<token>:<digest>``: a token of its own, so a retried ``SET NX`` still tells
    it that it won, and ``published_digest`` of what it publishes)."""
    text = value.decode() if isinstance(value, bytes) else value
    return text.split(":", 1)[0]


def published_digest(value: bytes) -> str:
    """The digest of a request's value as the gateway publishes it, kept in its claim."""
    return hashlib.sha256(value).hexdigest()[:32]


def claimed_digest(value: bytes | str) -> str | None:
    """The ``published_digest`` in a claim's value, or None (a claim without one: preprocess's,
    or an older gateway's)."""
    text = value.decode() if isinstance(value, bytes) else value
    parts = text.split(":")
    return parts[2] if len(parts) == 3 and parts[2] else None


@dataclass(frozen=True)
class ClaimOutcome:
    """What a named request found in Redis."""

    owner: bool
    """This call claimed the id: it must publish the request."""
    result: GenerationResult | None = None
    """The id already has a stored result: answer with it."""
    conflict: bool = False
    """The id was claimed by a different request."""
    key_owner: str | None = None
    """The API key name recorded as the id's owner (when the claim named one)."""
    foreign: bool = False
    """The id is another key's and the caller may not use it: nothing was claimed."""
    refused: ErrorInfo | None = None
    """With ``conflict``: the error of the other request's stored result, when it was refused
    (the gateway's 409 quotes it; never its text, which is that request's)."""


@dataclass(frozen=True)
class Ownership:
    """An id's owner record and whether it exists (``ResultStore.ownership``)."""

    owner: str | None
    """The API key name recorded as its owner (None: none)."""
    known: bool
    """It has a claim or a stored result."""


class ResultStore:
    """Results (and the gateway's claims) in one Redis database.

    ``ttl_s`` is how long a result is kept (postprocess), and with it the claim of its id
    (``put_first`` extends it), so a repeat is answered with the result and a reuse of the id
    for another request is refused as long as the result lives. The gateway's ``ttl_s`` sizes
    the owner records it writes.
    """

    def __init__(self, redis: Redis[bytes], *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._own = redis.register_script(_OWN)
        self._put_first = redis.register_script(_PUT_FIRST)
        self._replace = redis.register_script(_REPLACE)

    @classmethod
    def connect(cls, url: str, *, ttl_s: int, timeout_s: float = 2.0) -> ResultStore:
        """A store on its own connection pool (``close`` closes it)."""
        return cls(connect(url, timeout_s=timeout_s), ttl_s=ttl_s)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it

    # -- results (postprocess writes, the gateway reads) -------------------------------------

    async def get(self, request_id: str) -> GenerationResult | None:
        """The stored result of ``request_id``, if any."""
        raw = await self.redis.get(result_key(request_id))
        return None if raw is None else GenerationResult.model_validate_json(raw)

    async def put_first(self, result: GenerationResult) -> GenerationResult:
        """Store ``result``, or return the earlier one (a redelivery never changes the answer).

        One exception: a stored server-side failure (a dependency down through every replay,
        one postprocess stored for a chunk it could not handle: ``replaceable``) was never an
        answer, so a real result (a later ``genwire dlq replay``, the record's next owner)
        replaces it. A Redis failure is a ``RetryableError`` (the consumer waits it out).
        """
        rid = result.request_id
        key = result_key(rid)
        value = result.model_dump_json(exclude_none=True)
        try:
            keys = [key, claim_key(rid), owner_key(rid)]
            existing = await self._put_first(keys=keys, args=[value, self.ttl_s])
            if existing is None:  # stored (the claim lives as long now)
                return result
            stored = GenerationResult.model_validate_json(existing)
            if replaceable(stored) and result.error is None:
                now = await self._replace(keys=keys, args=[existing, value, self.ttl_s])
                if now is None:
                    return result
                stored = GenerationResult.model_validate_json(now)
        except RedisError as exc:  # the consumer waits the outage out (never an error result)
            raise RetryableError(f"redis: {exc}", dependency=REDIS) from None
        return stored

    # -- claims of named requests (the gateway) ----------------------------------------------

    async def claim(
        self,
        request: GenerationRequest,
        ttl_s: float,
        *,
        key_owner: str | None = None,
        owner_ttl_s: float = 0.0,
        any_owner: bool = False,
        published: bytes | None = None,
    ) -> ClaimOutcome:
        """Claim a request for ``ttl_s`` in one round trip: result?, claim it, whose is it?

        With ``key_owner`` (the caller's API key name) the same round trip first records it as
        the id's owner for ``owner_ttl_s`` if the id is new (no owner, claim or result: ``own``);
        an id another key owns, or that exists with no owner, is ``foreign`` and not claimed,
        unless ``any_owner`` (an admin). The claim's TTL covers the request in flight: storing
        its result extends it (``put_first``). A conflict carries the error of the id's stored
        result, if it was refused (the gateway's 409 quotes it).
        ``published``: the value this call will publish if it wins (its digest is claimed too).
        """
        assert request.request_id is not None
        rid = request.request_id
        mine = fingerprint(request)
        # A token of this call: the Redis client retries a command that timed out, so a SET NX
        # that succeeded but answered late fails on the retry; the token still says we won.
        value = f"{mine}:{uuid.uuid4().hex[:16]}"
        if published is not None:
            value += f":{published_digest(published)}"
        stored, holder, owner = await self._claim(
            keys=[result_key(rid), claim_key(rid), owner_key(rid)],
            args=[
                value,
                max(1, math.ceil(ttl_s)),
                key_owner or "",
                max(1, math.ceil(owner_ttl_s)),
                "1" if any_owner else "0",
            ],
        )
        named = None if owner is None else bytes(owner).decode()
        if key_owner and named != key_owner and not any_owner:  # the script claimed nothing
            return ClaimOutcome(owner=False, key_owner=named, foreign=True)
        if holder is not None and claimed_fingerprint(bytes(holder)) != mine:
            earlier = None if stored is None else GenerationResult.model_validate_json(stored)
            refused = None if earlier is None else earlier.error
            return ClaimOutcome(owner=False, conflict=True, key_owner=named, refused=refused)
        if stored is not None:
            result = GenerationResult.model_validate_json(stored)
            return ClaimOutcome(owner=False, result=result, key_owner=named)
        return ClaimOutcome(
            owner=holder is not None and bytes(holder).decode() == value, key_owner=named
        )

    async def release(self, request_id: str) -> None:
        """Drop a claim whose request was never published, so a retry may publish it."""
        await self.redis.delete(claim_key(request_id))

    # -- owners (the API key that sent a request; the gateway) -------------------------------

    async def own(self, request_id: str, name: str, ttl_s: float) -> str | None:
        """Record ``name`` as the owner of ``request_id`` if the id is new (no owner, claim or
        result; one script, so nothing comes in between); returns the owner (``name``, the
        earlier one, or None: the id exists and no key owns it). Kept ``ttl_s`` (the result's
        TTL and then some)."""
        ttl = max(1, math.ceil(ttl_s))
        keys = [owner_key(request_id), result_key(request_id), claim_key(request_id)]
        holder = await self._own(keys=keys, args=[name, ttl])
        return None if holder is None else bytes(holder).decode()

    async def own_all(self, owners: list[tuple[str, str]], ttl_s: float) -> None:
        """``own`` for many (request id, key name) pairs in one round trip, reading nothing
        back and whether or not the id exists: the anonymous requests' ids are the gateway's
        own (random: nobody else can own them), and preprocess may have claimed them already
        (their records are written after they are published)."""
        if not owners:
            return
        pipe = self.redis.pipeline(transaction=False)
        for request_id, name in owners:
            pipe.set(owner_key(request_id), name, nx=True, ex=max(1, math.ceil(ttl_s)))
        await pipe.execute()

    async def owner(self, request_id: str) -> str | None:
        """The name of the API key that sent ``request_id`` (None: none recorded)."""
        raw = await self.redis.get(owner_key(request_id))
        return None if raw is None else raw.decode()

    async def known(self, request_id: str) -> bool:
        """Whether the id was claimed (accepted here and not expired)."""
        return bool(await self.redis.exists(claim_key(request_id)))

    async def ownership(self, request_id: str) -> Ownership:
        """Who owns ``request_id`` and whether it exists (a claim or a result), in one round
        trip: what ``GetResult`` and ``Cancel`` need to tell an id of the caller's key from
        another's, an unowned one, and one nobody knows."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(owner_key(request_id))
        pipe.exists(claim_key(request_id), result_key(request_id))
        owner, existing = await pipe.execute()
        return Ownership(
            owner=None if owner is None else bytes(owner).decode(), known=bool(existing)
        )


def replaceable(stored: GenerationResult) -> bool:
    """A stored result a real one replaces (``put_first``): a server-side failure (a 5xx code,
    or a model version missing where the chunk was handled), never an answer to the request
    itself (a refusal, ``content_filtered``: a later run must not get round it). No answer:
    not metered either (the real one that replaces it is)."""
    error = stored.error
    if error is None:
        return False
    return error.code == ErrorCode.MODEL_NOT_FOUND or http_status(error.code) >= 500
