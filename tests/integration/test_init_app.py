"""tiercel inside a project's own Celery app: Celery's First Steps layout, no TIERCEL_*.

The project (examples/first_steps: the app in ``tasks.py``, its own
``core/`` package and ``workers.py``) calls ``tiercel.init_app(app)`` and runs
``celery -A tasks worker`` itself, 2 nodes x 2 prefork processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import celery_workers
from tiercel.core.errors import SettingsError

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).parents[2] / "examples" / "first_steps"


def project_env(redis_url: str, queue: str, namespace: str) -> dict[str, str]:
    """The environment of a project that never heard of TIERCEL_* variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TIERCEL_") and key != "PYTHONPATH"
    }
    env.update(
        PYTHONPATH=str(PROJECT),  # the project's own tasks, core and workers, nothing else
        PROJECT_REDIS=redis_url,
        PROJECT_QUEUE=queue,
        PROJECT_NAMESPACE=namespace,
    )
    return env


@pytest.fixture()
def project(tmp_path: Path) -> Iterator[dict[str, str]]:
    redis_url = os.environ["TIERCEL_CACHE_URL"]  # the session's test Redis, by another name
    tag = uuid.uuid4().hex[:8]
    env = project_env(redis_url, f"first-steps-{tag}", f"fs{tag}")
    nodes = [f"{node}-{tag}@%h" for node in ("n1", "n2")]
    with celery_workers("tasks", nodes, cwd=tmp_path, env=env):
        yield env


def test_a_first_steps_project_gets_every_fleet_guarantee(
    project: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT / "client.py")],
        cwd=tmp_path,
        env=project,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["core"] == "the project's core" and report["workers"] == "the project's workers"
    assert report["first"] == ["computed", 49]
    source, task_id, value = report["again"]
    assert source in ("memory", "redis") and task_id is None and value == 49, "no task"
    stampede = report["stampede"]
    assert stampede["errors"] == [] and stampede["count"] == 40, stampede
    assert stampede["answers"] == [121] and stampede["computations"] == 1, stampede
    bound = report["bound"]
    assert bound["n"] == 5 and bound["task"] == "tasks.whoami" and bound["task_id"]
    assert report["bound_again"] in ("memory", "redis"), "self is not part of the key"
    assert report["after_invalidate"] == ["computed", 49, 2], "invalidation recomputes"
    assert report["plain"] == 5, "the project's plain tasks still run"
    conf = report["conf"]
    assert conf["prefetch"] == 3 and conf["queue"] == project["PROJECT_QUEUE"]
    assert conf["visibility_timeout"] == 7200, "the project's settings are unchanged"
    assert conf["maintenance_registered"]
    assert {"tiercel-sweep", "tiercel-housekeeping", "tiercel-aggregate"} <= set(conf["beat"])


def test_settings_come_from_arguments_then_the_environment_then_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery import Celery

    from tiercel.workers.init_app import settings_for

    for key in [k for k in os.environ if k.startswith("TIERCEL_")]:
        monkeypatch.delenv(key)
    app = Celery(
        "project",
        broker="redis://127.0.0.1:1/0",
        backend="redis://127.0.0.1:1/1",
        set_as_current=False,
    )
    from_app = settings_for(app)
    assert from_app.broker_url == "redis://127.0.0.1:1/0"
    assert from_app.cache_url == from_app.result_backend == "redis://127.0.0.1:1/1"
    monkeypatch.setenv("TIERCEL_CACHE_URL", "redis://127.0.0.1:1/2")
    monkeypatch.setenv("TIERCEL_NAMESPACE", "from-env")
    from_env = settings_for(app)
    assert (from_env.cache_url, from_env.namespace) == ("redis://127.0.0.1:1/2", "from-env")
    given = settings_for(app, cache_url="redis://127.0.0.1:1/3", namespace="given", lease_ttl=9)
    assert (given.cache_url, given.namespace, given.lease_ttl) == (
        "redis://127.0.0.1:1/3",
        "given",
        9,
    )
    with pytest.raises(SettingsError, match=r"unknown setting.*leas_ttl"):
        settings_for(app, leas_ttl=9)
    monkeypatch.delenv("TIERCEL_CACHE_URL")
    no_cache = Celery(
        "project", broker="redis://127.0.0.1:1/0", backend="rpc://", set_as_current=False
    )
    with pytest.raises(SettingsError, match="cache_url="):
        settings_for(no_cache)


