"""Following ``genwire.config`` live: every stage instance holds every model's policy.

``PolicyFeed`` reads the compacted topic from its beginning with no consumer group (every
instance reads every record; nothing is left on the broker when it stops), then keeps a fetch
waiting on the broker, so a change published by ``genwire model route/promote/rollback`` or by
the monitor is in force on every instance about one broker round trip after it is written (a
waiting fetch returns at the first record; ``poll_ms`` sets how often an idle feed asks).
A corrupt record (not JSON, invalid, key ≠ model name) is logged, counted
(``genwire_policy_records_total{outcome="skipped"}``) and skipped: the policy in force stays.
A record older than the policy in force (a lower revision: history read again by a feed
rebuilt on the same store, or an out-of-date writer) is counted (``outcome="stale"``) and
skipped too: a store never goes back to an older revision of a model's policy.

The CLI side (``read_policies``, ``publish_policy``) reads the topic to its end once and
publishes a new revision, refusing when someone else changed the policy meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, fetch_wait_options
from genwire.kafka.security import client_options
from genwire.policy import ModelPolicy, PolicyError, parse
from genwire.topics import TOPIC_SPECS, Topic

if TYPE_CHECKING:
    from genwire.service import ServiceRuntime

log = logging.getLogger(__name__)


class PolicyStore:
    """The policies in force, by model name, with what each record did to them."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, log_skipped: bool = True
    ) -> None:
        self.policies: dict[str, ModelPolicy] = {}
        self.corrupt_latest: dict[str, str] = {}
        """Keys whose latest record was corrupt (superseded ones are forgotten): why."""
        self._log_skipped = log_skipped
        self.applied = 0
        self.skipped = 0
        self.stale = 0
        """Records skipped for a revision older than the one in force."""
        self.last_error = ""
        self._listeners: list[Callable[[str, ModelPolicy | None], None]] = []
        self._records: Counter | None = None
        self._revision: Gauge | None = None
        if registry is not None:
            self._records = Counter(
                "genwire_policy_records",
                "genwire.config records read, by outcome (applied; skipped: corrupt; stale: "
                "older than the revision in force)",
                ["outcome"],
                registry=registry,
            )
            self._revision = Gauge(
                "genwire_policy_revision",
                "Revision of each model's policy in force on this instance",
                ["model"],
                registry=registry,
            )

    def get(self, model: str) -> ModelPolicy | None:
        """The policy of ``model`` (None: it has none)."""
        return self.policies.get(model)

    def on_change(self, listener: Callable[[str, ModelPolicy | None], None]) -> None:
        """Call ``listener(model, policy or None)`` after each applied record."""
        self._listeners.append(listener)

    def apply(self, key: bytes | None, value: bytes | None, *, quiet: bool = False) -> bool:
        """Apply one record; False (logged and counted) when it is corrupt (``quiet``: logged
        at debug level, e.g. while reading history a later record may have replaced)."""
        try:
            if key is None:
                raise PolicyError("record without a key (the model name)")
            policy = parse(key, value)
        except PolicyError as exc:
            self.skipped += 1
            self.last_error = str(exc)
            if key is not None:
                self.corrupt_latest[key.decode("utf-8", "replace")] = str(exc)
            if self._records is not None:
                self._records.labels("skipped").inc()
            log.log(
                logging.WARNING if self._log_skipped and not quiet else logging.DEBUG,
                "skipped a corrupt genwire.config record (key %r): %s",
                key,
                exc,
            )
            return False
        model = key.decode("utf-8", "replace")
        held = self.policies.get(model)
        if policy is not None and held is not None and policy.revision < held.revision:
            self._skip_stale(policy, held, quiet=quiet)
            return False
        self.corrupt_latest.pop(model, None)
        if policy is None:
            self.policies.pop(model, None)
            if self._revision is not None:
                with contextlib.suppress(KeyError):
                    self._revision.remove(model)
        else:
            self.policies[model] = policy
            if self._revision is not None:
                self._revision.labels(model).set(policy.revision)
        self.applied += 1
        if self._records is not None:
            self._records.labels("applied").inc()
        for listener in self._listeners:
            try:
                listener(model, policy)
            except Exception:  # a listener's bug must not stop the feed
                log.exception("policy listener failed for %s", model)
        return True

    def _skip_stale(self, policy: ModelPolicy, held: ModelPolicy, *, quiet: bool) -> None:
        """Count and log a record older than the policy in force. A tombstone is never stale
        (it has no revision), so a model deleted and created again starts over."""
        self.stale += 1
        if self._records is not None:
            self._records.labels("stale").inc()
        log.log(
            logging.DEBUG if quiet else logging.WARNING,  # history read again: expected
            "skipped a stale genwire.config record of %s: revision %d is older than revision "
            "%d in force",
            policy.model,
            policy.revision,
            held.revision,
        )


