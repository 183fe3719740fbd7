"""Every Lua script tiercel runs on Redis, loaded in one place from the ``lua/`` folder.

Each script is one file, ``lua/<name>.lua``, read once (through
:mod:`importlib.resources`, so it works from a wheel as from a checkout).
A file opens with a header of ``--`` comment lines that says what the script
does and what its ``KEYS``, ``ARGV`` and answer are; the header is not sent to
Redis. A header line ``-- include: <file>`` puts that file's code before the
script's own: ``_prelude.lua`` holds the helpers of the lease scripts. Files
whose name starts with ``_`` are such includes, never scripts of their own.

:func:`register` binds a script to a client (``EVALSHA``, loading it again
after a ``NOSCRIPT`` answer), :func:`register_async` to a ``redis.asyncio``
one; :func:`run_many` runs one script for many calls in one pipelined round
trip; :func:`source` is the code itself, for ``EVAL``.

Cluster: every script run on the cache tier touches only keys of one hash
slot. The lease scripts touch the keys of one cache key (value, lease, fence,
epoch, inflight, failure), which share the value key's ``{digest}`` hash tag;
a tag index has its tag as hash tag. ``PUBLISH`` inside a script is allowed on
Cluster (channels are not keys). ``publish_snapshot`` and the periodic lock's
``delete_if_equal`` run on the result backend, a single server.

Fence and epoch values are time-floored counters: a new value is
``max(previous + 1, server time in microseconds)``. Both keys carry a long TTL
and live on an ``allkeys-lru`` server, so they may vanish; a counter that
restarts from the clock is still larger than every token or epoch handed out
before, and a write-back requires the epoch key to be present and equal, so
losing either key can only reject a write-back, never let a stale one
through. (The one exception needs the key lost *and* the server clock stepped
backwards onto exactly a stale holder's value.) Scripts call ``TIME`` before
writing, which needs script effects replication (the default since Redis 5,
the only mode since Redis 7).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final, Literal, TypeAlias, get_args

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

from tiercel.core.tier.connections import CacheClient

__all__ = ["ScriptName", "names", "register", "register_async", "run_many", "source"]

#: The name of every script: its file is ``lua/<name>.lua``.
ScriptName: TypeAlias = Literal[
    "acquire",
    "renew",
    "release",
    "release_abandoned",
    "claim_republish",
    "write_back",
    "fail",
    "invalidate",
    "claim_inflight",
    "delete_if_equal",
    "tag_add",
    "raise_to",
    "publish_snapshot",
]

_FOLDER: Final = "lua"
_INCLUDE: Final = re.compile(r"--\s*include:\s*(\S+)\s*")


def names() -> frozenset[str]:
    """Every script name (the ``lua/`` folder's scripts, includes left out)."""
    return frozenset(get_args(ScriptName))


def source(name: ScriptName) -> str:
    """The Lua code of script ``name``, its includes first, its header left out."""
    return _sources()[name]


def register(client: CacheClient, name: ScriptName) -> Script:
    """Script ``name`` bound to ``client``: called, it runs by ``EVALSHA`` (reloading
    after ``NOSCRIPT``), routed by its first key's slot on a cluster."""
    return client.register_script(source(name))


def register_async(client: aioredis.Redis, name: ScriptName) -> AsyncScript:
    """Script ``name`` bound to an asyncio ``client``: awaited, it runs by ``EVALSHA``
    (reloading after ``NOSCRIPT``), as :func:`register`'s does."""
    return client.register_script(source(name))


def run_many(
    client: CacheClient,
    script: Script,
    calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
) -> list[Any]:
    """``script`` once per ``(keys, args)`` call in one pipelined round trip.

    No MULTI (each call may live on another cluster node). ``EVALSHA`` directly
    rather than a Script in a pipeline, which would add a ``SCRIPT EXISTS``
    round trip; only a ``NOSCRIPT`` answer costs a reload and a second round
    trip for the calls it hit. Raises the first error any call answered.
    """
    if not calls:
        return []

    def run(indexes: Sequence[int]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for i in indexes:
            keys, args = calls[i]
            # execute_command: redis-py's cluster pipeline refuses evalsha() by name
            # but routes a raw EVALSHA by its first key's slot
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))

    results = run(range(len(calls)))
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        client.script_load(script.script)
        for i, result in zip(missing, run(missing), strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def _split(text: str) -> tuple[list[str], str]:
    """(included file names, code) of one file: its leading ``--`` lines are the header."""
    lines = text.splitlines(keepends=True)
    start = 0
    includes = []
    while start < len(lines) and (lines[start].startswith("--") or not lines[start].strip()):
        match = _INCLUDE.fullmatch(lines[start].rstrip("\n"))
        if match:
            includes.append(match.group(1))
        start += 1
    return includes, "".join(lines[start:])


@functools.cache
def _sources() -> dict[str, str]:
    folder = resources.files(__name__.rpartition(".")[0]).joinpath(_FOLDER)
    files = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }
    found: dict[str, str] = {}
    for file, text in files.items():
        if file.startswith("_"):
            continue
        includes, code = _split(text)
        parts = []
        for include in includes:
            if include not in files or not include.startswith("_"):
                raise RuntimeError(f"lua/{file} includes {include!r}: no such lua/_*.lua file")
            nested, included = _split(files[include])
            if nested:
                raise RuntimeError(f"lua/{include} includes another file: one level only")
            parts.append(included)
        found[file.removesuffix(".lua")] = "".join([*parts, code])
    if set(found) != names():
        raise RuntimeError(
            f"the lua/ folder's scripts {sorted(found)} are not the known ones {sorted(names())}"
        )
    return found
