"""``genwire dlq list`` and ``genwire dlq replay``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from typing import Any

from genwire_stack.component import one_line

from genwire.settings import CommonSettings
from genwire_cli.dlq import (
    PERMANENT_CODES,
    SOURCES,
    Letter,
    ReplayError,
    Selection,
    Tally,
    parse_after,
    read_letters,
    replay,
)

EPILOG = (
    """\
examples:
  genwire dlq list                               every dead letter, one line each
  genwire dlq list --from retry                  the records parked for an automatic replay
  genwire dlq replay --code unavailable --dry-run
                                                 what a replay of one error code would send
  genwire dlq replay --key req-42                send one request back where it came from
  genwire dlq replay --code unavailable --after genwire.dlq:0:1234
                                                 resume a replay that stopped at that record
  genwire dlq replay --all --dry-run             what replaying everything would send

replay needs a filter (--code, --stage, --key, --topic, --after) or --all; it skips records
whose code is the caller's fault (a replay is refused the same way) unless
--include-permanent: """
    + ", ".join(sorted(PERMANENT_CODES))
    + "."
)

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
        "The dead letters themselves stay where they are. Records are sent in (partition, "
        "offset) order and each send is confirmed; one that stops names the last record "
        "confirmed, and --after resumes after it.",
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
            "--key",
            action="append",
            default=[],
            help="only this request id: the record's key, the request_id in its value, or "
            "anon-<partition>-<offset> for a keyless request (repeatable)",
        )
        p.add_argument(
            "--topic",
            action="append",
            default=[],
            help="only records that came from this topic (repeatable)",
        )
        p.add_argument(
            "--after",
            default=None,
            metavar="TOPIC:PARTITION:OFFSET",
            help="only records past this one of the source topic, in (partition, offset) "
            "order: resumes a replay that stopped (it prints the last record it confirmed)",
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
            p.add_argument(
                "--all",
                action="store_true",
                help="replay without a filter (every record of the source topic)",
            )
            p.add_argument(
                "--include-permanent",
                action="store_true",
                help="also replay records whose code is the caller's fault (refused again)",
            )
        p.set_defaults(func=_run)


def _line(item: Letter) -> str:
    key = (item.key or b"").decode("utf-8", "replace")
    return (
        f"{item.where}  key={key}  from={item.origin_topic or '?'}  code={item.code or '?'}  "
        f"stage={item.stage or '?'}  "
        + (f"truncated={item.truncated}  " if item.truncated is not None else "")
        + one_line(item.reason, 120)  # a listed record stays on one line
    )


def _counts(counter: Counter[str], top: int = 8) -> str:
    shown = ", ".join(f"{name or '?'}={n}" for name, n in counter.most_common(top))
    more = len(counter) - top
    return shown + (f", … {more} more" if more > 0 else "")


def _run(args: argparse.Namespace) -> int:
    source = SOURCES[args.source]
    replaying = args.verb == "replay"
    try:
        after = parse_after(args.after) if args.after else None
    except ValueError as exc:
        print(f"genwire dlq: --after: {exc}", file=sys.stderr)
        return 2
    if after is not None and after[0] != source:  # it would select nothing, yet count
        print(
            f"genwire dlq: --after {args.after}: a position in {after[0]}, but this reads "
            f"{source} (--from)",
            file=sys.stderr,
        )
        return 2
    selection = Selection(
        codes=frozenset(args.code),
        stages=frozenset(args.stage),
        keys=frozenset(args.key),
        limit=args.limit,
        origins=frozenset(args.topic),
        after=after,
        permanent=not replaying or args.include_permanent,
    )
    if replaying and not selection.filtered and not args.all and not args.dry_run:
        print(
            "genwire dlq replay: no filter given: name what to replay (--code, --stage, --key, "
            "--topic, --after), or pass --all to replay every record of "
            f"{source} (--dry-run first shows what that would send)",
            file=sys.stderr,
        )
        return 2
    bootstrap = args.bootstrap_servers or CommonSettings().kafka_bootstrap_servers
    tally = Tally()
    letters = asyncio.run(read_letters(bootstrap, source, selection, tally))
    for item in letters:
        print(_line(item))
    if tally.permanent:
        print(
            f"skipped {sum(tally.permanent.values())} record(s) whose code is the caller's "
            f"fault (a replay is refused the same way; --include-permanent sends them): "
            f"{_counts(tally.permanent)}"
        )
    if not letters:
        seen = sum(tally.seen.values())
        print(f"0 record(s) selected from {source} ({seen} read)")
        if seen:
            codes: Counter[str] = Counter()
            stages: Counter[str] = Counter()
            for (code, stage), n in tally.seen.items():
                codes[code] += n
                stages[stage] += n
            print(f"  codes seen: {_counts(codes, 5)}")
            print(f"  stages seen: {_counts(stages, 5)}")
        return 0
    if not replaying:
        print(f"{len(letters)} record(s) selected from {source}")
        return 0
    sendable = [item for item in letters if item.replayable]
    unsendable = len(letters) - len(sendable)
    verb = "would send" if args.dry_run else "sending"
    print(f"{verb} {len(sendable)} record(s) from {source}")
    if sendable:
        print(f"  by code: {_counts(Counter(item.code for item in sendable))}")
        print(f"  by topic: {_counts(Counter(item.origin_topic for item in sendable))}")
    if unsendable:
        print(
            f"  {unsendable} skipped: without an origin topic, with a truncated value, or a "
            "tombstone's (null value)"
        )
    if args.dry_run:
        print(f"{len(letters)} record(s) selected from {source}")
        return 0
    try:
        sent = asyncio.run(replay(bootstrap, sendable))
    except ReplayError as exc:
        last = exc.sent[-1].where if exc.sent else None
        print(f"genwire dlq replay: {exc}", file=sys.stderr)
        print(
            f"resume with the same filters and --after {last}"
            if last
            else "nothing was confirmed: rerun with the same filters",
            file=sys.stderr,
        )
        if exc.failed is not None:  # a record that fails every time: how to get past it
            print(f"to skip the record that failed: --after {exc.failed.where}", file=sys.stderr)
        return 1
    print(
        f"replayed {len(sent)} record(s) from {source}"
        + (f" (last: {sent[-1].where})" if sent else "")
        + (f"; {unsendable} skipped" if unsendable else "")
    )
    return 0
