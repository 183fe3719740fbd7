"""A client process that submits a bounded workload and checks every answer.

Run as ``python -m tests.reliability.workload '<json options>'`` with the
fleet's ``TIERCEL_*`` variables in the environment; prints one JSON summary
line. Being its own process, it configures its own Celery app from those
variables, so a test can point it at private servers.

Options: ``keys`` (distinct arguments), ``requests`` (total), ``seconds``
(stop submitting after this long), ``threads``, ``compute_ms``,
``invalidate_rate`` (share of requests that invalidate a random key first),
``result_timeout``, ``zipf`` (skew; 0 for uniform), ``offset`` (first key).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def run(options: dict[str, Any]) -> dict[str, Any]:
    import tiercel.workers.app  # noqa: F401  (configured from this process's environment)
    from tiercel.tasks.examples import slow_square

    keys = int(options.get("keys", 1000))
    requests = int(options.get("requests", 10_000))
    seconds = float(options.get("seconds", 60))
    threads = int(options.get("threads", 16))
    compute_ms = int(options.get("compute_ms", 5))
    invalidate_rate = float(options.get("invalidate_rate", 0.0))
    result_timeout = float(options.get("result_timeout", 120))
    zipf = float(options.get("zipf", 1.1))
    offset = int(options.get("offset", 0))
    weights = [1 / (rank + 1) ** zipf for rank in range(keys)] if zipf else None
    lock = threading.Lock()
    sources: Counter[str] = Counter()
    errors: list[str] = []
    wrong: list[int] = []
    started = time.monotonic()
    counts = {"submitted": 0, "answered": 0, "invalidations": 0}

    def one(index: int) -> None:
        if time.monotonic() - started > seconds:
            return
        rng = random.Random(index)
        n = offset + (
            rng.choices(range(keys), weights=weights)[0] if weights else rng.randrange(keys)
        )
        try:
            if invalidate_rate and rng.random() < invalidate_rate:
                slow_square.invalidate(n, compute_ms)
                with lock:
                    counts["invalidations"] += 1
            with lock:
                counts["submitted"] += 1
            handle = slow_square.submit(n, compute_ms)
            value = handle.get(timeout=result_timeout)
        except Exception as exc:  # every failure is reported, none is fatal to the run
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        with lock:
            counts["answered"] += 1
            sources[handle.source] += 1
            if value != n * n:
                wrong.append(n)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(requests)))
    return {
        **counts,
        "errors": errors[:20],
        "error_count": len(errors),
        "wrong": len(wrong),
        "sources": dict(sources),
        "seconds": time.monotonic() - started,
        "lost": counts["submitted"] - counts["answered"] - len(errors),
    }


if __name__ == "__main__":
    result = run(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    from tiercel.tasks import runtime

    runtime.shutdown()
    print(json.dumps(result))
