"""ThreadSharedWaits: one leader per key waits; the threads that join it take its answer."""

from __future__ import annotations

import threading
import time

import pytest

from tiercel.core.cache.thread_shared_waits import ThreadSharedWaits
from tiercel.core.missing import MISSING


def _followers(
    waits: ThreadSharedWaits[object], key: str, count: int, timeout: float | None, wait: object
) -> tuple[list[threading.Thread], list[object]]:
    answers: list[object] = []

    def follow() -> None:
        try:
            answers.append(waits.wait(key, timeout, wait))  # type: ignore[arg-type]
        except Exception as exc:  # what a follower raised is its answer here
            answers.append(exc)

    threads = [threading.Thread(target=follow) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def test_followers_take_the_leaders_value_and_wait_once() -> None:
    waits: ThreadSharedWaits[object] = ThreadSharedWaits()
    release = threading.Event()
    calls: list[float | None] = []

    def wait(timeout: float | None) -> object:
        calls.append(timeout)
        release.wait(10)
        return "value"

    leader, answers = _followers(waits, "k", 1, 10.0, wait)
    deadline = time.monotonic() + 5
    while waits.running == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    followers, more = _followers(waits, "k", 20, 10.0, wait)
    time.sleep(0.05)
    release.set()
    for thread in leader + followers:
        thread.join(10)
    assert answers + more == ["value"] * 21
    assert calls == [10.0], "only the leader waited"
    assert waits.shared == 20 and waits.running == 0


def test_other_keys_wait_apart() -> None:
    waits: ThreadSharedWaits[object] = ThreadSharedWaits()
    assert waits.wait("a", 1.0, lambda _: "A") == "A"
    assert waits.wait("b", 1.0, lambda _: "B") == "B"
    assert waits.shared == 0 and waits.running == 0


def test_when_the_leader_raises_each_follower_waits_alone() -> None:
    waits: ThreadSharedWaits[object] = ThreadSharedWaits()
    release = threading.Event()
    calls: list[str] = []

    def fail(_: float | None) -> object:
        calls.append("leader")
        release.wait(10)
        raise ValueError("the task failed")

    def alone(_: float | None) -> object:
        calls.append("alone")
        return "own answer"

    leader, answers = _followers(waits, "k", 1, 10.0, fail)
    while waits.running == 0:
        time.sleep(0.001)
    followers, more = _followers(waits, "k", 3, 10.0, alone)
    time.sleep(0.05)
    release.set()
    for thread in leader + followers:
        thread.join(10)
    assert isinstance(answers[0], ValueError)
    assert more == ["own answer"] * 3, "a leader's error is not shared: each follower asks"
    assert calls.count("alone") == 3 and waits.shared == 0


def test_a_leader_answering_nothing_is_not_shared() -> None:
    waits: ThreadSharedWaits[object] = ThreadSharedWaits()
    release = threading.Event()

    def nothing(_: float | None) -> object:
        release.wait(10)
        return MISSING

    leader, answers = _followers(waits, "k", 1, 10.0, nothing)
    while waits.running == 0:
        time.sleep(0.001)
    followers, more = _followers(waits, "k", 2, 10.0, lambda _: "backend")
    time.sleep(0.05)
    release.set()
    for thread in leader + followers:
        thread.join(10)
    assert answers == [MISSING] and more == ["backend", "backend"]


def test_a_follower_keeps_its_own_timeout() -> None:
    waits: ThreadSharedWaits[object] = ThreadSharedWaits()
    release = threading.Event()
    given: list[float | None] = []

    def slow(timeout: float | None) -> object:
        release.wait(10)
        return "late"

    def own(timeout: float | None) -> object:
        given.append(timeout)
        raise TimeoutError("timed out")

    leader, _ = _followers(waits, "k", 1, None, slow)
    while waits.running == 0:
        time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        waits.wait("k", 0.1, own)
    assert 0.09 <= time.monotonic() - started < 2.0
    assert given == [0.0], "it waited alone for the time it had left: none"
    release.set()
    for thread in leader:
        thread.join(10)
