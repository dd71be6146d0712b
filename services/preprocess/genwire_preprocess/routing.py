"""Which version serves a request: resolved once here, written into the prepared event.

The model's policy (``genwire.config``, followed live by ``genwire.policyfeed``) decides:
a caller's pin (``model_version``, or ``model: NAME:VERSION`` / ``NAME:ALIAS``), else the
policy's weights (sticky by a request field), else its champion, else the version Triton
serves now. Everything downstream — inference, its retries, a redelivery — uses that version,
so a request never changes version half-way. The shadow version (if any) gets a copy.
The first route of a request id is stored beside its idempotency claim (``Route.encode``,
``genwire:route:<id>``): a redelivery or a repeat reuses it even after the policy changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from genwire.errors import PermanentError
from genwire.policy import (
    DEFAULT_ARM,
    FALLBACK_ARM,
    ModelPolicy,
    PolicyError,
    resolve,
    served_instead,
    shadow_of,
)
from genwire.request import ErrorCode
from genwire.tokenization import AssetStore
from genwire_preprocess.stores import ServedVersions

log = logging.getLogger(__name__)
PolicyLookup = Callable[[str], ModelPolicy | None]
FallbackHook = Callable[[str, str, str], None]
"""Called with (model, the version the policy named, the version that serves instead)."""
FALLBACK_LOG_S = 60.0
"""One warning per model and version the policy names but Triton does not serve, per this."""


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    model: str
    version: str
    """The version to serve it ("" only when nothing can tell: the repository's newest)."""
    arm: str
    """The policy arm (an alias, ``v<N>``, ``pinned``, ``default``)."""
    shadow: str = ""
    """A version that also gets a copy ("" : none)."""
    revision: int = -1
    """The policy revision that decided (-1: no policy)."""

    def encode(self) -> str:
        """The route as stored beside the request's claim (``genwire:route:<id>``)."""
        return json.dumps(
            {
                "model": self.model,
                "version": self.version,
                "arm": self.arm,
                "shadow": self.shadow,
                "revision": self.revision,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> Route | None:
        """A stored route (None: not one: it is then resolved again, and logged)."""
        try:
            data = json.loads(text)
            route = cls(
                model=str(data["model"]),
                version=str(data["version"]),
                arm=str(data["arm"]),
                shadow=str(data.get("shadow", "")),
                revision=int(data.get("revision", -1)),
            )
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        return route


def split_model(model: str) -> tuple[str, str]:
    """``NAME:PIN`` → (NAME, PIN); a plain name → (name, "")."""
    name, sep, pin = model.rpartition(":")
    if sep and name and pin:
        return name, pin
    return model, ""


class Router:
    """Resolves requests against the policies in force (``policies``) and Triton."""

    def __init__(
        self,
        assets: AssetStore,
        *,
        policies: PolicyLookup | None = None,
        versions: ServedVersions | None = None,
        fallback: bool = True,
        on_fallback: FallbackHook | None = None,
    ) -> None:
        self.assets = assets
        self.policies = policies or (lambda _model: None)
        self.versions = versions
        self.fallback = fallback
        """A version the policy routes to that Triton does not serve (while it serves another
        of the model): serve the champion (else the newest served) instead, arm ``fallback``;
        False: route as the policy says (``model_not_loaded``)."""
        self.on_fallback = on_fallback
        self.fallbacks = 0
        """Requests served by another version than the policy named (it was not served)."""
        self._warned: dict[tuple[str, str], float] = {}

    async def route(
        self, model: str, request_id: str, metadata: dict[str, str], pinned: str = ""
    ) -> Route:
        """The route of one request; ``PermanentError(model_not_found)`` for an unknown
        model, version or alias."""
        name, pin = split_model(model)
        if pin and pinned and pin != pinned:
            raise PermanentError(
                f"model {model!r} names version/alias {pin!r} but model_version is {pinned!r}",
                code=ErrorCode.INVALID_REQUEST,
            )
        pin = pin or pinned
        self.assets.resolve(name)  # an unknown model is model_not_found, asked of nobody
        policy = self.policies(name)
        try:
            version, arm = resolve(policy, request_id, metadata, pin)
        except PolicyError as exc:
            raise PermanentError(str(exc), code=ErrorCode.MODEL_NOT_FOUND) from None
        if not version and self.versions is not None:
            # No policy: the version Triton serves now (pinned from here on).
            version = await self.versions.served(name) or ""
            arm = DEFAULT_ARM
        elif version and policy is not None and not pin and self.fallback:
            version, arm = await self._served_instead(policy, version, arm)
        return Route(
            model=name,
            version=version,
            arm=arm,
            shadow=shadow_of(policy, version) if version else "",
            revision=policy.revision if policy is not None else -1,
        )

    async def _served_instead(self, policy: ModelPolicy, version: str, arm: str) -> tuple[str, str]:
        """``(version, arm)``, or another served version with arm ``fallback`` when Triton
        serves versions of the model but neither ``version`` nor the champion (they were
        unloaded, or not restored, while the policy still routes to them): the newest served
        version the policy names, else the newest served. A canary that is not served while
        the champion is stays as routed (``model_not_loaded``: it fails like any broken canary,
        and the monitor's rollback returns its traffic to the champion). A caller's pin is
        never replaced; Triton serving nothing of the model (restarting) changes nothing."""
        listed = getattr(self.versions, "listed", None)
        served = await listed(policy.model) if listed is not None else None
        instead = served_instead(policy, version, served)
        if instead == version or not served:  # (a move implies `served`: says so to mypy)
            return version, arm
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback(policy.model, version, instead)
        now = time.monotonic()
        if now - self._warned.get((policy.model, version), -FALLBACK_LOG_S) >= FALLBACK_LOG_S:
            self._warned[(policy.model, version)] = now
            log.warning(
                "%s: policy revision %d routes to version %s (%s), which Triton does not serve "
                "(served: %s): served by version %s instead (arm %s); fix the policy or load "
                "the version",
                policy.model,
                policy.revision,
                version,
                arm,
                ", ".join(served),
                instead,
                FALLBACK_ARM,
            )
        return instead, FALLBACK_ARM
