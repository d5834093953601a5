"""Before the scheduled start listeners hear hold music; at the start (which happens by
itself) the same stream carries the live audio, with no gap and no discontinuity."""

import time
from datetime import UTC, datetime

import httpx

from amphi.core.config import AAC_FRAME, MediaConfig
from amphi.media import fmp4
from amphi.media.programs import HOLD_NOTES_HZ
from tests.audio import SR, decode, dominant_per_window, rms
from tests.integration.amphi_proc import collect_segments

CFG = MediaConfig()


def test_hold_music_then_live_without_a_gap(amphi, speakers) -> None:
    starts_at = time.time() + 6
    iso = datetime.fromtimestamp(starts_at, UTC).isoformat().replace("+00:00", "Z")
    space, key = amphi.create("scheduled", iso)
    assert amphi.status(space)["state"] == "scheduled"
    playlist = amphi.join(space)
    speakers(amphi, space, key, "--tone", "440")  # on stage early: not heard before the start

    def enough(segs: dict[int, bytes]) -> bool:  # two complete segments after the (automatic) start
        return amphi.status(space)["state"] == "live" and len(segs) >= 5 and max(segs) >= 4

    with httpx.Client(timeout=15) as client:
        init = client.get(playlist.rsplit("/", 1)[0] + "/init.mp4").content
        segments, texts = collect_segments(client, playlist, enough, timeout=40)

    status = amphi.status(space)
    assert status["state"] == "live"
    started = datetime.fromisoformat(status["started_at"].replace("Z", "+00:00")).timestamp()
    assert abs(started - starts_at) < 1.5  # started by itself, on time
    assert not any("DISCONTINUITY" in t for t in texts)

    msns = sorted(segments)
    assert msns == list(range(msns[0], msns[-1] + 1))  # every segment, in order
    frags = [f for m in msns for f in fmp4.read_fragments(segments[m])]
    for a, b in zip(frags, frags[1:]):
        assert b.base_decode_time == a.end_decode_time, "timestamps jump"
    audio = decode(init + b"".join(segments[m] for m in msns))
    assert len(audio) == sum(f.sample_count for f in frags) * AAC_FRAME

    windows = dominant_per_window(audio, 0.25)
    hold = [hz for hz in windows[:8]]
    assert all(min(abs(hz - n) for n in HOLD_NOTES_HZ) < 8 for hz in hold), hold
    live_from = next(i for i, hz in enumerate(windows) if abs(hz - 440) <= 5)
    pipeline = amphi.node()["pipelines"][space]  # late ticks and each track's underruns, if it fails
    assert all(abs(hz - 440) <= 5 for hz in windows[live_from + 1 :]), (windows[live_from:], pipeline)
    quarter = SR // 4
    assert min(rms(audio[i * quarter : (i + 1) * quarter]) for i in range(len(windows))) > 0.02  # never silent
