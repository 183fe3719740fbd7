"""A FastAPI service answering from tiercel's cached tasks, from async endpoints.

Each endpoint submits a cached task with ``await task.asubmit(...)`` and awaits
its value with ``await result.aget(timeout=...)``: a value in this process's
local levels or in the Redis tier is answered without a task, a computation in
flight anywhere in the fleet is joined, and only otherwise is one task
enqueued. The response says which (``source``: memory, redis, joined or
computed).

Run it from the repository root with the ``TIERCEL_*`` settings of a running
fleet (e.g. the ones ``tiercel up`` prints)::

    uvicorn examples.web_service:app

Errors: a malformed path or query parameter is FastAPI's 422; a task that
raised is a 502 carrying its error; no value within ``wait`` seconds is a 504
(the computation goes on, and a later request may find its value).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from celery.exceptions import TimeoutError as ResultTimeout
from fastapi import FastAPI, HTTPException, Query

import tiercel
from tiercel.tasks.examples import counted_square, regional_report, slow_square

#: The longest a request may ask to wait for a computation, in seconds.
MAX_WAIT = 60.0
#: How long a request waits when it does not say.
DEFAULT_WAIT = 10.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Configure the Celery app from ``TIERCEL_*`` at startup; at shutdown close this
    loop's tiercel client (its Redis pool and its invalidation listener)."""
    importlib.import_module("tiercel.workers.app")  # tasks publish to the fleet's broker
    try:
        yield
    finally:
        await tiercel.aclose()


app = FastAPI(title="tiercel example service", lifespan=lifespan)

Wait = Query(DEFAULT_WAIT, gt=0, le=MAX_WAIT, description="seconds to wait for a computation")


async def answer(task: Any, *args: Any, wait: float) -> tuple[Any, str]:
    """Submit ``task(*args)`` and await its value: ``(value, source)``."""
    result = await task.asubmit(*args)
    try:
        value = await result.aget(timeout=wait)
    except ResultTimeout:
        raise HTTPException(504, f"no value within {wait:g}s; still computing") from None
    except Exception as exc:  # the task raised: its error, re-raised here
        raise HTTPException(502, f"{type(exc).__name__}: {exc}") from exc
    return value, result.source


@app.get("/square/{n}")
async def square(n: int, wait: float = Wait) -> dict[str, Any]:
    """``n * n``, computed once across the fleet and cached for ten minutes."""
    value, source = await answer(slow_square, n, wait=wait)
    return {"n": n, "value": value, "source": source}


@app.post("/square/{n}/invalidate")
async def invalidate_square(n: int) -> dict[str, Any]:
    """Forget ``n``'s square in every tier and every process; the next request computes.

    ``invalidate`` is blocking (a Redis round trip and a publish): a thread runs it.
    """
    await asyncio.to_thread(slow_square.invalidate, n)
    return {"n": n, "invalidated": True}


@app.get("/reports/{region}/{day}")
async def report(
    region: str,
    day: int,
    compute_ms: int = Query(200, ge=0, le=10_000),
    wait: float = Wait,
) -> dict[str, Any]:
    """A slow report, tagged ``reports`` (``regional_report.invalidate_tag("reports")``
    forgets them all)."""
    value, source = await answer(regional_report, region, day, compute_ms, wait=wait)
    return {"report": value, "source": source}


@app.get("/counted-square/{n}")
async def counted(
    n: int,
    counter: str = Query(..., min_length=1, max_length=200),
    compute_ms: int = Query(100, ge=0, le=10_000),
    fail: bool = False,
    wait: float = Wait,
) -> dict[str, Any]:
    """``n * n``, each real computation counted at the Redis key ``counter`` (read it with
    ``redis-cli GET``): shows that concurrent requests compute once. ``fail=true``
    makes the computation raise, to see a 502."""
    value, source = await answer(counted_square, n, counter, compute_ms, fail, wait=wait)
    return {"n": n, "value": value, "source": source}
