"""Which version a run measures: the one preprocess routes most of the pipeline's requests to."""

from __future__ import annotations

from typing import Any

import pytest
from genwire_bench import served as served_module
from genwire_bench.served import MeasuredVersion, choose, measured_version

from genwire.policy import ModelPolicy, PolicyError, checked

MODEL = "m"


def _policy(**fields: Any) -> ModelPolicy:
    return checked(model=MODEL, **fields)


def test_without_a_policy_the_newest_served_version_not_the_repositorys() -> None:
    assert choose(MODEL, None, ["1", "3"]) == MeasuredVersion("3")


def test_without_a_policy_or_an_answer_from_triton_nothing_is_named() -> None:
    assert choose(MODEL, None, None) == MeasuredVersion("")


def test_a_champion_without_weights_is_measured_even_when_newer_ones_are_served() -> None:
    policy = _policy(aliases={"champion": "3"})
    assert choose(MODEL, policy, ["3", "7"]) == MeasuredVersion("3")


def test_the_one_weighted_version_wins_over_the_champion_alias() -> None:
    # resolve() sends every request to the weighted version, whatever the alias says.
    policy = _policy(aliases={"champion": "3"}, weights={"7": 100})
    assert choose(MODEL, policy, ["3", "7"]) == MeasuredVersion("7")


def test_a_split_measures_the_version_most_requests_reach_and_says_they_mix() -> None:
    policy = _policy(aliases={"champion": "3"}, weights={"3": 10, "7": 90})
    chosen = choose(MODEL, policy, ["3", "7"])
    assert chosen.version == "7"  # not the champion: it takes a tenth
    assert chosen.note == (
        "m's requests are split (version 3 10 %, version 7 90 %): the pipeline's figures mix "
        "the versions, direct Triton is measured on version 7"
    )


def test_an_even_split_measures_the_champion() -> None:
    policy = _policy(aliases={"champion": "4"}, weights={"4": 50, "5": 50})
    assert choose(MODEL, policy, ["4", "5"]).version == "4"


def test_an_even_split_without_a_live_champion_measures_the_newest_by_number() -> None:
    policy = _policy(aliases={"champion": "1"}, weights={"9": 50, "10": 50})
    chosen = choose(MODEL, policy, ["1", "9", "10"])
    assert chosen.version == "10"  # by number: as text, "9" > "10"
    assert "version 9 50 %, version 10 50 %" in chosen.note


def test_a_zero_weight_champion_beside_weighted_versions_takes_no_share() -> None:
    policy = _policy(aliases={"champion": "2"}, weights={"2": 0, "3": 100})
    assert choose(MODEL, policy, ["2", "3"]) == MeasuredVersion("3")


def test_an_unserved_champion_is_measured_on_the_version_preprocess_serves_instead() -> None:
    # route_fallback: neither the routed version nor the champion is served, another is.
    policy = _policy(aliases={"champion": "7", "previous": "3"}, weights={"7": 100})
    chosen = choose(MODEL, policy, ["3", "5"])
    assert chosen.version == "3"  # the newest served version the policy names
    assert chosen.note == (
        "version 7 of m, which its policy routes to, is not served: preprocess serves those "
        "requests with another (route_fallback)"
    )


def test_an_unserved_canary_beside_a_served_champion_fails_and_is_not_measured() -> None:
    policy = _policy(aliases={"champion": "3"}, weights={"3": 20, "7": 80})
    chosen = choose(MODEL, policy, ["3"])
    assert chosen.version == "3"  # the requests that succeed reach 3, however few
    assert "routes 80 % of m's requests to version 7, which Triton does not serve" in chosen.note
    assert "direct Triton is measured on version 3" in chosen.note


def test_a_policy_with_no_answer_from_triton_is_taken_as_it_is() -> None:
    policy = _policy(aliases={"champion": "7"}, weights={"7": 100})
    assert choose(MODEL, policy, None) == MeasuredVersion("7")


def test_a_policy_naming_only_a_shadow_or_spare_alias_falls_back_to_triton() -> None:
    # No live version (no weights, no champion): preprocess asks Triton's default.
    policy = _policy(aliases={"previous": "2"}, shadow="2")
    assert choose(MODEL, policy, ["2", "4"]) == MeasuredVersion("4")


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``measured_version`` with Triton answering ``served`` and genwire.config ``policy``
    (an exception: raised); ``calls`` counts the policy reads."""
    state: dict[str, Any] = {"served": ["1", "2"], "policy": None, "calls": 0}

    async def served(*args: object) -> list[str] | None:
        return state["served"]  # type: ignore[no-any-return]

    async def policy(*args: object) -> ModelPolicy | None:
        state["calls"] += 1
        if isinstance(state["policy"], Exception):
            raise state["policy"]
        return state["policy"]  # type: ignore[no-any-return]

    monkeypatch.setattr(served_module, "served_versions", served)
    monkeypatch.setattr(served_module, "_policy", policy)
    return state


def _measured(*targets: str) -> MeasuredVersion:
    return measured_version(
        model=MODEL, targets=list(targets), triton_url="t:1", bootstrap_servers="k:1"
    )


def test_a_direct_run_reads_no_policy(asked: dict[str, Any]) -> None:
    asked["policy"] = _policy(aliases={"champion": "1"})
    assert _measured("triton", "triton-stream") == MeasuredVersion("2")
    assert asked["calls"] == 0
    assert _measured("triton", "kafka") == MeasuredVersion("1")
    assert asked["calls"] == 1


@pytest.mark.parametrize(
    ("error", "served", "expected"),
    [
        (PolicyError("genwire.config could not be read within 5 s"), ["1", "2"], "2"),
        (ValueError("GENWIRE_KAFKA_SASL_USERNAME is not set"), None, ""),
    ],
)
def test_an_unread_policy_is_said_and_triton_decides(
    asked: dict[str, Any], error: Exception, served: list[str] | None, expected: str
) -> None:
    asked["policy"], asked["served"] = error, served
    chosen = _measured("grpc")
    assert chosen.version == expected
    assert chosen.note.startswith(f"m's policy was not read ({error}): measuring the ")
    assert chosen.note.endswith(
        "newest served version" if served else "repository's newest version"
    )
