"""A loopback TCP proxy that can go silent: it stops forwarding but keeps every socket open.

This is what a NAT, load balancer or firewall does to an idle connection it
has dropped from its table: nothing is closed, nothing is refused, nothing
arrives. Bytes that come in while silent are held (never forwarded, never
answered) until :meth:`SilentProxy.resume`; a peer that closes while silent
sees its close delivered only then. New connections are accepted while
silent and stay just as quiet.

Threads, not asyncio: two per connection, each blocked in ``recv``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

_WAIT = 0.05  # how quickly a held pump notices close()


class SilentProxy:
    """Forward 127.0.0.1:<port> to ``upstream``; :meth:`silence` and :meth:`resume` it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_WAIT)
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> SilentProxy:
        self._spawn(self._accept)
        return self

    def silence(self) -> None:
        """Stop forwarding in both directions; every socket stays open."""
        self._forwarding.clear()

    def resume(self) -> None:
        """Forward again, held bytes first."""
        self._forwarding.set()

    def close(self) -> None:
        self._closed.set()
        self._forwarding.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(2)

    def __enter__(self) -> SilentProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _hold_while_silent(self) -> bool:
        """Wait until forwarding; False when the proxy closed meanwhile."""
        while not self._forwarding.wait(_WAIT):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            if not self._hold_while_silent():
                return
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            # What arrived while silent (bytes, or the peer's close) waits here.
            if not self._hold_while_silent():
                return
            if not data:
                break
            try:
                target.sendall(data)
            except OSError:
                break
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
