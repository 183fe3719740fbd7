"""How cached values become bytes in the Redis tier and the bytes level, and back.

A :class:`Serializer` wraps one :class:`Codec` in a small frame::

    MAGIC (2 bytes, b"\\xc1t") | format version (1) | codec id (1) | flags (1) | payload

``0xc1`` is the one byte the msgpack spec never uses, and neither pickle (``0x80``) nor
JSON text starts with it, so a raw payload of any codec is never mistaken for a frame.
Flag bit 0 means the payload is zlib-compressed: a 4-byte big-endian decoded length, then
a zlib stream. Values whose encoding is shorter than ``compress_min_bytes`` are never
compressed, and a compressed form is kept only when it is smaller.

Codecs:

* :class:`MsgpackCodec` (the default, id 1). msgpack is fast (C extension, faster than
  stdlib ``json`` both ways), compact, binary-safe (``bytes`` and ``str`` stay distinct)
  and has no object-construction hooks, so bytes read from Redis can never execute code.
  JSON was the alternative; it is slower, larger, and cannot carry ``bytes``.
* :class:`JsonCodec` (id 2): stdlib ``json`` for values other languages must read.
* :class:`SignedPickleCodec` (id 3): opt-in for arbitrary Python objects, HMAC-SHA256
  signed so only a holder of a signing key can produce bytes that get unpickled.

Decoding fails closed: anything that is not a frame this serializer wrote (foreign bytes,
truncated, wrong magic or version, another codec's id, a bad signature, a broken zlib
stream, malformed payload) raises :class:`~tiercel.core.errors.CodecError` and nothing else. A
pickle frame given to a msgpack or JSON serializer is rejected by its codec id before any
byte of it is unpickled. A value a codec cannot represent raises ``CodecError`` naming
its type.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgpack

from tiercel.core.errors import CodecError, ValueTooLarge

if TYPE_CHECKING:
    from tiercel.core.settings import Settings

__all__ = [
    "FLAG_COMPRESSED",
    "FORMAT_VERSION",
    "MAGIC",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "Serializer",
    "SignedPickleCodec",
    "codec_by_name",
    "describe_frame",
    "serializer_from_settings",
]

MAGIC: Final = b"\xc1t"
FORMAT_VERSION: Final = 1
FLAG_COMPRESSED: Final = 0x01
HEADER_SIZE: Final = 5
#: Decoded size above which a compressed payload is refused (bounds a zip bomb).
DEFAULT_MAX_DECODED_BYTES: Final = 2**30

_KNOWN_FLAGS = FLAG_COMPRESSED
_ZLIB_LEVEL = 1
_COPY_MAX = 65536
_LENGTH_SIZE = 4
_CODEC_NAMES = {1: "msgpack", 2: "json", 3: "pickle"}


def describe_frame(frame: bytes) -> dict[str, Any]:
    """What a frame's header says, without decoding its payload: the codec's name
    (``unknown`` for an id no tiercel codec has, ``foreign`` for bytes that are no
    frame), whether the payload is compressed, and its size in bytes."""
    if len(frame) < HEADER_SIZE or frame[:2] != MAGIC or frame[2] != FORMAT_VERSION:
        return {"codec": "foreign", "compressed": False, "bytes": len(frame)}
    return {
        "codec": _CODEC_NAMES.get(frame[3], "unknown"),
        "compressed": bool(frame[4] & FLAG_COMPRESSED),
        "bytes": len(frame),
    }


class Codec(Protocol):
    """Turns one value into bytes and back. Implementations raise only ``CodecError``."""

    name: str
    codec_id: int

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; ``CodecError`` naming the type if it cannot be represented."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode ``data`` (any bytes-like object); ``CodecError`` if it is malformed."""
        ...


def _unsupported(value: object, codec: str, hint: str = "") -> CodecError:
    kind = type(value)
    return CodecError(
        f"the {codec} codec cannot encode a value of type {kind.__module__}.{kind.__qualname__}"
        f"{hint}: return plain data (None, bool, int, float, str, bytes, list, dict) "
        "or configure the pickle codec"
    )


def _msgpack_default(value: Any) -> Any:
    # strict_types sends every non-exact builtin here; only the exact tuple is let through
    # (as an array), so an IntEnum or a namedtuple never silently decays into plain data.
    if type(value) is tuple:
        return list(value)
    if type(value) is int:
        return _pack_bigint(value)
    if type(value) is datetime:
        raise _unsupported(value, "msgpack", " (a naive datetime; use an aware one)")
    raise _unsupported(value, "msgpack")


#: msgpack extension type of ints outside 64 bits (JSON and Python have them; msgpack not).
EXT_BIGINT = 1
#: Longest big int accepted on decode (bytes): bounds the work hostile input can cause.
MAX_BIGINT_BYTES = 4096


def _pack_bigint(value: int) -> msgpack.ExtType:
    length = (value.bit_length() + 8) // 8
    if length > MAX_BIGINT_BYTES:
        raise _unsupported(value, "msgpack", f" (an int over {MAX_BIGINT_BYTES} bytes)")
    return msgpack.ExtType(EXT_BIGINT, value.to_bytes(length, "big", signed=True))


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code == EXT_BIGINT and 0 < len(data) <= MAX_BIGINT_BYTES:
        return int.from_bytes(data, "big", signed=True)
    raise CodecError(f"msgpack extension type {code} is not one tiercel writes")


