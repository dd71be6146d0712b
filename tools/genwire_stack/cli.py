"""``genwire up``, ``down``, ``restart``, ``status``, ``topics`` and ``default-model``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from genwire_stack.catalog import COMPONENT_GROUPS, is_component_name

ONLY_HELP = (
    "comma-separated components: "
    + ", ".join(COMPONENT_GROUPS)
    + "; or one Kafka node of a cluster (kafka-1, kafka-2, kafka-3) or one instance of a scaled "
    "service (e.g. preprocess-2)"
)

UP_EPILOG = """\
examples:
  genwire up                              everything, then one demo request
  genwire up --only kafka,redis           just Kafka and Redis
  genwire up --no-model --no-demo         the stack without the default model
  genwire up --brokers 3                  a three-broker Kafka cluster (after `genwire down`)
  genwire up --scale preprocess=3,inference=2
  genwire up --secure                     TLS + SASL/SCRAM + ACLs (after `genwire down`)
  genwire up --secure mtls                the same, and the gateway requires client certificates"""


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _components(value: str) -> list[str]:
    """``--only``'s value: known component names, or a clear error listing them."""
    names = _names(value)
    unknown = [name for name in names if not is_component_name(name)]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENT_GROUPS)}"
            " (or a Kafka node kafka-1…kafka-3, or a service instance such as preprocess-2)"
        )
    return names


def register(subparsers: Any) -> None:
    """Add the stack's subcommands to the ``genwire`` parser."""
    up = subparsers.add_parser(
        "up",
        help="install what is missing, start the native stack, wait until healthy",
        description="Start the native stack on 127.0.0.1: Kafka, Redis, Triton, Jaeger and the "
        "five services, each under a supervisor that restarts it when it exits. What is missing "
        "is installed first into the genwire home; what already runs is reused. Waits until every "
        "component is healthy, prints where each runs, then sends one demo request through the "
        "whole pipeline.",
        epilog=UP_EPILOG,
    )
    up.add_argument(
        "--only",
        type=_components,
        default=None,
        metavar="NAMES",
        help=f"{ONLY_HELP} (default: all)",
    )
    up.add_argument(
        "--brokers",
        type=int,
        default=None,
        metavar="N",
        help="Kafka brokers: 1, or 3 for a KRaft cluster (replication factor 3, min ISR 2); "
        "remembered for later runs; changing it needs `genwire down` first (default: as last "
        "time, else 1)",
    )
    up.add_argument(
        "--scale",
        default=None,
        metavar="SVC=N,...",
        help="instances per service (preprocess, inference, postprocess, gateway), e.g. "
        "preprocess=3,inference=3; remembered; =1 stops the extra ones (default: as last time, "
        "else 1 each)",
    )
    up.add_argument(
        "--secure",
        nargs="?",
        const="tls",
        choices=("tls", "mtls", "off"),
        default=None,
        metavar="MODE",
        help="encryption and authentication on every hop: a local CA and certificates, Kafka "
        "with SASL_SSL (SCRAM-SHA-512, one user per service, ACLs), Redis with TLS and a "
        "password, the gateway's HTTP and gRPC over TLS; `mtls` also requires client "
        "certificates at the gateway; `off` goes back to plaintext; remembered; changing it "
        "needs `genwire down` first (default: as last time, else off). Material: "
        "<GENWIRE_HOME>/secure (docs/security.md)",
    )
    up.add_argument(
        "--no-model",
        dest="model",
        action="store_false",
        default=None,
        help="do not build or load the default model",
    )
    up.add_argument(
        "--no-demo",
        dest="demo",
        action="store_false",
        help="skip the demo request sent through the whole pipeline at the end",
    )
    up.set_defaults(func=_up)

    down = subparsers.add_parser(
        "down",
        help="stop what `genwire up` started (by pid)",
        description="Stop the components `genwire up` started (services first), with their "
        "supervisors. Servers genwire did not start (an existing Redis) are left alone. The "
        "layout (brokers, instances) is kept for the next `genwire up`.",
    )
    down.add_argument(
        "--only",
        type=_components,
        default=None,
        metavar="NAMES",
        help=f"{ONLY_HELP} (default: all)",
    )
    down.set_defaults(func=_down)

    restart = subparsers.add_parser(
        "restart",
        help="stop and start components (e.g. a service after a code change)",
        description="Stop the named components and start them again, waiting until they are "
        "healthy: e.g. a service after its code changed.",
    )
    restart.add_argument("--only", type=_components, required=True, metavar="NAMES", help=ONLY_HELP)
    restart.set_defaults(func=_restart)

    status = subparsers.add_parser(
        "status",
        help="show what runs where",
        description="Show every component of the stack: its state, pid, restarts, endpoints "
        "and log file, and why it is not ready when it is not. Exits 0 when every component is "
        "running (or an external Redis), 3 when one is not.",
    )
    status.set_defaults(func=_status)

    topics = subparsers.add_parser(
        "topics",
        help="create the missing genwire topics (compose's kafka-init runs this)",
        description="Create genwire's Kafka topics that do not exist yet; existing ones are "
        "left as they are.",
    )
    topics.add_argument(
        "--bootstrap-servers",
        default=None,
        metavar="HOST:PORT,...",
        help="Kafka brokers (default: GENWIRE_KAFKA_BOOTSTRAP_SERVERS)",
    )
    topics.set_defaults(func=_topics)

    model = subparsers.add_parser(
        "default-model",
        help="build the default model if missing and load it into Triton (compose's model-init)",
        description="Build the default model if it is not in the model repository yet (trains "
        "it the first time), then load it into Triton and wait until it is ready.",
    )
    model.add_argument(
        "--triton-http",
        default=None,
        metavar="HOST:PORT",
        help="Triton's HTTP endpoint (default: GENWIRE_TRITON_HTTP_URL)",
    )
    model.add_argument(
        "--restore",
        action="store_true",
        help="after a crash-restart of Triton (its supervisor's step): check that what "
        "config.pbtxt names is served again and build nothing, even when the model's runtime "
        "code changed since (only when no version is served is the model brought up)",
    )
    model.set_defaults(func=_default_model)


