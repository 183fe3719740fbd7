"""A guard for a worker crash on broker connection loss (Celery 5.7 with kombu 5.7, Redis).

On a lost broker connection Celery's consumer runs ``connection.collect()``,
which detaches the transport's connection info, then ``connection.close()``.
Closing a Redis channel restores its unacknowledged messages, which needs a
connection pool, whose parameters are read from that detached info: an
``AttributeError`` that ``ignore_errors`` (it ignores connection errors only)
lets through, and the worker main process dies ("Unrecoverable error") instead
of reconnecting. A broker restart then takes the whole fleet down.

The guard makes that read raise redis-py's ``ConnectionError`` when the info is
gone, which ``ignore_errors`` does ignore. Nothing is lost by skipping the
restore there: Redis keeps those messages in its unacked hash, and the
visibility-timeout sweep requeues them (see workers/config.py).
"""

from __future__ import annotations

from typing import Any

_APPLIED: list[bool] = []


def apply() -> None:
    """Install the guard once per process (idempotent)."""
    if _APPLIED:
        return
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return original(self, asynchronous=asynchronous)

    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    _APPLIED.append(True)
