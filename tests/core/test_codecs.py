"""Codecs and frames: round trips, compression, limits, and fail-closed decoding."""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import zlib
from collections import OrderedDict, namedtuple
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tiercel.core.encoding.codecs import (
    FLAG_COMPRESSED,
    FORMAT_VERSION,
    MAGIC,
    JsonCodec,
    MsgpackCodec,
    Serializer,
    SignedPickleCodec,
    codec_by_name,
    serializer_from_settings,
)
from tiercel.core.errors import CodecError, ValueTooLarge
from tiercel.core.settings import Settings

KEY_OLD = "old-signing-key-0123456789"
KEY_NEW = "new-signing-key-9876543210"

PLAIN_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    float("inf"),
    "",
    "héllo ✓",
    "x" * 1000,
    [],
    [1, "a", None, [2.5, {"k": "v"}]],
    {},
    {"a": {"b": [1]}},
]


class Color(enum.IntEnum):
    RED = 1


Point = namedtuple("Point", "x y")


def serializers() -> list[Serializer]:
    return [
        Serializer(MsgpackCodec()),
        Serializer(JsonCodec()),
        Serializer(SignedPickleCodec([KEY_NEW])),
    ]


@pytest.mark.parametrize("serializer", serializers(), ids=lambda s: s.codec.name)
@pytest.mark.parametrize("value", PLAIN_VALUES, ids=repr)
def test_plain_values_round_trip_in_every_codec(serializer: Serializer, value: Any) -> None:
    frame = serializer.dumps(value)
    assert frame[:2] == MAGIC
    assert frame[2] == FORMAT_VERSION
    assert frame[3] == serializer.codec.codec_id
    assert serializer.loads(frame) == value
    assert serializer.loads(memoryview(frame)) == value
    assert serializer.loads(bytearray(frame)) == value


def test_msgpack_specific_round_trips() -> None:
    serializer = Serializer(MsgpackCodec())
    for value in [b"", b"\x00\xff" * 10, {1: "int key", "s": b"bytes"}, 2**64 - 1]:
        assert serializer.loads(serializer.dumps(value)) == value
    assert serializer.loads(serializer.dumps((1, (2, 3)))) == [1, [2, 3]]  # tuples -> lists
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    loaded = serializer.loads(serializer.dumps(moment))
    assert loaded == moment and loaded.tzinfo == UTC
    assert serializer.loads(serializer.dumps("a")) == "a"
    assert type(serializer.loads(serializer.dumps(b"a"))) is bytes


def test_json_specific_round_trips() -> None:
    serializer = Serializer(JsonCodec())
    assert serializer.loads(serializer.dumps((1, 2))) == [1, 2]
    assert serializer.loads(serializer.dumps({1: "a"})) == {"1": "a"}
    assert serializer.loads(serializer.dumps("\ud800 lone surrogate")) == "\ud800 lone surrogate"
    assert serializer.codec.dumps({"a": [1, 2]}) == b'{"a":[1,2]}'  # compact separators


def test_pickle_round_trips_arbitrary_objects() -> None:
    serializer = Serializer(SignedPickleCodec([KEY_NEW]))
    for value in [
        {1, 2},
        (1, (2,)),
        Color.RED,
        Point(1, 2),
        OrderedDict(a=1),
        datetime(2020, 1, 1),
        b"raw",
    ]:
        loaded = serializer.loads(serializer.dumps(value))
        assert loaded == value and type(loaded) is type(value)


@pytest.mark.parametrize(
    ("codec", "value", "type_name"),
    [
        (MsgpackCodec(), {1, 2}, "builtins.set"),
        (MsgpackCodec(), object(), "builtins.object"),
        (MsgpackCodec(), Color.RED, "Color"),
        (MsgpackCodec(), Point(1, 2), "Point"),
        (MsgpackCodec(), OrderedDict(a=1), "OrderedDict"),
        pytest.param(MsgpackCodec(), 2 ** (8 * 4096 + 8), "builtins.int", id="huge-int"),
        (MsgpackCodec(), datetime(2020, 1, 1), "datetime"),
        (JsonCodec(), b"bytes", "builtins.bytes"),
        (JsonCodec(), {1, 2}, "builtins.set"),
        (SignedPickleCodec([KEY_NEW]), lambda: 1, "function"),
    ],
)
def test_unrepresentable_value_raises_codec_error_naming_type(
    codec: Any, value: Any, type_name: str
) -> None:
    with pytest.raises(CodecError, match=type_name):
        Serializer(codec).dumps(value)


