"""The sound guard (amphi.media.guard), pure: real speech (espeak-ng) through it tick by tick,
judged by independent meters (pyloudnorm's BS.1770, ffmpeg's EBU R128 with true peak)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from scipy import signal

from amphi.core.config import MediaConfig, SoundConfig
from amphi.media.guard import TrackGuard, TruePeakLimiter
from amphi.media.mixer import Mixer, Mode
from amphi.media.programs import hold_music
from tests.audio import SR, ebur128, rms, speech, tone

N = 960
CFG = SoundConfig()
METER = pyloudnorm.Meter(SR)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("speech")
    a = speech(d / "a.wav", text=0, voice="en", dbfs=-20, repeat=2)
    b = speech(d / "b.wav", text=1, voice="en+f3", dbfs=-20, repeat=2)
    n = min(len(a), len(b))
    return a[:n], b[:n]


def run(x: np.ndarray, guard: TrackGuard, sent: np.ndarray | None = None) -> np.ndarray:
    out = []
    for i in range(0, len(x) - N + 1, N):
        out.append(guard.process(x[i:i + N]))
        guard.sent(None if sent is None else sent[i:i + N])
    return np.concatenate(out)


def true_peak_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.abs(signal.resample_poly(x.astype(np.float64), 4, 1)).max())


def test_the_meter_agrees_with_pyloudnorm(voices: tuple[np.ndarray, np.ndarray]) -> None:
    a, _ = voices
    guard = TrackGuard(CFG, N)
    run(a * np.float32(0.5), guard)
    last = (a * 0.5)[-int(CFG.estimate_s * SR):].astype(np.float64)
    assert guard.stats.loudness == pytest.approx(METER.integrated_loudness(last), abs=0.5)


@pytest.mark.parametrize("dbfs", [-45, -40, -30, -20])  # the boost is at most 36 dB
def test_a_quiet_speaker_is_brought_to_the_target_within_3_s(voices, dbfs: int) -> None:
    a, _ = voices
    x = a * np.float32(10 ** ((dbfs + 20) / 20))
    out = run(x, TrackGuard(CFG, N))
    after = out[3 * SR:].astype(np.float64)
    assert METER.integrated_loudness(after) == pytest.approx(CFG.target_lufs, abs=1.0)
    assert ebur128(out[3 * SR:])[0] == pytest.approx(CFG.target_lufs, abs=1.0)


def test_a_loud_speaker_is_brought_down_to_the_window_and_one_inside_it_is_left_alone(voices) -> None:
    a, _ = voices
    loud = run(a * np.float32(10 ** (10 / 20)), TrackGuard(CFG, N))  # about -10 LUFS
    assert METER.integrated_loudness(loud[3 * SR:].astype(np.float64)) == pytest.approx(
        CFG.target_lufs + CFG.window_lu, abs=1.0)
    inside = a * np.float32(10 ** (7 / 20))  # about -14 LUFS: inside the window
    guard = TrackGuard(CFG, N)
    out = run(inside, guard)
    assert guard.stats.gain_db == 0.0
    assert np.array_equal(out[3 * SR:], inside[3 * SR: len(out)])  # once it has heard them: untouched


def test_silence_stays_silence_and_noise_is_not_lifted() -> None:
    noise = (np.random.default_rng(7).standard_normal(10 * SR) * 10 ** (-65 / 20)).astype(np.float32)
    guard = TrackGuard(CFG, N)
    out = run(noise, guard)
    assert guard.stats.gain_db == 0.0 and guard.stats.loudness is None and not guard.stats.heard
    assert rms(out) == pytest.approx(rms(noise[: len(out)]), rel=0.01)
    zeros = np.zeros(5 * SR, np.float32)
    assert not run(zeros, TrackGuard(CFG, N)).any()


def test_after_a_pause_the_boost_is_released_and_the_next_word_opens_it(voices) -> None:
    """A quiet speaker (-45 dBFS) with room noise at -75 dBFS: boosted ~+25 dB while talking;
    in a 3 s pause the noise is brought back towards where it was."""
    a, _ = voices
    rng = np.random.default_rng(3)
    talk = a[: 8 * SR] * np.float32(10 ** (-25 / 20))
    pause = np.zeros(3 * SR, np.float32)
    x = np.concatenate([talk, pause, talk[: 2 * SR]])
    x = x + (rng.standard_normal(len(x)) * 10 ** (-75 / 20)).astype(np.float32)
    guard = TrackGuard(CFG, N)
    out = run(x, guard)
    gain = guard.stats.gain_db
    assert gain > 20
    p0 = len(talk)
    end_of_pause = out[p0 + 2 * SR: p0 + 3 * SR - N]
    noise_in = x[p0 + 2 * SR: p0 + 3 * SR - N]
    assert 20 * np.log10(rms(end_of_pause) / rms(noise_in)) < 6  # the boost is given back, not +20 dB
    resumed = out[p0 + 3 * SR + N: p0 + 3 * SR + 2 * SR]
    assert METER.integrated_loudness(resumed.astype(np.float64)) == pytest.approx(CFG.target_lufs, abs=2.0)


def test_the_limiter_keeps_the_true_peak_under_the_ceiling(voices) -> None:
    a, _ = voices
    hot = (a / np.abs(a).max()).astype(np.float32)  # 0 dBFS peaks
    both = np.clip(hot + np.roll(hot, SR // 3), -1, 1) * np.float32(1.0)  # two at once: clipped sums
    limiter = TruePeakLimiter(CFG.ceiling_dbtp, CFG.limiter_release_db_per_s)
    out = np.concatenate([limiter.process(both[i:i + N]) for i in range(0, len(both) - N + 1, N)])
    assert true_peak_db(out) <= CFG.ceiling_dbtp + 0.2
    assert ebur128(out)[1] <= CFG.ceiling_dbtp + 0.2
    # quiet audio passes untouched
    quiet = both * np.float32(0.3)
    limiter = TruePeakLimiter(CFG.ceiling_dbtp, CFG.limiter_release_db_per_s)
    out = np.concatenate([limiter.process(quiet[i:i + N]) for i in range(0, len(quiet) - N + 1, N)])
    assert np.array_equal(out, quiet[: len(out)])


@pytest.mark.parametrize(("delay_ms", "gain"), [(60, 1.5), (150, 1.0), (400, 0.7)])
def test_a_speaker_whose_microphone_hears_their_return_feed_is_caught_within_a_second(
        voices, delay_ms: int, gain: float) -> None:
    """The other voice is the return feed; it comes back in this speaker's microphone. The
    speaker has been on for 1.5 s before the other starts talking."""
    a, b = voices
    lead = np.zeros(3 * SR // 2, np.float32)
    a, b = np.concatenate([lead, a]), np.concatenate([lead, b])
    d = delay_ms * SR // 1000
    echo = np.concatenate([np.zeros(d, np.float32), b * np.float32(gain)])[: len(b)]
    mic = echo + a * np.float32(0.2)  # and the speaker's own voice, quieter
    guard = TrackGuard(CFG, N)
    first = None
    for k, i in enumerate(range(0, len(b) - N + 1, N)):
        guard.process(mic[i:i + N])
        guard.sent(b[i:i + N])
        if guard.stats.feedback and first is None:
            first = k
    echo_starts = next(i for i in range(len(echo)) if abs(echo[i]) > 1e-3) / SR
    assert first is not None and guard.stats.feedback == "loop"
    assert first * N / SR - echo_starts <= 1.0
    assert guard.stats.feedback_lag_ms == pytest.approx(delay_ms, abs=25)


def test_tones_beeps_and_two_voices_at_once_are_not_feedback(voices) -> None:
    a, b = voices
    n = len(a)
    beep = np.zeros(n, np.float32)
    for start in range(0, n - 3000, SR // 2):  # Chromium's fake microphone: 400 Hz, 60 ms, twice a second
        beep[start:start + 2880] = tone(400, 0.06, 0.5)
    cases = {
        "two tones": (tone(440, n / SR), tone(660, n / SR)),
        "one tone, delayed": (np.roll(tone(440, n / SR), 5000), tone(440, n / SR)),
        "two beeping pages": (np.roll(beep, 6240), beep),
        "two voices": (a, b),
        "a voice and music": (a, tone(440, n / SR, 0.2) + tone(554, n / SR, 0.2) + tone(659, n / SR, 0.2)),
    }
    for name, (mic, heard) in cases.items():
        guard = TrackGuard(CFG, N)
        run(mic, guard, sent=heard)
        assert guard.stats.feedback is None and guard.stats.detections == 0, name


def test_a_growing_howl_is_a_resonance() -> None:
    t = np.arange(4 * SR) / SR
    howl = (np.sin(2 * np.pi * 1200 * t) * np.minimum(1e-3 * 10 ** (t * 25 / 20), 0.9)).astype(np.float32)
    guard = TrackGuard(CFG, N)
    first = None
    for k, i in enumerate(range(0, len(howl) - N + 1, N)):
        guard.process(howl[i:i + N])
        guard.sent(None)
        if guard.stats.feedback and first is None:
            first = k * N / SR
    assert guard.stats.feedback == "resonance" and first is not None and first < 3.5
    # a steady tone that starts is not one
    guard = TrackGuard(CFG, N)
    run(np.concatenate([np.zeros(SR, np.float32), tone(1200, 3)]), guard)
    assert guard.stats.feedback is None


def test_the_mixer_ducks_a_looped_speaker_while_the_other_talks_and_levels_both(voices) -> None:
    a, b = voices
    mixer = Mixer(MediaConfig(), hold_music)
    mixer.mode = Mode.LIVE
    ta, tb = mixer.add_track("a"), mixer.add_track("b")
    mixer.return_to |= {"a", "b"}
    quiet_b = b * np.float32(10 ** (-20 / 20))  # b speaks at -40 dBFS
    program = []
    heard_by_a: list[np.ndarray] = []
    for k, i in enumerate(range(0, len(b) - N + 1, N)):
        # a's microphone hears what a was sent 3 ticks ago, 1.5x (no headphones)
        back = heard_by_a[k - 3] * np.float32(1.5) if k >= 3 else np.zeros(N, np.float32)
        ta.push(back)
        tb.push(quiet_b[i:i + N])
        frame = mixer.tick()
        program.append(frame.samples)
        heard_by_a.append(frame.returns["a"].copy())
    assert mixer.guards["a"].stats.feedback == "loop"
    assert mixer.guards["a"].stats.ducked_ticks > 0.5 * len(program)
    assert mixer.guards["b"].stats.feedback is None
    out = np.concatenate(program)[4 * SR:]
    assert ebur128(out)[0] == pytest.approx(CFG.target_lufs, abs=2.0)  # b, leveled, and no echo on top
    assert ebur128(out)[1] <= CFG.ceiling_dbtp + 0.2


def test_a_guard_off_config_mixes_as_before(tmp_path: Path) -> None:
    mixer = Mixer(MediaConfig(sound=SoundConfig(enabled=False)), hold_music)
    assert mixer.guards is None and mixer.limiter is None


def test_a_loop_is_cleared_once_it_is_gone(voices) -> None:
    """Headphones on (the microphone hears only its own speaker) or muted (silence): after
    5 s with no sign of the loop the flag and the duck go; a loop that comes back is caught again."""
    a, b = voices
    lead = np.zeros(3 * SR // 2, np.float32)
    heard = np.concatenate([lead, b, b])
    echo = np.concatenate([np.zeros(SR // 10, np.float32), heard])[: len(heard)]
    n = len(lead) + len(b)
    mic = np.concatenate([echo[:n // 2], (a * np.float32(0.5))[: n - n // 2], echo[n:]])  # loop, then headphones
    guard = TrackGuard(CFG, N)
    flags = []
    for i in range(0, len(heard) - N + 1, N):
        guard.process(mic[i:i + N])
        guard.sent(heard[i:i + N])
        flags.append(guard.stats.feedback)
    t = np.arange(len(flags)) * N / SR
    half, back = (n // 2) / SR, n / SR
    assert flags[int((half - 0.5) * SR / N)] == "loop"
    assert all(f is None for f, s in zip(flags, t) if half + 6 < s < back)  # cleared within 6 s of the headphones
    assert flags[-1] == "loop" and guard.stats.detections == 2  # the loop came back: caught again
