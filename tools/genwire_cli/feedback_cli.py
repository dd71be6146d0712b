"""``genwire feedback export``: feedback joined with prompts and completions, as JSONL."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from genwire.settings import CommonSettings

EPILOG = """\
examples:
  genwire feedback export --since 7d -o feedback.jsonl
                                    a week of feedback; text only where content capture is on
  genwire feedback export --content none
                                    ratings and labels per model version, no text"""


def register(subparsers: Any) -> None:
    """Add ``genwire feedback``."""
    fb = subparsers.add_parser(
        "feedback",
        help="export caller feedback (genwire.feedback) joined with prompts and completions",
        description="Caller feedback (POST /v1/feedback, gRPC FeedbackService.Feedback) is "
        "kept on genwire.feedback, keyed by request id. `export` joins it with each request's "
        "prompt (genwire.requests) and completion (genwire.results) into JSONL, one line per "
        "piece of feedback.",
        epilog=EPILOG,
    )
    verbs = fb.add_subparsers(dest="verb", required=True, metavar="{export}")
    p = verbs.add_parser(
        "export",
        help="write the feedback since --since as JSONL",
        description="One JSON object per line: request_id, rating, label, correction, "
        "comment, known, model, model_version, arm, principal, content, and (when the text "
        "may be exported) prompt or messages, completion, finish_reason.",
        epilog=EPILOG,
    )
    p.add_argument("--since", default="30d", help="how far back (30s, 15m, 1h, 7d; default 30d)")
    p.add_argument(
        "--content",
        choices=("captured", "all", "none"),
        default="captured",
        help="captured (default): text only for requests whose API key opted in to content "
        "capture, redacted as captured telemetry is; all: every request's text; none: no text",
    )
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.set_defaults(func=_export)


async def _capturing_keys(settings: CommonSettings) -> set[str]:
    from genwire.apikeys import KeyStore
    from genwire.redisconn import connect

    redis = connect(settings.redis_url, timeout_s=5.0)
    try:
        records = await KeyStore(redis).records(include_revoked=True)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]
    return {r.name for r in records if r.capture_content}


def _export(args: argparse.Namespace) -> int:
    from genwire.redaction import Redactor
    from genwire_cli.feedback import export
    from genwire_cli.usage_cli import parse_since

    try:
        since_ms = (time.time() - parse_since(args.since)) * 1000
    except ValueError as exc:
        print(f"genwire feedback export: {exc}", file=sys.stderr)
        return 2
    settings = CommonSettings()

    async def run() -> tuple[list[dict[str, Any]], int]:
        keys = await _capturing_keys(settings) if args.content == "captured" else set()
        redact = Redactor() if args.content == "captured" else None
        return await export(
            settings.kafka_bootstrap_servers,
            since_ms,
            args.content,
            capturing_keys=keys,
            redact=redact,
        )

    rows, bad = asyncio.run(run())
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["content"]] = kinds.get(row["content"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    print(
        f"{len(rows)} feedback records exported (content: {summary})"
        + (f"; {bad} unreadable records skipped" if bad else ""),
        file=sys.stderr,
    )
    return 0
