"""The figures docs/tuning.md rests on: what each setting costs and buys.

* Codecs by value size: tiercel's msgpack, JSON and signed-pickle serializers,
  encode + decode, against raw ``msgpack.packb``/``unpackb`` (the framing's cost)
  and against each other (which codec to pick).
* Compression: a Redis-tier hit of a 64 KiB and a 1 MiB value with zlib (above
  ``TIERCEL_COMPRESS_MIN_BYTES``) against the same value stored plain.
* Level hit cost by value size: an L2 (bytes) hit decodes, an L1 (live object)
  hit does not.
* Hit ratio by L1 size under Zipf(1.1) popularity over 100,000 keys: how big
  a level must be for a given hit ratio.
* XFetch early refresh (``early_refresh`` beta): how often a hot key is
  refreshed before it expires, and how much fresh lifetime that gives up.
* The workload generator (``tiercel bench``) on its own embedded fleet:
  latency by source, hit ratio and speed-up against plain Celery.

Run: ``python -m bench.tuning [--quick]``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any

import msgpack

from bench._harness import Row, figure_row, ratio_row, redis_server, side_by_side
from tiercel.core.cache.freshness import EARLY, FreshnessPolicy
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import JsonCodec, MsgpackCodec, Serializer, SignedPickleCodec
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.redis_tier import RedisTier

SIZES = ((200, "200 B"), (4096, "4 KiB"), (65536, "64 KiB"))
REGIONS = ("emea", "amer", "apac", "latam", "nordics", "anz")


def value_of(size: int) -> dict[str, Any]:
    """A report-like value whose msgpack encoding is about ``size`` bytes."""
    rows: list[dict[str, Any]] = []
    record = {"id": 0, "customer": "customer 0", "region": "emea", "revenue": 0.0}
    per_row = len(msgpack.packb(record)) + 4
    for i in range(max(1, size // per_row)):
        rows.append(
            {
                "id": i,
                "customer": f"customer {i}",
                "region": REGIONS[i % 6],
                "revenue": round(i * 13.37 % 1000, 2),
            }
        )
    return {"title": "quarterly report", "rows": rows}


def _calls_for(size: int, quick: bool) -> int:
    budget = 2_000_000 if quick else 12_000_000  # bytes through the codec per repeat
    return max(20, min(20_000, budget // size))


def bench_codecs(quick: bool, repeats: int) -> list[Row]:
    plain = 1 << 30  # compression threshold out of reach: codec cost only
    msgpack_ser = Serializer(MsgpackCodec(), compress_min_bytes=plain)
    json_ser = Serializer(JsonCodec(), compress_min_bytes=plain)
    pickle_ser = Serializer(
        SignedPickleCodec(["bench-signing-key-0123456789abcdef"]), compress_min_bytes=plain
    )
    rows: list[Row] = []
    for size, label in SIZES:
        value = value_of(size)
        calls = _calls_for(size, quick)
        frames = {
            name: ser.dumps(value)
            for name, ser in (("msgpack", msgpack_ser), ("json", json_ser), ("pickle", pickle_ser))
        }

        def ours(ser: Serializer = msgpack_ser, v: Any = value) -> Any:
            return ser.loads(ser.dumps(v))

        def raw(v: Any = value) -> Any:
            return msgpack.unpackb(msgpack.packb(v))

        mine, theirs = side_by_side(ours, raw, calls=calls, repeats=repeats)
        rows.append(
            ratio_row(
                f"codec msgpack encode+decode, {label} value",
                mine,
                "msgpack.packb + unpackb (raw)",
                theirs,
                note=f"{len(frames['msgpack']):,} B framed",
            )
        )
        for name, ser in (("json", json_ser), ("pickle (signed)", pickle_ser)):

            def other(s: Serializer = ser, v: Any = value) -> Any:
                return s.loads(s.dumps(v))

            theirs_other, mine_again = side_by_side(other, ours, calls=calls, repeats=repeats)
            key = "json" if name == "json" else "pickle"
            rows.append(
                ratio_row(
                    f"codec {name} encode+decode, {label} value",
                    theirs_other,
                    "tiercel msgpack codec",
                    mine_again,
                    note=f"{len(frames[key]):,} B vs {len(frames['msgpack']):,} B",
                )
            )
    return rows


def bench_compression(url: str, quick: bool, repeats: int) -> list[Row]:
    rows: list[Row] = []
    for size, label in ((65536, "64 KiB"), (1 << 20, "1 MiB")):
        value = value_of(size)
        caches = []
        sizes = []
        for threshold in (16384, 1 << 30):
            serializer = Serializer(MsgpackCodec(), compress_min_bytes=threshold)
            tier = RedisTier.from_url(url, serializer=serializer, namespace="tune")
            cache = MultiLevelCache(serializer=serializer, tier=tier)
            key = f"tune:compress:{threshold}:{size}"
            cache.set(key, value, ttl=600)
            sizes.append(len(serializer.dumps(value)))
            caches.append((cache, key, tier))
        (zcache, zkey, ztier), (pcache, pkey, ptier) = caches
        calls = max(10, (40 if quick else 200) * 65536 // size)
        mine, theirs = side_by_side(
            partial(zcache.lookup, zkey), partial(pcache.lookup, pkey), calls=calls, repeats=repeats
        )
        rows.append(
            ratio_row(
                f"Redis-tier hit of a {label} value, zlib above 16 KiB",
                mine,
                "the same value stored uncompressed",
                theirs,
                note=f"{sizes[0]:,} B vs {sizes[1]:,} B in Redis",
            )
        )
        ztier.close()
        ptier.close()
    return rows


def bench_level_hits(quick: bool, repeats: int) -> list[Row]:
    rows: list[Row] = []
    serializer = Serializer(MsgpackCodec())
    for size, label in SIZES:
        value = value_of(size)
        live = MultiLevelCache(
            serializer=serializer, levels=[MemoryLevel("memory", max_entries=64, ttl=300)]
        )
        encoded = MultiLevelCache(
            serializer=serializer,
            levels=[BytesLevel("bytes", max_entries=64, max_bytes=64 * 2**20, ttl=300)],
        )
        live.set("k", value, ttl=300)
        encoded.set("k", value, ttl=300)
        calls = _calls_for(size, quick)
        mine, theirs = side_by_side(
            partial(encoded.lookup, "k", remote=False),
            partial(live.lookup, "k", remote=False),
            calls=calls,
            repeats=repeats,
        )
        rows.append(
            ratio_row(
                f"L2 (bytes) hit vs L1 (live object) hit, {label} value",
                mine,
                "L1 memory-level hit",
                theirs,
            )
        )
    return rows


def bench_hit_ratio_by_size(quick: bool) -> list[Row]:
    keys = 100_000
    requests = 100_000 if quick else 300_000
    rng = random.Random(11)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(keys)]
    stream = [f"k{rank}" for rank in rng.choices(range(keys), weights=weights, k=requests)]
    warm = requests // 3  # the first third fills the level; the rest is measured
    rows: list[Row] = []
    for share in (0.001, 0.01, 0.05, 0.2):
        # LRU, as the note says: the cost policy's figures are in bench/trace.py.
        level = MemoryLevel("l1", max_entries=max(1, int(keys * share)), ttl=None, policy="lru")
        hits = 0
        for index, key in enumerate(stream):
            if level.get(key) is None:
                level.set(key, 1)
            elif index >= warm:
                hits += 1
        ratio = hits / (requests - warm) * 100
        rows.append(
            figure_row(
                f"L1 hit ratio, Zipf 1.1 over {keys:,} keys, level holds "
                f"{share:.1%} of them ({int(keys * share):,} entries)",
                ratio,
                "%",
                note=f"{requests:,} requests, LRU",
            )
        )
    return rows


def bench_early_refresh(quick: bool) -> list[Row]:
    """Simulated: a key read once a second on average, ttl 60 s, compute 1 s. Without an
    early refresh the first read after expiry misses (and waits for the computation)."""
    ttl, compute, rate = 60.0, 1.0, 1.0
    trials = 2000 if quick else 10_000
    rows: list[Row] = []
    for beta in (0.5, 1.0, 2.0, 4.0):
        policy = FreshnessPolicy(early_refresh=beta)
        rng = random.Random(int(beta * 100))
        early_by: list[float] = []
        for _ in range(trials):
            now = 0.0
            while True:
                now += rng.expovariate(rate)
                if now >= ttl:
                    break  # nobody refreshed early: the next reader misses
                if policy.judge(ttl - now, compute, rng.random) == EARLY:
                    early_by.append(ttl - now)
                    break
        refreshed = len(early_by) / trials * 100
        mean_early = statistics.fmean(early_by) if early_by else 0.0
        rows.append(
            figure_row(
                f"early_refresh beta {beta:g}: expiries with a refresh "
                "started before them (1 read/s, ttl 60 s, compute 1 s)",
                refreshed,
                "%",
                note=f"on average {mean_early:.1f} s ({mean_early / ttl:.1%} of the ttl) early",
            )
        )
    return rows


def bench_workload(quick: bool) -> list[Row]:
    """``tiercel bench --json`` on its own embedded fleet, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = os.path.join(os.getcwd(), ".tiercel", "bench-workload")
    requests = 600 if quick else 2000
    command = [
        sys.executable,
        "-m",
        "tiercel.workers.cli",
        "bench",
        "--json",
        "--requests",
        str(requests),
        "--keys",
        "1000",
        "--zipf",
        "1.1",
        "--compute-ms",
        "20",
        "--concurrency",
        "16",
        "--max-seconds",
        "30",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tiercel bench failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    cached, plain = figures["tiercel"], figures["plain"]
    workload = (
        f"{cached['completed']} requests / 1000 keys, Zipf 1.1, 20 ms, 16 threads, 2x2 prefork"
    )
    rows: list[Row] = []
    row = figure_row(
        f"workload {workload}: throughput, tiercel / plain Celery",
        figures.get("speedup", 0.0),
        "x",
        target=">= 3x",
        met=figures.get("speedup", 0.0) >= 3,
        note=f"{cached['throughput']:.0f} vs {plain['throughput']:.0f} req/s; "
        f"run took {time.perf_counter() - started:.0f} s",
    )
    rows.append(row)
    ratio = cached["hit_ratio"]
    rows.append(
        figure_row(
            f"workload {workload}: answered from a cache",
            ratio["any cache"] * 100,
            "%",
            note=f"local memory {ratio['memory']:.1%}, Redis tier "
            f"{ratio['redis']:.1%} of the rest; computations "
            f"{cached['computations']} for {cached['distinct_keys']} "
            "distinct keys",
        )
    )
    labels = {
        "memory": "local memory",
        "redis": "Redis tier",
        "joined": "joined in-flight",
        "computed": "computed",
    }
    for source, label in labels.items():
        p = cached["latency_ms"].get(source)
        if p is None:
            continue
        latency = figure_row(
            f"workload latency p50, answered from {label}",
            p["p50"],
            "ms",
            note=f"p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms; "
            f"{cached['sources'][source]} requests",
            spread=(p["p50"], p["p99"]),
        )
        latency.update(latency_source=label, p99=p["p99"], workload=workload)
        rows.append(latency)
    p = plain["latency_all_ms"]
    latency = figure_row(
        "workload latency p50, plain Celery task",
        p["p50"],
        "ms",
        note=f"p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms; {plain['completed']} requests",
        spread=(p["p50"], p["p99"]),
    )
    latency.update(latency_source="plain Celery", p99=p["p99"], workload=workload)
    rows.append(latency)
    return rows


def run(quick: bool = False) -> list[Row]:
    """Every tuning benchmark; ``quick`` shrinks loop counts for a smoke run."""
    repeats = 3 if quick else 5
    rows = bench_codecs(quick, repeats)
    with redis_server() as server:
        rows += bench_compression(server.url, quick, repeats)
    rows += bench_level_hits(quick, repeats)
    rows += bench_hit_ratio_by_size(quick)
    rows += bench_early_refresh(quick)
    rows += bench_workload(quick)
    return rows


if __name__ == "__main__":
    from bench.report import print_table

    began = time.monotonic()
    print_table(run(quick="--quick" in sys.argv[1:]), title="tiercel tuning")
    print(f"({time.monotonic() - began:.1f} s)")
