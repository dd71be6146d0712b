"""Finished spans as an OTLP ``ExportTraceServiceRequest``, written straight to protobuf bytes.

Why not the SDK's ``encode_spans`` (which this replaces in the Kafka exporter): it builds a
message object for every span, attribute and value, then serialises them, and groups spans by
hashing each span's ``Resource`` (a JSON dump per span) — about as much CPU as making the span
(docs/benchmarks.md, *Tracing's cost, component by component, and the span encoder*). Here the
fixed part of a span is one ``struct.pack``, a key's bytes are made once per key, and the
resource and scope once per batch. The bytes parse to the same message as ``encode_spans``'s
(tests/telemetry/test_otlp_wire.py compares them field by field, for every attribute type,
events, links and status).

Field numbers are those of opentelemetry-proto's ``trace.proto`` and ``common.proto`` (v1).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, SpanContext, SpanKind

log = logging.getLogger(__name__)

# Wire types: VARINT 0, I64 1, LEN 2, I32 5. A tag is (field << 3) | wire type.
_SPAN_KIND = {  # SpanKind -> OTLP Span.SpanKind (the API's values are one lower)
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_HAS_IS_REMOTE = 0x100  # SpanFlags: the span's record says whether its parent was remote
_IS_REMOTE = 0x200

# trace_id (1), span_id (2): lengths fixed, so tags and lengths are constants.
_IDS = struct.Struct("<2s16s2s8s")
_PARENT = struct.Struct("<2s8s")  # parent_span_id (4)
# kind (6, one byte varint), start (7, fixed64), end (8, fixed64), flags (16, fixed32).
_TIMES = struct.Struct("<BBBQBQ2sI")
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


@lru_cache(maxsize=4096)
def _key(key: str) -> bytes:
    """KeyValue.key (1): attribute keys repeat in every span, so each is encoded once."""
    return _len_field(0x0A, key.encode("utf-8"))


MAX_NESTING = 24
"""An attribute whose lists or maps nest deeper than this is left out. A map level is three
messages (AnyValue, KeyValueList, KeyValue), and a link's attribute already sits six deep in the
request, so 31 levels of maps is the most protobuf parsers accept (upb stops at 100): past it
the whole batch would be refused, not one attribute. The SDK's encoder writes up to ~47 levels
of lists (then drops them), parseable or not."""


def _any_value(value: Any, depth: int = 0) -> bytes:
    """An ``AnyValue``'s fields (the oneof's one field), as the SDK maps Python types."""
    if isinstance(value, bool):  # before int: bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len_field(0x0A, value.encode("utf-8"))
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} does not fit an int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _len_field(0x3A, value)
    if value is None:
        return b""
    if depth >= MAX_NESTING and isinstance(value, (Sequence, Mapping)):
        raise ValueError(f"nested deeper than {MAX_NESTING} levels")
    if isinstance(value, Sequence):
        items = b"".join(_len_field(0x0A, _any_value(v, depth + 1)) for v in value)
        return _len_field(0x2A, items)
    if isinstance(value, Mapping):
        kvs = b"".join(_len_field(0x0A, _key_value(str(k), v, depth + 1)) for k, v in value.items())
        return _len_field(0x32, kvs)
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _key_value(key: str, value: Any, depth: int = 0) -> bytes:
    return _key(key) + _len_field(0x12, _any_value(value, depth))


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute as a repeated KeyValue field ``tag``; one that cannot be encoded is left
    out and logged, as the SDK's encoder does."""
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        try:
            parts.append(_attribute(tag, key, value))
        except Exception as exc:  # as the SDK's: one bad attribute never loses the batch
            log.warning("span attribute %s not exported: %s", key, exc)
    return b"".join(parts)


def _attribute(tag: int, key: str, value: Any) -> bytes:
    # The common short scalars with single-byte lengths, in one concatenation; a str subclass
    # (a StrEnum topic name) encodes as its text, as the SDK's does. Each bound keeps every
    # length below 128 (one varint byte): the KeyValue is len(k) + 4 + n for a string,
    # len(k) + 11 for a double, at most len(k) + 12 for an int64 (a 9-byte varint).
    if isinstance(value, str):
        k = _key(key)
        v: bytes = value.encode("utf-8")
        n = len(v)
        if len(k) + n < 124:
            return bytes((tag, len(k) + n + 4)) + k + bytes((0x12, n + 2, 0x0A, n)) + v
    elif type(value) is float:
        k = _key(key)
        if len(k) < 116:
            return bytes((tag, len(k) + 11)) + k + b"\x12\x09\x21" + _DOUBLE.pack(value)
    elif type(value) is int and 0 <= value < 2**63:  # not bool: its type is not int
        k = _key(key)
        v = _varint(value)
        if len(k) < 115:
            return bytes((tag, len(k) + len(v) + 3)) + k + bytes((0x12, len(v) + 1, 0x18)) + v
    return _len_field(tag, _key_value(key, value))


