"""``genwire usage --since 1h``: tokens per key and model, read from ``genwire.usage``."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from genwire.settings import CommonSettings
from genwire.topics import Topic
from genwire.usage import UsageEvent, first_per_request
from genwire_cli.feedback import read_since

EPILOG = """\
columns:
  ERRORS      requests that failed (finish reason error, or an error code)
  DEADLINE    requests stopped by their deadline (finish reason deadline: a partial result)
  CANCELLED   requests stopped by a cancel (finish reason cancelled: a partial result)
  the rest completed: stop, length, or content_filter (answered, the output filter cut the text)

examples:
  genwire usage                      the last hour, one row per key and model
  genwire usage --since 24h --key team-search"""

FINISH_ERROR, FINISH_DEADLINE, FINISH_CANCELLED = "error", "deadline", "cancelled"
"""The finish reasons of a request that did not complete (docs/stages.md, *Results*)."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``1h``, ``7d``; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match is None:
        raise ValueError(f"--since {text!r}: a number and a unit, s, m, h or d (e.g. 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Row:
    """The totals of one key and model. ``errors``, ``deadline`` and ``cancelled`` count the
    requests that did not complete, each once (an error code makes one an error, whatever its
    finish reason); the rest completed (``stop``, ``length``, ``content_filter``)."""

    requests: int = 0
    errors: int = 0
    deadline: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0

    def add(self, event: UsageEvent) -> None:
        self.requests += 1
        if event.finish_reason == FINISH_ERROR or event.error_code:
            self.errors += 1
        elif event.finish_reason == FINISH_DEADLINE:
            self.deadline += 1
        elif event.finish_reason == FINISH_CANCELLED:
            self.cancelled += 1
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.latency_ms += event.latency_ms

    def merge(self, other: Row) -> None:
        """Add ``other``'s totals to these."""
        self.requests += other.requests
        self.errors += other.errors
        self.deadline += other.deadline
        self.cancelled += other.cancelled
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_ms += other.latency_ms


def summarise(events: Iterable[UsageEvent]) -> dict[tuple[str, str], Row]:
    """Totals per (key name, model)."""
    rows: dict[tuple[str, str], Row] = {}
    for event in events:
        model = event.model + (f"/{event.model_version}" if event.model_version else "")
        rows.setdefault((event.key_name, model), Row()).add(event)
    return rows


def table(rows: dict[tuple[str, str], Row]) -> str:
    """The rows as an aligned table, biggest token users first, with a total line."""
    header = (
        "KEY",
        "MODEL",
        "REQUESTS",
        "ERRORS",
        "DEADLINE",
        "CANCELLED",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "MEAN MS",
    )
    lines: list[tuple[str, ...]] = [header]
    total = Row()
    for (key, model), r in sorted(
        rows.items(), key=lambda kv: -(kv[1].prompt_tokens + kv[1].completion_tokens)
    ):
        lines.append(_cells(key, model, r))
        total.merge(r)
    lines.append(_cells("all", "", total))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i >= 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def _cells(key: str, model: str, r: Row) -> tuple[str, ...]:
    mean = r.latency_ms / r.requests if r.requests else 0.0
    return (
        key,
        model,
        str(r.requests),
        str(r.errors),
        str(r.deadline),
        str(r.cancelled),
        str(r.prompt_tokens),
        str(r.completion_tokens),
        str(r.prompt_tokens + r.completion_tokens),
        f"{mean:.0f}",
    )


async def read_usage(
    bootstrap_servers: str, since_ms: float, topic: str = Topic.USAGE.value
) -> list[UsageEvent]:
    """Every usage event published since ``since_ms`` (epoch ms) up to the topic's end now."""
    out: list[UsageEvent] = []
    for _, value in await read_since(bootstrap_servers, topic, since_ms):
        if value is None:
            continue
        try:
            out.append(UsageEvent.model_validate_json(value))
        except ValidationError:
            continue  # not a usage event: nothing to add up
    return out


def register(subparsers: Any) -> None:
    """Add ``genwire usage``."""
    p = subparsers.add_parser(
        "usage",
        help="tokens and requests per API key and model over a recent period",
        description="Add up the usage events on genwire.usage (one per completed request, "
        "published by the gateway for API-key callers and by postprocess for requests produced "
        "straight to Kafka: key name, model, version, tokens, latency, finish reason; the first "
        "event of a request id counts) and print one row per key and model: requests, those "
        "that did not complete (errors, deadline, cancelled), tokens, mean latency.",
        epilog=EPILOG,
    )
    p.add_argument("--since", default="1h", help="how far back: 30m, 1h, 7d... (default: 1h)")
    p.add_argument("--key", action="append", default=[], help="only this key name (repeatable)")
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        metavar="HOST:PORT,...",
        help="Kafka brokers (default: GENWIRE_KAFKA_BOOTSTRAP_SERVERS)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        seconds = parse_since(args.since)
    except ValueError as exc:
        print(f"genwire usage: error: {exc}")
        return 2
    bootstrap = args.bootstrap_servers or CommonSettings().kafka_bootstrap_servers
    events = first_per_request(asyncio.run(read_usage(bootstrap, (time.time() - seconds) * 1000.0)))
    if args.key:
        events = [e for e in events if e.key_name in set(args.key)]
    print(f"usage since {args.since} ago: {len(events)} request(s)")
    print(table(summarise(events)))
    return 0
