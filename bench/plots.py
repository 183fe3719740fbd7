"""PNG charts of a benchmark run (matplotlib, Agg backend: no display needed).

* ``ratios-<module>.png``: per module, tiercel / peer for every row with a peer,
  the bar at the median and a line over the spread of the repeats, the target
  as a mark; green met, red missed, grey no target.
* ``targets.png``: every row with a numeric target, as figure / target (left of
  1 is met), so one picture says which targets hold.
* ``latency-by-source.png``: end-to-end request latency (p50 and p99) by where
  the answer came from, against plain Celery, from the workload rows.

Run ``python -m bench.plots results/bench-latest.json [OUT_DIR]``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt

Row = dict[str, Any]

_COLOURS = {True: "#2e7d32", False: "#c62828", None: "#78909c"}
_NUMBER = re.compile(r"([<>=]=)\s*([0-9.]+)")


def _label(row: Row, width: int = 70) -> str:
    text = str(row["benchmark"]) + (f"  vs {row['peer']}" if row.get("peer") else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def target_value(row: Row) -> tuple[str, float] | None:
    """The target's comparison and number (``("<=", 1.15)``), or None."""
    match = _NUMBER.search(str(row.get("target") or ""))
    if match is None:
        return None
    return match.group(1), float(match.group(2))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "rows"


def ratio_chart(rows: list[Row], title: str, path: Path) -> Path | None:
    """One horizontal bar per ratio row; None when there is none."""
    rows = [row for row in rows if row.get("ratio") is not None]
    if not rows:
        return None
    height = 1.2 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(11, height))
    positions = list(range(len(rows)))[::-1]
    ratios = [row["ratio"] for row in rows]
    low = [max(0.0, row["ratio"] - row["ratio_min"]) for row in rows]
    high = [max(0.0, row["ratio_max"] - row["ratio"]) for row in rows]
    ax.barh(
        positions,
        ratios,
        xerr=[low, high],
        capsize=3,
        color=[_COLOURS[row.get("met")] for row in rows],
        alpha=0.85,
    )
    for pos, row in zip(positions, rows, strict=True):
        target = target_value(row)
        if target is not None:
            ax.plot([target[1]], [pos], marker="|", markersize=18, color="black")
        ax.annotate(
            f"{row['ratio']:.2f}x",
            (row["ratio_max"], pos),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_yticks(positions, [_label(row) for row in rows], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.6, linestyle=":")
    if max(ratios) / max(min(ratios), 1e-9) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("ratio of medians (line: spread over repeats; | : target; dotted: 1x)")
    ax.set_title(title, fontsize=11)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def targets_chart(rows: list[Row], path: Path) -> Path | None:
    """Every row with a numeric target as figure / target (<= 1 is met)."""
    points: list[tuple[str, float, bool | None]] = []
    for row in rows:
        target = target_value(row)
        value = row.get("ratio") if row.get("ratio") is not None else row.get("tiercel")
        if target is None or not isinstance(value, int | float):
            continue
        comparison, number = target
        if comparison == ">=":
            score = number / value if value else float("inf")
        elif comparison == "==":
            score = 1.0 if value == number else 2.0
        else:
            score = value / number if number else (0.0 if value == 0 else float("inf"))
        points.append(
            (f"[{row.get('module', '')}] {_label(row, 62)}", min(score, 10.0), row.get("met"))
        )
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.4 * len(points)))
    positions = list(range(len(points)))[::-1]
    ax.barh(positions, [p[1] for p in points], color=[_COLOURS[p[2]] for p in points], alpha=0.85)
    ax.axvline(1.0, color="black", linewidth=1.0)
    ax.set_yticks(positions, [p[0] for p in points], fontsize=8)
    ax.set_xlabel("figure / target, oriented so that left of 1 meets the target (capped at 10)")
    ax.set_title("every target, one scale", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_chart(rows: list[Row], path: Path) -> Path | None:
    """p50 and p99 latency by source from the workload rows (``latency_source`` set)."""
    found = [row for row in rows if row.get("latency_source")]
    if not found:
        return None
    labels = [row["latency_source"] for row in found]
    p50 = [float(row["tiercel"]) for row in found]
    p99 = [float(row["p99"] if row.get("p99") is not None else row["tiercel"]) for row in found]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    xs = range(len(found))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50", color="#1565c0")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99", color="#90caf9")
    for x, (a, b) in enumerate(zip(p50, p99, strict=True)):
        ax.annotate(f"{a:.3g}", (x - 0.2, a), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{b:.3g}", (x + 0.2, b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), labels, fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("request latency, ms (log)")
    workload = str(found[0].get("workload", ""))
    ax.set_title("end-to-end latency by where the answer came from\n" + workload, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: Iterable[Row], out: Path) -> list[Path]:
    """Every chart of ``rows`` into ``out``; returns the files written."""
    rows = list(rows)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    modules: dict[str, list[Row]] = {}
    for row in rows:
        modules.setdefault(str(row.get("module", "rows")), []).append(row)
    for module, module_rows in modules.items():
        made = ratio_chart(
            module_rows,
            f"{module}: tiercel / peer (lower is faster unless the target says >=)",
            out / f"ratios-{_slug(module)}.png",
        )
        if made is not None:
            written.append(made)
    for made in (
        targets_chart(rows, out / "targets.png"),
        latency_chart(rows, out / "latency-by-source.png"),
    ):
        if made is not None:
            written.append(made)
    return written


if __name__ == "__main__":
    import json

    record = json.loads(Path(sys.argv[1]).read_text())
    target_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(sys.argv[1]).parent
    for made_path in write_plots(record["rows"], target_dir):
        print(made_path)
