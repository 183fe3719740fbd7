"""What the multi-level cache needs of a shared cache tier.

:class:`~tiercel.core.tier.redis_tier.RedisTier` is the tier a deployment
runs; :class:`~tiercel.core.tier.stub.StubTier` keeps the same contract in
memory for tests. Reads and writes never raise for cache trouble (they miss,
or store nothing, and count why); deletions raise
:class:`~tiercel.core.errors.TierUnavailable`, because a silent failure there
would serve stale values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tiercel.core.encoding.entry import Entry


class CacheTier(Protocol):
    """Encoded entries shared by every process of a deployment."""

    def get_entry(self, key: str) -> Entry | None:
        """The stored entry of ``key`` (payload still encoded), or None."""
        ...

    def get_entries(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The entries of the ``keys`` that are stored, in one round trip."""
        ...

    def encode_entry(
        self, value: Any, *, ttl: float, tags: Sequence[str] = (), compute_seconds: float = 0.0
    ) -> tuple[bytes, bytes] | None:
        """``(payload, record)`` as :meth:`set` would store them; None when not storable."""
        ...

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds under its tags; False when it was not stored."""
        ...

    def set_many(
        self,
        items: Mapping[str, Any],
        *,
        ttl: float,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> int:
        """Store every item (same ttl and tags); returns how many were stored."""
        ...

    def delete(self, *keys: str) -> int:
        """Remove value keys; returns how many existed."""
        ...

    def invalidate_tag(
        self, tag: str, *, remove: Callable[[list[bytes]], int] | None = None
    ) -> int:
        """Remove every key tagged ``tag`` (through ``remove`` when given); how many existed."""
        ...

    def generation(self, scope: str) -> int:
        """The current generation of ``scope`` (0 if never bumped)."""
        ...

    def bump_generation(self, scope: str) -> int:
        """Increment the generation of ``scope``; returns the new one."""
        ...

    def restore_generation(self, scope: str, value: int) -> int:
        """Raise the stored generation of ``scope`` to at least ``value``; the stored one."""
        ...

    @property
    def stats(self) -> dict[str, int | str]:
        """Counters, for metrics."""
        ...

    def close(self) -> None:
        """Release the tier's connections."""
        ...
