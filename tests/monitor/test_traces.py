"""Assembling a trace into one request record: which ERROR spans make it a server error.

A caller's hang-up and the gateway's own refusals (429, 403) are not the server's failures; a
try that a later try of the same operation superseded (inference retrying Triton) is not one
either; a failure nothing superseded still fails the request.
"""

from __future__ import annotations

import itertools
import random

import pytest
from genwire_monitor.spans import SpanView
from genwire_monitor.traces import RequestRecord, TraceAssembler

from genwire.request import ERROR_HTTP_STATUS, GATEWAY_ERROR_HTTP_STATUS, ErrorCode
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

TRACE = b"\x01" * 16
SERVER_ID = b"\x0a" * 8
PROCESS_ID = b"\x0b" * 8
SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_CONSUMER = 2, 3, 5
_ids = itertools.count(1)


def _span(
    name: str,
    service: str,
    start_ms: int,
    end_ms: int,
    *,
    parent: bytes = b"",
    kind: int = SPAN_KIND_CLIENT,
    error: bool = False,
    code: str | None = None,
    attrs: dict[str, str] | None = None,
) -> SpanView:
    values: dict[str, str | int | float | bool | tuple[str | int | float | bool, ...]] = {
        **(attrs or {})
    }
    if code is not None:
        values[sc.ERROR_CODE] = code
    return SpanView(
        trace_id=TRACE,
        parent_span_id=parent,
        name=name,
        kind=kind,
        service=service,
        start_ns=start_ms * 1_000_000,
        end_ns=end_ms * 1_000_000,
        error=error,
        attrs=values,
    )


def _server(*, error: bool = False, code: str | None = None) -> SpanView:
    """The gateway's SERVER span: the request's root."""
    return _span(
        "POST /v1/completions",
        "genwire-gateway",
        0,
        5_000,
        kind=SPAN_KIND_SERVER,
        error=error,
        code=code,
        attrs={sc.ENTRYPOINT: "http"},
    )


def _process(*, error: bool = False, code: str | None = None) -> SpanView:
    """Inference's process span of the prepared record: the tries run under it."""
    return _span(
        sc.process_span_name(Topic.PREPARED),
        "genwire-inference",
        100,
        4_900,
        parent=b"\x0c" * 8,
        kind=SPAN_KIND_CONSUMER,
        error=error,
        code=code,
    )


def _triton(
    start_ms: int, end_ms: int, *, error: bool = False, code: str | None = None
) -> SpanView:
    """One try of the Triton call (a ``RetryableError`` ends it ERROR ``unavailable``)."""
    return _span(
        sc.SPAN_TRITON_GENERATE,
        "genwire-inference",
        start_ms,
        end_ms,
        parent=PROCESS_ID,
        error=error,
        code=code,
    )


def _assemble(spans: list[SpanView]) -> RequestRecord:
    """Feed ``spans`` (in that order) and complete the trace."""
    assembler = TraceAssembler(idle_s=1.0, max_open=100)
    for span in spans:
        assert assembler.add(span, now=0.0) == []
    (record,) = assembler.expire(now=10.0)
    return record


# --- gateway-only codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "client_error"),
    [
        ("cancelled", False),  # the caller hung up: not an error at all
        ("rate_limit_exceeded", True),  # 429
        ("insufficient_quota", True),  # 429
        ("permission_denied", True),  # 403
        ("invalid_api_key", True),  # 401
    ],
)
def test_gateway_only_codes_are_not_server_errors(code: str, client_error: bool) -> None:
    record = _assemble([_server(error=True, code=code)])
    assert record.error is False, f"{code} burned the error budget"
    assert record.client_error is client_error
    assert record.cancelled is (code == "cancelled")


def test_a_server_code_on_the_root_span_is_still_an_error() -> None:
    record = _assemble([_server(error=True, code=ErrorCode.UNAVAILABLE)])
    assert record.error is True and not record.client_error


def test_an_error_span_without_a_code_or_with_an_unknown_one_is_a_server_error() -> None:
    assert _assemble([_server(error=True)]).error is True
    assert _assemble([_server(error=True, code="no_such_code")]).error is True


def test_the_gateway_answers_each_code_with_the_shared_tables_status() -> None:
    """One table (genwire.request) for the gateway's answers and the monitor's verdicts."""
    from genwire_gateway import errors

    for code, status in {**ERROR_HTTP_STATUS, **GATEWAY_ERROR_HTTP_STATUS}.items():
        assert errors.http_status(code) == status, code
    assert errors.http_status("no_such_code") == 500


