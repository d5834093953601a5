"""kill -9 during a live Space: after a restart the recording replays up to the last
complete segment, and the Space says it ended abnormally."""

import httpx
import pytest

from amphi.media import fmp4
from tests.audio import SR, dominant_per_window, ffmpeg_decode
from tests.integration.amphi_proc import AmphiServer, wait_until

PARTS = "4"  # 2.048 s segments: three on disk sooner than the suite's 3.584 s
SEGMENT_S = 4 * 0.512


def test_recording_survives_kill_9(tmp_path, speakers) -> None:
    data = tmp_path / "data"
    server = AmphiServer(data, None, "--segment-parts", PARTS).start()
    try:
        space, key = server.create("crash")
        speakers(server, space, key, "--tone", "440")  # on air before the start (a sound check), so the
        wait_until(lambda: server.member(space, "host")["talking"], 20, "the host heard")  # recording is all tone
        server.start_space(space, key)
        wait_until(lambda: server.status(space)["recorded_s"] >= 3 * SEGMENT_S, 30, "three segments on disk")
        recorded = server.status(space)["recorded_s"]
        server.kill9()
    finally:
        server.close()

    again = AmphiServer(data, server.port, "--segment-parts", PARTS).start()
    try:
        st = again.status(space)
        assert st["state"] == "ended" and st["ended_abnormally"] is True and st["end_reason"] == "abnormal"
        assert st["recorded_s"] >= recorded
        assert st["replay"] and st["download"]
        vod = httpx.get(st["replay"]).text
        segments = [line for line in vod.splitlines() if line.endswith(".m4s")]
        assert len(segments) >= 3 and vod.rstrip().endswith("#EXT-X-ENDLIST")
        for name in segments:  # every listed segment is whole: its fragments parse
            body = httpx.get(st["replay"].rsplit("/", 1)[0] + "/" + name).content
            assert fmp4.read_fragments(body)
        audio = ffmpeg_decode(st["replay"])
        assert len(audio) / SR == pytest.approx(st["recorded_s"], abs=0.05)
        heard = dominant_per_window(audio[SR:], 0.5)  # after the first second
        assert sum(abs(hz - 440) <= 5 for hz in heard) >= len(heard) - 2
        assert not list(data.glob("**/*.tmp"))
    finally:
        again.stop()
