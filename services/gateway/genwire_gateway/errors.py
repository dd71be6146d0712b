"""Errors a gateway caller sees, and how each code maps to gRPC and HTTP statuses.

Codes are ``genwire.request.ErrorCode`` values (the pipeline's error results carry them too)
plus a few that only the gateway raises.
"""

from __future__ import annotations

import grpc

from genwire.errors import GenwireError
from genwire.request import (
    CANCELLED,
    INVALID_API_KEY,
    NOT_FOUND,
    PERMISSION_DENIED,
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    REQUEST_TIMEOUT,
    ErrorCode,
    http_status,  # the monitor classifies the gateway's codes too
)

IDEMPOTENCY_CONFLICT = ErrorCode.IDEMPOTENCY_CONFLICT
"""The request id was already used by a different request (preprocess raises it too)."""

# The gateway-only codes are defined in genwire.request (the monitor classifies them too) and
# exported from here with the rest.
__all__ = [
    "CANCELLED",
    "IDEMPOTENCY_CONFLICT",
    "INVALID_API_KEY",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "QUOTA_EXCEEDED",
    "RATE_LIMITED",
    "REQUEST_TIMEOUT",
    "GatewayError",
    "grpc_status",
    "http_status",
    "openai_error_type",
]


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


def grpc_status(code: str) -> grpc.StatusCode:
    """The gRPC status of an error code: every input problem is INVALID_ARGUMENT."""
    if code in _GRPC:
        return _GRPC[code]
    if http_status(code) < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status."""
    if status == 404:
        return "not_found_error"
    if status == 409:
        return "conflict_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error" if status != 503 else "service_unavailable_error"
