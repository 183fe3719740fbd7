"""The public face: one error tree, every error exported, one missing-value sentinel."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tiercel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.missing import MISSING
from tiercel.core.tier import redis_tier

ROOT = Path(tiercel.__file__).resolve().parent


def _package_modules() -> list[str]:
    names = []
    for package in ("tiercel.core", "tiercel.tasks", "tiercel.workers"):
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    return names


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).read_text()


def test_every_error_class_is_in_the_tree_and_exported() -> None:
    defined = []
    # Example tasks are user code: their errors are the example's own.
    for module in _package_modules():
        if module.startswith("tiercel.tasks.examples"):
            continue
        for node in ast.walk(ast.parse(_source(module))):
            # A private exception is control flow inside one module; it never escapes.
            if (
                isinstance(node, ast.ClassDef)
                and not node.name.startswith("_")
                and any(
                    isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
                    for base in node.bases
                )
            ):
                defined.append((module, node.name))
    assert defined, "the scan found no error class at all"
    for module, name in defined:
        assert module == "tiercel.core.errors", f"{name} is defined in {module}"
        cls = getattr(tiercel, name)
        assert issubclass(cls, tiercel.TiercelError)
        assert name in tiercel.__all__


def test_core_exports_what_the_face_exports_of_it() -> None:
    import tiercel.core

    assert set(tiercel.core.__all__) <= set(tiercel.__all__)
    for name in tiercel.core.__all__:
        assert getattr(tiercel, name) is getattr(tiercel.core, name)


def test_one_missing_value_sentinel() -> None:
    assert redis_tier.MISSING is MISSING
    assert not MISSING and repr(MISSING) == "MISSING"
    for module in _package_modules():
        tree = ast.parse(_source(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "object":
                pytest.fail(f"{module} makes a sentinel of its own with object()")


def test_a_level_pop_without_default_raises_and_with_one_returns_it() -> None:
    level = MemoryLevel("memory", max_entries=4)
    with pytest.raises(KeyError):
        level.pop("absent")
    assert level.pop("absent", None) is None
    level["k"] = 0
    assert level.pop("k") == 0
