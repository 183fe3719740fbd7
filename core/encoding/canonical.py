"""The canonical encoding of argument values: type-tagged, length-prefixed bytes.

The same arguments give the same bytes in every process, machine and Python run
(``hash()`` is never used), so their digest can name a cache key
(:mod:`tiercel.core.encoding.keys`). The rules (see :func:`encode_arguments`):

* Arguments are bound to the function's signature and defaults applied, so ``f(1, b=2)``,
  ``f(a=1, b=2)`` and ``f(1, 2)`` are one key; keyword order never matters.
* Every value is tagged with its type, so ``1``, ``1.0`` and ``True`` are three keys even
  though they compare equal, and ``b"a"`` differs from ``"a"``. A JSON round trip keeps
  each of them its own type, so a worker that receives the arguments as JSON derives the
  same key.
* For the same reason a tuple encodes exactly like a list, and dicts need ``str`` keys
  (JSON would turn other keys into strings); dicts and sets are order-independent.
* Floats are encoded bit-exactly (``-0.0`` differs from ``0.0``; every NaN is one NaN).
  ``Decimal``, ``datetime``, ``date`` and ``time`` are encoded by their exact text, so
  ``Decimal("1.0")`` and ``Decimal("1.00")`` are two keys, as are one instant in two
  time zones. Celery's JSON (kombu) carries these types, ``UUID`` and ``bytes`` unchanged.
* Also supported: ``UUID``, enums (by class and value), ``set``/``frozenset`` and
  dataclass instances (by class and compared fields). Subclasses of ``str``, ``int``,
  ``float`` and ``bytes`` that are not enums encode as their base type.
* Anything else raises :class:`~tiercel.core.errors.KeyEncodingError` naming the argument path;
  there is no ``repr()`` fallback that could make two different arguments share a key.
  Nesting deeper than :data:`MAX_DEPTH` or an encoding over :data:`MAX_ENCODED_BYTES`
  fails the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from tiercel.core.errors import KeyEncodingError

__all__ = [
    "MAX_DEPTH",
    "MAX_ENCODED_BYTES",
    "ArgumentLayout",
    "encode_arguments",
    "encode_value",
    "qualified_name",
]

#: Deepest nesting of containers an argument may have.
MAX_DEPTH: Final = 64
#: Largest canonical encoding of one call's arguments.
MAX_ENCODED_BYTES: Final = 8 * 2**20

_SUPPORTED = (
    "None, bool, int, float, str, bytes, list, tuple, dict with str keys, set, "
    "frozenset, Decimal, datetime, date, time, UUID, enum or dataclass"
)
_pack_double = struct.Struct(">d").pack
_NAN = b"f" + _pack_double(float("nan"))


class _Unencodable(Exception):
    """Internal: carries the offending value's path up to the argument that holds it."""

    def __init__(self, value: object, reason: str = "") -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason
        self.path: list[str] = []


def qualified_name(kind: type) -> str:
    """``module.qualname`` of a class: the name enums and dataclasses are encoded by."""
    return f"{kind.__module__}.{kind.__qualname__}"


def _encode(value: Any, out: bytearray, depth: int) -> None:
    # Tags: N none, T/F bool, i int (hex), f float (8 bytes), s str, b bytes, l list,
    # d dict, S set, m Decimal, t datetime, D date, H time, u UUID, e enum, c dataclass.
    kind = type(value)
    if kind is str:
        data = value.encode("utf-8", "surrogatepass")
        out += b"s%d:" % len(data)
        out += data
    elif kind is int:
        out += b"i%x;" % value
    elif value is None:
        out += b"N"
    elif kind is bool:
        out += b"T" if value else b"F"
    elif kind is float:
        out += b"f" + _pack_double(value) if value == value else _NAN
    elif kind is list or kind is tuple:
        _encode_sequence(value, out, depth)
    elif kind is dict:
        _encode_dict(value, out, depth)
    elif kind is bytes or kind is bytearray:
        out += b"b%d:" % len(value)
        out += value
    else:
        _encode_other(value, out, depth)
    if len(out) > MAX_ENCODED_BYTES:
        raise _Unencodable(value, f"the arguments encode to more than {MAX_ENCODED_BYTES} bytes")


