"""The load test's HTTP client against a raw asyncio server on loopback: framing by
Content-Length (any spelling) and chunks, ``Connection: close``, the per-request
deadline, and bodies read as they arrive (a segment streamed while it is made)."""

from __future__ import annotations

import asyncio

import pytest

from amphi.loadtest.http import ChunkDecoder, Connection, Disconnected, Timeout

ANSWERS = {
    b"/len": b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh:5\r\nX-Thing: a:b\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection:  Close\r\nRetry-After: 2\r\n\r\n",
    b"/moved": b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /len\r\nContent-Length: 0\r\n\r\n",
}


STREAM: asyncio.Queue[bytes | None]  # /stream's chunks, written as the test puts them; None ends it


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        if target == b"/stream":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while (piece := await STREAM.get()) is not None:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            continue
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
    global STREAM
    STREAM = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await _serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the client closed its side
        except asyncio.CancelledError:
            writer.close()  # the test is over: a stream left waiting for its next chunk

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


def test_chunk_decoder_any_split() -> None:
    wire = b"3;ext=1\r\nabc\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer: t\r\n\r\nNEXT"
    for step in (1, 2, 5, len(wire)):
        d = ChunkDecoder()
        body, done_at = b"", None
        for i in range(0, len(wire), step):
            pieces, done = d.feed(wire[i:i + step])
            body += b"".join(pieces)
            if done and done_at is None:
                done_at = i + step
        assert body == b"abc" + b"x" * 16 and d.done
        assert done_at is not None and done_at >= len(wire) - 4  # not before the trailer's end
    with pytest.raises(Disconnected):
        ChunkDecoder().feed(b"zz\r\n")


def test_a_streamed_body_arrives_piece_by_piece_and_the_connection_is_kept() -> None:
    async def test(port: int) -> None:
        c = Connection("127.0.0.1", port)
        got: list[bytes] = []
        arrived = asyncio.Event()

        def on_body(piece: bytes) -> None:
            got.append(piece)
            arrived.set()

        req = asyncio.ensure_future(c.request("GET", "/stream", on_body=on_body, timeout_s=5))
        for piece in (b"first", b"second"):
            arrived.clear()
            STREAM.put_nowait(piece)
            await arrived.wait()  # each piece reaches the reader while the response is still open
            assert not req.done() and b"".join(got).endswith(piece)
        STREAM.put_nowait(None)
        r = await req
        assert (r.status, r.body, b"".join(got)) == (200, b"", b"firstsecond")
        assert (await c.request("GET", "/len")).body == b"hello" and c.connects == 1  # framing intact
        got.clear()  # a Content-Length body is streamed too, and an error answer is not
        r = await c.request("GET", "/len", on_body=got.append)
        assert (r.body, got) == (b"", [b"hello"])
        r = await c.request("GET", "/close", on_body=got.append)
        assert r.status == 503 and got == [b"hello"]
        c.close()

    asyncio.run(_with_server(test))


def test_a_stream_times_out_when_nothing_comes_not_when_it_lasts() -> None:
    async def test(port: int) -> None:
        c = Connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        req = asyncio.ensure_future(c.request("GET", "/stream", on_body=got.append, timeout_s=0.2))
        t = loop.time()
        for _ in range(5):  # 0.5 s in all, a piece every 0.1 s: longer than the timeout, never idle that long
            STREAM.put_nowait(b"x")
            await asyncio.sleep(0.1)
        STREAM.put_nowait(None)
        assert (await req).status == 200 and len(got) == 5 and loop.time() - t >= 0.5
        req = asyncio.ensure_future(c.request("GET", "/stream", on_body=got.append, timeout_s=0.2))
        STREAM.put_nowait(b"y")
        with pytest.raises(Timeout):
            await req  # then nothing
        assert not c.connected

    asyncio.run(_with_server(test))


def test_the_readers_own_error_ends_the_request() -> None:
    async def test(port: int) -> None:
        def broken(piece: bytes) -> None:
            raise ValueError("bad media")

        c = Connection("127.0.0.1", port)
        req = asyncio.ensure_future(c.request("GET", "/stream", on_body=broken, timeout_s=5))
        STREAM.put_nowait(b"z")
        with pytest.raises(ValueError):
            await req
        assert not c.connected  # the rest of that body must not be read as the next answer

    asyncio.run(_with_server(test))
