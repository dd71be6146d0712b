"""Errors a gateway caller sees, and how each code maps to gRPC and HTTP statuses.

Codes are ``genwire.request.ErrorCode`` values (the pipeline's error results carry them too)
plus a few that only the gateway raises.
"""

from __future__ import annotations

import grpc

from genwire.errors import GenwireError
from genwire.request import ERROR_HTTP_STATUS, ErrorCode

IDEMPOTENCY_CONFLICT = ErrorCode.IDEMPOTENCY_CONFLICT
"""The request id was already used by a different request (preprocess raises it too)."""

# Gateway-only codes.
CANCELLED = "cancelled"
"""The request was cancelled."""
NOT_FOUND = "not_found"
"""No such request id (or its result expired)."""
# Keys and limits (auth.py, limits.py; docs/security.md).
INVALID_API_KEY = "invalid_api_key"
"""No API key, or a malformed, unknown or revoked one (401)."""
PERMISSION_DENIED = "permission_denied"
"""A valid key without the scope the route needs (403)."""
RATE_LIMITED = "rate_limit_exceeded"
"""The key's requests or tokens per minute are used up (429, ``Retry-After``)."""
QUOTA_EXCEEDED = "insufficient_quota"
"""The key's tokens per day are used up (429, ``Retry-After``)."""


class GatewayError(GenwireError):
    """A failure to report to the caller: a stable code and a message."""


_GRPC: dict[str, grpc.StatusCode] = {
    ErrorCode.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.MODEL_NOT_LOADED: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INFERENCE_FAILED: grpc.StatusCode.INTERNAL,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    IDEMPOTENCY_CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    CANCELLED: grpc.StatusCode.CANCELLED,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    INVALID_API_KEY: grpc.StatusCode.UNAUTHENTICATED,
    PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_HTTP: dict[str, int] = {
    **ERROR_HTTP_STATUS,
    CANCELLED: 499,
    NOT_FOUND: 404,
    INVALID_API_KEY: 401,
    PERMISSION_DENIED: 403,
    RATE_LIMITED: 429,
    QUOTA_EXCEEDED: 429,
}


def grpc_status(code: str) -> grpc.StatusCode:
    """The gRPC status of an error code: every input problem is INVALID_ARGUMENT."""
    if code in _GRPC:
        return _GRPC[code]
    if _HTTP.get(code, 500) < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def http_status(code: str) -> int:
    """The HTTP status of an error code (unknown codes: 500)."""
    return _HTTP.get(code, 500)


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status."""
    if status == 404:
        return "not_found_error"
    if status == 409:
        return "conflict_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error" if status != 503 else "service_unavailable_error"
