"""``genwire model load/unload/list/show/route/promote/rollback/policy``: serving versions."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genwire_model import DEFAULT_MODEL_NAME

LIFECYCLE_COMMANDS = ("load", "unload", "list", "show", "route", "promote", "rollback", "policy")


def register(sub: Any) -> None:
    """Add the lifecycle subcommands to ``genwire model``."""
    load = sub.add_parser(
        "load",
        help="serve a version (Triton loads it beside the ones served)",
        description="Load NAME:VERSION (default: the newest built) into Triton beside the "
        "versions already served, wait until it answers a short generation, and print it. "
        "It takes traffic only when the model's policy routes some to it (route/promote), or "
        "when the model has no policy and it is the newest served version.",
    )
    load.add_argument("target", nargs="?", help="NAME[:VERSION]")
    load.add_argument(
        "--restore",
        action="store_true",
        help="instead: load every model whose config.pbtxt names specific versions (what "
        "`load` served), as after a Triton restart",
    )
    load.set_defaults(func=_load)

    unload = sub.add_parser(
        "unload",
        help="stop serving a version (or the whole model)",
        description="Unload NAME:VERSION (or every version of NAME) from Triton; refused "
        "while the model's policy routes traffic to it, unless --force.",
    )
    unload.add_argument("target", help="NAME[:VERSION]")
    unload.add_argument(
        "--force", action="store_true", help="even if the policy routes traffic to it"
    )
    unload.set_defaults(func=_unload)

    listing = sub.add_parser(
        "list",
        help="versions: state in Triton, alias, created, source, validation",
        description="A table of the versions in the repository: name, version, state in "
        "Triton, alias and traffic weight in the policy, when it was built, from which "
        "checkpoint, its validation figures (largest logit difference, held-out loss) and "
        "quantization.",
    )
    listing.add_argument(
        "--name", default=DEFAULT_MODEL_NAME, help=f"model name (default: {DEFAULT_MODEL_NAME})"
    )
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(func=_list)

    show = sub.add_parser(
        "show",
        help="one version's manifest, state and policy role",
        description="Print NAME:VERSION's manifest (build, validation, quantization), its "
        "state in Triton and its aliases and weight in the policy, as JSON.",
    )
    show.add_argument("target", help="NAME[:VERSION] (default version: the newest)")
    show.set_defaults(func=_show)

    route = sub.add_parser(
        "route",
        help="change the traffic policy: weights, sticky key, shadow, aliases",
        description="Publish a new revision of the model's policy on genwire.config; every "
        "stage follows it within a second. What is not given stays as it was. Every version "
        "that would take traffic must be served (genwire model load).",
    )
    route.add_argument("name", help="model name")
    route.add_argument("--weights", help="VERSION=WEIGHT,... adding up to 100, e.g. 1=90,2=10")
    route.add_argument(
        "--sticky",
        help="what keeps a caller on one arm: user (metadata.user), metadata:<key>, "
        "request_id, or '' (per request)",
    )
    route.add_argument("--shadow", help="VERSION that gets a copy of each request ('' : none)")
    route.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="ALIAS=VERSION",
        help="set an alias (ALIAS= removes it); repeatable",
    )
    route.add_argument("--reason", default="", help="recorded in the policy")
    route.set_defaults(func=_route)

    promote = sub.add_parser(
        "promote",
        help="blue-green: VERSION takes all traffic, the old version drains and unloads",
        description="Load VERSION and wait until it answers, make it the champion with all "
        "traffic, wait until every request already prepared for the old version is "
        "generated, then unload the old version (--keep-old: keep it loaded for a fast "
        "rollback). No request fails or is lost on the way.",
    )
    promote.add_argument("name", help="model name")
    promote.add_argument("version", help="the version to promote")
    promote.add_argument("--keep-old", action="store_true", help="do not unload the old one")
    promote.add_argument(
        "--drain-timeout",
        type=_drain_seconds,
        default=300.0,
        help="most seconds to wait (default: 300)",
    )
    promote.set_defaults(func=_promote)

    back = sub.add_parser(
        "rollback",
        help="undo the last change: canaries off, or back to the previous champion",
        description="With canaries or a shadow: all traffic back to the champion. After a "
        "promotion: the previous champion again (loaded first if it was unloaded).",
    )
    back.add_argument("name", help="model name")
    back.add_argument("--reason", default="", help="recorded in the policy")
    back.set_defaults(func=_rollback)

    policy = sub.add_parser(
        "policy",
        help="print the policies in force (genwire.config)",
        description="Print every model's policy in force (or NAME's) as JSON lines.",
    )
    policy.add_argument("name", nargs="?", help="one model")
    policy.set_defaults(func=_policy)

    for parser in (load, unload, listing, show, route, promote, back):  # not policy
        parser.add_argument("--repository", type=Path, help="default: the settings' repository")


def _drain_seconds(text: str) -> float:
    """``--drain-timeout``: a finite number of seconds >= 0 (a negative one published the
    promotion and never unloaded the old version; nan waited forever)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text!r}")
    return seconds


