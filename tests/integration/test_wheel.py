"""The built wheel installs one import package, ``tiercel``, beside a user's own modules.

A user's project commonly has a ``tasks.py`` (Celery's First Steps), a ``core``
package (Django) and a ``workers.py``. Installed from the wheel into a fresh
virtual environment, tiercel must import from such a directory without
shadowing those modules or being shadowed by them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tiercel.core.tier import scripts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import tiercel
celery_before = "celery" in sys.modules
import tiercel.tasks
import tiercel.workers.app
import tasks, core, workers
from tiercel.core.tier import scripts
print(json.dumps({
    "scripts": sorted(name for name in scripts.names() if scripts.source(name)),
    "celery_on_plain_import": celery_before,
    "tiercel": tiercel.__file__,
    "app": tiercel.workers.app.app.main,
    "cached_task": tiercel.cached_task.__module__,
    "tasks": tasks.__file__, "core": core.__file__, "workers": workers.__file__,
    "user_task": tasks.add.name,
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the checkout's files, so what a build left in build/ or an
    # egg-info folder cannot leak into the wheel under test.
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("tiercel-*.whl")
    return built


def test_the_wheel_holds_only_the_tiercel_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names if not name.startswith("tiercel-")}
    assert tops == {"tiercel"}
    for expected in (
        "tiercel/__init__.py",
        "tiercel/py.typed",
        "tiercel/core/__init__.py",
        "tiercel/tasks/cached.py",
        "tiercel/workers/app.py",
    ):
        assert expected in names
    # Every package folder of the checkout is in the wheel (none forgotten in pyproject).
    for folder in ("core", "tasks", "workers"):
        for init in (ROOT / folder).rglob("__init__.py"):
            assert "tiercel/" + init.relative_to(ROOT).as_posix() in names
    # And every Lua script (package data, read at run time).
    lua = sorted((ROOT / "core" / "tier" / "lua").glob("*.lua"))
    assert lua
    for script in lua:
        assert "tiercel/" + script.relative_to(ROOT).as_posix() in names


def test_a_users_tasks_core_and_workers_stay_theirs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # tiercel from the wheel alone; its dependencies from this environment's site-packages
    # (a path entry, so this environment's own editable tiercel is not seen).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(purelib),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    project = tmp_path / "project"
    (project / "core").mkdir(parents=True)
    (project / "core" / "__init__.py").write_text("OWNER = 'user'\n")
    (project / "workers.py").write_text("OWNER = 'user'\n")
    (project / "tasks.py").write_text(
        "from celery import Celery\n"
        "app = Celery('tasks', broker='memory://')\n"
        "@app.task\n"
        "def add(x, y):\n"
        "    return x + y\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TIERCEL_BROKER_URL": os.environ["TIERCEL_BROKER_URL"],
        "TIERCEL_RESULT_BACKEND": os.environ["TIERCEL_RESULT_BACKEND"],
        "TIERCEL_CACHE_URL": os.environ["TIERCEL_CACHE_URL"],
        "TIERCEL_RUN_DIR": str(tmp_path / "run"),
    }
    result = subprocess.run(
        [str(python), "-c", _PROBE],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["celery_on_plain_import"] is False
    assert seen["tiercel"].startswith(str(purelib))
    assert seen["app"] == "tiercel"
    assert seen["cached_task"] == "tiercel.tasks.cached"
    for name in ("tasks", "core", "workers"):
        assert seen[name].startswith(str(project)), (name, seen[name])
    assert seen["user_task"] == "tasks.add"
    assert seen["scripts"] == sorted(scripts.names())


@pytest.mark.parametrize("name", ["core", "tasks", "workers"])
def test_the_old_top_level_names_are_gone_outside_the_checkout(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        check=False,
    )
    assert result.returncode != 0 and f"No module named '{name}'" in result.stderr
