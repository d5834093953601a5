"""Calls about a Space hosted on another node are forwarded there (docs/cluster.md, "Calls
about a Space hosted elsewhere"), and ``amphi speak`` comes back by itself: two real
``amphi serve --redis`` nodes on one real redis-server, ``amphi speak`` processes, ffmpeg
as the listener that judges the program as audio."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import orjson
import pytest

from tests.integration.amphi_proc import AmphiServer, Speaker, wait_until
from tests.integration.test_room import A_HZ, B_HZ, band, live_audio

class Events:
    """A room's event stream read in a thread: every (event, data) as it comes."""

    def __init__(self, url: str, credential: str) -> None:
        self.got: list[tuple[str, dict]] = []
        self.status = 0
        self.ended = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self._thread = threading.Thread(target=self._read, args=(url, credential), daemon=True)
        self._thread.start()

    def _read(self, url: str, credential: str) -> None:
        try:
            with self._client.stream("GET", url, headers={"authorization": f"Bearer {credential}"}) as r:
                self.status = r.status_code
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind:
                        self.got.append((kind, orjson.loads(line[5:])))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        self._client.close()


def test_a_speaker_pointed_at_the_other_node_is_heard_and_the_host_acts_and_follows_the_room_through_it(
        node_pair) -> None:
    a, b = node_pair()
    space, key = a.create("hosted on a")
    a.start_space(space, key)
    wait_until(lambda: b.status(space)["state"] == "live", 5, "node b to see the Space live")

    # the host's calls through b: the stage session and the events stream, as a host page behind
    # an entry edge makes them; no 307 (a browser would drop the Authorization header)
    r = b.http.post(f"/api/spaces/{space}/stage/session", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    events = Events(f"{b.url}/api/spaces/{space}/events", key)
    try:
        bob, grant = b.on_stage(space, key, "Bob")  # Bob asks and the host accepts, both through b
        host = Speaker(b, space, key, "--tone", str(A_HZ), "--duration", "40").start()
        bobs = Speaker(b, space, grant, "--tone", str(B_HZ), "--duration", "40").start()
        try:
            wait_until(lambda: all(m["talking"] for m in b.stage(space)["members"]), 10,
                       "both speakers talking, as node b relays the stage")
            assert a.node()["speakers"] == 2 and b.node()["speakers"] == 0  # the media is on a
            heard = live_audio(a, space, 3)
            assert band(heard, A_HZ) > 0.05 and band(heard, B_HZ) > 0.05, (band(heard, A_HZ), band(heard, B_HZ))

            r = b.stage_call(space, f"/{bob}/mute", key)
            assert r.status_code == 200, r.text
            assert a.member(space, bob)["host_muted"]
            heard = live_audio(a, space, 3)
            assert band(heard, A_HZ) > 0.05 and band(heard, B_HZ) < 0.002, (band(heard, A_HZ), band(heard, B_HZ))
        finally:
            host.stop()
            bobs.stop()
        assert events.status == 200
        wait_until(lambda: any(kind == "stage" and any(m["id"] == bob and m.get("host_muted") for m in d["members"])
                               for kind, d in events.got), 5, "the mute on the events stream relayed by b")
        a.end_space(space, key)
        assert events.ended.wait(10), "the relayed stream ends with the Space"
        assert events.got[-1][0] == "ended"
    finally:
        events.close()


@pytest.mark.serial
def test_the_host_out_of_reach_is_a_503_with_retry_after_and_the_loop_guard_holds(node_pair) -> None:
    a, b = node_pair()
    space, key = a.create("hosted on a")
    auth = {"authorization": f"Bearer {key}"}

    # the loop guard: a forwarded call about a Space this node does not host is not sent on
    r = b.http.get(f"/api/spaces/{space}/stage", headers={"x-amphi-forwarded": "a"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"] == "unavailable"
    r = a.http.get(f"/api/spaces/{space}/stage", headers={"x-amphi-forwarded": "b"})
    assert r.status_code == 200, r.text  # the host answers a forwarded call
    r = b.http.get(f"/api/spaces/{space}/stage")
    assert r.status_code == 200 and r.json() == a.stage(space)

    # the host stopped (its socket still accepts): b waits for the first byte, then 503
    os.killpg(a.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = b.http.post(f"/api/spaces/{space}/start", headers=auth)
        took = time.monotonic() - started
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert 4.5 < took < 7, took  # the route's first-byte bound (5 s), not the client's
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    assert a.start_space(space, key)["state"] == "live"  # the call never reached a

    # the host killed: connection refused, 503 at once (never a 307 to a dead node)
    a.kill9()
    started = time.monotonic()
    for path, method in ((f"/api/spaces/{space}/end", "POST"), (f"/api/spaces/{space}/speak", "POST"),
                         (f"/api/spaces/{space}/events", "GET")):
        r = b.http.request(method, path, headers=auth, content=b"v=0\r\n" if path.endswith("speak") else None)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (path, r.status_code, r.text)
    assert time.monotonic() - started < 3


class RefusingFront:
    """A TCP front of the test before a real node: the first ``refusals`` WHIP offers are answered
    ``503 Retry-After: 1`` (a take-over in progress); every other request is relayed to the node
    byte for byte, with ``Connection: close`` (so a browser makes each request on a connection of
    its own, and the front sees every one). ``offers`` holds when each offer arrived
    (``time.monotonic()``)."""

    def __init__(self, node: AmphiServer, refusals: int) -> None:
        self.node = node
        self.refusals = refusals
        self.offers: list[float] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._relay(conn)
        except OSError:  # the client or the node went away (the node stopped at the test's end)
            pass

    def _relay(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = conn.recv(65536)
                if not piece:
                    return
                head += piece
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = [h for h in head.split(b"\r\n") if not h.lower().startswith(b"connection:")]
            head = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest
            line = lines[0]
            if line.startswith(b"POST ") and line.split()[1].endswith(b"/speak"):
                self.offers.append(time.monotonic())
                if len(self.offers) <= self.refusals:
                    body = b'{"error":"unavailable","message":"the Space is changing host"}'
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    return
            with socket.create_connection(("127.0.0.1", self.node.port)) as up:
                up.sendall(head)
                done = threading.Event()

                def pipe(src: socket.socket, dst: socket.socket) -> None:
                    try:
                        while data := src.recv(65536):
                            dst.sendall(data)
                    except OSError:
                        pass
                    done.set()

                threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
                pipe(up, conn)
                done.wait(1)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.serial
def test_the_speaker_honours_retry_after_without_climbing_its_backoff(amphi: AmphiServer) -> None:
    space, key = amphi.create("changing host")
    amphi.start_space(space, key)
    front = RefusingFront(amphi, refusals=3)
    try:
        speaker = Speaker(SimpleNamespace(url=front.url, ca=None), space, key,  # type: ignore[arg-type]
                          "--tone", str(A_HZ), "--duration", "30").start(timeout=20)
        on_air = time.monotonic()
        try:
            assert len(front.offers) == 4, front.offers
            gaps = [later - earlier for earlier, later in zip(front.offers, front.offers[1:])]
            # each retry after the Retry-After (1 s, +0-15 %) and the offer's own making: never
            # sooner, and no ladder (0.5, 1, 2 s) climbed
            assert all(1.0 <= g < 1.5 for g in gaps), gaps
            assert on_air - front.offers[2] < 1.8, on_air - front.offers[2]  # heard within ~1.5 s of the refusal
            wait_until(lambda: amphi.member(space, "host")["talking"], 5, "the host talking")
            heard = live_audio(amphi, space, 2)
            assert band(heard, A_HZ) > 0.05, band(heard, A_HZ)
        finally:
            speaker.stop()
    finally:
        front.close()
