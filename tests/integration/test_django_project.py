"""tiercel in a Django-style project: Celery's Django layout with a ``core`` app.

examples/django_project is laid out as Celery's "First steps with Django":
``proj/celery.py`` reads Celery settings from Django's (``CELERY_`` prefix),
attaches tiercel with ``tiercel.init_app(app)`` and autodiscovers
``core/tasks.py``; the project runs ``celery -A proj worker`` itself, and a
management command submits. No ``TIERCEL_*`` variable is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.fleet import celery_workers

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).parents[2] / "examples" / "django_project"


@pytest.fixture()
def project() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TIERCEL_") and key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        PYTHONPATH=str(PROJECT),
        PROJECT_REDIS=os.environ["TIERCEL_CACHE_URL"],  # the session's test Redis
        PROJECT_QUEUE=f"django-{tag}",
    )
    with celery_workers("proj", [f"django-{tag}@%h"], cwd=PROJECT, env=env):
        yield env


def _run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *command],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _quote(env: dict[str, str], symbol: str, day: int) -> dict[str, Any]:
    done = _run(env, "manage.py", "quote", symbol, str(day))
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


def test_a_django_project_with_a_core_app_caches_across_its_workers(
    project: dict[str, str], request: pytest.FixtureRequest
) -> None:
    symbol = f"S{uuid.uuid4().hex[:6]}"
    computations = f"computations:{symbol}:3"
    raw = redis.Redis.from_url(project["PROJECT_REDIS"])
    request.addfinalizer(raw.close)

    first = _quote(project, symbol, 3)
    assert first["source"] == "computed" and isinstance(first["value"], float)
    assert Path(first["core"]).resolve().parent == (PROJECT / "core").resolve(), (
        "`import core` is the project's own app"
    )
    assert first["plain"] == 5, "the project's plain tasks still run"
    assert (first["app"], first["prefetch"]) == ("proj", 2)
    assert first["queue"] == project["PROJECT_QUEUE"], "the project's settings are unchanged"

    again = _quote(project, symbol, 3)
    assert again["source"] == "redis" and again["task_id"] is None, "answered without a task"
    assert again["value"] == first["value"] and int(raw.get(computations) or 0) == 1

    called = _run(
        project,
        "-m",
        "celery",
        "-A",
        "proj",
        "tiercel",
        "call",
        "core.tasks.quote",
        json.dumps(symbol),
        "3",
    )
    assert called.returncode == 0, called.stderr[-3000:]
    assert json.loads(called.stdout.splitlines()[-1])["source"] == "redis"

    dropped = _run(
        project,
        "-m",
        "celery",
        "-A",
        "proj",
        "tiercel",
        "cache",
        "invalidate",
        "--tag",
        "prices",
        "--yes",
    )
    assert dropped.returncode == 0, dropped.stderr[-3000:]
    after = _quote(project, symbol, 3)
    assert after["source"] == "computed" and after["value"] == first["value"]
    assert int(raw.get(computations) or 0) == 2, "invalidation by tag recomputes"
