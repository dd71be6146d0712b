"""``genwire dlq list`` and ``genwire dlq replay``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from genwire.settings import CommonSettings
from genwire_cli.dlq import SOURCES, Letter, Selection, read_letters, replay

EPILOG = """\
examples:
  genwire dlq list                               every dead letter, one line each
  genwire dlq list --from retry                  the records parked for an automatic replay
  genwire dlq replay --code unavailable --dry-run
                                                 what a replay of one error code would send
  genwire dlq replay --key req-42                send one request back where it came from"""

VERBS = (
    (
        "list",
        "show the selected records: where they came from, code, stage, reason",
        "Print the selected records of the dead-letter (or retry) topic, one line each: where "
        "it is, its request id, the topic it came from, its error code, stage and reason. "
        "Nothing is consumed or changed.",
    ),
    (
        "replay",
        "send the selected records back to the topic they came from",
        "Produce the selected records again to the topic each came from, so the pipeline "
        "processes them once more; records that do not say where they came from are skipped. "
        "The dead letters themselves stay where they are.",
    ),
)


def register(subparsers: Any) -> None:
    """Add ``genwire dlq``."""
    dlq = subparsers.add_parser(
        "dlq",
        help="list or replay dead-lettered (genwire.dlq) and parked (genwire.retry) records",
        description="Dead letters are poison input (each with its reason) and requests whose "
        "dependency stayed down through every automatic replay; parked records wait on "
        "genwire.retry for their automatic replay. Once the cause is fixed, replay sends them "
        "back to the topic they came from.",
        epilog=EPILOG,
    )
    verbs = dlq.add_subparsers(dest="verb", required=True, metavar="{list,replay}")
    for verb, helptext, description in VERBS:
        p = verbs.add_parser(verb, help=helptext, description=description, epilog=EPILOG)
        p.add_argument(
            "--from",
            dest="source",
            choices=sorted(SOURCES),
            default="dlq",
            help=f"dlq: the dead letters ({SOURCES['dlq']}); retry: the parked records "
            f"({SOURCES['retry']}) (default: dlq)",
        )
        p.add_argument(
            "--code",
            action="append",
            default=[],
            help="only records with this error code (repeatable)",
        )
        p.add_argument(
            "--stage", action="append", default=[], help="only records from this stage (repeatable)"
        )
        p.add_argument(
            "--key", action="append", default=[], help="only this request id (repeatable)"
        )
        p.add_argument(
            "--limit", type=int, default=None, metavar="N", help="at most N records (default: all)"
        )
        p.add_argument(
            "--bootstrap-servers",
            default=None,
            metavar="HOST:PORT,...",
            help="Kafka brokers (default: GENWIRE_KAFKA_BOOTSTRAP_SERVERS)",
        )
        if verb == "replay":
            p.add_argument(
                "--dry-run", action="store_true", help="only list what would be replayed"
            )
        p.set_defaults(func=_run)


def _line(item: Letter) -> str:
    key = (item.key or b"").decode("utf-8", "replace")
    return (
        f"{item.where}  key={key}  from={item.origin_topic or '?'}  code={item.code or '?'}  "
        f"stage={item.stage or '?'}  "
        + (f"truncated={item.truncated}  " if item.truncated is not None else "")
        + item.reason[:120]
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
        + (
            f"; {skipped} without an origin topic or with a truncated value were skipped"
            if skipped
            else ""
        )
    )
    return 0
