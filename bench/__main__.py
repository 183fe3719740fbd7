"""``make bench``: every benchmark, side by side with its peers, in one table.

Each module exposes ``run(quick: bool = False) -> list[Row]``. A run writes
``results/bench-<timestamp>.json`` and ``results/bench-latest.json`` (with the
machine the figures came from) and PNG charts into ``results/``, then compares
itself with ``results/bench-baseline.json`` (else the previous latest run) and
lists every row that moved beyond its measured spread (``bench/regression.py``).

``--quick`` shrinks every loop for a smoke run (kept apart: ``bench-quick-*``);
``--only NAME`` runs some modules and replaces only their rows in the latest
run; ``--save-baseline`` makes this run the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import Row, figure_row
from bench.report import print_table

MODULES = (
    "core_cache",
    "hit_path",
    "levels_memory",
    "pools",
    "metrics",
    "celery_compute",
    "async_submit",
    "workload",
    "scaling",
    "tuning",
    "trace",
)
RESULTS = Path("results")
#: Timestamped runs kept in ``results/``; older ones are deleted (the folder stays bounded).
KEEP_RUNS = 20


def _levels_memory(quick: bool) -> list[Row]:
    from bench import levels_memory

    # 400,000 inserts of 10 B-10 KiB churn a 32 MiB level ~60 times over: the peak
    # is reached long before the end, so more inserts only cost time.
    n = 200_000 if quick else 400_000
    figures = levels_memory.run(n=n)
    ratio = figures["peak_ratio"]
    return [
        figure_row(
            f"BytesLevel real memory at peak / bound, {n:,} inserts of 10 B-10 KB",
            ratio,
            "x",
            target="<= 1.05x",
            met=ratio <= 1.05,
            note=f"final {figures['final_ratio']:.3f}x",
        )
    ]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def run_modules(names: list[str], quick: bool) -> tuple[list[Row], dict[str, float]]:
    """Rows of every named module (missing modules are skipped) and each one's seconds."""
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for name in names:
        module_started = time.perf_counter()
        if name == "levels_memory":
            produced = _levels_memory(quick)
        else:
            try:
                module = importlib.import_module(f"bench.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"bench.{name}":
                    raise
                print(f"bench: {name} is not there yet: skipped", file=sys.stderr)
                continue
            produced = module.run(quick=quick)
        for row in produced:
            row["module"] = name
        rows.extend(produced)
        seconds[name] = round(time.perf_counter() - module_started, 1)
        print(f"bench: {name} done in {seconds[name]:.1f}s", file=sys.stderr, flush=True)
    return rows, seconds


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # readers never see half a file


#: The name :func:`save` gives a run (``bench-20261208-033911[-quick].json``): only these
#: are pruned. A run copied under a name of its own (``bench-2026-12-08.json``, the file
#: the README's figures cite) is never deleted.
_TIMESTAMPED = re.compile(r"bench-\d{8}-\d{6}(-quick)?\.json")


def _prune(results: Path, keep: int = KEEP_RUNS) -> None:
    runs = sorted(
        path for path in results.glob("bench-*.json") if _TIMESTAMPED.fullmatch(path.name)
    )
    for old in runs[:-keep]:
        old.unlink(missing_ok=True)


def save(record: dict[str, Any], results: Path, *, only: bool) -> Path:
    """Write the run (timestamped and as the latest); returns the latest file.

    A partial run (``--only``) replaces its modules' rows in the previous latest run,
    so the latest file always holds every module.
    """
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(record["taken_at"]))
    quick = "-quick" if record["quick"] else ""
    _write_json(results / f"bench-{stamp}{quick}.json", record)
    latest = results / f"bench{quick}-latest.json"
    merged = record
    if only and latest.exists():
        from bench.regression import load

        previous = load(latest)
        ran = set(record["modules"])
        merged = {
            **record,
            "modules": sorted(ran | set(previous.get("modules", []))),
            "rows": [row for row in previous["rows"] if row.get("module") not in ran]
            + record["rows"],
        }
    _write_json(latest, merged)
    _prune(results)
    return latest


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, save, plot, compare with the baseline."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small loops: a smoke run")
    parser.add_argument("--only", choices=MODULES, action="append", help="run only these")
    parser.add_argument(
        "--save-baseline",
        action="store_true",
        help="also write this run to results/bench-baseline.json",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder of results (default results/)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    parser.add_argument(
        "--fail-on-worse", action="store_true", help="exit 1 when a row got worse than the baseline"
    )
    args = parser.parse_args(argv)
    from bench import regression

    started = time.perf_counter()
    names = args.only or list(MODULES)
    # Read the reference before this run replaces the latest file.
    reference_path = regression.reference_file(args.results, quick=args.quick)
    reference = regression.load(reference_path) if reference_path is not None else None
    rows, seconds = run_modules(names, args.quick)
    print_table(rows)
    record = {
        "taken_at": time.time(),
        "quick": args.quick,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "module_seconds": seconds,
        "modules": sorted(seconds),
        "rows": rows,
    }
    latest = save(record, args.results, only=bool(args.only))
    print(
        f"bench: {len(rows)} rows in {record['seconds']:.0f}s written to {latest}", file=sys.stderr
    )
    if args.save_baseline:
        _write_json(args.results / "bench-baseline.json", regression.load(latest))
        print(f"bench: baseline saved to {args.results / 'bench-baseline.json'}", file=sys.stderr)
    if not args.no_plots:
        from bench.plots import write_plots

        written = write_plots(regression.load(latest)["rows"], args.results)
        print(f"bench: {len(written)} chart(s) in {args.results}/", file=sys.stderr)
    worse = False
    if reference is not None and reference_path is not None:
        changes = regression.compare(rows, reference["rows"])
        print("\n".join(regression.report(changes, str(reference_path))))
        worse = any(change.verdict in ("worse", "target missed") for change in changes)
    missed = [row["benchmark"] for row in rows if row.get("met") is False]
    if missed:
        print(f"bench: {len(missed)} target(s) missed: " + "; ".join(missed), file=sys.stderr)
    return 1 if worse and args.fail_on_worse else 0


if __name__ == "__main__":
    sys.exit(main())
