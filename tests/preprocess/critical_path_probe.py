"""Probe: where a request's wall-clock milliseconds go inside preprocess, before its publish.

Not a test (pytest does not collect it): it calls the handler's pieces one by one, as
``Preprocessor.handle`` does, against the stack's real Redis, Triton (metadata, cached) and
model repository, with ``perf_counter`` around each, then the whole ``handle_routed`` for a
fresh request id, and prints p50/p95 per piece in ms. Touches the shared stack: run it under
``flock -o /tmp/gw/stack.lock`` and never while ``/tmp/gw/QUIET`` exists.

    python tests/preprocess/critical_path_probe.py -n 500

Its Redis keys (``genwire:{claim,route}:probe-<run>-*``) are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from genwire_bench.stats import Laps
from genwire_preprocess.handlers import Preprocessor, derive_seed
from genwire_preprocess.options import check_options, sampling_of
from genwire_preprocess.stores import RedisClaims, TritonVersions

from genwire.events import PreparedRequest, Timings, dump, now_ms
from genwire.request import GenerationRequest, fingerprint, parse_request
from genwire.results import claim_key, claimed_fingerprint, route_key
from genwire.service.loop import run as run_loop
from genwire.settings import ServiceSettings
from genwire.tokenization import AssetStore

PROMPTS = (
    "Once upon a time",
    "Explain why the sky is blue in two sentences.",
    "Dear team, thank you for all the hard work this quarter. As we plan the next",
    "Question: what is the capital of Australia? Answer:",
)


def raw_request(run: str, i: int, stream: bool) -> tuple[bytes, bytes]:
    """A bench-like request (``genwire bench``'s kafka target: prompt, 32 tokens, seeded)."""
    return GenerationRequest(
        request_id=f"probe-{run}-{i}",
        model="genwire-gpt",
        prompt=PROMPTS[i % len(PROMPTS)],
        max_tokens=32,
        temperature=0.0,
        seed=abs(i),
        stream=stream,
    ).to_kafka()


async def pipelined_claim(
    claims: RedisClaims, request_id: str, fingerprint: str, route: str
) -> tuple[str, str | None]:
    """``claim_routed`` as it was before the Lua script: four commands in one pipeline."""
    key, rkey = claim_key(request_id), route_key(request_id)
    pipe = claims.redis.pipeline(transaction=False)
    pipe.set(key, fingerprint, nx=True, ex=claims.ttl_s)
    pipe.get(key)
    pipe.set(rkey, route, nx=True, ex=claims.ttl_s)
    pipe.get(rkey)
    _, holder, _, stored = await pipe.execute()
    held = fingerprint if holder is None else claimed_fingerprint(bytes(holder))
    return held, None if stored is None else bytes(stored).decode()


class PipelinedClaims:
    """``RedisClaims`` with ``claim_routed`` as it was (a pipeline): the handler before."""

    def __init__(self, claims: RedisClaims) -> None:
        self.claims = claims

    async def claim(self, request_id: str, fingerprint: str) -> str:
        return await self.claims.claim(request_id, fingerprint)

    async def claim_routed(
        self, request_id: str, fingerprint: str, route: str
    ) -> tuple[str, str | None]:
        return await pipelined_claim(self.claims, request_id, fingerprint, route)

    async def holder(self, request_id: str) -> str | None:
        return await self.claims.holder(request_id)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=500, help="requests per measurement")
    ap.add_argument("--pace-ms", type=float, default=2.0, help="pause between requests")
    args = ap.parse_args()
    cfg = ServiceSettings()
    run = uuid.uuid4().hex[:8]
    assets = AssetStore(cfg.repository)
    claims = RedisClaims(cfg.redis_url, 86_400, cfg.redis_timeout_s)
    versions = TritonVersions(cfg.triton_http_url)
    pre = Preprocessor(assets, default_model="genwire-gpt", claims=claims, versions=versions)
    before = Preprocessor(
        assets, default_model="genwire-gpt", claims=PipelinedClaims(claims), versions=versions
    )
    for i in range(20):  # warm: tokenizer loaded, Redis connected, Triton's version cached
        await pre.handle_routed(parse_request(raw_request(run, -1 - i, False)[1]))
    laps, whole = Laps(), Laps()
    await pipelined_claim(claims, f"probe-{run}-warm", "w", "r")
    try:
        for i in range(args.n):
            key, raw = raw_request(run, i, stream=i % 2 == 1)
            laps.start()
            req = parse_request(raw, key=key)
            laps.lap("decode (parse_request)")
            route = await pre.router.route(req.model or "genwire-gpt", req.request_id or "", {})
            laps.lap("router.route")
            mine = fingerprint(req)
            laps.lap("fingerprint")
            held, _ = await claims.claim_routed(req.request_id or "", mine, route.encode())
            laps.lap("claims.claim_routed (Redis)")
            assert held == mine
            a = await assets.aget(route.model, route.version or None)
            laps.lap("assets.aget")
            check_options(req, a, max_generation_tokens=pre.max_generation_tokens)
            await pre.guided.check(req.guided, a)
            laps.lap("check_options + guided.check")
            pre.input_filter.check(req.prompt or "")
            laps.lap("input filter")
            ids = a.encode(req.prompt or "", add_special_tokens=True)
            laps.lap("tokenize")
            prepared = PreparedRequest(
                request_id=req.request_id or "",
                model=route.model,
                model_version=a.version,
                arm=route.arm,
                input_ids=ids,
                sampling=sampling_of(req, a, derive_seed(req.request_id or "")),
                stream=req.stream,
                metadata=dict(req.metadata),
                timings=Timings(received=now_ms(), prepared=now_ms()),
            )
            laps.lap("PreparedRequest")
            dump(prepared)
            laps.lap("dump (the publish's encode)")
            await pipelined_claim(claims, f"{req.request_id}-p", mine, route.encode())
            laps.lap("claim_routed as a pipeline (before)")
            # The same request end to end, under fresh ids: the handler as it was (claim, then
            # the rest) and as it is, in alternating order.
            for turn in (0, 1) if i % 2 == 0 else (1, 0):
                key, raw = raw_request(run, (2 + turn) * args.n + i, stream=i % 2 == 1)
                whole.start()
                if turn == 0:
                    await before.handle_routed(parse_request(raw, key=key))
                    whole.lap("handler before (pipelined claim)")
                else:
                    await pre.handle_routed(parse_request(raw, key=key))
                    whole.lap("handler after (claim as one script)")
            await asyncio.sleep(args.pace_ms / 1000)
    finally:
        keys = [k async for k in claims.redis.scan_iter(match=f"genwire:*:probe-{run}-*")]
        for start in range(0, len(keys), 500):
            await claims.redis.delete(*keys[start : start + 500])
        await claims.close()
        await versions.close()
    print(laps.report(f"preprocess pieces, {args.n} requests"))
    # router.route when Triton's version answer is old: past cache_s (2 s) it is asked again
    # inline (every request did, once per 2 s, before); past half of it, in the background.
    refresh = Laps()
    versions = TritonVersions(cfg.triton_http_url)
    pre.router.versions = versions
    try:
        await versions.listed("genwire-gpt")
        for i in range(min(args.n, 100)):
            for age, name in (
                ((2.5, "inline refresh (before)"), (1.5, "background refresh (after)"))
                if i % 2 == 0
                else ((1.5, "background refresh (after)"), (2.5, "inline refresh (before)"))
            ):
                _, listed = versions._cache["genwire-gpt"]
                versions._cache["genwire-gpt"] = (time.monotonic() - age, listed)
                refresh.start()
                await pre.router.route("genwire-gpt", f"probe-{run}", {})
                refresh.lap(f"router.route, answer {age} s old: {name}")
                await asyncio.sleep(0.02)  # the background refresh ends
    finally:
        await versions.close()
    print(refresh.report("router.route when its cached version answer ages (alternating)"))
    print(whole.report("preprocess handler, before and after (alternating, fresh ids)"))


if __name__ == "__main__":
    run_loop(main())  # uvloop, like the services
