"""One contract, two back ends: SQLite (default) and Redis (several replicas) must behave the same."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest

from service.redis_store import RedisStore
from service.storage import SQLiteStore, Store, open_store


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s: Store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
        assert isinstance(s, SQLiteStore)
    else:
        s = open_store(request.getfixturevalue("redis_url"))
        assert isinstance(s, RedisStore)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def ns() -> str:
    """A namespace of its own per test (the Redis server is shared by the session)."""
    return "t" + uuid.uuid4().hex[:10]


async def test_get_put_overwrite_and_delete(store: Store, ns: str) -> None:
    assert await store.get(ns, "k") is None
    await store.put(ns, "k", {"a": 1, "text": "ünïcødé ✓"})
    assert await store.get(ns, "k") == {"a": 1, "text": "ünïcødé ✓"}
    await store.put(ns, "k", {"a": 2})
    assert await store.get(ns, "k") == {"a": 2}
    assert await store.get(ns + "x", "k") is None  # namespaces are separate
    await store.delete(ns, "k")
    assert await store.get(ns, "k") is None
    await store.delete(ns, "never-there")  # deleting nothing is fine


async def test_ttl_expiry(store: Store, ns: str) -> None:
    await store.put(ns, "short", {"v": 1}, ttl=0.3)
    await store.put(ns, "long", {"v": 2}, ttl=60)
    await store.put(ns, "forever", {"v": 3})
    assert await store.get(ns, "short") == {"v": 1}
    await asyncio.sleep(0.45)
    assert await store.get(ns, "short") is None
    assert await store.pop(ns, "short") is None
    assert await store.get(ns, "long") == {"v": 2}
    assert [k for k, _ in await store.scan(ns)] == ["forever", "long"]


async def test_add_only_when_absent_or_expired(store: Store, ns: str) -> None:
    assert await store.add(ns, "jti-1", {"n": 1}, ttl=0.3) is True
    assert await store.add(ns, "jti-1", {"n": 2}, ttl=0.3) is False
    assert await store.get(ns, "jti-1") == {"n": 1}  # the loser did not overwrite
    await asyncio.sleep(0.45)
    assert await store.add(ns, "jti-1", {"n": 3}, ttl=60) is True
    assert await store.get(ns, "jti-1") == {"n": 3}


async def test_fifty_concurrent_adds_exactly_one_wins(store: Store, ns: str) -> None:
    results = await asyncio.gather(*(store.add(ns, "same-jti", {"n": i}, ttl=60) for i in range(50)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get(ns, "same-jti") == {"n": winner}


async def test_pop_is_single_use(store: Store, ns: str) -> None:
    await store.put(ns, "state", {"verifier": "v"}, ttl=60)
    assert await store.pop(ns, "state") == {"verifier": "v"}
    assert await store.pop(ns, "state") is None
    assert await store.get(ns, "state") is None
    await store.put(ns, "state2", {"x": 1}, ttl=60)
    popped = await asyncio.gather(*(store.pop(ns, "state2") for _ in range(20)))
    assert [p for p in popped if p is not None] == [{"x": 1}]


async def test_scan_prefix(store: Store, ns: str) -> None:
    for key in ("sess:b", "sess:a", "other:c", "sess*[x]", "se"):
        await store.put(ns, key, {"key": key}, ttl=60)
    await store.put(ns + "z", "sess:zzz", {"key": "elsewhere"})
    got = await store.scan(ns, "sess:")
    assert got == [("sess:a", {"key": "sess:a"}), ("sess:b", {"key": "sess:b"})]
    assert [k for k, _ in await store.scan(ns, "sess*[")] == ["sess*[x]"]  # glob characters are literal
    assert [k for k, _ in await store.scan(ns)] == ["other:c", "se", "sess*[x]", "sess:a", "sess:b"]
    assert await store.scan(ns, "nothing") == []


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


async def test_lease_renewal_and_release_are_owner_checked(store: Store, ns: str) -> None:
    """`touch` and `release` (service.lease) act only for the entry's owner, atomically on the back end."""
    assert await store.add(ns, "lease", {"owner": "a", "since": 1.0}, ttl=0.4)
    assert await store.touch(ns, "lease", "b", 5) is False  # not b's lease
    assert await store.release(ns, "lease", "b") is False
    assert await store.touch(ns, "lease", "a", 5) is True  # the owner extends it ...
    await asyncio.sleep(0.5)
    assert await store.get(ns, "lease") is not None  # ... beyond its first lifetime
    assert await store.release(ns, "lease", "a") is True
    assert await store.get(ns, "lease") is None
    assert await store.touch(ns, "lease", "a", 5) is False  # gone: nothing to extend
    assert await store.add(ns, "short", {"owner": "a"}, ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.touch(ns, "short", "a", 5) is False  # expired: a dead holder cannot revive it
    assert await store.add(ns, "short", {"owner": "b"}, ttl=5)  # and the next caller takes it over
