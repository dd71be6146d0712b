"""The scenarios of each profile, with their parameters.

``short`` runs in ``make test`` (a few minutes on a 2-core machine): one stage kill, a brief
Redis outage and a couple hundred fuzz cases. ``full`` is the whole suite of docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from genwire_chaos.config import LoadConfig

if TYPE_CHECKING:
    from genwire_chaos.faults import StackControl
    from genwire_chaos.report import ScenarioReport
    from genwire_chaos.scenarios import LoadScenario

Out = Callable[[str], None]
Runner = Callable[["StackControl", Out], Awaitable["ScenarioReport"]]


@dataclass(frozen=True)
class Options:
    """Knobs of a run; ``None`` keeps the profile's value."""

    requests: int | None = None
    rate: float | None = None
    max_tokens: int | None = None
    broker_down_s: float | None = None
    redis_down_s: float | None = None
    fuzz_cases: int | None = None
    seed: int = 0
    streams_per_kind: int | None = None


@dataclass(frozen=True)
class Profile:
    """Defaults of one profile."""

    name: str
    load: LoadConfig
    kills: int
    broker_down_s: float
    redis_down_s: float
    fuzz_cases: int
    streams_per_kind: int
    scenarios: tuple[str, ...]


STAGES = ("preprocess", "inference", "postprocess")

PROFILES: dict[str, Profile] = {
    "short": Profile(
        name="short",
        load=LoadConfig(requests=150, rate=15.0, drain_s=60.0, stuck_wait_s=60.0),
        kills=1,
        broker_down_s=15.0,
        redis_down_s=8.0,
        fuzz_cases=200,
        streams_per_kind=2,
        scenarios=("kill-inference", "redis-down", "fuzz"),
    ),
    "full": Profile(
        name="full",
        load=LoadConfig(requests=1500, rate=20.0, drain_s=120.0, stuck_wait_s=60.0),
        kills=2,
        broker_down_s=60.0,
        redis_down_s=30.0,
        fuzz_cases=1000,
        streams_per_kind=3,
        scenarios=(
            "kill-preprocess",
            "kill-inference",
            "kill-postprocess",
            "kill-triton",
            "kafka-down",
            "redis-down",
            "gateway-kill",
            "rebalance-preprocess",
            "rebalance-inference",
            "rebalance-postprocess",
            "brokers3-kill",
            "fuzz",
        ),
    ),
}

ALL_SCENARIOS = PROFILES["full"].scenarios
DESCRIPTIONS = {
    **{f"kill-{s}": f"{s} SIGKILLed under load (twice in full), back each time" for s in STAGES},
    "kill-triton": "Triton SIGKILLed under load, restarted with the model loaded",
    "kafka-down": "the broker stopped under load (60 s in full), then started again",
    "redis-down": "Redis SIGKILLed under load and kept down (30 s in full), then started",
    "gateway-kill": "the gateway SIGKILLed with gRPC and SSE streams open",
    **{f"rebalance-{s}": f"{s} scaled 1→3→1 under load" for s in STAGES},
    "brokers3-kill": "a three-broker KRaft cluster, one broker SIGKILLed under load",
    "fuzz": "Hypothesis-generated malformed requests and raw bytes",
}


def runner(name: str, profile: Profile, options: Options) -> Runner:
    """The coroutine factory of scenario ``name`` with the profile's and the options' values."""
    load = replace(
        profile.load,
        requests=options.requests or profile.load.requests,
        rate=options.rate or profile.load.rate,
        max_tokens=options.max_tokens or profile.load.max_tokens,
    )

    from genwire_chaos import scenarios as sc

    def loaded(scenario: LoadScenario) -> Runner:
        async def run(control: StackControl, out: Out) -> ScenarioReport:
            return await sc.run_load_scenario(scenario, load, control=control, out=out)

        return run

    if name.startswith("kill-") and name[5:] in STAGES:
        return loaded(sc.kill_service(name[5:], kills=profile.kills))
    if name == "kill-triton":
        return loaded(sc.kill_triton())
    if name == "kafka-down":
        return loaded(sc.outage("kafka", options.broker_down_s or profile.broker_down_s))
    if name == "redis-down":
        down_s = options.redis_down_s or profile.redis_down_s
        return loaded(sc.outage("redis", down_s, how="kill"))
    if name.startswith("rebalance-") and name[10:] in STAGES:
        return loaded(sc.rebalance(name[10:]))
    if name == "gateway-kill":
        from genwire_chaos.gateway_kill import run_gateway_kill

        async def gateway(control: StackControl, out: Out) -> ScenarioReport:
            return await run_gateway_kill(
                control=control,
                streams_per_kind=options.streams_per_kind or profile.streams_per_kind,
                out=out,
            )

        return gateway
    if name == "brokers3-kill":
        from genwire_chaos.cluster import run_three_brokers

        async def cluster(control: StackControl, out: Out) -> ScenarioReport:
            return await run_three_brokers(load, control=control, out=out)

        return cluster
    if name == "fuzz":
        from genwire_chaos.fuzz import run_fuzz

        async def fuzz(control: StackControl, out: Out) -> ScenarioReport:
            return await run_fuzz(
                options.fuzz_cases or profile.fuzz_cases,
                control=control,
                seed_value=options.seed,
                out=out,
            )

        return fuzz
    raise KeyError(f"unknown scenario {name!r}: choose from {', '.join(ALL_SCENARIOS)}")
