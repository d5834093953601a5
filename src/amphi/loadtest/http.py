"""A lean HTTP/1.1 keep-alive client on a raw asyncio Protocol: the load test's hot path.

One ``Connection`` is one TCP connection carrying one request at a time, as a player's
connection does. Responses are framed by Content-Length or chunked encoding; ``stream``
reads an endless body (an Icecast mount) and hands each chunk's size to a callback;
``request(..., on_body=f)`` hands a 2xx body to ``f`` piece by piece as it arrives (a segment
the server streams while it is being made, chunked) and returns once it has ended, the
connection ready for the next request. A request on a connection that was idle and has been
closed by the server is retried once on a new connection, as browsers do.

Errors (all ``HttpError``, with ``kind`` for the error table):

    HttpError
     ├── ConnectFailed   kind "connect_refused" | "connect_error" | "connect_timeout" | "tls_error"
     ├── Timeout         kind "timeout"         (no whole response in time)
     └── Disconnected    kind "reset"           (the server closed or reset mid-response)
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable


class HttpError(Exception):
    kind = "http_error"
    started = False  # the answer had begun: a streamed body is not asked for again blindly


class ConnectFailed(HttpError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Timeout(HttpError):
    kind = "timeout"


class Disconnected(HttpError):
    kind = "reset"


class Response:
    """``head``: the header lines as received (after the status line); ``headers`` parses them
    the first time it is read: most answers are only ever looked at for their status and body."""

    __slots__ = ("status", "head", "body", "_headers")

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status = status
        self.head = head
        self.body = body
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; the last value of a repeated header."""
        if self._headers is None:
            self._headers = _parse_headers(self.head)
        return self._headers


