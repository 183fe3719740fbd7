"""What every process's local levels hold of one key: ``tiercel cache inspect``'s fan-out.

A control command reaches one process per node, never a prefork child, and
the children own the local levels. So the asking process publishes one
:class:`~tiercel.core.tier.events.InspectRequested` (``q|<reply>|<key>``) on
the channel every process listens to (:func:`request_inspection`), and each
process's listener answers for itself (:class:`LocalInspector`): it pushes one
small JSON document onto the reply list
(:func:`~tiercel.core.encoding.prefixes.inspect_reply_key`) and the asker pops
them for a bounded window (:func:`collect_replies`), or until as many answers
as the publish had receivers came.

Looking never changes what it looks at: a level is asked ``key in level``,
which counts no hit or miss and leaves recency alone; each level's occupancy
comes from its stats snapshot. (A level's public reads that tell an entry's
time left, :meth:`~tiercel.core.local.cache_level.CacheLevel.get_with_ttl`,
count a hit and refresh recency, so an entry's time left and size are not
reported.)

Bounds: a reply list holds at most :data:`MAX_REPLIES` answers and lives
:data:`REPLY_TTL` seconds; a process answers at most :data:`MAX_ANSWERS_PER_SECOND`
requests a second (the listener thread makes the push, so a flood of requests
cannot hold it up for long), and only to reply ids of the form
:func:`request_inspection` makes.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import redis

from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.prefixes import inspect_reply_key
from tiercel.core.tier.events import InspectRequested

__all__ = [
    "MAX_ANSWERS_PER_SECOND",
    "MAX_REPLIES",
    "REPLY_TTL",
    "LocalInspector",
    "collect_replies",
    "describe_local",
    "request_inspection",
]

log = logging.getLogger(__name__)

#: Most answers one reply list keeps (a fleet larger than this is shown in part).
MAX_REPLIES: Final = 1000
#: Seconds a reply list lives after its latest answer.
REPLY_TTL: Final = 10.0
#: Most inspect requests one process answers per second; the rest are dropped.
MAX_ANSWERS_PER_SECOND: Final = 20
_REPLY_ID: Final = re.compile(r"[0-9a-f]{32}")


def describe_local(cache: MultiLevelCache, key: str) -> dict[str, Any]:
    """Whether each of ``cache``'s local levels holds ``key``, with the entry's TTL left
    and the bytes it is charged, counting nothing (:meth:`CacheLevel.peek`).

    ``trusted``: whether the levels may answer now (a channel outage stops them).
    """
    levels = []
    for level in cache.levels:
        stats = level.stats
        held = level.peek(key)
        levels.append(
            {
                "level": level.name,
                "present": held is not None,
                "ttl_left": None if held is None or held[0] is None else round(held[0], 3),
                "size": None if held is None else held[1],
                "entries": stats.entries,
                "bytes": stats.bytes,
            }
        )
    return {"trusted": cache.local_trust_remaining() > 0, "levels": levels}


class LocalInspector:
    """Answers inspect requests for one process (the notifier's ``on_inspect``).

    ``identity`` says who answers (hostname, pid, role, ...), called per answer.
    Counts ``answered`` and ``dropped`` (over the rate, a bad reply id, or Redis
    trouble).
    """

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        namespace: str,
        cache: MultiLevelCache,
        identity: Callable[[], Mapping[str, Any]],
        *,
        max_per_second: int = MAX_ANSWERS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.cache = cache
        self.identity = identity
        self.max_per_second = max_per_second
        self._clock = clock
        self._window_start = float("-inf")
        self._in_window = 0
        self.answered = 0
        self.dropped = 0

    def _allowed(self) -> bool:
        now = self._clock()
        if now - self._window_start >= 1.0:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.max_per_second:
            return False
        self._in_window += 1
        return True

    def __call__(self, key: str, reply: str) -> bool:
        """Push this process's answer about ``key`` onto ``reply``'s list; False if not."""
        if not _REPLY_ID.fullmatch(reply) or not self._allowed():
            self.dropped += 1
            return False
        document = {**self.identity(), **describe_local(self.cache, key)}
        name = inspect_reply_key(self.namespace, reply)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(name, json.dumps(document, separators=(",", ":")))
            pipe.ltrim(name, 0, MAX_REPLIES - 1)
            pipe.pexpire(name, int(REPLY_TTL * 1000))
            pipe.execute()
        except redis.RedisError as exc:
            self.dropped += 1
            log.debug("answering an inspect request failed: %s", exc)
            return False
        self.answered += 1
        return True


def request_inspection(publish: Callable[[str], int], key: str) -> tuple[str, int]:
    """Ask every listening process about ``key``: ``(reply id, receivers)``.

    ``publish`` sends a channel message and says how many subscribers got it
    (:meth:`~tiercel.core.tier.notifier.Notifier.publish`).
    """
    reply = uuid.uuid4().hex
    return reply, publish(InspectRequested(reply, key).encode())


def collect_replies(
    client: redis.Redis | redis.RedisCluster,
    namespace: str,
    reply: str,
    *,
    expected: int,
    window: float,
    chunk: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """The answers to ``reply``, popped as they come for at most ``window`` seconds, or
    until ``expected`` came; the reply list is deleted after.

    Each blocking pop waits at most ``chunk`` seconds (keep it under the
    client's socket timeout). Unreadable answers are skipped.
    """
    name = inspect_reply_key(namespace, reply)
    deadline = clock() + window
    replies: list[dict[str, Any]] = []
    try:
        while len(replies) < min(expected, MAX_REPLIES):
            remaining = deadline - clock()
            if remaining <= 0:
                break
            popped: Any = client.blpop([name], timeout=max(0.01, min(chunk, remaining)))
            if popped is None:
                continue
            try:
                replies.append(json.loads(popped[1]))
            except ValueError:
                log.warning("skipping an unreadable inspect answer")
    finally:
        client.delete(name)
    return replies
