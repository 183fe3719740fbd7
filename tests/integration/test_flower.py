"""Flower with tiercel's configuration file, against the module's fleet: the cache fields
on a task's page, client hits in /metrics, and no maintenance tasks in the task list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tiercel.core.embedded.redis_server import free_port
from tiercel.core.metrics.snapshots import counter_total
from tiercel.tasks import runtime
from tiercel.tasks.maintenance import aggregate, sweep
from tiercel.tasks.metrics import CLIENT_REQUESTS
from tiercel.workers.cache_admin import describe_key
from tiercel.workers.launcher import Fleet, flower_config_path

pytestmark = pytest.mark.integration

SQUARE = "tiercel.tasks.examples.slow_square"


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return response.read().decode()


def _start_flower(port: int, output: int) -> subprocess.Popen[bytes]:
    """Flower with ``--conf`` tiercel's file on ``port``, its output to ``output``, once it
    answers its health check."""
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "celery", "-A", "tiercel.workers.app", "flower"),
            "--address=127.0.0.1",
            f"--port={port}",
            f"--conf={flower_config_path()}",
        ],
        env=dict(os.environ, FLOWER_UNAUTHENTICATED_API="true"),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(f"http://127.0.0.1:{port}/healthcheck", timeout=1)
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() >= deadline:
                os.killpg(process.pid, 9)
                process.wait(10)
                raise AssertionError("flower did not start") from None
            time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s: never let Flower outlive its test."""
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(10)


@pytest.fixture(scope="module")
def flower(fleet: Fleet) -> Iterator[str]:
    """Flower on a free loopback port with ``--conf`` tiercel's file; yields its base URL."""
    port = free_port()
    process = _start_flower(port, subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # its event receiver subscribes right after the web server starts
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process, 20)


def _pages(base: str, task_ids: list[str], timeout: float = 15.0) -> dict[str, str]:
    """Each task's page once Flower shows it succeeded with tiercel's rows."""
    pages: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(pages) < len(task_ids):
        for task_id in task_ids:
            if task_id in pages:
                continue
            try:
                html = _get(f"{base}/task/{task_id}")
            except OSError:  # 404 until its first event arrives
                continue
            if "Tiercel tier" in html and "SUCCESS" in html:
                pages[task_id] = html
        assert time.monotonic() < deadline, sorted(set(task_ids) - set(pages))
        time.sleep(0.3)
    return pages


def test_a_cached_tasks_page_shows_its_tier_seconds_saved_and_key(flower: str) -> None:
    from tiercel.tasks.examples import slow_square

    n = uuid.uuid4().int % 10**9
    rt = runtime.current()
    key = rt.key(slow_square.tiercel_spec, (n, 50), {})
    computed = slow_square.delay(n, 50)
    computed.get(timeout=30)
    # Sequential runs land on any of the four processes: the first in another process
    # reads Redis, later ones in the same process hit its memory level.
    hits = []
    for _ in range(8):
        result = slow_square.delay(n, 50)
        result.get(timeout=30)
        hits.append(result.id)
    pages = _pages(flower, [computed.id, *hits])

    def row(html: str, label: str) -> str:
        start = html.index(f"<dt>{label}</dt>")
        dd = html[html.index("<dd>", start) + 4 : html.index("</dd>", start)]
        return dd.strip()

    assert row(pages[computed.id], "Tiercel tier") == "computed"
    assert row(pages[computed.id], "Tiercel key") == key
    tiers = {task_id: row(pages[task_id], "Tiercel tier") for task_id in hits}
    assert set(tiers.values()) <= {"memory", "bytes", "redis"}, tiers
    stored = describe_key(rt, key)["redis"]
    assert stored is not None and stored["compute_seconds"] >= 0.05
    redis_hits = [task_id for task_id, tier in tiers.items() if tier == "redis"]
    assert redis_hits, tiers  # 8 runs, never in another process than the first: 4**-8
    for task_id in redis_hits:
        # A Redis hit saved what the stored value cost to compute.
        assert row(pages[task_id], "Tiercel seconds saved") == str(stored["compute_seconds"])
    for task_id in hits:
        assert row(pages[task_id], "Tiercel key") == key
        assert float(row(pages[task_id], "Tiercel seconds saved")) > 0
    # Celery's own rows are still there.
    assert "<dt>Runtime</dt>" in pages[computed.id]
    # Flower counts the source events per task and source.
    counted = {
        line.split('type="task-tiercel-')[1].split('"')[0]
        for line in _get(f"{flower}/metrics").splitlines()
        if line.startswith("flower_events_total") and "task-tiercel-" in line and SQUARE in line
    }
    assert {"computed", *tiers.values()} <= counted, counted


