"""The names of the fleet metrics tiercel's tasks and workers record, and their bounds.

Where they come from and go:

* :mod:`tiercel.tasks.recorder`: each process's
  :class:`~tiercel.core.metrics.registry.MetricsRegistry` *pulls* at snapshot
  time the levels' and the Redis tier's own counters, the fleet counters, the
  background refresher's and the process's pools; :class:`CallRecorder`
  counts every cached call by task and source (the memo/L1 hit path records
  nothing else) and times one in :data:`SAMPLE_EVERY`.
* :mod:`tiercel.tasks.publisher`: every ``TIERCEL_METRICS_INTERVAL`` seconds
  each worker process, prefork children included, writes one JSON snapshot
  to the result-backend Redis, stamped by the server's clock::

      {ns}:metrics:proc:{process id}   {"node", "snapshot"}   PX 3 intervals
      {ns}:metrics:index               ZSET process id -> server ms of its last publish

* :mod:`tiercel.tasks.fleet_view`: the snapshots published within the last 2
  intervals are merged and summarised per node, process, task and tier. A
  process that died stops publishing and leaves the view after 2 intervals.
"""

from __future__ import annotations

from typing import Final

#: Counter: task-body calls, by task and by where the answer came from [task, source].
REQUESTS: Final = "tiercel_requests_total"
#: Counter: the same calls counted by client processes only [task, source]: the
#: requests answered without a task running (a submit-side hit or join, an
#: in-process call), which Flower, seeing only tasks, cannot see.
CLIENT_REQUESTS: Final = "tiercel_client_requests_total"
#: Counter: background refreshes started, dropped (backlog full) and failed [outcome].
REFRESHES: Final = "tiercel_refreshes_total"
#: Counter: the fleet coordinator's events [event] (computed, joined, takeovers, ...).
COORDINATOR_EVENTS: Final = "tiercel_coordinator_events_total"
#: Gauge: computations this process renews a lease for, and threads waiting on one [what].
COORDINATOR_ACTIVE: Final = "tiercel_coordinator_active"
#: Gauge: bytes the local levels hold against the process's memory budget.
MEMORY_USED: Final = "tiercel_memory_budget_used_bytes"
#: Counter: local sweeps run, by what triggered them [trigger] (``message``, ``timer``).
SWEEPS: Final = "tiercel_sweeps_total"
#: Counter: expired local entries removed by sweeps.
SWEPT: Final = "tiercel_swept_entries_total"

#: One call in this many has its latency timed (recorded with this weight).
SAMPLE_EVERY: Final = 16
#: Most (task, source) pairs counted; beyond, calls are counted under task ``_other``.
MAX_TASK_SERIES: Final = 2000
#: A process is in the fleet view while its last snapshot is at most this many intervals old.
STALE_INTERVALS: Final = 2.0
#: A snapshot key lives this many intervals (dead processes' keys vanish by themselves).
TTL_INTERVALS: Final = 3.0
#: Snapshots read per MGET during aggregation.
READ_BATCH: Final = 200
#: Most processes one aggregation reads (a bound, far above any real fleet).
MAX_PROCESSES: Final = 10_000
#: The summary quantiles of latency sketches.
QUANTILES: Final = (0.5, 0.9, 0.99)
