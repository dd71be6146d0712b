"""Which version a run measures: the one preprocess routes the pipeline's requests to."""

from __future__ import annotations

import pytest
from genwire_bench.served import MeasuredVersion, choose

from genwire.policy import ModelPolicy, checked

MODEL = "m"


def _policy(**fields: object) -> ModelPolicy:
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


def test_a_split_measures_the_champion_and_says_the_pipeline_mixes_versions() -> None:
    policy = _policy(aliases={"champion": "7"}, weights={"3": 10, "7": 90})
    chosen = choose(MODEL, policy, ["3", "7"])
    assert chosen.version == "7"
    assert "version 3 10 %, version 7 90 %" in chosen.note
    assert "measured on version 7" in chosen.note


def test_a_split_without_a_live_champion_measures_the_heaviest_version() -> None:
    policy = _policy(aliases={"champion": "1"}, weights={"2": 30, "10": 70})
    chosen = choose(MODEL, policy, ["1", "2", "10"])
    assert chosen.version == "10"
    assert "version 2 30 %, version 10 70 %" in chosen.note  # numeric order, not text


def test_an_even_split_without_a_live_champion_picks_one_deterministically() -> None:
    policy = _policy(weights={"4": 50, "5": 50})
    assert choose(MODEL, policy, ["4", "5"]).version == choose(MODEL, policy, ["5", "4"]).version


@pytest.mark.parametrize("served", [["3"], []])
def test_a_routed_version_triton_does_not_serve_is_named_in_the_note(served: list[str]) -> None:
    policy = _policy(aliases={"champion": "7"}, weights={"7": 100})
    chosen = choose(MODEL, policy, served)
    assert chosen.version == "7"
    assert chosen.note == "the policy routes m to version 7, which Triton does not serve"


def test_a_policy_naming_only_a_shadow_or_spare_alias_falls_back_to_triton() -> None:
    # No live version (no weights, no champion): preprocess asks Triton's default.
    policy = _policy(aliases={"previous": "2"}, shadow="2")
    assert choose(MODEL, policy, ["2", "4"]) == MeasuredVersion("4")
