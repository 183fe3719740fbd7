"""A simulated request trace through the local level's eviction policy and its peers.

The trace: Zipf(0.9) popularity over 50,000 keys, 200,000 such requests, and
in the middle of every 20,000 of them a one-off scan of 5,000 keys never asked
for again (250,000 requests in all). Each key's compute cost is fixed and
log-uniform between 1 and 100 ms, its value 1 to 50 KB. Nothing sleeps: a miss
adds its key's cost to the compute spent and stores the key.

Replayed, at 1,000 entries (2% of the keys), through tiercel's
:class:`~tiercel.core.local.memory_level.MemoryLevel` with its default policy
(the L1 tiercel builds, bounded by ``max_entries``), plain LRU (cachetools'
``LRUCache``) and theine (W-TinyLFU). Rows: hit ratio, byte hit ratio and compute
seconds spent on misses for each, then the targets: compute spent <= 0.8x
LRU's, hit ratio no more than 1 point below theine's, and, after the trace, a
one-off scan of 10x the capacity leaving >= 90% of the hot set resident (hot
set: the 500 most popular keys resident before the scan).

Run: ``python -m bench.trace [--quick]`` (quick: a quarter of the requests).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench._harness import Row, figure_row
from tiercel.core.local.memory_level import MemoryLevel

KEYS = 50_000
ZIPF_S = 0.9
CAPACITY = 1_000
SCAN_EVERY = 20_000
SCAN_KEYS = 5_000
HOT_SET = 500
SEED = 20_17


@dataclass(frozen=True)
class Trace:
    """Requests (key ids) and every key's fixed cost (seconds) and value size (bytes)."""

    requests: list[int]
    costs: list[float]
    sizes: list[int]

    def new_key(self, rng: random.Random) -> int:
        """A key never seen before, with its own cost and size."""
        self.costs.append(math.exp(rng.uniform(math.log(0.001), math.log(0.1))))
        self.sizes.append(rng.randint(1_000, 50_000))
        return len(self.costs) - 1


def make_trace(zipf_requests: int, seed: int = SEED) -> Trace:
    """Zipf requests with a one-off scan in the middle of every ``SCAN_EVERY`` of them."""
    rng = random.Random(seed)
    trace = Trace([], [], [])
    for _ in range(KEYS):
        trace.new_key(rng)
    cumulative = list(itertools.accumulate(1 / (rank + 1) ** ZIPF_S for rank in range(KEYS)))
    popular = rng.choices(range(KEYS), cum_weights=cumulative, k=zipf_requests)
    for index, key in enumerate(popular):
        if index % SCAN_EVERY == SCAN_EVERY // 2:
            trace.requests.extend(trace.new_key(rng) for _ in range(SCAN_KEYS))
        trace.requests.append(key)
    return trace


@dataclass
class Policy:
    """One cache under test: ``lookup(key) -> hit``, ``store(key, cost, size)``,
    ``resident(key)`` (without touching it)."""

    name: str
    lookup: Callable[[str], bool]
    store: Callable[[str, float, int], None]
    resident: Callable[[str], bool]


def tiercel_policy() -> Policy:
    level = MemoryLevel("trace", max_entries=CAPACITY, ttl=None)
    missing = object()
    return Policy(
        f"tiercel ({level.policy})",
        lambda key: level.get(key, missing) is not missing,
        lambda key, cost, size: level.set(key, key, size=size, cost=cost) and None,
        level.__contains__,
    )


def lru_policy() -> Policy:
    from cachetools import LRUCache

    cache: LRUCache[str, int] = LRUCache(CAPACITY)

    def lookup(key: str) -> bool:
        return cache.get(key) is not None

    def store(key: str, cost: float, size: int) -> None:
        cache[key] = size

    return Policy("LRU (cachetools)", lookup, store, cache.__contains__)


def theine_policy() -> Policy:
    from theine import Cache

    cache = Cache(CAPACITY, nolock=True)

    def lookup(key: str) -> bool:
        return bool(cache.get(key)[1])

    def store(key: str, cost: float, size: int) -> None:
        cache.set(key, size)

    def resident(key: str) -> bool:
        return bool(cache.get(key)[1])  # theine has no lookup that leaves no trace

    return Policy("theine (W-TinyLFU)", lookup, store, resident)


