"""A key's last fate in the shared tier, kept beside it so a later miss can say why.

A value key that is absent says nothing about whether it ever existed. The
lease scripts therefore keep one small record per key at
``{ns}:hist:{<digest>}`` (the value key's hash tag, so the same scripts touch
it on Redis Cluster), written by the script that decided the key's fate and
read by the acquire script that elects the next computer, in the same round
trip. It lives ``state_ttl`` past the event (the value's TTL more for a
write), so it is bounded like the fence and epoch counters; losing it to
eviction only makes a miss look like a first computation.

The record is one string, ``<kind>|<server ms>[|<value expires at, server ms>]``:

``w|<at>|<expires>`` a value was stored, living until ``expires``
``k|<at>``           the key was invalidated by key
``t|<at>``           it was invalidated by tag
``f|<at>``           its computation raised and the error was not cached

Like the channel's messages (:mod:`tiercel.core.tier.events`) this is a wire
format between processes of one fleet: encoded here and in the Lua scripts
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["FAILED", "INVALIDATED_KEY", "INVALIDATED_TAG", "WRITTEN", "History"]

#: A value was stored (its expiry follows).
WRITTEN: Final = "w"
#: The key was invalidated by key.
INVALIDATED_KEY: Final = "k"
#: The key was invalidated by tag.
INVALIDATED_TAG: Final = "t"
#: The key's computation raised and nothing was cached.
FAILED: Final = "f"

_KINDS: Final = frozenset({WRITTEN, INVALIDATED_KEY, INVALIDATED_TAG, FAILED})


@dataclass(frozen=True, slots=True)
class History:
    """What the shared tier last recorded of a key, stamped by the server's clock.

    ``now_ms`` is the server's time when the record was read, so comparing it
    with ``expires_ms`` needs no agreement between host clocks.
    """

    kind: str
    at_ms: int
    now_ms: int
    expires_ms: int | None = None

    @property
    def expired(self) -> bool:
        """A written value whose TTL had run out when the record was read."""
        return self.expires_ms is not None and self.now_ms >= self.expires_ms

    @classmethod
    def decode(cls, raw: Any, now_ms: Any) -> History | None:
        """The record a script returned (bytes or str), or None (none, unreadable)."""
        if raw is None or raw is False:
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        parts = text.split("|")
        if parts[0] not in _KINDS or len(parts) not in (2, 3):
            return None
        try:
            at = int(parts[1])
            expires = int(parts[2]) if len(parts) == 3 else None
            now = int(now_ms)
        except (TypeError, ValueError):
            return None
        if (parts[0] == WRITTEN) != (expires is not None):
            return None
        return cls(parts[0], at, now, expires)

    def encode(self) -> str:
        """The record as the scripts write it (the stub store keeps the same strings)."""
        if self.expires_ms is None:
            return f"{self.kind}|{self.at_ms}"
        return f"{self.kind}|{self.at_ms}|{self.expires_ms}"