class MsgpackCodec:
    """msgpack with ``use_bin_type=True``, strict types and ``raw=False``.

    Round trips None, bool, int (any size: beyond 64 bits as extension type 1),
    float, str, bytes, list, dict and aware ``datetime`` (returned in UTC).
    Tuples come back as lists. Dict keys may be any scalar
    (``strict_map_key=False``), so ``{1: "a"}`` round trips. Subclasses of
    builtins (``IntEnum``, namedtuples, ``OrderedDict``) raise ``CodecError``
    rather than decaying. Every length is bounded by the input size on unpack,
    and extension types other than timestamps and big ints are refused.
    """

    name = "msgpack"
    codec_id = 1

    def dumps(self, value: Any) -> bytes:
        try:
            return msgpack.packb(  # type: ignore[no-any-return]
                value,
                use_bin_type=True,
                strict_types=True,
                datetime=True,
                default=_msgpack_default,
            )
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"the msgpack codec cannot encode this value: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        # Only CodecError leaves here: msgpack raises ValueError, ExtraData, FormatError,
        # StackError, UnicodeDecodeError and TypeError on hostile input.
        try:
            return msgpack.unpackb(
                data, raw=False, strict_map_key=False, timestamp=3, ext_hook=_msgpack_ext
            )
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"malformed msgpack payload: {type(exc).__name__}") from exc


def _json_default(value: Any) -> Any:
    raise _unsupported(value, "json")


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)
_JSON_DECODER = json.JSONDecoder()


class JsonCodec:
    """stdlib ``json``, compact, UTF-8.

    Tuples come back as lists and non-str dict keys as str (JSON's own rules); ``bytes``
    and other non-JSON types raise ``CodecError``. NaN and infinities use Python's
    ``NaN``/``Infinity`` extension, which other JSON readers may refuse.
    """

    name = "json"
    codec_id = 2

    def dumps(self, value: Any) -> bytes:
        try:
            return _JSON_ENCODER.encode(value).encode("utf-8", "surrogatepass")
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"the json codec cannot encode this value: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            return _JSON_DECODER.decode(bytes(data).decode("utf-8", "surrogatepass"))
        except Exception as exc:
            raise CodecError(f"malformed json payload: {type(exc).__name__}") from exc


_KEY_ID_SIZE = 4
_MAC_SIZE = 32


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KEY_ID_SIZE]


class SignedPickleCodec:
    """pickle, opt-in, with every payload HMAC-SHA256 signed.

    Payload: key id (4 bytes: the start of ``sha256(key)``) | HMAC (32) | pickle bytes.
    ``keys`` are newest first: the newest signs, any of them verifies, so rotation is
    "prepend the new key, drop the old one after the longest TTL". The key id picks the
    verifying key directly; the MAC is compared in constant time before any unpickling.
    """

    name = "pickle"
    codec_id = 3

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        encoded = [key.encode("utf-8") if isinstance(key, str) else bytes(key) for key in keys]
        if not encoded or not all(encoded):
            raise ValueError("SignedPickleCodec needs at least one non-empty signing key")
        self._keys: dict[bytes, bytes] = {}
        for key in encoded:
            kid = _key_id(key)
            if kid in self._keys and self._keys[kid] != key:
                raise ValueError("two signing keys share a key id; replace one of them")
            self._keys.setdefault(kid, key)
        self._signing_key = encoded[0]
        self._signing_id = _key_id(encoded[0])

    def dumps(self, value: Any) -> bytes:
        try:
            body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise _unsupported(value, "pickle", f" ({exc})") from exc
        mac = hmac.digest(self._signing_key, body, "sha256")
        return self._signing_id + mac + body

    def loads(self, data: bytes) -> Any:
        view = memoryview(data)
        if len(view) < _KEY_ID_SIZE + _MAC_SIZE:
            raise CodecError("pickle payload is shorter than its signature")
        key = self._keys.get(bytes(view[:_KEY_ID_SIZE]))
        if key is None:
            raise CodecError("pickle payload is signed with a key that is not configured")
        body = view[_KEY_ID_SIZE + _MAC_SIZE :]
        mac = hmac.digest(key, body, "sha256")
        if not hmac.compare_digest(mac, view[_KEY_ID_SIZE : _KEY_ID_SIZE + _MAC_SIZE]):
            raise CodecError("pickle payload signature does not verify; refusing to unpickle")
        try:
            return pickle.loads(body)  # noqa: S301 - signed by one of our keys, verified above
        except Exception as exc:
            raise CodecError(f"signed pickle payload failed to load: {exc!r}") from exc


