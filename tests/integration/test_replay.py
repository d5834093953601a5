"""The replay and the download exist the moment the Space ends, unedited, start to end."""

import time

import httpx
import numpy as np
import pytest

from tests.audio import SR, decode, dominant_hz, ffmpeg_decode

PART_S = 0.512


def test_replay_and_download_exist_at_once_and_match_the_live_duration(amphi, speakers) -> None:
    space, key = amphi.create("replay")
    t_start = time.time()
    amphi.start_space(space, key)
    speakers(amphi, space, key, "--tone", "660")
    time.sleep(6)  # let the Space run: the content of the test (the check reads the tone 3 s to 1 s before the end)
    live = amphi.join(space)  # a listener seated before the end, whose player goes on reloading
    assert "#EXT-X-PART" in httpx.get(live, timeout=10).text  # the live playlist
    t_end_request = time.time()
    ended = amphi.end_space(space, key)
    t_ended = time.time()
    live_duration = t_end_request - t_start
    last = httpx.get(live, timeout=10)  # its next reload: the last window, closed (was a 500)
    assert last.status_code == 200 and last.text.rstrip().endswith("#EXT-X-ENDLIST"), (last.status_code, last.text)

    assert ended["state"] == "ended" and ended["end_reason"] == "host"
    assert ended["replay"] and ended["download"]
    assert t_ended - t_end_request <= 1.0, "the replay must exist within 1 s of the end"
    with httpx.Client(timeout=30) as client:
        check_replay(client, amphi, space, ended, live_duration)


def check_replay(client: httpx.Client, amphi, space: str, ended: dict, live_duration: float) -> None:
    vod = client.get(ended["replay"])
    assert vod.status_code == 200
    text = vod.text
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    listed = sum(float(line[8:].rstrip(",")) for line in text.splitlines() if line.startswith("#EXTINF:"))
    assert listed == pytest.approx(live_duration, abs=PART_S)
    assert ended["recorded_s"] == pytest.approx(listed, abs=0.002)

    replay = ffmpeg_decode(ended["replay"])  # an independent player reads the replay
    assert len(replay) / SR == pytest.approx(listed, abs=0.05)
    download = client.get(ended["download"])
    assert download.status_code == 200 and download.headers["content-type"] == "audio/mp4"
    assert int(download.headers["content-length"]) == len(download.content)
    single = decode(download.content)
    assert len(single) == len(replay)
    assert np.allclose(single, replay, atol=1e-3)  # the same audio, sample for sample
    assert dominant_hz(single[-SR * 3 : -SR]) == pytest.approx(660, abs=3)

    import av, io

    with av.open(io.BytesIO(download.content)) as c:  # the file says how long it is
        assert c.duration / 1e6 == pytest.approx(listed, abs=0.05)

    after = client.get(amphi.join(space))  # joining after the end hands out the replay
    assert after.status_code == 200 and after.text.rstrip().endswith("#EXT-X-ENDLIST")


def test_ending_twice_is_a_conflict_and_changes_nothing(amphi) -> None:
    space, key = amphi.create("twice")
    amphi.start_space(space, key)
    first = amphi.end_space(space, key)
    r = amphi.http.post(f"/api/spaces/{space}/end", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 409 and r.json()["error"] == "illegal_transition"
    assert amphi.status(space)["ended_at"] == first["ended_at"]
