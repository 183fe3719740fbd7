"""Bad input: each is a clear error or a counted miss; none crashes a worker or leaves a lock."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import signals

from tests.integration.fleet import worker_fleet
from tests.reliability.conftest import Figures
from tiercel.core.encoding.codecs import FORMAT_VERSION, MAGIC, SignedPickleCodec
from tiercel.core.errors import KeyEncodingError
from tiercel.workers.control import ping_nodes
from tiercel.workers.launcher import Fleet


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with worker_fleet(nodes=2, concurrency=2) as running:
        yield running


@pytest.fixture()
def publishes() -> Iterator[list[str]]:
    seen: list[str] = []

    def count(sender: object = None, **_: object) -> None:
        seen.append(str(sender))

    signals.before_task_publish.connect(count, weak=False)
    yield seen
    signals.before_task_publish.disconnect(count)


class Unencodable:
    pass


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (Unencodable(), "Unencodable"),
        ("x" * (9 * 2**20), "cache key"),
        (_nested(100), "deep"),
    ],
    ids=["unserializable", "oversized", "deeply-nested"],
)
def test_bad_arguments_are_a_clear_error_and_publish_nothing(
    fleet: Fleet, publishes: list[str], figures: Figures, argument: object, expected: str
) -> None:
    from tiercel.tasks.examples import slow_square

    with pytest.raises(KeyEncodingError) as info:
        slow_square.submit(argument)
    message = str(info.value)
    assert "'n'" in message and expected.lower() in message.lower(), message
    assert publishes == []
    figures.record(
        f"bad argument ({type(argument).__name__}): clear error", message[:60], "", ok=True
    )


def test_huge_return_value_is_answered_but_not_cached(
    fleet: Fleet, cache_client: redis.Redis, figures: Figures
) -> None:
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import blob

    size = 12 * 2**20  # about 9 MiB even compressed: over TIERCEL_MAX_VALUE_BYTES (8 MiB)
    result = blob.submit(size)
    value = result.get(timeout=60)
    assert len(value) == size and value == blob.run(size)
    key = runtime.current().key(blob.tiercel_spec, (size,), {})
    assert cache_client.get(key) is None, "an oversized value must not be stored remotely"
    assert ping_nodes(fleet.settings, fleet.node_names, timeout=5) == set(fleet.node_names)
    figures.record("huge return value (12 MiB)", "answered, not cached", "", ok=True)


def _frame(codec_id: int, payload: bytes) -> bytes:
    return MAGIC + bytes([FORMAT_VERSION, codec_id, 0]) + payload


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_corrupt_foreign_and_pickled_bytes_in_the_cache_are_counted_misses(
    fleet: Fleet, cache_client: redis.Redis, tmp_path: Path, figures: Figures
) -> None:
    from tiercel.core.encoding.entry import Entry
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import slow_square

    rt = runtime.current()
    marker = tmp_path / "pwned"
    payloads = {
        "garbage": b"\x00\xffnot ours at all",
        "foreign json": b'{"value": 42}',
        "raw pickle": pickle.dumps(Exploit(str(marker))),
        "pickle frame under msgpack": Entry.create(
            _frame(SignedPickleCodec(["k" * 32]).codec_id, pickle.dumps(Exploit(str(marker)))),
            now=time.time(),
            ttl=600,
        ).pack(),
    }

    def corrupt() -> int:  # envelopes the tier rejects + payloads the codec rejects
        return int(rt.tier.stats["corrupt"]) + rt.cache.corrupt

    corrupt_before = corrupt()
    base = uuid.uuid4().int % 10**9
    for offset, (name, payload) in enumerate(payloads.items()):
        n = base + offset
        key = rt.key(slow_square.tiercel_spec, (n,), {})
        cache_client.set(key, payload)
        handle = slow_square.submit(n)
        assert handle.source == "computed", name
        assert handle.get(timeout=30) == n * n, name
        stored = cache_client.get(key)
        assert stored is not None and stored != payload, f"{name} was not replaced"
    assert not marker.exists(), "cache bytes ran code"
    assert corrupt() - corrupt_before == len(payloads)
    assert ping_nodes(fleet.settings, fleet.node_names, timeout=5) == set(fleet.node_names)
    figures.record(
        "corrupt/foreign/pickled cache entries",
        len(payloads),
        "kinds",
        ok=True,
        note="counted misses, deleted, recomputed; no code ran",
    )


def test_hostile_characters_in_arguments(fleet: Fleet, figures: Figures) -> None:
    from tiercel.tasks.examples import regional_report

    hostile = [
        "a{b}c",
        "x:y:z",
        "line\nbreak",
        "nul\x00byte",
        "💥 ünïcode",
        "*",
        "?[]",
        " ",
        "{" * 50,
        "x" * 10_000,
    ]
    for region in hostile:
        value = regional_report.submit(region, 1, 1).get(timeout=30)
        assert value["region"] == region
        again = regional_report.submit(region, 1, 1)
        assert again.source in ("memory", "redis") and again.get()["region"] == region
    figures.record(
        "hostile characters in arguments",
        len(hostile),
        "kinds",
        ok=True,
        note="keys are digests: each cached and answered correctly",
    )


def test_unknown_task_name_does_not_hurt_a_worker(fleet: Fleet, figures: Figures) -> None:
    from tiercel.workers.control import control_app

    control = control_app(fleet.settings)
    try:
        result = control.send_task("tiercel.tasks.examples.does_not_exist", args=(1,))
        time.sleep(1.0)
        # The worker refuses it (NotRegistered) and carries on; nothing runs.
        assert result.state in ("PENDING", "FAILURE")
        if result.state == "FAILURE":
            assert type(result.result).__name__ == "NotRegistered"
    finally:
        control.close()
    assert ping_nodes(fleet.settings, fleet.node_names, timeout=5) == set(fleet.node_names)
    figures.record(
        "unknown task name sent to the fleet", "discarded", "", ok=True, note="workers alive"
    )


def test_malformed_setting_stops_a_worker_at_start_with_the_variable_named(
    tmp_path: Path, figures: Figures
) -> None:
    env = {**os.environ, "TIERCEL_L1_MAX_ENTRIES": "lots"}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tiercel.workers.app", "worker", "-P", "solo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "TIERCEL_L1_MAX_ENTRIES" in done.stderr + done.stdout
    figures.record(
        "malformed setting at worker start",
        "refused",
        "",
        ok=True,
        note="exit != 0, names TIERCEL_L1_MAX_ENTRIES",
    )


def test_no_lease_or_inflight_marker_is_left_behind(
    fleet: Fleet, cache_client: redis.Redis, figures: Figures
) -> None:
    leftovers: list[bytes] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = [
            *cache_client.scan_iter(match="*:lease:*", count=1000),
            *cache_client.scan_iter(match="*:inflight:*", count=1000),
        ]
        if not leftovers:
            break
        time.sleep(0.2)
    assert leftovers == []
    figures.record("locks left behind after bad input", 0, "keys", ok=True)
