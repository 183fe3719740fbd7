"""The benchmark suite's bookkeeping: regression rule, saved runs, report, charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import regression
from bench.__main__ import save
from bench._harness import figure_row, ratio_row


def _ratio(name: str, ours: list[float], peer: list[float], **kw: Any) -> dict[str, Any]:
    row = ratio_row(name, ours, "peer", peer, **kw)
    row["module"] = "m"
    return row


def _record(
    rows: list[dict[str, Any]],
    *,
    quick: bool = False,
    at: float = 1.7e9,
    modules: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "taken_at": at,
        "quick": quick,
        "machine": {"cpus": 2},
        "seconds": 1.0,
        "modules": modules or sorted({str(r["module"]) for r in rows}),
        "rows": rows,
    }


def test_a_change_within_the_widened_spread_is_not_flagged() -> None:
    old = _ratio("hit", [1.0, 1.1, 1.2], [1.0, 1.0, 1.0])  # ratio 1.1, spread 1.0-1.2
    new = _ratio("hit", [1.3, 1.3, 1.3], [1.0, 1.0, 1.0])  # 1.3 <= 1.2 + 0.15 * 1.1
    assert regression.compare([new], [old]) == []


def test_a_slower_ratio_beyond_the_spread_is_worse() -> None:
    old = _ratio("hit", [1.0, 1.1, 1.2], [1.0, 1.0, 1.0])
    new = _ratio("hit", [1.5, 1.5, 1.5], [1.0, 1.0, 1.0])
    [change] = regression.compare([new], [old])
    assert change.verdict == "worse" and change.new == pytest.approx(1.5)
    assert "hit vs peer" in change.describe() and "+36%" in change.describe()


def test_direction_follows_the_target() -> None:
    old = _ratio("speed-up", [10.0, 10.0], [1.0, 1.0])
    old["target"] = ">= 8x faster"
    new = dict(old, ratio=5.0, ratio_min=5.0, ratio_max=5.0, met=False)
    old["met"] = True
    [change] = regression.compare([new], [old])
    assert change.verdict == "target missed"
    faster = dict(old, ratio=20.0, ratio_min=19.0, ratio_max=21.0)
    [change] = regression.compare([faster], [old])
    assert change.verdict == "better"


def test_figures_without_a_peer_use_their_own_spread() -> None:
    old = figure_row("p99", 2.0, "ms", spread=(1.0, 3.0))
    new = figure_row("p99", 3.25, "ms", spread=(3.0, 4.0))
    assert regression.compare([new], [old]) == []  # 3.25 <= 3 + 0.15 * 2
    new = figure_row("p99", 4.0, "ms")
    [change] = regression.compare([new], [old])
    assert change.verdict == "higher" and change.quantity == "ms"


def test_rows_match_by_module_benchmark_and_peer() -> None:
    old = _ratio("hit", [1.0], [1.0])
    other_module = dict(_ratio("hit", [9.0], [1.0]), module="n")
    other_peer = dict(_ratio("hit", [9.0], [1.0]), peer="someone else")
    assert regression.compare([other_module, other_peer], [old]) == []


def test_reference_prefers_the_baseline(tmp_path: Path) -> None:
    assert regression.reference_file(tmp_path) is None
    (tmp_path / "bench-latest.json").write_text("{}")
    assert regression.reference_file(tmp_path) == tmp_path / "bench-latest.json"
    (tmp_path / "bench-baseline.json").write_text("{}")
    assert regression.reference_file(tmp_path) == tmp_path / "bench-baseline.json"
    assert regression.reference_file(tmp_path, quick=True) is None  # quick runs stay apart


def test_save_writes_timestamped_and_latest_and_merges_partial_runs(tmp_path: Path) -> None:
    first = _ratio("a", [1.0], [1.0])
    second = dict(_ratio("b", [2.0], [1.0]), module="n")
    save(_record([first, second]), tmp_path, only=False)
    rerun = _ratio("a", [3.0], [1.0])
    latest = save(_record([rerun], at=1.7e9 + 5), tmp_path, only=True)
    merged = json.loads(latest.read_text())
    assert {(r["module"], r["ratio"]) for r in merged["rows"]} == {("n", 2.0), ("m", 3.0)}
    assert merged["modules"] == ["m", "n"]
    assert len(list(tmp_path.glob("bench-2*.json"))) == 2
    quick = save(_record([first], quick=True, at=1.7e9 + 9), tmp_path, only=False)
    assert quick.name == "bench-quick-latest.json"
    assert json.loads(latest.read_text())["rows"] == merged["rows"]  # untouched by quick


def test_promote_and_compare_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.json"
    new = tmp_path / "new.json"
    old.write_text(json.dumps(_record([_ratio("hit", [1.0, 1.0], [1.0, 1.0])])))
    new.write_text(json.dumps(_record([_ratio("hit", [2.0, 2.0], [1.0, 1.0])])))
    assert regression.main(["--promote", str(old)]) == 0
    assert (tmp_path / "bench-baseline.json").read_text() == old.read_text()
    assert regression.main([str(new), "--fail-on-worse"]) == 1
    assert "worse" in capsys.readouterr().out
    assert regression.main([str(old), str(old)]) == 0


def test_markdown_and_charts(tmp_path: Path) -> None:
    from bench.plots import write_plots
    from bench.report import markdown

    rows = [
        _ratio("hit | fast", [1.0, 1.2], [1.0, 1.0], target=1.15),
        dict(figure_row("stampede p99", 3.0, "ms", target="<= 5 ms", met=True), module="m"),
        dict(
            figure_row("latency p50, local memory", 0.01, "ms"),
            module="t",
            latency_source="local memory",
            p99=0.2,
        ),
    ]
    page = markdown(_record(rows))
    assert "| hit \\| fast |" in page and "2 CPUs" in page and "make bench" in page
    written = {path.name for path in write_plots(rows, tmp_path)}
    assert written == {"ratios-m.png", "targets.png", "latency-by-source.png"}
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_noisy_burst_that_overlaps_the_old_spread_is_not_flagged() -> None:
    old = _ratio("hit", [1.0, 1.1, 1.2], [1.0, 1.0, 1.0])  # spread 1.0-1.2
    new = _ratio("hit", [1.1, 1.6, 1.9], [1.0, 1.0, 1.0])  # median 1.6, one repeat at 1.1
    assert regression.compare([new], [old]) == []


def test_saving_prunes_old_timestamped_runs_and_never_a_named_one(tmp_path: Path) -> None:
    from bench.__main__ import KEEP_RUNS

    named = [tmp_path / "bench-2026-11-26.json", tmp_path / "bench-2026-12-08.json"]
    for path in named:
        path.write_text("{}")
    for second in range(KEEP_RUNS + 3):
        save(_record([], at=1.7e9 + second), tmp_path, only=False)
    timestamped = sorted(p.name for p in tmp_path.glob("bench-2*.json") if p not in named)
    assert len(timestamped) == KEEP_RUNS
    assert all(path.exists() for path in named)
