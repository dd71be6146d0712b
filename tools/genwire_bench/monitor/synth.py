"""Realistic synthetic OTLP payloads of genwire requests, for the benchmark and the tests.

Each request is one trace shaped like the pipeline's: the gateway's SERVER span, a publish
and a process span per hop (process spans carry the wait in the topic), the inference span
with the generation's attributes, ``triton.generate`` with queue and compute times, and the
postprocess span. Payloads group spans by service, as each service's exporter would.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from genwire.telemetry import semconv as sc
from genwire.topics import Topic

SERVER, PRODUCER, CONSUMER, INTERNAL, CLIENT = 2, 4, 5, 1, 3


@dataclass(frozen=True)
class Profile:
    """The distribution requests are drawn from."""

    prompt_tokens_median: float = 40.0
    prompt_tokens_sigma: float = 0.5
    max_tokens: int = 64
    stop_share: float = 0.8  # the rest end by length
    ms_per_token: float = 4.0
    mean_logprob: float = -2.0
    filter_hit_share: float = 0.02
    error_share: float = 0.0
    error_code: str = "inference_failed"  # a server-side failure (5xx class)
    slow_ms: float = 0.0  # extra gateway-to-result latency (a latency incident)
    model: str = "genwire-gpt"
    version: str = "1"


REFERENCE = Profile()
LONG_PROMPTS = Profile(prompt_tokens_median=400.0)
LENGTH_STOPS = Profile(stop_share=0.1)


def _attr(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, list):
        items = [AnyValue(string_value=str(v)) for v in value]
        return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(values=items)))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _span(
    trace_id: bytes, parent: bytes, name: str, kind: int, start: int, end: int, **attrs: object
) -> Span:
    error = bool(attrs.pop("_error", False))
    return Span(
        trace_id=trace_id,
        span_id=os.urandom(8),
        parent_span_id=parent,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=[_attr(k.replace("__", "."), v) for k, v in attrs.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def request_spans(
    profile: Profile, rng: random.Random, end_ns: int | None = None
) -> dict[str, list[Span]]:
    """One request's spans by service name; the request ends at ``end_ns`` (default now)."""
    prompt = max(
        1, int(rng.lognormvariate(0, profile.prompt_tokens_sigma) * profile.prompt_tokens_median)
    )
    stop = rng.random() < profile.stop_share
    completion = rng.randint(4, profile.max_tokens - 1) if stop else profile.max_tokens
    ms_tok = profile.ms_per_token * rng.uniform(0.8, 1.25)
    ttft = 5.0 + prompt * 0.05 + rng.expovariate(1 / 3.0)
    gen_ms = ttft + completion * ms_tok
    waits = [rng.expovariate(1 / 2.0) for _ in range(3)]
    pre_ms, post_ms = rng.uniform(0.5, 2.0), rng.uniform(0.3, 1.5)
    total_ms = sum(waits) + pre_ms + gen_ms + post_ms + 2.0 + profile.slow_ms
    end = end_ns or time.time_ns()
    t0 = end - int(total_ms * 1e6)
    tid = os.urandom(16)
    error = rng.random() < profile.error_share
    ms = 1_000_000

    gw = _span(tid, b"", "POST /v1/completions", SERVER, t0, end, genwire__stage="gateway")
    t = t0 + ms
    pub_req = _span(tid, gw.span_id, f"{Topic.REQUESTS} publish", PRODUCER, t, t + ms // 5)
    t += int(waits[0] * ms)
    pre = _span(
        tid,
        pub_req.span_id,
        f"{Topic.REQUESTS} process",
        CONSUMER,
        t,
        t + int(pre_ms * ms),
        messaging__operation__type="process",
        messaging__destination__name=Topic.REQUESTS.value,
        genwire__stage="preprocess",
        genwire__kafka__wait_ms=waits[0],
        gen_ai__usage__input_tokens=prompt,
    )
    t += int(pre_ms * ms) + int(waits[1] * ms)
    queue = rng.expovariate(1 / 0.5)
    attrs: dict[str, object] = {
        "messaging__operation__type": "process",
        "messaging__destination__name": Topic.PREPARED.value,
        "genwire__stage": "inference",
        "genwire__kafka__wait_ms": waits[1],
        "gen_ai__request__model": profile.model,
        "gen_ai__response__model": profile.model,
        "genwire__model__version": profile.version,
        "gen_ai__usage__input_tokens": prompt,
        "gen_ai__usage__output_tokens": completion,
        "gen_ai__response__finish_reasons": ["stop" if stop else "length"],
        "genwire__mean_logprob": rng.gauss(profile.mean_logprob, 0.3),
        "genwire__time_to_first_token_ms": ttft + profile.slow_ms,
        "genwire__time_per_output_token_ms": ms_tok,
        "_error": error,
        **({"genwire__error__code": profile.error_code} if error else {}),
    }
    inf = _span(
        tid, pre.span_id, f"{Topic.PREPARED} process", CONSUMER, t, t + int(gen_ms * ms), **attrs
    )
    triton = _span(
        tid,
        inf.span_id,
        sc.SPAN_TRITON_GENERATE,
        CLIENT,
        t + ms // 2,
        t + int(gen_ms * ms),
        genwire__triton__queue_ms=queue,
        genwire__triton__compute_ms=gen_ms - queue,
    )
    t += int(gen_ms * ms) + int(waits[2] * ms)
    post = _span(
        tid,
        inf.span_id,
        f"{Topic.GENERATIONS} process",
        CONSUMER,
        t,
        t + int(post_ms * ms),
        messaging__operation__type="process",
        messaging__destination__name=Topic.GENERATIONS.value,
        genwire__stage="postprocess",
        genwire__kafka__wait_ms=waits[2],
        genwire__filter__hits=int(rng.random() < profile.filter_hit_share),
    )
    return {
        "genwire-gateway": [gw, pub_req],
        "genwire-preprocess": [pre],
        "genwire-inference": [inf, triton],
        "genwire-postprocess": [post],
    }


def payloads(
    profile: Profile, requests: int, per_payload: int = 32, seed: int = 0
) -> Iterator[bytes]:
    """Serialized ``ExportTraceServiceRequest`` values, ``per_payload`` requests each."""
    rng = random.Random(seed)
    for start in range(0, requests, per_payload):
        by_service: dict[str, list[Span]] = {}
        for _ in range(min(per_payload, requests - start)):
            for service, spans in request_spans(profile, rng).items():
                by_service.setdefault(service, []).extend(spans)
        yield encode(by_service)


def encode(by_service: dict[str, list[Span]]) -> bytes:
    """One export request with a resource per service."""
    req = ExportTraceServiceRequest()
    for service, spans in by_service.items():
        rs: ResourceSpans = req.resource_spans.add()
        rs.resource.attributes.append(_attr("service.name", service))
        rs.scope_spans.add().spans.extend(spans)
    return req.SerializeToString()


SPANS_PER_REQUEST = 6
