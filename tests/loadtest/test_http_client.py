"""The load test's HTTP client against a raw asyncio server on loopback: framing by
Content-Length (any spelling) and chunks, ``Connection: close``, and the per-request
deadline."""

from __future__ import annotations

import asyncio

import pytest

from amphi.loadtest.http import Connection, Timeout

ANSWERS = {
    b"/len": b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh:5\r\nX-Thing: a:b\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection:  Close\r\nRetry-After: 2\r\n\r\n",
    b"/moved": b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /len\r\nContent-Length: 0\r\n\r\n",
}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        if target == b"/silent":
            await reader.read()  # never answers; returns when the client gives up and closes
            writer.close()
            return
        writer.write(ANSWERS[target])
        await writer.drain()
        if target == b"/close":
            writer.close()
            return


async def _with_server(test) -> None:  # type: ignore[no-untyped-def]
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await _serve(reader, writer)
        except asyncio.IncompleteReadError:
            writer.close()  # the client closed its side

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await test(port)
    finally:
        server.close()
        for w in writers:
            w.close()
            await w.wait_closed()
        await server.wait_closed()


def test_framing_headers_and_keep_alive() -> None:
    async def test(port: int) -> None:
        c = Connection("127.0.0.1", port)
        r = await c.request("GET", "/len")
        assert (r.status, r.body) == (200, b"hello")
        assert r.headers["x-thing"] == "a:b" and r.headers["content-length"] == "5"
        r = await c.request("GET", "/chunked")
        assert (r.status, r.body) == (200, b"abcde")
        r = await c.request("GET", "/moved")
        assert r.status == 307 and r.headers["location"] == "/len" and r.body == b""
        assert c.connects == 1 and c.connected  # one connection carried all three
        r = await c.request("GET", "/close")
        assert r.status == 503 and r.headers["retry-after"] == "2"
        assert not c.connected  # "Connection: close" in any spelling closes our side too
        r = await c.request("GET", "/len")
        assert r.body == b"hello" and c.connects == 2
        c.close()

    asyncio.run(_with_server(test))


def test_a_silent_server_times_out_and_the_connection_is_dropped() -> None:
    async def test(port: int) -> None:
        c = Connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        t = loop.time()
        with pytest.raises(Timeout):
            await c.request("GET", "/silent", timeout_s=0.3)
        assert loop.time() - t >= 0.3
        assert not c.connected  # a late answer must not be read as the next request's
        r = await c.request("GET", "/len", timeout_s=5)
        assert r.body == b"hello"
        c.close()

    asyncio.run(_with_server(test))
