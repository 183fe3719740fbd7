"""Example compute tasks: what the demo, `tiercel bench` and the benchmarks run.

A deployment opts into them (``TIERCEL_TASK_MODULES=tiercel.tasks.examples``);
`tiercel up` and `tiercel demo` do by default. Production workers register
tiercel's own maintenance and metrics tasks and the deployment's, nothing else.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from celery import shared_task

from tiercel.tasks.cached import cached_task


@cached_task(ttl=600, tags=("reports",))
def regional_report(region: str, day: int, compute_ms: int = 200) -> dict[str, Any]:
    """A slow report: sleeps ``compute_ms`` (an I/O-bound call) and returns a summary."""
    time.sleep(compute_ms / 1000)
    seed = hashlib.blake2b(f"{region}:{day}".encode(), digest_size=8).digest()
    revenue = int.from_bytes(seed[:4], "big") % 100_000
    return {"region": region, "day": day, "revenue": revenue, "orders": revenue // 37}


@cached_task(ttl=600)
def slow_square(n: int, compute_ms: int = 10) -> int:
    """``n * n`` after ``compute_ms`` of sleep: the smallest expensive function."""
    time.sleep(compute_ms / 1000)
    return n * n


@cached_task(ttl=600)
def digest_rounds(text: str, rounds: int = 20_000) -> str:
    """A CPU-bound function: iterated BLAKE2b (for scaling benchmarks)."""
    value = text.encode()
    for _ in range(rounds):
        value = hashlib.blake2b(value, digest_size=32).digest()
    return value.hex()


@cached_task(ttl=600)
def counted_digest(text: str, counter: str, rounds: int = 20_000) -> str:
    """:func:`digest_rounds`' CPU-bound work, counting each real computation (INCR
    ``counter`` in the cache Redis) so a benchmark can prove no node recomputed."""
    from tiercel.tasks import runtime

    runtime.current().tier.client.incr(counter)
    value = text.encode()
    for _ in range(rounds):
        value = hashlib.blake2b(value, digest_size=32).digest()
    return value.hex()


@shared_task(name="tiercel.tasks.examples.plain_square", acks_late=True)
def plain_square(n: int, compute_ms: int = 10) -> int:
    """The same work as :func:`slow_square` as a plain Celery task (the baseline)."""
    time.sleep(compute_ms / 1000)
    return n * n


def _count_and_sleep(counter: str, compute_ms: int) -> None:
    """One computation counted at ``counter`` in the cache Redis (INCR), then its work."""
    from tiercel.tasks import runtime

    runtime.current().tier.client.incr(counter)
    time.sleep(compute_ms / 1000)


@shared_task(name="tiercel.tasks.examples.plain_counted_square", acks_late=True)
def plain_counted_square(n: int, counter: str, compute_ms: int = 100) -> int:
    """:func:`counted_square`'s work as a plain Celery task: the same count in Redis, the
    same sleep (so a comparison of the two compares the caching, not the work)."""
    _count_and_sleep(counter, compute_ms)
    return n * n


@shared_task(name="tiercel.tasks.examples.noop")
def noop() -> None:
    """A task that does nothing: measures a bare queue round trip."""


@cached_task(ttl=600, tags=("counted",))
def counted_square(n: int, counter: str, compute_ms: int = 100, fail: bool = False) -> int:
    """``n * n`` after ``compute_ms``, counting each real computation in Redis.

    The count lives at ``counter`` in the cache Redis (INCR), so a test or a
    benchmark can prove how many times the fleet really computed a key.
    ``fail=True`` raises after the count, to exercise error sharing.
    """
    _count_and_sleep(counter, compute_ms)
    if fail:
        raise ValueError(f"counted_square({n}) failed on purpose")
    return n * n


@cached_task(ttl=1, stale_ttl=60, stale_if_error=True, early_refresh=0)
def fx_quote(pair: str, counter: str) -> dict[str, Any]:
    """A quote that is fresh for one second and may be served stale for a minute
    while it is refreshed (or while its source fails): stale-while-revalidate."""
    from tiercel.tasks import runtime

    calls = int(runtime.current().tier.client.incr(counter))
    return {"pair": pair, "revision": calls}


@cached_task(ttl=600)
def blob(size: int, seed: int = 0) -> str:
    """``size`` characters of seeded random text (barely compressible): shows what
    happens to values too large to cache."""
    import base64
    import random

    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode()[:size]


@cached_task(ttl=600, levels=())
def shared_only(n: int) -> int:
    """Kept in the Redis tier only (``levels=()``): never in a process's local levels,
    e.g. for values that must never outlive an invalidation even by the channel's delay."""
    return n * 3


class AccountNotFound(LookupError):
    """Raised by :func:`account_summary` for accounts that do not exist."""


@cached_task(ttl=600, cache_errors=(AccountNotFound,), error_ttl=2)
def account_summary(account: int, counter: str) -> dict[str, Any]:
    """A lookup whose "not found" is worth caching for a moment (negative caching):
    odd accounts do not exist. Counts real computations at ``counter``."""
    from tiercel.tasks import runtime

    runtime.current().tier.client.incr(counter)
    if account % 2:
        raise AccountNotFound(f"no account {account}")
    return {"account": account, "balance": account * 10}


@cached_task(
    ttl=1, stale_ttl=60, stale_while_revalidate=False, stale_if_error=True, early_refresh=0
)
def strict_quote(pair: str, counter: str) -> dict[str, Any]:
    """Like :func:`fx_quote`, but a reader past the ttl waits for the refresh: a stale
    value is served only when the refresh fails (stale-if-error)."""
    from tiercel.tasks import runtime

    calls = int(runtime.current().tier.client.incr(counter))
    return {"pair": pair, "revision": calls}
