"""genwire.policy: the genwire.config record, resolution, rollback and promotion."""

from __future__ import annotations

from collections import Counter

import pytest

from genwire.policy import (
    CHAMPION,
    DEFAULT_ARM,
    PINNED_ARM,
    ModelPolicy,
    PolicyError,
    parse,
    parse_weights,
    promote,
    resolve,
    rollback,
    served_instead,
    shadow_of,
)


def canary(**kw: object) -> ModelPolicy:
    data: dict[str, object] = {
        "model": "m",
        "aliases": {"champion": "1", "challenger": "2"},
        "weights": {"1": 90, "2": 10},
    }
    data.update(kw)
    return ModelPolicy.model_validate(data)


def test_weights_split_traffic_in_proportion() -> None:
    policy = canary()
    arms = Counter(resolve(policy, f"req-{i}", {})[0] for i in range(20_000))
    assert set(arms) == {"1", "2"}
    assert 0.08 < arms["2"] / 20_000 < 0.12


def test_resolution_is_deterministic_and_names_the_arm() -> None:
    policy = canary()
    seen = {resolve(policy, f"r{i}", {}) for i in range(500)}
    assert seen == {("1", CHAMPION), ("2", "challenger")}
    for i in range(50):
        assert resolve(policy, f"r{i}", {}) == resolve(policy, f"r{i}", {})


def test_sticky_user_keeps_one_user_on_one_arm() -> None:
    policy = canary(sticky="user", weights={"1": 50, "2": 50})
    for user in ("alice", "bob", "carol", "dave"):
        versions = {resolve(policy, f"{user}-{i}", {"user": user})[0] for i in range(100)}
        assert len(versions) == 1
    users = {resolve(policy, "x", {"user": f"u{i}"})[0] for i in range(100)}
    assert users == {"1", "2"}


def test_sticky_metadata_key_and_fallback_to_request_id() -> None:
    policy = canary(sticky="metadata:tenant", weights={"1": 50, "2": 50})
    assert len({resolve(policy, f"r{i}", {"tenant": "acme"})[0] for i in range(100)}) == 1
    # Without the key, each request is its own unit.
    assert len({resolve(policy, f"r{i}", {})[0] for i in range(100)}) == 2


def test_pinned_version_and_alias() -> None:
    policy = canary()
    assert resolve(policy, "r", {}, pinned="7") == ("7", PINNED_ARM)
    assert resolve(policy, "r", {}, pinned="challenger") == ("2", "challenger")
    with pytest.raises(PolicyError, match="no alias 'nope'"):
        resolve(policy, "r", {}, pinned="nope")
    with pytest.raises(PolicyError):
        resolve(None, "r", {}, pinned="champion")


def test_no_policy_or_no_weights() -> None:
    assert resolve(None, "r", {}) == ("", DEFAULT_ARM)
    only = ModelPolicy(model="m", aliases={"champion": "3"})
    assert resolve(only, "r", {}) == ("3", CHAMPION)
    assert resolve(ModelPolicy(model="m"), "r", {}) == ("", DEFAULT_ARM)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weights": {"1": 90, "2": 20}}, "add up to 110"),
        ({"weights": {"1": 110, "2": -10}}, "negative"),
        ({"weights": {"x": 100}}, "not a version number"),
        ({"aliases": {"champion": "latest"}}, "not a version number"),
        ({"aliases": {"9bad": "1"}}, "not an alias name"),
        ({"sticky": "cookie"}, "sticky is"),
        ({"shadow": "1"}, "take traffic and be the shadow"),
        ({"model": "bad name"}, "not a model name"),
    ],
)
def test_invalid_policies_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        canary(**fields)


def test_parse_records() -> None:
    policy = canary(shadow="3", sticky="user")
    assert parse(b"m", policy.value()) == policy
    assert parse(b"m", None) is None
    with pytest.raises(PolicyError, match="not JSON"):
        parse(b"m", b"{nope")
    with pytest.raises(PolicyError, match="add up"):
        parse(b"m", b'{"model": "m", "weights": {"1": 5}}')
    with pytest.raises(PolicyError, match="not the model name"):
        parse(b"other", policy.value())
    with pytest.raises(PolicyError, match="larger"):
        parse(b"m", b" " * 70_000)
    with pytest.raises(PolicyError, match="surprise: Extra inputs"):
        parse(b"m", b'{"model": "m", "surprise": 1}')


def test_rollback_returns_traffic_to_the_champion() -> None:
    policy = canary(shadow="3", revision=4)
    alert = {"name": "canary_errors", "ratio": 0.5}
    back = rollback(policy, "errors on v2", alert)
    assert back.weights == {"1": 100}
    assert back.shadow == ""
    assert back.revision == 5
    assert back.alert == alert
    assert back.reason == "errors on v2"
    assert back.updated_by == "monitor"
    assert back.aliases == policy.aliases
    assert all(resolve(back, f"r{i}", {}) == ("1", CHAMPION) for i in range(200))


def test_rollback_without_champion_or_after_promotion() -> None:
    with pytest.raises(PolicyError, match="no 'champion'"):
        rollback(ModelPolicy(model="m", weights={"2": 100}), "x")
    with pytest.raises(PolicyError, match="nothing to roll back"):
        rollback(ModelPolicy(model="m", aliases={"champion": "1"}), "x")
    promoted = promote(canary(), "2", by="cli")
    assert promoted.champion == "2"
    assert promoted.aliases["previous"] == "1"
    assert promoted.weights == {"2": 100}
    back = rollback(promoted, "manual", by="cli")
    assert back.champion == "1"
    assert back.weights == {"1": 100}
    assert back.aliases["previous"] == "2"


def test_shadow_of() -> None:
    policy = canary(shadow="3")
    assert shadow_of(policy, "1") == "3"
    assert shadow_of(policy, "3") == ""
    assert shadow_of(canary(), "1") == ""
    assert shadow_of(None, "1") == ""


def test_parse_weights() -> None:
    assert parse_weights("1=90, 2=10") == {"1": 90, "2": 10}
    for bad in ("1:90", "a=1", "1=x", "1=50,1=50", ""):
        with pytest.raises(PolicyError):
            parse_weights(bad)


def test_served_instead_moves_only_what_preprocess_would_move() -> None:
    p = ModelPolicy(model="m", aliases={"champion": "5", "previous": "2"}, weights={"5": 100})
    assert served_instead(p, "5", ["2", "5"]) == "5"  # served
    assert served_instead(p, "5", None) == "5"  # Triton said nothing
    assert served_instead(p, "5", []) == "5"  # Triton serves nothing of it (restarting)
    assert served_instead(p, "5", ["2", "3"]) == "2"  # the newest served the policy names
    assert served_instead(p, "5", ["3", "4"]) == "4"  # else the newest served
    canary = ModelPolicy(model="m", aliases={"champion": "2"}, weights={"2": 90, "6": 10})
    assert served_instead(canary, "6", ["2"]) == "6"  # the champion serves: the canary fails
