"""Per-process lifecycle: resources are built after fork, in the process that uses them.

* prefork: each child builds its runtime in ``worker_process_init`` and closes
  it in ``worker_process_shutdown``; the main process builds none.
* solo and threads: the worker process itself builds it in ``worker_init``
  and closes it in ``worker_shutdown``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from tiercel.tasks import pools, runtime

log = logging.getLogger("tiercel.worker")


def _uses_prefork(sender: Any) -> bool:
    pool_cls = getattr(sender, "pool_cls", None)
    name = getattr(pool_cls, "__module__", "") + "." + getattr(pool_cls, "__name__", "")
    return "prefork" in name or "asynpool" in name


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    if not _uses_prefork(sender):
        runtime.start(role="worker")


@signals.worker_process_init.connect
def _on_child_init(**_: Any) -> None:
    runtime.start(role="worker")


@signals.worker_process_shutdown.connect
def _on_child_shutdown(**_: Any) -> None:
    runtime.shutdown()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    runtime.shutdown()


# Pools and the memory budget (tiercel.tasks.pools): connected after the runtime's handlers, so
# the runtime's levels exist when the budget registers them.
@signals.worker_init.connect
def _on_worker_init_pools(sender: Any = None, **_: Any) -> None:
    if not _uses_prefork(sender):
        pools.start(levels=runtime.current().cache.levels)


@signals.worker_process_init.connect
def _on_child_init_pools(**_: Any) -> None:
    pools.start(levels=runtime.current().cache.levels)


@signals.task_postrun.connect
def _on_task_postrun_budget(**_: Any) -> None:
    pools.after_task()


@signals.worker_process_shutdown.connect
def _on_child_shutdown_pools(**_: Any) -> None:
    pools.shutdown()


@signals.worker_shutdown.connect
def _on_worker_shutdown_pools(**_: Any) -> None:
    pools.shutdown()


# Fleet maintenance and metrics (tasks.maintenance): every process that owns a runtime runs a
# local sweeper and a snapshot publisher, and names the cache tier that answered each task.
@signals.celeryd_after_setup.connect
def _remember_node(sender: Any = None, **_: Any) -> None:
    from tiercel.tasks import maintenance

    maintenance.NODE = str(sender) if sender else None  # set before the pool forks


@signals.worker_init.connect
def _on_worker_init_duties(sender: Any = None, **_: Any) -> None:
    if not _uses_prefork(sender):
        _start_duties()


@signals.worker_process_init.connect
def _on_child_init_duties(**_: Any) -> None:
    _start_duties()


def _start_duties() -> None:
    from tiercel.tasks import maintenance

    try:
        maintenance.start_process(runtime.current())
    except Exception:  # metrics and sweeps must never stop a worker from serving
        log.warning("starting the sweeper and metrics publisher failed", exc_info=True)


@signals.worker_process_shutdown.connect
def _on_child_shutdown_duties(**_: Any) -> None:
    from tiercel.tasks import maintenance

    maintenance.stop_process()


@signals.worker_shutdown.connect
def _on_worker_shutdown_duties(**_: Any) -> None:
    from tiercel.tasks import maintenance

    maintenance.stop_process()


@signals.task_postrun.connect
def _on_task_postrun_source(
    task: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
) -> None:
    from tiercel.tasks import maintenance

    maintenance.announce_source(task, task_id, state)


@signals.task_revoked.connect
def _on_revoked(request: Any = None, terminated: bool = False, **_: Any) -> None:
    # Main process. A revoked task that never ran leaves an in-flight marker that would
    # make later submissions join it; one that was terminated leaves its lease.
    task = getattr(request, "task", None)
    if request is not None and getattr(task, "tiercel_spec", None) is not None:
        from tiercel.tasks.abandoned import release_abandoned

        release_abandoned(
            task,
            request.id,
            request.args,
            request.kwargs,
            "terminated" if terminated else "revoked",
        )
