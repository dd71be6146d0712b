"""Serving model versions: load/unload in Triton, the policy on ``genwire.config``, blue-green.

Which versions Triton serves is the ``version_policy`` of the model's ``config.pbtxt``
(``specific { versions: [...] }`` once a version was loaded with ``genwire model load``);
the model is then (re)loaded through Triton's repository API, which swaps without a gap:
versions already served keep serving, a version that fails to load (or to answer ``load``'s
probe) leaves the served ones as they were (and the file is put back). Every change of the file
holds the model folder's lock (the build's), from reading what is served to writing it. Which
version takes which request is the model's policy (``genwire.policy``), published on
``genwire.config`` and followed live by every stage.

``blue_green`` (``genwire model promote``): load the new version, check it answers, publish the
policy that sends it all traffic, wait until every stage follows it, wait until every request
already prepared for the old version has been generated (the inference group's committed
offsets on ``genwire.prepared`` pass the ends seen after the switch), then unload the old one
unless the policy in force, read again, routes to it (a rollback meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx

from genwire import triton_admin
from genwire.policy import (
    CHAMPION,
    WEIGHT_TOTAL,
    ModelPolicy,
    PolicyError,
    promote,
    rollback,
)
from genwire.topics import Topic
from genwire_model.repository import ModelRepository, model_lock

CONFIG = "config.pbtxt"
_POLICY_RE = re.compile(r"^version_policy\s*:?\s*\{.*\}\s*$", re.MULTILINE)
INFERENCE_GROUP = "genwire-inference"
"""The inference stage's consumer group (its ``service_name``)."""
INFERENCE_RETRY_GROUP = f"{INFERENCE_GROUP}-retry"
"""Inference's replayer of parked records (``ServiceRuntime``: ``<service_name>-retry``)."""

Progress = Callable[[str], None]
T = TypeVar("T")

LOAD_PIN_BY = "cli:load"
"""``updated_by`` of the policy ``load`` publishes first on a model without one (the pin)."""
UP_PIN_BY = "genwire-up"
"""``updated_by`` of that pin once the default model's bring-up moved it to a new build."""


def is_load_pin(policy: ModelPolicy) -> bool:
    """``policy`` is still the automatic pin ``load`` made: it names its champion and nothing
    else (no other alias, weight, shadow), and nobody changed it since."""
    champion = policy.champion
    return (
        policy.updated_by in (LOAD_PIN_BY, UP_PIN_BY)
        and bool(champion)
        and policy.versions() == {champion}
        and set(policy.aliases) == {CHAMPION}
        and not policy.shadow
    )


class LifecycleError(RuntimeError):
    """A lifecycle command cannot do what was asked; nothing changed (the message says why)."""


def kafka_error(bootstrap_servers: str, what: str, exc: Exception) -> LifecycleError:
    """The one-line error for a broker that failed ``what`` (aiokafka's errors are
    RuntimeErrors: uncaught, they ended a command with a traceback)."""
    from aiokafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        NodeNotReadyError,
        RequestTimedOutError,
    )

    gone = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
    state = "is unreachable" if isinstance(exc, (*gone, OSError)) else "failed"
    kind = type(exc).__name__
    text = str(exc) or kind
    said = text if text.startswith(kind) else f"{kind}: {text}"
    return LifecycleError(f"Kafka at {bootstrap_servers} {state} ({what}): {said}")


def _quiet(_: str) -> None:
    return None


# -- Triton -----------------------------------------------------------------------------------


