"""A model's serving policy: the record of ``genwire.config`` (compacted, key = model name).

One ``ModelPolicy`` per model says which versions serve it and how traffic is split:

- ``aliases``: names (``champion``, ``challenger``, any) → a version. A caller may name an
  alias instead of a version (``model_version`` or ``model: NAME:ALIAS``).
- ``weights``: version → integer weight, adding up to 100 (canary, A/B). Empty: everything
  goes to ``champion`` (or, without one, to the model's default version in Triton).
- ``sticky``: which request field picks the arm, so one user stays on one arm:
  ``""``/``"request_id"`` (per request), ``"user"`` (``metadata["user"]``) or
  ``"metadata:<key>"``. The choice is a hash of that value, never a random draw: the same
  request (a redelivery, a retry) always resolves to the same version.
- ``shadow``: a version that gets a copy of each request (its result goes to
  ``genwire.shadow`` only), or ``""``.

Preprocess resolves a request once (:func:`resolve`) and writes the version and the arm into
the prepared event; every stage downstream uses that version. A change (``genwire model
route/promote/rollback``, or the monitor's automatic rollback via :func:`rollback`) publishes
a new record with ``revision + 1``; every stage follows the topic live
(``genwire.policyfeed``). A tombstone (no value) removes a model's policy.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CHAMPION = "champion"
"""The alias of the version that takes the traffic when nothing else says otherwise (and that
a rollback returns all traffic to)."""
CHALLENGER = "challenger"
"""The conventional alias of a version under test (a canary)."""
PREVIOUS = "previous"
"""The alias a promotion gives the former champion (what a later rollback returns to)."""
PINNED_ARM = "pinned"
"""The arm of a request that named a version number itself."""
DEFAULT_ARM = "default"
"""The arm of a request for a model without a policy (Triton's default version serves it)."""
SHADOW_ARM = "shadow"
"""The arm of a shadow copy."""
FALLBACK_ARM = "fallback"
"""The arm of a request the policy routed to a version Triton no longer serves (nor its
champion), served by another served version instead (preprocess, ``ROUTE_FALLBACK``)."""
ARM_ATTRIBUTE = "genwire.model.arm"
"""Span attribute: the arm that served a request (next to ``genwire.model.version``)."""
SHADOW_ATTRIBUTE = "genwire.shadow"
"""Span attribute: true on the spans of a shadow copy."""
WEIGHT_TOTAL = 100
"""Weights add up to this (percent)."""

VERSION_RE = re.compile(r"^[0-9]{1,9}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MODEL_RULE = "a letter or digit, then up to 127 letters, digits, '_', '.' or '-'"
"""``MODEL_RE`` in words (no ':': a request names a version or alias as NAME:VERSION)."""
STICKY_RE = re.compile(r"^(|user|request_id|metadata:[^\s]{1,64})$")
MAX_POLICY_RECORD_BYTES = 64 * 1024
"""A larger ``genwire.config`` value is corrupt (skipped and counted)."""


class PolicyError(ValueError):
    """A policy that cannot be applied: the message says why (for a CLI error or a log line)."""


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 62, version)


class ModelPolicy(BaseModel):
    """The serving policy of one model (the value of its ``genwire.config`` record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    """The model name (also the record's key)."""
    aliases: dict[str, str] = Field(default_factory=dict)
    """Alias → version (``champion``, ``challenger``, any name)."""
    weights: dict[str, int] = Field(default_factory=dict)
    """Version → weight; they add up to 100. Empty: all traffic to ``champion``."""
    sticky: str = ""
    """``""`` or ``request_id`` (per request), ``user`` (``metadata["user"]``), or
    ``metadata:<key>``: the value whose hash picks the arm."""
    shadow: str = ""
    """A version that also receives a copy of each request (results on ``genwire.shadow``)."""
    revision: int = 0
    """Increases by one with every change (a command refuses to publish over a revision it did
    not read). Stages apply records in the topic's order (after compaction a restarted instance
    sees only the latest record, and every instance must agree with it), except one older than
    the revision they hold: that is skipped (``genwire.policyfeed``), so history read again
    never takes a store back. A tombstone resets the model: its next policy may start over."""
    updated_ms: float = 0.0
    """When this revision was written (ms since the epoch)."""
    updated_by: str = ""
    """Who wrote it: ``cli:<user>``, ``monitor``, ..."""
    reason: str = ""
    """Why (for a rollback: what fired)."""
    alert: dict[str, Any] | None = None
    """The alert (and its figures) that caused an automatic rollback."""

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not MODEL_RE.match(value):
            raise ValueError(f"not a model name: {value[:80]!r} ({MODEL_RULE})")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, version in value.items():
            if not ALIAS_RE.match(alias) or alias.isdigit():
                raise ValueError(
                    f"not an alias name (a letter, then letters/digits/_.-): {alias!r}"
                )
            if not VERSION_RE.match(version):
                raise ValueError(f"alias {alias!r} points at {version!r}, not a version number")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        for version, weight in value.items():
            if not VERSION_RE.match(version):
                raise ValueError(f"weight for {version!r}: not a version number")
            if weight < 0:
                raise ValueError(f"weight for version {version} is negative ({weight})")
        if value and sum(value.values()) != WEIGHT_TOTAL:
            raise ValueError(
                f"weights add up to {sum(value.values())}, not {WEIGHT_TOTAL}: "
                + ",".join(f"{v}={w}" for v, w in value.items())
            )
        return value

    @field_validator("sticky")
    @classmethod
    def _sticky(cls, value: str) -> str:
        if not STICKY_RE.match(value):
            raise ValueError(
                f"sticky is '', 'user', 'request_id' or 'metadata:<key>', not {value!r}"
            )
        return value

    @field_validator("shadow")
    @classmethod
    def _shadow(cls, value: str) -> str:
        if value and not VERSION_RE.match(value):
            raise ValueError(f"shadow {value!r} is not a version number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelPolicy:
        if self.shadow and self.weights.get(self.shadow, 0) > 0:
            raise ValueError(f"version {self.shadow} cannot take traffic and be the shadow too")
        return self

    # -- views ------------------------------------------------------------------------------

    @property
    def champion(self) -> str:
        """The champion's version, or ``""`` when no alias names one."""
        return self.aliases.get(CHAMPION, "")

    def versions(self) -> set[str]:
        """Every version the policy names (aliases, weights > 0, shadow): they must be served."""
        named = set(self.aliases.values()) | {v for v, w in self.weights.items() if w > 0}
        if self.shadow:
            named.add(self.shadow)
        return named

    def live_versions(self) -> set[str]:
        """Versions that take caller traffic now (weights > 0, else the champion)."""
        live = {v for v, w in self.weights.items() if w > 0}
        if not live and self.champion:
            live.add(self.champion)
        return live

    def canaries(self) -> set[str]:
        """Versions taking traffic that are not the champion (what a rollback takes away)."""
        return self.live_versions() - {self.champion}

    def arm_of(self, version: str) -> str:
        """The arm name of ``version``: its alias (``champion`` first, then by name), else
        ``v<version>``."""
        if self.champion == version:
            return CHAMPION
        for alias in sorted(self.aliases):
            if self.aliases[alias] == version:
                return alias
        return f"v{version}"

    # -- records ----------------------------------------------------------------------------

    def key(self) -> bytes:
        """The Kafka key of its ``genwire.config`` record: the model name."""
        return self.model.encode()

    def value(self) -> bytes:
        """The Kafka value (JSON)."""
        return self.model_dump_json().encode()

    def changed(self, *, by: str, reason: str = "", **fields: Any) -> ModelPolicy:
        """A new revision with ``fields`` replaced (validated: raises ``PolicyError``)."""
        data = self.model_dump()
        data.update(fields)
        data.update(
            revision=self.revision + 1,
            updated_ms=time.time() * 1000.0,
            updated_by=by,
            reason=reason,
        )
        if "alert" not in fields:
            data["alert"] = None
        try:
            return ModelPolicy.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"]
        for e in exc.errors()
    )


def checked(**fields: Any) -> ModelPolicy:
    """A policy from ``fields``; ``PolicyError`` naming every problem when it is invalid."""
    try:
        return ModelPolicy.model_validate(fields)
    except ValidationError as exc:
        raise PolicyError(_explain(exc)) from None


def parse(key: bytes | None, value: bytes | None) -> ModelPolicy | None:
    """Read one ``genwire.config`` record: the policy, or ``None`` for a tombstone.

    Raises ``PolicyError`` for a corrupt record (not JSON, invalid, key ≠ model): the caller
    logs, counts and skips it, keeping the policy in force.
    """
    if value is None:
        return None
    if len(value) > MAX_POLICY_RECORD_BYTES:
        raise PolicyError(f"record of {len(value)} bytes is larger than {MAX_POLICY_RECORD_BYTES}")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"not JSON: {exc}") from None
    try:
        policy = ModelPolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_explain(exc)) from None
    if key is not None and key != policy.key():
        raise PolicyError(f"key {key[:80]!r} is not the model name {policy.model!r}")
    return policy


