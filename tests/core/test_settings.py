"""Settings: typed, read from TIERCEL_* variables, validated with messages naming the variable."""

from __future__ import annotations

import pytest

from tiercel.core.errors import SettingsError
from tiercel.core.settings import Settings, parse_bytes, redact_url, resolve_settings


def test_defaults_are_embedded_and_valid() -> None:
    settings = Settings.from_env({})
    assert settings.embedded
    assert settings.codec == "msgpack"
    assert settings.local_policy == "cost"
    assert Settings.from_env({"TIERCEL_LOCAL_POLICY": "lru"}).local_policy == "lru"


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "TIERCEL_L1_MAX_ENTRIES": "100",
            "TIERCEL_L2_MAX_BYTES": "8MiB",
            "TIERCEL_DEFAULT_TTL": "2.5",
            "TIERCEL_CACHE_URL": "redis://127.0.0.1:7000/1",
            "TIERCEL_NAMESPACE": "billing",
        }
    )
    assert settings.l1_max_entries == 100
    assert settings.l2_max_bytes == 8 * 2**20
    assert settings.default_ttl == 2.5
    assert settings.cache_url == "redis://127.0.0.1:7000/1"
    assert settings.namespace == "billing"
    assert not settings.embedded


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TIERCEL_L1_MAX_ENTRIES", "many", "TIERCEL_L1_MAX_ENTRIES"),
        ("TIERCEL_L1_MAX_ENTRIES", "0", "positive"),
        ("TIERCEL_L2_MAX_BYTES", "lots", "64MiB"),
        ("TIERCEL_CACHE_URL", "http://x", "redis://"),
        ("TIERCEL_BROKER_URL", "ftp://x", "amqp://"),
        ("TIERCEL_NAMESPACE", "has space", "TIERCEL_NAMESPACE"),
        ("TIERCEL_CODEC", "yaml", "msgpack"),
        ("TIERCEL_CODEC", "pickle", "TIERCEL_SIGNING_KEYS"),
        ("TIERCEL_VISIBILITY_TIMEOUT", "10", "TIERCEL_TASK_TIME_LIMIT"),
        ("TIERCEL_LOG_LEVEL", "LOUD", "TIERCEL_LOG_LEVEL"),
        ("TIERCEL_LOCAL_POLICY", "fifo", "cost, lru"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: value})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_signing_keys_are_never_shown() -> None:
    secret = "k" * 20
    settings = Settings.from_env({"TIERCEL_CODEC": "pickle", "TIERCEL_SIGNING_KEYS": secret})
    assert settings.signing_keys == (secret,)
    assert secret not in repr(settings)
    assert secret not in str(settings.describe())
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"TIERCEL_SIGNING_KEYS": "short"})
    assert "short" not in str(info.value)


def test_urls_are_redacted() -> None:
    url = "redis://app:s3cret@cache.internal:6380/2"
    assert redact_url(url) == "redis://app:***@cache.internal:6380/2"
    assert "s3cret" not in str(Settings(cache_url=url).describe())
    assert redact_url(None) == "(unset)"
    assert redact_url("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


def test_parse_bytes_units() -> None:
    assert parse_bytes("1024") == 1024
    assert parse_bytes("1KiB") == 1024
    assert parse_bytes("2mb") == 2_000_000
    with pytest.raises(ValueError):
        parse_bytes("-1")


def test_resolve_fills_backend_and_cache_from_a_redis_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("TIERCEL_RUN_DIR", str(tmp_path))
    settings = resolve_settings(Settings(broker_url="redis://127.0.0.1:7001/0"))
    assert settings.result_backend == "redis://127.0.0.1:7001/0"
    assert settings.cache_url == "redis://127.0.0.1:7001/0"


def test_resolve_without_any_url_or_fleet_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("TIERCEL_RUN_DIR", str(tmp_path))
    with pytest.raises(SettingsError, match="tiercel up"):
        resolve_settings(Settings())


def test_resolve_reads_a_live_fleet_file(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from tiercel.core.embedded.fleet_file import remove_fleet_file, write_fleet_file

    monkeypatch.setenv("TIERCEL_RUN_DIR", str(tmp_path))
    urls = {
        "broker_url": "redis://127.0.0.1:7002/0",
        "result_backend": "redis://127.0.0.1:7002/0",
        "cache_url": "redis://127.0.0.1:7003/0",
    }
    write_fleet_file(urls)
    try:
        settings = resolve_settings(Settings())
        assert settings.cache_url == urls["cache_url"]
        assert settings.broker_url == urls["broker_url"]
    finally:
        remove_fleet_file()
    with pytest.raises(SettingsError):
        resolve_settings(Settings())


def test_task_modules_are_a_list_of_dotted_names() -> None:
    settings = Settings.from_env({"TIERCEL_TASK_MODULES": "reports, billing.tasks"})
    assert settings.task_modules == ("reports", "billing.tasks")
    with pytest.raises(SettingsError, match="TIERCEL_TASK_MODULES"):
        Settings.from_env({"TIERCEL_TASK_MODULES": "not a module"})


def test_workers_import_the_deployments_task_modules() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TIERCEL_TASK_MODULES": "tests.core.user_tasks"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tiercel.workers.app as w; w.app.loader.import_default_modules();"
            "print('tests.core.user_tasks.triple' in w.app.tasks)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "True"
