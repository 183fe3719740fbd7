"""``tiercel.cached`` in a plain process: settings from the environment, no Celery."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

import tiercel

pytestmark = pytest.mark.integration

_PLAIN_PROCESS = """
import sys
import tiercel

calls = []

@tiercel.cached(ttl=60)
def square(n):
    calls.append(n)
    return n * n

print(square(7), square(7), square.lookup(7).source, len(calls), "celery" in sys.modules)
"""


def test_a_plain_process_caches_without_celery(cache_url: str) -> None:
    env = {**os.environ, "TIERCEL_NAMESPACE": f"plain-{uuid.uuid4().hex[:8]}"}
    result = subprocess.run(
        [sys.executable, "-c", _PLAIN_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, second, source, computed, celery_loaded = result.stdout.split()
    assert (first, second, computed) == ("49", "49", "1")
    assert source == "memory"
    assert celery_loaded == "False"


def test_a_call_is_invalidated_by_key_and_by_version(cache_url: str) -> None:
    name = f"tests.plain.double.{uuid.uuid4().hex[:8]}"
    computed: list[int] = []

    @tiercel.cached(ttl=60, name=name)
    def double(n: int) -> int:
        computed.append(n)
        return 2 * n

    assert double(21) == 42 and double(21) == 42
    assert computed == [21]
    double.invalidate(21)
    assert double.lookup(21).source == "computed"
    assert computed == [21, 21]
    double.invalidate_all()
    assert double(21) == 42
    assert computed == [21, 21, 21]
