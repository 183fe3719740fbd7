"""Every pool of a process names tiercel to the server with one description, built once."""

from __future__ import annotations

from tiercel import __version__
from tiercel.core.tier.async_connections import async_client_from_url
from tiercel.core.tier.connections import client_from_url, driver_options


def test_sync_and_asyncio_pools_share_one_driver_description() -> None:
    blocking = client_from_url("redis://127.0.0.1:1/0")
    awaiting = async_client_from_url("redis://127.0.0.1:1/0")
    options = driver_options()
    assert options is driver_options(), "worked out once per process"
    for client in (blocking, awaiting):
        kwargs = client.connection_pool.connection_kwargs
        for name, value in options.items():
            assert kwargs[name] is value
    info = options.get("driver_info")
    if info is not None:  # redis-py 7 and later: tiercel is named beside redis-py
        assert info.formatted_name == f"redis-py(tiercel_v{__version__})"
    else:
        assert options["lib_version"]
    blocking.close()
