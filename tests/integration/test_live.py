"""A host speaks a 440 Hz tone; ffmpeg, an independent client, reads the live playlist."""

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.audio import SR, decode, dominant_per_window, rms
from tests.integration.amphi_proc import collect_segments


def framemd5_timestamps(text: str) -> list[tuple[int, int]]:
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    return [(int(r[2]), int(r[3])) for r in rows]  # (pts, duration)


def test_ffmpeg_hears_the_tone_live_with_gapless_timestamps(amphi, speakers, tmp_path) -> None:
    space, key = amphi.create("tone")
    amphi.start_space(space, key)
    speakers(amphi, space, key, "--tone", "440")
    playlist = amphi.join(space, multivariant=True)  # what the join names: ffmpeg follows its one variant
    assert playlist.endswith("/index.m3u8")
    pcm, stamps = tmp_path / "pcm.raw", tmp_path / "ts.txt"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-live_start_index", "-1", "-i", playlist, "-t", "8",
         "-map", "0:a", "-c", "copy", "-f", "framemd5", str(stamps),
         "-map", "0:a", "-t", "8", "-ac", "1", "-ar", str(SR), "-f", "f32le", str(pcm)],
        check=True, timeout=60,
    )
    import numpy as np

    audio = np.fromfile(pcm, dtype=np.float32)
    assert len(audio) == pytest.approx(8 * SR, abs=2048)
    windows = dominant_per_window(audio, 0.25)
    # the newest segment may begin before the speaker was connected: skip leading silence
    first = next(i for i in range(len(windows)) if rms(audio[i * SR // 4 : (i + 1) * SR // 4]) > 0.1)
    assert first <= 16
    heard = windows[first + 1 :]
    assert len(heard) >= 12
    assert all(abs(hz - 440) <= 5 for hz in heard), heard
    quarter = SR // 4
    levels = [rms(audio[i * quarter : (i + 1) * quarter]) for i in range(first + 1, len(windows))]
    assert min(levels) > 0.2, "the tone dropped out"
    ts = framemd5_timestamps(stamps.read_text())
    assert len(ts) > 300
    gaps = [(a, b) for a, b in zip(ts, ts[1:]) if b[0] != a[0] + a[1]]
    assert gaps == []


@pytest.mark.serial  # a stopped node's catch-up, judged to the tenth of a second: alone (make test)
def test_a_node_stalled_for_a_second_plays_the_speakers_audio_of_that_second(amphi, speakers) -> None:
    """The node's process is stopped for 1 s (as a loaded machine may deschedule it): the
    speaker's audio waits in the socket meanwhile, and when the node resumes, the mixer's
    overdue ticks get it, so the program has no gap (not a jitter-buffer underrun, nor the
    backlog dropped as "too far ahead")."""
    space, key = amphi.create("stall")
    amphi.start_space(space, key)
    playlist = amphi.join(space)
    speakers(amphi, space, key, "--tone", "440")
    stalled_at: list[int] = []  # the newest segment when the node was stopped

    def until(segs: dict[int, bytes]) -> bool:
        if not stalled_at and len(segs) >= 2:  # the tone is on air: stop the node for 1 s
            os.kill(amphi.proc.pid, signal.SIGSTOP)
            time.sleep(1.0)
            os.kill(amphi.proc.pid, signal.SIGCONT)
            stalled_at.append(max(segs))
        return bool(stalled_at) and max(segs) >= stalled_at[0] + 3  # 3 whole segments (10.75 s) of tone after

    with httpx.Client(timeout=15) as client:
        init = client.get(playlist.rsplit("/", 1)[0] + "/init.mp4").content
        segments, _ = collect_segments(client, playlist, until, timeout=60)

    pipeline = amphi.node()["pipelines"][space]
    assert pipeline["max_lag_s"] >= 0.9, pipeline  # the program's clock really was stopped
    msns = sorted(segments)
    assert msns == list(range(msns[0], msns[-1] + 1))
    audio = decode(init + b"".join(segments[m] for m in msns))
    tenth = SR // 10
    windows = dominant_per_window(audio, 0.1)
    first = next(i for i, hz in enumerate(windows) if abs(hz - 440) <= 5)
    assert len(windows) - first > 90  # more than 9 s of tone, the stalled second inside
    assert all(abs(hz - 440) <= 5 for hz in windows[first + 1 :]), windows[first:]
    levels = [rms(audio[i * tenth : (i + 1) * tenth]) for i in range(first + 1, len(windows))]
    assert min(levels) > 0.2, "the tone dropped out"
    (track,) = pipeline["tracks"].values()
    assert track["dropped"] == 0, track  # the audio of the stalled second was kept for it
