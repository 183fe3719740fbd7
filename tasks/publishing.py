"""``fn.options(queue=..., countdown=...).submit(...)``: Celery's publishing options.

Celery users route and time a task with ``apply_async`` options (``queue``,
``routing_key``, ``exchange``, ``priority``, ``countdown``, ``eta``,
``expires``, ``headers``, ``serializer`` ...). A cached call's ``submit()``
takes the function's own arguments, so the options come first, in an options
call: ``report.options(queue="reports", priority=7).submit("eu", 12)``. They
apply to the one message ``submit()`` publishes when nothing answers the
call, and to its re-publication should that message be lost:

* a hit is answered from the cache and publishes nothing;
* a join waits on the task already in flight, published with that call's
  options (a key is computed once, wherever it was routed);
* a delay (``countdown`` or ``eta``) lengthens the in-flight marker and the
  wait before a still-pending task counts as lost by the same delay, so a
  delayed task is joined, not published twice;
* ``expires``: a task that expires before a worker starts it is revoked, and
  its in-flight marker is cleared (:mod:`tiercel.workers.signals`), so the
  next submit publishes anew; its waiters get Celery's ``TaskRevokedError``.

Refused, with the reason: ``task_id`` (tiercel names the task of a key), and
``link`` / ``link_error`` (a call answered from the cache runs no task, so a
callback would run only sometimes: use a chain, whose cached steps pass their
value on).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tiercel.core.errors import SettingsError

if TYPE_CHECKING:
    from tiercel.tasks.results import CachedResult

__all__ = ["NO_OPTIONS", "PublishOptions", "SubmitWith"]

_REFUSED = {
    "task_id": "tiercel names the task that computes a key",
    "link": "a call answered from the cache runs no task, so the callback would run "
    "only sometimes; chain the tasks instead",
    "link_error": "a call answered from the cache runs no task, so the errback would run "
    "only sometimes; chain the tasks instead",
}


@dataclass(frozen=True)
class PublishOptions:
    """``apply_async`` options for the message a ``submit()`` publishes."""

    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> PublishOptions:
        """Checked options (a :class:`SettingsError` names a refused one and why)."""
        for name, why in _REFUSED.items():
            if name in options:
                raise SettingsError(f"submit options: {name}= is not accepted: {why}")
        countdown = options.get("countdown")
        if countdown is not None and (
            isinstance(countdown, bool) or not isinstance(countdown, (int, float))
        ):
            raise SettingsError(f"submit options: countdown must be seconds, got {countdown!r}")
        eta = options.get("eta")
        if eta is not None and not isinstance(eta, datetime.datetime):
            raise SettingsError(f"submit options: eta must be a datetime, got {eta!r}")
        return cls(dict(options))

    def delay(self) -> float:
        """Seconds before a worker may start the task (``countdown`` or ``eta``), >= 0."""
        countdown = self.options.get("countdown")
        if countdown is not None:
            return max(0.0, float(countdown))
        eta: datetime.datetime | None = self.options.get("eta")
        if eta is None:
            return 0.0
        now = datetime.datetime.now(eta.tzinfo)
        return max(0.0, (eta - now).total_seconds())

    def inflight_ttl(self, base: float) -> float:
        """The in-flight marker's lifetime: ``base`` from when the task may start."""
        return base + self.delay()

    def republish_after(self, base: float) -> float:
        """Seconds a task may stay pending before it counts as lost (0 stays off)."""
        return base + self.delay() if base > 0 else base

    def merged(self, headers: Mapping[str, Any] | None) -> dict[str, Any]:
        """``apply_async`` keyword arguments: these options, tiercel's headers added."""
        merged = dict(self.options)
        if headers:
            merged["headers"] = {**(merged.get("headers") or {}), **headers}
        return merged


NO_OPTIONS = PublishOptions()


class SubmitWith:
    """A cached task with publishing options: ``submit``, ``asubmit`` and
    ``submit_many`` decide as the task's own do, and publish with the options."""

    __slots__ = ("_publish", "_task")

    def __init__(self, task: Any, publish: PublishOptions) -> None:
        self._task = task
        self._publish = publish

    def submit(self, *args: Any, **kwargs: Any) -> CachedResult:
        """The task's :meth:`~tiercel.tasks.cached.CachedTask.submit`, these options."""
        result: CachedResult = self._task.tiercel_submit(args, kwargs, self._publish)
        return result

    async def asubmit(self, *args: Any, **kwargs: Any) -> CachedResult:
        """The task's ``asubmit``, these options."""
        from tiercel.tasks.async_submit import asubmit

        return await asubmit(self._task, args, kwargs, self._publish)

    def submit_many(self, calls: Iterable[Any]) -> list[CachedResult]:
        """The task's ``submit_many``, these options for every message it publishes."""
        results: list[CachedResult] = self._task.tiercel_submit_many(calls, self._publish)
        return results

    def options(self, **options: Any) -> SubmitWith:
        """More options on top of these (later ones win)."""
        return SubmitWith(self._task, PublishOptions.of({**self._publish.options, **options}))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._publish.options.items())
        return f"<{self._task.name}.options({shown})>"