# --- retries within one trace ---------------------------------------------------------------


def test_a_retry_that_succeeds_does_not_fail_the_request() -> None:
    spans = [
        _server(),
        _process(),
        _triton(200, 300, error=True, code=ErrorCode.UNAVAILABLE),  # Triton restarting
        _triton(1_300, 4_800),  # the consumer's retry: the same call, succeeded
    ]
    for order in (spans, spans[::-1], random.Random(3).sample(spans, len(spans))):
        record = _assemble(order)  # spans arrive in any order
        assert record.error is False, [s.name for s in order]
        assert record.client_error is False


def test_a_final_try_that_fails_fails_the_request() -> None:
    spans = [
        _server(),
        _process(),
        _triton(200, 300, error=True, code=ErrorCode.UNAVAILABLE),
        _triton(1_300, 1_400, error=True, code=ErrorCode.UNAVAILABLE),
    ]
    assert _assemble(spans).error is True
    assert _assemble(spans[::-1]).error is True


def test_a_good_try_before_the_failure_does_not_hide_it() -> None:
    spans = [
        _server(),
        _process(),
        _triton(200, 300),
        _triton(1_300, 1_400, error=True, code=ErrorCode.INFERENCE_FAILED),
    ]
    assert _assemble(spans[::-1]).error is True


def test_a_failing_span_of_another_operation_fails_the_request() -> None:
    """SERVER OK and the Triton call OK, but the stage's process span failed (dead-lettered):
    a good try of a different operation supersedes nothing."""
    spans = [
        _server(),
        _process(error=True, code=ErrorCode.INTERNAL),
        _triton(200, 4_800),
    ]
    assert _assemble(spans).error is True


def test_a_failed_prompt_of_a_batch_is_not_superseded_by_a_sibling() -> None:
    """A batch's prompt spans share a name and a parent (the call's SERVER span), not a
    request id: a sibling that ended well later is no retry of the failed one."""
    name = "POST /v1/completions prompt"
    parent = b"\x31" * 8
    failed = _span(
        name, "genwire-gateway", 100, 200, parent=parent, kind=1, error=True,
        code="internal", attrs={sc.REQUEST_ID: "k-0"},
    )  # fmt: skip
    sibling = _span(
        name, "genwire-gateway", 150, 400, parent=parent, kind=1, attrs={sc.REQUEST_ID: "k-1"}
    )
    assert _assemble([_server(), failed, sibling]).error is True


def test_an_open_trace_remembers_only_the_tries_a_retry_makes_again() -> None:
    """A long stream's spans (chunks' process spans, each with its own parent) are not kept:
    memory per open trace no longer grows with its span count."""
    assembler = TraceAssembler(idle_s=60.0, max_open=10)
    name = sc.process_span_name(Topic.GENERATIONS)
    for i in range(200):
        parent = i.to_bytes(8, "big")
        assembler.add(_span(name, "genwire-postprocess", i, i + 1, parent=parent, kind=5), 0.0)
    (entry,) = assembler._open.values()
    assert entry.good == {}


def test_a_record_redelivered_and_processed_after_a_failed_try_does_not_fail() -> None:
    """A stage gave up on the record (its process span failed, no code); the group's next
    owner processed it under the same parent: the request completed."""
    name = sc.process_span_name(Topic.GENERATIONS)
    parent = b"\x41" * 8
    spans = [
        _server(),
        _span(name, "genwire-postprocess", 300, 310, parent=parent, kind=SPAN_KIND_CONSUMER,
              error=True),
        _span(name, "genwire-postprocess", 9_000, 9_010, parent=parent, kind=SPAN_KIND_CONSUMER),
    ]  # fmt: skip
    assert _assemble(spans).error is False


def test_one_failing_record_among_good_siblings_still_fails() -> None:
    """Postprocess's process spans of a request's chunks share a name, not a parent (each
    record's publish): a good chunk does not supersede a failed one."""
    name = sc.process_span_name(Topic.GENERATIONS)
    spans = [
        _server(),
        _span(
            name, "genwire-postprocess", 300, 310, parent=b"\x21" * 8, error=True, code="internal"
        ),
        _span(name, "genwire-postprocess", 400, 410, parent=b"\x22" * 8),
    ]
    assert _assemble(spans).error is True
