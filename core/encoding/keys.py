"""Cache keys from (namespace, function, version, arguments).

A key is ``{namespace}:v:{name}:{version}:{{digest}}``. The digest is a BLAKE2b-128 of a
canonical, type-tagged, length-prefixed encoding of the namespace, name, version,
generation and the bound arguments, so it is the same in every process, machine and
Python run (``hash()`` is never used). The ``{...}`` part is a Redis Cluster hash tag.

Encoding rules (see :func:`encode_arguments`):

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

The default version is :func:`code_version`: a digest of the function's own code. See its
docstring for what it covers and what it does not.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import inspect
import struct
import types
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from tiercel.core.encoding.prefixes import VALUE
from tiercel.core.errors import KeyEncodingError
from tiercel.core.missing import MISSING

__all__ = [
    "MAX_DEPTH",
    "MAX_ENCODED_BYTES",
    "KeyBuilder",
    "code_version",
    "digest",
    "encode_arguments",
    "function_name",
    "hash_tag",
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


def _qualified(kind: type) -> str:
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
                f"it has a dict key of type {_qualified(type(key))} "
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
        name = _qualified(kind).encode("utf-8", "surrogatepass")
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
        name = _qualified(kind).encode("utf-8", "surrogatepass")
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
            f"has type {_qualified(type(exc.value))}, which cannot be part of a cache "
            f"key: pass {_SUPPORTED}"
        )
    advice = f", or exclude it with ignore=({name!r},)" if ignorable else ""
    return KeyEncodingError(f"argument '{path}'{owner} {problem}{advice}")


def _encode_into(bound: Mapping[str, Any], out: bytearray, where: str) -> None:
    out += b"d%d:" % len(bound)
    for name in sorted(bound):
        out += _name_header(name)
        try:
            _encode(bound[name], out, 1)
        except _Unencodable as exc:
            raise _argument_error(name, exc, where, ignorable=True) from None
        except RecursionError:
            raise _too_deep(name, where) from None


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
    out = bytearray()
    _encode_into(bound, out, where)
    return bytes(out)


def digest(data: bytes) -> str:
    """BLAKE2b-128 of ``data`` as 32 hex characters."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of ``fn`` (``__main__`` when defined in a script)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"{fn!r} has no __module__/__qualname__; pass name= explicitly")
    return f"{module}.{qualname}"


