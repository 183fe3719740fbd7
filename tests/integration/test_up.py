"""`tiercel up` on the embedded default.

Every node answers a ping, Flower lists them all, and Ctrl-C leaves no process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from tests.integration.fleet import wait_for_up
from tiercel.core.embedded.redis_server import free_port


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_up_embedded_fleet_lifecycle(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = str(tmp_path / "run")
    flower_port = free_port()
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiercel.workers.cli",
            "up",
            "--workers",
            "2",
            "--concurrency",
            "2",
            "--flower-port",
            str(flower_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        nodes = wait_for_up(up)
        assert len(nodes) == 2, nodes

        # A Celery user's own command finds the embedded fleet through the fleet file.
        ping = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tiercel.workers.app",
                "inspect",
                "ping",
                "--timeout",
                "5",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ping.returncode == 0, ping.stderr
        replies = json.loads(ping.stdout)
        answered = set(replies) if isinstance(replies, dict) else {n for r in replies for n in r}
        assert answered == set(nodes)

        listed: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and listed != set(nodes):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", timeout=10
                ) as response:
                    listed = set(json.load(response))
            except OSError:
                time.sleep(0.5)  # Flower is still starting its web server
        assert listed == set(nodes)

        processes = _tree(up.pid)
        names = " ".join(" ".join(p.cmdline()) for p in processes)
        assert "redis-server" in names and "flower" in names and " beat" in names
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        if up.stdout is not None:
            up.stdout.close()
    assert up.returncode == 0
    survivors = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [p.cmdline() for p in survivors]
    assert not (tmp_path / "run" / "fleet.json").exists()
