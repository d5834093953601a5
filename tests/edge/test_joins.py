"""Joins batched at the edge (edge/joins.py, docs/admission.md "Joins batched at the edge"):
the pure batcher, the node's batch endpoint, and real edges (Varnish, nginx, the fan-out)
in front of a real node."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from amphi.control.tokens import Signer
from amphi.edge.joins import WINDOW_S, Join, JoinBatcher
from tests.edge.conftest import SECRET, Tier
from tests.edge.edges import EdgeProc
from tests.integration.amphi_proc import BIN, AmphiServer, free_port, stop_group, wait_until


def _join(n: int = 0) -> Join:
    return Join("space", f"10.0.0.{n}", b"{}", None, 100)


def test_a_lone_join_goes_at_once_and_a_crowd_goes_one_batch_a_window() -> None:
    b = JoinBatcher(window_s=0.1, max_batch=3, max_pending=5)
    assert b.wait_s(10.0) is None  # nothing waits
    assert b.add(_join())
    assert b.wait_s(10.0) == 0.0  # no batch went for a window: at once
    assert len(b.take(10.0)) == 1 and b.in_flight == 1
    assert b.add(_join(1)) and b.add(_join(2))
    assert b.wait_s(10.02) == pytest.approx(0.08)  # gathered until the window has passed
    assert b.add(_join(3))
    assert b.wait_s(10.02) == 0.0  # a full batch goes at once
    assert [j.address for j in b.take(10.02)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # in order
    b.answered()
    assert b.in_flight == 1 and b.batches == 2


def test_the_batcher_refuses_past_its_bound_and_says_so() -> None:
    b = JoinBatcher(window_s=0.1, max_batch=2, max_pending=3)
    assert all(b.add(_join(n)) for n in range(3))
    assert not b.add(_join(9))
    assert b.stats()["joins_refused"] == 1 and b.stats()["joins_pending"] == 3
    assert len(b.take(0.0)) == 2 and len(b.pending) == 1  # at most max_batch a request


def test_the_batch_endpoint_needs_an_edges_credential_and_a_well_formed_batch(tier: Tier) -> None:
    url = f"{tier.origin.url}/api/edge/joins"
    good = {"x-amphi-edge": Signer(SECRET.encode()).edge_credential("edge1")}
    batch = {"joins": [[tier.space, "10.9.0.1", "{}", None, 100]]}
    assert httpx.post(url, json=batch, timeout=10).status_code == 403
    assert httpx.post(url, json=batch, headers={"x-amphi-edge": "edge1.AAAAAAAAAAAAAAAAAAAAAA"}, timeout=10).status_code == 403
    for bad in ({"joins": "x"}, {"joins": [[tier.space, "10.9.0.1", "{}"]]}, {"joins": [["../x", "a", "{}", None, 1]]},
                {"joins": [[tier.space, "10.9.0.1", {}, None, 100]]}):
        r = httpx.post(url, json=bad, headers=good, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == "malformed_body", (bad, r.text)
    # each client's own errors are its own: a bad body, a Space that does not exist, a header too large
    rows = [[tier.space, "10.9.0.2", "{}", None, 100], [tier.space, "10.9.0.3", "not json", None, 100],
            ["nosuchspace", "10.9.0.4", "{}", None, 100], [tier.space, "10.9.0.5", "{}", None, 10**6],
            [tier.space, "10.9.0.6", "{}", "Bearer wrong", 100]]
    r = httpx.post(url, json={"joins": rows}, headers=good, timeout=10)
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    assert [a[0] for a in answers] == [answers[0][0], 400, 404, 431, 403] and answers[0][0] in (200, 202), answers
    assert answers[1][2]["error"] == "malformed_body"
    assert answers[0][2]["status"] in ("admitted", "waiting")


async def _post_all(port: int, requests: list[tuple[str, bytes]]) -> list[tuple[int, dict[str, str], bytes]]:
    """Opens one connection per request (from its own loopback address), then writes every
    request at once, then reads each answer (status, headers, body)."""
    conns = []
    for k, (_, _) in enumerate(requests):
        conns.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.{20 + k}.0.1", 0)))
    for (reader, writer), (path, body) in zip(conns, requests):
        writer.write(b"POST %b HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (path.encode(), len(body), body))
    out = []
    for reader, writer in conns:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        out.append((int(lines[0].split(" ")[1]), headers, await reader.readexactly(int(headers["content-length"]))))
        writer.close()
    return out


def test_joins_through_an_edge_reach_the_node_a_batch_at_a_time(tier: Tier) -> None:
    """Thirty clients join through one edge at once: each gets its own answer (one with a bad
    body its own 400), in fewer requests to the node than joins, at most one a window."""
    edge = tier.edges[2]
    before = edge.fanout()
    path = f"/api/spaces/{tier.space}/join"
    requests = [(path, b"{}") for _ in range(29)] + [(path, b"{not json")]
    started = time.monotonic()
    answers = asyncio.run(_post_all(edge.port, requests))
    elapsed = time.monotonic() - started
    after = edge.fanout()
    for status, headers, body in answers[:-1]:
        doc = json.loads(body)
        assert status in (200, 202) and doc["status"] in ("admitted", "waiting"), (status, body)
        assert headers["x-edge-batch"] == "1" and headers["x-edge"] == edge.name and headers["cache-control"] == "no-store"
        if status == 202:
            assert int(headers["retry-after"]) >= 1 and doc["place"] >= 0
    tokens = [json.loads(b).get("token") or json.loads(b)["ticket"] for _, _, b in answers[:-1]]
    assert len(set(tokens)) == 29  # every client its own seat or place
    status, _, body = answers[-1]
    assert status == 400 and json.loads(body)["error"] == "malformed_body"
    joins, batches = after["joins"] - before["joins"], after["join_batches"] - before["join_batches"]
    assert joins == 30, (before, after)
    assert batches < joins and batches <= 1 + math.ceil(elapsed / WINDOW_S), (batches, elapsed)
    assert after["join_errors"] == before["join_errors"]


def test_a_host_joins_through_the_edges_batch_with_its_key(tier: Tier) -> None:
    r = httpx.post(f"{tier.edges[2].url}/api/spaces/{tier.space}/join", json={},
                   headers={"authorization": f"Bearer {tier.key}"}, timeout=10)
    assert r.status_code == 200 and r.headers["x-edge-batch"] == "1", r.text
    assert r.json()["status"] == "admitted"
    r = httpx.post(f"{tier.edges[2].url}/api/spaces/{tier.space}/join", json={},
                   headers={"authorization": "Bearer not-the-key"}, timeout=10)
    assert r.status_code in (401, 403) and r.headers["x-edge-batch"] == "1", r.text


def test_an_edge_whose_nodes_do_not_answer_says_so_to_each_joining_client(tmp_path: Path) -> None:
    """A real fan-out whose Varnish socket nobody listens on: each join gets a 503 that says
    what happened, with a Retry-After; the fan-out stays up and answers the next one too."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    port = free_port()
    with open(tmp_path / "fanout.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "amphi.edge.fanout", "--internal", str(tmp_path / "in.sock"),
                                 "--public", f"127.0.0.1:{port}", "--upstream", str(tmp_path / "nobody.sock"),
                                 "--front", str(tmp_path / "nginx.sock"), "--secret-file", str(secret)],
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "fanout.log").read_text()
            return (tmp_path / "in.sock").exists()

        wait_until(up, 20, "the fan-out to listen")
        for _ in range(2):
            r = httpx.post(f"http://127.0.0.1:{port}/api/spaces/abcdefghijk/join", json={}, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert r.json() == {"error": "unavailable", "message": "no API node answered: try again"}
        assert "a batch of 1 joins got no answer" in (tmp_path / "fanout.log").read_text()
    finally:
        stop_group(proc, 10)


def test_loadtest_listeners_wait_and_play_through_an_edge_and_their_seats_free_when_they_vanish(tmp_path: Path) -> None:
    """`amphi loadtest` through a real edge into a full Space (token life 10 s): the line is
    waited by the line document, joins go in the edge's batches, tokens are renewed by the
    edge; then kill -9 of the load generator: every seat is free again within two token
    lives, with nothing to tell the node."""
    ttl = 10
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret").write_text(SECRET)
    port = free_port()
    origin = AmphiServer(data, None, "--token-ttl", str(ttl), "--seat-grace", "5", "--max-listeners", "12",
                         "--pow", "off", "--trusted-proxy", "127.0.0.1/32", "--edge", f"http://127.0.0.1:{port}").start()
    edge = gen = None
    try:
        edge = EdgeProc(tmp_path / "edge", "edge1", origin.url, data / "secret", "--token-ttl", str(ttl),
                        port=port).start()
        space, key = origin.create("vanish")
        origin.start_space(space, key)
        gen = subprocess.Popen([str(BIN), "loadtest", "--server", edge.url, "--space", space, "--listeners", "20",
                                "--ramp", "1", "--duration", "120", "--player", "segments", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: origin.status(space)["listeners"] == 12 and origin.status(space)["waiting"] == 8, 30,
                   "12 seated and 8 in line")
        wait_until(lambda: edge.fanout()["renewed"] >= 12 and edge.fanout()["reported"] >= 12, 3 * ttl,
                   f"the edge to renew and report the seats {edge.fanout()}")
        stats = edge.fanout()
        assert stats["joins"] >= 20 and stats["join_batches"] <= stats["joins"] and stats["join_errors"] == 0, stats
        os.killpg(gen.pid, signal.SIGKILL)  # every listener vanishes at once
        gen.wait(10)
        killed = time.monotonic()
        wait_until(lambda: origin.status(space)["listeners"] == 0, 2 * ttl + 5, "the vanished listeners' seats to free")
        assert time.monotonic() - killed <= 2 * ttl, time.monotonic() - killed
    finally:
        if gen is not None and gen.poll() is None:
            os.killpg(gen.pid, signal.SIGKILL)
        if edge is not None:
            edge.stop()
        origin.stop()


class _Raw:
    """One keep-alive connection to an edge, request by request (to know which connection asks)."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def ask(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        extra = b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body) if body is not None else b""
        self.s.sendall(b"%s %s HTTP/1.1\r\nhost: edge\r\n%b\r\n%b" % (method.encode(), path.encode(), extra, body or b""))
        while b"\r\n\r\n" not in self.buf:
            more = self.s.recv(65536)
            assert more, f"the edge closed the connection: {self.buf[:200]!r}"
            self.buf += more
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            more = self.s.recv(65536)
            assert more, "the edge closed the connection mid-answer"
            self.buf += more
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split(" ")[1]), headers, body


def test_a_connection_handed_to_nginx_still_joins_in_batches_and_is_renewed_at_the_edge(tier: Tier) -> None:
    """A browser's connection first loads the page (not media: the fan-out hands it to nginx for
    good); its join still goes in the edge's batch and its live playlist is still renewed at the
    edge past half the token's life, with no request to a node (nginx sends both back to the
    fan-out). A body too large, or a join read with GET, gets the usual answers."""
    edge = tier.edges[1]
    before = edge.fanout()
    page = _Raw(edge.port)
    try:
        status, _, _ = page.ask("GET", "/api/node")  # a page's first request: the connection is nginx's now
        assert status == 200 and edge.fanout()["tunnels"] > before["tunnels"]
        status, headers, body = page.ask("POST", f"/api/spaces/{tier.space}/join", b"{}")
        assert status == 200 and headers["x-edge-batch"] == "1", (status, headers, body)
        answer = json.loads(body)
        assert edge.fanout()["joins"] == before["joins"] + 1
        status, headers, body = page.ask("POST", f"/api/spaces/{tier.space}/join", b"{" + b" " * 5000 + b"}")
        assert status == 413 and json.loads(body)["error"] == "payload_too_large", (status, body)
        page.s.close()
        page = _Raw(edge.port)  # nginx closes a connection whose body it did not read
        page.ask("GET", "/api/node")
        status, _, body = page.ask("GET", f"/api/spaces/{tier.space}/join")
        assert status == 405, body  # the node's answer: a join is a POST
        live = answer["media_playlist"][answer["media_playlist"].index("/o/"):]
        expires = int(answer["token"].split(".")[1])

        def past_half_life() -> bool:
            assert page.ask("GET", "/api/node")[0] == 200  # the same connection, kept alive meanwhile
            return time.time() > expires - 5 + 0.2

        wait_until(past_half_life, 15, "the token to pass half its life (ttl 10 s)")
        renewed = edge.fanout()["renewed"]
        status, headers, _ = page.ask("GET", live)
        assert status == 307, headers
        new = headers["location"].split("/t/")[1].split("/")[0]
        assert new.split(".")[0] == answer["token"].split(".")[0] and int(new.split(".")[1]) > expires  # the same seat
        assert edge.fanout()["renewed"] == renewed + 1
        status, _, body = page.ask("GET", headers["location"])
        assert status == 200 and b"#EXTM3U" in body
    finally:
        page.s.close()