def _encode_code(code: types.CodeType, out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Unencodable(code, "code objects are nested too deeply")
    out += b"C"
    out += b"%d:%d:%d:%d;" % (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
    )
    _encode(code.co_code, out, 0)
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        _encode(names, out, 0)
    out += b"l%d:" % len(code.co_consts)
    for const in code.co_consts:
        _encode_constant(const, out, depth + 1)


def _encode_constant(const: Any, out: bytearray, depth: int) -> None:
    if isinstance(const, types.CodeType):
        _encode_code(const, out, depth)
    elif type(const) is tuple:
        out += b"l%d:" % len(const)
        for item in const:
            _encode_constant(item, out, depth + 1)
    elif type(const) is complex:
        out += b"j" + _pack_double(const.real) + _pack_double(const.imag)
    elif const is Ellipsis:
        out += b"E"
    else:
        _encode(const, out, depth)


def _encode_captured(value: Any, out: bytearray, seen: set[int]) -> None:
    """A default or closure value: functions by their code, others canonically or by type."""
    if isinstance(value, types.FunctionType):
        if id(value) in seen:
            out += b"R"
            return
        _encode_function(value, out, seen)
        return
    part = bytearray()
    try:
        _encode(value, part, 0)
    except (_Unencodable, RecursionError):
        part = bytearray(b"y")
        _encode(_qualified(type(value)), part, 0)
    out += part


def _encode_function(fn: types.FunctionType, out: bytearray, seen: set[int]) -> None:
    seen.add(id(fn))
    out += b"F"
    _encode_code(fn.__code__, out, 0)
    defaults = fn.__defaults__ or ()
    out += b"l%d:" % len(defaults)
    for value in defaults:
        _encode_captured(value, out, seen)
    kwdefaults = fn.__kwdefaults__ or {}
    out += b"d%d:" % len(kwdefaults)
    for name in sorted(kwdefaults):
        _encode(name, out, 0)
        _encode_captured(kwdefaults[name], out, seen)
    cells = fn.__closure__ or ()
    out += b"l%d:" % len(cells)
    for cell in cells:
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell: the variable is not assigned yet
            out += b"-"
            continue
        _encode_captured(contents, out, seen)


def code_version(fn: Callable[..., Any]) -> str:
    """16 hex characters that change when ``fn``'s code changes.

    Covers the bytecode, constants (recursively into nested functions, lambdas and
    comprehensions), the names it uses, its argument layout, its defaults and the values
    its closure captures; captured functions (a decorator's wrapped function, say) are
    covered by their own code in turn. Defaults and closure values that cannot be encoded
    canonically contribute only their type's qualified name, so changing such an object's
    state does not change the version. Not covered: the line numbers, the file, and the
    code of other functions and globals ``fn`` calls by name; bump ``version=`` when a
    helper changes. A different Python minor version compiles different bytecode and so
    gives different versions. A changed docstring is a changed constant, so a new version.
    """
    target = getattr(fn, "__func__", fn)  # a bound method's function
    if not isinstance(target, types.FunctionType):
        raise TypeError(
            f"code_version needs a Python function, not {type(fn).__name__}; "
            "pass version= explicitly"
        )
    out = bytearray(b"tiercel-code-1\x00")
    try:
        _encode_function(target, out, set())
    except _Unencodable as exc:  # pragma: no cover - only absurdly nested code objects
        raise KeyEncodingError(
            f"the code of {function_name(fn)} cannot be versioned: "
            f"{exc.reason}; pass version= explicitly"
        ) from None
    return hashlib.blake2b(bytes(out), digest_size=8).hexdigest()


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag of ``key``: the text between the first ``{`` and the next
    ``}``. As in Redis, a key without one (or with ``{}``) is its own tag."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def _check_part(what: str, text: str) -> str:
    if not text or any(ch in text for ch in "{}\r\n "):
        raise ValueError(f"{what} {text!r} must be non-empty, without braces or whitespace")
    return text


class KeyBuilder:
    """Derives the cache keys of one function.

    ``version`` defaults to :func:`code_version`; ``ignore`` names arguments left out of
    the key (a ``debug`` flag, a logger). Names not in the signature are allowed only when
    the function takes ``**kwargs``, and are then dropped from those.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        namespace: str,
        name: str | None = None,
        version: str | None = None,
        ignore: Iterable[str] = (),
    ) -> None:
        self.fn = fn
        self.namespace = _check_part("namespace", namespace)
        self.name = _check_part("name", name if name is not None else function_name(fn))
        self.version = _check_part("version", version if version is not None else code_version(fn))
        self.signature = inspect.signature(fn)
        params = self.signature.parameters
        self._var_keyword = next(
            (p.name for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )
        self.ignore = frozenset(ignore)
        self._ignore_params = frozenset(n for n in self.ignore if n in params)
        self._ignore_extra = self.ignore - self._ignore_params
        if self._ignore_extra and self._var_keyword is None:
            raise ValueError(
                f"ignore={sorted(self._ignore_extra)!r}: not parameters of {self.name}"
            )
        # A function of plain parameters binds without inspect (several times faster):
        # values land in parameter order and are encoded in the precomputed sorted layout,
        # which is byte-for-byte what encode_arguments() gives for the same bound dict.
        self._simple = all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params.values()
        )
        self._names = tuple(params)
        self._index = {name: i for i, name in enumerate(params)}
        self._defaults = tuple(
            MISSING if p.default is inspect.Parameter.empty else p.default for p in params.values()
        )
        kept = sorted(n for n in params if n not in self._ignore_params)
        self._layout = tuple((self._index[n], _name_header(n)) for n in kept)
        self._layout_head = b"d%d:" % len(kept)
        prefix = bytearray(b"tiercel-key-1\x00")
        for part in (self.namespace, self.name, self.version):
            _encode(part, prefix, 0)
        self._prefix = bytes(prefix)
        self._key_prefix = f"{self.namespace}:{VALUE}:{self.name}:{self.version}:"

    def __repr__(self) -> str:
        return f"KeyBuilder({self.name!r}, version={self.version!r})"

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments that make up the key: bound, defaults applied, ignored removed.

        Raises ``TypeError`` (with ``inspect``'s message) if they do not fit the signature.
        """
        values = self._bind_simple(args, kwargs)
        if values is not None:
            return {
                name: values[i]
                for i, name in enumerate(self._index)
                if name not in self._ignore_params
            }
        try:
            signature_bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        signature_bound.apply_defaults()
        arguments = signature_bound.arguments
        for name in self._ignore_params:
            del arguments[name]
        if self._ignore_extra and self._var_keyword is not None:
            extra = arguments[self._var_keyword]
            arguments[self._var_keyword] = {
                k: v for k, v in extra.items() if k not in self._ignore_extra
            }
        return arguments

    def _bind_simple(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Sequence[Any] | None:
        """Values in parameter order, or None when inspect must bind (or word the error)."""
        count = len(self._defaults)
        given = len(args)
        if not self._simple or given > count:
            return None
        if given == count and not kwargs:
            return args
        values = [*args, *self._defaults[given:]]
        if kwargs:
            filled = set()
            for name, value in kwargs.items():
                index = self._index.get(name)
                if index is None or index < given or index in filled:
                    return None
                values[index] = value
                filled.add(index)
        for index in range(given, count):
            if values[index] is MISSING:
                return None
        return values

    def key(self, args: Sequence[Any], kwargs: Mapping[str, Any], generation: int = 0) -> str:
        """The cache key of calling the function with ``args`` and ``kwargs``.

        ``generation`` (bumped by version or tag invalidation) is part of the digest.
        Raises :class:`~tiercel.core.errors.KeyEncodingError` for an argument that cannot be
        encoded and ``TypeError`` for arguments that do not fit the signature.
        """
        out = bytearray(self._prefix)
        out += b"i%x;" % generation
        values = self._bind_simple(args, kwargs)
        if values is None:
            _encode_into(self.bind(args, kwargs), out, self.name)
        else:
            out += self._layout_head
            for index, header in self._layout:
                out += header
                try:
                    _encode(values[index], out, 1)
                except _Unencodable as exc:
                    raise _argument_error(self._names[index], exc, self.name, True) from None
                except RecursionError:
                    raise _too_deep(self._names[index], self.name) from None
        return f"{self._key_prefix}{{{hashlib.blake2b(out, digest_size=16).hexdigest()}}}"
