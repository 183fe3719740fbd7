"""Printing benchmark rows as one table."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from bench._harness import Row


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "us":
        return f"{value:,.2f} us"
    return f"{value:,.3g} {unit}"


def table(rows: Iterable[Row], title: str = "tiercel benchmarks") -> Table:
    """Rows as a rich table: ours, the peer, the ratio of medians and its spread."""
    out = Table(title=title, header_style="bold")
    for column in ("benchmark", "tiercel", "peer", "peer value", "ratio", "spread",
                   "target", "met"):
        out.add_column(column, justify="left" if column in ("benchmark", "peer") else "right")
    for row in rows:
        ratio = row.get("ratio")
        spread = (f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}" if ratio is not None
                  else (f"{row['ratio_min']:.3g}-{row['ratio_max']:.3g}"
                        if row["ratio_min"] != row["ratio_max"] else ""))
        met = {True: "yes", False: "NO", None: ""}[row.get("met")]
        out.add_row(row["benchmark"], _fmt(row["tiercel"], row["unit"]), row["peer"],
                    _fmt(row.get("peer_value"), row["unit"]),
                    f"{ratio:.2f}x" if ratio is not None else "", spread, row["target"], met)
    return out


def print_table(rows: Iterable[Row], title: str = "tiercel benchmarks") -> None:
    """Print rows to the terminal."""
    Console().print(table(rows, title))
