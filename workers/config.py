"""The Celery configuration, documented in one place.

Every reliability choice tiercel makes about Celery lives in
:func:`celery_config`, with the reason next to it.
"""

from __future__ import annotations

from typing import Any

from tiercel.core.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration tiercel runs with, each choice with its reason."""
    transport = {
        # A task unacknowledged for this long is redelivered (Redis/SQS brokers). It must
        # exceed the longest task, or a running task is delivered twice; Settings checks
        # visibility_timeout > task_time_limit.
        "visibility_timeout": int(settings.visibility_timeout),
        # Look for such abandoned messages (a node killed mid-task) every few seconds, not
        # every 100 s (kombu's default interval x throttle): redelivery then happens about
        # visibility_timeout after the loss.
        "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout) // 4)),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        # JSON only: nothing a client sends can run code in a worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Events for Flower and `celery events`.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_extended": True,
        # Acknowledge after the task ran, and requeue it if the worker process died
        # mid-task (SIGKILL, OOM): no lost work. Cached tasks are idempotent by design.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that raised or timed out is acknowledged: a poison message is not
        # redelivered forever.
        "task_acks_on_failure_or_timeout": True,
        # With acks_late, a prefetched message waits behind a long task; take one at a time.
        "worker_prefetch_multiplier": 1,
        # On broker connection loss, running acks_late tasks are redelivered anyway; cancel
        # them instead of finishing twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # The queue this fleet publishes to and consumes (TIERCEL_QUEUE): fleets sharing
        # one broker stay apart. Celery names the direct exchange and routing key after it.
        "task_default_queue": settings.queue,
        # On AMQP (RabbitMQ) the options above are ignored: an unacked message returns to
        # the queue only when its channel closes; RabbitMQ's consumer_timeout (30 min by
        # default) must exceed TIERCEL_TASK_TIME_LIMIT (see README, "Running on many hosts").
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": 100,
        # A broker restart must not fail submissions: retry publishing for ~10 s.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 20,
            "interval_start": 0.1,
            "interval_step": 0.25,
            "interval_max": 1.0,
        },
        # ...nor lose results: the Redis result backend retries through a restart.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        # Retry every <= 1 s, not with backoff up to 10 s: a task storing its result
        # right after the restart must not sleep on past the moment Redis is back.
        "result_backend_base_sleep_between_retries_ms": 10,
        "result_backend_max_sleep_between_retries_ms": 1000,
        # Hard limit kills a runaway task (its lease is released by the worker's hooks);
        # the soft limit lets the task clean up first.
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_time_limit * 0.95,
        # Results of enqueued computations; the cache tier keeps values, not the backend.
        "result_expires": max(3600, int(settings.default_ttl)),
        "timezone": "UTC",
        "enable_utc": True,
    }
