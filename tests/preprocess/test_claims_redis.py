"""``RedisClaims.claim_routed`` on the real Redis: one script, the same answers as the four
commands it replaced (claim and route both SET NX with the TTL, the first of each wins)."""

from __future__ import annotations

import uuid

from genwire_preprocess.stores import RedisClaims

from genwire.results import claim_key, route_key
from genwire.settings import CommonSettings


async def test_claim_routed_keeps_the_first_claim_and_route(infra: CommonSettings) -> None:
    claims = RedisClaims(infra.redis_url, ttl_s=60)
    rid, gw = f"hstage-{uuid.uuid4().hex[:8]}", f"hstage-{uuid.uuid4().hex[:8]}"
    try:
        assert await claims.claim_routed(rid, "fp-a", '{"v":"1"}') == ("fp-a", '{"v":"1"}')
        # A redelivery (same body) and a reuse (another body): the first claim and route win.
        assert await claims.claim_routed(rid, "fp-a", '{"v":"2"}') == ("fp-a", '{"v":"1"}')
        assert await claims.claim_routed(rid, "fp-b", '{"v":"3"}') == ("fp-a", '{"v":"1"}')
        for key in (claim_key(rid), route_key(rid)):
            assert 0 < await claims.redis.ttl(key) <= 60
        # The gateway claimed first (its value carries a token): the fingerprint is compared.
        await claims.redis.set(claim_key(gw), "fp-g:token123", ex=60)
        assert await claims.claim_routed(gw, "fp-g", "r") == ("fp-g", "r")
        assert await claims.redis.get(claim_key(gw)) == b"fp-g:token123"
        assert await claims.redis.ttl(claim_key(gw)) <= 60
        # Redis restarted (its script cache is empty): the script is loaded again, not failed.
        # (An unknown digest takes the same NOSCRIPT path without flushing the shared Redis.)
        claims._claim_routed.sha = "0" * 40
        assert await claims.claim_routed(rid, "fp-b", "x") == ("fp-a", '{"v":"1"}')
    finally:
        await claims.redis.delete(*(f(i) for i in (rid, gw) for f in (claim_key, route_key)))
        await claims.close()


async def test_holder_reads_the_claim_without_taking_it(infra: CommonSettings) -> None:
    """What a refused record asks (is its id another request's?): a look that stores nothing."""
    claims = RedisClaims(infra.redis_url, ttl_s=60)
    rid, gw = f"hstage-{uuid.uuid4().hex[:8]}", f"hstage-{uuid.uuid4().hex[:8]}"
    try:
        assert await claims.holder(rid) is None
        assert await claims.redis.exists(claim_key(rid)) == 0  # nothing claimed by asking
        await claims.claim_routed(rid, "fp-a", "r")
        assert await claims.holder(rid) == "fp-a"
        await claims.redis.set(claim_key(gw), "fp-g:token123:d1", ex=60)  # the gateway's claim
        assert await claims.holder(gw) == "fp-g:token123:d1"  # all of it: fingerprint, digest
    finally:
        await claims.redis.delete(*(f(i) for i in (rid, gw) for f in (claim_key, route_key)))
        await claims.close()