class TritonControl:
    """Triton's repository API and readiness over HTTP."""

    def __init__(self, http_url: str, timeout_s: float = 600.0) -> None:
        base = http_url if "://" in http_url else f"http://{http_url}"
        self.base = base
        self._client = httpx.Client(
            base_url=base,
            timeout=timeout_s,
            trust_env=False,
            headers=triton_admin.headers(),  # a secure stack's Triton restricts the repository
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise LifecycleError(f"Triton at {self.base} does not answer: {exc}") from None

    def index(self) -> list[dict[str, Any]]:
        """The repository index: every model (and version) Triton knows, with its state."""
        response = self._call("POST", "/v2/repository/index", json={})
        if response.status_code != 200:
            raise LifecycleError(f"Triton's repository index: HTTP {response.status_code}")
        data = response.json()
        return data if isinstance(data, list) else []

    def states(self, name: str) -> dict[str, str]:
        """Version → state (READY, LOADING, UNAVAILABLE, ...) of the versions Triton lists."""
        return {
            str(m["version"]): str(m.get("state", ""))
            for m in self.index()
            if m.get("name") == name and m.get("version")
        }

    def served(self, name: str) -> list[str]:
        """The versions of ``name`` Triton serves now (READY), ascending."""
        ready = [v for v, s in self.states(name).items() if s == "READY"]
        return sorted(ready, key=int)

    def load(self, name: str) -> None:
        """(Re)load ``name`` from its config.pbtxt; raises ``LifecycleError`` with Triton's
        reason when it fails (the versions served before stay served)."""
        response = self._call("POST", f"/v2/repository/models/{quote(name, safe='')}/load")
        if response.status_code != 200:
            raise LifecycleError(
                f"Triton could not load {name}: {_error_text(response)} (see Triton's log)"
            )

    def unload(self, name: str) -> None:
        """Unload every version of ``name`` (in-flight requests finish first)."""
        response = self._call("POST", f"/v2/repository/models/{quote(name, safe='')}/unload")
        if response.status_code != 200:
            raise LifecycleError(f"Triton could not unload {name}: {_error_text(response)}")

    def ready(self, name: str, version: str) -> bool:
        """Whether ``name`` version ``version`` is ready."""
        response = self._call("GET", f"/v2/models/{quote(name, safe='')}/versions/{version}/ready")
        return response.status_code == 200

    def inference_count(self, name: str, version: str) -> int | None:
        """Requests ``name`` version ``version`` has executed (Triton's statistics)."""
        response = self._call("GET", f"/v2/models/{quote(name, safe='')}/versions/{version}/stats")
        if response.status_code != 200:
            return None
        for stat in response.json().get("model_stats", []):
            return int(stat.get("inference_count", 0))
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)[:500]
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"


# -- which versions Triton serves (config.pbtxt) ----------------------------------------------


LATEST_POLICY = "version_policy: { latest: { num_versions: 1 } }"
"""What ``genwire model build`` writes: the newest version serves."""


def version_policy_line(versions: Iterable[str]) -> str:
    """The ``version_policy`` of a model serving exactly ``versions``."""
    listed = ", ".join(sorted({str(v) for v in versions}, key=int))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def configured_versions(config_text: str) -> list[str] | None:
    """The versions a ``specific`` version policy names (None: another policy)."""
    match = re.search(r"specific\s*:?\s*\{\s*versions\s*:\s*\[([^\]]*)\]", config_text)
    if match is None:
        return None
    return [v.strip() for v in match.group(1).split(",") if v.strip()]


def with_versions(config_text: str, versions: Iterable[str]) -> str:
    """``config_text`` with its version policy replaced by one serving ``versions``."""
    line = version_policy_line(versions)
    if _POLICY_RE.search(config_text):
        return _POLICY_RE.sub(line, config_text, count=1)
    return config_text.rstrip("\n") + "\n" + line + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclasses.dataclass
