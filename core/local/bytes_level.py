"""The L2: a level of encoded values as ``bytes``, bounded by their real memory."""

from __future__ import annotations

import sys
from typing import Final

from tiercel.core.local.cache_level import CacheLevel

__all__ = ["BytesLevel"]

_BYTES_HEADER: Final = sys.getsizeof(b"")


class BytesLevel(CacheLevel[bytes]):
    """The L2: encoded values as ``bytes``, bounded by bytes; larger than the L1.

    Its size policy is the exact memory of the value, ``len(value)`` plus the
    ``bytes`` header (33 bytes on CPython); with the key and the bookkeeping
    charged by ``set``, ``max_bytes`` bounds the level's real memory. Only
    immutable ``bytes`` are accepted: a ``bytearray`` could change size after
    it was charged.
    """

    def getsizeof(self, value: bytes) -> int:
        """``len(value)`` plus the ``bytes`` object header."""
        return len(value) + _BYTES_HEADER

    def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        size: int | None = None,
        tags: frozenset[str] = frozenset(),
        cost: float | None = None,
    ) -> bool:
        """Store encoded ``value``; see :meth:`CacheLevel.set`. :class:`TypeError` if not bytes."""
        if not isinstance(value, bytes):
            raise TypeError(
                f"level {self._name!r} stores bytes, got {type(value).__name__}: "
                "encode the value first (or use a MemoryLevel for live objects)"
            )
        return super().set(key, value, ttl, size, tags, cost)
