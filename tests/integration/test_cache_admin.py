"""`tiercel cache inspect` and `tiercel cache invalidate` on a real fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tiercel.workers.cli import main

TIERCEL = [sys.executable, "-m", "tiercel.workers.cli"]
SQUARE = "tiercel.tasks.examples.slow_square"
REPORT = "tiercel.tasks.examples.regional_report"


def tiercel(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIERCEL, *args],
        env=dict(os.environ),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def call(task: str, *args: str) -> dict[str, object]:
    result = tiercel("call", task, *args)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def inspect(task: str, *args: str) -> tuple[int, dict[str, object]]:
    result = tiercel("cache", "inspect", task, *args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def unique() -> str:
    return str(uuid.uuid4().int % 10**9)


def test_inspect_shows_where_a_value_lives_and_what_it_cost(fleet: object) -> None:
    n = unique()
    status, missing = inspect(SQUARE, n)
    assert status == 1 and missing["redis"] is None and missing["lease"] is None
    assert call(SQUARE, n)["source"] == "computed"
    status, found = inspect(SQUARE, n)
    assert status == 0
    assert found["key"] == missing["key"] and found["task"] == SQUARE
    stored = found["redis"]
    assert isinstance(stored, dict)
    assert stored["codec"] == "msgpack" and stored["bytes"] > 0
    assert 0 < stored["ttl_left"] <= 600
    assert stored["compute_seconds"] >= 0.01  # slow_square sleeps 10 ms
    assert stored["tags"] == []
    assert found["lease"] is None and found["inflight"] is None
    text = tiercel("cache", "inspect", SQUARE, n)
    assert text.returncode == 0
    assert f"key        {found['key']}" in text.stdout
    assert "msgpack" in text.stdout and "s left" in text.stdout


def test_invalidate_one_call_is_immediate_and_recomputes(fleet: object) -> None:
    n = unique()
    call(SQUARE, n)
    result = tiercel("cache", "invalidate", SQUARE, n)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("invalidated ")
    assert inspect(SQUARE, n)[0] == 1
    assert call(SQUARE, n)["source"] == "computed"


def test_a_tag_invalidation_says_what_it_will_do_and_asks_first(fleet: object) -> None:
    region = f"r{unique()}"
    for day in ("1", "2"):
        call(REPORT, json.dumps(region), day, "10")
    dry = tiercel("cache", "invalidate", "--tag", "reports", "--dry-run")
    assert dry.returncode == 1
    assert dry.stdout.startswith("would invalidate ") and "tagged 'reports'" in dry.stdout
    assert inspect(REPORT, json.dumps(region), "1", "10")[0] == 0, "a dry run changes nothing"
    declined = tiercel("cache", "invalidate", "--tag", "reports", stdin="n\n")
    assert declined.returncode == 1 and "nothing invalidated" in declined.stdout
    assert inspect(REPORT, json.dumps(region), "1", "10")[0] == 0
    accepted = tiercel("cache", "invalidate", "--tag", "reports", stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "values tagged 'reports'" in accepted.stdout
    for day in ("1", "2"):
        assert inspect(REPORT, json.dumps(region), day, "10")[0] == 1


def test_a_task_and_the_namespace_are_invalidated_with_yes(fleet: object) -> None:
    n, region = unique(), f"r{unique()}"
    call(SQUARE, n)
    call(REPORT, json.dumps(region), "3", "10")
    by_task = tiercel("cache", "invalidate", "--task", SQUARE, "--yes")
    assert by_task.returncode == 0, by_task.stderr
    assert f"every value of {SQUARE}" in by_task.stdout
    assert inspect(SQUARE, n)[0] == 1, "a version bump: the old key is no longer the key"
    assert inspect(REPORT, json.dumps(region), "3", "10")[0] == 0, "other tasks keep theirs"
    assert call(SQUARE, n)["source"] == "computed"
    everything = tiercel("cache", "invalidate", "--namespace", "--yes")
    assert everything.returncode == 0, everything.stderr
    assert inspect(SQUARE, n)[0] == 1 and inspect(REPORT, json.dumps(region), "3", "10")[0] == 1
    assert call(REPORT, json.dumps(region), "3", "10")["source"] == "computed"


def test_invalidate_takes_exactly_one_target(capsys: object) -> None:
    import pytest

    for argv in (
        ["cache", "invalidate"],
        ["cache", "invalidate", SQUARE, "--tag", "reports"],
        ["cache", "invalidate", "--task", SQUARE, "--namespace"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err  # type: ignore[attr-defined]
        assert err.count("\n") == 1 and "exactly one of" in err, err


def test_inspect_names_the_lease_holder_and_the_task_in_flight(fleet: object) -> None:
    import time

    from tiercel.tasks.examples import slow_square

    n = unique()
    pending = slow_square.submit(int(n), 3000)
    deadline = time.monotonic() + 10
    found: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, found = inspect(SQUARE, n, "3000")
        if found["lease"] is not None:
            break
        time.sleep(0.1)
    lease = found["lease"]
    assert isinstance(lease, dict), found
    assert lease["owner"] and 0 < lease["ttl_left"] <= 60
    assert found["inflight"] == pending.task_id
    assert pending.get(timeout=30) == int(n) ** 2
    status, done = inspect(SQUARE, n, "3000")
    assert status == 0 and done["lease"] is None and done["inflight"] is None


def test_inspect_shows_which_processes_hold_the_key_in_a_local_level(fleet: object) -> None:
    """Every prefork child answers for its own levels: only the one that computed the
    value holds it in memory."""
    from tiercel.tasks.examples import slow_square

    n = unique()
    result = slow_square.delay(int(n), 10)
    assert result.get(timeout=30) == int(n) ** 2
    ran_on = result.worker  # the node (result_extended); its child that ran it holds it
    assert ran_on
    status, found = inspect(SQUARE, n, "10")
    assert status == 0
    local = found["local"]
    assert isinstance(local, dict)
    answers = local["processes"]
    assert local["answered"] == local["asked"] == len(answers), local
    workers = [answer for answer in answers if answer["role"] == "worker"]
    assert len(workers) >= 4  # 2 nodes x 2 children, each answering for itself
    assert len({(answer["hostname"], answer["pid"]) for answer in answers}) == len(answers)

    def holds(answer: dict[str, object], level: str) -> bool:
        levels = answer["levels"]
        assert isinstance(levels, list)
        return any(item["level"] == level and item["present"] for item in levels)

    holders = [answer for answer in answers if holds(answer, "memory")]
    assert len(holders) == 1, [
        (a["role"], a["node"], a["pid"], [lv["entries"] for lv in a["levels"]]) for a in answers
    ] + [ran_on]
    assert holders[0]["role"] == "worker" and holders[0]["node"] == ran_on
    assert holds(holders[0], "bytes")
    # Asking counted no hit and changed nothing: the holder still holds it, alone.
    _, again = inspect(SQUARE, n, "10")
    again_local = again["local"]
    assert isinstance(again_local, dict)
    assert [
        (answer["hostname"], answer["pid"])
        for answer in again_local["processes"]
        if holds(answer, "memory")
    ] == [(holders[0]["hostname"], holders[0]["pid"])]
    text = tiercel("cache", "inspect", SQUARE, n, "10", "--wait", "1")
    assert text.returncode == 0
    assert f"of {local['asked']} processes answered" in text.stdout
    holder_line = [line for line in text.stdout.splitlines() if f"pid {holders[0]['pid']}" in line]
    assert len(holder_line) == 1 and "memory holds it" in holder_line[0], text.stdout
    assert sum("memory holds it" in line for line in text.stdout.splitlines()) == 1