class Lifecycle:
    """The model lifecycle against one repository, one Triton and one broker."""

    repository: Path
    triton: TritonControl
    bootstrap_servers: str
    triton_grpc_url: str = "127.0.0.1:8001"
    progress: Progress = _quiet
    kafka_options: dict[str, Any] | None = None
    _held: dict[str, int] = dataclasses.field(default_factory=dict, init=False, repr=False)

    # -- the model folder's lock ----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Hold ``name``'s folder lock (the build's, ``repository.model_lock``) around a read
        of what is served and the ``config.pbtxt`` written from it: two commands at once would
        each write their own view and drop the other's version. Re-entrant within this object
        (the file lock itself is not)."""
        if self._held.get(name):
            self._held[name] += 1
            try:
                yield
            finally:
                self._held[name] -= 1
            return
        model_dir = Path(self.repository) / name
        if not model_dir.is_dir():
            self.check_versions(name, [])  # raises: no such model
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(model_lock(model_dir))
            except OSError as exc:
                raise LifecycleError(f"{model_dir}: its lock cannot be taken: {exc}") from None
            self._held[name] = 1
            try:
                yield
            finally:
                self._held[name] = 0

    def _kafka(self, what: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run one broker exchange; the broker failing is a ``LifecycleError`` naming it."""
        from aiokafka.errors import KafkaError

        try:
            return asyncio.run(call())
        except (KafkaError, OSError) as exc:
            raise kafka_error(self.bootstrap_servers, what, exc) from None

    # -- repository ---------------------------------------------------------------------------

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name`` in the repository (ascending)."""
        return [str(v) for v in ModelRepository(self.repository).versions(name)]

    def check_versions(self, name: str, versions: Iterable[str]) -> None:
        """``LifecycleError`` unless every one of ``versions`` is in the repository."""
        built = self.versions(name)
        if not built:
            raise LifecycleError(
                f"no model {name!r} in {self.repository}: build one with "
                f"`genwire model build --name {name} --checkpoint DIR`"
            )
        missing = sorted({str(v) for v in versions} - set(built), key=_num)
        if missing:
            raise LifecycleError(
                f"{name} has no version {', '.join(missing)} in the repository "
                f"(built: {', '.join(built)})"
            )

    # -- Triton -------------------------------------------------------------------------------

    def serve(self, name: str, versions: Iterable[str]) -> list[str]:
        """Make Triton serve exactly ``versions`` of ``name`` (empty: unload the model).

        Raises ``LifecycleError`` (config.pbtxt put back, served versions unchanged) when a
        version fails to load.
        """
        wanted = sorted({str(v) for v in versions}, key=int)
        config = self.repository / name / CONFIG
        if not config.is_file():
            raise LifecycleError(f"{name} has no {CONFIG} in {self.repository}")
        if not wanted:
            self.progress(f"unloading {name}")
            self.triton.unload(name)
            # Back to the build's policy: nothing for `restore` to bring back after a restart.
            text = config.read_text(encoding="utf-8")
            _write_atomic(config, _POLICY_RE.sub(LATEST_POLICY, text, count=1))
            return []
        self.check_versions(name, wanted)
        before = config.read_text(encoding="utf-8")
        _write_atomic(config, with_versions(before, wanted))
        self.progress(f"loading {name} versions {', '.join(wanted)} into Triton")
        try:
            self.triton.load(name)
            not_ready = [v for v in wanted if not self.triton.ready(name, v)]
            if not_ready:
                states = self.triton.states(name)
                raise LifecycleError(
                    f"{name} version {', '.join(not_ready)} did not become ready "
                    f"(state: {', '.join(states.get(v, '?') for v in not_ready)}); see Triton's log"
                )
        except BaseException:  # Ctrl-C or SIGTERM too: no config left naming an unchecked version
            _write_atomic(config, before)
            with contextlib.suppress(LifecycleError):
                served = self.triton.served(name)
                if served:  # put Triton back on what the file says again
                    self.triton.load(name)
            raise
        return wanted

    def load(self, name: str, version: str | None = None) -> str:
        """Serve ``version`` (default: the newest built) beside what is served; returns it.
        A version that loads but does not answer is unloaded again (``LifecycleError``)."""
        target = version or (self.versions(name) or [""])[-1]
        if not target:
            self.check_versions(name, [])
        self.check_versions(name, [target])
        with self.locked(name):
            served = self.triton.served(name)
            if target in served:
                self._check_served_version(name, target, served)
                return target
            if served and self.policy(name) is None:
                # Without a policy the newest served version takes the traffic: pin the one
                # serving now as champion first, so loading another shifts nothing.
                pinned = self._initial(name).changed(
                    by=LOAD_PIN_BY, reason=f"pin version {served[-1]} before loading {target}"
                )
                self.publish(pinned, -1)
            before = (self.repository / name / CONFIG).read_text(encoding="utf-8")
            loaded = False  # serve puts the config back itself when it fails
            try:
                self.serve(name, [*served, target])
                loaded = True
                self.probe(name, target)
            except LifecycleError as exc:
                if loaded:
                    self._put_back(name, before, served, target, exc)
                raise
            except BaseException:  # Ctrl-C, SIGTERM: nothing left served unchecked
                if loaded:
                    with contextlib.suppress(LifecycleError):
                        self._restore_served(name, before, served)
                raise
        return target

    def _check_served_version(self, name: str, target: str, served: list[str]) -> None:
        """``load`` of a version Triton serves already: probed unless traffic goes to it (a
        load interrupted before its probe left it served unchecked); one that does not answer
        is unloaded again (``LifecycleError``)."""
        policy = self.policy(name)
        # Without a policy the newest served version takes the traffic.
        routed = _routed(policy) if policy is not None else {served[-1]}
        if target in routed:
            self.progress(f"{name} version {target} is already served")
            return
        if policy is not None and target == policy.champion:
            # The champion at weight 0: no traffic now, but the monitor's rollback sends it
            # all; probed, and kept loaded whatever the answer (as unload keeps it).
            self.progress(f"{name} version {target} (champion, weight 0) is served: probing it")
            try:
                self.probe(name, target)
            except LifecycleError as exc:
                raise LifecycleError(
                    f"{exc}; version {target} stays loaded: it is {name}'s champion (a "
                    f"rollback sends traffic to it); `genwire model unload {name}:{target} "
                    f"--force` unloads it"
                ) from None
            return
        self.progress(f"{name} version {target} is served but takes no traffic: probing it")
        text = (self.repository / name / CONFIG).read_text(encoding="utf-8")
        others = [v for v in served if v != target]
        # What the config said before that load: the others, or (none) the build's policy.
        before = with_versions(text, others) if others else _POLICY_RE.sub(LATEST_POLICY, text, 1)
        try:
            self.probe(name, target)
        except LifecycleError as exc:
            self._put_back(name, before, others, target, exc)

    def _put_back(
        self, name: str, before: str, served: list[str], target: str, failure: LifecycleError
    ) -> NoReturn:
        """After ``target`` failed its probe: Triton serves ``served`` again and config.pbtxt
        is ``before`` (or names ``served`` where ``before`` would serve something else); raises
        ``failure`` saying so."""
        try:
            self._restore_served(name, before, served)
        except LifecycleError as exc:
            raise LifecycleError(
                f"{failure}; putting back what {name} served ({', '.join(served) or 'nothing'}) "
                f"failed too: {exc}"
            ) from None
        was = f"versions {', '.join(served)}" if served else "nothing"
        raise LifecycleError(
            f"{failure}; version {target} was unloaded again: {name} serves {was}, as before"
        ) from None

    def _restore_served(self, name: str, before: str, served: list[str]) -> None:
        """Triton serves ``served`` again and config.pbtxt is ``before`` (or names ``served``
        where ``before`` would serve something else)."""
        config = self.repository / name / CONFIG
        if served:
            same = self._served_by(before, name) == served
            _write_atomic(config, before if same else with_versions(before, served))
            self.triton.load(name)
        else:
            _write_atomic(config, before)
            self.triton.unload(name)

    def _served_by(self, config_text: str, name: str) -> list[str]:
        """What Triton serves of ``name`` under ``config_text``: its ``specific`` versions,
        else (the build's ``latest``) the newest built."""
        listed = configured_versions(config_text)
        if listed is None:
            return self.versions(name)[-1:]
        return sorted(set(listed), key=_num)

    def unload(
        self, name: str, version: str | None = None, *, policy: ModelPolicy | None = None
    ) -> list[str]:
        """Stop serving ``version`` (default: every version); refused while ``policy`` routes
        to it. Returns the versions still served."""
        with self.locked(name):
            served = self.triton.served(name)
            going = [version] if version else served
            if policy is not None:
                # What takes traffic (or a shadow copy), and the champion at any weight (a
                # rollback sends all traffic to it): another alias alone (the canary the
                # monitor rolled back, ``previous``) keeps nothing loaded.
                busy = sorted(set(going) & _kept_loaded(policy), key=_num)
                if busy:
                    raise LifecycleError(
                        f"{name} version {', '.join(busy)} is named by its policy "
                        f"(revision {policy.revision}): route traffic away first "
                        f"(`genwire model route/promote`), or pass --force"
                    )
            if version is not None and version not in served:
                raise LifecycleError(f"{name} version {version} is not served (served: {served})")
            keep = [v for v in served if v not in going]
            return self.serve(name, keep)

    def restore(self, skip: Iterable[str] = ()) -> dict[str, list[str]]:
        """After a Triton restart (explicit mode: only the default model, which the restart
        loads, until asked): load every model whose config.pbtxt names ``specific`` versions
        (those ``load`` served), except ``skip``; returns what was loaded. A model that fails
        is reported and skipped."""
        loaded: dict[str, list[str]] = {}
        for config in sorted(Path(self.repository).glob(f"*/{CONFIG}")):
            name = config.parent.name
            versions = configured_versions(config.read_text(encoding="utf-8"))
            if name in set(skip) or not versions:
                continue
            try:
                if self.triton.served(name) != sorted(versions, key=_num):
                    self.progress(f"restoring {name} versions {', '.join(versions)}")
                    self.triton.load(name)
                loaded[name] = self.triton.served(name)
            except LifecycleError as exc:
                self.progress(f"could not restore {name}: {exc}")
        return loaded

    def probe(self, name: str, version: str, timeout_s: float = 60.0) -> None:
        """One short greedy generation on ``name`` version ``version`` straight to Triton:
        ``LifecycleError`` unless it answers with tokens."""
        from genwire_model.repository import ModelRepository as Repo

        try:
            manifest = Repo(self.repository).get(name, int(version)).manifest
        except (LookupError, ValueError) as exc:
            raise LifecycleError(str(exc)) from None
        vocab = int(manifest.get("shape", {}).get("vocab_size", 2) or 2)
        prompt = [1 % vocab, 2 % vocab, 3 % vocab]
        try:
            tokens = asyncio.run(_probe(self.triton_grpc_url, name, version, prompt, timeout_s))
        except Exception as exc:
            raise LifecycleError(f"{name} version {version} does not answer: {exc!r}") from None
        if tokens < 1:
            raise LifecycleError(f"{name} version {version} answered with no tokens")
        self.progress(f"{name} version {version} answers ({tokens} tokens)")

    # -- policy -------------------------------------------------------------------------------

    def policies(self) -> dict[str, ModelPolicy]:
        """Every model's policy in force (``genwire.config`` read to its end)."""
        from genwire.policyfeed import read_policies

        try:
            store = self._kafka(
                f"reading {Topic.CONFIG}",
                lambda: read_policies(self.bootstrap_servers, client_kwargs=self.kafka_options),
            )
        except PolicyError as exc:
            raise LifecycleError(f"{Topic.CONFIG}: {exc}") from None
        for model, why in store.corrupt_latest.items():
            self.progress(f"{Topic.CONFIG}: the latest record of {model} is corrupt ({why})")
        return dict(store.policies)

    def policy(self, name: str) -> ModelPolicy | None:
        """``name``'s policy in force (None: it has none)."""
        return self.policies().get(name)

    def publish(self, policy: ModelPolicy, expect_revision: int | None) -> ModelPolicy:
        """Publish a checked policy: every version it names is built and served (checked and
        published under the model folder's lock: no unload slips in between)."""
        self.check_versions(policy.model, policy.versions())
        with self.locked(policy.model):
            self._check_served(policy)
            self._send(policy, expect_revision)
        self.progress(
            f"{policy.model}: policy revision {policy.revision} published on {Topic.CONFIG}"
        )
        return policy

    def _check_served(self, policy: ModelPolicy) -> None:
        """``LifecycleError`` unless every version ``policy`` sends requests to is served."""
        served = set(self.triton.served(policy.model))
        live = {v for v, w in policy.weights.items() if w > 0} | (
            {policy.shadow} if policy.shadow else set()
        )
        if not policy.weights and policy.champion:
            live.add(policy.champion)
        missing = sorted(live - served, key=_num)
        if missing:
            raise LifecycleError(
                f"{policy.model} version {', '.join(missing)} would take traffic but is not "
                f"served: `genwire model load {policy.model}:{missing[0]}` first"
            )

    def _send(self, policy: ModelPolicy, expect_revision: int | None) -> None:
        from genwire.policyfeed import publish_policy

        try:
            self._kafka(
                f"publishing {policy.model}'s policy on {Topic.CONFIG}",
                lambda: publish_policy(
                    self.bootstrap_servers,
                    policy,
                    expect_revision=expect_revision,
                    client_kwargs=self.kafka_options,
                ),
            )
        except PolicyError as exc:
            raise LifecycleError(str(exc)) from None

    def route(
        self,
        name: str,
        *,
        weights: dict[str, int] | None = None,
        sticky: str | None = None,
        shadow: str | None = None,
        aliases: dict[str, str] | None = None,
        by: str,
        reason: str = "",
    ) -> ModelPolicy:
        """Change ``name``'s routing (what is None stays as it was)."""
        current = self.policy(name)
        base = current or self._initial(name)
        fields: dict[str, Any] = {}
        if weights is not None:
            fields["weights"] = weights
        if sticky is not None:
            fields["sticky"] = sticky
        if shadow is not None:
            fields["shadow"] = shadow
        if aliases is not None:
            merged = {**base.aliases, **{a: v for a, v in aliases.items() if v}}
            fields["aliases"] = {a: v for a, v in merged.items() if aliases.get(a, v)}
        try:
            new = base.changed(by=by, reason=reason or "route", **fields)
        except PolicyError as exc:
            raise LifecycleError(f"{name}: {exc}") from None
        return self.publish(new, current.revision if current else -1)

    def _initial(self, name: str) -> ModelPolicy:
        """The policy a model starts from: its served version (else newest) as champion."""
        served = self.triton.served(name)
        versions = served or self.versions(name)
        if not versions:
            self.check_versions(name, [])
        champion = versions[-1]
        return ModelPolicy(
            model=name,
            aliases={CHAMPION: champion},
            weights={champion: WEIGHT_TOTAL},
            revision=-1,
        )

    # -- promotion and rollback ----------------------------------------------------------------

    def promote(
        self,
        name: str,
        version: str,
        *,
        by: str,
        unload_old: bool = True,
        settle_s: float = 2.0,
        drain_timeout_s: float = 300.0,
    ) -> ModelPolicy:
        """Blue-green: ``version`` serves every request from now on, the old one finishes
        what it has and is unloaded."""
        self.check_versions(name, [version])
        self.policy(name)  # the broker answers before anything changes (read again below)
        self.load(name, version)  # loaded and answering before it takes a request
        # Read after the load: loading beside a model without a policy publishes one.
        current = self.policy(name)
        base = current or self._initial(name)
        try:
            new = promote(base, version, by=by)
        except PolicyError as exc:
            raise LifecycleError(str(exc)) from None
        self.publish(new, current.revision if current else -1)
        # What took traffic (or a shadow copy) before and takes none now: a shadow the new
        # policy keeps stays loaded.
        old = _routed(base) - _routed(new)
        self._switch_over(name, old if unload_old else set(), settle_s, drain_timeout_s)
        return new

    def rollback(
        self, name: str, *, by: str, reason: str = "", settle_s: float = 2.0
    ) -> ModelPolicy:
        """Undo the last change (``genwire.policy.rollback``); a version it returns to that is
        no longer served is loaded first."""
        current = self.policy(name)
        if current is None:
            raise LifecycleError(f"{name} has no policy on {Topic.CONFIG}: nothing to roll back")
        try:
            new = rollback(current, reason or "manual rollback", by=by)
        except PolicyError as exc:
            raise LifecycleError(str(exc)) from None
        with self.locked(name):  # what it loads stays served until it is published
            for version in sorted(new.live_versions() - set(self.triton.served(name)), key=_num):
                self.load(name, version)
            return self.publish(new, current.revision)

    def _switch_over(
        self, name: str, old: set[str], settle_s: float, drain_timeout_s: float
    ) -> None:
        # Every stage instance follows genwire.config within a poll (100 ms) and a broker round
        # trip; after settle_s nothing new is routed to the old version.
        time.sleep(settle_s)
        if not old:
            return
        listed = ", ".join(sorted(old, key=_num))
        self.progress(f"waiting for requests prepared for version {listed}")
        try:
            drained = self._kafka(
                "waiting for requests in flight",
                lambda: wait_drained(self.bootstrap_servers, drain_timeout_s, self.kafka_options),
            )
        except LifecycleError as exc:  # promoted already: only the unload is left undone
            self.progress(f"{exc}: version {listed} stays loaded")
            return
        if not drained:
            self.progress(
                f"requests still in flight after {drain_timeout_s:.0f} s: "
                f"version {listed} stays loaded"
            )
            return
        with self.locked(name):
            self._unload_old(name, old)

    def _unload_old(self, name: str, old: set[str]) -> None:
        """Unload ``old`` after the drain, except a version the policy in force routes to now:
        it is read again, since a rollback (an operator's, the monitor's) during the drain may
        send traffic back to one of them."""
        try:
            policy = self.policy(name)
        except LifecycleError as exc:
            listed = ", ".join(sorted(old, key=_num))
            self.progress(f"{exc}: version {listed} stays loaded (the policy was not read again)")
            return
        named = old & (_kept_loaded(policy) if policy is not None else set())
        if policy is not None and named:
            self.progress(
                f"version {', '.join(sorted(named, key=_num))} stays loaded: the policy in force "
                f"(revision {policy.revision}, by {policy.updated_by or '?'}) routes to it"
            )
        served = self.triton.served(name)
        keep = [v for v in served if v not in old - named]
        if keep and keep != served:
            self.serve(name, keep)
            gone = sorted(set(served) - set(keep), key=_num)
            self.progress(f"unloaded {name} version {', '.join(gone)}")


def _routed(policy: ModelPolicy) -> set[str]:
    """The versions ``policy`` sends requests to: caller traffic or a shadow copy (an alias
    alone, such as ``previous``, keeps nothing loaded: rollback loads it again)."""
    return policy.live_versions() | ({policy.shadow} if policy.shadow else set())


def _kept_loaded(policy: ModelPolicy) -> set[str]:
    """The versions ``policy`` keeps loaded: those it sends requests to, and its champion
    whatever its weight (the monitor's automatic rollback sends every request to it)."""
    return _routed(policy) | ({policy.champion} if policy.champion else set())


def _num(version: str) -> int:
    return int(version) if version.isdigit() else 1 << 62


async def _probe(url: str, name: str, version: str, prompt: list[int], timeout_s: float) -> int:
    from tritonclient.grpc.aio import InferenceServerClient

    from genwire.triton_io import Output, infer_inputs
    from genwire_model.client import end_call

    client = InferenceServerClient(url)
    done = asyncio.Event()
    inputs = infer_inputs(
        prompt, max_tokens=2, temperature=0.0, top_p=1.0, top_k=0, seed=0, stream=False
    )

    async def requests() -> Any:
        yield {"model_name": name, "model_version": version, "inputs": inputs}
        await done.wait()

    tokens = 0
    ended = False  # the version sent its last response: the call must end by itself
    responses = client.stream_infer(requests())
    try:
        async with asyncio.timeout(timeout_s):  # the cleanup below is outside it
            async for result, error in responses:
                if error is not None:
                    ended = True
                    raise RuntimeError(str(error))
                ids = result.as_numpy(Output.TOKEN_IDS)
                tokens += 0 if ids is None else int(ids.size)
                finished = result.as_numpy(Output.FINISHED)
                if finished is not None and bool(finished.reshape(-1)[0]):
                    ended = True
                    break
    finally:
        done.set()
        # Closing the channel on an answered, unfinished call cancels it, and Triton then
        # pins the probed version (it would never unload): see genwire_model.client.end_call.
        await end_call(responses, cancel=not ended)
        await client.close()
    return tokens


async def wait_drained(
    bootstrap_servers: str,
    timeout_s: float,
    kafka_options: dict[str, Any] | None = None,
    *,
    group: str = INFERENCE_GROUP,
    topic: str = Topic.PREPARED,
    retry_group: str = INFERENCE_RETRY_GROUP,
    retry_topic: str = Topic.RETRY,
) -> bool:
    """Wait until every request prepared so far has been generated (its outputs
    acknowledged); False on timeout.

    A round waits until ``retry_group`` (inference's replayer) has committed past every record
    on ``retry_topic`` now — records inference parked during an outage are replayed onto
    ``topic`` when due — then until ``group`` has committed past every record on ``topic``
    now; rounds repeat until one finds nothing newly parked. A partition a group never
    committed on counts from its first record (the group reads from the earliest offset).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from genwire.kafka.security import client_options

    options = client_options() if kafka_options is None else kafka_options
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, **options)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **options)
    await consumer.start()
    await admin.start()
    deadline = time.monotonic() + timeout_s

    async def partitions(name: str) -> list[TopicPartition]:
        # A consumer's own metadata only holds subscribed topics: ask for every topic's.
        cluster = await consumer._client.fetch_all_metadata()
        return [TopicPartition(name, p) for p in sorted(cluster.partitions_for_topic(name) or ())]

    async def caught_up(
        group_id: str, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int] | None:
        """The end offsets of ``tps`` now, once ``group_id`` committed past them (None: the
        deadline passed first)."""
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        while True:
            committed = await admin.list_consumer_group_offsets(group_id, partitions=tps)
            behind = [
                tp
                for tp, end in ends.items()
                if max(_committed(committed.get(tp)), starts[tp]) < end
            ]
            if not behind:
                return ends
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.2)

    try:
        prepared, parked = await partitions(topic), await partitions(retry_topic)
        while True:
            replayed = await caught_up(retry_group, parked)
            if replayed is None or await caught_up(group, prepared) is None:
                return False
            if await consumer.end_offsets(parked) == replayed:
                return True  # nothing was parked meanwhile
    finally:
        await admin.close()
        await consumer.stop()


def _committed(found: Any) -> int:
    """A committed offset (-1: none)."""
    return int(found.offset) if found is not None else -1


def runtime_status(version_dir: Path) -> dict[str, Any]:
    """What the runner recorded at its last load: backend, TensorRT fallbacks (or {})."""
    from genwire_model.runtime.runners import STATUS_FILE

    try:
        status: dict[str, Any] = json.loads((version_dir / STATUS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return status


def describe(repository: Path, triton: TritonControl, name: str) -> list[dict[str, Any]]:
    """One row per version of ``name``: repository facts and Triton's state."""
    repo = ModelRepository(repository)
    try:
        states = triton.states(name)
    except LifecycleError:
        states = {}
    rows = []
    for number in repo.versions(name):
        found = repo.get(name, number)
        manifest = found.manifest
        validation = manifest.get("validation", {})
        quant = manifest.get("quantization") or {}
        engine = quant.get("tensorrt") or {}
        runtime = runtime_status(found.path)  # written by the runner at load (H-gpu)
        rows.append(
            {
                "name": name,
                "version": str(number),
                "state": states.get(str(number), "") or "not loaded",
                "created": manifest.get("created"),
                "source": manifest.get("source", {}).get("checkpoint"),
                "context_length": manifest.get("context_length"),
                "tensorrt": manifest.get("build", {}).get("tensorrt", {}).get("built"),
                "backend": runtime.get("backend"),
                "fallback": (runtime.get("fallbacks") or [{}])[-1].get("reason"),
                "max_abs_logit_diff": validation.get("max_abs_logit_diff"),
                "heldout_loss": validation.get("heldout_loss")
                or _quantized_loss(quant, runtime.get("backend")),
                # "int8/trt-int8": a TensorRT engine of the quantized model too (quantize_trt)
                "quantized": quant.get("mode")
                and "/trt-".join(filter(None, [quant["mode"], engine.get("mode")])),
            }
        )
    return rows


def _quantized_loss(quant: dict[str, Any], backend: str | None) -> float | None:
    """Held-out loss of what serves a quantized version: the TensorRT engine's when it is
    serving (or nothing has loaded it yet), else ONNX Runtime's graph's."""
    engine = quant.get("tensorrt") or {}
    if engine and backend in (None, "tensorrt"):
        loss = (engine.get("heldout_loss") or {}).get(engine.get("mode", ""))
        if loss is not None:
            return float(loss)
    value = (quant.get("heldout_loss") or {}).get(quant.get("mode", ""))
    return None if value is None else float(value)


def to_json(rows: list[dict[str, Any]]) -> str:
    """JSON lines (for ``--json``)."""
    return "\n".join(json.dumps(r) for r in rows)