def _celery_tiercel(
    project: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``celery -A tasks tiercel ARGS...`` in the project, as its users type it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "tiercel", *args],
        cwd=cwd,
        env=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tiercel_commands_run_as_a_celery_subcommand_of_the_projects_app(
    project: dict[str, str], tmp_path: Path
) -> None:
    listed = _celery_tiercel(project, tmp_path, "--help")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ("call", "cache", "settings", "health", "stats", "exporter"):
        assert f"  {name} " in listed.stdout, listed.stdout
    assert "  up " not in listed.stdout, "tiercel's own fleet stays with the tiercel script"

    shown = _celery_tiercel(project, tmp_path, "settings")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"TIERCEL_NAMESPACE                    {project['PROJECT_NAMESPACE']}" in shown.stdout

    counter = json.dumps(f"count:{uuid.uuid4().hex}")
    first = _celery_tiercel(project, tmp_path, "call", "tasks.square", "6", counter)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout.splitlines()[-1])["source"] == "computed"
    again = _celery_tiercel(project, tmp_path, "call", "tasks.square", "6", counter)
    answer = json.loads(again.stdout.splitlines()[-1])
    assert answer == {"source": "redis", "task_id": None, "result": 36}, again.stderr[-2000:]

    inspected = _celery_tiercel(
        project, tmp_path, "cache", "inspect", "tasks.square", "6", counter, "--json"
    )
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    found = json.loads(inspected.stdout)
    assert found["task"] == "tasks.square" and found["redis"] is not None
    assert f":{project['PROJECT_NAMESPACE']}:" in f":{found['namespace']}:"

    dropped = _celery_tiercel(
        project, tmp_path, "cache", "invalidate", "tasks.square", "6", counter
    )
    assert dropped.returncode == 0, dropped.stderr[-2000:]
    gone = _celery_tiercel(
        project, tmp_path, "cache", "inspect", "tasks.square", "6", counter, "--json"
    )
    assert gone.returncode == 1 and json.loads(gone.stdout)["redis"] is None, gone.stderr[-2000:]

    stats = _celery_tiercel(project, tmp_path, "stats", "--json", "--fresh")
    assert stats.returncode == 0, stats.stderr[-2000:]
    view = json.loads(stats.stdout)
    # The second `call` was answered from Redis by a short-lived client, which flushed
    # its figures on the way out.
    assert view["fleet"]["by_source"].get("redis", 0) >= 1, view["fleet"]


def test_the_exporter_under_celery_measures_the_projects_own_queue(tmp_path: Path) -> None:
    import time
    import urllib.request

    from celery import Celery
    from prometheus_client.parser import text_string_to_metric_families

    from tiercel.core.embedded.redis_server import free_port

    redis_url = os.environ["TIERCEL_CACHE_URL"]
    tag = uuid.uuid4().hex[:8]
    env = project_env(redis_url, f"first-steps-{tag}", f"fs{tag}")
    sender = Celery("sender", broker=redis_url, set_as_current=False)
    for n in range(2):  # no worker consumes this run's queue
        sender.send_task("tasks.square", (n,), queue=env["PROJECT_QUEUE"])
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "tiercel", "exporter", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as got:
                    text = got.read().decode()
                break
            except OSError:
                assert exporter.poll() is None, exporter.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the exporter never listened"
                time.sleep(0.2)
    finally:
        exporter.terminate()
        exporter.wait(30)
        with sender.connection_for_write() as connection:
            connection.default_channel.queue_purge(env["PROJECT_QUEUE"])
    lengths = {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tiercel_queue_length"
    }
    assert lengths == {env["PROJECT_QUEUE"]: 2}, "the project's default queue, not tiercel's"
    bound = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tiercel_staleness_bound_seconds"
    ]
    assert bound == [1.0]
