"""The reliability suite: every test records figures; the session prints them as one table.

``make reliability`` runs this folder alone; ``make test`` (and CI) runs it with
the rest. The table is also written to results/reliability.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_FIGURES: list[dict[str, Any]] = []


class Figures:
    """What one test measured: ``record(name, value, unit, ok, note)``."""

    def __init__(self, test: str) -> None:
        self.test = test

    def record(
        self, name: str, value: Any, unit: str = "", ok: bool | None = None, note: str = ""
    ) -> None:
        _FIGURES.append(
            {
                "test": self.test,
                "figure": name,
                "value": value,
                "unit": unit,
                "ok": ok,
                "note": note,
            }
        )


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    yield Figures(request.node.name)


@pytest.fixture(autouse=True)
def _restore_client_runtime() -> Iterator[None]:
    """A test that points the client at private servers must not leak that to others."""
    yield
    import sys

    runtime = sys.modules.get("tiercel.tasks.runtime")
    if runtime is not None:
        runtime.shutdown()  # rebuilt from the session settings on next use


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    writer = terminalreporter
    writer.section("tiercel reliability figures")
    width = max(len(f"{row['figure']}") for row in _FIGURES)
    for row in _FIGURES:
        value = row["value"]
        shown = (
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value)
        )
        mark = {True: "ok", False: "FAILED", None: ""}[row["ok"]]
        writer.line(
            f"{row['figure']:<{width}}  {shown:>14} {row['unit']:<8} {mark:<6} {row['note']}"
        )
    Path("results").mkdir(exist_ok=True)
    Path("results/reliability.json").write_text(
        json.dumps({"taken_at": time.time(), "figures": _FIGURES}, indent=2)
    )
