"""Wiring of the preprocess service: its resources and its consumer (the runner does the rest)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import Counter

from genwire.errors import GenwireError, PermanentError
from genwire.events import Event
from genwire.filters import ContentFilter
from genwire.policyfeed import followed
from genwire.request import ErrorCode
from genwire.service import ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from genwire.topics import Topic
from genwire_preprocess.config import PreprocessSettings
from genwire_preprocess.handlers import Preprocessor, RequestRecord, decode_record, error_chunk
from genwire_preprocess.stores import RedisClaims, TritonVersions

log = logging.getLogger(__name__)


def decode_request(record: ConsumerRecord[bytes, bytes], *, max_bytes: int) -> RequestRecord:
    """The consumer's decoder. Our own parse (not the consumer's model_validate_json): invalid
    UTF-8, non-JSON and oversize values get precise codes, and the key stays the request id. A
    refusal is raised by the handler, once it knows whether the id is another request's."""
    if record.value is None:  # a tombstone: no body at all (not an empty one, "Invalid JSON")
        return RequestRecord.model_construct(refused=tombstone(), key=record.key)
    return decode_record(
        record.value,
        record.key,
        fallback_id=f"anon-{record.partition}-{record.offset}",
        max_bytes=max_bytes,
    )


def tombstone() -> PermanentError:
    """The refusal of a record whose value is null (its dead letter has an empty value and
    header ``genwire_dlq_null_value``). A new one each time: a raised error keeps its
    traceback."""
    return PermanentError(
        "the record's value is null (a tombstone): a request record needs a JSON body",
        code=ErrorCode.INVALID_JSON,
    )


@asynccontextmanager
async def setup(
    cfg: PreprocessSettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[None]:
    """The model assets, the Redis claims, Triton's versions; the consumer of requests."""
    assets = AssetStore(cfg.repository, default_context_length=cfg.default_context_length)
    if cfg.preload_default_model:
        try:
            await asyncio.to_thread(assets.get, cfg.default_model)
        except GenwireError as exc:  # not fatal: requests get model_not_found meanwhile
            log.warning("default model not loaded yet: %s", exc.message)
    claims = (
        RedisClaims(cfg.redis_url, cfg.claim_ttl_s, cfg.redis_timeout_s)
        if cfg.check_idempotency
        else None
    )
    versions = TritonVersions(cfg.triton_http_url) if cfg.pin_served_version else None
    policies = AsyncExitStack()  # genwire.config, followed live (model routing)
    feed = (
        await policies.enter_async_context(followed(runtime, wait_s=cfg.policy_wait_s))
        if cfg.follow_policies
        else None
    )
    pre = Preprocessor(
        assets,
        default_model=cfg.default_model,
        input_filter=ContentFilter(cfg.input_deny),
        default_timeout_ms=cfg.default_timeout_ms,
        inline_tokenize_chars=cfg.inline_tokenize_chars,
        max_generation_tokens=cfg.max_generation_tokens,
        max_logprob_entries=cfg.max_logprob_entries,
        claims=claims,
        versions=versions,
        policies=feed.get if feed is not None else None,
        route_fallback=cfg.route_fallback,
        on_fallback=_fallback_counter(runtime),
    )
    app.state.preprocessor = pre

    def decode(record: ConsumerRecord[bytes, bytes]) -> RequestRecord:
        return decode_request(record, max_bytes=cfg.max_request_bytes)

    def failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Event]:
        return error_chunk(record.value or b"", record.key, err)

    runtime.consumer(
        Topic.REQUESTS,
        RequestRecord,
        pre.handle_record,
        decoder=decode,
        failure_events=failure_events,
    )
    try:
        yield
    finally:
        await policies.aclose()
        if claims is not None:
            await claims.close()
        if versions is not None:
            await versions.close()


def _fallback_counter(runtime: ServiceRuntime) -> Callable[[str, str, str], None]:
    """Counts requests served by another version than their policy named (not served)."""
    counter = Counter(
        "genwire_preprocess_route_fallbacks",
        "Requests the model's policy routed to a version Triton does not serve, served by the "
        "champion (else the newest served version) instead, by model and the version named",
        ["model", "wanted"],
        registry=runtime.registry,
    )

    def count(model: str, wanted: str, _instead: str) -> None:
        counter.labels(model=model, wanted=wanted).inc()

    return count


SERVICE = ServiceSpec(stage=sc.STAGE_PREPROCESS, settings=PreprocessSettings, setup=setup)


def create_app(settings: PreprocessSettings | None = None) -> FastAPI:
    """The preprocess app (the runtime and the resources are created in its lifespan)."""
    return SERVICE.app(settings)
