"""Cache keys from (namespace, function, version, arguments).

A key is ``{namespace}:v:{name}:{version}:{{digest}}``. The digest is a BLAKE2b-128 of the
canonical encoding (:mod:`tiercel.core.encoding.canonical`) of the namespace, name,
version, generation and the bound arguments, so it is the same in every process, machine
and Python run. The ``{...}`` part is a Redis Cluster hash tag (:func:`hash_tag`).

The default name is :func:`~tiercel.core.encoding.functions.function_name` and the default
version :func:`~tiercel.core.encoding.functions.code_version`, a digest of the function's
own code (see its docstring for what it covers and what it does not).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tiercel.core.encoding.canonical import ArgumentLayout, encode_arguments, encode_value
from tiercel.core.encoding.functions import code_version, function_name
from tiercel.core.encoding.prefixes import VALUE
from tiercel.core.missing import MISSING

__all__ = ["KeyBuilder", "digest", "hash_tag"]


def digest(data: bytes) -> str:
    """BLAKE2b-128 of ``data`` as 32 hex characters."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


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
        self._index = {name: i for i, name in enumerate(params)}
        self._defaults = tuple(
            MISSING if p.default is inspect.Parameter.empty else p.default for p in params.values()
        )
        self._layout = ArgumentLayout(
            tuple(params), [n for n in params if n not in self._ignore_params]
        )
        prefix = bytearray(b"tiercel-key-1\x00")
        for part in (self.namespace, self.name, self.version):
            encode_value(part, prefix)
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
            out += encode_arguments(self.bind(args, kwargs), where=self.name)
        else:
            self._layout.encode(values, out, self.name)
        return f"{self._key_prefix}{{{hashlib.blake2b(out, digest_size=16).hexdigest()}}}"
