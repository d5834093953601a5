"""Listener counts, and a graceful shutdown that closes live recordings and open streams."""

import os
import signal
import threading

import httpx

from tests.integration.amphi_proc import AmphiServer, wait_until


def test_listeners_are_counted_while_they_listen(amphi) -> None:
    space, key = amphi.create("count")
    amphi.start_space(space, key)
    playlists = [amphi.join(space) for _ in range(3)]
    with httpx.Client() as client:
        for url in playlists:
            assert client.get(url).status_code == 200
    st = amphi.status(space)
    assert st["listeners"] == 3 and st["peak_listeners"] == 3
    ended = amphi.end_space(space, key)
    assert ended["listeners"] == 0 and ended["peak_listeners"] == 3


def test_sigterm_ends_live_spaces_and_keeps_their_recordings(tmp_path, speakers) -> None:
    data = tmp_path / "data"
    server = AmphiServer(data).start()
    space, key = server.create("shutdown")
    server.start_space(space, key)
    speakers(server, space, key, "--tone", "440")
    wait_until(lambda: server.status(space)["recorded_s"] > 0, 15, "a first recorded segment")
    server.stop()
    assert server.proc.returncode == 0
    again = AmphiServer(data, server.port).start()
    try:
        st = again.status(space)
        assert st["state"] == "ended" and st["end_reason"] == "shutdown" and not st["ended_abnormally"]
        assert st["replay"] and httpx.get(st["replay"]).text.rstrip().endswith("#EXT-X-ENDLIST")
    finally:
        again.stop()


def test_sigterm_drains_open_streams_and_exits(tmp_path, monkeypatch) -> None:
    """Event and dashboard streams never end by themselves: at shutdown the node ends them
    (a complete response, not a reset), drains HTTP and exits, instead of waiting forever."""
    monkeypatch.setenv("AMPHI_OPERATOR_KEY", "drain-test-operator-key")
    server = AmphiServer(tmp_path / "data").start()
    space, key = server.create("drain")
    server.start_space(space, key)
    ended: dict[str, bytes] = {}
    opened = {"events": threading.Event(), "dashboard": threading.Event()}

    def read(name: str, path: str, headers: dict[str, str]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("GET", path, headers=headers) as r:
            assert r.status_code == 200
            opened[name].set()
            ended[name] = b"".join(r.iter_raw())  # returns only when the server ends the response

    readers = [threading.Thread(target=read, args=("events", f"/api/spaces/{space}/events", {})),
               threading.Thread(target=read, args=("dashboard", "/dashboard/stream",
                                                   {"authorization": "Bearer drain-test-operator-key"}))]
    for t in readers:
        t.start()
    wait_until(lambda: all(e.is_set() for e in opened.values()), 30, "both streams to be open")
    wait_until(lambda: server.node()["event_streams"] == 1, 10, "the event stream to be open")
    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0  # before: waited for the streams forever (until SIGKILL)
    for t in readers:
        t.join(10)
    assert b"event: stage" in ended["events"] and b"event: snapshot" in ended["dashboard"]
    server.close()
