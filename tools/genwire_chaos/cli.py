"""``genwire chaos``: run the fault suite against the running native stack."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  genwire chaos                                  the short profile, a few minutes
  genwire chaos --list                           every scenario and its profiles
  genwire chaos --profile full --json chaos.json every scenario, report written as JSON
  genwire chaos --scenario kafka-down,redis-down --broker-down 20"""


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(subparsers: Any) -> None:
    """Add ``genwire chaos``."""
    from genwire_chaos.profiles import ALL_SCENARIOS, PROFILES

    p = subparsers.add_parser(
        "chaos",
        help="fault suite: kill, stop and scale parts of the running stack under load",
        description="Run fault scenarios against the running stack (`genwire up`) with load "
        "produced straight to genwire.requests, and report what came back: lost requests, "
        "error results, duplicates, inconsistent duplicates, the longest gap without results, "
        "recovery times and stuck partitions. Exits 1 when any scenario fails. Scenarios: "
        f"{', '.join(ALL_SCENARIOS)}. See docs/reliability.md.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="short",
        help="short: a few minutes (one stage kill, Redis down ~8 s, 200 fuzz cases); full: "
        "every scenario (default: short)",
    )
    p.add_argument(
        "--scenario",
        type=_names,
        default=None,
        metavar="NAMES",
        help="comma-separated scenarios to run (default: the profile's)",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--requests",
        "-n",
        type=int,
        default=None,
        help="requests per scenario (default: the profile's)",
    )
    p.add_argument(
        "--rate", type=float, default=None, help="requests per second (default: the profile's)"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="max_tokens of each request (default: the profile's)",
    )
    p.add_argument(
        "--broker-down",
        type=float,
        default=None,
        metavar="S",
        help="broker outage in seconds (default: the profile's)",
    )
    p.add_argument(
        "--redis-down",
        type=float,
        default=None,
        metavar="S",
        help="Redis outage in seconds (default: the profile's)",
    )
    p.add_argument(
        "--fuzz-cases",
        type=int,
        default=None,
        help="malformed requests the fuzz scenario produces (default: the profile's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fuzz cases (default 0)")
    p.add_argument(
        "--streams",
        type=int,
        default=None,
        help="gateway-kill: streams per transport and kind (default: the profile's)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the report")
    p.add_argument("--verbose", "-v", action="store_true", help="show the Kafka clients' logs too")
    p.set_defaults(func=_run)


def _say(line: str) -> None:
    print(f"chaos: {line}", flush=True)


def _run(args: argparse.Namespace) -> int:
    from genwire_chaos.profiles import ALL_SCENARIOS, DESCRIPTIONS, PROFILES, Options, runner
    from genwire_chaos.report import format_table, write_json

    profile = PROFILES[args.profile]
    if args.list:
        for name in ALL_SCENARIOS:
            marks = "".join(f" [{p}]" for p, prof in PROFILES.items() if name in prof.scenarios)
            print(f"{name:<24}{DESCRIPTIONS[name]}{marks}")
        return 0
    names = args.scenario or list(profile.scenarios)
    unknown = [n for n in names if n not in ALL_SCENARIOS]
    if unknown:
        print(
            f"genwire chaos: unknown scenario(s) {', '.join(unknown)}; "
            f"choose from {', '.join(ALL_SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # A broker outage makes the Kafka clients log every reconnect attempt.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    options = Options(
        requests=args.requests,
        rate=args.rate,
        max_tokens=args.max_tokens,
        broker_down_s=args.broker_down,
        redis_down_s=args.redis_down,
        fuzz_cases=args.fuzz_cases,
        seed=args.seed,
        streams_per_kind=args.streams,
    )
    runners = [(name, runner(name, profile, options)) for name in names]
    began = time.time()
    reports = asyncio.run(_run_all(runners))
    print()
    print(format_table(reports))
    if args.json is not None:
        meta = {
            "profile": profile.name,
            "scenarios": names,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
            "duration_s": round(time.time() - began, 1),
            "machine": f"{platform.node()} {platform.machine()}, {_cpus()} CPUs",
            "argv": sys.argv,
        }
        write_json(reports, args.json, meta)
        _say(f"report written to {args.json}")
    failed = [r.name for r in reports if not r.passed]
    _say(f"{'FAILED: ' + ', '.join(failed) if failed else 'all scenarios passed'}")
    return 1 if failed else 0


async def _run_all(runners: list[tuple[str, Any]]) -> list[Any]:
    from genwire_chaos.faults import StackControl
    from genwire_chaos.profiles import DESCRIPTIONS
    from genwire_chaos.report import ScenarioReport

    control = StackControl(out=_say)
    reports: list[ScenarioReport] = []
    for name, run in runners:
        _say(f"=== {name}")
        try:
            report = await run(control, _say)
        except Exception as exc:  # a bug or an unreachable stack: report it, go on
            description = DESCRIPTIONS.get(name, "")
            report = ScenarioReport(name, description, failures=[f"{type(exc).__name__}: {exc}"])
            try:
                await asyncio.to_thread(control.restore)
            except Exception as again:
                report.failures.append(f"could not restore the stack: {again}")
        _say(f"=== {name}: {report.verdict} in {report.duration_s:.0f} s")
        reports.append(report)
    return reports


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
