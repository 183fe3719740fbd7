"""Memory benchmark of the bytes level: is ``max_bytes`` an honest bound?

Inserts ``n`` values of random sizes (10 B to 10 KiB) into a BytesLevel bounded at
``max_bytes`` while tracemalloc traces every allocation, then compares the peak and
final traced memory with the bound. The level charges each entry
``len(value) + 33 + len(key) + ENTRY_OVERHEAD (+ EXPIRY_OVERHEAD with a ttl, +
COST_OVERHEAD under the cost policy, the default)``; if
those constants are honest the traced memory stays within 5% of ``max_bytes``.

Run: ``python -m bench.levels_memory [n] [max_bytes] [cost|lru]``.
"""

from __future__ import annotations

import gc
import random
import sys
import time
import tracemalloc
from typing import Any

from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.cache_level import COST
from tiercel.core.local.expiry import EXPIRY_OVERHEAD

MIN_SIZE = 10
MAX_SIZE = 10 * 1024


def run(
    n: int = 1_000_000,
    max_bytes: int = 32 * 2**20,
    ttl: float | None = 3600.0,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    policy: str = COST,
) -> dict[str, Any]:
    """Insert ``n`` random-size values into a BytesLevel of ``max_bytes``; return the figures.

    ``ttl`` is on by default so the expiry heap's memory is part of what is measured.
    """
    rng = random.Random(1234)
    # Values are distinct bytes objects copied out of one random buffer: generating
    # them costs a memcpy each instead of os.urandom, and their sizes are real.
    big = rng.randbytes(4 * max_size)
    span = len(big) - max_size
    sizes = [rng.randint(min_size, max_size) for _ in range(n)]
    view = memoryview(big)
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    level = BytesLevel("bench", max_entries=10 * n, max_bytes=max_bytes, ttl=ttl, policy=policy)
    for i in range(n):
        start = (i * 7919) % span
        level.set(f"key:{i}", bytes(view[start : start + sizes[i]]))
    elapsed = time.perf_counter() - started
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = level.stats
    # What the level charges minus its overhead constants is the keys' and values' memory.
    overhead = level.entry_overhead + (EXPIRY_OVERHEAD if ttl is not None else 0)
    payload = stats.bytes - stats.entries * overhead
    peak_payload = max_bytes - stats.entries * overhead
    final = current - base
    peak -= base
    return {
        "n": n,
        "max_bytes": max_bytes,
        "entries": stats.entries,
        "charged_bytes": stats.bytes,
        "evictions": stats.evictions,
        "peak_traced": peak,
        "final_traced": final,
        "peak_ratio": peak / max_bytes,
        "final_ratio": final / max_bytes,
        "overhead_constant": overhead,
        "measured_overhead_per_entry": (final - payload) / max(stats.entries, 1),
        "peak_overhead_per_entry": (peak - peak_payload) / max(stats.entries, 1),
        "seconds": elapsed,
    }


def main(argv: list[str]) -> None:
    """Run with optional ``n`` and ``max_bytes`` arguments and print a one-line result."""
    n = int(argv[0]) if argv else 1_000_000
    max_bytes = int(argv[1]) if len(argv) > 1 else 32 * 2**20
    r = run(n, max_bytes, policy=argv[2] if len(argv) > 2 else COST)
    verdict = "OK" if r["peak_ratio"] <= 1.05 else "OVER"
    print(
        f"levels_memory {verdict}: n={r['n']:,} bound={r['max_bytes'] / 2**20:.1f}MiB "
        f"peak={r['peak_traced'] / 2**20:.2f}MiB ({r['peak_ratio']:.3f}x) "
        f"final={r['final_traced'] / 2**20:.2f}MiB ({r['final_ratio']:.3f}x) "
        f"entries={r['entries']:,} evictions={r['evictions']:,} "
        f"overhead/entry={r['measured_overhead_per_entry']:.0f}B "
        f"(at peak {r['peak_overhead_per_entry']:.0f}B) "
        f"(charged {r['overhead_constant']}B) in {r['seconds']:.1f}s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