def _encode_sequence(value: Sequence[Any], out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Unencodable(value, f"it is nested deeper than {MAX_DEPTH} levels")
    out += b"l%d:" % len(value)
    index = 0
    try:
        for index, item in enumerate(value):  # noqa: B007 - index is read in the handler
            _encode(item, out, depth + 1)
    except _Unencodable as exc:
        exc.path.append(f"[{index}]")
        raise


def _encode_dict(value: Mapping[Any, Any], out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Unencodable(value, f"it is nested deeper than {MAX_DEPTH} levels")
    for key in value:
        if type(key) is not str:
            raise _Unencodable(
                value,
                f"it has a dict key of type {qualified_name(type(key))} "
                f"({key!r}); cache-key dicts need str keys",
            )
    out += b"d%d:" % len(value)
    key = ""
    try:
        for key in sorted(value):
            data = key.encode("utf-8", "surrogatepass")
            out += b"%d:" % len(data)
            out += data
            _encode(value[key], out, depth + 1)
    except _Unencodable as exc:
        exc.path.append(f"[{key!r}]")
        raise


def _encode_other(value: Any, out: bytearray, depth: int) -> None:
    kind = type(value)
    if isinstance(value, enum.Enum):
        name = qualified_name(kind).encode("utf-8", "surrogatepass")
        out += b"e%d:" % len(name)
        out += name
        try:
            _encode(value.value, out, depth + 1)
        except _Unencodable as exc:
            exc.path.append(".value")
            raise
    elif kind is set or kind is frozenset:
        if depth >= MAX_DEPTH:
            raise _Unencodable(value, f"it is nested deeper than {MAX_DEPTH} levels")
        parts: list[bytes] = []
        for item in value:
            part = bytearray()
            try:
                _encode(item, part, depth + 1)
            except _Unencodable as exc:
                exc.path.append(f"{{{item!r}}}")
                raise
            parts.append(bytes(part))
        parts.sort()
        out += b"S%d:" % len(parts)
        out += b"".join(parts)
    elif kind is Decimal:
        _encode_text(b"m", str(value), out)
    elif kind is _dt.datetime:
        _encode_text(b"t", value.isoformat(), out)
    elif kind is _dt.date:
        _encode_text(b"D", value.isoformat(), out)
    elif kind is _dt.time:
        _encode_text(b"H", value.isoformat(), out)
    elif kind is uuid.UUID:
        out += b"u" + value.bytes
    elif dataclasses.is_dataclass(value):
        name = qualified_name(kind).encode("utf-8", "surrogatepass")
        out += b"c%d:" % len(name)
        out += name
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.compare}
        _encode_dict(fields, out, depth)
    elif isinstance(value, str):
        _encode(str(value), out, depth)
    elif isinstance(value, int):
        _encode(int(value), out, depth)
    elif isinstance(value, float):
        _encode(float(value), out, depth)
    elif isinstance(value, bytes):
        _encode(bytes(value), out, depth)
    else:
        raise _Unencodable(value)


def _encode_text(tag: bytes, text: str, out: bytearray) -> None:
    data = text.encode("ascii")
    out += tag + b"%d:" % len(data)
    out += data


def _argument_error(name: str, exc: _Unencodable, where: str, ignorable: bool) -> KeyEncodingError:
    path = name + "".join(reversed(exc.path))
    owner = f" of {where}" if where else ""
    if exc.reason:
        problem = f"cannot be part of a cache key: {exc.reason}"
    else:
        problem = (
            f"has type {qualified_name(type(exc.value))}, which cannot be part of a cache "
            f"key: pass {_SUPPORTED}"
        )
    advice = f", or exclude it with ignore=({name!r},)" if ignorable else ""
    return KeyEncodingError(f"argument '{path}'{owner} {problem}{advice}")


def _too_deep(name: str, where: str) -> KeyEncodingError:
    return KeyEncodingError(
        f"argument {name!r} of {where or 'the call'} is nested too deeply to be part of a cache key"
    )


def _name_header(name: str) -> bytes:
    data = name.encode("utf-8", "surrogatepass")
    return b"%d:" % len(data) + data


def encode_arguments(bound: Mapping[str, Any], *, where: str = "") -> bytes:
    """The canonical bytes of bound arguments (name -> value); ``where`` names the function.

    Raises :class:`~tiercel.core.errors.KeyEncodingError` naming the argument path for a value
    that cannot be encoded (see the module docstring for the rules).
    """
    names = tuple(bound)
    out = bytearray()
    ArgumentLayout(names, names).encode([bound[name] for name in names], out, where)
    return bytes(out)


def encode_value(value: Any, out: bytearray, depth: int = 0) -> None:
    """Append the canonical bytes of one value to ``out``, as if nested ``depth`` deep.

    The building block of encodings other than a call's arguments (a function's
    code, for its version). Raises :class:`~tiercel.core.errors.KeyEncodingError`
    whose message is only the reason (empty for a value of a type the encoding
    does not take), for the caller to word; ``RecursionError`` past the
    interpreter's own nesting limit.
    """
    try:
        _encode(value, out, depth)
    except _Unencodable as exc:
        raise KeyEncodingError(exc.reason) from None


class ArgumentLayout:
    """Where each argument of one signature goes in the canonical encoding, worked out once.

    ``names`` are the parameters in signature order, ``kept`` those that are part
    of the key. :meth:`encode` of values in parameter order appends exactly what
    :func:`encode_arguments` gives for the dict of the kept names and their
    values, without building that dict.
    """

    __slots__ = ("_fields", "_head", "_names")

    def __init__(self, names: Sequence[str], kept: Iterable[str]) -> None:
        index = {name: i for i, name in enumerate(names)}
        fields = sorted(kept)
        self._names = tuple(names)
        self._head = b"d%d:" % len(fields)
        self._fields = tuple((index[name], _name_header(name)) for name in fields)

    def encode(self, values: Sequence[Any], out: bytearray, where: str = "") -> None:
        """Append the canonical bytes of ``values`` (in parameter order) to ``out``.

        Raises :class:`~tiercel.core.errors.KeyEncodingError` naming the argument path
        (``where`` names the function) for a value that cannot be encoded.
        """
        out += self._head
        for index, header in self._fields:
            out += header
            try:
                _encode(values[index], out, 1)
            except _Unencodable as exc:
                raise _argument_error(self._names[index], exc, where, ignorable=True) from None
            except RecursionError:
                raise _too_deep(self._names[index], where) from None
