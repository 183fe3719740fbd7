"""tiercel.workers.broker_guard: a Redis channel whose connection info was detached (what
Celery 5.7's consumer leaves after ``connection.collect()`` on a lost broker)
fails with a connection error, which Celery ignores, not an AttributeError,
which killed the worker (seen in this suite's broker-restart test)."""

from __future__ import annotations

import os

import pytest
import redis
from kombu import Connection

from tiercel.workers import broker_guard


def test_a_detached_channel_raises_a_connection_error_celery_ignores() -> None:
    broker_guard.apply()
    conn = Connection(os.environ["TIERCEL_BROKER_URL"])
    channel = conn.default_channel
    channel.connection.client = None  # as after connection.collect()
    with pytest.raises(redis.exceptions.ConnectionError) as info:
        channel._connparams()
    # Exactly the errors Celery's ignore_errors() swallows while closing a connection.
    assert isinstance(info.value, conn.connection_errors)
    conn.release()
