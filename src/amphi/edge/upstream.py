"""The fan-out's fetches from Varnish: one GET on a kept-alive Unix-socket connection, its
answer handed on piece by piece as it arrives.

httpx (with httpcore and anyio under it) did this before. At 10,000 streaming listeners behind
one edge its machinery was about a tenth of each fan-out worker's CPU (py-spy, 2026-12-04: the
request's and each piece's timeouts, locks and pool bookkeeping; bench/side_by_side.py), for a
few fetches a second. Here h11 (the HTTP/1.1 parser under httpx) reads the answer, and this
module does only what the fan-out needs: no redirects, cookies, auth or decoding, a timeout
re-armed per read, and every piece a read brings handed on at once (two parts that arrive in
one read go out to the listeners as one write, and so do a segment's last part and its end,
which the origin sends together). The fan-out's rare POSTs (joins, renewals)
stay on httpx.

    fetch(target, headers, sink) -> None
        sink.began(status, [(name, value), ...])   once, the answer's header
        sink.piece(data)                           each read's body bytes
        sink.ended(last)                           the body is whole; last: the bytes that came with its end
    raises UpstreamError (a broken answer, a timeout, the socket gone): the sink is left as it was
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import h11

READ_SIZE = 1 << 16
MAX_IDLE = 64  # kept-alive connections to Varnish, at most


class UpstreamError(Exception):
    """The fetch broke off: refused, cut, timed out or malformed."""


class Sink(Protocol):
    def began(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def piece(self, data: bytes) -> None: ...

    def ended(self, last: bytes) -> None: ...


class Upstream:
    def __init__(self, path: Path, timeout_s: float, connect_timeout_s: float = 5.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s  # for the first byte, and between reads
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def fetch(self, target: str, headers: dict[str, str], sink: Sink) -> None:
        request = h11.Request(method="GET", target=target, headers=list(headers.items()))
        while self._idle:
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            try:
                return await self._exchange(reader, writer, request, sink)
            except _Stale:
                continue  # Varnish closed it while idle: another, or a new one
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=READ_SIZE)
        except (OSError, TimeoutError) as e:
            raise UpstreamError(f"cannot connect to {self.path}: {e}") from e
        try:
            await self._exchange(reader, writer, request, sink)
        except _Stale as e:
            raise UpstreamError("the connection closed before an answer") from e

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: h11.Request,
                        sink: Sink) -> None:
        conn = h11.Connection(h11.CLIENT)
        loop = asyncio.get_running_loop()
        begun = False
        try:
            writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
            async with asyncio.timeout(self.timeout_s) as deadline:
                while True:
                    pieces: list[bytes] = []
                    event = conn.next_event()
                    while event is not h11.NEED_DATA:
                        if isinstance(event, h11.Response):
                            begun = True
                            sink.began(event.status_code, event.headers.raw_items())
                        elif isinstance(event, h11.Data):
                            pieces.append(event.data)
                        elif isinstance(event, h11.EndOfMessage):
                            sink.ended(b"".join(pieces))
                            self._keep(conn, reader, writer)
                            return
                        elif isinstance(event, h11.ConnectionClosed):
                            raise h11.RemoteProtocolError("the connection closed inside the answer")
                        elif not isinstance(event, h11.InformationalResponse):
                            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
                        event = conn.next_event()
                    if pieces:
                        sink.piece(b"".join(pieces))
                    data = await reader.read(READ_SIZE)
                    if not data and not begun:
                        raise _Stale()
                    conn.receive_data(data)
                    deadline.reschedule(loop.time() + self.timeout_s)
        except (OSError, TimeoutError, h11.ProtocolError) as e:
            writer.close()
            if not begun and isinstance(e, ConnectionResetError):
                raise _Stale() from e
            raise UpstreamError(f"{type(e).__name__}: {e}") from e
        except BaseException:
            writer.close()  # stale, or cancelled (the fan-out let the file go) mid-answer: not kept
            raise

    def _keep(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and len(self._idle) < MAX_IDLE:
            self._idle.append((reader, writer))
        else:
            writer.close()

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class _Stale(Exception):
    """A kept-alive connection Varnish had closed: nothing was answered on it."""
