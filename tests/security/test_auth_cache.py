"""Unknown keys cannot push known ones out of the authenticator's cache. Before, refused keys
and valid ones shared one LRU of ``auth_cache_max`` entries: a flood of random well-formed keys
(no key needed) evicted every valid one, and at the next Redis blip valid callers got 503
instead of being served from the cache for ``auth_stale_s``."""

from __future__ import annotations

from genwire_gateway.auth import Authenticator, AuthError

from genwire.apikeys import SCOPE_GENERATE, KeyRecord, hash_key, new_key

MAX = 50


class Store:
    """``KeyStore.get`` in memory; ``down`` fails it as Redis would; ``reads`` counts it."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.down = False
        self.reads = 0

    def add(self, name: str = "team") -> str:
        key = new_key()
        self.records[hash_key(key)] = KeyRecord(
            name=name, hash=hash_key(key), scopes=[SCOPE_GENERATE]
        )
        return key

    async def get(self, key_hash: str) -> KeyRecord | None:
        if self.down:
            raise ConnectionError("redis down")
        self.reads += 1
        return self.records.get(key_hash)


def _auth(store: Store, **options: float) -> Authenticator:
    return Authenticator(store, max_entries=MAX, stale_s=3600.0, **options)  # type: ignore[arg-type]


async def _refused(auth: Authenticator, key: str) -> AuthError:
    try:
        await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    except AuthError as exc:
        return exc
    raise AssertionError("the key was accepted")


async def test_a_flood_of_unknown_keys_leaves_valid_keys_cached() -> None:
    store = Store()
    keys = [store.add(f"team{i}") for i in range(MAX)]
    auth = _auth(store, cache_s=0.0)  # every check reads Redis while it is up
    for key in keys:
        await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    for _ in range(4 * MAX):
        assert (await _refused(auth, new_key())).status == 401
    store.down = True
    for i, key in enumerate(keys):  # served stale from the cache, not 503
        assert (await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)).name == f"team{i}"
    assert (await _refused(auth, new_key())).status == 503  # unknown: fail closed


async def test_each_cache_keeps_at_most_auth_cache_max_entries() -> None:
    store = Store()
    auth = _auth(store, cache_s=3600.0, negative_cache_s=3600.0)
    known = [store.add() for _ in range(MAX + 1)]
    unknown = [new_key() for _ in range(MAX + 1)]
    for key in known:
        await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    for key in unknown:
        await _refused(auth, key)
    reads = store.reads
    # The most recent of each are answered from memory; the first of each was evicted.
    await auth.authenticate(f"Bearer {known[-1]}", SCOPE_GENERATE)
    await _refused(auth, unknown[-1])
    assert store.reads == reads
    await auth.authenticate(f"Bearer {known[0]}", SCOPE_GENERATE)
    await _refused(auth, unknown[0])
    assert store.reads == reads + 2


async def test_a_key_refused_as_unknown_then_created_moves_to_the_known_ones() -> None:
    store = Store()
    auth = _auth(store, cache_s=3600.0, negative_cache_s=0.0)
    key = new_key()
    await _refused(auth, key)
    store.records[hash_key(key)] = KeyRecord(name="late", hash=hash_key(key), scopes=["generate"])
    assert (await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)).name == "late"
    for _ in range(2 * MAX):
        await _refused(auth, new_key())
    store.down = True
    assert (await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)).name == "late"
