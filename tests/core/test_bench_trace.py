"""The trace benchmark's workload is the one its docstring describes."""

from __future__ import annotations

import random
from collections import Counter

from bench import trace


def test_trace_shape() -> None:
    built = trace.make_trace(40_000, seed=5)
    scans = 40_000 // trace.SCAN_EVERY
    assert len(built.requests) == 40_000 + scans * trace.SCAN_KEYS
    counts = Counter(built.requests)
    scanned = [key for key in counts if key >= trace.KEYS]
    assert len(scanned) == scans * trace.SCAN_KEYS
    assert all(counts[key] == 1 for key in scanned)  # never asked for again
    assert counts[0] > counts[100] > counts.get(10_000, 0)  # Zipf: rank 0 is the most popular
    assert min(built.costs) >= 0.001 and max(built.costs) <= 0.1
    assert min(built.sizes) >= 1_000 and max(built.sizes) <= 50_000
    assert trace.make_trace(40_000, seed=5).requests == built.requests


def test_replay_counts_hits_and_compute() -> None:
    built = trace.Trace([0, 1, 0, 0, 1], [0.5, 0.25], [10, 30])
    outcome = trace.replay(trace.lru_policy(), built, random.Random(1))
    assert outcome.hit_ratio == 3 / 5
    assert outcome.byte_hit_ratio == 50 / 90
    assert outcome.spent == 0.75
    assert outcome.total == 0.5 * 3 + 0.25 * 2
