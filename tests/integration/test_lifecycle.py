"""Listener counts, and a graceful shutdown that closes live recordings."""

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
