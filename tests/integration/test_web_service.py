"""examples/web_service.py through httpx's ASGI transport, against real worker processes.

The module's fleet is 2 prefork nodes x 2 processes (tests/integration/conftest.py);
the app runs inside its own lifespan, entered here as a server would enter it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis

import tiercel
from examples.web_service import app
from tiercel.tasks import async_runtime
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def fresh() -> tuple[int, str]:
    n = uuid.uuid4().int % 10**9
    return n, f"test:count:web:{n}"


def serve(main: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``main(client)`` in a new loop, inside the app's lifespan."""

    async def wrapped() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await main(client)

    return asyncio.run(wrapped())


def test_a_fresh_square_is_computed_then_answered_from_a_cache(fleet: Fleet) -> None:
    n, _ = fresh()

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.get(f"/square/{n}") for _ in range(2)]

    first, second = serve(main)
    assert first.status_code == 200 and second.status_code == 200
    assert first.json() == {"n": n, "value": n * n, "source": "computed"}
    assert second.json()["value"] == n * n
    assert second.json()["source"] in ("memory", "redis")


def test_concurrent_requests_for_one_fresh_key_compute_once(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        params = {"counter": counter, "compute_ms": 300}
        requests = (client.get(f"/counted-square/{n}", params=params) for _ in range(20))
        return list(await asyncio.gather(*requests))

    responses = serve(main)
    assert [response.status_code for response in responses] == [200] * 20
    assert [response.json()["value"] for response in responses] == [n * n] * 20
    sources = [response.json()["source"] for response in responses]
    assert sources.count("computed") == 1
    assert set(sources) <= {"computed", "joined", "memory", "redis"}
    assert int(cache_client.get(counter) or 0) == 1


def test_invalidate_makes_the_next_request_compute_again(fleet: Fleet) -> None:
    n, _ = fresh()

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        computed = await client.get(f"/square/{n}")
        cached = await client.get(f"/square/{n}")
        invalidated = await client.post(f"/square/{n}/invalidate")
        again = await client.get(f"/square/{n}")
        return [computed, cached, invalidated, again]

    computed, cached, invalidated, again = serve(main)
    assert computed.json()["source"] == "computed"
    assert cached.json()["source"] in ("memory", "redis")
    assert (invalidated.status_code, invalidated.json()) == (200, {"n": n, "invalidated": True})
    assert again.status_code == 200
    assert again.json() == {"n": n, "value": n * n, "source": "computed"}


def test_a_tagged_report_is_served_and_cached(fleet: Fleet) -> None:
    day = uuid.uuid4().int % 10**6

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        params = {"compute_ms": 10}
        return [await client.get(f"/reports/emea/{day}", params=params) for _ in range(2)]

    first, second = serve(main)
    assert first.status_code == 200, first.text
    report = first.json()["report"]
    assert (report["region"], report["day"]) == ("emea", day)
    assert first.json()["source"] == "computed"
    assert second.json() == {"report": report, "source": second.json()["source"]}
    assert second.json()["source"] in ("memory", "redis")


def test_a_bad_parameter_is_422_a_failure_502_and_a_timeout_504(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    day = uuid.uuid4().int % 10**6

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        not_an_integer = await client.get("/square/seven")
        failed = await client.get(
            f"/counted-square/{n}", params={"counter": counter, "compute_ms": 10, "fail": True}
        )
        slow = await client.get(f"/reports/apac/{day}", params={"compute_ms": 1500, "wait": 0.2})
        return [not_an_integer, failed, slow]

    not_an_integer, failed, slow = serve(main)
    assert not_an_integer.status_code == 422
    assert not_an_integer.json()["detail"][0]["loc"] == ["path", "n"]
    assert failed.status_code == 502
    assert f"counted_square({n}) failed on purpose" in failed.json()["detail"]
    assert int(cache_client.get(counter) or 0) >= 1  # it did run, and raised
    assert slow.status_code == 504
    assert "still computing" in slow.json()["detail"]


def test_lifespan_shutdown_closes_the_loops_client(fleet: Fleet) -> None:
    n, _ = fresh()

    async def main() -> tuple[Any, Any, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.get(f"/square/{n}")
            during = async_runtime.existing()
        after = async_runtime.existing()
        await tiercel.aclose()  # a second close is harmless
        return response, during, after

    response, during, after = asyncio.run(main())
    assert response.status_code == 200
    assert during is not None  # the request built this loop's client
    assert after is None  # the shutdown closed it and let it go
    assert during.listener.connected is False
