"""CircuitBreaker: a fake timer ticks; nothing sleeps."""

from __future__ import annotations

import threading

import pytest

from tiercel.core.errors import TierUnavailable
from tiercel.core.tier.breaker import CircuitBreaker


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def timer() -> FakeTimer:
    return FakeTimer()


def opened_breaker(timer: FakeTimer, failures: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(failures=failures, reset_after=0.5, timer=timer)
    for _ in range(failures):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker


def test_starts_closed_and_allows(timer: FakeTimer) -> None:
    breaker = CircuitBreaker(timer=timer)
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(10))
    assert breaker.snapshot() == {"state": "closed", "opened": 0, "rejected": 0, "consecutive": 0}


def test_opens_after_n_consecutive_failures(timer: FakeTimer) -> None:
    breaker = CircuitBreaker(failures=3, timer=timer)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.opened == 1


def test_success_resets_the_consecutive_count(timer: FakeTimer) -> None:
    breaker = CircuitBreaker(failures=3, timer=timer)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.opened == 0


def test_fails_fast_while_open(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(0.49)
    assert not any(breaker.allow() for _ in range(100))
    assert breaker.rejected == 100
    with pytest.raises(TierUnavailable, match="circuit breaker is open"):
        breaker.check()


def test_exactly_one_half_open_probe(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(0.5)
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()
    assert not breaker.allow()
    assert breaker.rejected == 2


def test_concurrent_callers_get_one_probe(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(1.0)
    barrier = threading.Barrier(16)
    admitted: list[bool] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        allowed = breaker.allow()
        with lock:
            admitted.append(allowed)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 1
    assert breaker.rejected == 15


def test_probe_success_closes(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(0.5)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))
    # the failure count starts again from zero
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_probe_failure_reopens_for_another_window(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(0.5)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.opened == 2
    timer.advance(0.4)
    assert not breaker.allow()
    timer.advance(0.1)
    assert breaker.allow()
    assert breaker.state == "half_open"


def test_lost_probe_is_replaced_after_a_window(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(0.5)
    assert breaker.allow()  # this probe's caller never reports back
    timer.advance(0.3)
    assert not breaker.allow()
    timer.advance(0.2)
    assert breaker.allow()


def test_late_failure_while_open_does_not_extend_the_window(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    timer.advance(0.4)
    breaker.record_failure()  # a call admitted before the breaker opened
    timer.advance(0.1)
    assert breaker.allow()
    assert breaker.opened == 1


def test_reset_closes(timer: FakeTimer) -> None:
    breaker = opened_breaker(timer)
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.allow()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failures": 0}, "failures"),
        ({"reset_after": 0}, "reset_after"),
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