def _say(line: str) -> None:
    print(f"genwire: {line}", flush=True)


def _up(args: argparse.Namespace) -> int:
    from genwire_stack import StackError, ensure_up, format_table
    from genwire_stack.layout import parse_scale

    began = time.monotonic()
    try:
        scale = parse_scale(args.scale) if args.scale else None
        rows = ensure_up(
            args.only,
            model=args.model,
            out=_say,
            brokers=args.brokers,
            scale=scale,
            secure=args.secure,
        )
    except StackError as exc:
        print(f"genwire up: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("genwire up: interrupted; stopped what this run had started", file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"genwire: stack up in {time.monotonic() - began:.0f} s")
    from genwire_stack import current_layout

    if current_layout().secure:
        _say_secure(current_layout().secure)
    if args.demo and args.only is None and args.model is not False:
        # A newcomer sees it work at once: one request through every stage, and its trace.
        from genwire_gateway.demo import run_demo

        return run_demo()
    return 0


def _say_secure(mode: str) -> None:
    """Where the secure stack's material is and how a client reaches it (the demo, the
    ``genwire`` CLI and the bench find it by themselves: genwire.gateway_tls)."""
    from genwire.settings import CommonSettings
    from genwire_stack.paths import StackPaths

    home = StackPaths.from_settings(CommonSettings()).home
    root = home / "secure"
    cert = f" --cert {root}/client.pem --key {root}/client-key.pem" if mode == "mtls" else ""
    key = f' -H "Authorization: Bearer $(cat {home}/api-key)"'
    _say(f"secure stack ({mode}): CA, certificates and passwords in {root} (mode 0700)")
    _say(f"try: curl --cacert {root}/ca.pem{cert}{key} https://127.0.0.1:8080/v1/models")
    _say("genwire generate, the demo and genwire bench's gateway targets use TLS by themselves")
    _say(f"Kafka clients (bench, CLI): set -a; . {root}/env/bench.env (or admin.env); set +a")


def _down(args: argparse.Namespace) -> int:
    from genwire_stack import StackError, down

    try:
        stopped = down(args.only, out=_say)
    except StackError as exc:
        print(f"genwire down: error: {exc}", file=sys.stderr)
        return 1
    if not stopped:
        _say("nothing was running")
    return 0


def _restart(args: argparse.Namespace) -> int:
    from genwire_stack import StackError, check_environment, down, ensure_up, format_table

    try:
        check_environment(args.only, out=_say)  # refused before the stop, not after it
        down(args.only, out=_say)
        rows = ensure_up(args.only, out=_say)
    except StackError as exc:
        print(f"genwire restart: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(format_table(rows))
    return 0


def _topics(args: argparse.Namespace) -> int:
    from genwire.kafka import ensure_topics
    from genwire.settings import CommonSettings
    from genwire_stack.health import run_coro

    servers = args.bootstrap_servers or CommonSettings().kafka_bootstrap_servers
    created = run_coro(ensure_topics(servers, timeout_s=120.0))
    _say(f"topics created: {', '.join(created) or 'none (all existed)'}")
    return 0


def _default_model(args: argparse.Namespace) -> int:
    from genwire.settings import CommonSettings
    from genwire_stack import StackError, ensure_model_loaded, restore_after_restart

    bring_up = restore_after_restart if args.restore else ensure_model_loaded
    try:
        version = bring_up(CommonSettings(), args.triton_http, out=_say)
    except StackError as exc:
        print(f"genwire default-model: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0 if version is not None else 1


STATUS_NOT_ALL_RUNNING = 3
"""``genwire status``'s exit status when a component is neither ``running`` nor ``external``
(scripts wait on it, as with ``systemctl is-active``); 0 when all are; 2 stays a refused
setting (genwire_cli)."""


def _status(args: argparse.Namespace) -> int:
    from genwire_stack import current_layout, format_table, status

    rows = status()
    print(format_table(rows))
    print(f"genwire: layout: {current_layout().describe()}")
    if any(row.state not in ("running", "external") for row in rows):
        return STATUS_NOT_ALL_RUNNING
    return 0
