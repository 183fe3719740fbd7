"""Where a running embedded fleet says which URLs it serves.

``tiercel up`` writes this file while it runs, so that ``celery -A tiercel.workers.app
inspect ping``, ``tiercel worker`` and ``tiercel stats`` in another terminal
find the embedded Redis servers without any ``TIERCEL_*`` variable. URLs set
in the environment always win over the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tiercel.core.errors import SettingsError


def fleet_file_path() -> Path:
    """The file's path: ``$TIERCEL_RUN_DIR/fleet.json`` (default ``~/.cache/tiercel``)."""
    base = os.environ.get("TIERCEL_RUN_DIR") or str(Path.home() / ".cache" / "tiercel")
    return Path(base) / "fleet.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_fleet_file() -> dict[str, Any] | None:
    """The live fleet's record, or None when there is none (a stale file is ignored)."""
    path = fleet_file_path()
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _pid_alive(int(record.get("pid", 0))):
        return None
    return record


def write_fleet_file(urls: dict[str, Any]) -> Path:
    """Record this process as the live embedded fleet (its URLs and task modules);
    refuse if another one runs."""
    existing = read_fleet_file()
    if existing is not None and existing.get("pid") != os.getpid():
        raise SettingsError(
            f"an embedded tiercel fleet is already running (pid {existing['pid']}): stop it, "
            "or set TIERCEL_BROKER_URL, TIERCEL_RESULT_BACKEND and TIERCEL_CACHE_URL"
        )
    path = fleet_file_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # The URLs point at loopback servers without passwords; still keep the file private.
    tmp.write_text(json.dumps({"pid": os.getpid(), **urls}))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def remove_fleet_file() -> None:
    """Forget the fleet, if this process wrote the record."""
    record = read_fleet_file()
    path = fleet_file_path()
    if record is None or record.get("pid") == os.getpid():
        path.unlink(missing_ok=True)
