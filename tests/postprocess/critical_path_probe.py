"""Probe: where a request's wall-clock milliseconds go inside postprocess, before its first
publish (the final chunk: decode, detokenize, the Redis result store, the outputs' encoding)
and per streamed chunk.

Not a test (pytest does not collect it): it calls the handler's pieces one by one, as
``Postprocessor._final`` does, against the stack's real Redis and model repository, with
``perf_counter`` around each, then the whole ``Postprocessor.handle`` of a final chunk under a
fresh id, and prints p50/p95 per piece in ms. Touches the shared stack: run it under
``flock -o /tmp/gw/stack.lock`` and never while ``/tmp/gw/QUIET`` exists.

    python tests/postprocess/critical_path_probe.py -n 500

Its Redis keys (``genwire:result:probe-<run>-*``) are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from genwire_bench.stats import Laps
from genwire_postprocess.handlers import Postprocessor
from genwire_postprocess.text import truncate_at_stop

from genwire.events import GenerationChunk, Sampling, Timings, dump, now_ms
from genwire.results import ResultStore
from genwire.service.loop import run as run_loop
from genwire.settings import ServiceSettings
from genwire.tokenization import AssetStore

TEXT = (
    "Once upon a time there was a small robot who lived by the sea, and every night it "
    "counted the waves until the sun came up again over the quiet town."
)


def final_chunk(rid: str, ids: list[int], version: str, stream: bool) -> bytes:
    """A final chunk as inference sends it (32 ids, the request's sampling, its timings)."""
    return dump(
        GenerationChunk(
            request_id=rid,
            index=4 if stream else 0,
            token_ids=[],
            final=True,
            stream=stream,
            model="genwire-gpt",
            model_version=version,
            finish_reason="length",
            prompt_tokens=12,
            completion_tokens=len(ids),
            sampling=Sampling(max_tokens=32, temperature=0.0, seed=7, stop_token_ids=[0]),
            timings=Timings(received=now_ms(), prepared=now_ms(), generated=now_ms()),
            output_ids=ids,
            arm="default",
        )
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=500, help="requests per measurement")
    ap.add_argument("--pace-ms", type=float, default=2.0, help="pause between requests")
    args = ap.parse_args()
    cfg = ServiceSettings()
    run = uuid.uuid4().hex[:8]
    assets = AssetStore(cfg.repository)
    a = await assets.aget("genwire-gpt")
    ids = a.encode(TEXT, add_special_tokens=False)[:32]
    store = ResultStore.connect(cfg.redis_url, ttl_s=86_400, timeout_s=cfg.redis_timeout_s)
    post = Postprocessor(assets, store)
    for i in range(20):  # warm: Redis connected, script loaded
        warm = final_chunk(f"probe-{run}-w{i}", ids, a.version, False)
        await post.handle(GenerationChunk.model_validate_json(warm))
    laps, whole, streamed = Laps(), Laps(), Laps()
    try:
        for i in range(args.n):
            raw = final_chunk(f"probe-{run}-{i}", ids, a.version, False)
            laps.start()
            chunk = GenerationChunk.model_validate_json(raw)
            laps.lap("decode (model_validate_json)")
            got = await assets.aget(chunk.model, chunk.model_version or None)
            laps.lap("assets.aget")
            text = got.decode(list(chunk.output_ids or []))
            laps.lap("detokenize (32 ids)")
            truncate_at_stop(text, [])
            result = await post.build_result(chunk)
            laps.lap("build_result (whole, again)")
            value = result.model_dump_json(exclude_none=True)
            laps.lap("result JSON (put_first's encode)")
            await store.put_first(result)
            laps.lap("store.put_first (Redis, incl. JSON)")
            dump(result)
            laps.lap("dump result (publish encode)")
            del value
            # The whole final-chunk handler under a fresh id, then a streamed request's chunks.
            raw = final_chunk(f"probe-{run}-{args.n + i}", ids, a.version, False)
            whole.start()
            await post.handle(GenerationChunk.model_validate_json(raw))
            whole.lap("handle(final), stream=false")
            rid = f"probe-{run}-s{i}"
            streamed.start()
            for index in range(4):
                c = GenerationChunk(
                    request_id=rid,
                    index=index,
                    token_ids=ids[index * 8 : index * 8 + 8],
                    stream=True,
                    model="genwire-gpt",
                    model_version=a.version,
                    sampling=chunk.sampling if index == 0 else None,
                )
                out = await post.handle(c)
                for event in out:
                    dump(event)
                streamed.lap(f"handle(chunk {index}) + dump")
            last = final_chunk(rid, ids, a.version, True)
            await post.handle(GenerationChunk.model_validate_json(last))
            streamed.lap("handle(final), stream=true")
            await asyncio.sleep(args.pace_ms / 1000)
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"genwire:*:probe-{run}-*")]
        for start in range(0, len(keys), 500):
            await store.redis.delete(*keys[start : start + 500])
        await store.close()
    print(laps.report(f"postprocess pieces (final chunk, stream=false), {args.n} requests"))
    print(whole.report("postprocess handler, final chunk"))
    print(streamed.report("postprocess, a streamed request (4 chunks of 8 ids, then the final)"))


if __name__ == "__main__":
    run_loop(main())  # uvloop, like the services
