"""The multi-client Zipf workload ``tiercel bench`` models, against plain Celery.

Runs ``tiercel bench --json`` with its defaults (1,000 keys, Zipf 1.1, 20 ms
of compute per call, 2,000 requests from 16 client threads, an embedded fleet
of 2 nodes x 2 prefork processes) in a fresh interpreter with no ``TIERCEL_*``
URL set, so the command starts and stops its own fleet, as a user's first run
does. Rows: throughput against plain Celery on the same fleet (target >= 4.5x)
and wasted computations, the computations beyond one per distinct key
(target 0).

Run: ``python -m bench.workload``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench._harness import Row, figure_row

#: The speed-up over plain Celery the workload must reach.
TARGET_SPEEDUP = 4.5


def measure(quick: bool) -> dict[str, Any]:
    """The figures of one ``tiercel bench --json`` run (fewer requests when ``quick``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = os.path.join(os.getcwd(), ".tiercel", "bench-workload")
    command = [sys.executable, "-m", "tiercel.workers.cli", "bench", "--json"]
    if quick:
        command += ["--requests", "500"]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tiercel bench failed:\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def rows_of(figures: dict[str, Any]) -> list[Row]:
    """The module's rows from ``tiercel bench``'s figures."""
    workload = figures["workload"]
    cached = figures["tiercel"]
    plain = figures["plain"]
    shape = (
        f"{workload['requests']:,} requests over {workload['keys']:,} keys, "
        f"Zipf {workload['zipf']:g}, {workload['compute_ms']} ms compute, "
        f"{workload['concurrency']} client threads"
    )
    failures = cached["failed"] + cached["wrong"] + plain["failed"] + plain["wrong"]
    speedup = float(figures.get("speedup", 0.0))
    wasted = cached["computations"] - cached["distinct_keys"]
    note = (
        f"{cached['throughput']:,.0f} vs {plain['throughput']:,.0f} req/s; "
        f"{cached['distinct_keys']} distinct keys, {cached['computations']} computations"
    )
    if failures:
        note += f"; {failures} failed or wrong: {cached['first_error'] or plain['first_error']}"
    return [
        {
            **figure_row(
                f"tiercel bench workload ({shape}): tiercel throughput / plain Celery",
                speedup,
                "x",
                target=f">= {TARGET_SPEEDUP:g}x faster",
                met=speedup >= TARGET_SPEEDUP and failures == 0,
                note=note,
            ),
            "ratio": speedup,
            "peer": "plain Celery task",
        },
        figure_row(
            f"tiercel bench workload ({shape}): wasted computations",
            float(wasted),
            "computations",
            target="== 0",
            met=wasted == 0 and failures == 0,
            note="computations beyond one per distinct key (no invalidations)",
        ),
    ]


def run(quick: bool = False) -> list[Row]:
    """Rows of the workload; see the module docstring."""
    return rows_of(measure(quick))


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
