"""The L1: a level of live Python objects, small and fastest."""

from __future__ import annotations

import sys
from typing import Any

from tiercel.core.local.cache_level import CacheLevel

__all__ = ["MemoryLevel"]


class MemoryLevel(CacheLevel[Any]):
    """The L1: live Python objects, small and fastest (no decoding on a hit).

    Its size policy is a cheap estimate, the shallow ``sys.getsizeof(value)``;
    callers that know better (the encoded size) pass ``size=``. Bound it mainly
    by ``max_entries``.
    """

    def getsizeof(self, value: Any) -> int:
        """The shallow ``sys.getsizeof(value)``: cheap, and blind to what it refers to."""
        return sys.getsizeof(value)
