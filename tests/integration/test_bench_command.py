"""``tiercel bench``: the workload generator on the session's fleet, with tiny numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tiercel.workers.cli import main
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def _bench(capsys: pytest.CaptureFixture[str], *options: str) -> dict[str, Any]:
    assert main(["bench", "--json", *options]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures: dict[str, Any] = json.loads(out[-1])
    return figures


def test_figures_add_up_against_plain_celery(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = _bench(
        capsys,
        "--requests",
        "80",
        "--keys",
        "20",
        "--zipf",
        "1.1",
        "--compute-ms",
        "5",
        "--concurrency",
        "4",
        "--max-seconds",
        "60",
    )
    cached, plain = figures["tiercel"], figures["plain"]
    assert figures["fleet"].startswith("existing fleet: ")  # TIERCEL_* point at the session's
    assert cached["failed"] == cached["wrong"] == 0 and not cached["stopped_early"]
    assert cached["completed"] == 80 and sum(cached["sources"].values()) == 80
    assert cached["invalidations"] == 0
    # Each distinct key is computed at most once without invalidations, and at least one was.
    assert 1 <= cached["computations"] <= cached["distinct_keys"] <= 20
    assert cached["computations_saved"] == 80 - cached["computations"]
    hits = cached["sources"]["memory"] + cached["sources"]["redis"]
    assert cached["hit_ratio"]["any cache"] == pytest.approx(hits / 80, abs=1e-3)
    # Every computation ran in a task that some submit enqueued.
    assert cached["sources"]["computed"] >= cached["computations"]
    assert set(cached["latency_ms"]) <= {"memory", "redis", "joined", "computed"}
    for percentiles in cached["latency_ms"].values():
        assert 0 <= percentiles["p50"] <= percentiles["p95"] <= percentiles["p99"]
    assert plain["completed"] == plain["computations"] == 80
    assert plain["failed"] == plain["wrong"] == 0
    assert figures["speedup"] == pytest.approx(cached["throughput"] / plain["throughput"], rel=0.02)


def test_invalidations_and_the_table(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "bench",
                "--requests",
                "60",
                "--keys",
                "5",
                "--compute-ms",
                "2",
                "--concurrency",
                "3",
                "--invalidate-rate",
                "0.3",
                "--no-plain",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "tiercel against plain Celery" in text and "existing fleet" in text
    assert "invalidations" in text
    figures = _bench(
        capsys,
        "--requests",
        "60",
        "--keys",
        "5",
        "--compute-ms",
        "2",
        "--concurrency",
        "3",
        "--invalidate-rate",
        "0.3",
        "--no-plain",
    )
    cached = figures["tiercel"]
    assert "plain" not in figures and "speedup" not in figures
    assert cached["completed"] == sum(cached["sources"].values()) == 60
    assert cached["invalidations"] > 0
    # An invalidated key may be computed again, never more often than that.
    assert 1 <= cached["computations"] <= cached["distinct_keys"] + cached["invalidations"]


def test_max_seconds_stops_the_phase(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    figures = _bench(
        capsys,
        "--requests",
        "500",
        "--keys",
        "500",
        "--zipf",
        "0",
        "--compute-ms",
        "40",
        "--concurrency",
        "2",
        "--max-seconds",
        "0.4",
        "--no-plain",
    )
    cached = figures["tiercel"]
    assert cached["stopped_early"]
    assert 0 < cached["completed"] < 500
    assert sum(cached["sources"].values()) == cached["completed"]
    assert cached["computations"] <= cached["distinct_keys"]


@pytest.mark.parametrize(
    "options",
    [
        ["--zipf", "-1"],
        ["--keys", "0"],
        ["--invalidate-rate", "1.5"],
        ["--max-seconds", "0"],
        ["--concurrency", "100000"],
        ["--requests", "0"],
    ],
)
def test_out_of_range_options_are_one_line_errors(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and options[0] in err[0]


def test_malformed_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--keys", "many"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keys" in err[0]