class PolicyFeed:
    """A live view of ``genwire.config`` (run ``run()`` as a supervised task)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        store: PolicyStore | None = None,
        registry: CollectorRegistry | None = None,
        topic: str = Topic.CONFIG,
        poll_ms: int = FETCH_MAX_WAIT_MS,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.store = store if store is not None else PolicyStore(registry)
        self.topic = topic
        self._poll_ms = poll_ms
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            **fetch_wait_options(poll_ms),
            **(client_options() if client_kwargs is None else client_kwargs),
        )
        self._bootstrap = bootstrap_servers
        self._assigned = False
        self._looked = False  # ``start`` looked for the topic (else: still starting)
        self._targets: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()
        """Set once every record that existed at start has been read."""

    def get(self, model: str) -> ModelPolicy | None:
        """The policy of ``model`` in force here."""
        return self.store.get(model)

    def not_ready(self) -> list[str]:
        """A readiness check: why this feed is not ready (it has not caught up yet)."""
        if self.caught_up.is_set():
            return []
        if self._looked and not self._assigned:
            # Not "no policies": a topic this client may not see (ACLs) or not yet created
            # may hold a canary's routing or a rollback, and serving without it is wrong.
            return [
                f"{self.topic}: the topic does not exist or this client may not see it "
                "(ACLs), and it could not be created: the model policies are unknown (create "
                "it as `genwire up` does; looked for again every 5 s)"
            ]
        return [f"{self.topic}: not read to its end yet"]

    async def start(self) -> None:
        """Connect and assign every partition from its beginning (a missing topic is created,
        as ``genwire up`` would; if that is refused, the feed keeps trying in ``run`` and is
        not caught up meanwhile)."""
        await self._consumer.start()
        self._assigned = await self._assign(create=True)
        self._looked = True
        if not self._assigned:
            log.warning(
                "%s does not exist and could not be created: model policies unknown until it does",
                self.topic,
            )

    async def _assign(self, *, create: bool) -> bool:
        partitions = None
        for attempt in range(10):
            # (``partitions_for_topic`` reads the consumer's own metadata, which holds only
            # subscribed topics: always None here. The full fetch knows every topic.)
            cluster = await self._consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(self.topic)
            if partitions:
                break
            if attempt == 0 and create:
                with contextlib.suppress(Exception):
                    from genwire.kafka.admin import ensure_topics

                    specs = [s for s in TOPIC_SPECS if s.name == self.topic]
                    await ensure_topics(self._bootstrap, specs, timeout_s=5.0)
            await asyncio.sleep(0.2)
        if not partitions:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        # The ends first: asked after the assignment, they waited for the consumer's first
        # fetch to come back (the whole fetch wait on an empty topic).
        self._targets = await self._consumer.end_offsets(tps)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return True

    async def run(self) -> None:
        """Apply records as they come, forever."""
        while not self._assigned:
            await asyncio.sleep(5.0)
            self._assigned = await self._assign(create=False)
        await self._check_caught_up()  # an empty topic: caught up without waiting a poll
        while True:
            batches = await self._consumer.getmany(timeout_ms=self._poll_ms)
            history = not self.caught_up.is_set()
            for records in batches.values():
                for record in records:
                    self.store.apply(record.key, record.value, quiet=history)
            if history:
                await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        """Set ``caught_up`` once every partition's position reached its end at start."""
        for tp, end in self._targets.items():
            if await self._consumer.position(tp) < end:
                return
        self.caught_up.set()
        for model, why in self.store.corrupt_latest.items():
            log.warning(
                "the latest %s record of %s is corrupt (%s): its last good policy stays in force",
                self.topic,
                model,
                why,
            )

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()


