"""What every benchmark module shares: timing loops, rows, a private redis-server."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from tiercel.core.embedded.redis_server import RedisServer

Row = dict[str, Any]


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    """Microseconds per call of ``fn`` over ``calls`` calls (GC off during the loop)."""
    loop = range(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in loop:
            fn()
        elapsed = time.perf_counter() - started
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / calls * 1e6


def side_by_side(
    ours: Callable[[], Any],
    peer: Callable[[], Any],
    *,
    calls: int,
    repeats: int,
    slices: int = 10,
) -> tuple[list[float], list[float]]:
    """Microseconds per call of ours and the peer, ``repeats`` figures each.

    Each repeat runs ``calls`` calls of each in ``slices`` slices, ours and the
    peer's alternating, and its figure is the fastest slice of each: every call
    measured here repeats one identical operation, so a slower slice is time the
    machine spent elsewhere (another process, a neighbour on the host), which only
    ever adds. Alternating in short slices lets drift hit both sides alike.
    """
    ours_us: list[float] = []
    peer_us: list[float] = []
    per_slice = max(1, calls // slices)
    per_call_us(ours, max(1, calls // 10))  # warm both
    per_call_us(peer, max(1, calls // 10))
    for _ in range(repeats):
        fastest_ours = fastest_peer = float("inf")
        for _ in range(slices):
            fastest_ours = min(fastest_ours, per_call_us(ours, per_slice))
            fastest_peer = min(fastest_peer, per_call_us(peer, per_slice))
        ours_us.append(fastest_ours)
        peer_us.append(fastest_peer)
    return ours_us, peer_us


def ratio_row(
    benchmark: str,
    ours: list[float],
    peer_name: str,
    peer: list[float],
    *,
    target: float | None = None,
    unit: str = "us",
    note: str = "",
) -> Row:
    """One table row: medians, the ratio of medians, the spread of per-repeat ratios."""
    ratios = [a / b for a, b in zip(ours, peer, strict=True) if b > 0]
    ratio = statistics.median(ours) / statistics.median(peer) if statistics.median(peer) else 0.0
    return {
        "benchmark": benchmark,
        "tiercel": statistics.median(ours),
        "peer": peer_name,
        "peer_value": statistics.median(peer),
        "unit": unit,
        "ratio": ratio,
        "ratio_min": min(ratios) if ratios else ratio,
        "ratio_max": max(ratios) if ratios else ratio,
        "repeats": len(ours),
        "target": f"<= {target:g}x" if target is not None else "",
        "met": None if target is None else ratio <= target,
        "note": note,
    }


def figure_row(
    benchmark: str,
    value: float,
    unit: str,
    *,
    target: str = "",
    met: bool | None = None,
    note: str = "",
    spread: tuple[float, float] | None = None,
) -> Row:
    """A row that is a figure, not a ratio against a peer (a count, a percentage)."""
    low, high = spread if spread is not None else (value, value)
    return {
        "benchmark": benchmark,
        "tiercel": value,
        "peer": "",
        "peer_value": None,
        "unit": unit,
        "ratio": None,
        "ratio_min": low,
        "ratio_max": high,
        "repeats": 1,
        "target": target,
        "met": met,
        "note": note,
    }


@contextlib.contextmanager
def redis_server(**kwargs: Any) -> Iterator[RedisServer]:
    """A private redis-server for one benchmark module."""
    kwargs.setdefault("maxmemory", 512 * 2**20)
    kwargs.setdefault("maxmemory_policy", "allkeys-lru")
    with RedisServer(**kwargs) as server:
        yield server


def run_child(module: str, quick: bool, timeout: float) -> list[Row]:
    """Run ``python -m <module> --child [--quick]`` in a fresh interpreter; return its rows.

    A benchmark that needs worker processes starts its own servers and fleet in the
    child, so its Celery app is configured for them alone.
    """
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = os.path.join(os.getcwd(), ".tiercel", "bench-run")
    command = [sys.executable, "-m", module, "--child", *(["--quick"] if quick else [])]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{done.stderr[-4000:]}")
    rows: list[Row] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows
