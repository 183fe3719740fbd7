"""LocalJoins: the tasks a process published, by key, while their in-flight claims hold."""

from __future__ import annotations

import pytest

from tiercel.tasks.local_joins import LocalJoins


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_task_is_joined_until_its_claim_runs_out() -> None:
    clock = Clock()
    joins = LocalJoins(clock=clock)
    joins.remember("k", "task-1", joins.deadline(30.0), epoch=7)
    assert joins.task_of("k", 7) == "task-1"
    assert joins.task_of("other", 7) is None
    clock.now += 29.9
    assert joins.task_of("k", 7) == "task-1"
    clock.now += 0.1  # the Redis marker, claimed for 30 s, is gone now
    assert joins.task_of("k", 7) is None
    assert len(joins) == 0, "an entry past its deadline is dropped when met"


def test_the_deadline_is_taken_before_the_claim() -> None:
    clock = Clock()
    joins = LocalJoins(clock=clock)
    until = joins.deadline(10.0)  # then the claim and the publish take time
    clock.now += 4.0
    joins.remember("k", "task-1", until, epoch=0)
    clock.now += 6.0
    assert joins.task_of("k", 0) is None


def test_any_invalidation_since_the_claim_voids_it() -> None:
    joins = LocalJoins()
    joins.remember("k", "task-1", joins.deadline(30.0), epoch=3)
    assert joins.task_of("k", 4) is None  # the cache's epoch moved: its marker was deleted
    assert joins.task_of("k", 3) is None, "a voided entry is dropped"


def test_forget_drops_a_key_or_only_the_named_task() -> None:
    joins = LocalJoins()
    joins.remember("a", "task-1", joins.deadline(30.0), epoch=0)
    joins.remember("b", "task-2", joins.deadline(30.0), epoch=0)
    joins.forget("a", "task-9")  # another task's outcome: the entry stays
    assert joins.task_of("a", 0) == "task-1"
    joins.forget("a", "task-1")
    assert joins.task_of("a", 0) is None
    joins.forget("b")
    assert joins.task_of("b", 0) is None
    joins.forget("never-seen")


def test_a_newer_claim_replaces_the_older_one() -> None:
    joins = LocalJoins()
    joins.remember("k", "task-1", joins.deadline(30.0), epoch=0)
    joins.remember("k", "task-2", joins.deadline(30.0), epoch=0)
    assert joins.task_of("k", 0) == "task-2" and len(joins) == 1


def test_bounded_the_oldest_claim_goes_first() -> None:
    joins = LocalJoins(max_entries=3)
    for n in range(5):
        joins.remember(f"k{n}", f"task-{n}", joins.deadline(30.0), epoch=0)
    assert len(joins) == 3
    assert [joins.task_of(f"k{n}", 0) for n in range(5)] == [
        None,
        None,
        "task-2",
        "task-3",
        "task-4",
    ]
    joins.clear()
    assert len(joins) == 0


def test_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="max_entries=0"):
        LocalJoins(max_entries=0)
