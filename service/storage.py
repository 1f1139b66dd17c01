"""Small shared state (SMART sessions, OAuth state, JWT jti replay cache, CDS feedback, idempotency keys).

One interface, two back ends: SQLite (one machine, default) and Redis (several replicas). Values are JSON
objects grouped by namespace; every entry may expire. `add` and `pop` are atomic, which is what replay caches,
single-use `state` and double-click protection need; `touch` and `release` are the owner-checked renewal and
release of a lease (service.lease). The state holds PHI and tokens: the SQLite file is created 0600 in a 0700
folder, and the app opens it through service.state (encryption at rest, outage handling).
"""

from __future__ import annotations

import os
import threading
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from service.private_files import private_dir


class Store(Protocol):
    async def get(self, ns: str, key: str) -> dict[str, Any] | None: ...

    async def put(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> None: ...

    async def add(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> bool:
        """Store only if absent (or expired); True when this call stored it."""
        ...

    async def pop(self, ns: str, key: str) -> dict[str, Any] | None:
        """Return and delete in one step; None when absent or expired."""
        ...

    async def delete(self, ns: str, key: str) -> None: ...

    async def scan(self, ns: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """Live entries of a namespace whose key starts with prefix (small namespaces only)."""
        ...

    async def touch(self, ns: str, key: str, owner: str, ttl: float) -> bool:
        """Extend a live entry whose `owner` field is `owner`; False when it expired or belongs to another."""
        ...

    async def release(self, ns: str, key: str, owner: str) -> bool:
        """Delete the entry only if its `owner` field is `owner` (a lease is never released by a late holder)."""
        ...

    async def entries(self, ns: str) -> list[tuple[str, dict[str, Any], float | None]]:
        """(key, value, seconds left or None) of a namespace: for re-encrypting after a key rotation."""
        ...

    async def namespaces(self) -> list[str]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class SQLiteStore:
    """SQLite in WAL mode with synchronous=NORMAL: each statement is a few tens of microseconds of page-cache
    work (no fsync on commit), cheaper than handing it to a worker thread (~0.15 ms a hop), so statements run
    inline under a thread lock (several event loops in one process may share a store)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private_dir(Path(self.path).parent)
            # created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the same mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a commit no longer waits for fsync (~2 ms)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " expires REAL, PRIMARY KEY (ns, key))"
        )
        self._lock = threading.Lock()

    async def _run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    @staticmethod
    def _exp(ttl: float | None) -> float | None:
        return None if ttl is None else time.time() + ttl

    def _get(self, ns: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT value FROM kv WHERE ns=? AND key=? AND (expires IS NULL OR expires>?)", (ns, key, time.time())
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _put(self, ns: str, key: str, value: dict[str, Any], ttl: float | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO kv (ns, key, value, expires) VALUES (?,?,?,?)",
            (ns, key, json.dumps(value), self._exp(ttl)),
        )

    def _add(self, ns: str, key: str, value: dict[str, Any], ttl: float | None) -> bool:
        # One statement, so atomic on its own: insert, or take over an expired entry; a live one is left alone
        # (then no row changes and rowcount is 0).
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO kv (ns, key, value, expires) VALUES (?,?,?,?) ON CONFLICT (ns, key) DO UPDATE"
            " SET value=excluded.value, expires=excluded.expires WHERE kv.expires IS NOT NULL AND kv.expires<=?",
            (ns, key, json.dumps(value), None if ttl is None else now + ttl, now),
        )
        return cur.rowcount == 1

    def _pop(self, ns: str, key: str) -> dict[str, Any] | None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT value FROM kv WHERE ns=? AND key=? AND (expires IS NULL OR expires>?)",
                (ns, key, time.time()),
            ).fetchone()
            self._db.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return json.loads(row[0]) if row else None

    def _delete(self, ns: str, key: str) -> None:
        self._db.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))

    def _scan(self, ns: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT key, value FROM kv WHERE ns=? AND substr(key, 1, ?)=? AND (expires IS NULL OR expires>?)"
            " ORDER BY key",
            (ns, len(prefix), prefix, time.time()),
        ).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def _touch(self, ns: str, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        cur = self._db.execute(
            "UPDATE kv SET expires=? WHERE ns=? AND key=? AND (expires IS NULL OR expires>?)"
            " AND json_extract(value, '$.owner')=?", (now + ttl, ns, key, now, owner))
        return cur.rowcount == 1

    def _release(self, ns: str, key: str, owner: str) -> bool:
        cur = self._db.execute("DELETE FROM kv WHERE ns=? AND key=? AND json_extract(value, '$.owner')=?",
                               (ns, key, owner))
        return cur.rowcount == 1

    def _entries(self, ns: str) -> list[tuple[str, dict[str, Any], float | None]]:
        now = time.time()
        rows = self._db.execute("SELECT key, value, expires FROM kv WHERE ns=? AND (expires IS NULL OR expires>?)",
                                (ns, now)).fetchall()
        return [(k, json.loads(v), None if e is None else e - now) for k, v, e in rows]

    def _namespaces(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT ns FROM kv ORDER BY ns").fetchall()]

    def _purge(self) -> None:
        self._db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires<=?", (time.time(),))

    async def get(self, ns: str, key: str) -> dict[str, Any] | None:
        return await self._run(self._get, ns, key)

    async def put(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        await self._run(self._put, ns, key, value, ttl)

    async def add(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> bool:
        return await self._run(self._add, ns, key, value, ttl)

    async def pop(self, ns: str, key: str) -> dict[str, Any] | None:
        return await self._run(self._pop, ns, key)

    async def delete(self, ns: str, key: str) -> None:
        await self._run(self._delete, ns, key)

    async def scan(self, ns: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        return await self._run(self._scan, ns, prefix)

    async def touch(self, ns: str, key: str, owner: str, ttl: float) -> bool:
        return await self._run(self._touch, ns, key, owner, ttl)

    async def release(self, ns: str, key: str, owner: str) -> bool:
        return await self._run(self._release, ns, key, owner)

    async def entries(self, ns: str) -> list[tuple[str, dict[str, Any], float | None]]:
        return await self._run(self._entries, ns)

    async def namespaces(self) -> list[str]:
        return await self._run(self._namespaces)

    async def purge_expired(self) -> None:
        await self._run(self._purge)

    async def ping(self) -> bool:
        try:
            await self._run(self._db.execute, "SELECT 1")
            return True
        except sqlite3.Error:
            return False

    async def close(self) -> None:
        self._db.close()


def open_store(url: str) -> Store:
    """sqlite:///path or sqlite:///:memory: or redis://..."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.redis_store import RedisStore  # imported lazily: only multi-replica deployments need it

        return RedisStore(url)
    raise ValueError(f"unsupported storage URL scheme: {url.split(':', 1)[0]!r} (use sqlite:/// or redis://)")
