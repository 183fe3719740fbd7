"""``@cached_task``: a Celery task whose results are computed once across the fleet.

The decorated function is a normal Celery task (``.delay()``,
``.apply_async()``, Flower's apply API all work) whose body looks in the
worker's local levels and the Redis tier before computing, computes under a
fleet-wide lease, and writes the result through every tier. On top of that
it offers ``submit()``, which answers from the cache without touching the
broker when it can, and otherwise joins a computation already in flight.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.exceptions import Retry, Terminated
from celery.result import AsyncResult
from celery.worker.request import Request

from tiercel.core.cache.freshness import FreshnessPolicy
from tiercel.core.cache.hot_memo import call_key
from tiercel.core.cache.lookup import SOURCE_JOINED, Lookup
from tiercel.core.cache.memoize import CachedFunction
from tiercel.core.cache.miss_loop import defer
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.functions import function_name
from tiercel.core.errors import KeyEncodingError, TierUnavailable
from tiercel.core.missing import MISSING
from tiercel.core.tier.redis_tier import InflightRead
from tiercel.tasks import runtime
from tiercel.tasks.hot_path import CachedTaskProxy, TaskHotPath
from tiercel.tasks.publishing import NO_OPTIONS, PublishOptions, SubmitWith
from tiercel.tasks.registry import register
from tiercel.tasks.results import CachedResult

# Cached tasks are idempotent by construction: redeliver rather than lose them.
_TASK_DEFAULTS: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
#: Message header asking the worker to recompute although a value exists.
REFRESH_HEADER = "tiercel_refresh"
#: Message header saying the publisher claimed the key's in-flight marker for this task:
#: a worker that answers without computing clears it.
INFLIGHT_HEADER = "tiercel_inflight"


class CachedRequest(Request):  # type: ignore[misc]
    """A cached task's request in the worker's main process: when the process computing
    it is gone (hard time limit, terminate, lost child), free its lease at once."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            self._release("hard time limit")

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        error = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(error, (WorkerLostError, Terminated)):
            self._release(type(error).__name__)

    def _release(self, why: str) -> None:
        from tiercel.tasks.abandoned import release_abandoned

        release_abandoned(self.task, self.id, self.args, self.kwargs, why)


