"""The Store on Redis, for several replicas sharing SMART sessions, the jti replay cache and CDS feedback.

Each entry is one Redis string `onco:<ns>:<key>` holding JSON, with Redis's own expiry (PX), so expired
entries vanish without a purge job. Atomicity comes from single commands: `SET NX PX` for `add` (replay
caches, double-click protection) and `GETDEL` for `pop` (single-use `state`; needs Redis >= 6.2).
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

KEY_PREFIX = "onco:"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


MAX_TTL_SECONDS = 10 * 365 * 86400.0  # Redis refuses expiries past ~2^63 ms: cap absurd TTLs instead of failing

# owner-checked lease renewal and release, atomic on the server
_TOUCH = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, doc = pcall(cjson.decode, v)
if not ok or type(doc) ~= 'table' or doc['owner'] ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, doc = pcall(cjson.decode, v)
if not ok or type(doc) ~= 'table' or doc['owner'] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _ms(ttl: float) -> int:
    return max(1, int(min(ttl, MAX_TTL_SECONDS) * 1000))


class RedisStore:
    """Implements service.storage.Store with redis.asyncio (one connection pool per process)."""

    def __init__(self, url: str, *, socket_timeout: float = 5.0) -> None:
        self.url = url
        self._redis = redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout,
                                     socket_connect_timeout=socket_timeout, health_check_interval=30)

    @staticmethod
    def _key(ns: str, key: str) -> str:
        if not ns or ":" in ns:
            raise ValueError(f"a store namespace is a non-empty name without ':' (got {ns!r})")
        return f"{KEY_PREFIX}{ns}:{key}"

    async def get(self, ns: str, key: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key(ns, key))
        return json.loads(raw) if raw is not None else None

    async def put(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        k = self._key(ns, key)
        if ttl is not None and ttl <= 0:  # already expired: same outcome as SQLite (nothing readable)
            await self._redis.delete(k)
            return
        await self._redis.set(k, json.dumps(value), px=None if ttl is None else _ms(ttl))

    async def add(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> bool:
        k = self._key(ns, key)
        if ttl is not None and ttl <= 0:
            return not await self._redis.exists(k)
        return bool(await self._redis.set(k, json.dumps(value), nx=True, px=None if ttl is None else _ms(ttl)))

    async def pop(self, ns: str, key: str) -> dict[str, Any] | None:
        raw = await self._redis.getdel(self._key(ns, key))
        return json.loads(raw) if raw is not None else None

    async def delete(self, ns: str, key: str) -> None:
        await self._redis.delete(self._key(ns, key))

    async def scan(self, ns: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        head = self._key(ns, "")
        pattern = _GLOB_SPECIAL.sub(r"\\\1", head + prefix) + "*"
        keys = sorted({k async for k in self._redis.scan_iter(match=pattern, count=500)})
        if not keys:
            return []
        values = await self._redis.mget(keys)
        return [(k[len(head):], json.loads(v)) for k, v in zip(keys, values) if v is not None]

    async def touch(self, ns: str, key: str, owner: str, ttl: float) -> bool:
        return bool(await self._redis.eval(_TOUCH, 1, self._key(ns, key), owner, _ms(ttl)))

    async def release(self, ns: str, key: str, owner: str) -> bool:
        return bool(await self._redis.eval(_RELEASE, 1, self._key(ns, key), owner))

    async def entries(self, ns: str) -> list[tuple[str, dict[str, Any], float | None]]:
        out: list[tuple[str, dict[str, Any], float | None]] = []
        for key, value in await self.scan(ns):
            left = await self._redis.pttl(self._key(ns, key))
            if left == -2:
                continue
            out.append((key, value, None if left < 0 else left / 1000))
        return out

    async def namespaces(self) -> list[str]:
        names = {k[len(KEY_PREFIX):].split(":", 1)[0] async for k in self._redis.scan_iter(match=KEY_PREFIX + "*",
                                                                                           count=500)}
        return sorted(names)

    async def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy (None when CONFIG is disabled): anything but noeviction may drop sessions,
        signing leases and audit records under memory pressure."""
        try:
            got = await self._redis.config_get("maxmemory-policy")
        except RedisError:
            return None
        return got.get("maxmemory-policy")

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
