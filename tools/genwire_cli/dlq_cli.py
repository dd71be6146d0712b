"""``genwire dlq list`` and ``genwire dlq replay``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from genwire.settings import CommonSettings
from genwire_cli.dlq import SOURCES, Letter, Selection, read_letters, replay


def register(subparsers: Any) -> None:
    """Add ``genwire dlq``."""
    dlq = subparsers.add_parser(
        "dlq",
        help="list or replay dead-lettered (genwire.dlq) and parked (genwire.retry) records",
        description="Dead letters are poison input (each with its reason) and requests whose "
        "dependency stayed down through every automatic replay; parked records wait on "
        "genwire.retry for their automatic replay. Once the cause is fixed, replay sends them "
        "back to the topic they came from.",
    )
    verbs = dlq.add_subparsers(dest="verb", required=True)
    for verb, helptext in (
        ("list", "show the selected records: where they came from, code, stage, reason"),
        ("replay", "send the selected records back to the topic they came from"),
    ):
        p = verbs.add_parser(verb, help=helptext)
        p.add_argument("--from", dest="source", choices=sorted(SOURCES), default="dlq")
        p.add_argument("--code", action="append", default=[], help="only this error code")
        p.add_argument("--stage", action="append", default=[], help="only this stage")
        p.add_argument("--key", action="append", default=[], help="only this request id")
        p.add_argument("--limit", type=int, default=None, help="at most this many records")
        p.add_argument(
            "--bootstrap-servers", default=None, help="default: GENWIRE_KAFKA_BOOTSTRAP_SERVERS"
        )
        if verb == "replay":
            p.add_argument("--dry-run", action="store_true", help="list what would be replayed")
        p.set_defaults(func=_run)


def _line(item: Letter) -> str:
    key = (item.key or b"").decode("utf-8", "replace")
    return (
        f"{item.where}  key={key}  from={item.origin_topic or '?'}  code={item.code or '?'}  "
        f"stage={item.stage or '?'}  {item.reason[:120]}"
    )


def _run(args: argparse.Namespace) -> int:
    bootstrap = args.bootstrap_servers or CommonSettings().kafka_bootstrap_servers
    selection = Selection(
        codes=frozenset(args.code),
        stages=frozenset(args.stage),
        keys=frozenset(args.key),
        limit=args.limit,
    )
    letters = asyncio.run(read_letters(bootstrap, SOURCES[args.source], selection))
    for item in letters:
        print(_line(item))
    if args.verb == "list" or getattr(args, "dry_run", False):
        print(f"{len(letters)} record(s) selected from {SOURCES[args.source]}")
        return 0
    sent = asyncio.run(replay(bootstrap, letters))
    skipped = len(letters) - len(sent)
    print(
        f"replayed {len(sent)} record(s) from {SOURCES[args.source]}"
        + (f"; {skipped} without an origin topic were skipped" if skipped else "")
    )
    return 0
