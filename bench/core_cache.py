"""Core tier benchmarks (issue: core cache tiers), each against a peer in the same run.

* L1 hit of ``core.memoize.cached`` stripped (no Redis tier, ``Generations(None)``) vs
  ``cachetools.cached(TTLCache)``; the default runtime's hit paths are ``bench.hit_path``.
* Redis-tier hit (local miss) vs a raw redis-py GET plus ``msgpack.unpackb``;
  dogpile.cache's and cashews' Redis hits beside it.
* L2 (bytes level) hit vs ``cachetools.TTLCache`` of bytes plus ``msgpack.unpackb``.
* ``get_many`` of 100 keys from Redis, per key, vs a raw MGET plus decode.

Run: ``python -m bench.core_cache``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import cachetools
import msgpack
import redis

from bench._harness import Row, ratio_row, redis_server, side_by_side
from tiercel.core.cache.memoize import cached
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.entry import Entry
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.redis_tier import RedisTier

VALUE: dict[str, Any] = {"id": 7, "title": "quarterly report " * 8, "rows": list(range(150))}


def _local_cache() -> MultiLevelCache:
    serializer = Serializer(MsgpackCodec())
    return MultiLevelCache(
        serializer=serializer,
        levels=[
            MemoryLevel("memory", max_entries=4096, ttl=300),
            BytesLevel("bytes", max_entries=65536, max_bytes=64 * 2**20, ttl=3600),
        ],
    )


def bench_l1_hit(calls: int, repeats: int) -> Row:
    cache = _local_cache()

    @cached(cache, ttl=300, generations=Generations(None))
    def ours(a: int, b: str) -> dict[str, Any]:
        return VALUE

    @cachetools.cached(cachetools.TTLCache(maxsize=4096, ttl=300))
    def peer(a: int, b: str) -> dict[str, Any]:
        return VALUE

    ours(1, "x")
    peer(1, "x")
    mine, theirs = side_by_side(
        lambda: ours(1, "x"), lambda: peer(1, "x"), calls=calls, repeats=repeats
    )
    return ratio_row(
        "L1 hit, stripped: core memoize.cached, no Redis tier, Generations(None)",
        mine,
        "cachetools.cached(TTLCache)",
        theirs,
        target=1.0,
        note="a configuration no user takes; the default runtime's rows are in hit_path",
    )


def bench_l2_hit(calls: int, repeats: int) -> Row:
    serializer = Serializer(MsgpackCodec())
    cache = MultiLevelCache(
        serializer=serializer,
        levels=[BytesLevel("bytes", max_entries=65536, max_bytes=64 * 2**20, ttl=3600)],
    )
    cache.set("k", VALUE, ttl=3600)
    peer_cache: cachetools.TTLCache[str, bytes] = cachetools.TTLCache(maxsize=65536, ttl=3600)
    peer_cache["k"] = msgpack.packb(VALUE)
    unpackb = msgpack.unpackb
    mine, theirs = side_by_side(
        lambda: cache.lookup("k", remote=False),
        lambda: unpackb(peer_cache["k"]),
        calls=calls,
        repeats=repeats,
    )
    return ratio_row("L2 (bytes level) hit", mine, "TTLCache[bytes] + msgpack.unpackb", theirs)


def bench_redis_hit(url: str, calls: int, repeats: int) -> list[Row]:
    serializer = Serializer(MsgpackCodec())
    tier = RedisTier.from_url(url, serializer=serializer, namespace="bench")
    cache = MultiLevelCache(serializer=serializer, tier=tier)

    @cached(cache, ttl=3600, generations=Generations(None), namespace="bench")
    def report(a: int, b: str) -> dict[str, Any]:
        return VALUE

    report(1, "x")  # stored in Redis; lookup() below never answers from the memo
    raw = redis.Redis.from_url(url)
    raw.set("raw", msgpack.packb(VALUE))
    unpackb = msgpack.unpackb
    rows = []
    mine, theirs = side_by_side(
        lambda: report.lookup(1, "x"), lambda: unpackb(raw.get("raw")), calls=calls, repeats=repeats
    )
    rows.append(
        ratio_row(
            "Redis-tier hit (local miss), cached function",
            mine,
            "redis-py GET + msgpack.unpackb",
            theirs,
            target=1.15,
        )
    )

    from dogpile.cache import make_region

    region = make_region().configure("dogpile.cache.redis", arguments={"url": url})
    region.set("dogpile", VALUE)
    mine, theirs = side_by_side(
        lambda: report.lookup(1, "x"), lambda: region.get("dogpile"), calls=calls, repeats=repeats
    )
    rows.append(
        ratio_row(
            "Redis-tier hit (local miss), cached function", mine, "dogpile.cache redis get", theirs
        )
    )
    rows.append(_cashews_row(url, report, calls, repeats))
    raw.close()
    tier.close()
    return rows


def _cashews_row(url: str, report: Any, calls: int, repeats: int) -> Row:
    from cashews import Cache

    async def measure() -> tuple[list[float], list[float]]:
        import time

        peer = Cache()
        peer.setup(url, client_side=False)
        await peer.set("cashews", VALUE)
        ours_us: list[float] = []
        peer_us: list[float] = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                report.lookup(1, "x")
            ours_us.append((time.perf_counter() - started) / calls * 1e6)
            started = time.perf_counter()
            for _ in range(calls):
                await peer.get("cashews")
            peer_us.append((time.perf_counter() - started) / calls * 1e6)
        await peer.close()
        return ours_us, peer_us

    mine, theirs = asyncio.run(measure())
    return ratio_row(
        "Redis-tier hit (local miss), cached function", mine, "cashews get (asyncio)", theirs
    )


def bench_get_many(url: str, calls: int, repeats: int) -> Row:
    serializer = Serializer(MsgpackCodec())
    tier = RedisTier.from_url(url, serializer=serializer, namespace="bench")
    cache = MultiLevelCache(serializer=serializer, tier=tier)
    keys = [f"bench:many:{i}" for i in range(100)]
    cache.set_many({key: VALUE for key in keys}, ttl=3600)
    raw = redis.Redis.from_url(url)
    raw_keys = [f"raw:many:{i}" for i in range(100)]
    raw.mset({key: msgpack.packb(VALUE) for key in raw_keys})
    unpackb = msgpack.unpackb

    def peer() -> None:
        for blob in raw.mget(raw_keys):
            unpackb(blob)

    mine, theirs = side_by_side(lambda: cache.get_many(keys), peer, calls=calls, repeats=repeats)
    per_key = [value / 100 for value in mine]
    peer_per_key = [value / 100 for value in theirs]
    raw.close()
    tier.close()
    return ratio_row(
        "get_many of 100 keys from Redis, per key",
        per_key,
        "redis-py MGET + msgpack.unpackb",
        peer_per_key,
    )


def entry_overhead_bytes() -> int:
    """Bytes the entry envelope adds to each value in Redis."""
    payload = Serializer(MsgpackCodec()).dumps(VALUE)
    return len(Entry.create(payload, now=0.0, ttl=60.0).pack()) - len(payload)


def run(quick: bool = False) -> list[Row]:
    """Every core benchmark; ``quick`` shrinks loop counts for a smoke run."""
    calls = 20_000 if quick else 200_000
    remote_calls = 1_000 if quick else 5_000
    repeats = 3 if quick else 7
    rows = [bench_l1_hit(calls, repeats), bench_l2_hit(calls, repeats)]
    with redis_server() as server:
        rows.extend(bench_redis_hit(server.url, remote_calls, repeats))
        rows.append(bench_get_many(server.url, max(50, remote_calls // 50), repeats))
    return rows


if __name__ == "__main__":
    from bench.report import print_table

    print_table(run())
