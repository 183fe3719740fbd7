"""The ``core`` app's tasks, found by ``app.autodiscover_tasks()``."""

from celery import shared_task

import tiercel
from core.pricing import price


@tiercel.cached_task(ttl=600, tags=["prices"])
def quote(symbol: str, day: int) -> float:
    """One symbol's price on one day, computed once across the fleet."""
    from tiercel.tasks import runtime

    runtime.current().tier.client.incr(f"computations:{symbol}:{day}")
    return price(symbol, day)


@shared_task
def add(a: int, b: int) -> int:
    """A plain task of the project: tiercel leaves it alone."""
    return a + b
