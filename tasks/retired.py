"""What processes that exited had counted: kept, so fleet totals never go down.

A process's snapshot lives only while it publishes (its key expires after 3
intervals). A process that stops cleanly (a worker at shutdown, a client at
exit: a script, a ``tiercel call``) first *retires* its figures: its last
snapshot, without gauges (a gauge of a process that is gone is not a
figure), is merged into one retired snapshot beside the live ones
(``{ns}:metrics:retired``), and its own key leaves the index in the same
transaction, so no aggregation counts it twice. The fleet view adds the
retired counters and sketches to the live ones.

The retired snapshot is one merged document: its size is bounded by the
series the processes had (each registry bounds its own), not by how many
processes ever ran.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

import redis

from tiercel.core.encoding.prefixes import METRICS
from tiercel.core.metrics.snapshots import merge_snapshots

log = logging.getLogger("tiercel.metrics")

#: The one process entry a retired snapshot has.
RETIRED_PROCESS: Final = {"id": "retired", "hostname": "", "pid": 0, "started_at": 0.0}
#: How long retired figures outlive the last process that retired (7 days).
RETIRED_TTL_SECONDS: Final = 7 * 24 * 3600
#: Attempts at the optimistic transaction before giving up (the TTLs clean up).
RETIRE_ATTEMPTS: Final = 8


def retired_key(namespace: str) -> str:
    """Where the merged figures of processes that exited live."""
    return f"{namespace}:{METRICS}:retired"


def without_gauges(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """``snapshot`` as figures of the retired pseudo-process: counters and sketches."""
    return {**snapshot, "processes": [dict(RETIRED_PROCESS)], "gauges": []}


def read_retired(client: redis.Redis, namespace: str) -> dict[str, Any] | None:
    """The retired snapshot of ``namespace``, or None when no process retired yet."""
    raw = client.get(retired_key(namespace))
    if raw is None:
        return None
    try:
        document: dict[str, Any] = json.loads(raw)
    except ValueError:
        log.warning("ignoring an unreadable retired metrics snapshot")
        return None
    return document


def retire(
    client: redis.Redis,
    namespace: str,
    snapshot: Mapping[str, Any],
    *,
    snapshot_key: str,
    index_key: str,
    process_id: str,
) -> bool:
    """Merge ``snapshot`` into the retired figures and drop the process's own key and
    index entry, atomically; False when it could not (Redis gone, too much contention)."""
    key = retired_key(namespace)
    mine = without_gauges(snapshot)
    for _ in range(RETIRE_ATTEMPTS):
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                merged = mine
                if raw is not None:
                    merged = without_gauges(merge_snapshots([mine, _renamed(json.loads(raw))]))
                pipe.multi()
                pipe.set(key, json.dumps(merged, separators=(",", ":")), ex=RETIRED_TTL_SECONDS)
                pipe.zrem(index_key, process_id)
                pipe.delete(snapshot_key)
                pipe.execute()
                return True
            except redis.WatchError:
                continue  # another process retired meanwhile: merge again
    return False


def _renamed(document: Mapping[str, Any]) -> dict[str, Any]:
    # merge_snapshots refuses one process id twice; the stored one is the older retiree.
    return {**document, "processes": [{**RETIRED_PROCESS, "id": "retired-before"}]}
