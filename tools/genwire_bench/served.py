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

from genwire.policy import ModelPolicy, PolicyError
from genwire.policyfeed import read_policies

DIRECT_TARGETS = frozenset({"triton", "triton-stream"})


@dataclass(frozen=True)
class MeasuredVersion:
    """The version to measure (``""``: none known, the repository's newest) and why not the
    obvious one, when it is not."""

    version: str
    note: str = ""


def choose(model: str, policy: ModelPolicy | None, served: list[str] | None) -> MeasuredVersion:
    """The version the pipeline sends ``model``'s requests to, as preprocess routes them.

    ``served``: the versions Triton serves, ascending (None: Triton did not say). A policy's
    live versions win (one of several: the champion, else the heaviest); without a policy,
    the newest served version, as preprocess picks it.
    """
    live = policy.live_versions() if policy is not None else set()
    if not live:
        return MeasuredVersion(served[-1] if served else "")
    assert policy is not None
    if len(live) == 1:
        version = next(iter(live))
        note = ""
    else:
        weights = {v: policy.weights.get(v, 0) for v in live}
        version = (
            policy.champion
            if policy.champion in live
            else max(sorted(live), key=lambda v: weights[v])
        )
        split = ", ".join(f"version {v} {weights[v]} %" for v in sorted(live, key=int))
        note = (
            f"the policy splits {model}'s requests ({split}): the pipeline's figures mix "
            f"them, direct Triton is measured on version {version}"
        )
    if served is not None and version not in served:
        gap = f"the policy routes {model} to version {version}, which Triton does not serve"
        note = f"{note}; {gap}" if note else gap
    return MeasuredVersion(version, note)


async def served_versions(triton_url: str, model: str) -> list[str] | None:
    """The versions Triton serves of ``model``, ascending (None: not reachable or not served)."""
    from tritonclient.grpc import aio as grpcaio
    from tritonclient.utils import InferenceServerException

    client = grpcaio.InferenceServerClient(triton_url)
    try:
        metadata = await client.get_model_metadata(model)
    except InferenceServerException:
        return None
    finally:
        await client.close()
    versions = sorted((str(v) for v in metadata.versions if str(v).isdigit()), key=int)
    return versions or None


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
    served = asyncio.run(served_versions(triton_url, model))
    policy: ModelPolicy | None = None
    unread = ""
    if not set(targets) <= DIRECT_TARGETS:
        try:
            policy = asyncio.run(_policy(bootstrap_servers, model, timeout_s))
        except (PolicyError, KafkaError, OSError) as exc:
            unread = f"the model's policy was not read ({exc}): measuring the newest served version"
    chosen = choose(model, policy, served)
    if unread:
        note = f"{unread}; {chosen.note}" if chosen.note else unread
        return MeasuredVersion(chosen.version, note)
    return chosen
