"""Every Lua script lives in core/tier/lua/ and is loaded by tiercel.core.tier.scripts."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
import redis

import tiercel
from tiercel.core.tier import scripts

ROOT = Path(tiercel.__file__).resolve().parent
LUA = ROOT / "core" / "tier" / "lua"


def _lua_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in LUA.glob("*.lua")}


def test_every_lua_file_is_a_loaded_script_or_a_used_include() -> None:
    files = _lua_files()
    scripts_in_folder = {name.removesuffix(".lua") for name in files if not name.startswith("_")}
    assert scripts_in_folder == scripts.names()
    for name in scripts.names():
        assert scripts.source(name).strip(), name
    includes = {name for name in files if name.startswith("_")}
    for include in includes:
        assert any(
            f"-- include: {include}" in text for name, text in files.items() if name != include
        ), f"lua/{include} is included by no script"


def test_a_header_documents_keys_and_args_and_is_not_sent() -> None:
    for name, text in _lua_files().items():
        first = text.splitlines()[0]
        assert first.startswith("-- "), f"lua/{name} has no header"
        if name.startswith("_"):
            continue
        assert "-- KEYS:" in text and "-- ARGV:" in text, f"lua/{name} does not say its KEYS/ARGV"
        code = scripts.source(name.removesuffix(".lua"))
        assert "-- KEYS:" not in code and "include:" not in code


def test_includes_come_first() -> None:
    prelude = scripts.source("release")
    assert prelude.index("local function holds") < prelude.index("if holds(")
    assert "local function" not in scripts.source("delete_if_equal")


def test_a_registered_script_is_called_by_its_sha() -> None:
    client = redis.Redis()  # never connects: register_script only hashes the code
    script = scripts.register(client, "acquire")
    assert script.sha == hashlib.sha1(scripts.source("acquire").encode()).hexdigest()


def _python_files() -> list[Path]:
    return [
        path for folder in ("core", "tasks", "workers") for path in (ROOT / folder).rglob("*.py")
    ]


def test_no_lua_is_written_in_python() -> None:
    # Lua calls, and scripts registered or sent from a string literal, belong in lua/.
    for path in _python_files():
        text = path.read_text()
        assert "redis.call(" not in text, f"{path} holds Lua: move it to core/tier/lua/"
        if path.name != "scripts.py":
            assert "register_script(" not in text, f"{path} registers its own script"
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if name == "eval":
                sent = args[0] if args else None
            elif name == "execute_command" and args and _literal(args[0]) in ("EVAL", "EVALSHA"):
                sent = args[1] if len(args) > 1 else None
            else:
                continue
            assert not isinstance(sent, ast.Constant), (
                f"{path}:{node.lineno} sends a script written in Python"
            )


def _literal(node: ast.expr) -> object:
    return node.value if isinstance(node, ast.Constant) else None


@pytest.mark.integration
def test_every_script_compiles_on_redis(redis_client: redis.Redis) -> None:
    for name in sorted(scripts.names()):
        code = scripts.source(name)
        sha = redis_client.script_load(code)
        assert sha == hashlib.sha1(code.encode()).hexdigest(), name