def _parse_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return headers


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case, with its colon) in a lower-cased header block
    that starts with CRLF; the first one if repeated."""
    i = lower_head.find(b"\r\n" + name)
    if i < 0:
        return None
    start = i + 2 + len(name)
    end = lower_head.find(b"\r\n", start)
    return lower_head[start:end if end >= 0 else len(lower_head)].strip()


_HEADERS_END = b"\r\n\r\n"


class ChunkDecoder:
    """HTTP/1.1 chunked transfer coding, decoded as it arrives (RFC 9112 7.1). Pure.

    ``feed`` returns the body bytes in what it was given and whether the body has ended (the
    last chunk and the trailer section are in); bytes after the end are left alone."""

    __slots__ = ("_line", "_left", "_state", "done")

    SIZE, DATA, DATA_END, TRAILER = range(4)
    MAX_LINE = 4096  # a chunk-size line (with extensions) or trailer line longer than this is an error

    def __init__(self) -> None:
        self._line = bytearray()  # a size or trailer line while it arrives
        self._left = 0  # bytes of the current chunk's data still to come (DATA), or of its CRLF (DATA_END)
        self._state = self.SIZE
        self.done = False

    def feed(self, data: bytes | bytearray) -> tuple[list[bytes], bool]:
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n and not self.done:
            if self._state == self.DATA:
                take = min(self._left, n - pos)
                out.append(bytes(data[pos:pos + take]))
                pos += take
                self._left -= take
                if not self._left:
                    self._state, self._left = self.DATA_END, 2
            elif self._state == self.DATA_END:
                take = min(self._left, n - pos)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self.SIZE
            else:  # a line: a chunk's size, or one of the trailer section
                eol = data.find(b"\n", pos)
                end = n if eol < 0 else eol + 1
                self._line += data[pos:end]
                pos = end
                if len(self._line) > self.MAX_LINE:
                    raise Disconnected("chunked body: a line too long")
                if eol < 0:
                    break
                line = bytes(self._line).strip()
                self._line.clear()
                if self._state == self.TRAILER:
                    self.done = not line
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise Disconnected(f"chunked body: bad chunk size {line[:40]!r}") from None
                if size:
                    self._state, self._left = self.DATA, size
                else:
                    self._state = self.TRAILER
        return out, self.done


class _Protocol(asyncio.Protocol):
    """Parses one response at a time into ``waiter``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.on_data: Callable[[int], None] | None = None  # streaming: body bytes go here
        self.on_body: Callable[[bytes], None] | None = None  # a 2xx body, piece by piece, as it arrives
        self.body_left = 0  # streamed body with Content-Length: bytes still to come
        self.chunks: ChunkDecoder | None = None  # streamed chunked body
        self.streaming = False  # the current response's body goes to on_body
        self.status = 0
        self.head: bytes | None = None  # the current response's header lines, once they are in
        self.close_after = False  # the current response says "Connection: close"
        self.length = -1  # -1: unknown (read to close), -2: chunked
        self.closed = False
        self.got_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            if self.head is not None and self.length == -1 and self.on_data is None:
                # body ended by close
                w.set_result(Response(self.status, self.head, b"" if self.streaming else bytes(self.buf)))
            else:
                w.set_exception(Disconnected(f"connection closed: {exc or 'by the server'}"))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.head is not None and self.on_data is not None:
            self.on_data(len(data))
            return
        if self.streaming:
            self._body(data)
            return
        self.buf += data
        self._parse()

    def _body(self, data: bytes | bytearray) -> None:
        """A piece of a streamed body: to ``on_body``; the response is done at its end."""
        w = self.waiter
        if w is None or w.done() or self.on_body is None:
            return
        try:
            if self.chunks is not None:
                pieces, done = self.chunks.feed(data)
                for piece in pieces:
                    self.on_body(piece)
            elif self.length >= 0:
                piece = data[:self.body_left]
                self.body_left -= len(piece)
                if piece:
                    self.on_body(bytes(piece))
                done = not self.body_left
            else:  # to the close
                self.on_body(bytes(data))
                done = False
        except Exception as e:  # noqa: BLE001 - the caller's error (or bad framing) ends the request
            w.set_exception(e)
            return
        if done:
            self.streaming = False
            w.set_result(Response(self.status, self.head or b"", b""))

    def _parse(self) -> None:
        w = self.waiter
        if w is None or w.done():
            return
        if self.head is None:
            end = self.buf.find(_HEADERS_END)
            if end < 0:
                return
            eol = self.buf.find(b"\r\n", 0, end)
            status_line = bytes(self.buf[:eol if eol >= 0 else end])
            head = bytes(self.buf[eol:end]) if eol >= 0 else b""  # starts with CRLF: every name follows one
            del self.buf[:end + 4]
            try:
                self.status = int(status_line.split(b" ", 2)[1])
            except (IndexError, ValueError):
                w.set_exception(Disconnected(f"bad status line {status_line[:80]!r}"))
                return
            self.head = head
            lower = head.lower()
            self.close_after = _header(lower, b"connection:") == b"close"
            length = _header(lower, b"content-length:")
            if length is not None:
                try:
                    self.length = int(length)
                except ValueError:
                    w.set_exception(Disconnected(f"bad Content-Length {length[:40]!r}"))
                    return
            elif _header(lower, b"transfer-encoding:") == b"chunked":
                self.length = -2
            elif self.status in (204, 304) or 100 <= self.status < 200:
                self.length = 0
            else:
                self.length = -1
            if self.on_data is not None:  # streaming: the body is not kept
                w.set_result(Response(self.status, head, b""))
                if self.buf:
                    self.on_data(len(self.buf))
                    self.buf.clear()
                return
            if self.on_body is not None and 200 <= self.status < 300 and self.length != 0:
                self.streaming = True
                self.chunks = ChunkDecoder() if self.length == -2 else None
                self.body_left = self.length
                rest = bytes(self.buf)
                self.buf.clear()
                if rest:
                    self._body(rest)
                return
        if self.length >= 0:
            if len(self.buf) >= self.length:
                body = bytes(self.buf[:self.length])
                del self.buf[:self.length]
                w.set_result(Response(self.status, self.head, body))
        elif self.length == -2:
            body = _dechunk(self.buf)
            if body is not None:
                w.set_result(Response(self.status, self.head, body))


