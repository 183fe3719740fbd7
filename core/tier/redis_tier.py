"""The Redis tier: the distributed cache every process shares.

Reads never raise: a miss, a corrupt or foreign value, a Redis error and an
open circuit breaker all answer :data:`MISSING` (and are counted), so cache
trouble never fails a task. Writes answer False instead of raising.
Invalidations (:meth:`RedisTier.delete`, :meth:`RedisTier.invalidate_tag`,
:meth:`RedisTier.bump_generation`) and :meth:`RedisTier.generation` raise
:class:`~tiercel.core.errors.TierUnavailable` instead, because a caller must know when
an invalidation did not happen or a generation is unknown.

A hit is one ``GET``, :meth:`Entry.unpack` and ``serializer.loads``: no TTL
round trip (the remaining TTL comes from ``Entry.expires_at``) and no logging.
Counters are plain ints bumped without a lock; ``+=`` on an attribute is not
atomic across threads, so under heavy threading a few increments may be lost.
They are statistics, not accounting.

Generation keys come from :func:`generation_key` below, tag-index keys from
:mod:`tiercel.core.tier.tag_index`; value keys are built by the caller and
passed in whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast

import redis

from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.encoding.entry import Entry
from tiercel.core.encoding.prefixes import GENERATION
from tiercel.core.errors import CodecError, TierUnavailable, ValueTooLarge
from tiercel.core.missing import MISSING, Missing
from tiercel.core.tier import scripts, tag_index
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.connections import CacheClient, client_from_url, is_cluster

# --- the only place generation keys are formatted ---


def generation_key(namespace: str, scope: str) -> str:
    """The generation counter of ``scope`` (a function, a tag, the namespace)."""
    return f"{namespace}:{GENERATION}:{scope}"


# --- the tier ---


@dataclass(frozen=True)
class InflightRead:
    """What :meth:`RedisTier.read_or_claim` found of a key.

    ``stored``: Redis holds ``entry`` (nothing was claimed); ``claimed``: nothing was
    stored and the key is now marked in flight for the caller's task; ``joined``: the
    key was already marked, for the task ``task_id``; ``unread``: nothing was learned
    (Redis down, the breaker open, or a stored value unreadable).
    """

    state: Literal["stored", "claimed", "joined", "unread"]
    entry: Entry | None = None
    task_id: str | None = None


_UNREAD: Final = InflightRead("unread")


class PayloadSerializer(Protocol):
    """What the tier needs of a serializer (:class:`Serializer` is one).

    ``loads`` raises :class:`~tiercel.core.errors.CodecError` for corrupt or foreign
    bytes; ``dumps`` raises :class:`~tiercel.core.errors.ValueTooLarge` for values it
    refuses to encode because of their size.
    """

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# Errors that mean "Redis is unreachable or too slow": these feed the breaker.
# Other RedisErrors (ResponseError...) come from a server that answered.
_OUTAGE_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError)


class RedisTier:
    """Cached values in Redis, behind a circuit breaker.

    ``client`` is used as given (its retries and timeouts are the caller's);
    :meth:`from_url` builds one suited to a cache: bounded blocking pool,
    short timeouts, no retries (the breaker decides when to try again).
    ``wall_clock`` stamps ``Entry.stored_at`` and ``expires_at``.
    """

    def __init__(
        self,
        client: CacheClient,
        *,
        serializer: PayloadSerializer,
        namespace: str,
        breaker: CircuitBreaker | None = None,
        max_value_bytes: int = 8 * 2**20,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_value_bytes <= 0:
            raise ValueError(f"max_value_bytes={max_value_bytes!r}: expected a positive size")
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError(
                "the Redis tier needs a client with decode_responses=False: values are bytes"
            )
        self.client = client
        # Cluster: MGET only within one slot, and every value key is its own slot.
        self._cluster = is_cluster(client)
        self.namespace = namespace
        self.serializer = serializer
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.max_value_bytes = max_value_bytes
        self._wall_clock = wall_clock
        # Deletes a corrupt value only if it still holds the bytes found corrupt, so a
        # valid value written in between survives.
        self._delete_if_equal = scripts.register(client, "delete_if_equal")
        self._claim_inflight = scripts.register(client, "claim_inflight")
        self._hits = 0
        self._misses = 0
        self._errors = 0
        self._corrupt = 0
        self._oversize = 0
        self._unencodable = 0
        self._short_circuited = 0
        self._writes = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        serializer: PayloadSerializer,
        namespace: str,
        max_connections: int = 32,
        socket_timeout: float = 0.5,
        pool_timeout: float | None = None,
        health_check_interval: int = 30,
        keepalive_bound: float = 1.0,
        **kw: Any,
    ) -> RedisTier:
        """A tier on its own bounded pool, for any URL :func:`client_from_url`
        takes: ``redis://``, ``rediss://`` (TLS), ``unix://``, ``redis+cluster://``,
        ``rediss+cluster://`` and ``redis+sentinel://``.

        ``pool_timeout`` (default ``socket_timeout``) bounds the wait for a free
        connection when all ``max_connections`` are busy (per node on a
        cluster); running out counts as a failure. ``keepalive_bound`` sets the
        connections' TCP keepalive intervals (the staleness bound). Other keywords go to
        :class:`RedisTier`.
        """
        client = client_from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            pool_timeout=pool_timeout,
            health_check_interval=health_check_interval,
            keepalive_bound=keepalive_bound,
        )
        return cls(client, serializer=serializer, namespace=namespace, **kw)

    # --- reads: never raise ---

    def _read(self, command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``command``'s reply, or :data:`MISSING` while the breaker is open or when
        Redis failed (counted, and told to the breaker). Never raises."""
        if not self.breaker.allow():
            self._short_circuited += 1
            return MISSING
        try:
            reply = command(*args, **kwargs)
        except _OUTAGE_ERRORS:
            self._errors += 1
            self.breaker.record_failure()
            return MISSING
        except redis.RedisError:
            self._errors += 1
            self.breaker.record_success()
            return MISSING
        self.breaker.record_success()
        return reply

    def get(self, key: str) -> Any:
        """The cached value of ``key``, or :data:`MISSING`. Never raises."""
        raw = self._read(self.client.get, key)
        if raw is MISSING:
            return MISSING
        if raw is None:
            self._misses += 1
            return MISSING
        try:
            value = self.serializer.loads(Entry.unpack(raw).payload)
        except Exception:  # CodecError by contract; anything else is as unreadable
            self._discard_corrupt(key, raw)
            return MISSING
        self._hits += 1
        return value

    def get_entry(self, key: str) -> Entry | None:
        """The raw :class:`Entry` of ``key`` (payload still encoded), or None. Never raises.

        Only the envelope is checked here; the payload is decoded (and
        checked) by whoever uses it, so a value is never decoded twice.
        """
        raw = self._read(self.client.get, key)
        if raw is MISSING:
            return None
        if raw is None:
            self._misses += 1
            return None
        try:
            entry = Entry.unpack(raw)
        except CodecError:
            self._discard_corrupt(key, raw)
            return None
        self._hits += 1
        return entry

    def read_or_claim(self, key: str, task_id: str, ttl: float) -> InflightRead:
        """``key``'s entry if Redis holds one, else the key marked in flight for
        ``task_id`` (for ``ttl`` seconds) unless another task marks it already: a submit
        that missed its local levels learns both in one round trip. Never raises; counted
        as a hit or a miss as :meth:`get_entry` counts."""
        answer = self._read(
            self._claim_inflight,
            keys=[CacheKey.of(key).inflight, key],
            args=[task_id, _ttl_ms(ttl)],
        )
        if answer is MISSING:
            return _UNREAD
        if isinstance(answer, list):
            raw = cast(bytes, answer[0])
            try:
                entry = Entry.unpack(raw)
            except CodecError:
                self._discard_corrupt(key, raw)
                return _UNREAD
            self._hits += 1
            return InflightRead("stored", entry)
        self._misses += 1
        if answer is None:
            return InflightRead("claimed", task_id=task_id)
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return InflightRead("joined", task_id=text)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Values of the ``keys`` that hit, in one ``MGET``. Never raises."""
        raws = self._mget(keys)
        found: dict[str, Any] = {}
        loads = self.serializer.loads
        for key, raw in raws:
            try:
                found[key] = loads(Entry.unpack(raw).payload)
            except Exception:  # as in get()
                self._discard_corrupt(key, raw)
                continue
            self._hits += 1
        return found

    def get_entries(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Raw entries of the ``keys`` that hit, in one ``MGET`` (see :meth:`get_entry`)."""
        found: dict[str, Entry] = {}
        for key, raw in self._mget(keys):
            try:
                found[key] = Entry.unpack(raw)
            except CodecError:
                self._discard_corrupt(key, raw)
                continue
            self._hits += 1
        return found

    def _mget(self, keys: Sequence[str]) -> list[tuple[str, bytes]]:
        """(key, raw) of the keys Redis holds, in one MGET; misses and errors are counted."""
        if not keys:
            return []
        # One MGET per slot on a cluster, pipelined: one round trip per node.
        mget = self.client.mget_nonatomic if self._cluster else self.client.mget  # type: ignore[union-attr, unused-ignore]
        replies = self._read(mget, keys)
        if replies is MISSING:
            return []
        raws = cast(list[bytes | None], replies)
        present = [(key, raw) for key, raw in zip(keys, raws, strict=True) if raw is not None]
        self._misses += len(keys) - len(present)
        return present

    def _discard_corrupt(self, key: str, raw: bytes) -> None:
        self._corrupt += 1
        try:
            self._delete_if_equal(keys=[key], args=[raw])
        except redis.RedisError:
            self._errors += 1

    # --- writes: never raise for cache trouble ---

    def _encode(
        self, value: Any, ttl: float, tags: Sequence[str], compute_seconds: float
    ) -> bytes | None:
        encoded = self.encode_entry(value, ttl=ttl, tags=tags, compute_seconds=compute_seconds)
        return None if encoded is None else encoded[1]

    def encode_entry(
        self, value: Any, *, ttl: float, tags: Sequence[str] = (), compute_seconds: float = 0.0
    ) -> tuple[bytes, bytes] | None:
        """``(payload, record)`` as :meth:`set` would store them; None (counted) when the
        value cannot be encoded or is larger than ``max_value_bytes``."""
        try:
            payload = self.serializer.dumps(value)
        except ValueTooLarge:
            self._oversize += 1
            return None
        except Exception:  # CodecError by contract: a value the codec cannot encode
            self._unencodable += 1
            return None
        if len(payload) > self.max_value_bytes:
            self._oversize += 1
            return None
        entry = Entry.create(
            payload,
            now=self._wall_clock(),
            ttl=ttl,
            compute_seconds=compute_seconds,
            tags=tags,
        )
        return payload, entry.pack()

    def index_tags(self, key: str, tags: Sequence[str], ttl: float) -> None:
        """Add ``key`` to each tag's index now, before its value exists.

        A computation indexes its key before it starts, so a tag invalidation
        that runs while it computes finds the key and rejects the write-back.
        Raises TierUnavailable.
        """
        if not tags:
            return
        ttl_ms = _ttl_ms(ttl)

        def add() -> None:
            pipe = self.client.pipeline(transaction=False)
            for tag in tags:
                tag_index.queue_add(
                    pipe, tag_index.tag_index_key(self.namespace, tag), ttl_ms, [key]
                )
            pipe.execute()

        self._call(add)

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds and add ``key`` to each tag's index.

        Returns False (and counts why) when the value is too large or cannot
        be encoded, Redis fails, or the breaker is open. Raises ValueError
        only for a caller's mistake (ttl not positive, empty tag).
        """
        return self.set_many({key: value}, ttl=ttl, tags=tags, compute_seconds=compute_seconds) == 1

    def set_many(
        self,
        items: Mapping[str, Any],
        *,
        ttl: float,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> int:
        """Store every item (same ttl and tags) in one pipeline; returns how many were stored."""
        ttl_ms = _ttl_ms(ttl)
        records: dict[str, bytes] = {}
        for key, value in items.items():
            record = self._encode(value, ttl, tags, compute_seconds)
            if record is not None:
                records[key] = record
        if not records:
            return 0
        if not self.breaker.allow():
            self._short_circuited += 1
            return 0
        try:
            if len(records) == 1 and not tags:
                ((key, record),) = records.items()
                stored = 1 if self.client.set(key, record, px=ttl_ms) else 0
            else:
                stored = self._pipeline_set(records, ttl_ms, tags)
        except _OUTAGE_ERRORS:
            self._errors += 1
            self.breaker.record_failure()
            return 0
        except redis.RedisError:
            self._errors += 1
            self.breaker.record_success()
            return 0
        self.breaker.record_success()
        self._writes += stored
        return stored

    def _pipeline_set(self, records: dict[str, bytes], ttl_ms: int, tags: Sequence[str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key, record in records.items():
            pipe.set(key, record, px=ttl_ms)
        keys = list(records)
        for tag in tags:
            tag_index.queue_add(pipe, tag_index.tag_index_key(self.namespace, tag), ttl_ms, keys)
        results = pipe.execute()
        return sum(1 for result in results[: len(records)] if result)

    # --- invalidation: raises TierUnavailable, because silence would serve stale values ---

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        if not self.breaker.allow():
            self._short_circuited += 1
            raise TierUnavailable(
                f"the Redis tier's circuit breaker is {self.breaker.state}; retry after "
                f"{self.breaker.reset_after:g}s"
            )
        try:
            result = func(*args)
        except _OUTAGE_ERRORS as exc:
            self._errors += 1
            self.breaker.record_failure()
            raise TierUnavailable(f"the Redis tier is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            self._errors += 1
            self.breaker.record_success()
            raise TierUnavailable(f"the Redis tier refused the command: {exc}") from exc
        self.breaker.record_success()
        return result

    def delete(self, *keys: str) -> int:
        """Remove value keys; returns how many existed. Raises TierUnavailable."""
        if not keys:
            return 0
        return int(self._call(self.client.unlink, *keys))

    def invalidate_tag(
        self, tag: str, *, remove: Callable[[list[bytes]], int] | None = None
    ) -> int:
        """Remove every value key tagged ``tag``; returns how many existed.

        ``remove`` deletes one batch of member keys and returns how many
        existed (default: ``UNLINK``); the lease layer passes one that also
        bumps each key's epoch, so in-flight computations cannot write back.

        The index is renamed aside and drained in bounded batches (see
        :func:`tiercel.core.tier.tag_index.drain`). Raises TierUnavailable.
        """
        return tag_index.drain(self.client, self.namespace, tag, call=self._call, remove=remove)

    def generation(self, scope: str) -> int:
        """The current generation of ``scope`` (0 if never bumped). Raises TierUnavailable."""
        raw = self._call(self.client.get, generation_key(self.namespace, scope))
        return 0 if raw is None else int(raw)

    def bump_generation(self, scope: str) -> int:
        """Increment the generation of ``scope``; returns the new one. Raises TierUnavailable."""
        return int(self._call(self.client.incr, generation_key(self.namespace, scope)))

    def restore_generation(self, scope: str, value: int) -> int:
        """Raise the stored generation of ``scope`` to at least ``value`` (it was lost to
        eviction or a flush while processes still remember it); returns the stored one.
        Raises TierUnavailable."""
        return int(
            self._call(
                self.client.eval,
                scripts.source("raise_to"),
                1,
                generation_key(self.namespace, scope),
                value,
            )
        )

    # --- health and lifecycle ---

    def ping(self) -> bool:
        """True when Redis answers PING. Bypasses the breaker; never raises."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    @property
    def stats(self) -> dict[str, int | str]:
        """Counters and breaker state, for metrics."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "errors": self._errors,
            "corrupt": self._corrupt,
            "oversize": self._oversize,
            "unencodable": self._unencodable,
            "short_circuited": self._short_circuited,
            "writes": self._writes,
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.opened,
        }

    def close(self) -> None:
        """Close the client (and its pool when :meth:`from_url` built it)."""
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisTier(namespace={self.namespace!r}, breaker={self.breaker.state!r})"


def _ttl_ms(ttl: float) -> int:
    if not ttl > 0:
        raise ValueError(f"ttl={ttl!r}: expected a positive number of seconds")
    return max(1, round(ttl * 1000))


__all__ = [
    "MISSING",
    "Missing",
    "PayloadSerializer",
    "RedisTier",
    "generation_key",
]
