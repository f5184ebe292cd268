"""The load generator's HTTP/1.1 client against scripted servers on loopback: every framing it reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from amctl.load.bare import ACCEPTED, serve_raw
from amctl.load.http1 import HttpPool, HttpProtocolError, Response
from amctl.local.processes import free_port, port_accepts

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def with_server(handler: Handler, client: Callable[[HttpPool], Awaitable[None]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def go() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, HttpPool(f"http://127.0.0.1:{port}", timeout_s=2) as pool:
            await client(pool)

    asyncio.run(go())


def test_keep_alive_content_length_responses_reuse_one_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            body = request.split(b"\r\n\r\n", 1)[1]
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def client(pool: HttpPool) -> None:
        for i in range(5):
            response = await pool.request("POST", "/api/events", b'{"n":%d}' % i)
            assert (response.status, response.body) == (201, b'{"n":%d}' % i)

    with_server(handler, client)
    assert connections == 1


def test_chunked_and_close_delimited_bodies() -> None:
    responses = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nuntil the end",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            await read_request(reader)
            response = responses.pop(0)
            for i in range(0, len(response), 7):  # in small pieces, as a slow network delivers it
                writer.write(response[i:i + 7])
                await writer.drain()
        writer.close()

    async def client(pool: HttpPool) -> None:
        assert await pool.request("GET", "/a") == Response(200, b"Wikipedia ")
        assert await pool.request("GET", "/b") == Response(200, b"abc")
        closing = await pool.request("GET", "/c")
        assert (closing.status, closing.body) == (503, b"until the end")

    with_server(handler, client)


def test_a_server_that_hangs_up_or_talks_nonsense_is_an_error_not_a_hang() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def expect(error: type[Exception], pool: HttpPool) -> None:
        with pytest.raises(error):
            await pool.request("POST", "/api/events", b"{}")

    with_server(hang_up, lambda pool: expect(ConnectionResetError, pool))
    with_server(nonsense, lambda pool: expect(HttpProtocolError, pool))


def test_a_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def client(pool: HttpPool) -> None:
        pool.timeout_s = 0.2
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/")

    with_server(silent, client)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="plain http"):
        HttpPool("https://example.com")


def test_the_raw_responder_answers_every_request_in_a_pipeline() -> None:
    async def go() -> None:
        port = free_port()
        server = asyncio.create_task(serve_raw(port))
        while not port_accepts("127.0.0.1", port):
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        writer.write(request * 3)  # three at once, the second split from the first by nothing
        await writer.drain()
        assert await reader.readexactly(len(ACCEPTED) * 3) == ACCEPTED * 3
        writer.close()
        await writer.wait_closed()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

    asyncio.run(go())
