"""Logging setup: plain text or JSON lines, each line with the current trace and span id."""

from __future__ import annotations

import json
import logging
import sys
import time

from opentelemetry import trace

# Client libraries that log each failed attempt while a dependency is down.
RATE_LIMITED_LOGGERS = ("aiokafka", "kafka", "redis", "grpc", "tritonclient")


class _TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""
        record.span_id = f"{ctx.span_id:016x}" if ctx.is_valid else ""
        return True


class RateLimitFilter(logging.Filter):
    """Lets one record per (logger, message template) through per interval; counts the rest.

    For client libraries that log every failed connection attempt (aiokafka logs thousands of
    ``Unable connect to node`` lines a second while a broker is down): the first line passes,
    the next ones within ``interval_s`` are dropped, and the first one after the interval says
    how many were dropped.
    """

    def __init__(self, prefixes: tuple[str, ...], interval_s: float = 10.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_s = interval_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        dropped = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # templates are few; never grow without bound
            self._seen = {key: self._seen[key]}
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar lines suppressed in the last " + (
                f"{self.interval_s:.0f} s]"
            )
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceFilter())
    handler.addFilter(RateLimitFilter(RATE_LIMITED_LOGGERS))
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request at INFO (preprocess asks Triton for the served version).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