def test_client_hits_are_counted_per_task_in_flowers_metrics(flower: str) -> None:
    from tiercel.tasks.examples import slow_square

    n = uuid.uuid4().int % 10**9
    slow_square.delay(n, 1).get(timeout=30)
    for _ in range(5):
        found = slow_square.submit(n, 1)
        assert found.task_id is None and found.get(timeout=5) == n * n  # no task ran
    rt = runtime.current()
    assert rt.publisher is not None and rt.publisher.publish()
    counted = counter_total(rt.metrics.snapshot(), CLIENT_REQUESTS, task=SQUARE)
    assert counted >= 5
    aggregate.delay().get(timeout=30)
    deadline = time.monotonic() + 15
    while True:
        lines = [
            line
            for line in _get(f"{flower}/metrics").splitlines()
            if line.startswith(CLIENT_REQUESTS) and f'task="{SQUARE}"' in line
        ]
        shown = sum(float(line.rsplit(" ", 1)[1]) for line in lines)
        if shown >= counted:
            break
        assert time.monotonic() < deadline, lines  # the collector keeps a view 5 s
        time.sleep(0.5)
    sources = {line.split('source="')[1].split('"')[0] for line in lines}
    assert sources & {"memory", "bytes", "redis"}, lines
    assert "computed" not in sources  # the computation ran in a task, not here


def test_maintenance_tasks_stay_out_of_flowers_task_list(flower: str) -> None:
    from tiercel.tasks.examples import slow_square

    quiet = [aggregate.delay(), sweep.delay()]
    quiet[0].get(timeout=30)
    # A task sent after them, once Flower lists it, shows the events before it arrived.
    marker = slow_square.delay(uuid.uuid4().int % 10**9, 1)
    marker.get(timeout=30)
    deadline = time.monotonic() + 15
    while True:
        tasks = json.loads(_get(f"{flower}/api/tasks"))
        if marker.id in tasks and tasks[marker.id]["state"] == "SUCCESS":
            break
        assert time.monotonic() < deadline, list(tasks)
        time.sleep(0.3)
    names = {task["name"] for task in tasks.values()}
    assert not {name for name in names if name and name.startswith("tiercel.m")}, names
    assert not {result.id for result in quiet} & set(tasks)
    assert SQUARE in names


QUIET_CHECK = """
import json, sys
from celery import Celery
import tiercel

app = Celery("proj", broker=sys.argv[1], backend=sys.argv[1])
app.conf.task_send_sent_event = True
app.conf.worker_send_task_events = True

@app.task(name="proj.add")
def add(a=1, b=2):
    return a + b

tiercel.init_app(app, namespace="quiet-check")
sent = []
app.send_task = lambda name, *args, **options: sent.append((name, options))
for name in ("tiercel.metrics.aggregate", "tiercel.maintenance.sweep", "proj.add"):
    app.tasks[name].apply_async()
from tiercel.tasks.quiet import NO_EVENTS
print(json.dumps({
    "send_events": {name: app.tasks[name].send_events for name in
                    ("tiercel.metrics.aggregate", "tiercel.maintenance.sweep",
                     "tiercel.maintenance.housekeeping", "proj.add")},
    "silenced": {name: options.get("event_dispatcher") is NO_EVENTS for name, options in sent},
    "conf": [app.conf.task_send_sent_event, app.conf.worker_send_task_events],
}))
"""


def test_maintenance_tasks_are_quiet_in_a_users_app_whose_settings_stay() -> None:
    """Through ``init_app``: the maintenance tasks send no events, the app's own tasks and
    settings are untouched."""
    url = os.environ["TIERCEL_CACHE_URL"]  # never connected to: sending is intercepted
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIERCEL_")}
    out = subprocess.run(
        [sys.executable, "-c", QUIET_CHECK, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["send_events"] == {
        "tiercel.metrics.aggregate": False,
        "tiercel.maintenance.sweep": False,
        "tiercel.maintenance.housekeeping": False,
        "proj.add": True,
    }
    assert found["silenced"] == {
        "tiercel.metrics.aggregate": True,
        "tiercel.maintenance.sweep": True,
        "proj.add": False,
    }
    assert found["conf"] == [True, True]


def test_flower_stops_on_sigterm_through_its_event_loop(fleet: Fleet) -> None:
    """SIGTERM stops Flower's event loop (tiercel's handler) and the process exits 0, each of
    three times; Flower's own handler raised SystemExit wherever the signal landed, and once
    that was a callback whose exceptions Python ignores, so Flower ran on."""
    import flower.command

    from tiercel.workers.flower_view import install

    install()
    assert flower.command.sigterm_handler.__module__ == "tiercel.workers.flower_view"
    for _ in range(3):
        process = _start_flower(free_port(), subprocess.PIPE)
        try:
            os.killpg(process.pid, 15)
            output, _ = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                _stop(process, 0)
        assert process.returncode == 0, output.decode(errors="replace")[-2000:]
        assert b"signal 15: stopping the event loop" in output  # tiercel's handler ran
