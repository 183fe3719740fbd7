"""The contract every cache store honours: levels, the Redis tier, the multi-level cache.

Each store is wrapped in a small adapter with one interface (``put``, ``fetch``,
``remove``, ``fetch_many``); ``test_cache_contract.py`` runs every test here
against every adapter, as dogpile.cache's shared fixtures do for its backends.
"""

from __future__ import annotations

from typing import Any, Protocol

from tiercel.core.cache.multilevel import MultiLevelCache

MISS: Any = object()

VALUES: list[Any] = [
    None,
    0,
    0.0,
    "",
    b"",
    [],
    {},
    False,
    True,
    1,
    -7,
    2**70,
    1.5,
    "text",
    "ünïcode",
    b"\x00\xff",
    [1, "a", None],
    {"nested": {"list": [1, 2, {"x": b"y"}]}},
]


class Store(Protocol):
    def put(self, key: str, value: Any, ttl: float = 60.0) -> None: ...
    def fetch(self, key: str) -> Any: ...
    def remove(self, key: str) -> None: ...
    def fetch_many(self, keys: list[str]) -> dict[str, Any]: ...


class MultiLevelStore:
    def __init__(self, cache: MultiLevelCache) -> None:
        self.cache = cache

    def put(self, key: str, value: Any, ttl: float = 60.0) -> None:
        self.cache.set(key, value, ttl=ttl)

    def fetch(self, key: str) -> Any:
        found = self.cache.lookup(key)
        return MISS if found is None else found.value

    def remove(self, key: str) -> None:
        self.cache.invalidate(key)

    def fetch_many(self, keys: list[str]) -> dict[str, Any]:
        return self.cache.get_many(keys)


def check_round_trips_every_value_kind(store: Store) -> None:
    for index, value in enumerate(VALUES):
        store.put(f"k{index}", value)
    for index, value in enumerate(VALUES):
        assert store.fetch(f"k{index}") == value, value


def check_falsey_values_are_hits(store: Store) -> None:
    for index, value in enumerate((None, 0, "", b"", [], {}, False)):
        store.put(f"f{index}", value)
        assert store.fetch(f"f{index}") is not MISS


def check_missing_key_is_a_miss(store: Store) -> None:
    assert store.fetch("never-set") is MISS


def check_overwrite_replaces(store: Store) -> None:
    store.put("k", "old")
    store.put("k", "new")
    assert store.fetch("k") == "new"


def check_remove(store: Store) -> None:
    store.put("k", 1)
    store.remove("k")
    assert store.fetch("k") is MISS
    store.remove("k")  # removing a missing key is fine


def check_fetch_many_returns_only_hits(store: Store) -> None:
    for index in range(10):
        store.put(f"m{index}", index)
    found = store.fetch_many([f"m{index}" for index in range(15)])
    assert found == {f"m{index}": index for index in range(10)}


CHECKS = [
    check_round_trips_every_value_kind,
    check_falsey_values_are_hits,
    check_missing_key_is_a_miss,
    check_overwrite_replaces,
    check_remove,
    check_fetch_many_returns_only_hits,
]