@dataclass(frozen=True)
class Outcome:
    hit_ratio: float
    byte_hit_ratio: float
    spent: float
    total: float
    hot_resident: float


def replay(policy: Policy, trace: Trace, rng: random.Random) -> Outcome:
    """The trace through ``policy``, then the scan of 10x its capacity."""
    hits = hit_bytes = all_bytes = 0
    spent = total = 0.0
    costs, sizes = trace.costs, trace.sizes
    names = [f"k{key}" for key in range(len(costs))]
    for key in trace.requests:
        name = names[key]
        size = sizes[key]
        all_bytes += size
        total += costs[key]
        if policy.lookup(name):
            hits += 1
            hit_bytes += size
        else:
            spent += costs[key]
            policy.store(name, costs[key], size)
    # Key ids of the popular keys are their popularity ranks.
    ranked = names[: min(KEYS, len(names))]
    hot = [name for name in ranked if policy.resident(name)][:HOT_SET]
    for _ in range(10 * CAPACITY):
        key = trace.new_key(rng)
        name = f"k{key}"
        if not policy.lookup(name):
            policy.store(name, trace.costs[key], trace.sizes[key])
    kept = sum(1 for name in hot if policy.resident(name))
    return Outcome(
        hits / len(trace.requests),
        hit_bytes / all_bytes,
        spent,
        total,
        kept / len(hot) if hot else 0.0,
    )


def run(quick: bool = False) -> list[Row]:
    """The trace through each policy; rows of figures, then the targets."""
    trace = make_trace(50_000 if quick else 200_000)
    size = f"{len(trace.requests):,} requests, {CAPACITY:,} entries"
    outcomes: dict[str, Outcome] = {}
    rows: list[Row] = []
    for make in (tiercel_policy, lru_policy, theine_policy):
        policy = make()
        copy = Trace(list(trace.requests), list(trace.costs), list(trace.sizes))
        outcome = replay(policy, copy, random.Random(SEED + 1))
        outcomes[make.__name__] = outcome
        rows += [
            figure_row(f"trace: hit ratio, {policy.name}", outcome.hit_ratio * 100, "%", note=size),
            figure_row(f"trace: byte hit ratio, {policy.name}", outcome.byte_hit_ratio * 100, "%"),
            figure_row(
                f"trace: compute seconds spent on misses, {policy.name}",
                outcome.spent,
                "s",
                note=f"{outcome.spent / outcome.total:.1%} of the trace's {outcome.total:.0f} s",
            ),
        ]
    ours, lru, theine = (
        outcomes["tiercel_policy"],
        outcomes["lru_policy"],
        outcomes["theine_policy"],
    )
    spent_ratio = ours.spent / lru.spent
    behind = (ours.hit_ratio - theine.hit_ratio) * 100
    rows += [
        figure_row(
            "trace: compute spent on misses, tiercel / LRU",
            spent_ratio,
            "x",
            target="<= 0.8x",
            met=spent_ratio <= 0.8,
            note=f"theine {theine.spent / lru.spent:.3f}x",
        ),
        figure_row(
            "trace: hit ratio, tiercel minus theine",
            behind,
            "pt",
            target=">= -1 pt",
            met=behind >= -1.0,
        ),
        figure_row(
            "trace: hot set resident after a one-off scan of 10x capacity, tiercel",
            ours.hot_resident * 100,
            "%",
            target=">= 90%",
            met=ours.hot_resident >= 0.9,
            note=(
                f"hot set: the {HOT_SET} most popular resident keys; LRU "
                f"{lru.hot_resident:.0%}, theine {theine.hot_resident:.0%}"
            ),
        ),
    ]
    return rows


if __name__ == "__main__":
    from bench.report import print_table

    began = time.monotonic()
    print_table(run(quick="--quick" in sys.argv[1:]), title="tiercel trace")
    print(f"({time.monotonic() - began:.1f} s)")
