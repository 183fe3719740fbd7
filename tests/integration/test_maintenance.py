"""Maintenance: a published sweep reaches every prefork child; housekeeping; overlap locks."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis

from tests.fleet_tasks import fill_local, local_levels
from tiercel.core.settings import resolve_settings
from tiercel.tasks import maintenance, publisher
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def _spread(
    task: Any, kwargs: dict[str, Any], want: int = 4, rounds: int = 6
) -> dict[int, dict[str, Any]]:
    """Run ``task`` in batches (each call holds its child) until ``want`` children answered."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(rounds):
        pending = [task.delay(**kwargs, hold_ms=300) for _ in range(8)]
        for result in pending:
            answer = result.get(timeout=30)
            seen[answer["pid"]] = answer
        if len(seen) >= want:
            break
    assert len(seen) >= want, f"only {len(seen)} children answered: {sorted(seen)}"
    return seen


def test_a_published_sweep_empties_expired_entries_in_every_child(fleet: Fleet) -> None:
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    filled = _spread(fill_local, {"prefix": prefix, "count": 50, "ttl": 0.5})
    time.sleep(0.8)  # every entry has expired; nothing has read them, so they are still held
    before = _spread(local_levels, {"prefix": prefix})
    held = {pid: answer["levels"]["memory"]["matching"] for pid, answer in before.items()}
    assert all(held[pid] == 50 for pid in filled if pid in held), held

    receivers = maintenance.sweep()["receivers"]  # what beat runs: one publish
    assert receivers >= 5  # 4 children + this client's own listener

    deadline = time.monotonic() + 15
    while True:
        after = _spread(local_levels, {"prefix": prefix})
        left = {
            pid: sum(level["matching"] for level in answer["levels"].values())
            for pid, answer in after.items()
        }
        if all(count == 0 for count in left.values()):
            break
        assert time.monotonic() < deadline, f"expired entries still held: {left}"
        time.sleep(0.2)
    assert set(filled) <= set(after)
    # The sweep came from the message, not the children's own (60 s) timers.
    assert all(answer["sweeps"]["message"] >= 1 for answer in after.values())


def test_housekeeping_removes_stale_leases_and_dead_tag_members(redis_client: redis.Redis) -> None:
    ns = f"hk-{uuid.uuid4().hex[:6]}"
    for i in range(30):
        redis_client.set(f"{ns}:lease:{{d{i}}}", "tok:owner")  # no TTL: nobody releases it
    redis_client.set(f"{ns}:lease:{{live}}", "tok:owner", px=60_000)
    redis_client.set(f"{ns}:inflight:{{old}}", "task-id")
    redis_client.set(f"{ns}:v:f:1:{{alive}}", b"x", px=60_000)
    redis_client.sadd(f"{ns}:tag:{{reports}}", f"{ns}:v:f:1:{{alive}}", f"{ns}:v:f:1:{{gone}}")

    first = maintenance.housekeep(redis_client, ns, budget=0.0, batch=5)
    assert not first["complete"]  # one batch, then the budget is spent; the cursor is kept
    total = dict(first)
    for _ in range(100):
        done = maintenance.housekeep(redis_client, ns, budget=0.0, batch=5)
        for key in ("stale_keys", "tag_members"):
            total[key] += done[key]
        if done["complete"]:
            break
    assert total["stale_keys"] == 31
    assert total["tag_members"] == 1
    assert redis_client.exists(f"{ns}:lease:{{live}}")
    assert redis_client.smembers(f"{ns}:tag:{{reports}}") == {f"{ns}:v:f:1:{{alive}}".encode()}


def test_overlapping_runs_of_a_periodic_task_do_not_both_work(fleet: Fleet) -> None:
    settings = resolve_settings()
    client = publisher.metrics_client(settings)
    worked: list[int] = []
    started = threading.Barrier(2)

    def run(n: int) -> None:
        started.wait()
        with maintenance.periodic_lock(client, settings.namespace, "overlap-test", 5) as held:
            if held:
                worked.append(n)
                time.sleep(0.3)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(worked) == 1

    # A real aggregation on a worker while another one holds the lock does nothing.
    with maintenance.periodic_lock(client, settings.namespace, "aggregate", 30) as held:
        assert held
        answer = maintenance.aggregate.delay().get(timeout=30)
        assert "skipped" in answer
    answer = maintenance.aggregate.delay().get(timeout=30)
    assert "skipped" not in answer and answer["fleet"]["processes"] >= 4
    client.close()
