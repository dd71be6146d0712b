"""``python -m genwire_bench.census``: the Kafka requests a load costs the broker, by API.

The broker's CPU is paid per request it serves (a produce, a fetch, an offset commit …) more
than per record: a request that carries eight records costs little more than one that carries
one. This reads the broker's own counters (``RequestsPerSec`` per API, ``MessagesInPerSec`` per
topic) over JMX before and after a command (or an idle interval) and prints what happened in
between, with the broker's CPU from ``/proc``: divided by ``--per`` (the requests the command
sent) it says how many Kafka requests one pipeline request costs and what each cost the broker.

Needs a broker that serves JMX: the native stack's with ``GENWIRE_KAFKA_JMX_PORT`` set at its
start (``GENWIRE_KAFKA_JMX_PORT=9999 make up``, or ``genwire restart --only kafka``), and a
JDK (its single-file launch compiles and runs ``KafkaCensus.java``; a JRE cannot). The counters
are one broker's totals (of a cluster, the node whose JMX port is given): everything that talks
to it is counted, the stack's idle polling included (``--seconds`` alone measures that). The
window is the command's (or the interval's): the two JMX readings fall outside it. Figures are
printed (and kept with ``--json``); nothing is asserted.

    python -m genwire_bench.census --per 408 -- \
        genwire bench --targets kafka -c 8 -n 400 --warmup 8 -q      # 400 + 8 requests
    python -m genwire_bench.census --seconds 30                      # the idle stack
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from genwire_bench.floor import broker_process, tree_cpu_s

HELPER = Path(__file__).with_name("KafkaCensus.java")
DEFAULT_JMX_PORT = 9999


@dataclass(frozen=True)
class Counters:
    """The broker's counters at one moment: requests per API, records appended per topic."""

    requests: Mapping[str, int]
    messages: Mapping[str, int]


def parse(text: str) -> Counters:
    """Counters from ``KafkaCensus.java``'s ``kind<TAB>name<TAB>count`` lines."""
    requests: dict[str, int] = {}
    messages: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        kind, name, count = parts
        target = {"request": requests, "messages": messages}.get(kind)
        if target is not None:
            target[name] = int(count)
    return Counters(requests, messages)


