"""Hit paths as users take them, side by side with in-process memoizers, in one process.

Measured on the default runtime: a private redis-server as the cache tier,
generations on, metrics on (the recorder counts every hit), the staleness gate
live. For each argument shape (one int, one str, two ints, a keyword, a float,
a tuple):

* ``fn.cached_call(...)`` of a ``@cached_task`` (through the name user code
  holds) and a ``tiercel.cached`` call, each answered from the memory level,
  vs ``cachetools.cached(TTLCache)`` (target <= 1.0x);
* the body of a cached task in a worker process (``task.run`` with a
  request pushed, as Celery's tracer calls it) answered from the worker's
  memory level, vs the same peer (target <= 1.0x); the request's refresh and
  in-flight headers are read once when Celery pushes it, outside the timing;
* ``fn.submit(...)`` answered from the client's memory level, including the
  ``CachedResult`` (target <= 2.0x);
* ``functools.lru_cache``, ``cachebox.cached(TTLCache)`` and theine's
  ``Memoize`` beside ``cached_call``, per shape (no target).

Runs in a child interpreter (its own settings and Celery app):
``python -m bench.hit_path``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bench._harness import Row, ratio_row, redis_server, run_child, side_by_side

#: (label, positional arguments, keyword arguments) of each measured call.
SHAPES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("one int", (7,), {}),
    ("one str", ("report-7",), {}),
    ("two ints", (7, 11), {}),
    ("a keyword argument", (7,), {"region": "eu"}),
    ("a float", (7.5,), {}),
    ("a tuple", ((7, 11, 13),), {}),
]


def _body(a: Any, b: Any = 0, region: str = "us") -> tuple[Any, ...]:
    return (a, b, region, "quarterly report")


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # One closure per shape and contender: every side pays the same call overhead.
    if kwargs:
        return lambda: fn(*args, **kwargs)
    if len(args) == 1:
        (only,) = args
        return lambda: fn(only)
    first, second = args
    return lambda: fn(first, second)


def _peers() -> dict[str, Callable[..., Any]]:
    import cachebox
    import cachetools
    from theine import Memoize

    return {
        "cachetools.cached(TTLCache)": cachetools.cached(
            cachetools.TTLCache(maxsize=4096, ttl=300)
        )(_body),
        "functools.lru_cache": functools.lru_cache(maxsize=4096)(_body),
        "cachebox.cached(TTLCache)": cachebox.cached(cachebox.TTLCache(4096, global_ttl=300))(
            _body
        ),
        "theine Memoize": Memoize(4096, timedelta(seconds=300))(_body),
    }


def _warm(call: Callable[[], Any], times: int = 3) -> None:
    for _ in range(times):
        call()  # computed, then the memory level answers, then the memo does


def child(quick: bool) -> list[Row]:
    """Every row, in this (child) process; prints nothing."""
    calls = 20_000 if quick else 200_000
    repeats = 3 if quick else 7
    with redis_server() as server:
        os.environ.update(
            TIERCEL_CACHE_URL=server.url,
            TIERCEL_BROKER_URL=server.url,
            TIERCEL_RESULT_BACKEND=server.url,
            TIERCEL_NAMESPACE=f"hitpath-{uuid.uuid4().hex[:8]}",
        )
        from celery import Celery

        import tiercel
        from tiercel.tasks import runtime

        app = Celery("bench-hit-path", broker=server.url, backend=server.url)
        tiercel.init_app(app)

        task = tiercel.cached_task(ttl=300, name="bench.hit_path.report")(_body)
        plain = tiercel.cached(ttl=300, name="bench.hit_path.plain")(_body)
        peers = _peers()
        peer_name = "cachetools.cached(TTLCache)"
        rows: list[Row] = []
        for label, args, kwargs in SHAPES:
            cached_call = _call(task.cached_call, args, kwargs)
            plain_call = _call(plain, args, kwargs)
            submit = _call(task.submit, args, kwargs)
            peer_calls = {name: _call(fn, args, kwargs) for name, fn in peers.items()}
            for call in (cached_call, plain_call, submit, *peer_calls.values()):
                _warm(call)
            contenders = [
                (f"cached_task cached_call hit, {label}", cached_call, 1.0),
                (f"tiercel.cached call hit, {label}", plain_call, 1.0),
                (f"cached_task submit() from memory, {label}", submit, 2.0),
            ]
            for benchmark, ours, target in contenders:
                mine, theirs = side_by_side(
                    ours, peer_calls[peer_name], calls=calls, repeats=repeats
                )
                rows.append(
                    ratio_row(
                        benchmark,
                        mine,
                        peer_name,
                        theirs,
                        target=target,
                        note="default runtime: Redis tier, generations, metrics",
                    )
                )
            for name, peer in peer_calls.items():
                if name == peer_name:
                    continue
                mine, theirs = side_by_side(cached_call, peer, calls=calls, repeats=repeats)
                rows.append(ratio_row(f"cached_task cached_call hit, {label}", mine, name, theirs))
        rows += _worker_rows(runtime, task, peers[peer_name], calls, repeats)
        runtime.shutdown()
    return rows


def _worker_rows(
    runtime: Any, task: Any, peer: Callable[..., Any], calls: int, repeats: int
) -> list[Row]:
    """The task's body in a worker process: the tracer pushes the request, then calls
    ``task.run(*args, **kwargs)``; only that call is timed."""
    from celery.app.task import Context

    runtime.start(role="worker")
    real = task._get_current_object()
    rows: list[Row] = []
    for label, args, kwargs in SHAPES:
        request = Context(
            id=str(uuid.uuid4()), args=args, kwargs=kwargs, called_directly=False, headers=None
        )
        real.request_stack.push(request)
        try:
            body = _call(real.run, args, kwargs)
            _warm(body)
            peer_call = _call(peer, args, kwargs)
            _warm(peer_call)
            mine, theirs = side_by_side(body, peer_call, calls=calls, repeats=repeats)
        finally:
            real.request_stack.pop()
        rows.append(
            ratio_row(
                f"cached task body in a worker, memory hit, {label}",
                mine,
                "cachetools.cached(TTLCache)",
                theirs,
                target=1.0,
                note="task.run under a pushed request, worker runtime",
            )
        )
    return rows


def run(quick: bool = False) -> list[Row]:
    """Every hit-path row, measured in a fresh interpreter."""
    return run_child("bench.hit_path", quick, timeout=900)


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(child("--quick" in sys.argv)))
    else:
        from bench.report import print_table

        print_table(run("--quick" in sys.argv))
