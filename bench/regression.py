"""Did anything change since the last run, beyond the noise we measured?

Rows are matched by ``(module, benchmark, peer)``. The compared quantity is the
ratio to the peer when a row has one (both sides ran in the same process at the
same time, so machine drift cancels out), else the row's own figure.

The rule: each row carries the spread of its repeats (``ratio_min`` ..
``ratio_max``). A row is flagged when its new median lies outside the
*reference* spread widened by ``margin`` times the reference median on each
side, **and** the new run's own spread does not overlap the reference spread.
The spread within one run understates the spread between runs (the machine's
load moves between runs, not within a few seconds), hence the margin (20 %);
and a burst of load on a shared machine moves some repeats, not all of them,
hence the second condition: a real change moves every repeat. A row measured
once (no spread) is judged by the first condition alone. A target that was
met and now is missed is flagged whatever the spread says.

Run ``python -m bench.regression NEW [REFERENCE]`` to compare two saved files,
or ``python -m bench.regression --promote results/bench-latest.json`` to make a
saved run the baseline without measuring again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = dict[str, Any]

#: Default widening of the reference spread, as a fraction of the reference median.
MARGIN = 0.20


@dataclass(frozen=True)
class Change:
    """One row whose new figure lies outside the reference's widened spread."""

    module: str
    benchmark: str
    peer: str
    quantity: str  # "ratio" or the unit of a figure
    old: float
    old_low: float
    old_high: float
    new: float
    verdict: str  # "better", "worse", "higher", "lower", "target missed"

    def describe(self) -> str:
        """One line for the terminal."""
        peer = f" vs {self.peer}" if self.peer else ""
        change = (self.new / self.old - 1) * 100 if self.old else float("inf")
        return (
            f"[{self.module}] {self.benchmark}{peer}: {self.quantity} {self.old:.3g} "
            f"(spread {self.old_low:.3g}-{self.old_high:.3g}) -> {self.new:.3g} "
            f"({change:+.0f}%): {self.verdict}"
        )


def row_key(row: Row) -> tuple[str, str, str]:
    """How a row is recognised across runs."""
    return (str(row.get("module", "")), str(row["benchmark"]), str(row.get("peer") or ""))


def compared(row: Row) -> tuple[float, float, float, str] | None:
    """(median, low, high, quantity) of the figure a row is judged by, or None."""
    if row.get("ratio") is not None:
        return float(row["ratio"]), float(row["ratio_min"]), float(row["ratio_max"]), "ratio"
    value = row.get("tiercel")
    if not isinstance(value, int | float):
        return None
    low = row.get("ratio_min", value)
    high = row.get("ratio_max", value)
    return float(value), float(min(low, value)), float(max(high, value)), str(row.get("unit", ""))


def better_direction(row: Row) -> str | None:
    """``"higher"`` or ``"lower"`` when the row says which way is better, else None."""
    target = str(row.get("target") or "")
    if target.startswith(">="):
        return "higher"
    if target.startswith(("<=", "==")):
        return "lower" if target.startswith("<=") else None
    if row.get("ratio") is not None:
        return "lower"  # a ratio without a target is tiercel time / peer time
    return None


def compare(
    new_rows: Iterable[Row], old_rows: Iterable[Row], *, margin: float = MARGIN
) -> list[Change]:
    """Rows of ``new_rows`` that moved beyond the widened spread of ``old_rows``."""
    reference = {row_key(row): row for row in old_rows}
    changes: list[Change] = []
    for row in new_rows:
        old_row = reference.get(row_key(row))
        if old_row is None:
            continue
        new, old = compared(row), compared(old_row)
        if new is None or old is None or new[3] != old[3]:
            continue
        old_median, old_low, old_high, quantity = old
        slack = margin * abs(old_median)
        module, benchmark, peer = row_key(row)
        if old_row.get("met") is True and row.get("met") is False:
            changes.append(
                Change(
                    module,
                    benchmark,
                    peer,
                    quantity,
                    old_median,
                    old_low,
                    old_high,
                    new[0],
                    "target missed",
                )
            )
            continue
        if old_low - slack <= new[0] <= old_high + slack:
            continue
        if new[1] <= old_high and new[2] >= old_low:
            continue  # some repeats still fall within the old spread: noise, not a change
        moved = "higher" if new[0] > old_high else "lower"
        direction = better_direction(row)
        verdict = moved if direction is None else ("better" if moved == direction else "worse")
        changes.append(
            Change(
                module, benchmark, peer, quantity, old_median, old_low, old_high, new[0], verdict
            )
        )
    return changes


def reference_file(results: Path, *, quick: bool = False) -> Path | None:
    """The run to compare with: the committed baseline, else the previous latest run."""
    if not quick:
        baseline = results / "bench-baseline.json"
        if baseline.exists():
            return baseline
    latest = results / ("bench-quick-latest.json" if quick else "bench-latest.json")
    return latest if latest.exists() else None


def load(path: Path) -> dict[str, Any]:
    """A saved run (the JSON ``python -m bench`` writes)."""
    record: dict[str, Any] = json.loads(path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ValueError(f"{path} is not a saved benchmark run (no 'rows' list)")
    return record


def report(changes: list[Change], reference: str) -> list[str]:
    """Lines to print after a run."""
    if not changes:
        return [f"bench: no change beyond the measured noise against {reference}"]
    worse = sum(1 for change in changes if change.verdict in ("worse", "target missed"))
    lines = [
        f"bench: {len(changes)} row(s) changed beyond the measured noise against "
        f"{reference} ({worse} worse):"
    ]
    lines.extend("  " + change.describe() for change in changes)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Compare two saved runs, or promote a saved run to the baseline."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.regression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("new", nargs="?", type=Path, help="a saved run")
    parser.add_argument(
        "reference", nargs="?", type=Path, help="the run to compare with (default: the baseline)"
    )
    parser.add_argument(
        "--promote",
        type=Path,
        metavar="RUN",
        help="copy RUN to results/bench-baseline.json and stop",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        help=f"widening of the reference spread (default {MARGIN})",
    )
    parser.add_argument("--fail-on-worse", action="store_true", help="exit 1 when a row got worse")
    args = parser.parse_args(argv)
    if args.promote is not None:
        load(args.promote)  # refuse anything that is not a saved run
        target = args.promote.parent / "bench-baseline.json"
        shutil.copyfile(args.promote, target)
        print(f"bench: {args.promote} is now the baseline ({target})")
        return 0
    if args.new is None:
        parser.error("give a saved run to compare, or --promote RUN")
    reference = args.reference or reference_file(args.new.parent)
    if reference is None or reference.resolve() == args.new.resolve():
        print("bench: nothing to compare with", file=sys.stderr)
        return 0
    changes = compare(load(args.new)["rows"], load(reference)["rows"], margin=args.margin)
    print("\n".join(report(changes, str(reference))))
    if args.fail_on_worse and any(c.verdict in ("worse", "target missed") for c in changes):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
