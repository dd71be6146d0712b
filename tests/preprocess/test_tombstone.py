"""A tombstone (a null value) on genwire.requests is refused for what it is, not as "Invalid
JSON: EOF" of an empty body; its dead letter says the value was null."""

from __future__ import annotations

import time

from aiokafka.structs import ConsumerRecord
from genwire_preprocess.app import decode_request
from genwire_preprocess.handlers import error_chunk

from genwire.kafka.failures import HEADER_DLQ_NULL_VALUE, _dlq_headers
from genwire.request import ErrorCode
from genwire.topics import Topic


def _record(value: bytes | None, key: bytes = b"tomb-1") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        Topic.REQUESTS, 2, 7, int(time.time() * 1000), 0, key, value, None, len(key),
        -1 if value is None else len(value), [],
    )  # fmt: skip


def test_a_tombstone_is_refused_as_one() -> None:
    record = _record(None)
    decoded = decode_request(record, max_bytes=1 << 20)
    assert decoded.request is None and decoded.refused is not None
    assert decoded.refused.code == ErrorCode.INVALID_JSON and decoded.refused.dead_letter
    assert decoded.refused.message == (
        "the record's value is null (a tombstone): a request record needs a JSON body"
    )
    assert decoded.key == b"tomb-1"
    # the caller still gets its error result, addressed by the key
    (chunk,) = error_chunk(record.value or b"", record.key, decoded.refused)
    assert chunk.request_id == "tomb-1" and chunk.error is not None
    assert "tombstone" in chunk.error.message
    # its dead letter (an empty value: records go out as bytes) says the value was null
    headers = dict(_dlq_headers(record, decoded.refused, "preprocess"))
    assert headers[HEADER_DLQ_NULL_VALUE] == b"true"
    assert "tombstone" in headers["genwire_dlq_reason"].decode()


def test_an_empty_value_is_still_invalid_json() -> None:
    record = _record(b"")
    decoded = decode_request(record, max_bytes=1 << 20)
    assert decoded.refused is not None and decoded.refused.code == ErrorCode.INVALID_JSON
    assert "tombstone" not in decoded.refused.message
    assert HEADER_DLQ_NULL_VALUE not in dict(_dlq_headers(record, decoded.refused, "preprocess"))
