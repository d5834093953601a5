"""Test clients for streamed segments (docs/edge.md, "Streamed segments"): a raw HTTP/1.1 GET
that notes when each byte of the body arrives, and the parsing around it (pure)."""

from __future__ import annotations

import asyncio
import bisect
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PART = re.compile(r'#EXT-X-PART:.*URI="(\d+)\.m4s",BYTERANGE="(\d+)@(\d+)"')
HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="(\d+)\.m4s",BYTERANGE-START=(\d+)')


@dataclass
class Answer:
    """One GET: its status line, headers, body, and when the body's bytes came (monotonic
    seconds at which the body first held ``ends[i]`` bytes: ``arrivals[i]``)."""

    started: float
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    ends: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    complete: bool = False  # a chunked body ended with its last chunk, or a length body had it all

    def arrived(self, offset: int) -> float:
        """When the body's byte ``offset`` had come."""
        return self.arrivals[bisect.bisect_right(self.ends, offset)]


def parts_of(playlist: str, msn: int) -> list[tuple[int, int]]:
    """The (offset, length) of each part of segment ``msn`` that the playlist lists."""
    return [(int(m[3]), int(m[2])) for m in PART.finditer(playlist) if int(m[1]) == msn]


def hint(playlist: str) -> tuple[int, int] | None:
    """The preload hint: (msn, byte offset in it); None between segments (the origin hints a
    part only inside a segment that has begun)."""
    m = HINT.search(playlist)
    return (int(m[1]), int(m[2])) if m else None


def open_msn(playlist: str) -> int:
    """The segment being made, or the next one if none is: the hinted one, else the one after
    the last listed."""
    if (h := hint(playlist)) is not None:
        return h[0]
    return max(int(line[:-4]) for line in playlist.splitlines() if line.endswith(".m4s") and not line.startswith("#")) + 1


def boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """The top-level ISO BMFF boxes of ``data``: (type, offset, size)."""
    out, at = [], 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        assert size >= 8, (at, size)
        out.append((kind, at, size))
        at += size
    assert at == len(data), "a truncated box"
    return out


def part_ends(segment: bytes) -> list[int]:
    """The offset of the last byte of each part (one moof + mdat) of a segment."""
    found = boxes(segment)
    assert [k for k, _, _ in found] == [b"moof", b"mdat"] * (len(found) // 2), [k for k, _, _ in found]
    return [at + size - 1 for kind, at, size in found if kind == b"mdat"]


class _Dechunker:
    """Incremental HTTP/1.1 chunked decoding."""

    def __init__(self) -> None:
        self.raw = b""
        self.body = bytearray()
        self.done = False

    def feed(self, data: bytes) -> None:
        self.raw += data
        while not self.done:
            line_end = self.raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.raw[:line_end].split(b";")[0], 16)
            if size == 0:
                if self.raw.find(b"\r\n\r\n", line_end) < 0 and not self.raw[line_end:].startswith(b"\r\n\r\n"):
                    return
                self.done = True
                return
            if len(self.raw) < line_end + 2 + size + 2:
                return
            self.body += self.raw[line_end + 2:line_end + 2 + size]
            self.raw = self.raw[line_end + 2 + size + 2:]


async def get(url: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None,
              timeout: float = 20.0) -> Answer:
    """GETs ``url`` from the address ``source`` on a connection of its own, noting when each
    piece of the body arrives."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, local_addr=(source, 0))
    answer = Answer(started=time.monotonic())
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}Connection: close\r\n\r\n".encode())
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            answer.status = int(lines[0].split()[1])
            answer.headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            chunked = answer.headers.get("transfer-encoding", "").lower() == "chunked"
            length = None if chunked else int(answer.headers.get("content-length", "0"))
            decoder = _Dechunker()
            body = bytearray()
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                if not data:
                    break
                if chunked:
                    decoder.feed(data)
                    body = decoder.body
                else:
                    body += data
                if not answer.ends or len(body) > answer.ends[-1]:
                    answer.ends.append(len(body))
                    answer.arrivals.append(now)
                if (chunked and decoder.done) or (length is not None and len(body) >= length):
                    break
            answer.body = bytes(body)
            answer.complete = decoder.done if chunked else len(body) == length
    finally:
        writer.close()
    return answer
