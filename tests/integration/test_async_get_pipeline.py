"""GetPipeline: the asyncio hit path's GETs, pipelined on one connection, with redis-py's errors."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator

import pytest
import redis

from tests.integration.silent_proxy import SilentProxy
from tiercel.core.embedded.redis_server import RedisServer
from tiercel.core.tier.async_get_pipeline import GetPipeline, pipeline_for_url


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


def _pipeline(server: RedisServer, **options: object) -> GetPipeline:
    pipeline = pipeline_for_url(server.url, **options)  # type: ignore[arg-type]
    assert pipeline is not None
    return pipeline


def test_gets_answer_values_and_misses_on_one_connection(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    values = {f"pipe:{n}": os.urandom(n % 300) for n in range(2000)}
    client.mset(values)
    client.set("pipe:ключ", b"unicode key")

    async def main() -> tuple[list[bytes | None], bytes | None, bytes | None, int]:
        pipeline = _pipeline(server)
        try:
            answers = await asyncio.gather(*(pipeline.get(key) for key in values))
            return (
                answers,
                await pipeline.get("pipe:ключ"),
                await pipeline.get(b"pipe:none"),
                (pipeline.connects),
            )
        finally:
            await pipeline.close()

    answers, unicode, missing, connects = asyncio.run(main())
    assert answers == list(values.values()), "each caller gets its own key's reply, in order"
    assert (unicode, missing) == (b"unicode key", None)
    assert connects == 1, "2,000 concurrent GETs shared one connection"


def test_an_error_reply_raises_and_leaves_the_connection_usable(server: RedisServer) -> None:
    redis.Redis.from_url(server.url).rpush("pipe:list", b"x")

    async def main() -> tuple[BaseException | None, bytes | None, int]:
        pipeline = _pipeline(server)
        redis.Redis.from_url(server.url).set("pipe:after", b"fine")
        error = None
        try:
            await pipeline.get("pipe:list")
        except redis.ResponseError as exc:
            error = exc
        after = await pipeline.get("pipe:after")
        await pipeline.close()
        return error, after, pipeline.connects

    error, after, connects = asyncio.run(main())
    assert error is not None and "WRONGTYPE" in str(error)
    assert (after, connects) == (b"fine", 1)


def test_a_lost_connection_fails_its_gets_and_the_next_get_reconnects(server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.set("pipe:k", b"v")

    async def main() -> tuple[bytes | None, bytes | None, int]:
        pipeline = _pipeline(server)
        before = await pipeline.get("pipe:k")
        admin.client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.05)  # the close reaches the loop
        after = await pipeline.get("pipe:k")
        await pipeline.close()
        return before, after, pipeline.connects

    assert asyncio.run(main()) == (b"v", b"v", 2)


def test_an_unreachable_server_raises_connection_error() -> None:
    with RedisServer() as doomed:
        url = doomed.url

    async def main() -> None:
        pipeline = pipeline_for_url(url)
        assert pipeline is not None
        with pytest.raises(redis.ConnectionError):
            await pipeline.get("k")

    asyncio.run(main())


def test_a_silent_server_times_out_and_the_connection_is_replaced(server: RedisServer) -> None:
    redis.Redis.from_url(server.url).set("pipe:slow", b"v")
    assert server.port is not None
    with SilentProxy(("127.0.0.1", server.port)) as proxy:

        async def main() -> tuple[int, bytes | None, int]:
            pipeline = _pipeline_at(proxy.url, socket_timeout=0.2)
            assert await pipeline.get("pipe:slow") == b"v"
            proxy.silence()
            waiting = [asyncio.ensure_future(pipeline.get("pipe:slow")) for _ in range(5)]
            results = await asyncio.gather(*waiting, return_exceptions=True)
            timed_out = sum(isinstance(result, redis.TimeoutError) for result in results)
            proxy.resume()
            again = await pipeline.get("pipe:slow")
            await pipeline.close()
            return timed_out, again, pipeline.connects

        timed_out, again, connects = asyncio.run(main())
    assert timed_out == 5, "every GET waiting on the silent connection fails as a timeout"
    assert (again, connects) == (b"v", 2), "then a new connection answers"


def _pipeline_at(url: str, **options: float) -> GetPipeline:
    pipeline = pipeline_for_url(url, **options)
    assert pipeline is not None
    return pipeline


def test_password_database_and_unix_socket() -> None:
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "redis.sock")
    args = ("--requirepass", "s3cret", "--unixsocket", path, "--unixsocketperm", "700")
    with RedisServer(extra_args=args) as secured:
        admin = redis.Redis(host="127.0.0.1", port=secured.port, password="s3cret", db=3)
        admin.set("pipe:db3", b"three")

        async def main() -> tuple[bytes | None, bytes | None]:
            tcp = _pipeline_at(f"redis://:s3cret@127.0.0.1:{secured.port}/3")
            unix = _pipeline_at(f"unix://:s3cret@{path}?db=3")
            try:
                return await tcp.get("pipe:db3"), await unix.get("pipe:db3")
            finally:
                await tcp.close()
                await unix.close()

        assert asyncio.run(main()) == (b"three", b"three")

        async def refused() -> None:
            wrong = _pipeline_at(f"redis://:wrong@127.0.0.1:{secured.port}/0")
            with pytest.raises(redis.AuthenticationError):
                await wrong.get("pipe:db3")

        asyncio.run(refused())


def test_it_says_when_full_so_the_pool_takes_the_overflow(server: RedisServer) -> None:
    async def main() -> tuple[bool, bool, bool]:
        pipeline = _pipeline(server, max_pending=2)
        await pipeline.get("warm")
        first = asyncio.ensure_future(pipeline.get("a"))
        second = asyncio.ensure_future(pipeline.get("b"))
        await asyncio.sleep(0)  # both sent, neither answered yet
        full = pipeline.full
        await asyncio.gather(first, second)
        await pipeline.close()
        return full, pipeline.full, first.result() is None

    assert asyncio.run(main()) == (True, False, True)


@pytest.mark.parametrize(
    "url",
    ["rediss://127.0.0.1:6380/0", "redis://127.0.0.1:6380/0?socket_timeout=2"],
)
def test_urls_it_does_not_speak_are_left_to_the_pool(url: str) -> None:
    assert pipeline_for_url(url) is None


def test_a_connection_still_opening_when_closed_is_closed_once_it_opens(
    server: RedisServer,
) -> None:
    redis.Redis.from_url(server.url.replace("/0", "/1")).set("pipe:db1", b"one")
    assert server.port is not None
    with SilentProxy(("127.0.0.1", server.port)) as proxy:

        async def main() -> tuple[bool, int, bytes | None, int]:
            pipeline = _pipeline_at(proxy.url.replace("/0", "/1"), socket_timeout=2.0)
            proxy.silence()  # the SELECT of the handshake goes unanswered: still opening
            waiting = asyncio.ensure_future(pipeline.get("pipe:db1"))
            await asyncio.sleep(0.1)
            await pipeline.close()
            proxy.resume()
            failed = False
            try:
                await waiting
            except redis.ConnectionError:
                failed = True
            opened_then_closed = pipeline.connects
            again = await pipeline.get("pipe:db1")  # closing does not forbid a later use
            await pipeline.close()
            return failed, opened_then_closed, again, pipeline.connects

        failed, opened_then_closed, again, connects = asyncio.run(main())
    assert failed, "the GET waiting on the connection closed meanwhile fails"
    assert opened_then_closed == 1 and (again, connects) == (b"one", 2)
