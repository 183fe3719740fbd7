"""The hit path's reads for asyncio code: GETs pipelined on one connection per loop.

An asyncio submit answered from Redis is one ``GET``. Through ``redis.asyncio``
that GET takes a connection from the pool (a lock and a condition), runs the
write under ``wait_for`` (a task per command), reads the reply under a timeout
context, and returns the connection: several times the event-loop work of
writing the command and parsing its reply.
:class:`GetPipeline` sends each GET on one connection it keeps (an
:class:`asyncio.Protocol`), matches replies to callers in order (Redis answers
one connection's commands in order), and parses them with hiredis: one future
per GET, and concurrent GETs share the connection's round trips instead of
queueing for pool connections.

Only GETs go this way; every other command (scripts, writes, pub/sub) stays on
the loop's ``redis.asyncio`` client, whose pool is built in the same loop.
Errors are redis-py's: a connection that cannot be opened or is lost raises
:class:`redis.ConnectionError` for every GET waiting on it, a GET unanswered
within ``socket_timeout`` closes the connection and raises
:class:`redis.TimeoutError` for every GET waiting on it (the next GET opens a
new one; one watchdog timer per connection checks the oldest GET waiting), an error reply raises
:class:`redis.ResponseError`; the tier's breaker counts them as it counts the
pool's. Bounded: at most ``max_pending`` GETs wait on the connection;
:meth:`GetPipeline.full` tells the caller to use the pool meanwhile.

:func:`pipeline_for_url` builds one for a plain TCP or Unix-socket URL, and
answers None for what it does not speak (TLS), where the pool serves every GET.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
from typing import Any, Final

import hiredis
import redis
from redis.connection import SSLConnection, parse_url

__all__ = ["MAX_PENDING", "GetPipeline", "pipeline_for_url"]

#: GETs that may wait on the connection at once, by default.
MAX_PENDING: Final = 1024


def _command(*parts: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class _Protocol(asyncio.Protocol):
    """One connection: commands written in order, replies handed to their futures."""

    def __init__(self, timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        #: Commands sent and not answered yet, oldest first, each with its deadline.
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.lost = False
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=redis.ResponseError)
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = self.pending.popleft()
                if future.done():
                    continue  # its caller timed out or was cancelled: the reply is dropped
                if isinstance(reply, redis.ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbled, or a reply never asked for
            self.abort(redis.ConnectionError(f"protocol error on the GET connection: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"connection to the cache tier lost: {exc or 'closed'}"))

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write ``command``; its reply is the future's result, or its error."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # One watchdog per connection, not a timer per command: it looks at the oldest
        # command waiting (Redis answers in order, so a later one cannot be answered first).
        self.pending.append((future, loop.time() + self._timeout))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_deadlines)
        self.transport.write(command)
        return future

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if not self.pending or self.lost:
            return
        loop = asyncio.get_running_loop()
        deadline = self.pending[0][1]
        if loop.time() >= deadline:
            self.abort(redis.TimeoutError(f"no answer within {self._timeout:g}s"))
        else:
            self._watchdog = loop.call_at(deadline, self._check_deadlines)

    def abort(self, error: Exception) -> None:
        """Close the connection now; every GET waiting on it fails with ``error``."""
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: Exception) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: its caller re-raises it, nobody logs it


class GetPipeline:
    """Pipelined GETs on one connection, opened on first use and again after a loss."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float = 0.5,
        connect_timeout: float | None = None,
        keepalive: dict[int, int] | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if (host is None) == (path is None):
            raise ValueError("a GetPipeline connects to a host or a Unix socket path")
        self._host = host
        self._port = port
        self._path = path
        self._timeout = socket_timeout
        self._connect_timeout = socket_timeout if connect_timeout is None else connect_timeout
        self._keepalive = keepalive or {}
        self.max_pending = max_pending
        self._handshake: list[bytes] = []
        if password is not None:
            auth = (b"AUTH", _bytes(username), _bytes(password)) if username else None
            self._handshake.append(_command(*(auth or (b"AUTH", _bytes(password)))))
        if db:
            self._handshake.append(_command(b"SELECT", b"%d" % db))
        self._protocol: _Protocol | None = None
        self._opening: asyncio.Future[_Protocol] | None = None
        #: Advanced by :meth:`close`: a connection that opens after it is closed at once.
        self._closes = 0
        #: Connections opened (the first, then one after each loss or timeout).
        self.connects = 0

    @property
    def full(self) -> bool:
        """Whether ``max_pending`` GETs already wait: the caller should use the pool."""
        protocol = self._protocol
        return protocol is not None and len(protocol.pending) >= self.max_pending

    async def get(self, key: str | bytes) -> bytes | None:
        """``GET key``: its bytes or None. Raises redis-py's errors (see the module)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._open()
        name = _bytes(key)
        reply: bytes | None = await protocol.send(
            b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(name), name)
        )
        return reply

    async def close(self) -> None:
        """Close the connection, and one still opening once it opens; GETs waiting on
        either fail with ConnectionError."""
        self._closes += 1
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol._fail(redis.ConnectionError("the GET connection was closed"))
            protocol.transport.close()

    async def _open(self) -> _Protocol:
        """The connection, opened by one caller while the others wait for it."""
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.ensure_future(self._connect())
            opening.add_done_callback(functools.partial(self._opened, self._closes))
        protocol = await asyncio.shield(opening)
        if protocol.lost:
            raise redis.ConnectionError("the GET connection was closed while it opened")
        return protocol

    def _opened(self, closes: int, opening: asyncio.Future[_Protocol]) -> None:
        self._opening = None
        if opening.cancelled() or opening.exception() is not None:
            return
        protocol = opening.result()
        if closes != self._closes:  # closed meanwhile: nobody would close this one
            protocol.abort(redis.ConnectionError("the GET connection was closed"))
        else:
            self._protocol = protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        where = self._path or f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._host is None:
                    _, protocol = await loop.create_unix_connection(self._new_protocol, self._path)
                else:
                    _, protocol = await loop.create_connection(
                        self._new_protocol, self._host, self._port
                    )
                    self._set_keepalive(protocol)
                for command in self._handshake:
                    await protocol.send(command)
        except TimeoutError:
            raise redis.TimeoutError(f"Timeout connecting to {where}") from None
        except redis.ResponseError as exc:  # AUTH or SELECT refused
            raise redis.AuthenticationError(f"the cache tier refused the handshake: {exc}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to {where}: {exc.strerror}") from exc
        self.connects += 1
        return protocol

    def _new_protocol(self) -> _Protocol:
        return _Protocol(self._timeout)

    def _set_keepalive(self, protocol: _Protocol) -> None:
        assert protocol.transport is not None
        sock = protocol.transport.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in self._keepalive.items():
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def pipeline_for_url(
    url: str,
    *,
    socket_timeout: float = 0.5,
    keepalive: dict[int, int] | None = None,
    max_pending: int = MAX_PENDING,
) -> GetPipeline | None:
    """A :class:`GetPipeline` for a single server's URL, or None where the pool must
    serve every GET: TLS (``rediss://``), or URL options it does not honour."""
    options = parse_url(url)  # type: ignore[no-untyped-call, unused-ignore]
    if options.get("connection_class") is SSLConnection:
        return None
    known = {"host", "port", "path", "db", "username", "password", "connection_class"}
    if set(options) - known:
        return None  # e.g. a timeout or client name set in the URL: the pool honours it
    return GetPipeline(
        host=options.get("host"),
        port=int(options.get("port") or 6379),
        path=options.get("path"),
        db=int(options.get("db") or 0),
        username=options.get("username"),
        password=options.get("password"),
        socket_timeout=socket_timeout,
        keepalive=keepalive,
        max_pending=max_pending,
    )
