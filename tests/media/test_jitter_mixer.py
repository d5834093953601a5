import numpy as np
import pytest

from amphi.core.config import MediaConfig
from amphi.core.errors import IllegalTransition
from amphi.media.jitter import JitterBuffer
from amphi.media.mixer import Mixer, Mode
from amphi.media.programs import HOLD_NOTES_HZ, hold_music
from tests.audio import dominant_hz, rms, tone

CFG = MediaConfig()
N = CFG.tick_samples


def frame(value: float) -> np.ndarray:
    return np.full(N, value, dtype=np.float32)


def test_jitter_buffer_waits_for_target_then_plays_in_order() -> None:
    buf = JitterBuffer(target=3, limit=5)
    buf.push(frame(1))
    buf.push(frame(2))
    assert buf.pop() is None  # still filling
    buf.push(frame(3))
    assert [buf.pop()[0] for _ in range(3)] == [1, 2, 3]
    assert buf.pop() is None and buf.stats.underruns == 1


def test_jitter_buffer_bounds_delay_by_dropping_oldest() -> None:
    buf = JitterBuffer(target=1, limit=4)
    for v in range(10):
        buf.push(frame(v))
    assert len(buf) == 4 and buf.stats.dropped == 6
    assert buf.pop()[0] == 6


def test_closed_buffer_plays_out_what_it_has() -> None:
    buf = JitterBuffer(target=3, limit=5)
    buf.push(frame(1))
    buf.close()
    assert buf.pop()[0] == 1 and buf.drained


def test_hold_music_before_start_then_live_mix_at_an_aligned_sample() -> None:
    mixer = Mixer(CFG, hold_music)
    a = mixer.add_track("a")
    out = [mixer.tick() for _ in range(30)]
    assert all(f.mode is Mode.HOLD for f in out)
    held = np.concatenate([f.samples for f in out])
    assert rms(held) > 0.02  # hold audio is generated, not silence
    assert min(abs(dominant_hz(held) - hz) for hz in HOLD_NOTES_HZ) < 5
    at = mixer.request(Mode.LIVE)
    assert at % CFG.switch_align_samples == 0 and at >= mixer.sample
    frames = []
    while mixer.sample < at + 48_000:
        a.push(tone(440, N / 48_000, start=mixer.sample))
        frames.append(mixer.tick())
    live = [f for f in frames if f.mode is Mode.LIVE]
    assert live[0].sample == at
    assert [f.sample for f in frames] == list(range(frames[0].sample, frames[-1].sample + N, N))  # no gap
    assert dominant_hz(np.concatenate([f.samples for f in live[5:]])) == pytest.approx(440, abs=5)


def test_live_program_is_silence_when_nobody_talks_and_clock_keeps_going() -> None:
    mixer = Mixer(CFG, hold_music)
    mixer.mode = Mode.LIVE
    out = [mixer.tick() for _ in range(10)]
    assert all(rms(f.samples) == 0 for f in out)
    assert out[-1].sample == 9 * N


def test_muted_track_is_not_heard_and_mix_is_clipped() -> None:
    mixer = Mixer(CFG, hold_music)
    mixer.mode = Mode.LIVE
    a, b = mixer.add_track("a"), mixer.add_track("b")
    for _ in range(10):
        a.push(frame(0.8))
        b.push(frame(0.8))
    mixer.muted.add("b")
    assert mixer.tick().samples.max() == pytest.approx(0.8)
    mixer.muted.clear()
    assert mixer.tick().samples.max() == pytest.approx(1.0)  # 1.6 clipped


def test_illegal_program_transitions_name_the_state() -> None:
    mixer = Mixer(CFG, hold_music)
    with pytest.raises(IllegalTransition, match="hold -> ended"):
        mixer.request(Mode.ENDED)
    mixer.request(Mode.LIVE)
    mixer.request(Mode.ENDED)
    while mixer.mode is not Mode.ENDED:
        mixer.tick()
    with pytest.raises(IllegalTransition):
        mixer.tick()


def test_delay_grown_by_a_refill_shrinks_back_to_the_target() -> None:
    buf = JitterBuffer(target=3, limit=12)
    for v in range(8):  # a burst: 8 frames queued, 5 more than the target
        buf.push(frame(v))
    for v in range(8, 8 + 50 * 8):  # then steady arrivals, one per pop
        buf.pop()
        buf.push(frame(v))
    assert len(buf) == 3 and buf.stats.trimmed == 5 and buf.stats.underruns == 0
