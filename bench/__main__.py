"""``make bench``: every benchmark, side by side with its peers, in one table.

Each module exposes ``run(quick: bool = False) -> list[Row]``. Results are
written to ``results/bench-latest.json`` with the machine they came from.
``--quick`` shrinks every loop for a smoke run; ``--only NAME`` runs one module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import Row, figure_row
from bench.report import print_table

MODULES = ("core_cache", "levels_memory", "pools", "metrics", "celery_compute")
RESULTS = Path("results")


def _levels_memory(quick: bool) -> list[Row]:
    from bench import levels_memory

    n = 200_000 if quick else 1_000_000
    figures = levels_memory.run(n=n)
    ratio = figures["peak_ratio"]
    return [figure_row(f"BytesLevel real memory at peak / bound, {n:,} inserts of 10 B-10 KB",
                       ratio, "x", target="<= 1.05x", met=ratio <= 1.05,
                       note=f"final {figures['final_ratio']:.3f}x")]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small loops: a smoke run")
    parser.add_argument("--only", choices=MODULES, action="append", help="run only these")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only or MODULES:
        module_started = time.perf_counter()
        if name == "levels_memory":
            produced = _levels_memory(args.quick)
        else:
            try:
                module = importlib.import_module(f"bench.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"bench.{name}":
                    raise
                continue
            produced = module.run(quick=args.quick)
        for row in produced:
            row["module"] = name
        rows.extend(produced)
        print(f"bench: {name} done in {time.perf_counter() - module_started:.1f}s",
              file=sys.stderr, flush=True)
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    record = {"taken_at": time.time(), "quick": args.quick, "machine": machine(),
              "seconds": time.perf_counter() - started, "rows": rows}
    (RESULTS / "bench-latest.json").write_text(json.dumps(record, indent=2))
    missed = [row["benchmark"] for row in rows if row.get("met") is False]
    if missed:
        print(f"bench: {len(missed)} target(s) missed: " + "; ".join(missed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
