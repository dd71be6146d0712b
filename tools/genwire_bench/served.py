"""Which version of the model a run measures: the one the pipeline's requests go to.

Direct Triton is the baseline the pipeline is compared with, so it must be asked for the same
version, and the prompts tokenized with that version's assets. Preprocess routes by the model's
policy on ``genwire.config`` (docs/lifecycle.md) and, without one, to the newest version Triton
serves; after a promote of an older version or a rollback, that is not the repository's newest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from genwire.policy import ModelPolicy, numbered_versions, served_instead
from genwire.policyfeed import read_policies

DIRECT_TARGETS = frozenset({"triton", "triton-stream"})
"""The targets that ask Triton straight, not through the pipeline."""


@dataclass(frozen=True)
class MeasuredVersion:
    """The version to measure (``""``: none known, the repository's newest) and what the run's
    reader should know about it (a split, a version not served)."""

    version: str
    note: str = ""


def _by_weight(policy: ModelPolicy, served: list[str] | None) -> tuple[dict[str, int], list[str]]:
    """The share of requests (of 100) each version serves, as preprocess routes them with its
    default ``route_fallback`` (a live version Triton does not serve moves to the one serving
    in its place, when there is one), and the live versions so moved, ascending."""
    shares: dict[str, int] = {}
    moved: list[str] = []
    for version in sorted(policy.live_versions(), key=int):
        weight = policy.weights.get(version, 0) if policy.weights else 100
        serving = served_instead(policy, version, served)
        shares[serving] = shares.get(serving, 0) + weight
        if serving != version:
            moved.append(version)
    return shares, moved


def choose(model: str, policy: ModelPolicy | None, served: list[str] | None) -> MeasuredVersion:
    """The version most of ``model``'s pipeline requests reach, as preprocess routes them.

    ``served``: the versions Triton serves, ascending (None: Triton did not say). Without a
    policy naming a live version, the newest served one. Otherwise each live version's weight
    goes to the version serving it (preprocess's fallback for one Triton does not serve), and
    the heaviest served one wins (a tie: the champion, else the newest; none served: the
    heaviest, whose requests fail like the direct ones will).
    """
    if policy is None or not policy.live_versions():
        return MeasuredVersion(served[-1] if served else "")
    shares, moved = _by_weight(policy, served)
    notes = [
        f"the policy routes {shares[v]} % of {model}'s requests to version {v}, which Triton "
        "does not serve: they fail (model_not_loaded)"
        for v in sorted(shares, key=int)
        if served is not None and v not in served
    ]
    candidates = [v for v in shares if served is None or v in served] or list(shares)
    version = max(candidates, key=lambda v: (shares[v], v == policy.champion, int(v)))
    if moved:
        notes.insert(
            0,
            f"version {', '.join(moved)} of {model}, which its policy routes to, is not served: "
            "preprocess serves those requests with another (route_fallback)",
        )
    if len(shares) > 1:
        split = ", ".join(f"version {v} {shares[v]} %" for v in sorted(shares, key=int))
        notes.append(
            f"{model}'s requests are split ({split}): the pipeline's figures mix the versions, "
            f"direct Triton is measured on version {version}"
        )
    return MeasuredVersion(version, "; ".join(notes))


async def served_versions(triton_url: str, model: str, timeout_s: float = 5.0) -> list[str] | None:
    """The versions Triton serves of ``model``, ascending (None: not reachable or not served)."""
    from tritonclient.grpc import aio as grpcaio
    from tritonclient.utils import InferenceServerException

    client = grpcaio.InferenceServerClient(triton_url)
    try:
        metadata = await client.get_model_metadata(model, client_timeout=timeout_s)
    except InferenceServerException:
        return None
    finally:
        await client.close()
    return numbered_versions(metadata.versions) or None


async def _policy(bootstrap_servers: str, model: str, timeout_s: float) -> ModelPolicy | None:
    store = await read_policies(bootstrap_servers, timeout_s=timeout_s)
    return store.policies.get(model)


def measured_version(
    *,
    model: str,
    targets: list[str],
    triton_url: str,
    bootstrap_servers: str,
    timeout_s: float = 5.0,
) -> MeasuredVersion:
    """Ask Triton and (when the run goes through the pipeline) ``genwire.config``; blocking.

    A run of direct targets alone measures what Triton serves by default, the newest version.
    """
    served = asyncio.run(served_versions(triton_url, model, timeout_s))
    if set(targets) <= DIRECT_TARGETS:
        return choose(model, None, served)
    try:
        policy = asyncio.run(_policy(bootstrap_servers, model, timeout_s))
    except (KafkaError, OSError, ValueError) as exc:  # ValueError: PolicyError, bad security
        fallback = "the newest served version" if served else "the repository's newest version"
        return MeasuredVersion(
            served[-1] if served else "",
            f"{model}'s policy was not read ({exc}): measuring {fallback}",
        )
    return choose(model, policy, served)
