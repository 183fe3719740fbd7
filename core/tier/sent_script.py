"""A Lua script call sent now and answered later: one round trip overlapped with other work.

A worker spends two round trips of its own on every task: Celery stores STARTED
before the body runs and SUCCESS after it returns. A cached task's lease claim
and its write-back are round trips too, to the cache tier. Sent just before
Celery's store and read just after it, each arrives while the worker waits on
Celery anyway, instead of costing a wait of its own
(:meth:`tiercel.core.cache.coordinator.FleetCoordinator.open_window`).

:meth:`SentScript.send` takes a connection out of the client's pool and writes
``EVALSHA`` on it; :meth:`SentScript.answer` reads the reply (once) and gives
the connection back. Redis runs the script when the bytes arrive, whoever
reads the reply when: only the caller's knowledge of the outcome waits. While
a call is out, its connection is not in the pool: a caller keeps at most one
out per thread, so the pool's bound still holds.

A client without one connection pool (Redis Cluster routes by slot) runs the
script at once, through redis-py, and :meth:`answer` returns what it answered:
callers need no second code path. A ``NOSCRIPT`` reply (the server lost its
script cache) means the script did not run; :meth:`answer` runs it again
through the script object, which loads it first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from tiercel.core.errors import TierUnavailable
from tiercel.core.missing import MISSING
from tiercel.core.tier.connections import CacheClient

__all__ = ["SentCall", "SentScript"]

T = TypeVar("T")


def _unavailable(exc: redis.RedisError) -> TierUnavailable:
    return TierUnavailable(
        f"script call failed: {exc}; compute without the lease or retry once Redis is back"
    )


class SentScript:
    """One ``EVALSHA`` on the wire; :meth:`answer` is its reply (see the module docstring)."""

    __slots__ = ("_answer", "_args", "_client", "_connection", "_keys", "_script")

    def __init__(
        self,
        client: CacheClient,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any],
        connection: Any,
        answer: Any = MISSING,
    ) -> None:
        self._client = client
        self._script = script
        self._keys = keys
        self._args = args
        self._connection = connection
        self._answer = answer

    @classmethod
    def send(
        cls, client: CacheClient, script: Script, keys: Sequence[Any], args: Sequence[Any]
    ) -> SentScript:
        """Write ``script``'s call on a connection of its own; raises TierUnavailable."""
        if not isinstance(client, redis.Redis):
            # A cluster client picks the node by slot: run it now, answer it later.
            try:
                answer = script(keys=list(keys), args=list(args), client=client)
            except redis.RedisError as exc:
                raise _unavailable(exc) from exc
            return cls(client, script, keys, args, None, answer)
        pool = client.connection_pool
        try:
            connection: Any = pool.get_connection()
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except BaseException as exc:
            connection.disconnect()
            pool.release(connection)
            if isinstance(exc, redis.RedisError):
                raise _unavailable(exc) from exc
            raise
        return cls(client, script, keys, args, connection)

    @property
    def answered(self) -> bool:
        """True once the reply was read (or the script ran at once)."""
        return self._answer is not MISSING

    def answer(self) -> Any:
        """The script's reply, read on first call; raises TierUnavailable (every call)."""
        if self._answer is MISSING:
            self._answer = self._read()
        if isinstance(self._answer, TierUnavailable):
            raise self._answer
        return self._answer

    def _read(self) -> Any:
        assert isinstance(self._client, redis.Redis)
        pool, connection = self._client.connection_pool, self._connection
        if connection is None:  # an earlier read was interrupted: the reply is gone
            return TierUnavailable("a script's reply was lost to an interrupted read")
        self._connection = None
        try:
            try:
                return connection.read_response()
            finally:
                pool.release(connection)  # read_response dropped it on a broken socket
        except NoScriptError:
            # Not run: the server's script cache was flushed. Load and run it now.
            try:
                return self._script(keys=list(self._keys), args=list(self._args))
            except redis.RedisError as exc:
                return _unavailable(exc)
        except redis.RedisError as exc:
            return _unavailable(exc)


class SentCall(Generic[T]):
    """A :class:`SentScript` and how to read its reply: :meth:`result` is that reading."""

    __slots__ = ("_read", "sent")

    def __init__(self, sent: SentScript, read: Callable[[Any], T]) -> None:
        self.sent = sent
        self._read = read

    def result(self) -> T:
        """The reply, interpreted; raises TierUnavailable."""
        return self._read(self.sent.answer())
