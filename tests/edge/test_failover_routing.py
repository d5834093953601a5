"""An edge finds a Space's host by itself (issue 19; docs/edge.md, "When a node dies"): a real
Varnish with the rendered VCL in front of stand-in nodes of this test's own, which answer as
nodes do: the media, or 421 + ``x-amphi-host`` (not the host: it names the one that is), or
503 + ``Retry-After`` (a take-over under way), or nothing at all (closed)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from amphi.control.tokens import Signer, new_seat_id
from amphi.edge.varnish import Edge
from amphi.edge.vcl import Backend, EdgeSpec
from tests.integration.amphi_proc import free_port, wait_until

SECRET = "f" * 48


@dataclass
class Node:
    """A stand-in node on 127.0.0.1: answers ``/api/node`` (the edge's probe) and
    ``/media/<space>/edge/<file>`` as ``spaces[space]`` says: "serve", "421:<node>" (not the
    host, naming it), "421" (naming nobody), "503" (a take-over); else 404. Every media request
    is logged as (space, file)."""

    name: str
    port: int = field(default_factory=free_port)
    spaces: dict[str, str] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def start(self) -> Node:
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._running = asyncio.Event()  # cleared: the node answers nothing (SIGSTOP)
        self._running.set()
        started = threading.Event()

        async def main() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            started.set()

        self._thread = threading.Thread(target=self._run, args=(main,), daemon=True)
        self._thread.start()
        assert started.wait(10), f"node {self.name} did not start"
        return self

    def _run(self, main) -> None:  # type: ignore[no-untyped-def]
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(main())
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:  # keep-alive: Varnish reuses its backend connections
                head = await reader.readuntil(b"\r\n\r\n")
                await self._running.wait()
                path = head.split(b" ", 2)[1].decode()
                status, headers, body = self._answer(path)
                lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *headers, "", ""]
                writer.write("\r\n".join(lines).encode() + body)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in head.lower():  # the probe's: it reads to the end
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, path: str) -> tuple[int, list[str], bytes]:
        if path == "/api/node":
            return 200, ["content-type: application/json"], b"{}"
        parts = path.split("/")  # "", "media", space, "edge", file
        if len(parts) != 5 or parts[1] != "media" or parts[3] != "edge":
            return 404, [], b"no such path"
        space, file = parts[2], parts[4]
        self.asked.append((space, file))
        how = self.spaces.get(space, "")
        if how == "serve":
            return 200, ["cache-control: max-age=60"], f"{self.name}:{space}:{file}".encode()
        if how.startswith("421"):
            named = how.partition(":")[2]
            return 421, [f"x-amphi-host: {named}"] if named else [], b'{"error": "misdirected"}'
        if how == "503":
            return 503, ["retry-after: 1"], b'{"error": "unavailable"}'
        return 404, [], b"no such Space"

    def asked_for(self, space: str) -> list[str]:
        return [f for s, f in self.asked if s == space]

    def stop(self, stopped: bool = True) -> None:
        """As SIGSTOP (or SIGCONT with ``stopped=False``): connections are taken, nothing is answered."""
        self._loop.call_soon_threadsafe(self._running.clear if stopped else self._running.set)

    def close(self) -> None:
        """Stops listening and drops its connections: the node's port refuses from now on."""

        async def down() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@dataclass
class Cluster:
    nodes: dict[str, Node]
    edge: Edge
    signer: Signer

    def url(self, node: str, space: str, file: str) -> str:
        token = self.signer.token(space, new_seat_id(), int(time.time()) + 600)
        return f"{self.edge.url}/o/{node}/media/{space}/t/{token}/{file}"

    def get(self, node: str, space: str, file: str) -> httpx.Response:
        return httpx.get(self.url(node, space, file), timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    nodes = {n: Node(n).start() for n in ("a", "b", "c")}
    spec = EdgeSpec.signed("e1", SECRET, tuple(Backend.parse(n, f"http://127.0.0.1:{x.port}") for n, x in nodes.items()),
                           max_connections_per_address=0, media_rate=0, join_rate=0)
    edge = Edge(spec, tmp_path_factory.mktemp("failover-edge"), "127.0.0.1", free_port(), streams=100)
    try:
        edge.start()
        cluster = Cluster(nodes, edge, Signer(SECRET.encode()))
        wait_until(lambda: all(edge_says_healthy(cluster, n) for n in nodes), 10, "the probes to find the nodes up")
        yield cluster
    finally:
        edge.stop()
        for n in nodes.values():
            n.close()


def test_a_421_is_followed_to_the_host_it_names_and_remembered(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    a.spaces["s1"], b.spaces["s1"] = "serve", "421:a"
    r = cluster.get("b", "s1", "live.m3u8")  # the listener's URL names b: it hosted the Space once
    assert r.status_code == 200 and r.content == b"a:s1:live.m3u8", (r.status_code, r.text)
    assert b.asked_for("s1") == ["live.m3u8"] and a.asked_for("s1") == ["live.m3u8"]
    # remembered: this Space's next files go straight to a, b is not asked again
    for file in ("1.m4s", "2.m4s", "init.mp4"):
        r = cluster.get("b", "s1", file)
        assert r.status_code == 200 and r.content == f"a:s1:{file}".encode(), (file, r.status_code, r.text)
    assert b.asked_for("s1") == ["live.m3u8"]
    assert a.asked_for("s1") == ["live.m3u8", "1.m4s", "2.m4s", "init.mp4"]
    # one object per (space, file) whichever node the URL names: a listener whose URL names a
    # has the copy b's listeners were served
    r = cluster.get("a", "s1", "1.m4s")
    assert r.status_code == 200 and r.headers["x-cache"] == "hit" and r.content == b"a:s1:1.m4s"
    # the host moves on (a drain to c): a answers 421 naming c, which is followed and remembered
    a.spaces["s1"], cluster.nodes["c"].spaces["s1"] = "421:c", "serve"
    assert cluster.get("b", "s1", "3.m4s").content == b"c:s1:3.m4s"
    assert cluster.get("b", "s1", "4.m4s").content == b"c:s1:4.m4s"
    assert a.asked_for("s1")[-1] == "3.m4s" and b.asked_for("s1") == ["live.m3u8"]
    assert cluster.nodes["c"].asked_for("s1") == ["3.m4s", "4.m4s"]


def test_a_421_never_reaches_a_client_nor_the_cache(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    a.spaces["s2"] = "421"  # naming nobody; b and c know nothing of s2 (404)
    r = cluster.get("a", "s2", "live.m3u8")
    assert r.status_code == 404 and b.asked_for("s2") == ["live.m3u8"], (r.status_code, b.asked)
    # a 421 naming a node this edge does not know, and no other origin left to ask: a 503
    a.spaces["s3"], b.spaces["s3"], cluster.nodes["c"].spaces["s3"] = "421:zz", "421", "421"
    r = cluster.get("a", "s3", "5.m4s")
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["cache-control"] == "no-store"
    assert [n.asked_for("s3") for n in cluster.nodes.values()] == [["5.m4s"]] * 3
    # the host comes (a take-over done): the same file is fetched again, nothing of the 421 kept
    a.spaces["s3"] = "serve"
    r = wait_until(lambda: (x := cluster.get("a", "s3", "5.m4s")).status_code == 200 and x, 5, "a 200 after the 503")
    assert r.content == b"a:s3:5.m4s"


@pytest.mark.serial
def test_two_nodes_naming_each_other_end_in_a_quick_503(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in "abc")
    a.spaces["s4"], b.spaces["s4"], c.spaces["s4"] = "421:b", "421:a", "421:a"
    t0 = time.monotonic()
    r = cluster.get("b", "s4", "live.m3u8")
    took = time.monotonic() - t0
    assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.text)
    assert took < 2.0, took
    assert [n.asked_for("s4") for n in (a, b, c)] == [["live.m3u8"]] * 3  # each once, c as the last not asked


def test_a_take_over_503_is_asked_of_another_origin_and_else_passed_on(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in "abc")
    a.spaces["s5"], b.spaces["s5"] = "503", "serve"  # b is about to take over and holds, then serves
    r = cluster.get("a", "s5", "live.m3u8")
    assert r.status_code == 200 and r.content == b"b:s5:live.m3u8"
    a.spaces["s6"], b.spaces["s6"], c.spaces["s6"] = "503", "503", "503"  # nobody hosts it yet
    r = cluster.get("a", "s6", "live.m3u8")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert [n.asked_for("s6") for n in (a, b, c)] == [["live.m3u8"]] * 3


@pytest.mark.serial
def test_a_stopped_node_is_found_down_by_the_probe_within_two_seconds(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in "abc")
    a.spaces["s8"], b.spaces["s8"], c.spaces["s8"] = "421:b", "serve", "serve"
    try:
        c.stop()  # its connections are taken and never answered: no fetch error, only the probe can tell
        t0 = time.monotonic()
        wait_until(lambda: not edge_says_healthy(cluster, "c"), 5, "the probe to mark c down", interval=0.02)
        assert time.monotonic() - t0 < 2.5  # 0.9-1.8 s (EdgeSpec.probe_interval_s), and the asking
        t0 = time.monotonic()
        r = cluster.get("c", "s8", "1.m4s")  # the URL names c: asked of a (421 naming b), then b
        assert r.status_code == 200 and r.content == b"b:s8:1.m4s" and time.monotonic() - t0 < 1.0
    finally:
        c.stop(False)
    wait_until(lambda: edge_says_healthy(cluster, "c"), 5, "the probe to find c up again")


def test_a_node_that_refuses_connections_is_passed_over(cluster: Cluster) -> None:
    """Last: c is closed for good (the module's edge keeps probing it as down)."""
    a, b, c = (cluster.nodes[n] for n in "abc")
    wait_until(lambda: edge_says_healthy(cluster, "c"), 5, "the probe to find c up")
    c.spaces["s7"] = "serve"
    assert cluster.get("c", "s7", "1.m4s").content == b"c:s7:1.m4s"
    c.close()  # kill -9: its port refuses
    a.spaces["s7"], b.spaces["s7"] = "421:b", "serve"  # b took the Space over
    r = cluster.get("c", "s7", "2.m4s")  # before or after the probe says c is down: b's bytes
    assert r.status_code == 200 and r.content == b"b:s7:2.m4s", (r.status_code, r.text)
    assert cluster.get("c", "s7", "1.m4s").content == b"c:s7:1.m4s"  # the old host's copy, kept
    # the probe has it down within about 1.5 s: a URL naming c goes to an origin that is up
    wait_until(lambda: not edge_says_healthy(cluster, "c"), 5, "the probe to mark c down")
    assert edge_says_healthy(cluster, "a") and edge_says_healthy(cluster, "b")
    assert cluster.get("c", "s7", "3.m4s").content == b"b:s7:3.m4s"


def edge_says_healthy(cluster: Cluster, node: str) -> bool:
    import subprocess

    out = subprocess.run(["varnishadm", "-n", str(cluster.edge.workdir / "varnish"), "backend.list"],
                         capture_output=True, text=True, timeout=10).stdout
    line = next(x for x in out.splitlines() if f".o_{node} " in x)
    return "healthy" in line and "sick" not in line
