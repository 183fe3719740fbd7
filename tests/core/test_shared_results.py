"""SharedResults: one AsyncResult per task id while a handle holds it."""

from __future__ import annotations

import gc

from celery import Celery

from tiercel.tasks.shared_results import SharedResults


def test_handles_of_one_task_share_its_result_while_one_holds_it() -> None:
    app = Celery("shared-results", backend="cache+memory://")
    results = SharedResults()
    first = results.of("task-1", app)
    assert results.of("task-1", app) is first, "joiners share the result"
    assert results.of("task-2", app) is not first
    other_app = Celery("another", backend="cache+memory://")
    assert results.of("task-1", other_app).app is other_app, "never another app's result"
    published = results.remember(app.AsyncResult("task-3"))
    assert results.of("task-3", app) is published, "a task published here is shared too"
    del first, published
    gc.collect()
    assert len(results) == 0, "bounded: nothing is kept once no handle holds it"