def split_target(target: str) -> tuple[str, str | None]:
    """``NAME[:VERSION]`` → (name, version or None)."""
    name, sep, version = target.partition(":")
    if sep and not version.isdigit():
        raise SystemExit(f"genwire model: {target!r}: the version after ':' is a number")
    return name, version or None


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


def lifecycle(args: argparse.Namespace) -> Any:
    """A ``Lifecycle`` from the settings (and ``--repository``)."""
    from genwire.settings import CommonSettings
    from genwire_model.lifecycle import Lifecycle, TritonControl

    settings = CommonSettings()
    return Lifecycle(
        repository=getattr(args, "repository", None) or settings.repository,
        triton=TritonControl(settings.triton_http_url),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        triton_grpc_url=settings.triton_grpc_url,
        progress=lambda m: print(f"model: {m}", flush=True),
    )


def _run(args: argparse.Namespace, action: Any) -> int:
    from aiokafka.errors import KafkaError

    from genwire_model.lifecycle import LifecycleError, kafka_error

    command = getattr(args, "model_command", "")
    life = lifecycle(args)
    try:
        with _quiet_kafka_client():
            action(life)
    except KafkaError as exc:  # a broker call Lifecycle does not wrap: the same one line
        error = kafka_error(life.bootstrap_servers, command, exc)
        print(f"genwire model {command}: {error}", file=sys.stderr)
        return 2
    except LifecycleError as exc:
        print(f"genwire model {command}: {exc}", file=sys.stderr)
        return 2
    return 0


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    """aiokafka logs each failed connection attempt (Python's last-resort handler prints it):
    the command's own one-line error says what failed, and where."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load(args: argparse.Namespace) -> int:
    if args.restore:

        def restore(life: Any) -> None:
            for model, versions in life.restore().items():
                print(f"{model}: served versions {', '.join(versions) or 'none'}")

        return _run(args, restore)
    if not args.target:
        raise SystemExit("genwire model load: NAME[:VERSION] (or --restore)")
    name, version = split_target(args.target)

    def act(life: Any) -> None:
        served = life.load(name, version)
        print(f"{name} version {served} is served")

    return _run(args, act)


def _unload(args: argparse.Namespace) -> int:
    name, version = split_target(args.target)

    def act(life: Any) -> None:
        with life.locked(name):  # no policy published between the check and the unload
            policy = None if args.force else life.policy(name)
            left = life.unload(name, version, policy=policy)
        print(f"{name}: served versions now {', '.join(left) or 'none'}")

    return _run(args, act)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("name", "NAME"),
        ("version", "VERSION"),
        ("state", "STATE"),
        ("alias", "ALIAS"),
        ("weight", "WEIGHT"),
        ("created", "CREATED"),
        ("source", "SOURCE"),
        ("backend", "BACKEND"),
        ("max_abs_logit_diff", "LOGIT DIFF"),
        ("heldout_loss", "LOSS"),
        ("quantized", "QUANT"),
    ]

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    table = [[title for _, title in columns]]
    table += [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table)


def _rows(life: Any, name: str) -> list[dict[str, Any]]:
    from genwire_model.lifecycle import LifecycleError, describe

    rows = describe(life.repository, life.triton, name)
    try:
        policy = life.policy(name)
    except Exception:  # the broker is down: the table without the policy
        policy = None
    for row in rows:
        if policy is not None:
            version = row["version"]
            row["alias"] = ",".join(sorted(a for a, v in policy.aliases.items() if v == version))
            weight = policy.weights.get(version)
            row["weight"] = (
                "shadow" if policy.shadow == version else (None if weight is None else weight)
            )
    if not rows:
        raise LifecycleError(f"no model {name!r} in {life.repository}")
    return rows


def _list(args: argparse.Namespace) -> int:
    def act(life: Any) -> None:
        rows = _rows(life, args.name)
        if args.json:
            for row in rows:
                print(json.dumps(row))
        else:
            print(_table(rows))

    return _run(args, act)


def _show(args: argparse.Namespace) -> int:
    name, version = split_target(args.target)

    def act(life: Any) -> None:
        from genwire_model.lifecycle import LifecycleError
        from genwire_model.repository import ModelRepository

        rows = _rows(life, name)
        row = (
            rows[-1]
            if version is None
            else next((r for r in rows if r["version"] == version), None)
        )
        if row is None:
            raise LifecycleError(f"{name} has no version {version}")
        manifest = ModelRepository(life.repository).get(name, int(row["version"])).manifest
        print(json.dumps({**row, "manifest": manifest}, indent=2))

    return _run(args, act)


def _parse_aliases(items: list[str]) -> dict[str, str] | None:
    if not items:
        return None
    aliases: dict[str, str] = {}
    for item in items:
        alias, sep, version = item.partition("=")
        if not sep or not alias:
            raise SystemExit(f"genwire model route: --alias takes ALIAS=VERSION, not {item!r}")
        aliases[alias] = version
    return aliases


def _route(args: argparse.Namespace) -> int:
    from genwire.policy import PolicyError, checked, parse_weights

    try:
        weights = parse_weights(args.weights) if args.weights else None
        # Checked here too, before anything is asked of the broker or Triton.
        checked(
            model=args.name,
            weights=weights or {},
            sticky=args.sticky or "",
            shadow=args.shadow or "",
        )
    except PolicyError as exc:
        print(f"genwire model route: {exc}", file=sys.stderr)
        return 2

    def act(life: Any) -> None:
        policy = life.route(
            args.name,
            weights=weights,
            sticky=args.sticky,
            shadow=args.shadow,
            aliases=_parse_aliases(args.alias),
            by=_who(),
            reason=args.reason,
        )
        print(policy.model_dump_json())

    return _run(args, act)


def _promote(args: argparse.Namespace) -> int:
    def act(life: Any) -> None:
        policy = life.promote(
            args.name,
            args.version,
            by=_who(),
            unload_old=not args.keep_old,
            drain_timeout_s=args.drain_timeout,
        )
        print(policy.model_dump_json())

    return _run(args, act)


def _rollback(args: argparse.Namespace) -> int:
    def act(life: Any) -> None:
        print(life.rollback(args.name, by=_who(), reason=args.reason).model_dump_json())

    return _run(args, act)


def _policy(args: argparse.Namespace) -> int:
    def act(life: Any) -> None:
        policies = life.policies()
        for name in sorted(policies):
            if args.name in (None, name):
                print(policies[name].model_dump_json())

    return _run(args, act)


def load_built(args: argparse.Namespace, name: str, version: str) -> int:
    """``genwire model build --load``: serve the version just built."""

    def act(life: Any) -> None:
        life.load(name, version)
        print(f"{name} version {version} is served")

    return _run(args, act)