def difference(before: Counters, after: Counters) -> Counters:
    """What each counter gained; counters that did not move are left out.

    A request counter that went down means the broker restarted between the readings: a
    ``ValueError``, not a census. A topic's meter may go (the topic deleted, its leadership
    moved to another node) and come back from zero: such a topic's records are left out."""
    fell = sorted(k for k, v in before.requests.items() if after.requests.get(k, 0) < v)
    if fell:
        raise ValueError(
            f"request counters went down between the readings ({', '.join(fell)}): the broker "
            "restarted meanwhile; count again"
        )

    def gained(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
        moved = {k: v - a.get(k, 0) for k, v in b.items()}
        return {k: v for k, v in moved.items() if v > 0}

    return Counters(
        gained(before.requests, after.requests), gained(before.messages, after.messages)
    )


def read_counters(jmx_port: int, java: str = "java") -> Counters:
    """The broker's counters now; no JMX answer is a ``RuntimeError`` saying how to get one."""
    done = subprocess.run(
        [java, str(HELPER), str(jmx_port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        # The exception's own line says what failed; a stack trace's last line says nothing.
        cause = next((ln.strip() for ln in lines if "Exception" in ln or "Error" in ln), None)
        raise RuntimeError(
            f"no JMX answer on 127.0.0.1:{jmx_port} ({cause or 'no output'}); start the broker "
            "with GENWIRE_KAFKA_JMX_PORT set (e.g. GENWIRE_KAFKA_JMX_PORT=9999 genwire restart "
            "--only kafka)"
        )
    return parse(done.stdout)


def has_compiler(java: str = "java") -> bool:
    """Whether this ``java`` can launch a source file (a JDK: the ``jdk.compiler`` module)."""
    try:
        done = subprocess.run(
            [java, "--list-modules"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(line.startswith("jdk.compiler@") for line in done.stdout.splitlines())


@dataclass
class Report:
    """One census: what the broker did between two readings."""

    seconds: float
    per: int | None
    broker_cpu_s: float | None
    requests: dict[str, int]
    messages: dict[str, int]

    @property
    def total_requests(self) -> int:
        """Requests served, each once (``SUBCOUNTS`` left out)."""
        return total_requests(self.requests)

    def as_json(self) -> dict[str, object]:
        """The report's fields and its total, for ``--json``."""
        return {**asdict(self), "total_requests": self.total_requests}


# Requests Kafka counts a second time under another name, with the request they are part of:
# FetchConsumer and FetchFollower are the Fetch requests of consumers and of replicas. They
# are shown but not added to the total.
SUBCOUNTS = {
    "FetchConsumer": "Fetch",
    "FetchFollower": "Fetch",
    "AddPartitionsToTxnVerification": "AddPartitionsToTxn",
}


def total_requests(requests: Mapping[str, int]) -> int:
    """Requests served, each counted once."""
    return sum(v for k, v in requests.items() if k not in SUBCOUNTS)


def render(report: Report) -> str:
    """The census as Markdown tables."""
    per = report.per
    total = report.total_requests
    head = f"| request | count | per second |{f' per {per} |' if per else ''}"
    rule = "|---|---:|---:|" + ("---:|" if per else "")

    def row(name: str, count: int) -> str:
        cells = f"| {name} | {count} | {count / report.seconds:.1f} |"
        return cells + (f" {count / per:.2f} |" if per else "")

    lines = [f"census over {report.seconds:.1f} s", "", head, rule]
    for name, count in sorted(report.requests.items(), key=lambda kv: (-kv[1], kv[0])):
        part_of = SUBCOUNTS.get(name)
        lines.append(row(f"{name} (of {part_of})" if part_of else name, count))
    lines.append(row("**all**", total))
    lines += ["", head.replace("request", "records appended to", 1), rule]
    for name, count in sorted(report.messages.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(row(name, count))
    if report.broker_cpu_s is not None:
        cpu_ms = report.broker_cpu_s * 1000
        rate = cpu_ms / report.seconds
        lines += ["", f"broker CPU: {cpu_ms:.0f} core-ms ({rate:.1f} per second)"]
        if total:
            lines[-1] += f", {1000 * cpu_ms / total:.0f} µs per request served"
        if per:
            lines[-1] += f", {cpu_ms / per:.2f} core-ms per request of the {per}"
    return "\n".join(lines)


def census(args: argparse.Namespace, command: Sequence[str]) -> tuple[Report, int]:
    """Read, run the command (or wait), read again; the report and the command's exit code.
    CPU and time are taken between the readings, so the JMX reads' own cost (a JVM start and
    an RMI session each) is outside the window; their requests are not Kafka requests."""
    broker = broker_process(args.bootstrap_servers)
    before = read_counters(args.jmx_port)
    cpu0, t0 = tree_cpu_s(broker), time.monotonic()
    if command:
        rc = subprocess.call(list(command))
    else:
        rc = 0
        time.sleep(args.seconds)
    cpu1, t1 = tree_cpu_s(broker), time.monotonic()
    gained = difference(before, read_counters(args.jmx_port))
    report = Report(
        seconds=t1 - t0,
        per=args.per,
        broker_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        requests=dict(gained.requests),
        messages=dict(gained.messages),
    )
    return report, rc


def _default_jmx_port() -> int:
    raw = os.environ.get("GENWIRE_KAFKA_JMX_PORT") or str(DEFAULT_JMX_PORT)
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"census: GENWIRE_KAFKA_JMX_PORT={raw!r} is not a port number") from None


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in raw:
        at = raw.index("--")
        raw, command = raw[:at], raw[at + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m genwire_bench.census",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Anything after -- is the command to count (run as is; its exit code is kept).",
    )
    p.add_argument(
        "--jmx-port",
        type=int,
        default=_default_jmx_port(),
        help="the broker's JMX port (default: GENWIRE_KAFKA_JMX_PORT, else 9999)",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("GENWIRE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="the broker whose CPU is read (the local process listening on its port)",
    )
    p.add_argument("--per", type=int, help="divide by this many requests (what the command sent)")
    p.add_argument(
        "--seconds", type=float, default=30.0, help="without a command: how long to count"
    )
    p.add_argument("--json", dest="json_path", help="write the census as JSON here")
    args = p.parse_args(raw)
    if args.per is not None and args.per <= 0:
        p.error("--per must be a positive number of requests")
    if not command and args.seconds <= 0:
        p.error("--seconds must be positive")
    if shutil.which("java") is None or not has_compiler():
        p.error(
            "needs a JDK's java on PATH (it compiles and runs KafkaCensus.java; a JRE lacks "
            "the jdk.compiler module): e.g. apt-get install openjdk-17-jdk-headless"
        )
    try:
        report, rc = census(args, command)
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"census: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