def _bucket(value: str, model: str) -> int:
    digest = hashlib.blake2b(f"{model}\0{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % WEIGHT_TOTAL


def sticky_value(policy: ModelPolicy, request_id: str, metadata: dict[str, str]) -> str:
    """The value whose hash picks the arm (the request id when the sticky field is absent)."""
    if policy.sticky == "user":
        return metadata.get("user") or request_id
    if policy.sticky.startswith("metadata:"):
        return metadata.get(policy.sticky.removeprefix("metadata:")) or request_id
    return request_id


def resolve(
    policy: ModelPolicy | None,
    request_id: str,
    metadata: dict[str, str] | None = None,
    pinned: str = "",
) -> tuple[str, str]:
    """The (version, arm) that serves a request; deterministic for the same inputs.

    - ``pinned`` (what the caller named): an alias → its version (arm = the alias); a version
      number → that version (arm ``pinned``). An unknown alias raises ``PolicyError``.
    - No policy: ``("", "default")`` — Triton's default version of the model.
    - Weights: the bucket of the sticky value's hash picks a version (arm: its alias or
      ``v<version>``). No weights: the champion; without one ``("", "default")``.
    """
    if pinned:
        if VERSION_RE.match(pinned):
            return pinned, PINNED_ARM
        if policy is not None and pinned in policy.aliases:
            return policy.aliases[pinned], pinned
        model = policy.model if policy is not None else "this model"
        raise PolicyError(f"{model} has no alias {pinned!r}")
    if policy is None:
        return "", DEFAULT_ARM
    live = [(v, w) for v, w in policy.weights.items() if w > 0]
    if live:
        live.sort(key=lambda vw: _version_key(vw[0]))
        bucket = _bucket(sticky_value(policy, request_id, metadata or {}), policy.model)
        for version, weight in live:
            if bucket < weight:
                return version, policy.arm_of(version)
            bucket -= weight
        version = live[-1][0]  # unreachable: the weights add up to 100
        return version, policy.arm_of(version)
    if policy.champion:
        return policy.champion, CHAMPION
    return "", DEFAULT_ARM


def numbered_versions(listed: Iterable[object]) -> list[str]:
    """Version names as Triton lists them, numbered ones only, in ascending order."""
    return sorted((str(v) for v in listed if str(v).isdigit()), key=int)


def served_instead(policy: ModelPolicy, version: str, served: Sequence[str] | None) -> str:
    """The version that serves a request ``policy`` routed to ``version`` while Triton serves
    ``served`` (ascending; None or empty: it did not say, or serves nothing of the model now):
    ``version`` itself when it is served, when Triton said nothing, or when the champion is
    served (a canary that is not served fails like any broken canary); else the newest served
    version the policy names, else the newest served (preprocess's ``route_fallback``)."""
    if not served or version in served:
        return version
    if policy.champion and policy.champion in served:
        return version
    named = [v for v in served if v in policy.versions()]
    return (named or list(served))[-1]


def shadow_of(policy: ModelPolicy | None, served_version: str) -> str:
    """The version that gets a shadow copy of a request served by ``served_version``
    (``""``: none — no shadow, or the shadow is the version that serves it anyway)."""
    if policy is None or not policy.shadow or policy.shadow == served_version:
        return ""
    return policy.shadow


def rollback(
    policy: ModelPolicy,
    reason: str,
    alert: dict[str, Any] | None = None,
    *,
    by: str = "monitor",
) -> ModelPolicy:
    """Undo the last traffic change: a new revision of ``policy``.

    - Canaries take traffic (weights on versions other than the champion): all traffic goes
      back to the champion — weights ``{champion: 100}``, no shadow; the canaries' aliases are
      kept, so a version can be tried again later. This is the monitor's automatic rollback.
    - Otherwise, after a promotion (alias ``previous``): ``previous`` becomes the champion
      again and takes all traffic.

    Raises ``PolicyError`` when there is nothing to return to.
    """
    champion = policy.champion
    if not champion:
        raise PolicyError(f"{policy.model} has no {CHAMPION!r} alias: nothing to roll back to")
    if policy.canaries() or policy.shadow:
        return policy.changed(
            by=by, reason=reason, weights={champion: WEIGHT_TOTAL}, shadow="", alert=alert
        )
    previous = policy.aliases.get(PREVIOUS, "")
    if previous and previous != champion:
        aliases = dict(policy.aliases)
        aliases[CHAMPION], aliases[PREVIOUS] = previous, champion
        return policy.changed(
            by=by, reason=reason, aliases=aliases, weights={previous: WEIGHT_TOTAL}, alert=alert
        )
    raise PolicyError(
        f"{policy.model}: all traffic is on the champion (version {champion}) and no "
        f"{PREVIOUS!r} version is recorded: nothing to roll back"
    )


def promote(policy: ModelPolicy, version: str, *, by: str, reason: str = "") -> ModelPolicy:
    """``version`` becomes the champion and takes all traffic; the former champion is kept
    as alias ``previous`` (what ``genwire model rollback`` returns to after a promotion)."""
    if not VERSION_RE.match(version):
        raise PolicyError(f"{version!r} is not a version number")
    aliases = {a: v for a, v in policy.aliases.items() if v != version or a == CHAMPION}
    old = policy.champion
    if old and old != version:
        aliases[PREVIOUS] = old
    aliases[CHAMPION] = version
    return policy.changed(
        by=by,
        reason=reason or f"promote {version}",
        aliases=aliases,
        weights={version: WEIGHT_TOTAL},
        shadow="" if policy.shadow == version else policy.shadow,
    )


def parse_weights(text: str) -> dict[str, int]:
    """``"1=90,2=10"`` → ``{"1": 90, "2": 10}``; raises ``PolicyError`` when malformed."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        version, sep, weight = part.strip().partition("=")
        version, weight = version.strip(), weight.strip()
        if not sep or not VERSION_RE.match(version) or not weight.lstrip("-").isdigit():
            raise PolicyError(f"weights are VERSION=WEIGHT,... (e.g. 1=90,2=10), not {part!r}")
        if version in weights:
            raise PolicyError(f"version {version} is named twice in the weights")
        weights[version] = int(weight)
    return weights
