"""The local launcher behind ``tiercel up`` and ``tiercel demo``.

It starts the embedded Redis servers when no URL is configured (one
``noeviction`` server for broker and results, one ``allkeys-lru`` server for
the cache tier), N ``celery worker`` nodes, exactly one beat and Flower, each
in its own process group, and stops all of them on exit: SIGTERM (Celery's
warm shutdown: running tasks finish), then SIGKILL after the grace period.
Every child also gets SIGTERM from the kernel if the launcher itself dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis

from tiercel.core.embedded.fleet_file import remove_fleet_file, write_fleet_file
from tiercel.core.embedded.redis_server import RedisServer, die_with_parent, port_is_free
from tiercel.core.errors import ServerError, SettingsError
from tiercel.core.settings import Settings, redact_url

log = logging.getLogger("tiercel.launcher")

#: What the embedded fleet runs when the deployment names no task modules of its own.
EXAMPLE_MODULES = ("tiercel.tasks.examples", "tiercel.tasks.examples.postgres")


def flower_config_path() -> str:
    """The path of :mod:`tiercel.workers.flowerconfig`, Flower's ``--conf`` (found, not
    imported: importing it registers its collector in this process)."""
    import importlib.util

    spec = importlib.util.find_spec("tiercel.workers.flowerconfig")
    if spec is None or spec.origin is None:  # pragma: no cover - installed with the package
        raise ServerError("tiercel.workers.flowerconfig is not installed")
    return spec.origin


def check_reachable(name: str, url: str, timeout: float = 2.0) -> None:
    """Raise ServerError naming ``url`` (redacted) when nothing answers there."""
    scheme = urlsplit(url).scheme
    try:
        if scheme.startswith(("redis", "rediss", "unix")) and "+" not in scheme:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=timeout, socket_timeout=timeout
            )
            try:
                client.ping()
            finally:
                client.close()
        elif scheme in ("redis+cluster", "rediss+cluster", "redis+sentinel"):
            from tiercel.core.tier.connections import (
                client_from_url,  # the cache tier's own factory
            )

            tier_client = client_from_url(url, socket_timeout=timeout, max_connections=2)
            try:
                tier_client.ping()
            finally:
                tier_client.close()
        elif scheme in ("amqp", "amqps", "pyamqp"):
            from kombu.connection import Connection

            with Connection(url, connect_timeout=timeout) as conn:
                conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure to connect is reported the same way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ServerError(f"{name} {redact_url(url)} is unreachable: {reason}") from None


@dataclass
class FleetSpec:
    """What ``tiercel up`` starts."""

    workers: int = 1
    concurrency: int = 2
    pool: str = "prefork"
    beat: bool = True
    flower: bool = True
    flower_port: int = 5555
    loglevel: str = "INFO"
    grace: float = 30.0
    quiet: bool = False
    extra_worker_args: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise SettingsError for out-of-range values."""
        if self.workers < 1:
            raise SettingsError(f"--workers {self.workers}: expected 1 or more")
        if self.concurrency < 1:
            raise SettingsError(f"--concurrency {self.concurrency}: expected 1 or more")
        if self.pool not in ("prefork", "solo", "threads"):
            raise SettingsError(f"--pool {self.pool}: expected prefork, solo or threads")


