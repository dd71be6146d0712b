"""The monitor's view of ``genwire.config``: one ``PolicyStore``, followed for ever.

A feed that cannot start (broker down) or fails is logged and replaced by a new one on the same
store, which reads the topic from its beginning again; the store skips every record older than
the revision it holds, so that replay never takes a policy back. ``current`` says whether the
store holds the topic as of now (the running feed has read it to its end): until then the
monitor retires no ``canary`` alert and decides no rollback, and it is not ready, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from genwire.policyfeed import PolicyStore

log = logging.getLogger(__name__)


class Feed(Protocol):
    """What the follower needs of a feed (``genwire.policyfeed.PolicyFeed``)."""

    caught_up: asyncio.Event

    def not_ready(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class PolicyFollower:
    """Runs one feed at a time into ``store`` (``run`` as a supervised task)."""

    def __init__(
        self,
        store: PolicyStore,
        topic: str,
        new_feed: Callable[[PolicyStore], Feed],
        retry_s: float = 5.0,
    ) -> None:
        self.store = store
        self.topic = topic
        self._new_feed = new_feed
        self._retry_s = retry_s
        self._feed: Feed | None = None
        self.error = ""
        """Why the last feed ended ("" : none has)."""

    @property
    def current(self) -> bool:
        """Whether the running feed has read the topic to its end: the store holds the newest
        policies, not a partial read at start nor what a dead feed left."""
        return self._feed is not None and self._feed.caught_up.is_set()

    def not_ready(self) -> list[str]:
        """A readiness check: why the policies are not current (empty: they are)."""
        if self.current:
            return []
        if self.error:
            state = f"{self.topic}: following failed ({self.error})"
        elif self._feed is not None and (why := self._feed.not_ready()):
            state = "; ".join(why)  # e.g. the topic missing, not merely still being read
        else:
            state = f"{self.topic}: not read to its end yet"
        return [f"{state}: no canary alert retired nor rollback decided meanwhile"]

    async def run(self) -> None:
        """Follow until cancelled, a new feed ``retry_s`` after each failure."""
        while True:
            feed = self._new_feed(self.store)
            self._feed = feed
            try:
                await feed.start()
                await feed.run()
                self.error = "the feed ended"  # it never should: follow again all the same
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = str(exc) or type(exc).__name__
            finally:
                self._feed = None  # what the store holds may be outdated from now on
                with contextlib.suppress(Exception):
                    await feed.stop()
            log.warning(
                "following %s failed (%s); again in %.0fs", self.topic, self.error, self._retry_s
            )
            await asyncio.sleep(self._retry_s)
