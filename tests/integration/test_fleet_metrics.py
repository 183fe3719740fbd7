"""Fleet metrics through the result backend: every prefork child publishes, dead ones age out."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tiercel.core.settings import Settings, resolve_settings
from tiercel.tasks import fleet_view, publisher
from tiercel.workers.launcher import Fleet, FleetSpec

pytestmark = pytest.mark.integration

INTERVAL = 0.5  # TIERCEL_METRICS_INTERVAL of the private fleet
SQUARE = "tiercel.tasks.examples.slow_square"
AGGREGATION_PERIOD = 2 * INTERVAL


@pytest.fixture()
def metered_fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Fleet, Settings, str]]:
    """2 nodes x 2 prefork children in their own namespace and queue, publishing every 0.5 s."""
    import tiercel.workers.app  # noqa: F401  (the client publishes through the session's servers)

    namespace = f"fm-{uuid.uuid4().hex[:8]}"
    queue = f"fleet-metrics-{namespace}"
    monkeypatch.setenv("TIERCEL_NAMESPACE", namespace)
    monkeypatch.setenv("TIERCEL_METRICS_INTERVAL", str(INTERVAL))
    monkeypatch.setenv("TIERCEL_QUEUE", queue)  # what `tiercel call` in a subprocess publishes to
    settings = resolve_settings()
    spec = FleetSpec(
        workers=2,
        concurrency=2,
        pool="prefork",
        beat=False,
        flower=False,
        loglevel="WARNING",
        grace=10.0,
        extra_worker_args=("-Q", queue),
    )
    with Fleet(settings, spec).running() as fleet:
        yield fleet, settings, queue


def _view(settings: Settings) -> dict[str, Any]:
    client = publisher.metrics_client(settings)
    try:
        return fleet_view.aggregate(client, settings.namespace, INTERVAL)
    finally:
        client.close()


def _wait_for(settings: Settings, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = _view(settings)
        if check(view):
            return view
        assert time.monotonic() < deadline, f"fleet view never matched: {view['processes']}"
        time.sleep(0.1)


def test_view_covers_every_child_and_a_killed_node_leaves_it(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:
    fleet, settings, queue = metered_fleet
    from tiercel.tasks.examples import slow_square

    # Computed once, then answered from the tiers: compute seconds saved grow.
    n = uuid.uuid4().int % 10**9
    for _ in range(6):
        assert slow_square.apply_async((n, 50), queue=queue).get(timeout=30) == n * n

    def complete(view: dict[str, Any]) -> bool:
        task = view["tasks"].get("tiercel.tasks.examples.slow_square", {})
        return view["fleet"]["processes"] == 4 and task.get("requests", 0) >= 6

    view = _wait_for(settings, complete)
    pids = {p["pid"] for p in view["processes"]}
    assert len(pids) == 4 and view["fleet"]["nodes"] == 2
    assert set(view["nodes"]) == set(fleet.node_names)
    assert all(figures["processes"] == 2 for figures in view["nodes"].values())
    task = view["tasks"]["tiercel.tasks.examples.slow_square"]
    assert task["by_source"].get("computed") == 1
    # Each hit saved about one 50 ms computation.
    assert task["compute_seconds_saved"] >= 5 * 0.04
    assert view["fleet"]["tiers"]["memory"]["hits"] + view["fleet"]["tiers"]["redis"]["hits"] >= 1

    killed_node = fleet.node_names[0]
    fleet.processes[0].kill()  # SIGKILL the node's process group: no goodbye
    killed_at = time.monotonic()
    view = _wait_for(settings, lambda v: killed_node not in v["nodes"], timeout=10)
    gone_after = time.monotonic() - killed_at
    assert gone_after <= 2 * AGGREGATION_PERIOD, f"left the view after {gone_after:.2f}s"
    assert view["fleet"]["processes"] == 2
    assert set(view["nodes"]) == {fleet.node_names[1]}


def test_hits_answered_by_short_lived_clients_are_counted_fleet_wide(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:
    import json
    import os
    import subprocess
    import sys

    from tiercel.workers.exporter import families

    _, settings, _ = metered_fleet
    base = uuid.uuid4().int % 10**6 * 10

    def call(n: int) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tiercel.workers.cli", "call", SQUARE, str(n)],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        source: str = json.loads(done.stdout)["source"]
        return source

    sources = [call(n) for n in (base, base + 1, base + 2, base + 3, base + 3, base + 3)]
    assert sources == ["computed"] * 4 + ["redis"] * 2  # each `tiercel call` is a new process
    first = {"first_computation": 4}  # each value computed once, none ever stored before
    view = _wait_for(
        settings,
        lambda v: (
            v["tasks"].get(SQUARE, {}).get("by_source") == {"computed": 4, "redis": 2}
            and v["tasks"][SQUARE].get("misses") == first
        ),
    )
    task = view["tasks"][SQUARE]
    assert task["requests"] == 6
    assert task["compute_seconds_saved"] >= 2 * 0.01, "each Redis hit saved a 10 ms compute"
    assert view["fleet"]["by_source"]["redis"] == 2 and view["fleet"]["computed"] == 4
    assert view["fleet"]["clients"] == 0, "the clients exited"
    assert view["retired"] is not None and view["retired"]["by_source"] == {"redis": 2}
    assert view["fleet"]["workers"] == 4
    fresh = subprocess.run(
        [sys.executable, "-m", "tiercel.workers.cli", "stats", "--fresh", "--json"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(fresh.stdout)
    assert shown["tasks"][SQUARE]["by_source"] == {"computed": 4, "redis": 2}
    assert shown["tasks"][SQUARE]["misses"] == first
    assert shown["tasks"][SQUARE]["duplicates"] == {}
    assert shown["fleet"]["misses"] == first
    exported = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families(view)
        for sample in family.samples
    }
    redis_hits = exported[("tiercel_requests_total", (("source", "redis"), ("task", SQUARE)))]
    assert redis_hits == 2
    misses = {
        labels: value
        for (name, labels), value in exported.items()
        if name == "tiercel_misses_total"
    }
    assert misses == {(("reason", "first_computation"), ("task", SQUARE)): 4}
    duplicates = {
        labels: value
        for (name, labels), value in exported.items()
        if name == "tiercel_duplicate_computations_total"
    }
    assert duplicates and set(duplicates.values()) == {0}, "served, and none happened"


def test_a_live_client_publishes_as_a_client_and_retires_on_close(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:
    from tiercel.tasks.runtime import Runtime

    _, settings, _ = metered_fleet
    client = Runtime(settings).start()
    try:
        client.recorder.record(SQUARE, "redis", 0.001, 0.5)
        view = _wait_for(
            settings,
            lambda v: any(p["role"] == "client" and p["by_source"] for p in v["processes"]),
        )
        assert view["fleet"]["clients"] == 1
        [mine] = [p for p in view["processes"] if p["role"] == "client"]
        assert mine["pid"] == os.getpid() and mine["by_source"] == {"redis": 1}
        assert mine["node"] not in view["nodes"], "a client is listed, not counted as a node"
        assert view["fleet"]["nodes"] == 2
    finally:
        client.close()
    after = _view(settings)
    assert after["fleet"]["clients"] == 0, "a closed client leaves the view at once"
    assert after["retired"]["by_source"]["redis"] >= 1, "and its counts stay in the totals"


def test_timers_of_user_code_join_the_fleet_view_and_the_exporter(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:
    from tests.fleet_tasks import timed_work
    from tiercel.workers.exporter import families

    _, settings, queue = metered_fleet
    for _ in range(8):
        timed_work.apply_async((30,), queue=queue).get(timeout=30)
    view = _wait_for(
        settings, lambda v: v.get("timers", {}).get("fleet-test-work", {}).get("count") == 8
    )
    timer = view["timers"]["fleet-test-work"]
    assert 0.03 <= timer["p50"] < 1.0 and timer["sum"] >= 8 * 0.03
    summaries = {family.name: family for family in families(view)}
    samples = summaries["tiercel_timer_seconds"].samples
    counted = [s for s in samples if s.name.endswith("_count")]
    assert counted and counted[0].labels["timer"] == "fleet-test-work" and counted[0].value == 8


def test_every_process_with_a_listener_times_the_aggregations_delivery_probes(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:
    from tiercel.tasks.maintenance import aggregate
    from tiercel.tasks.runtime import Runtime

    _, settings, queue = metered_fleet
    client = Runtime(settings).start()  # a process that submits, listening too
    try:
        assert client.listening
        deadline = time.monotonic() + 30
        while True:
            ran = aggregate.apply_async(queue=queue).get(timeout=30)
            view = _view(settings)
            heard = {(p["role"], p["pid"]): p["invalidation_delivery"] for p in view["processes"]}
            workers = [key for key in heard if key[0] == "worker"]
            if len(workers) == 4 and all(heard.values()):
                break
            assert time.monotonic() < deadline, f"probes never reached every process: {heard}"
            time.sleep(0.2)
        # Every worker process and this client subscribe to the channel.
        assert ran["probe_receivers"] >= 5
        assert ("client", os.getpid()) in heard
        for process, delivery in heard.items():
            assert delivery["count"] >= 1, process
            assert 0 <= delivery["max"] < settings.staleness_bound, (process, delivery)
        fleet = view["fleet"]["invalidation_delivery"]
        assert fleet["count"] >= 5 and fleet["p99"] < settings.staleness_bound
        # Each child's own channel thread heard it (the label names the listener).
        labels = {
            tuple(sorted(item["labels"].items()))
            for item in view["merged"]["sketches"]
            if item["name"] == "tiercel_invalidation_delivery_seconds"
        }
        assert labels == {(("listener", "notifier"),)}
    finally:
        client.close()


def _scrape(settings: Settings, app: Any = None) -> str:
    """One scrape of an exporter started for it on a free port."""
    import urllib.request

    from tiercel.core.embedded.redis_server import free_port
    from tiercel.workers.exporter import serve

    port = free_port()
    server = serve(settings, "127.0.0.1", port, app=app)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return str(answer.read().decode())
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_counts_the_messages_waiting_in_a_queue(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:
    from celery import Celery
    from prometheus_client.parser import text_string_to_metric_families

    from tiercel.workers.queue_lengths import read_lengths

    _, settings, queue = metered_fleet
    idle = f"{queue}-idle"  # no worker consumes it
    app = Celery("idle-queue", broker=settings.broker_url, set_as_current=False)
    app.conf.task_default_queue = idle
    app.conf.task_queues = None
    assert read_lengths(app, [idle], connect_timeout=5) == {idle: 0}, "not there yet"
    for n in range(3):
        app.send_task(SQUARE, (n, 1))
    try:
        text = _scrape(settings, app=app)
    finally:
        with app.connection_for_write() as connection:
            purged = connection.default_channel.queue_purge(idle)
    lengths = {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tiercel_queue_length"
    }
    assert lengths == {idle: 3}
    assert purged == 3
    assert read_lengths(app, [idle], connect_timeout=5) == {idle: 0}


MONITORING = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "monitoring")


def _metric_names_in_monitoring_files() -> set[str]:
    import json
    import re

    import yaml

    with open(os.path.join(MONITORING, "grafana-dashboard.json")) as file:
        dashboard = json.load(file)
    with open(os.path.join(MONITORING, "alert-rules.yaml")) as file:
        rules = yaml.safe_load(file)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 20
    return {name for expr in exprs for name in re.findall(r"\b(?:tiercel|flower)_\w+", expr)}


def test_every_metric_the_dashboard_and_alert_rules_use_is_served(
    metered_fleet: tuple[Fleet, Settings, str],
) -> None:

    import flower.events
    from prometheus_client.parser import text_string_to_metric_families

    from tiercel.tasks.examples import slow_square
    from tiercel.tasks.maintenance import aggregate

    _, settings, queue = metered_fleet
    base = uuid.uuid4().int % 10**6 * 100
    for n in range(120):  # computations, then hits: every process times 1 call in 16
        slow_square.apply_async((base + n % 6, 1), queue=queue).get(timeout=30)
    deadline = time.monotonic() + 30
    wanted = {
        "tiercel_request_seconds",
        "tiercel_compute_seconds",
        "tiercel_invalidation_delivery_seconds",  # the probe of an earlier run, in a snapshot
    }
    while True:
        view = aggregate.apply_async(queue=queue).get(timeout=30)
        sketches = {item["name"] for item in view["merged"]["sketches"]}
        if wanted <= sketches:
            break
        assert time.monotonic() < deadline, sketches
        time.sleep(0.3)
    text = _scrape(settings)
    served = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    used = _metric_names_in_monitoring_files()
    flower_names = {
        getattr(metric, "_name", "") for metric in vars(flower.events.PrometheusMetrics()).values()
    }
    missing = sorted(
        name
        for name in used
        if not (
            name in served
            or (name.startswith("flower_") and name.removesuffix("_total") in flower_names)
        )
    )
    assert not missing, f"named in deploy/monitoring but not served: {missing}"
    assert any(name.startswith("tiercel_") for name in used)
    assert any(name.startswith("flower_") for name in used)
