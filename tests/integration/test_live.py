"""A host speaks a 440 Hz tone; ffmpeg, an independent client, reads the live playlist."""

import subprocess

import pytest

from tests.audio import SR, dominant_per_window, rms


def framemd5_timestamps(text: str) -> list[tuple[int, int]]:
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    return [(int(r[2]), int(r[3])) for r in rows]  # (pts, duration)


def test_ffmpeg_hears_the_tone_live_with_gapless_timestamps(amphi, speakers, tmp_path) -> None:
    space, key = amphi.create("tone")
    amphi.start_space(space, key)
    speakers(amphi, space, key, "--tone", "440")
    playlist = amphi.join(space)
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