@pytest.mark.parametrize("value", [2**64, -(2**64), 2**70 + 1, [2**100, {"k": -(2**65)}]])
def test_msgpack_carries_ints_beyond_64_bits(value: Any) -> None:
    serializer = Serializer(MsgpackCodec())
    assert serializer.loads(serializer.dumps(value)) == value


def test_msgpack_refuses_an_oversized_bigint_extension() -> None:
    import msgpack

    from tiercel.core.encoding.codecs import EXT_BIGINT, MAX_BIGINT_BYTES

    hostile = msgpack.packb(msgpack.ExtType(EXT_BIGINT, b"\x01" * (MAX_BIGINT_BYTES + 1)))
    with pytest.raises(CodecError):
        MsgpackCodec().loads(hostile)


def test_circular_value_is_a_codec_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for serializer in serializers()[:2]:
        with pytest.raises(CodecError):
            serializer.dumps(loop)


# -- compression -------------------------------------------------------------------------


def test_compression_above_threshold_sets_flag() -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=1024)
    value = "abc" * 2000
    frame = serializer.dumps(value)
    assert frame[4] == FLAG_COMPRESSED
    assert len(frame) < 1000
    assert serializer.loads(frame) == value


def test_no_compression_below_threshold() -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=1024)
    value = "a" * 500  # very compressible, but small
    frame = serializer.dumps(value)
    assert frame[4] == 0
    assert frame[5:] == msgpack.packb(value)


def test_incompressible_value_is_stored_plain() -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=16)
    value = os.urandom(4096)
    frame = serializer.dumps(value)
    assert frame[4] == 0
    assert serializer.loads(frame) == value


def test_threshold_zero_compresses_everything_compressible() -> None:
    serializer = Serializer(JsonCodec(), compress_min_bytes=0)
    frame = serializer.dumps(["same"] * 100)
    assert frame[4] == FLAG_COMPRESSED
    assert serializer.loads(frame) == ["same"] * 100


def test_value_too_large() -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=10**9, max_bytes=100)
    serializer.dumps("a" * 50)
    with pytest.raises(ValueTooLarge, match="over the limit of 100"):
        serializer.dumps("a" * 200)


def test_max_bytes_applies_after_compression() -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=1024, max_bytes=2000)
    frame = serializer.dumps("z" * 100_000)
    assert len(frame) <= 2000


def test_zip_bomb_is_refused() -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=0, max_decoded_bytes=10_000)
    big = msgpack.packb(b"\x00" * 1_000_000)
    frame = serializer._compressed + len(big).to_bytes(4, "big") + zlib.compress(big)
    with pytest.raises(CodecError, match="decode limit"):
        serializer.loads(frame)
    lying = serializer._compressed + (100).to_bytes(4, "big") + zlib.compress(big)
    with pytest.raises(CodecError, match="declared length"):
        serializer.loads(lying)


# -- foreign and corrupt input ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_codec_errors(data: bytes) -> None:
    assume(not data.startswith(MAGIC))  # valid headers are the next test's subject
    for serializer in serializers():
        with pytest.raises(CodecError):
            serializer.loads(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0, FLAG_COMPRESSED]))
def test_random_payload_behind_a_valid_header_never_escapes(data: bytes, flags: int) -> None:
    for serializer in serializers():
        header = MAGIC + bytes((FORMAT_VERSION, serializer.codec.codec_id, flags))
        with contextlib.suppress(CodecError):
            serializer.loads(header + data)


