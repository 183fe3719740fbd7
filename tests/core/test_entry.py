"""Entry: the wire record of one cached value."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiercel.core.encoding.entry import HEADER_SIZE, RECORD_VERSION, Entry
from tiercel.core.errors import CodecError

tags_strategy = st.lists(
    st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=20,
    ),
    max_size=5,
).map(tuple)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def test_round_trip_keeps_everything() -> None:
    entry = Entry(
        b"\xc1t\x01\x01\x00payload",
        stored_at=1700000000.25,
        expires_at=1700003600.5,
        compute_seconds=1.5,
        tags=("users", "team:7", "ünïcode"),
    )
    assert Entry.unpack(entry.pack()) == entry


def test_round_trip_without_expiry_or_tags() -> None:
    entry = Entry(b"", stored_at=1.0)
    packed = entry.pack()
    assert len(packed) == HEADER_SIZE
    assert packed[0] == RECORD_VERSION
    assert Entry.unpack(packed) == entry
    assert Entry.unpack(packed).expires_at is None


def test_payload_is_kept_unchanged_at_the_end() -> None:
    payload = bytes(range(256)) * 4
    packed = Entry(payload, stored_at=5.0, tags=("a",)).pack()
    assert packed.endswith(payload)
    assert Entry.unpack(memoryview(packed)).payload == payload


@given(
    payload=st.binary(max_size=2048),
    stored_at=times,
    ttl=st.none() | st.floats(min_value=0.001, max_value=1e7),
    compute=st.floats(min_value=0, max_value=1e5),
    tags=tags_strategy,
)
def test_round_trip_property(
    payload: bytes, stored_at: float, ttl: float | None, compute: float, tags: tuple[str, ...]
) -> None:
    entry = Entry.create(payload, now=stored_at, ttl=ttl, compute_seconds=compute, tags=tags)
    assert Entry.unpack(entry.pack()) == entry


def test_create_and_remaining_ttl() -> None:
    entry = Entry.create(b"x", now=100.0, ttl=30.0, compute_seconds=0.2)
    assert entry.expires_at == 130.0
    assert entry.remaining_ttl(100.0) == 30.0
    assert entry.remaining_ttl(125.5) == 4.5
    assert entry.remaining_ttl(131.0) == 0.0
    assert Entry.create(b"x", now=100.0, ttl=None).remaining_ttl(1e12) is None


@pytest.mark.parametrize("tag", ["", "a\x00b"])
def test_pack_rejects_unpackable_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        Entry(b"", stored_at=0.0, tags=(tag,)).pack()


def test_pack_rejects_too_many_tag_bytes() -> None:
    with pytest.raises(ValueError, match="bytes of tags"):
        Entry(b"", stored_at=0.0, tags=tuple("t" * 1000 for _ in range(70))).pack()


def _header(
    version: int = RECORD_VERSION,
    flags: int = 0,
    stored: float = 1.0,
    expires: float = 0.0,
    compute: float = 0.0,
    tags_len: int = 0,
) -> bytes:
    return struct.pack("<BBdddH", version, flags, stored, expires, compute, tags_len)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than"),
        (_header()[:-1], "shorter than"),
        (_header(version=2), "record version 2"),
        (_header(version=0x80) + b"pickle", "record version"),
        (_header(flags=0x02), "unknown flags"),
        (_header(stored=math.nan), "non-finite"),
        (_header(expires=math.inf, flags=1), "non-finite"),
        (_header(compute=-1.0), "negative"),
        (_header(tags_len=10) + b"abc", "truncated"),
        (_header(tags_len=2) + b"\xff\xfe", "not UTF-8"),
        (_header(tags_len=3) + b"a\x00\x00", "empty tag"),
    ],
)
def test_malformed_records_raise_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        Entry.unpack(data)


def test_non_bytes_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        Entry.unpack("not bytes")  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes) -> None:
    try:
        entry = Entry.unpack(data)
    except CodecError:
        return
    # Whatever parsed is a well-formed entry.
    assert Entry.unpack(entry.pack()) == entry


@given(st.binary(min_size=HEADER_SIZE, max_size=200))
def test_random_bytes_behind_a_valid_version_byte(data: bytes) -> None:
    data = bytes((RECORD_VERSION,)) + data[1:]
    with contextlib.suppress(CodecError):
        Entry.unpack(data)
