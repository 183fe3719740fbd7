"""The Celery app a ``tiercel`` command works with.

Under ``celery -A proj tiercel ...`` it is the app Celery loaded (attached by
the project's own ``tiercel.init_app(app)``, or attached here with the app's
settings if the project did not); under the ``tiercel`` console script it is
tiercel's own app, :mod:`tiercel.workers.app`, configured from ``TIERCEL_*``
variables or a fleet started by ``tiercel up``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["command_app", "use_app"]


def use_app(app: Any) -> None:
    """Make ``app`` the one this process's commands use, with its task modules imported.

    An app the project already attached keeps its settings; one it did not is
    attached with what the app itself says (``tiercel.init_app(app)``).
    """
    from tiercel.tasks.registry import attached_app_or_none
    from tiercel.workers.init_app import init_app

    if attached_app_or_none() is not app:
        init_app(app)
    # What a worker of the app would import: its `include`, `imports` and autodiscovery.
    app.loader.import_default_modules()


def command_app() -> Any:
    """The app of the running command: the one :func:`use_app` chose, else tiercel's own."""
    from tiercel.tasks.registry import attached_app_or_none

    app = attached_app_or_none()
    if app is None:
        from tiercel.workers.app import app
    return app
