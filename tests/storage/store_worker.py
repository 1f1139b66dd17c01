"""Use a Store from a separate OS process: `python -m tests.storage.store_worker URL OP NS KEY [ARG]`.

Prints one JSON value on stdout. OPs: put (ARG = JSON value), get, pop, add (ARG = JSON value),
add-many (ARG = N concurrent adds of the same key; prints how many returned True).
"""

from __future__ import annotations

import asyncio
import json
import sys

from service.storage import open_store


async def main(url: str, op: str, ns: str, key: str, arg: str | None) -> object:
    store = open_store(url)
    try:
        if op == "put":
            await store.put(ns, key, json.loads(arg or "{}"), ttl=60)
            return True
        if op == "get":
            return await store.get(ns, key)
        if op == "pop":
            return await store.pop(ns, key)
        if op == "add":
            return await store.add(ns, key, json.loads(arg or "{}"), ttl=60)
        if op == "add-many":
            results = await asyncio.gather(*(store.add(ns, key, {"n": i}, ttl=60) for i in range(int(arg or 1))))
            return sum(results)
        raise SystemExit(f"unknown op {op}")
    finally:
        await store.close()


if __name__ == "__main__":
    url, op, ns, key, *rest = sys.argv[1:]
    print(json.dumps(asyncio.run(main(url, op, ns, key, rest[0] if rest else None))))
