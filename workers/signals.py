"""Per-process lifecycle: one runtime per process, built after fork, in the process that uses it.

* prefork: each child builds and starts its runtime (:mod:`tiercel.tasks.runtime`)
  in ``worker_process_init`` and closes it in ``worker_process_shutdown``; the
  main process builds none (it only frees the leases of children that died).
* solo and threads: the worker process itself builds it in ``worker_init``
  and closes it in ``worker_shutdown``.

The runtime owns everything else (levels, tier, listener, pools, metrics,
sweeper, publisher), so these few handlers are all the wiring there is.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from tiercel.tasks import abandoned, runtime

#: This worker's node name, remembered in the main process before the pool forks.
_node: str | None = None


def _uses_prefork(sender: Any) -> bool:
    pool_cls = getattr(sender, "pool_cls", None)
    name = getattr(pool_cls, "__module__", "") + "." + getattr(pool_cls, "__name__", "")
    return "prefork" in name or "asynpool" in name


@signals.celeryd_after_setup.connect
def _remember_node(sender: Any = None, **_: Any) -> None:
    global _node
    _node = str(sender) if sender else None


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    if not _uses_prefork(sender):
        runtime.start(role="worker", node=_node)


@signals.worker_process_init.connect
def _on_child_init(**_: Any) -> None:
    runtime.start(role="worker", node=_node)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    runtime.shutdown()
    abandoned.close()


@signals.task_prerun.connect
def _on_task_prerun(task: Any = None, args: Any = (), kwargs: Any = None, **_: Any) -> None:
    if getattr(task, "tiercel_spec", None) is None:
        return
    rt = runtime.existing()
    if rt is not None:
        rt.before_task(task, args, kwargs)


@signals.task_postrun.connect
def _on_task_postrun(
    task: Any = None,
    task_id: str | None = None,
    state: str | None = None,
    args: Any = (),
    kwargs: Any = None,
    **_: Any,
) -> None:
    rt = runtime.existing()
    if rt is not None:
        rt.after_task(task, task_id, state, args, kwargs)


@signals.task_revoked.connect
def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    # Main process. A revoked (or expired) task that never ran leaves an in-flight marker
    # that would make later submissions join it; one that was terminated leaves its lease.
    # The sender is the task; `request` is the request's context (id, args, kwargs).
    if request is not None and getattr(sender, "tiercel_spec", None) is not None:
        why = "terminated" if terminated else "expired" if expired else "revoked"
        abandoned.release_abandoned(sender, request.id, request.args, request.kwargs, why)
