"""What a function puts in its keys by default: its name and the version of its code.

:func:`function_name` is a key's default ``name`` part and :func:`code_version`
its default ``version``: a digest of the function's own code in the canonical
encoding (:mod:`tiercel.core.encoding.canonical`). See its docstring for what it
covers and what it does not.
"""

from __future__ import annotations

import hashlib
import struct
import types
from collections.abc import Callable
from typing import Any

from tiercel.core.encoding.canonical import MAX_DEPTH, encode_value, qualified_name
from tiercel.core.errors import KeyEncodingError

__all__ = ["code_version", "function_name"]

_pack_double = struct.Struct(">d").pack


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of ``fn`` (``__main__`` when defined in a script)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"{fn!r} has no __module__/__qualname__; pass name= explicitly")
    return f"{module}.{qualname}"


def _encode_code(code: types.CodeType, out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise KeyEncodingError("code objects are nested too deeply")
    out += b"C"
    out += b"%d:%d:%d:%d;" % (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
    )
    encode_value(code.co_code, out)
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        encode_value(names, out)
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
        encode_value(const, out, depth)


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
        encode_value(value, part)
    except (KeyEncodingError, RecursionError):
        part = bytearray(b"y")
        encode_value(qualified_name(type(value)), part)
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
        encode_value(name, out)
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
    except KeyEncodingError as exc:  # pragma: no cover - only absurdly nested code objects
        raise KeyEncodingError(
            f"the code of {function_name(fn)} cannot be versioned: {exc}; pass version= explicitly"
        ) from None
    return hashlib.blake2b(bytes(out), digest_size=8).hexdigest()
