"""``tiercel.init_app(app)``: attach tiercel to a Celery app you already have.

What it does to the app, and nothing more:

* settings: keyword arguments first, then ``TIERCEL_*`` variables, then the
  app itself (its broker and result backend; the cache tier defaults to the
  result backend when that is Redis). They become this process's settings,
  inherited by the worker processes it forks;
* every ``@cached_task`` is bound to this app in every thread (results find its
  result backend without ``app.set_default()``);
* tiercel's maintenance and metrics tasks are registered on it, and their beat
  entries merged into its ``beat_schedule`` (entries of the same name that the
  app already has win);
* the per-process lifecycle (levels, pools, listener after fork) is connected
  for its workers, prefork, solo or threads.

No Celery setting of the app is changed. Where tiercel depends on one, it says
so: a Redis broker's ``visibility_timeout`` must exceed the longest cached task,
or a running task is delivered twice.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

from tiercel.core.errors import SettingsError
from tiercel.core.settings import Settings, configure, resolve_settings

log = logging.getLogger("tiercel.init_app")

_REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Celery's own default visibility timeout on Redis brokers, in seconds.
_CELERY_VISIBILITY_TIMEOUT = 3600.0


def settings_for(
    app: Any, *, cache_url: str | None = None, namespace: str | None = None, **overrides: Any
) -> Settings:
    """tiercel's settings for ``app``: ``overrides``, then ``TIERCEL_*``, then the app."""
    known = {item.name for item in fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SettingsError(
            f"init_app() got unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    given = {name: value for name, value in overrides.items() if value is not None}
    if cache_url is not None:
        given["cache_url"] = cache_url
    if namespace is not None:
        given["namespace"] = namespace
    settings = Settings.from_env().replace(**given)
    broker = settings.broker_url or _text(app.conf.broker_url)
    backend = settings.result_backend or _text(app.conf.result_backend)
    if broker is None:
        raise SettingsError(
            "init_app(): the app has no broker_url; set it on the app or pass broker_url="
        )
    cache = settings.cache_url
    if cache is None:
        if backend is None or urlsplit(backend).scheme not in _REDIS_SCHEMES:
            raise SettingsError(
                "init_app(): no cache tier: pass cache_url='redis://...' (or set "
                "TIERCEL_CACHE_URL), or give the app a Redis result backend, which tiercel "
                f"then shares (result_backend is {backend!r})"
            )
        cache = backend
    return settings.replace(broker_url=broker, result_backend=backend, cache_url=cache)


def init_app(
    app: Any,
    *,
    settings: Settings | None = None,
    cache_url: str | None = None,
    namespace: str | None = None,
    **overrides: Any,
) -> Settings:
    """Attach tiercel to ``app`` (see the module docstring); returns the settings in use.

    ``settings`` gives them whole (tiercel's own app does, and keeps reading them from
    the environment); otherwise ``cache_url``,
    ``namespace`` and any other :class:`~tiercel.core.settings.Settings` field by name
    override the ``TIERCEL_*`` variables, which override what the app says.
    """
    from tiercel.tasks.registry import attach
    from tiercel.workers.schedule import beat_schedule

    if settings is None:
        settings = settings_for(app, cache_url=cache_url, namespace=namespace, **overrides)
        configure(settings)  # what the runtime of this process and its children reads
    else:
        # Given whole (tiercel's own app): the environment stays their source.
        settings = resolve_settings(settings)
    attach(app)
    import tiercel.tasks.maintenance
    import tiercel.workers.signals  # noqa: F401  (the per-process lifecycle)

    for module in settings.task_modules:
        if module not in app.conf.include:
            app.conf.include = (*app.conf.include, module)
    schedule = dict(app.conf.beat_schedule or {})
    for name, entry in beat_schedule(settings).items():
        schedule.setdefault(name, entry)
    app.conf.beat_schedule = schedule
    _check(app, settings)
    return settings


def _check(app: Any, settings: Settings) -> None:
    broker = _text(app.conf.broker_url) or ""
    if urlsplit(broker).scheme in _REDIS_SCHEMES:
        options = app.conf.broker_transport_options or {}
        timeout = float(options.get("visibility_timeout", _CELERY_VISIBILITY_TIMEOUT))
        if timeout <= settings.task_time_limit:
            log.warning(
                "tiercel: broker_transport_options['visibility_timeout'] (%gs) does not exceed "
                "TIERCEL_TASK_TIME_LIMIT (%gs): a cached task still running when it expires is "
                "delivered again; raise visibility_timeout or lower the time limit",
                timeout,
                settings.task_time_limit,
            )
    if not app.conf.result_backend:
        log.warning(
            "tiercel: the app has no result_backend: submit() can answer from the cache, "
            "but a result of an enqueued computation cannot be waited for"
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
