"""An example cached task that runs an expensive PostgreSQL query through this process's pool.

It needs ``TIERCEL_DATABASE_URL`` (and ``pip install 'tiercel[postgres]'``) on
the workers that run it; nothing else in tiercel does, and the demo does not
use it. The connection comes from :func:`tiercel.tasks.pools.acquire`, so a worker
child opens its connections once (after fork) and reuses them across tasks.
"""

from __future__ import annotations

from typing import Any

from tiercel.tasks import pools
from tiercel.tasks.cached import cached_task

#: Aggregates over ``generate_series``: no table needed, and the cost grows with ``n``
#: (about 0.1 s per million rows on a laptop), which is what caching is for.
SERIES_SUMMARY_SQL = """
SELECT count(*)::bigint,
       coalesce(sum(x), 0)::bigint,
       coalesce(sum(hashtext(x::text)::bigint), 0)::bigint
FROM generate_series(1, %(n)s::int) AS x
WHERE x %% %(modulus)s::int = 0
"""


@cached_task(ttl=600, tags=("db",))
def series_summary(n: int, modulus: int = 7) -> dict[str, Any]:
    """Count, sum and a checksum of the multiples of ``modulus`` in ``1..n``, by PostgreSQL."""
    if n < 0 or modulus < 1:
        raise ValueError(
            f"series_summary needs n >= 0 and modulus >= 1, got n={n}, modulus={modulus}"
        )
    with pools.acquire("db") as conn:
        row = conn.execute(SERIES_SUMMARY_SQL, {"n": n, "modulus": modulus}).fetchone()
    count, total, checksum = row
    return {
        "n": n,
        "modulus": modulus,
        "count": int(count),
        "sum": int(total),
        "checksum": int(checksum),
    }
