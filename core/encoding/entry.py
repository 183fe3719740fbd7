"""One cached value as it is stored in Redis and in the bytes level: metadata plus payload.

Wire format (little-endian), version 1::

    offset size  field
    0      1     record version (1)
    1      1     flags (bit 0: expires_at is set)
    2      8     stored_at        f64, unix seconds
    10     8     expires_at       f64, unix seconds (0.0 when the flag is clear)
    18     8     compute_seconds  f64, how long the value took to compute (XFetch delta)
    26     2     tags block length u16, in bytes
    28     n     tags block: UTF-8 tags joined by NUL
    28+n   ...   payload: the serializer's frame, unchanged

The payload is never re-encoded here; the serializer owns its own framing,
signature and compression. Unpacking is one ``struct.unpack_from`` and one
slice, and everything malformed raises :class:`~tiercel.core.errors.CodecError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import NamedTuple

from tiercel.core.errors import CodecError

RECORD_VERSION = 1
_HAS_EXPIRY = 0x01
_KNOWN_FLAGS = _HAS_EXPIRY
_HEADER = struct.Struct("<BBdddH")
HEADER_SIZE = _HEADER.size
_TAG_SEPARATOR = "\x00"
_MAX_TAGS_BYTES = 0xFFFF


class Entry(NamedTuple):
    """An encoded payload with the metadata later reads need.

    ``stored_at`` and ``expires_at`` are wall-clock unix seconds (``expires_at``
    is None for no expiry); ``compute_seconds`` feeds probabilistic early
    refresh; ``tags`` name the tag indexes the value was added to.
    """

    payload: bytes
    stored_at: float
    expires_at: float | None = None
    compute_seconds: float = 0.0
    tags: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        payload: bytes,
        *,
        now: float,
        ttl: float | None,
        compute_seconds: float = 0.0,
        tags: Sequence[str] = (),
    ) -> Entry:
        """An entry stored at ``now`` that expires ``ttl`` seconds later (None: never)."""
        expires_at = None if ttl is None else now + ttl
        return cls(payload, now, expires_at, compute_seconds, tuple(tags))

    def remaining_ttl(self, now: float) -> float | None:
        """Seconds until expiry at wall-clock ``now`` (0.0 once expired; None: never expires)."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - now)

    def pack(self) -> bytes:
        """The wire record (see the module docstring). Raises ValueError for unpackable tags."""
        if self.tags:
            for tag in self.tags:
                if not tag or _TAG_SEPARATOR in tag:
                    raise ValueError(f"tag {tag!r}: expected a non-empty string without NUL")
            tags_block = _TAG_SEPARATOR.join(self.tags).encode("utf-8")
            if len(tags_block) > _MAX_TAGS_BYTES:
                raise ValueError(
                    f"{len(self.tags)} tags take {len(tags_block)} bytes: at most "
                    f"{_MAX_TAGS_BYTES} bytes of tags fit in one entry; use fewer or shorter tags"
                )
        else:
            tags_block = b""
        if self.expires_at is None:
            flags, expires_at = 0, 0.0
        else:
            flags, expires_at = _HAS_EXPIRY, self.expires_at
        header = _HEADER.pack(
            RECORD_VERSION,
            flags,
            self.stored_at,
            expires_at,
            self.compute_seconds,
            len(tags_block),
        )
        return b"".join((header, tags_block, self.payload))

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Entry:
        """Parse a wire record. Raises :class:`CodecError` for anything malformed or foreign."""
        try:
            version, flags, stored_at, expires_at, compute_seconds, tags_len = _HEADER.unpack_from(
                data
            )
        except (struct.error, TypeError):
            raise CodecError(
                f"not a cache entry: {_describe(data)} is shorter than the "
                f"{HEADER_SIZE}-byte header"
            ) from None
        if version != RECORD_VERSION:
            raise CodecError(
                f"not a cache entry: record version {version} (this build reads "
                f"{RECORD_VERSION}); it was written by another program or a newer tiercel"
            )
        if flags & ~_KNOWN_FLAGS:
            raise CodecError(f"not a cache entry: unknown flags 0x{flags:02x}")
        if not (
            math.isfinite(stored_at)
            and math.isfinite(expires_at)
            and math.isfinite(compute_seconds)
            and compute_seconds >= 0.0
        ):
            raise CodecError("not a cache entry: non-finite or negative time fields")
        start = HEADER_SIZE + tags_len
        if start > len(data):
            raise CodecError(
                f"truncated cache entry: the header promises {tags_len} bytes of tags "
                f"but {_describe(data)} is too short"
            )
        if tags_len:
            try:
                tags = tuple(bytes(data[HEADER_SIZE:start]).decode("utf-8").split(_TAG_SEPARATOR))
            except UnicodeDecodeError:
                raise CodecError("corrupt cache entry: the tags are not UTF-8") from None
            if "" in tags:
                raise CodecError("corrupt cache entry: empty tag")
        else:
            tags = ()
        # tuple.__new__ skips the generated __new__: this runs on every Redis hit.
        return tuple.__new__(
            cls,
            (
                bytes(data[start:]),
                stored_at,
                expires_at if flags & _HAS_EXPIRY else None,
                compute_seconds,
                tags,
            ),
        )


def _describe(data: object) -> str:
    if isinstance(data, bytes | bytearray | memoryview):
        return f"{len(data)} bytes"
    return f"a {type(data).__name__}"
