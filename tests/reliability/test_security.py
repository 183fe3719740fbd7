"""Security: safe codec by default, signed pickle only by opt-in, namespaces that keep
applications apart on one Redis, and secrets that never reach output."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from tests.reliability.conftest import Figures
from tiercel.core.cache.memoize import cached
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.embedded.redis_server import RedisServer
from tiercel.core.encoding.codecs import Serializer, SignedPickleCodec, serializer_from_settings
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.settings import Settings
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.redis_tier import MISSING, RedisTier

OLD_KEY = "retired-signing-key-0123456789"
NEW_KEY = "current-signing-key-9876543210"


def test_the_default_codec_is_the_safe_one(figures: Figures) -> None:
    serializer = serializer_from_settings(Settings())
    assert serializer.codec.name == "msgpack"
    figures.record("default codec", "msgpack", "", ok=True, note="no code runs from cache bytes")


def _app(url: str, namespace: str) -> tuple[MultiLevelCache, Generations]:
    tier = RedisTier.from_url(
        url, serializer=serializer_from_settings(Settings()), namespace=namespace
    )
    cache = MultiLevelCache(
        serializer=tier.serializer, tier=tier, levels=[MemoryLevel("memory", max_entries=100)]
    )
    return cache, Generations(tier, max_age=0.001)


def test_two_applications_on_one_redis_cannot_read_or_invalidate_each_other(
    cache_url: str, figures: Figures
) -> None:
    calls: dict[str, int] = {"billing": 0, "search": 0}
    caches = {name: _app(cache_url, name) for name in calls}
    functions = {}
    for name, (cache, generations) in caches.items():

        def report(day: int, _name: str = name) -> str:
            calls[_name] += 1
            return f"{_name}:{day}"

        report.__qualname__ = "report"  # the same function name in both applications
        functions[name] = cached(
            cache, ttl=600, tags=("reports",), namespace=name, generations=generations
        )(report)
    assert functions["billing"](1) == "billing:1"
    assert functions["search"](1) == "search:1"  # not billing's value
    assert calls == {"billing": 1, "search": 1}
    billing_cache = caches["billing"][0]
    search_cache = caches["search"][0]
    search_cache.invalidate_tag("reports")  # search invalidates its own tag...
    search_cache.clear_local()
    billing_cache.clear_local()
    functions["search"].invalidate_all()  # ...and bumps its own version
    assert functions["billing"](1) == "billing:1"
    assert calls["billing"] == 1, "search's invalidations reached billing's entries"
    figures.record(
        "two namespaces on one Redis",
        "isolated",
        "",
        ok=True,
        note="no shared reads, tag or version invalidations",
    )


def test_opt_in_pickle_is_signed_and_rotates_keys(cache_url: str, figures: Figures) -> None:
    def tier(keys: list[str]) -> RedisTier:
        return RedisTier.from_url(
            cache_url, serializer=Serializer(SignedPickleCodec(keys)), namespace="signed"
        )

    writer_old = tier([OLD_KEY])
    assert writer_old.set("signed:k", {"a": (1, 2)}, ttl=60)
    # During a rotation every process holds both keys (newest first): old values still read.
    rotating = tier([NEW_KEY, OLD_KEY])
    assert rotating.get("signed:k") == {"a": (1, 2)}
    assert rotating.set("signed:k2", "new", ttl=60)
    assert tier([NEW_KEY]).get("signed:k2") == "new"
    # A value signed with a key this process does not hold is a miss, never unpickled.
    assert tier([NEW_KEY]).get("signed:k") is MISSING
    # Under the safe codec, pickle frames are refused outright.
    safe = RedisTier.from_url(
        cache_url, serializer=serializer_from_settings(Settings()), namespace="signed"
    )
    assert safe.get("signed:k2") is MISSING
    figures.record(
        "signed pickle: rotation, unknown key, safe codec", "refused unsigned", "", ok=True
    )


def test_secrets_never_appear_in_settings_output_or_worker_logs(
    tmp_path: object, figures: Figures
) -> None:
    password = "s3cret-Pa55word-never-shown"
    signing = "signing-key-never-shown-0123"
    server = RedisServer(extra_args=("--requirepass", password)).start()
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    env = {
        **os.environ,
        "TIERCEL_BROKER_URL": url,
        "TIERCEL_RESULT_BACKEND": url,
        "TIERCEL_CACHE_URL": url,
        "TIERCEL_CODEC": "pickle",
        "TIERCEL_SIGNING_KEYS": signing,
    }
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "tiercel.workers.cli", "settings"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert password not in shown.stdout + shown.stderr
        assert signing not in shown.stdout + shown.stderr
        assert "***" in shown.stdout

        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tiercel.workers.app",
                "worker",
                "-P",
                "solo",
                "-n",
                "secret-check@%h",
                "-l",
                "DEBUG",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.pubsub_numsub("tiercel:events")[0][1] < 1:
            time.sleep(0.1)  # the worker is up: its runtime subscribed to the channel
        client.publish("tiercel:events", "i|nothing")
        time.sleep(0.5)
        worker.terminate()
        output, _ = worker.communicate(timeout=60)
        client.close()
        assert "celery@" in output or "secret-check" in output, output[-2000:]
        assert password not in output, "the Redis password reached the worker's log"
        assert signing not in output
    finally:
        server.stop()
    figures.record("secrets in `tiercel settings` and worker logs", 0, "leaks", ok=True)


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_redacted_urls_keep_user_and_host(scheme: str) -> None:
    from tiercel.core.settings import redact_url

    url = f"{scheme}://app:pw-123456@cache.internal:6380/1"
    assert redact_url(url) == f"{scheme}://app:***@cache.internal:6380/1"