def _dechunk(buf: bytearray) -> bytes | None:
    """The whole body if ``buf`` holds every chunk (then consumed), else None."""
    out = bytearray()
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        start = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # no trailers expected: "0\r\n\r\n"
            if end < 0:
                return None
            del buf[:end + 4]
            return bytes(out)
        if len(buf) < start + size + 2:
            return None
        out += buf[start:start + size]
        pos = start + size + 2


class Connection:
    """One keep-alive connection to ``host:port``; reconnects by itself when closed.

    Lifecycle: idle -> busy (one request) -> idle ...; ``close()`` at any time; a later
    request opens a new TCP connection."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0, source: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls  # https: the context that verifies the server (``Tls.context``)
        self.source = source  # the local address to connect from (a client of its own on 127.0.0.0/8)
        self.connect_timeout_s = connect_timeout_s
        self._p: _Protocol | None = None
        self._host_header = f"{host}:{port}".encode()
        self.requests = 0
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._p is not None and not self._p.closed

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, p = await loop.create_connection(_Protocol, self.host, self.port,
                                                    local_addr=(self.source, 0) if self.source else None,
                                                    ssl=self.tls, server_hostname=self.host if self.tls else None)
        except TimeoutError:
            raise ConnectFailed("connect_timeout", f"no connection to {self.host}:{self.port} in "
                                f"{self.connect_timeout_s:g} s") from None
        except ConnectionRefusedError as e:
            raise ConnectFailed("connect_refused", str(e)) from None
        except ssl.SSLError as e:  # a certificate not trusted (--ca-file), a handshake refused
            raise ConnectFailed("tls_error", f"{type(e).__name__}: {e}") from None
        except OSError as e:
            raise ConnectFailed("connect_error", f"{type(e).__name__}: {e}") from None
        self.connects += 1
        self._p = p
        return p

    def close(self) -> None:
        p, self._p = self._p, None
        if p is not None and p.transport is not None:
            p.transport.abort()

    async def request(self, method: str, target: str, body: bytes | None = None, *,
                      timeout_s: float = 10.0, content_type: bytes = b"application/json",
                      retry: bool = True, on_body: Callable[[bytes], None] | None = None) -> Response:
        """Sends one request and returns the whole response. ``target`` is the path and query.

        With ``on_body``, a 2xx answer's body goes to it as it arrives (the response's ``body``
        stays empty), and ``timeout_s`` bounds each wait for more of it rather than the whole:
        a streamed segment lasts as long as the segment. An exception ``on_body`` raises ends
        the request (the connection is closed) and is raised here."""
        reused = self.connected
        try:
            return await self._exchange(method, target, body, timeout_s, content_type, None, on_body)
        except Disconnected as e:
            if not reused or not retry or (on_body is not None and e.started):
                raise
            # the server closed the idle connection just as we reused it: once more, new connection
            return await self._exchange(method, target, body, timeout_s, content_type, None, on_body)

    async def stream(self, target: str, on_data: Callable[[int], None], *, timeout_s: float = 10.0) -> Response:
        """GET with an endless body: returns once the headers are in; the body's sizes go to
        ``on_data`` until the connection closes (``wait_closed``)."""
        return await self._exchange("GET", target, None, timeout_s, b"", on_data)

    async def wait_closed(self) -> None:
        while self.connected:
            assert self._p is not None
            fut = asyncio.get_running_loop().create_future()
            self._p.waiter = fut
            try:
                await fut
            except HttpError:
                pass
        self._p = None

    async def _exchange(self, method: str, target: str, body: bytes | None, timeout_s: float,
                        content_type: bytes, on_data: Callable[[int], None] | None,
                        on_body: Callable[[bytes], None] | None = None) -> Response:
        p = self._p if self.connected else await self._connect()
        assert p is not None and p.transport is not None
        p.head = None
        p.close_after = False
        p.buf.clear()
        p.on_data = on_data
        p.on_body = on_body
        p.streaming = False
        p.chunks = None
        p.got_bytes = False
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: amphi-loadtest\r\n" % (
            method.encode(), target.encode(), self._host_header)
        if body is not None:
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        p.waiter = fut
        p.transport.write(head + b"\r\n" + (body or b""))
        self.requests += 1
        # a timer handle, not asyncio.timeout(): the same deadline for less work, on the one
        # path every request of a 10k-listener run takes
        if on_body is None:
            timer: asyncio.TimerHandle | _IdleTimer = loop.call_later(timeout_s, _time_out, fut, method, target,
                                                                      timeout_s)
        else:
            timer = _IdleTimer(loop, p, fut, f"{method} {target[:80]}", timeout_s)
        try:
            resp = await fut
        except asyncio.CancelledError:
            self.close()  # an answer may still come: this connection's framing is lost
            raise
        except HttpError as e:
            e.started = p.head is not None
            self.close()
            raise
        except Exception:  # on_body's own error, mid-response: the framing is lost
            self.close()
            raise
        finally:
            timer.cancel()
            p.waiter = None
            p.on_body = None
        if on_data is None and p.close_after:  # read from the header block once, in _parse
            self.close()
        return resp


def _time_out(fut: asyncio.Future[Response], method: str, target: str, timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(Timeout(f"{method} {target[:80]}: no response in {timeout_s:g} s"))


class _IdleTimer:
    """A streamed response's deadline: a ``Timeout`` once ``timeout_s`` pass with no byte received
    (checked once per period, so it costs one timer handle per period, not one per piece)."""

    __slots__ = ("loop", "p", "fut", "what", "timeout_s", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, p: _Protocol, fut: asyncio.Future[Response], what: str,
                 timeout_s: float) -> None:
        self.loop, self.p, self.fut, self.what, self.timeout_s = loop, p, fut, what, timeout_s
        self.handle = loop.call_later(timeout_s, self._check)

    def _check(self) -> None:
        if self.fut.done():
            return
        if self.p.got_bytes:
            self.p.got_bytes = False
            self.handle = self.loop.call_later(self.timeout_s, self._check)
            return
        self.fut.set_exception(Timeout(f"{self.what}: nothing received for {self.timeout_s:g} s"))

    def cancel(self) -> None:
        self.handle.cancel()


def loopback_source(rng: random.Random, second_octets: tuple[int, int] = (1, 63)) -> str:
    """A random address in 127.<a..b>.0.0/16s: on Linux all of 127.0.0.0/8 is the loopback
    interface, so a client bound to one of them stands for a client of its own."""
    return f"127.{rng.randint(*second_octets)}.{rng.randrange(256)}.{rng.randint(1, 254)}"


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host == "localhost"


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/path?q`` (or https) -> (host, port, "/path?q")."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"only http:// and https:// URLs are supported: {url!r}")
    hostport, slash, path = rest.partition("/")
    default = "443" if scheme == "https" else "80"
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", default)
    return host, int(port), "/" + path if slash else "/"


def absolute(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class Tls:
    """Which servers speak https, learnt from the URLs a listener is given (the node's, its
    edges'), and the one context that verifies them all: ``ca_file`` alone if given, else the
    system's store (``SSL_CERT_FILE`` if set). One per process (a context is not picklable)."""

    def __init__(self, ca_file: str | None = None) -> None:
        self.ca_file = ca_file
        self.secure: set[tuple[str, int]] = set()
        self._ctx: ssl.SSLContext | None = None

    def split(self, url: str) -> tuple[str, int, str]:
        """``split_url``, remembering an https server."""
        host, port, path = split_url(url)
        if url.startswith("https://"):
            self.secure.add((host, port))
        return host, port, path

    def context(self, host: str, port: int) -> ssl.SSLContext | None:
        if (host, port) not in self.secure:
            return None
        if self._ctx is None:
            from amphi.core.tls import client_context

            self._ctx = client_context(self.ca_file)
        return self._ctx