async def read_policies(
    bootstrap_servers: str,
    *,
    topic: str = Topic.CONFIG,
    timeout_s: float = 10.0,
    client_kwargs: dict[str, Any] | None = None,
) -> PolicyStore:
    """Read ``genwire.config`` to its end once (for a command)."""
    # The whole history is read: a corrupt record a later one replaced is no news, so only
    # ``corrupt_latest`` (a key whose last record is corrupt) is worth telling.
    feed = PolicyFeed(
        bootstrap_servers,
        store=PolicyStore(log_skipped=False),
        topic=topic,
        client_kwargs=client_kwargs,
    )
    task: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(timeout_s):
            await feed.start()
        task = asyncio.create_task(feed.run())
        async with asyncio.timeout(timeout_s):
            await feed.caught_up.wait()
    except TimeoutError:
        why = "; ".join(feed.not_ready())
        raise PolicyError(
            f"{topic} could not be read within {timeout_s:.0f} s at {bootstrap_servers}"
            + (f" ({why})" if why else "")
        ) from None
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await feed.stop()
    return feed.store


async def publish_policy(
    bootstrap_servers: str,
    policy: ModelPolicy,
    *,
    expect_revision: int | None = None,
    topic: str = Topic.CONFIG,
    client_kwargs: dict[str, Any] | None = None,
) -> ModelPolicy:
    """Publish ``policy`` as its model's record, after checking (when ``expect_revision`` is
    given) that the policy in force still has that revision; raises ``PolicyError`` if not."""
    if expect_revision is not None:
        current = (
            await read_policies(bootstrap_servers, topic=topic, client_kwargs=client_kwargs)
        ).get(policy.model)
        found = current.revision if current is not None else -1
        if found != expect_revision:
            raise PolicyError(
                f"the policy of {policy.model} changed meanwhile (revision {found}, expected "
                f"{expect_revision}): run the command again"
            )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        **(client_options() if client_kwargs is None else client_kwargs),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, policy.value(), key=policy.key())
    finally:
        await producer.stop()
    return policy


async def delete_policy(
    bootstrap_servers: str,
    model: str,
    *,
    topic: str = Topic.CONFIG,
    client_kwargs: dict[str, Any] | None = None,
) -> None:
    """Publish a tombstone: ``model`` has no policy any more (Triton's default serves it)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        **(client_options() if client_kwargs is None else client_kwargs),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, None, key=model.encode())
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def followed(runtime: ServiceRuntime, *, wait_s: float = 10.0) -> AsyncIterator[PolicyFeed]:
    """A service's live view of ``genwire.config`` for the length of its setup: started,
    read to its end (up to ``wait_s``; a readiness check says so until it is), followed by a
    supervised task, stopped at the end. Its metrics go to the service's registry."""
    if "kafka_quiet_fetch_max_wait_ms" in runtime.settings.not_read:
        raise RuntimeError(  # the feed reads it: a service refusing it would go on its default
            f"{type(runtime.settings).__name__} refuses kafka_quiet_fetch_max_wait_ms as "
            "unread, and the policy feed reads it"
        )
    feed = PolicyFeed(
        runtime.settings.kafka_bootstrap_servers,
        registry=runtime.registry,
        poll_ms=runtime.settings.kafka_quiet_fetch_max_wait_ms,
    )
    await feed.start()
    try:
        runtime.supervise(feed.run(), "follow-policies")
        runtime.add_check(feed.not_ready)
        try:
            async with asyncio.timeout(wait_s):
                await feed.caught_up.wait()
        except TimeoutError:
            log.warning("%s not read to its end within %.0f s: going on", feed.topic, wait_s)
        yield feed
    finally:
        await feed.stop()