class CachedTask(Task):  # type: ignore[misc]
    """Base class of every cached task; ``tiercel_spec`` says how it caches."""

    tiercel_spec: CachedFunction[Any, Any]
    #: Its hot memo in this process and its request stack.
    tiercel_hot: TaskHotPath
    #: ``bind=True``: the function's first parameter is the task, left out of the key.
    tiercel_bound: bool = False
    Request = "tiercel.tasks.cached:CachedRequest"

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery's hook after binding: keep requests on the stack the body reads."""
        super().on_bound(app)
        hot = cls.__dict__.get("tiercel_hot")
        if hot is not None:
            cls.request_stack = hot.requests

    def tiercel_args(self, args: Iterable[Any]) -> tuple[Any, ...]:
        """The function's positional arguments for a call with the task's ``args``: with
        ``bind=True`` the task comes first (``tiercel_spec`` ignores it in the key)."""
        return (self, *args) if self.tiercel_bound else tuple(args)

    def tiercel_claim_ahead(
        self, rt: runtime.Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Before the body (``task_prerun``, ahead of Celery's STARTED store): a task
        whose submitter found its key missing in every tier claims the key's lease now,
        so the answer arrives while Celery stores STARTED instead of after it (see
        ``FleetCoordinator.claim_ahead``). Anything the body would stumble on (an
        argument no key can encode, Redis down, a value here already) is left to it."""
        request = self.request
        if not _header(request, INFLIGHT_HEADER) or _asked_to_refresh(request):
            return
        spec = self.tiercel_spec
        cache = rt.cache.with_levels(spec.levels)
        coordinator = rt.coordinator
        try:
            key = rt.key(spec, self.tiercel_args(args), kwargs)
            if cache.holds_locally(key) or not coordinator.available():
                return
            coordinator.claim_ahead(
                key,
                ttl=spec.stored_ttl(cache.default_ttl),
                tags=spec.tags,
                inflight_id=request.id,
            )
        except (KeyEncodingError, TierUnavailable):
            return

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``retry``; the ``Retry`` it raises (or returns, with ``throw=False``)
        gives up the key's lease and in-flight marker as a deferral, not a failure, so
        tasks waiting on the lease look again instead of failing with it."""
        try:
            outcome = super().retry(*args, **kwargs)
        except Retry as exc:
            defer(exc)
            raise
        return defer(outcome) if isinstance(outcome, Retry) else outcome

    def submit(self, *args: Any, **kwargs: Any) -> CachedResult:
        """Answer from the cache when possible; else join the computation in flight,
        or enqueue exactly one task for the key.

        A request this process answers itself (a hit, or a join) is counted here,
        by source; one it enqueues is counted by the worker that computes it.
        Routing and timing options go first: ``fn.options(queue=...).submit(...)``."""
        return self.tiercel_submit(args, kwargs, NO_OPTIONS)

    def options(self, **options: Any) -> SubmitWith:
        """``submit``, ``asubmit`` and ``submit_many`` that publish with these
        ``apply_async`` options (``queue``, ``priority``, ``countdown``, ``eta``,
        ``expires`` ...): ``fn.options(queue="reports").submit(x)``; see
        :mod:`tiercel.tasks.publishing`."""
        return SubmitWith(self, PublishOptions.of(options))

    def tiercel_submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], publish: PublishOptions
    ) -> CachedResult:
        """:meth:`submit` of ``args`` and ``kwargs``, publishing with ``publish``."""
        hot = self.tiercel_hot
        answered = hot.resolved(args, kwargs)
        if answered is not None:
            return answered
        started = time.perf_counter()
        rt = runtime.current()
        spec = self.tiercel_spec
        memo = hot.bind(rt)
        mark = memo.mark()
        cache = rt.cache.with_levels(spec.levels)
        key = rt.key(spec, self.tiercel_args(args), kwargs)
        found = cache.lookup(key, remote=False)
        claim: _Claim | None = None
        read: InflightRead | None = None
        if found is None:
            trusted = cache.local_trust_remaining() > 0
            own = rt.joins.task_of(key, cache.epoch) if trusted else None
            if own is not None:  # the key's task is this process's: join it, no round trip
                return self.tiercel_joined(rt, cache, key, own, args, kwargs, publish, started)
            # One round trip: the value if Redis holds one, else the key marked in flight
            # for the task this call is about to publish (or the task marking it already).
            claim = _Claim.now(rt, cache, publish)
            drops = cache.drops
            read = rt.tier.read_or_claim(key, claim.task_id, claim.ttl)
            if read.entry is not None:
                found = cache.accept_entry(key, read.entry, promote=drops == cache.drops)
        serve, refresh = spec.serves(found)
        if serve:
            assert found is not None
            if refresh:
                self.tiercel_refresh_soon(rt, key, args, kwargs)
            else:
                memo.install(call_key(args, kwargs), key, found, mark, rt.hot_lifetime(spec, found))
            rt.recorder.record(
                spec.name, found.source, time.perf_counter() - started, found.compute_seconds
            )
            return CachedResult.resolved(key, found.value, public_source(found.source), spec)
        if read is not None and read.state in ("claimed", "joined"):
            assert claim is not None
            existing, claimed = read.task_id if read.state == "joined" else None, True
        else:  # a value that must not answer (stale, an old failure), or Redis said nothing
            claim = claim or _Claim.now(rt, cache, publish)
            try:
                existing, claimed = rt.leases.claim_inflight(key, claim.task_id, claim.ttl), True
            except TierUnavailable:
                existing, claimed = None, False  # no coalescing without Redis; it still runs
        if existing is not None:
            return self.tiercel_joined(rt, cache, key, existing, args, kwargs, publish, started)
        task_id = claim.task_id
        if claimed:  # before publishing: this process's next submits of the key join at once
            rt.joins.remember(key, task_id, claim.until, claim.epoch)
        enqueued = self.tiercel_enqueue(rt, key, task_id, args, kwargs, publish=publish)
        return self.tiercel_computing(rt, cache, key, enqueued, args, kwargs, publish)

    def tiercel_computing(
        self,
        rt: runtime.Runtime,
        cache: MultiLevelCache,
        key: str,
        published: AsyncResult,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        publish: PublishOptions,
    ) -> CachedResult:
        """A pending handle on ``published``, the task this call just enqueued for ``key``."""
        return CachedResult.pending(
            key,
            published,
            "computed",
            rt,
            cache,
            self.tiercel_spec,
            self.tiercel_resubmitter(published.id, args, kwargs, publish),
            republish_after=publish.republish_after(rt.settings.republish_after),
        )

    def tiercel_joined(
        self,
        rt: runtime.Runtime,
        cache: MultiLevelCache,
        key: str,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        publish: PublishOptions,
        started: float,
    ) -> CachedResult:
        """A pending handle on ``task_id``, which is computing ``key`` already."""
        spec = self.tiercel_spec
        rt.recorder.record(spec.name, SOURCE_JOINED, time.perf_counter() - started, 0.0)
        return CachedResult.pending(
            key,
            rt.results.of(task_id, self.app),
            "joined",
            rt,
            cache,
            spec,
            self.tiercel_resubmitter(task_id, args, kwargs, publish),
        )

    async def asubmit(self, *args: Any, **kwargs: Any) -> CachedResult:
        """:meth:`submit` for asyncio code: the same decision, Redis awaited; await the
        value with ``await result.aget(timeout=...)`` (or ``await result``)."""
        from tiercel.tasks.async_submit import asubmit

        return await asubmit(self, args, kwargs)

    def tiercel_resubmitter(
        self, task_id: str, args: Any, kwargs: Any, publish: PublishOptions = NO_OPTIONS
    ) -> Callable[[], Any]:
        """Publishes this call again under ``task_id`` (see CachedResult's re-publishing)."""
        options = publish.merged({INFLIGHT_HEADER: True})
        return lambda: self.apply_async(args, kwargs, task_id=task_id, **options)

    def tiercel_refresh_soon(self, rt: runtime.Runtime, key: str, args: Any, kwargs: Any) -> None:
        """Enqueue one refresh of ``key`` (early or stale) unless one is in flight."""
        task_id = str(uuid.uuid4())
        try:
            if rt.leases.claim_inflight(key, task_id, rt.settings.inflight_ttl) is not None:
                return  # a computation of this key is already queued or running
        except TierUnavailable:
            return
        self.tiercel_enqueue(rt, key, task_id, args, kwargs, refresh=True)

    def tiercel_enqueue(
        self,
        rt: runtime.Runtime,
        key: str,
        task_id: str,
        args: Any,
        kwargs: Any,
        *,
        refresh: bool = False,
        publish: PublishOptions = NO_OPTIONS,
    ) -> AsyncResult:
        try:
            # Every task enqueued here was claimed in flight under its id first.
            headers = {INFLIGHT_HEADER: True, **({REFRESH_HEADER: True} if refresh else {})}
            published = self.apply_async(args, kwargs, task_id=task_id, **publish.merged(headers))
            return rt.results.remember(published)  # shared with this process's joiners
        except BaseException:
            # Nothing was published: do not leave joiners waiting for a task that never runs.
            rt.joins.forget(key, task_id)
            with contextlib.suppress(TierUnavailable):
                rt.leases.clear_inflight(key, task_id)
            raise

    def submit_many(self, calls: Iterable[Any]) -> list[CachedResult]:
        """Submit many calls: one MGET for all of them, one round trip to claim the
        misses, and one task per distinct key nobody is computing yet.

        Each item is a tuple of positional arguments, or an ``(args, kwargs)`` pair
        whose second element is a dict. Requests are counted as :meth:`submit` counts
        them, each with its share of the batch's time.
        """
        return self.tiercel_submit_many(calls, NO_OPTIONS)

    def tiercel_submit_many(
        self, calls: Iterable[Any], publish: PublishOptions
    ) -> list[CachedResult]:
        """:meth:`submit_many`, publishing with ``publish``."""
        started = time.perf_counter()
        rt = runtime.current()
        spec = self.tiercel_spec
        normalised = [_split_call(call) for call in calls]
        keys = [rt.key(spec, self.tiercel_args(args), kwargs) for args, kwargs in normalised]
        cache = rt.cache.with_levels(spec.levels)
        hits: dict[str, Lookup] = {}
        stale: set[str] = set()
        for key, found in cache.lookup_many(keys).items():
            serve, refresh = spec.serves(found)  # as submit() decides, key by key
            if serve:
                hits[key] = found
                if refresh:
                    stale.add(key)
        first_of: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key not in hits:
                first_of.setdefault(key, index)
            elif key in stale:
                stale.discard(key)  # one refresh per key, with its first call's arguments
                self.tiercel_refresh_soon(rt, key, *normalised[index])
        candidates = {key: str(uuid.uuid4()) for key in first_of}
        epoch = cache.epoch
        ttl = publish.inflight_ttl(rt.settings.inflight_ttl)
        until = rt.joins.deadline(ttl)
        try:
            claims = rt.leases.claim_inflight_many(list(candidates.items()), ttl)
            claimed = True
        except TierUnavailable:
            claims, claimed = [None] * len(candidates), False
        handles: dict[str, tuple[AsyncResult, str]] = {}
        for (key, task_id), existing in zip(candidates.items(), claims, strict=True):
            if existing is not None:
                handles[key] = (rt.results.of(existing, self.app), "joined")
            else:
                if claimed:
                    rt.joins.remember(key, task_id, until, epoch)
                args, kwargs = normalised[first_of[key]]
                handles[key] = (
                    self.tiercel_enqueue(rt, key, task_id, args, kwargs, publish=publish),
                    "computed",
                )
        results: list[CachedResult] = []
        for index, key in enumerate(keys):
            hit = hits.get(key)
            if hit is not None:
                results.append(
                    CachedResult.resolved(key, hit.value, public_source(hit.source), spec)
                )
            else:
                async_result, source = handles[key]
                if first_of[key] != index:
                    source = "joined"
                first_args, first_kwargs = normalised[first_of[key]]
                results.append(
                    CachedResult.pending(
                        key,
                        async_result,
                        source,
                        rt,
                        cache,
                        spec,
                        self.tiercel_resubmitter(
                            async_result.id, first_args, first_kwargs, publish
                        ),
                        republish_after=publish.republish_after(rt.settings.republish_after),
                    )
                )
        share = (time.perf_counter() - started) / max(1, len(keys))
        for result in results:
            hit = hits.get(result.key) if result.task_id is None else None
            if hit is not None:
                rt.recorder.record(spec.name, hit.source, share, hit.compute_seconds)
            elif result.source == SOURCE_JOINED:
                rt.recorder.record(spec.name, SOURCE_JOINED, share, 0.0)
        return results

    def cached_call(self, *args: Any, **kwargs: Any) -> Any:
        """Compute in this process through local levels, the Redis tier and the lease."""
        hot = self.tiercel_hot
        memo = hot.current()
        if memo is not None:
            value = memo.answer(args, kwargs)
            if value is not MISSING:
                return value
        return hot.call(self, args, kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Forget the value of one call in every tier and every process."""
        rt = runtime.current()
        rt.cache.invalidate(rt.key(self.tiercel_spec, self.tiercel_args(args), kwargs))

    def invalidate_tag(self, tag: str) -> int:
        """Forget every value carrying ``tag``; returns the Redis keys removed."""
        return runtime.current().cache.invalidate_tag(tag)

    def invalidate_all(self) -> int:
        """Forget every value of this task (a version bump); returns the new generation."""
        return runtime.current().invalidate_all(self.tiercel_spec)


class _Claim(NamedTuple):
    """A submit's claim of a key, taken before it is asked for: the task id to publish,
    the cache's epoch then (an invalidation from then on voids it), the marker's TTL and
    when this process's copy of it (``LocalJoins``) runs out."""

    task_id: str
    epoch: int
    ttl: float
    until: float

    @classmethod
    def now(cls, rt: runtime.Runtime, cache: MultiLevelCache, publish: PublishOptions) -> _Claim:
        ttl = publish.inflight_ttl(rt.settings.inflight_ttl)
        return cls(str(uuid.uuid4()), cache.epoch, ttl, rt.joins.deadline(ttl))


def public_source(source: str) -> str:
    if source in ("redis", "computed", "joined"):
        return source
    return "memory"  # any local level


def _split_call(call: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if (
        isinstance(call, tuple)
        and len(call) == 2
        and isinstance(call[0], (tuple, list))
        and isinstance(call[1], dict)
    ):
        return tuple(call[0]), dict(call[1])
    if isinstance(call, (tuple, list)):
        return tuple(call), {}
    return (call,), {}


def _asked_to_refresh(request: Any) -> bool:
    return _header(request, REFRESH_HEADER)


def _header(request: Any, name: str) -> bool:
    headers = getattr(request, "headers", None) or {}
    return bool(getattr(request, name, False) or headers.get(name))


def _plain(request: Any) -> bool:
    """True when a running request asks nothing of its body beyond the value: no refresh,
    no in-flight marker to clear (asked once, when Celery pushes the request)."""
    fields = request.__dict__
    if fields.get(REFRESH_HEADER) or fields.get(INFLIGHT_HEADER):
        return False
    headers = fields.get("headers")
    return not (headers and (headers.get(REFRESH_HEADER) or headers.get(INFLIGHT_HEADER)))


def cached_task(
    fn: Callable[..., Any] | None = None,
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    version: str | None = None,
    ignore: Iterable[str] = (),
    name: str | None = None,
    stale_ttl: float = 0.0,
    stale_while_revalidate: bool = True,
    stale_if_error: bool = False,
    early_refresh: float = 1.0,
    levels: Iterable[str] | None = None,
    cache_errors: Iterable[type[BaseException]] = (),
    error_ttl: float = 30.0,
    **celery_options: Any,
) -> Any:
    """Register ``fn`` as a cached Celery task (usable bare or with options).

    ``ttl`` seconds in every tier (default: ``TIERCEL_DEFAULT_TTL``);
    ``tags`` for ``invalidate_tag``; ``version`` overrides the digest of the
    function's code; ``ignore`` names arguments left out of the key.
    ``stale_ttl`` keeps values that long past ``ttl``: readers then get the stale
    value while one refresh runs (``stale_while_revalidate``), and a failing
    refresh serves it instead of the error when ``stale_if_error``.
    ``early_refresh`` is XFetch's beta (0 turns probabilistic early refresh off).
    ``levels`` names the local levels (``"memory"``, ``"bytes"``) its values may
    occupy in each process; ``()`` keeps them in the Redis tier only.
    A task that raises is not cached, unless the exception is an instance of a
    type in ``cache_errors``: that failure is cached for ``error_ttl`` seconds
    and raised again (as its own type) to every caller meanwhile.
    Other keyword arguments go to Celery's task decorator. With ``bind=True`` the
    function's first parameter receives the task, as in Celery (``self.request``,
    ``self.retry(...)``), and is not part of the key.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        if inspect.iscoroutinefunction(func):
            # Each call would return a fresh coroutine object: nothing could ever be cached.
            raise TypeError(
                f"@cached_task cannot register the coroutine function {function_name(func)}: "
                "Celery workers do not run coroutines; make the task a plain def, or cache "
                "the async def in the asyncio process with tiercel.cached"
            )
        task_name = name or f"{func.__module__}.{func.__name__}"
        bound = bool(celery_options.get("bind"))
        ignored = tuple(ignore)
        if bound:
            params = list(inspect.signature(func).parameters)
            if not params:
                raise TypeError(f"{task_name}: bind=True needs a first parameter for the task")
            ignored = (params[0], *ignored)
        policy = FreshnessPolicy(
            stale_ttl=stale_ttl,
            stale_while_revalidate=stale_while_revalidate,
            stale_if_error=stale_if_error,
            early_refresh=early_refresh,
        )
        spec = CachedFunction(
            func,
            ttl=ttl,
            tags=tuple(tags),
            version=version,
            ignore=ignored,
            name=task_name,
            policy=policy,
            levels=None if levels is None else tuple(levels),
            cache_errors=tuple(cache_errors),
            error_ttl=error_ttl,
        )

        hot = TaskHotPath(spec, _plain)
        requests = hot.requests

        # With bind=True Celery calls run as a method: args[0] is then the task itself.
        # Celery pushes the running request on ``requests`` (CachedTask.on_bound); called
        # directly, or from inside another task, there is none.
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            memo = hot.memo
            # A memo answer tells the recorder nothing: the source event after the task
            # names the memo's level when nothing else was recorded (every other way
            # through this body records its call).
            if (
                memo is not None
                and memo.owner is runtime.RUNTIME.value
                and requests.state is not False
            ):
                value = memo.answer(args[1:] if bound else args, kwargs)
                if value is not MISSING:
                    return value
            rt = runtime.current()
            request = requests.top
            inflight_id = request.id if request is not None else None
            refresh = request is not None and _asked_to_refresh(request)
            # Published by submit after it missed in every tier and marked the key in
            # flight: the worker claims the lease without reading Redis first.
            claimed = request is not None and _header(request, INFLIGHT_HEADER)
            memo = hot.bind(rt)
            mark = memo.mark()
            key = rt.counted_key(spec, args, kwargs)
            found = rt.call(
                spec,
                args,
                kwargs,
                inflight_id=inflight_id,
                force_refresh=refresh,
                key=key,
                claimed=claimed,
            )
            if inflight_id is not None and found.source != "computed":
                # Answered without computing: our own in-flight marker is still there.
                with contextlib.suppress(TierUnavailable):
                    rt.leases.clear_inflight(key, inflight_id)
            memo_key = call_key(args[1:] if bound else args, kwargs)
            memo.install(memo_key, key, found, mark, rt.hot_lifetime(spec, found))
            return found.value

        options = {**_TASK_DEFAULTS, **celery_options}
        # Registered on every app (as shared_task does), but the name stands for the task
        # of the app tiercel is attached to, in every thread: Celery's current app is
        # thread-local, and a thread's default app has no result backend.
        shared_task(
            name=task_name,
            base=CachedTask,
            tiercel_spec=spec,
            tiercel_hot=hot,
            tiercel_bound=bound,
            **options,
        )(run)
        task = CachedTaskProxy(task_name, hot)
        register(task_name, task)
        return task

    return decorate(fn) if fn is not None else decorate
