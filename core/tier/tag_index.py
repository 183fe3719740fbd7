"""Tag indexes: the set of value keys carrying a tag, and draining one to invalidate the tag.

A computation's key is in each of its tags' indexes before it computes, so a
tag invalidation that runs meanwhile finds the key and rejects its write-back:
on one server the acquire script adds it as it takes the lease; a cluster keeps
each index in its tag's slot, so the key is added first, apart
(:meth:`~tiercel.core.tier.redis_tier.RedisTier.index_tags`). An index's TTL is
only ever extended (the ``tag_add`` script, and the acquire script alike), to
the longest TTL of the values added to it; housekeeping removes members whose
value expired.

Keys: ``{namespace}:tag:{<tag>}``, the tag being the Redis Cluster hash tag,
and the drain copy ``...:drain:<token>`` beside it in the same slot.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, cast

import redis

from tiercel.core.encoding.prefixes import TAG_DRAIN, TAG_INDEX
from tiercel.core.tier import scripts
from tiercel.core.tier.connections import CacheClient

__all__ = ["ADD_BATCH", "SCAN_BATCH", "drain", "queue_add", "tag_drain_key", "tag_index_key"]

#: Members per ``tag_add`` call (Lua's unpack has a stack limit near 8000).
ADD_BATCH: Final = 1000
#: Members read per ``SSCAN`` (and removed per batch) while draining.
SCAN_BATCH: Final = 500


def tag_index_key(namespace: str, tag: str) -> str:
    """The set of value keys carrying ``tag``: ``{namespace}:tag:{{tag}}``.

    The tag is the Redis Cluster hash tag, so the index and its drain copy
    (:func:`tag_drain_key`) share a slot and can be renamed atomically.
    """
    return f"{namespace}:{TAG_INDEX}:{{{tag}}}"


def tag_drain_key(namespace: str, tag: str, token: str) -> str:
    """Where :func:`drain` moves a tag index while deleting its members."""
    return f"{tag_index_key(namespace, tag)}:{TAG_DRAIN}:{token}"


class Pipeline(Protocol):
    """What :func:`queue_add` needs of a (cluster) pipeline."""

    def execute_command(self, *args: Any) -> Any: ...


def queue_add(pipe: Pipeline, index: str, ttl_ms: int, members: Sequence[str]) -> None:
    """Queue on ``pipe`` the calls that add ``members`` to ``index`` and extend its TTL to
    at least ``ttl_ms``, :data:`ADD_BATCH` members per call."""
    script = scripts.source("tag_add")
    for start in range(0, len(members), ADD_BATCH):
        # execute_command: redis-py's cluster pipeline hides eval()
        pipe.execute_command("EVAL", script, 1, index, ttl_ms, *members[start : start + ADD_BATCH])


def drain(
    client: CacheClient,
    namespace: str,
    tag: str,
    *,
    call: Callable[..., Any],
    remove: Callable[[list[bytes]], int] | None = None,
) -> int:
    """Remove every value key of ``tag``'s index; returns how many existed.

    Every Redis command runs through ``call(func, *args)`` (the tier's
    breaker and error translation). ``remove`` deletes one batch of member
    keys and returns how many existed (default: ``UNLINK``).

    The index is first renamed aside atomically, so keys tagged while the
    drain runs land in a fresh index and are not lost. Members are read with
    ``SSCAN`` and removed in batches of about :data:`SCAN_BATCH`, so a huge
    tag never blocks Redis. A partial drain keeps the index's TTL, so it
    still expires.
    """
    index = tag_index_key(namespace, tag)
    drained = tag_drain_key(namespace, tag, uuid.uuid4().hex)
    if not call(_rename_if_exists, client, index, drained):
        return 0
    removed = 0
    cursor = 0
    while True:
        cursor, members = call(_scan_batch, client, drained, cursor)
        if members:
            if remove is None:
                removed += int(call(client.unlink, *members))
            else:
                removed += remove(members)
        if cursor == 0:
            break
    call(client.unlink, drained)
    return removed


def _rename_if_exists(client: CacheClient, source: str, target: str) -> bool:
    try:
        client.rename(source, target)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return False
        raise
    return True


def _scan_batch(client: CacheClient, key: str, cursor: int) -> tuple[int, list[bytes]]:
    cursor, members = client.sscan(key, cursor, count=SCAN_BATCH)
    return int(cursor), cast(list[bytes], members)
