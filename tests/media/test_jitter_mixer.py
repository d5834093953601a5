import numpy as np
import pytest

from amphi.core.config import MediaConfig, SoundConfig
from amphi.core.errors import IllegalTransition
from amphi.media.jitter import JitterBuffer
from amphi.media.mixer import Mixer, Mode
from amphi.media.programs import HOLD_NOTES_HZ, hold_music
from tests.audio import dominant_hz, rms, tone

CFG = MediaConfig(sound=SoundConfig(enabled=False))  # the mixer's own arithmetic; the guard: test_guard.py
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


def test_audio_that_arrived_during_a_stall_of_the_clock_is_kept_for_the_overdue_ticks() -> None:
    buf = JitterBuffer(target=3, limit=12, backlog=50)
    v = 0
    for _ in range(3):
        buf.push(frame(v))
        v += 1
    played = [buf.pop()[0]]
    for _ in range(40):  # the clock stops for 40 ticks; the speaker's frames keep coming
        buf.push(frame(v))
        v += 1
    for overdue in range(39, -1, -1):  # then the clock catches up, one tick after another
        played.append(buf.pop(overdue)[0])
    assert played == list(range(41))  # every frame, in order: no gap, nothing dropped
    assert buf.stats.dropped == buf.stats.underruns == buf.stats.trimmed == 0
    assert len(buf) == 2  # the delay is what it was before the stall


def test_a_burst_beyond_the_limit_is_bounded_at_the_next_tick_and_the_backlog_bounds_memory() -> None:
    buf = JitterBuffer(target=1, limit=4, backlog=6)
    for v in range(20):  # a sender's burst: nothing is overdue, so it is too far ahead
        buf.push(frame(v))
    assert len(buf) == 10 and buf.stats.dropped == 10  # held up to limit + backlog
    assert buf.pop()[0] == 16 and len(buf) == 3  # the next tick keeps the newest 4
    with pytest.raises(ValueError):
        JitterBuffer(target=1, limit=4, backlog=-1)


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


def tick_frames(mixer: Mixer, tracks: dict[str, tuple[JitterBuffer, float]], ticks: int) -> list:
    """Feeds each track a tone (its Hz) for ``ticks`` ticks and collects the program frames."""
    out = []
    for k in range(ticks):
        for buf, hz in tracks.values():
            buf.push(tone(hz, N / 48000, level=0.3, start=k * N))
        out.append(mixer.tick())
    return out


def band(x: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) / len(x)
    freqs = np.fft.rfftfreq(len(x), 1 / 48000)
    return float(spectrum[np.abs(freqs - hz) < 10].max())


def test_each_speaker_hears_the_others_but_not_themselves() -> None:
    mixer = Mixer(CFG, hold_music)
    mixer.mode = Mode.LIVE
    a, b, c = mixer.add_track("a"), mixer.add_track("b"), mixer.add_track("c")
    mixer.return_to.update({"a", "b"})  # c has no return feed
    frames = tick_frames(mixer, {"a": (a, 440.0), "b": (b, 660.0), "c": (c, 880.0)}, 60)[10:]
    program = np.concatenate([f.samples for f in frames])
    to_a = np.concatenate([f.returns["a"] for f in frames])
    to_b = np.concatenate([f.returns["b"] for f in frames])
    assert set(frames[0].returns) == {"a", "b"}
    assert min(band(program, hz) for hz in (440, 660, 880)) > 0.1
    assert band(to_a, 440) < 1e-3 and band(to_a, 660) > 0.1 and band(to_a, 880) > 0.1
    assert band(to_b, 660) < 1e-3 and band(to_b, 440) > 0.1 and band(to_b, 880) > 0.1


def test_a_muted_speaker_is_heard_by_nobody_but_still_hears_everyone() -> None:
    mixer = Mixer(CFG, hold_music)
    mixer.mode = Mode.LIVE
    a, b = mixer.add_track("a"), mixer.add_track("b")
    mixer.return_to.update({"a", "b"})
    mixer.muted.add("b")
    frames = tick_frames(mixer, {"a": (a, 440.0), "b": (b, 660.0)}, 60)[10:]
    program = np.concatenate([f.samples for f in frames])
    to_a = np.concatenate([f.returns["a"] for f in frames])
    to_b = np.concatenate([f.returns["b"] for f in frames])
    assert band(program, 440) > 0.1 and band(program, 660) < 1e-3
    assert rms(to_a) < 1e-6  # the only other speaker is muted
    assert band(to_b, 440) > 0.1 and band(to_b, 660) < 1e-3


def test_speakers_hear_each_other_before_the_start_while_listeners_hear_hold_music() -> None:
    mixer = Mixer(CFG, hold_music)
    a, b = mixer.add_track("a"), mixer.add_track("b")
    mixer.return_to.add("a")
    frames = tick_frames(mixer, {"a": (a, 440.0), "b": (b, 1000.0)}, 60)[10:]
    assert all(f.mode is Mode.HOLD for f in frames)
    program = np.concatenate([f.samples for f in frames])
    assert band(program, 440) < 1e-3 and band(program, 1000) < 1e-3  # hold music only
    assert band(np.concatenate([f.returns["a"] for f in frames]), 1000) > 0.1


def test_levels_follow_the_loudness_and_talking_has_a_hangover() -> None:
    mixer = Mixer(CFG, hold_music)
    mixer.mode = Mode.LIVE
    a = mixer.add_track("a")
    meter = mixer.meters["a"]
    assert meter.read() == 0.0 and not meter.talking
    tick_frames(mixer, {"a": (a, 440.0)}, 10)
    loud = meter.read()
    assert meter.talking and loud == pytest.approx((60 + 20 * np.log10(0.3 / np.sqrt(2))) / 60, abs=0.01)
    for _ in range(10):
        a.push(frame(0.0))
    for _ in range(12):  # what was queued plays out first, then 0.24 s of silence: still talking
        mixer.tick()
    assert meter.talking
    meter.read()
    for _ in range(40):
        a.push(frame(0.0))
        mixer.tick()
    assert not meter.talking
    assert meter.read() == 0.0