@dataclass
class ManagedProcess:
    """A child process started in its own session (process group)."""

    name: str
    process: subprocess.Popen[bytes]

    def terminate(self) -> None:
        """SIGTERM the main process only: Celery's warm shutdown lets running tasks finish.

        Not the process group: prefork children restore SIGTERM's default action, so
        signalling them directly would kill running tasks instead of finishing them.
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def alive(self) -> bool:
        """True while the group leader runs."""
        return self.process.poll() is None


@dataclass
class Fleet:
    """Embedded Redis (when needed) plus worker nodes, beat and Flower."""

    settings: Settings
    spec: FleetSpec = field(default_factory=FleetSpec)
    servers: list[RedisServer] = field(default_factory=list)
    processes: list[ManagedProcess] = field(default_factory=list)
    node_names: list[str] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _wrote_fleet_file: bool = False

    def __post_init__(self) -> None:
        # The embedded fleet is for trying tiercel: it runs the example tasks unless the
        # deployment names modules of its own.
        if not self.settings.task_modules:
            self.settings = self.settings.replace(task_modules=EXAMPLE_MODULES)

    def start(self, on_step: Callable[[str], None] | None = None) -> Fleet:
        """Start everything and wait until every worker node answers a ping."""
        self.spec.validate()
        step = on_step or (lambda _msg: None)
        try:
            if self.spec.flower and not port_is_free(self.spec.flower_port):
                raise ServerError(
                    f"port {self.spec.flower_port} is already in use: pass --flower-port "
                    "or --no-flower"
                )
            self._start_redis(step)
            self._tmp = tempfile.TemporaryDirectory(prefix="tiercel-fleet-")
            for index in range(1, self.spec.workers + 1):
                self.add_worker(index)
            if self.spec.beat:
                self._spawn(
                    "beat",
                    [
                        "beat",
                        "-s",
                        os.path.join(self._tmp.name, "schedule"),
                        "--pidfile=",
                        "-l",
                        self.spec.loglevel,
                    ],
                )
            if self.spec.flower:
                self._spawn(
                    "flower",
                    [
                        "flower",
                        "--address=127.0.0.1",
                        f"--port={self.spec.flower_port}",
                        f"--conf={flower_config_path()}",
                    ],
                )
            step(f"waiting for {len(self.node_names)} worker node(s)")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self, step: Callable[[str], None]) -> None:
        if not self.settings.embedded:
            for name, url in (
                ("broker", self.settings.broker_url),
                ("result backend", self.settings.result_backend),
                ("cache", self.settings.cache_url),
            ):
                if url:
                    check_reachable(name, url)
            return
        step("starting embedded redis-server (broker + results, noeviction)")
        broker = RedisServer(maxmemory_policy="noeviction").start()
        self.servers.append(broker)
        step("starting embedded redis-server (cache tier, allkeys-lru)")
        cache = RedisServer(
            maxmemory=self.settings.embedded_cache_maxmemory, maxmemory_policy="allkeys-lru"
        ).start()
        self.servers.append(cache)
        urls = {"broker_url": broker.url, "result_backend": broker.url, "cache_url": cache.url}
        self.settings = self.settings.replace(**urls)
        # A node that joins later (`tiercel worker`) runs the same task modules.
        write_fleet_file({**urls, "task_modules": list(self.settings.task_modules)})
        self._wrote_fleet_file = True

    def environment(self) -> dict[str, str]:
        """Environment for child processes: this one's plus the resolved URLs."""
        env = dict(os.environ)
        for name in ("broker_url", "result_backend", "cache_url"):
            value = getattr(self.settings, name)
            if value:
                env["TIERCEL_" + name.upper()] = value
        env["TIERCEL_TASK_MODULES"] = ",".join(self.settings.task_modules)
        # Flower's REST API is bound to 127.0.0.1 here; deploy/ puts it behind auth.
        env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
        return env

    def add_worker(self, index: int | None = None) -> str:
        """Start one more worker node; returns its node name."""
        index = index or len(self.node_names) + 1
        node = f"w{index}-{uuid.uuid4().hex[:6]}@%h"
        args = [
            "worker",
            "-n",
            node,
            "-P",
            self.spec.pool,
            "-c",
            str(self.spec.concurrency),
            "-l",
            self.spec.loglevel,
            "-E",
            "--without-mingle",
            "--without-gossip",
            *self.spec.extra_worker_args,
        ]
        if self.settings.queue != "celery":
            # Consume only this fleet's queue, even on a broker other fleets share.
            args += ["-Q", self.settings.queue]
        self._spawn(f"worker {index}", args)
        self.node_names.append(node.replace("%h", _hostname()))
        return self.node_names[-1]

    def _spawn(self, name: str, celery_args: list[str]) -> ManagedProcess:
        out = subprocess.DEVNULL if self.spec.quiet else None
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tiercel.workers.app", *celery_args],
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        managed = ManagedProcess(name, process)
        self.processes.append(managed)
        return managed

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until every worker node answers ``ping`` (raise ServerError on timeout)."""
        from tiercel.workers.control import ping_nodes

        deadline = time.monotonic() + timeout
        missing = set(self.node_names)
        while missing:
            for managed in self.processes:
                if not managed.alive:
                    raise ServerError(
                        f"{managed.name} exited with code "
                        f"{managed.process.returncode} during start-up"
                    )
            missing -= ping_nodes(self.settings, sorted(missing), timeout=1.0)
            if missing and time.monotonic() > deadline:
                raise ServerError(
                    f"worker nodes did not answer within {timeout:g}s: {', '.join(sorted(missing))}"
                )

    def dead_processes(self) -> list[ManagedProcess]:
        """Children that exited on their own."""
        return [managed for managed in self.processes if not managed.alive]

    def stop(self) -> None:
        """Warm-shut everything down, then kill what remains after the grace period."""
        processes, self.processes = self.processes, []
        for managed in processes:
            managed.terminate()
        deadline = time.monotonic() + self.spec.grace
        for managed in processes:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                managed.process.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop within %.0fs: killing it", managed.name, self.spec.grace
                )
            # Reap stragglers in the group (prefork children) even after a clean exit.
            managed.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                managed.process.wait(5)
        for server in self.servers:
            server.stop()
        self.servers.clear()
        if self._wrote_fleet_file:
            remove_fleet_file()
            self._wrote_fleet_file = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @contextlib.contextmanager
    def running(self, on_step: Callable[[str], None] | None = None) -> Iterator[Fleet]:
        """Context manager: start, yield, stop."""
        self.start(on_step)
        try:
            yield self
        finally:
            self.stop()


def _hostname() -> str:
    import socket

    return socket.gethostname()