def sample_frames() -> list[tuple[Serializer, bytes]]:
    value = {"numbers": list(range(50)), "text": "hello " * 40, "blob": b"\x01\x02"}
    frames = []
    for serializer in serializers():
        for threshold in (10**9, 0):
            serializer.compress_min_bytes = threshold
            frames.append(
                (
                    serializer,
                    serializer.dumps(
                        value if serializer.codec.name != "json" else {"t": "hello " * 40}
                    ),
                )
            )
    return frames


@pytest.mark.parametrize(("serializer", "frame"), sample_frames())
def test_truncated_frames_are_codec_errors(serializer: Serializer, frame: bytes) -> None:
    for cut in range(len(frame)):
        with pytest.raises(CodecError):
            serializer.loads(frame[:cut])


@pytest.mark.parametrize(("serializer", "frame"), sample_frames())
def test_flipped_bits_never_escape_as_other_errors(serializer: Serializer, frame: bytes) -> None:
    for position in range(len(frame)):
        for bit in (0, 3, 7):
            corrupt = bytearray(frame)
            corrupt[position] ^= 1 << bit
            with contextlib.suppress(CodecError):
                serializer.loads(bytes(corrupt))
    # the header and (for pickle) the signed payload are always checked
    for position in range(5):
        corrupt = bytearray(frame)
        corrupt[position] ^= 0x40
        with pytest.raises(CodecError):
            serializer.loads(bytes(corrupt))


def test_header_errors_say_what_is_wrong() -> None:
    serializer = Serializer(MsgpackCodec())
    frame = serializer.dumps(1)
    with pytest.raises(CodecError, match="wrong magic"):
        serializer.loads(b"xx" + frame[2:])
    with pytest.raises(CodecError, match="format version 9"):
        serializer.loads(frame[:2] + b"\x09" + frame[3:])
    with pytest.raises(CodecError, match="unknown codec id 77"):
        serializer.loads(frame[:3] + b"\x4d" + frame[4:])
    with pytest.raises(CodecError, match="json codec"):
        serializer.loads(Serializer(JsonCodec()).dumps(1))
    with pytest.raises(CodecError, match="unknown flags 0x80"):
        serializer.loads(frame[:4] + b"\x80" + frame[5:])
    with pytest.raises(CodecError, match="only 3 bytes"):
        serializer.loads(frame[:3])
    with pytest.raises(CodecError):
        serializer.loads(b"")
    with pytest.raises(CodecError):
        serializer.loads("not bytes")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        serializer.loads(msgpack.packb(1))  # a raw payload without a frame


def test_msgpack_extension_types_are_refused() -> None:
    serializer = Serializer(MsgpackCodec())
    payload = msgpack.packb(msgpack.ExtType(5, b"abc"))
    with pytest.raises(CodecError, match="extension type 5"):
        serializer.loads(serializer._plain + payload)


def test_msgpack_trailing_garbage_is_refused() -> None:
    serializer = Serializer(MsgpackCodec())
    with pytest.raises(CodecError):
        serializer.loads(serializer.dumps(1) + b"\x00")


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker))
    msgpack_serializer = Serializer(MsgpackCodec())
    json_serializer = Serializer(JsonCodec())
    pickle_serializer = Serializer(SignedPickleCodec([KEY_NEW]))
    attempts = [
        payload,
        MAGIC + bytes((FORMAT_VERSION, SignedPickleCodec.codec_id, 0)) + payload,
        MAGIC + bytes((FORMAT_VERSION, MsgpackCodec.codec_id, 0)) + payload,
        MAGIC + bytes((FORMAT_VERSION, SignedPickleCodec.codec_id, 0)) + b"\x00" * 36 + payload,
    ]
    for frame in attempts:
        for serializer in (msgpack_serializer, json_serializer, pickle_serializer):
            with pytest.raises(CodecError):
                serializer.loads(frame)
    # a correctly framed pickle payload signed with someone else's key
    forged = Serializer(SignedPickleCodec(["attacker-key-0123456789"])).dumps(Exploit(marker))
    with pytest.raises(CodecError, match="not configured"):
        pickle_serializer.loads(forged)
    with pytest.raises(CodecError, match="pickle codec"):
        msgpack_serializer.loads(forged)
    assert not marker.exists()
    # the exploit is real: unpickling it directly would have run
    pickle.loads(payload)
    assert marker.exists()


