"""One call's cache key, and every Redis key derived from it, parsed once.

A value key reads ``{namespace}:v:{name}:{version}:{{digest}}``; its lease,
fence, epoch, in-flight, failure, re-publish and history keys share its ``{digest}``
hash tag, so one Lua script may touch them all on Redis Cluster. The cache,
the levels and Redis see the value key as a plain string; the lease layer
asks :meth:`CacheKey.of` for the rest, which parses a key once and keeps the
answer for the next operation on it (a bounded memo: acquire, renewals,
write-back and clean-up of one computation share one parse).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tiercel.core.encoding.prefixes import (
    EPOCH,
    FAILURE,
    FENCE,
    HISTORY,
    INFLIGHT,
    LEASE,
    REPUBLISH,
    VALUE,
    channel_name,
)

#: How many parsed keys :meth:`CacheKey.of` keeps (most recently used).
PARSED_KEYS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A value key's parts and its related Redis keys."""

    value: str
    namespace: str
    name: str
    version: str
    digest: str
    lease: str
    fence: str
    epoch: str
    inflight: str
    failure: str
    republish: str
    history: str

    @classmethod
    def build(cls, namespace: str, name: str, version: str, digest: str) -> CacheKey:
        """The key of ``digest`` for function ``name`` at ``version`` in ``namespace``."""
        value = f"{namespace}:{VALUE}:{name}:{version}:{{{digest}}}"
        related = f"{{{digest}}}"
        return cls(
            value,
            namespace,
            name,
            version,
            digest,
            lease=f"{namespace}:{LEASE}:{related}",
            fence=f"{namespace}:{FENCE}:{related}",
            epoch=f"{namespace}:{EPOCH}:{related}",
            inflight=f"{namespace}:{INFLIGHT}:{related}",
            failure=f"{namespace}:{FAILURE}:{related}",
            republish=f"{namespace}:{REPUBLISH}:{related}",
            history=f"{namespace}:{HISTORY}:{related}",
        )

    @classmethod
    def of(cls, value_key: str) -> CacheKey:
        """The parts of ``value_key`` (kept for the next call). Raises ValueError for a
        key that is not a tiercel value key."""
        return _parse(value_key)

    @property
    def channel(self) -> str:
        """The pub/sub channel of this key's namespace."""
        return channel_name(self.namespace)

    def __str__(self) -> str:
        return self.value


@functools.lru_cache(maxsize=PARSED_KEYS_KEPT)
def _parse(value_key: str) -> CacheKey:
    # Namespace, name and version never contain braces (the key builder refuses them), so
    # the first ``{...}`` is the digest; the namespace is what precedes the first ``:v:``;
    # the version is the part before the digest, after the last colon of the rest.
    marker = value_key.find(f":{VALUE}:")
    start = value_key.find("{", marker + 1) if marker > 0 else -1
    end = value_key.find("}", start + 1) if start != -1 else -1
    middle = value_key[marker + len(VALUE) + 2 : start - 1] if start > 0 else ""
    name, colon, version = middle.rpartition(":")
    if end != len(value_key) - 1 or end <= start + 1 or not colon or not name:
        raise ValueError(
            f"{value_key!r} is not a tiercel value key: expected "
            "'{namespace}:v:{name}:{version}:{<digest>}' (see KeyBuilder)"
        )
    return CacheKey.build(value_key[:marker], name, version, value_key[start + 1 : end])