class Serializer:
    """Frames values of one codec, with optional compression and a size limit."""

    def __init__(
        self,
        codec: Codec,
        *,
        compress_min_bytes: int = 16384,
        max_bytes: int | None = None,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> None:
        if not 0 <= codec.codec_id <= 255:
            raise ValueError(f"codec id {codec.codec_id} does not fit in one byte")
        if compress_min_bytes < 0:
            raise ValueError("compress_min_bytes must be 0 or more")
        self.codec = codec
        self.compress_min_bytes = compress_min_bytes
        self.max_bytes = max_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self._head = MAGIC + bytes((FORMAT_VERSION, codec.codec_id))
        self._plain = self._head + b"\x00"
        self._compressed = self._head + bytes((FLAG_COMPRESSED,))
        self._codec_loads = codec.loads

    def __repr__(self) -> str:
        return (
            f"Serializer({self.codec.name}, compress_min_bytes={self.compress_min_bytes},"
            f" max_bytes={self.max_bytes})"
        )

    def dumps(self, value: Any) -> bytes:
        """Frame ``value``; ``CodecError`` if unrepresentable, ``ValueTooLarge`` if too big."""
        payload = self.codec.dumps(value)
        size = len(payload)
        if size >= self.compress_min_bytes and size <= 0xFFFFFFFF:
            packed = zlib.compress(payload, _ZLIB_LEVEL)
            if len(packed) + _LENGTH_SIZE < size:
                frame = b"".join((self._compressed, size.to_bytes(_LENGTH_SIZE, "big"), packed))
                self._check_size(frame, size)
                return frame
        frame = self._plain + payload
        self._check_size(frame, size)
        return frame

    def _check_size(self, frame: bytes, encoded: int) -> None:
        if self.max_bytes is not None and len(frame) > self.max_bytes:
            raise ValueTooLarge(
                f"encoded value is {len(frame)} bytes ({encoded} before compression), over the "
                f"limit of {self.max_bytes}: raise TIERCEL_MAX_VALUE_BYTES or cache less"
            )

    def loads(self, frame: bytes | memoryview) -> Any:
        """Decode a frame; ``CodecError`` on anything that is not a frame of this codec."""
        try:
            head = frame[:HEADER_SIZE]
            if head == self._plain:
                # Copying a small payload is cheaper than msgpack's buffer-protocol path;
                # a large one is decoded in place.
                if len(frame) <= _COPY_MAX:
                    return self._codec_loads(frame[HEADER_SIZE:])  # type: ignore[arg-type]
                return self._codec_loads(memoryview(frame)[HEADER_SIZE:])  # type: ignore[arg-type]
            if head == self._compressed:
                return self._codec_loads(self._decompress(memoryview(frame)[5:]))
        except CodecError:
            raise
        except Exception as exc:  # a codec that broke its contract; keep ours
            raise CodecError(f"{self.codec.name} payload failed to decode: {exc!r}") from exc
        raise self._reject(frame)

    def _decompress(self, payload: memoryview) -> bytes:
        if len(payload) < _LENGTH_SIZE:
            raise CodecError("compressed frame is truncated")
        size = int.from_bytes(payload[:_LENGTH_SIZE], "big")
        if size > self.max_decoded_bytes:
            raise CodecError(f"compressed frame claims {size} bytes, over the decode limit")
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(payload[_LENGTH_SIZE:], size)
        except zlib.error as exc:
            raise CodecError(f"compressed frame is corrupt: {exc}") from exc
        if (
            len(data) != size
            or not inflater.eof
            or inflater.unconsumed_tail
            or inflater.unused_data
        ):
            raise CodecError("compressed frame does not match its declared length")
        return data

    def _reject(self, frame: bytes | memoryview) -> CodecError:
        try:
            head = bytes(frame[:HEADER_SIZE])
        except Exception:
            return CodecError(f"expected bytes, got {type(frame).__name__}")
        if len(head) < HEADER_SIZE:
            return CodecError(f"not a tiercel frame: only {len(head)} bytes")
        if head[:2] != MAGIC:
            return CodecError("not a tiercel frame (wrong magic): foreign or corrupt bytes")
        if head[2] != FORMAT_VERSION:
            return CodecError(
                f"frame format version {head[2]} is not supported "
                f"(this build reads {FORMAT_VERSION})"
            )
        if head[3] != self.codec.codec_id:
            other = _CODEC_NAMES.get(head[3], f"unknown codec id {head[3]}")
            return CodecError(
                f"frame was written by the {other} codec; this serializer "
                f"uses {self.codec.name} and will not decode it"
            )
        return CodecError(f"frame has unknown flags 0x{head[4]:02x}")


def codec_by_name(name: str, signing_keys: Sequence[str | bytes] = ()) -> Codec:
    """The codec called ``name`` ("msgpack", "json" or "pickle"; pickle needs keys)."""
    if name == "msgpack":
        return MsgpackCodec()
    if name == "json":
        return JsonCodec()
    if name == "pickle":
        return SignedPickleCodec(signing_keys)
    raise ValueError(f"unknown codec {name!r}: expected msgpack, json or pickle")


def serializer_from_settings(settings: Settings) -> Serializer:
    """The serializer ``settings`` describe (codec, signing keys, compression, size limit)."""
    return Serializer(
        codec_by_name(settings.codec, settings.signing_keys),
        compress_min_bytes=settings.compress_min_bytes,
        max_bytes=settings.max_value_bytes,
    )