def _uint(tag: int, n: int) -> bytes:
    return bytes((tag,)) + _varint(n) if n else b""


def _string(tag: int, text: str | None) -> bytes:
    return _len_field(tag, text.encode("utf-8")) if text else b""


def _trace_state(context: SpanContext) -> str:
    state = context.trace_state
    return ",".join(f"{k}={v}" for k, v in state.items()) if state is not None else ""


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def _event(event: Event) -> bytes:
    return (
        b"\x09"
        + _FIXED64.pack(event.timestamp)
        + _string(0x12, event.name)
        + _attributes(0x1A, event.attributes)
        + _uint(0x20, event.dropped_attributes)
    )


def _link(link: Link) -> bytes:
    # No trace_state: the SDK's encoder writes none for links either.
    context = link.context
    return (
        _len_field(0x0A, context.trace_id.to_bytes(16, "big"))
        + _len_field(0x12, context.span_id.to_bytes(8, "big"))
        + _attributes(0x22, link.attributes)
        + _uint(0x28, link.dropped_attributes)
        + b"\x35"
        + struct.pack("<I", _flags(context))
    )


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    assert context is not None  # a finished SDK span always has one
    parent = span.parent
    parts = [
        _IDS.pack(
            b"\x0a\x10",
            context.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            context.span_id.to_bytes(8, "big"),
        )
    ]
    if context.trace_state:
        parts.append(_string(0x1A, _trace_state(context)))
    if parent is not None:
        parts.append(_PARENT.pack(b"\x22\x08", parent.span_id.to_bytes(8, "big")))
    if span.name:
        parts.append(_string(0x2A, span.name))
    parts.append(
        _TIMES.pack(
            0x30,
            _SPAN_KIND[span.kind],
            0x39,
            span.start_time or 0,
            0x41,
            span.end_time or 0,
            b"\x85\x01",  # field 16, fixed32
            _flags(parent),
        )
    )
    attributes = span.attributes
    if attributes:
        parts.append(_attributes(0x4A, attributes))
    events = span.events
    if events:
        parts.extend(_len_field(0x5A, _event(e)) for e in events)
    links = span.links
    if links:
        parts.extend(_len_field(0x6A, _link(k)) for k in links)
    parts.append(
        _uint(0x50, span.dropped_attributes)
        + _uint(0x60, span.dropped_events)
        + _uint(0x70, span.dropped_links)
    )
    status = span.status
    if status.description or status.status_code.value:
        fields = _string(0x12, status.description) + _uint(0x18, status.status_code.value)
        parts.append(_len_field(0x7A, fields))
    else:
        parts.append(b"\x7a\x00")  # present and empty, as the SDK writes an unset status
    return b"".join(parts)


def _grouped(
    spans: Iterable[ReadableSpan], key: Callable[[ReadableSpan], Any]
) -> list[tuple[Any, list[ReadableSpan]]]:
    """Spans grouped by equal ``key(span)``, first seen first, each group in the spans' order
    (as the SDK's encoder groups them). Equality is asked once per distinct object, not per
    span: a Resource's hash is a JSON dump, which the SDK's encoder pays for every span."""
    groups: list[tuple[Any, list[ReadableSpan]]] = []
    by_identity: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        obj = key(span)
        members = by_identity.get(id(obj))
        if members is None:
            members = next((m for head, m in groups if head == obj), None)
            if members is None:
                members = []
                groups.append((obj, members))
            by_identity[id(obj)] = members
        members.append(span)
    return groups


def _spans(spans: Iterable[ReadableSpan]) -> bytes:
    """Each span as a ScopeSpans.spans field; one that cannot be encoded (a name or status
    text that is not valid Unicode) is left out and logged, and the others go out."""
    parts = []
    for span in spans:
        try:
            parts.append(_len_field(0x12, _span(span)))
        except Exception as exc:  # the SDK's encoder would lose the whole export
            log.warning("span %r not exported: %s", span.name, exc)
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised ``ExportTraceServiceRequest`` of ``spans``, grouped by resource, then by
    instrumentation scope."""
    resource_spans = []
    for resource, members in _grouped(spans, lambda s: s.resource):
        scope_spans = []
        for scope, scoped in _grouped(members, lambda s: s.instrumentation_scope or None):
            scope_fields = (
                (
                    _string(0x0A, scope.name)
                    + _string(0x12, scope.version)
                    + _attributes(0x1A, scope.attributes)
                )
                if scope is not None
                else b""
            )
            body = _len_field(0x0A, scope_fields) + _spans(scoped)
            body += _string(0x1A, scope.schema_url if scope is not None else None)
            scope_spans.append(_len_field(0x12, body))
        resource_body = (
            _len_field(0x0A, _attributes(0x0A, resource.attributes))
            + b"".join(scope_spans)
            + _string(0x1A, resource.schema_url)
        )
        resource_spans.append(_len_field(0x0A, resource_body))
    return b"".join(resource_spans)
