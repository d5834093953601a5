"""The fan-out's fetches (edge/upstream.py) against a Unix-socket server that answers as told:
pieces handed on as they come, kept-alive connections reused (and one Varnish closed while idle
replaced without a word), and every way an answer can break raised as UpstreamError. Real
Varnish in front of a real origin is in test_streaming.py and test_edge.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from amphi.edge.upstream import Upstream, UpstreamError


class Sink:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.pieces: list[bytes] = []
        self.whole = False

    def began(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers

    def piece(self, data: bytes) -> None:
        self.pieces.append(data)

    def ended(self, last: bytes) -> None:
        if last:
            self.pieces.append(last)
        self.whole = True


class Server:
    """Answers each request on a connection with the next script: a list of (delay s, bytes);
    ``None`` as bytes closes the connection."""

    def __init__(self, path: Path, scripts: list[list[tuple[float, bytes | None]]]) -> None:
        self.path, self.scripts = path, scripts
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.scripts:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                for delay, data in self.scripts.pop(0):
                    await asyncio.sleep(delay)
                    if data is None:
                        writer.close()
                        return
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nX-Cache: MISS\r\nTransfer-Encoding: chunked\r\n\r\n"
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def test_a_streamed_answer_is_handed_on_piece_by_piece_and_its_connection_kept(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    streamed = [(0, HEAD + b"4\r\npart"), (0.05, b"\r\n5\r\npart2\r\n"), (0.05, b"0\r\n\r\n")]
    async with Server(sock, [streamed, [(0, WHOLE)]]) as server:
        up = Upstream(sock, timeout_s=5)
        first, second = Sink(), Sink()
        await up.fetch("/o/x/media/s/t/tok/1.m4s", {"host": "edge", "x-amphi-client": "127.0.0.9"}, first)
        await up.fetch("/o/x/media/s/t/tok/live.m3u8", {"host": "edge"}, second)
        up.close()
    assert first.status == 200 and first.whole and b"".join(first.pieces) == b"partpart2"
    assert len(first.pieces) >= 2  # as the bytes came, not at the end
    assert (b"X-Cache", b"MISS") in first.headers  # as Varnish wrote them
    assert second.status == 200 and second.whole and second.pieces == [b"hello"]
    assert server.connections == 1  # kept alive
    assert server.requests[0].startswith(b"GET /o/x/media/s/t/tok/1.m4s HTTP/1.1\r\n")
    assert b"x-amphi-client: 127.0.0.9\r\n" in server.requests[0]


async def test_a_connection_varnish_closed_while_idle_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    async with Server(sock, [[(0, WHOLE)], [(0, None)], [(0, WHOLE)]]) as server:
        up = Upstream(sock, timeout_s=5)
        await up.fetch("/a", {"host": "edge"}, Sink())
        again = Sink()
        await up.fetch("/b", {"host": "edge"}, again)  # the kept connection closes unanswered: a new one
        up.close()
    assert again.whole and again.pieces == [b"hello"]
    assert server.connections == 2


@pytest.mark.parametrize("script, why", [
    ([(0, HEAD + b"4\r\npart"), (0, None)], "cut inside the body"),
    ([(0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), (0, None)], "shorter than its length"),
    ([(0, b"not http at all\r\n\r\n")], "not HTTP"),
    ([(0, HEAD + b"zz\r\n")], "a malformed chunk"),
    ([(0, HEAD + b"4\r\npart"), (2.0, b"\r\n0\r\n\r\n")], "silent past the timeout"),
    ([(0, None)], "closed before an answer"),
])
async def test_a_broken_answer_is_an_upstream_error(tmp_path: Path, script: list[tuple[float, bytes | None]],
                                                    why: str) -> None:
    sock = tmp_path / "v.sock"
    async with Server(sock, [script]):
        up = Upstream(sock, timeout_s=0.5)
        sink = Sink()
        with pytest.raises(UpstreamError):
            await up.fetch("/x", {"host": "edge"}, sink)
        assert not sink.whole, why
        assert not up._idle  # a broken connection is not kept


async def test_no_varnish_is_an_upstream_error(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError, match="cannot connect"):
        await Upstream(tmp_path / "absent.sock", timeout_s=1).fetch("/x", {"host": "edge"}, Sink())
