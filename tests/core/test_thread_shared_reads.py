"""ThreadSharedReads: threads waiting on one key share a read only when it cannot be stale."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tiercel.core.cache.thread_shared_reads import ThreadSharedReads


class Reader:
    """A read that counts its calls and answers when released."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.calls += 1
            number = self.calls
        self.started.set()
        assert self.release.wait(5)
        return number


def test_threads_woken_before_a_read_started_share_it() -> None:
    reads: ThreadSharedReads[int] = ThreadSharedReads()
    reader = Reader()
    with ThreadPoolExecutor(50) as pool:
        leader = pool.submit(reads.read, "k", 3, 5, reader)
        assert reader.started.wait(5)
        joiners = [pool.submit(reads.read, "k", 5, 5, reader) for _ in range(49)]
        reader.release.set()
        answers = [leader.result(), *(joiner.result() for joiner in joiners)]
    assert answers == [1] * 50
    assert reader.calls == 1 and reads.running == 0, "forgotten once done"


def test_a_thread_woken_after_a_read_started_starts_its_own() -> None:
    reads: ThreadSharedReads[int] = ThreadSharedReads()
    reader = Reader()
    with ThreadPoolExecutor(2) as pool:
        older = pool.submit(reads.read, "k", 0, 4, reader)
        assert reader.started.wait(5)
        newer = pool.submit(reads.read, "k", 5, 5, reader)  # woken at 5: the read began at 4
        reader.release.set()
        assert sorted([older.result(), newer.result()]) == [1, 2]
    assert reader.calls == 2


def test_keys_are_read_apart() -> None:
    reads: ThreadSharedReads[str] = ThreadSharedReads()
    assert reads.read("a", 0, 0, lambda: "A") == "A"
    assert reads.read("b", 0, 0, lambda: "B") == "B"


def test_when_the_shared_read_raises_the_others_read_for_themselves() -> None:
    reads: ThreadSharedReads[str] = ThreadSharedReads()
    started, release = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        release.wait(5)
        raise ConnectionError("tier down")

    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(reads.read, "k", 0, 0, failing)
        assert started.wait(5)
        joiner = pool.submit(reads.read, "k", 0, 0, lambda: "own read")
        release.set()
        with pytest.raises(ConnectionError):
            leader.result()
        assert joiner.result() == "own read"
    assert reads.running == 0