# -- signed pickle ------------------------------------------------------------------------


def test_key_rotation_old_key_verifies_new_key_signs() -> None:
    before = Serializer(SignedPickleCodec([KEY_OLD]))
    after = Serializer(SignedPickleCodec([KEY_NEW, KEY_OLD]))
    old_frame = before.dumps({"written": "before rotation"})
    assert after.loads(old_frame) == {"written": "before rotation"}
    new_frame = after.dumps("after")
    with pytest.raises(CodecError):
        before.loads(new_frame)  # signed by the new key, which `before` does not know
    assert Serializer(SignedPickleCodec([KEY_NEW])).loads(new_frame) == "after"
    # once the old key is dropped, its frames no longer verify
    with pytest.raises(CodecError):
        Serializer(SignedPickleCodec([KEY_NEW])).loads(old_frame)


def test_wrong_key_is_codec_error() -> None:
    frame = Serializer(SignedPickleCodec([KEY_OLD])).dumps([1, 2, 3])
    with pytest.raises(CodecError):
        Serializer(SignedPickleCodec([KEY_NEW])).loads(frame)


def test_forged_key_id_with_wrong_mac_is_codec_error() -> None:
    serializer = Serializer(SignedPickleCodec([KEY_NEW]))
    frame = bytearray(serializer.dumps([1, 2, 3]))
    frame[10] ^= 0x01  # inside the MAC, key id intact
    with pytest.raises(CodecError, match="does not verify"):
        serializer.loads(bytes(frame))


def test_tampered_payload_is_codec_error() -> None:
    serializer = Serializer(SignedPickleCodec([KEY_NEW]))
    frame = serializer.dumps({"amount": 100})
    tampered = frame.replace(b"amount", b"amounT")
    assert tampered != frame
    with pytest.raises(CodecError, match="does not verify"):
        serializer.loads(tampered)


def test_tampered_compressed_pickle_is_codec_error() -> None:
    serializer = Serializer(SignedPickleCodec([KEY_NEW]), compress_min_bytes=0)
    frame = serializer.dumps("payload " * 200)
    assert frame[4] == FLAG_COMPRESSED
    body = bytearray(zlib.decompress(frame[9:]))
    body[-5] ^= 0x01
    forged = frame[:5] + len(body).to_bytes(4, "big") + zlib.compress(bytes(body))
    with pytest.raises(CodecError, match="does not verify"):
        serializer.loads(forged)


def test_signed_pickle_needs_a_key() -> None:
    with pytest.raises(ValueError, match="signing key"):
        SignedPickleCodec([])
    with pytest.raises(ValueError, match="signing key"):
        SignedPickleCodec([""])
    SignedPickleCodec([b"bytes-key-0123456789"])


# -- settings -----------------------------------------------------------------------------


def test_serializer_from_settings() -> None:
    default = serializer_from_settings(Settings())
    assert isinstance(default.codec, MsgpackCodec)
    assert default.max_bytes == Settings().max_value_bytes
    assert default.compress_min_bytes == Settings().compress_min_bytes
    assert isinstance(serializer_from_settings(Settings(codec="json")).codec, JsonCodec)
    signed = serializer_from_settings(Settings(codec="pickle", signing_keys=(KEY_NEW, KEY_OLD)))
    assert isinstance(signed.codec, SignedPickleCodec)
    assert signed.loads(Serializer(SignedPickleCodec([KEY_OLD])).dumps({1})) == {1}
    with pytest.raises(ValueError, match="unknown codec"):
        codec_by_name("yaml")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary(),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
        max_leaves=20,
    )
)
def test_msgpack_round_trips_generated_values(value: Any) -> None:
    serializer = Serializer(MsgpackCodec(), compress_min_bytes=64)
    assert serializer.loads(serializer.dumps(value)) == value
