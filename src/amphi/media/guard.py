"""The program guards its own sound (docs/sound.md). Pure: numpy and scipy, no I/O, no clock.

The mixer runs one ``TrackGuard`` per speaker track and one ``TruePeakLimiter`` on the
program, every 20 ms tick:

    speaker's frame ─▶ TrackGuard.process: K-weighted loudness (ITU-R BS.1770), the leveler's
                       gain towards the program loudness, the feedback duck ─▶ the mix
    the speaker's return feed ─▶ TrackGuard.sent (what they hear: the feedback detector's reference)
    the mix ─▶ TruePeakLimiter (4x oversampled peaks, ceiling -3 dBTP) ─▶ the encoder

Loudness is measured here and not with pyloudnorm: pyloudnorm measures a whole file, and
this must run per 20 ms tick with the filter's state carried across ticks. The filter and
the gating are BS.1770's; ``tests/media/test_guard.py`` checks this meter against pyloudnorm.

The leveler brings each speaker's speech towards ``target_lufs``: a quiet microphone is
lifted to the target, a hot one brought down to ``target + window_lu``; within that window
a speaker's own dynamics are kept. Its estimate is the gated loudness (BS.1770's absolute and
relative gates) of the speaker's last 10 s of speech, so pauses change nothing (no pumping),
and audio below ``speech_gate_lufs`` never moves the gain (background noise is not lifted).
When a speaker is quiet for longer than a pause, an expander brings their boost back to 0 dB,
so silence stays silence; their next word opens it again within the tick.

Feedback is detected two ways. An acoustic loop through the speaker's own room (no
headphones: the return feed comes out of a loudspeaker into the microphone) shows as the
speaker's input correlating with what they were sent a little earlier: normalised
cross-correlation of both at 4 kHz over lags up to 0.5 s, every 0.1 s. A steady tone
correlates with any tone of the same pitch at every period, so a peak must also stand out
from the correlation's spread (a lone, sharp lag), which periodic audio never gives. Two
checks in a row at the same lag confirm a loop. Then the speaker is ducked while the
others are talking (half-duplex, as a classic echo suppressor does), so the loop is broken
and the speaker is still heard when they talk alone. A loop through a path this cannot see
(a second device playing the live stream) shows as a resonance that keeps growing: one
narrow spectral peak rising by at least 3 dB a check for five checks; that speaker is
ducked outright until it stops.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import signal

from amphi.core.config import SAMPLE_RATE, SoundConfig

# ITU-R BS.1770-4, K-weighting at 48 kHz: the head's shelf, then the RLB high-pass.
K_SOS = np.array([
    [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585],
    [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621],
])
K_B, K_A = signal.sos2tf(K_SOS)  # one 4th-order filter: lfilter costs a third of sosfilt per tick
ABSOLUTE_GATE_LUFS = -70.0  # BS.1770: blocks quieter than this are not counted
RELATIVE_GATE_LU = -10.0  # ... nor blocks this far below the ungated mean
BLOCK_TICKS = 20  # a 400 ms gating block of 20 ms ticks
HOP_TICKS = 5  # blocks overlap by 75 %: one every 100 ms

_ABSOLUTE_GATE_MS = 10 ** ((ABSOLUTE_GATE_LUFS + 0.691) / 10)
_RELATIVE_GATE = 10 ** (RELATIVE_GATE_LU / 10)

DECIMATE = 12  # 48 kHz -> 4 kHz for the feedback detector (speech's loop is heard below 2 kHz)
FB_RATE = SAMPLE_RATE // DECIMATE
FB_WINDOW = FB_RATE // 4  # 0.25 s of input compared ...
FB_MAX_LAG = FB_RATE // 2  # ... with what was sent up to 0.5 s before it
FB_CHECK_TICKS = 5  # a check every 100 ms
FB_NFFT = 4096  # >= FB_WINDOW + (FB_WINDOW + FB_MAX_LAG) - 1
FB_MIN_RMS = 10 ** (-50 / 20)  # both sides must carry sound to be compared
FB_MIN_CORR = 0.5  # a quarter of the input's energy is the delayed return, at least
FB_MIN_PEAKINESS = 4.0  # the peak over the correlation's RMS: periodic audio gives ~1.4
FB_MIN_PERIOD = FB_RATE // 50  # what was sent is periodic if it matches itself 20 ms or more later ...
FB_MAX_PERIODICITY = 0.5  # ... this well (speech's pitch repeats within 20 ms; a tone or a beep repeats longer)
ENVELOPE_TICKS = 75  # 1.5 s of what was sent, one level per tick: its rhythm ...
ENVELOPE_LAGS = (5, 50)  # ... repeating with a period of 0.1 to 1 s ...
ENVELOPE_WARMUP = 50  # until 1 s of it is known (two beeps' worth), the rhythm cannot be judged ...
FB_CONFIRM_EARLY = 5  # ... so a loop needs this many checks in a row (0.5 s: a beep leaves the input's window sooner)
ENVELOPE_MAX_PERIODICITY = 0.8  # ... this well is a beep or a beat, not speech
FB_LAG_SLACK = 8  # samples at 4 kHz (2 ms): the same loop from one check to the next
FB_CONFIRM = 3  # checks in a row at one lag confirm a loop (a word said twice is not one)
FB_HOLD_S = 1.0  # the duck holds this long after the return feed went quiet (the loop's delay)
FB_RELEASE_S = 5.0  # a confirmed loop is cleared after this long without a check that sees it
RESONANCE_MIN_PMR_DB = 25.0  # a narrow peak: this far above the spectrum's median
RESONANCE_EVERY = 2  # feedback checks (0.2 s) between two looks at the spectrum
RESONANCE_STEP_DB = 1.0  # ... rising at every look ...
RESONANCE_CHECKS = 5  # ... for this many looks in a row (1 s) ...
RESONANCE_RISE_DB = 10.0  # ... by this much in all
RESONANCE_MIN_DBFS = -30.0  # ... and loud
RESONANCE_WINDOW = 2048  # the input's last 43 ms at 48 kHz, for its spectrum (howls sit at 1-4 kHz)
DUCK_DB = -30.0


def db(x: float) -> float:
    return 20 * math.log10(x) if x > 0 else -math.inf


def lufs(mean_square: float) -> float:
    """BS.1770 loudness of a mono block from its K-weighted mean square."""
    return -0.691 + 10 * math.log10(mean_square) if mean_square > 0 else -math.inf


@dataclass
class GuardStats:
    """One track's guard, for the room's views and the node's snapshot."""

    loudness: float | None = None  # the speaker's speech loudness (LUFS), None until they were heard
    momentary: float = -math.inf  # the last 400 ms block (LUFS)
    gain_db: float = 0.0  # the leveler's gain now
    heard: bool = False  # some speech above the gate since the track began
    feedback: str | None = None  # None, "loop" or "resonance"
    feedback_lag_ms: float | None = None  # the loop's delay, as detected
    detected_sample: int | None = None  # the program sample at which the last loop or resonance was confirmed
    feedback_corr: float = 0.0  # the last check's correlation peak
    detections: int = 0  # loops or resonances confirmed
    ducked_ticks: int = 0
    checks: int = 0  # feedback checks that compared sound with sound


def k_weighted(guards: list[TrackGuard], frames: list[np.ndarray]) -> list[float]:
    """The K-weighted mean square of each guard's frame, by one filter call for all of them
    (scipy's per-call cost is most of the filter's, 13 times a tick on a full stage); each
    guard's filter state moves on as if it had filtered its own."""
    k, zf = signal.lfilter(K_B, K_A, np.stack(frames).astype(np.float64), axis=1,
                           zi=np.stack([g._zi for g in guards]))
    for g, state in zip(guards, zf):
        g._zi = state
    return list(np.einsum("ij,ij->i", k, k) / k.shape[1])


class _Frames:
    """The last ``size`` samples, kept as the frames they came in (no copy per tick), and each
    frame's 4 kHz copy, made once, when a check first needs it."""

    def __init__(self, size: int, frame: int) -> None:
        self.size = size
        n = -(-size // frame)
        zeros = np.zeros(frame, dtype=np.float32)
        self._frames: deque[np.ndarray] = deque([zeros] * n, maxlen=n)
        self._small: deque[np.ndarray | None] = deque([_decimate(zeros)] * n, maxlen=n)

    def push(self, frame: np.ndarray) -> None:
        self._frames.append(frame)
        self._small.append(None)

    def window(self, size: int) -> np.ndarray:
        """The last ``size`` samples at 48 kHz, oldest first."""
        k = -(-size // len(self._frames[-1]))
        return np.concatenate([self._frames[-i] for i in range(k, 0, -1)])[-size:]

    def decimated(self) -> np.ndarray:
        """All ``size`` samples at 4 kHz, oldest first."""
        small = self._small
        for i in range(len(small) - 1, -1, -1):
            if small[i] is not None:
                break
            small[i] = _decimate(self._frames[i])
        return np.concatenate(small)[-(self.size // DECIMATE):]  # type: ignore[arg-type]


class TrackGuard:
    """One speaker's leveler and feedback detector."""

    def __init__(self, cfg: SoundConfig, tick_samples: int) -> None:
        self.cfg = cfg
        tick_s = tick_samples / SAMPLE_RATE
        self._tick_s = tick_s
        self._zi = np.zeros(len(K_A) - 1)
        self._ticks: deque[float] = deque(maxlen=BLOCK_TICKS)  # K-weighted mean squares
        self._blocks = np.zeros(max(1, round(cfg.estimate_s / (HOP_TICKS * tick_s))))  # mean squares, a ring
        self._nblocks = 0
        self._since_block = 0
        self._gain_db = 0.0  # the leveler's gain
        self._applied = 1.0  # the linear gain applied at the end of the last tick
        self._step_db = cfg.slew_db_per_s * HOP_TICKS * tick_s
        self._quiet_ticks = 10 ** 9
        self._hold_ticks = round(cfg.expander_hold_s / tick_s)
        self._open_db = 0.0  # how much of the boost the expander lets through (0: all)
        self.stats = GuardStats()
        self.sample = 0  # the program sample of the tick being processed (the mixer keeps it)
        # feedback
        # the last frames heard and sent (references, not copies: the mixer makes new ones every
        # tick), put together and decimated only when a check needs them
        self._in = _Frames(FB_WINDOW * DECIMATE, tick_samples)
        self._out = _Frames((FB_WINDOW + FB_MAX_LAG) * DECIMATE, tick_samples)
        self._quiet = np.zeros(tick_samples, dtype=np.float32)
        self._envelope: deque[float] = deque([0.0] * ENVELOPE_TICKS, maxlen=ENVELOPE_TICKS)  # what was sent, per tick
        self._sent_ticks = 0
        self._fb_tick = 0
        self._candidate_lag: int | None = None
        self._candidate_checks = 0
        self._loop_lag: int | None = None
        self._last_positive = 0  # the feedback tick of the last check that saw the loop
        self._return_active_ticks = 10 ** 9  # ticks since the return feed last carried sound
        self._peaks: deque[tuple[int, float]] = deque(maxlen=RESONANCE_CHECKS + 1)
        self._duck_linear = 10 ** (DUCK_DB / 20)

    # -- per tick ------------------------------------------------------------------------------

    def process(self, frame: np.ndarray, z: float | None = None) -> np.ndarray:
        """The speaker's frame as it goes into the mix (a new array; ``frame`` is untouched).
        ``z``: its K-weighted mean square, when ``k_weighted`` made it with the others'."""
        cfg = self.cfg
        if z is None:
            z = k_weighted([self], [frame])[0]
        self._ticks.append(z)
        self._since_block += 1
        if self._since_block >= HOP_TICKS and len(self._ticks) == BLOCK_TICKS:
            self._since_block = 0
            self._block(sum(self._ticks) / BLOCK_TICKS)
        if cfg.feedback:
            self._feedback_tick(frame)
        # the expander: a pause longer than the hold gives back the boost, the next word opens it
        speech = self.stats.loudness
        tick_lufs = lufs(z)
        if speech is not None and tick_lufs >= max(speech - cfg.expander_below_lu, cfg.speech_gate_lufs):
            self._quiet_ticks = 0
            self._open_db = 0.0
        else:
            self._quiet_ticks += 1
            if self._quiet_ticks > self._hold_ticks and self._gain_db > 0:
                self._open_db = max(self._open_db - cfg.expander_release_db_per_s * self._tick_s, -self._gain_db)
        gain_db = self._gain_db + (self._open_db if self._gain_db > 0 else 0.0)
        target = 10 ** (gain_db / 20) * self._duck_now()
        start, self._applied = self._applied, target
        if start == target:
            return frame * np.float32(target) if target != 1.0 else frame.copy()
        ramp = np.linspace(start, target, len(frame), endpoint=False, dtype=np.float32)
        return frame * ramp

    def skip(self) -> None:
        """A tick with no audio from the speaker (their jitter buffer ran dry): silence, so
        the input stays aligned with what they were sent."""
        self._quiet_ticks += 1
        if self.cfg.feedback:
            self._feedback_tick(self._quiet)

    def sent(self, frame: np.ndarray | None) -> None:
        """What the speaker was sent this tick (their return feed); None: nothing."""
        if not self.cfg.feedback:
            return
        self._sent_ticks += 1
        if frame is None:
            self._out.push(self._quiet)
            self._envelope.append(0.0)
            self._return_active_ticks += 1
            return
        self._out.push(frame)
        level = math.sqrt(float(np.dot(frame, frame)) / len(frame))
        self._envelope.append(level)
        if level >= FB_MIN_RMS:
            self._return_active_ticks = 0
        else:
            self._return_active_ticks += 1

    # -- the leveler ---------------------------------------------------------------------------

    def _block(self, mean_square: float) -> None:
        cfg = self.cfg
        m = lufs(mean_square)
        self.stats.momentary = m
        if m < cfg.speech_gate_lufs:
            return  # not speech: the gain holds
        self.stats.heard = True
        blocks = self._blocks
        blocks[self._nblocks % len(blocks)] = mean_square
        self._nblocks += 1
        kept = blocks[: self._nblocks] if self._nblocks < len(blocks) else blocks
        kept = kept[kept > _ABSOLUTE_GATE_MS]  # BS.1770's gates, in mean squares
        kept = kept[kept > kept.mean() * _RELATIVE_GATE]
        speech = lufs(float(kept.mean()))
        self.stats.loudness = speech
        if speech < cfg.target_lufs:
            want = cfg.target_lufs - speech
        elif speech > cfg.target_lufs + cfg.window_lu:
            want = cfg.target_lufs + cfg.window_lu - speech
        else:
            want = 0.0
        want = min(max(want, -cfg.max_cut_db), cfg.max_boost_db)
        step = self._step_db
        self._gain_db += min(max(want - self._gain_db, -step), step)
        self.stats.gain_db = self._gain_db

    # -- feedback ------------------------------------------------------------------------------

    def _feedback_tick(self, frame: np.ndarray) -> None:
        self._in.push(frame)
        self._fb_tick += 1
        if self._fb_tick % FB_CHECK_TICKS == 0:
            self._check()

    def _check(self) -> None:
        if self._loop_lag is not None and (self._fb_tick - self._last_positive) * self._tick_s >= FB_RELEASE_S:
            self._loop_lag = None  # no sign of the loop for a while (headphones on, or muted)
            self._candidate_checks = 0
            if self.stats.feedback == "loop":
                self.stats.feedback = None
        x = self._in.decimated()
        x_rms = float(np.sqrt(np.dot(x, x) / len(x)))
        if self._fb_tick % (FB_CHECK_TICKS * RESONANCE_EVERY) == 0:
            self._resonance()
        if x_rms < FB_MIN_RMS or self._return_active_ticks * self._tick_s > FB_HOLD_S:
            self._candidate_lag = None
            return  # nothing to compare: the input or what they hear is silent
        envelope = np.fromiter(self._envelope, dtype=np.float64, count=ENVELOPE_TICKS)
        early = self._sent_ticks < ENVELOPE_WARMUP
        if not early and _rhythmic(envelope[-self._sent_ticks:]):
            self._candidate_lag = None
            return  # what they hear repeats itself: no evidence either way
        corr, lag = _correlate(x, self._out.decimated())
        self.stats.checks += 1
        self.stats.feedback_corr = corr
        if corr >= FB_MIN_CORR:
            self._last_positive = self._fb_tick
            same = self._candidate_lag is not None and abs(lag - self._candidate_lag) <= FB_LAG_SLACK
            self._candidate_checks = self._candidate_checks + 1 if same else 1
            self._candidate_lag = lag
            if self._loop_lag is not None:
                self._loop_lag = lag
            elif self._candidate_checks >= (FB_CONFIRM_EARLY if early else FB_CONFIRM):
                self._loop_lag = lag
                self.stats.feedback = "loop"
                self.stats.detected_sample = self.sample
                # the input was taken before this tick's return feed was sent: one tick more
                self.stats.feedback_lag_ms = lag * 1000 / FB_RATE + self._tick_s * 1000
                self.stats.detections += 1
        else:
            self._candidate_lag = None

    def _resonance(self) -> None:
        """A narrow peak that keeps growing (a howl whose loop this cannot see), in the input's
        last 85 ms at 48 kHz."""
        x = self._in.window(RESONANCE_WINDOW)
        x_rms = float(np.sqrt(np.dot(x, x) / len(x)))
        if x_rms < FB_MIN_RMS:
            self._peaks.clear()
            if self.stats.feedback == "resonance":
                self.stats.feedback = None
            return
        spectrum = np.abs(np.fft.rfft(x * _HANN_RAW))
        i = int(np.argmax(spectrum))
        peak = float(spectrum[i])
        half = len(spectrum) // 2
        median = float(np.partition(spectrum, half)[half])
        pmr = db(peak / max(median, 1e-12))
        level = db(x_rms)
        if pmr < RESONANCE_MIN_PMR_DB:
            self._peaks.clear()
            if self.stats.feedback == "resonance":
                self.stats.feedback = None
            return
        if self._peaks and abs(self._peaks[-1][0] - i) > 1:
            self._peaks.clear()
        self._peaks.append((i, level))
        if self.stats.feedback == "resonance" or len(self._peaks) <= RESONANCE_CHECKS:
            return
        levels = [lv for _, lv in self._peaks]
        rising = all(b - a >= RESONANCE_STEP_DB for a, b in zip(levels, levels[1:]))
        if rising and levels[-1] - levels[0] >= RESONANCE_RISE_DB and level >= RESONANCE_MIN_DBFS:
            self.stats.feedback = "resonance"
            self.stats.detected_sample = self.sample
            self.stats.detections += 1

    def _duck_now(self) -> float:
        """The feedback duck: outright for a resonance; for a loop, while what the speaker hears
        carries sound (and for the loop's delay after), so they are heard when they talk alone."""
        fb = self.stats.feedback
        duck = fb == "resonance" or (fb == "loop" and self._return_active_ticks * self._tick_s <= FB_HOLD_S)
        if duck:
            self.stats.ducked_ticks += 1
        return self._duck_linear if duck else 1.0


_HANN_RAW = np.hanning(RESONANCE_WINDOW).astype(np.float32)
_MEAN = np.full(DECIMATE, 1 / DECIMATE, dtype=np.float32)


def _decimate(frame: np.ndarray) -> np.ndarray:
    """48 kHz -> 4 kHz by block means (a boxcar: crude, and enough to compare speech)."""
    n = len(frame) - len(frame) % DECIMATE
    return frame[:n].reshape(-1, DECIMATE) @ _MEAN


def _rhythmic(envelope: np.ndarray) -> bool:
    """Whether the level of what was sent changes with a period of 0.1 to 1 s (a beep twice a
    second, a beat): normalised autocorrelation of the level's changes from tick to tick (so
    silence turning into speech is one change, not a pattern), over the overlapping part at
    each lag. Speech's syllables do not keep such time."""
    e = np.diff(envelope.astype(np.float64))
    lo, hi = ENVELOPE_LAGS
    full = np.correlate(e, e, "full")[len(e) - 1:]
    c2 = np.concatenate(([0.0], np.cumsum(e * e)))
    n = len(e)
    lags = np.arange(lo, hi + 1)
    head = c2[n - lags]  # sum of e[:n-L]^2
    tail = c2[n] - c2[lags]  # sum of e[L:]^2
    norm = np.sqrt(np.maximum(head * tail, 1e-24))
    return bool((full[lo: hi + 1] / norm).max() > ENVELOPE_MAX_PERIODICITY)


def _correlate(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """The input ``x`` (the last FB_WINDOW samples) against what was sent, ``y`` (the last
    FB_WINDOW + FB_MAX_LAG samples, ending at the same time): the best normalised
    correlation over lags 0..FB_MAX_LAG and its lag. 0.0 when the peak does not stand out
    from the correlation's spread, or when what was sent repeats itself (a tone, a beep
    every half second): a delayed copy of periodic audio is no evidence of a loop, as any
    source of the same sound would match it."""
    n = len(x)
    fy = np.fft.rfft(y, FB_NFFT)
    fx = np.fft.rfft(x, FB_NFFT)
    full = np.fft.irfft(fy * np.conj(fx), FB_NFFT)
    # full[s] = sum_t x[t] * y[t + s]; lag L (x delayed by L after y) is s = FB_MAX_LAG - L
    shifts = full[: FB_MAX_LAG + 1][::-1]  # index = lag
    y2 = np.concatenate(([0.0], np.cumsum(y.astype(np.float64) ** 2)))
    starts = FB_MAX_LAG - np.arange(FB_MAX_LAG + 1)
    energy_y = y2[starts + n] - y2[starts]
    energy_x = float(np.dot(x, x))
    norm = np.sqrt(np.maximum(energy_y, 1e-12) * max(energy_x, 1e-12))
    c = shifts / norm
    c[energy_y < FB_MIN_RMS ** 2 * n] = 0.0
    lag = int(np.argmax(c))
    peak = float(c[lag])
    if peak < FB_MIN_CORR:
        return peak, lag  # nothing like a loop: no need to ask whether it is evidence
    spread = float(np.sqrt(np.mean(c * c)))
    if spread <= 0 or peak / spread < FB_MIN_PEAKINESS:
        return 0.0, lag
    auto = np.fft.irfft(fy * np.conj(fy), FB_NFFT)[:FB_MAX_LAG + 1]
    if auto[0] <= 0 or float(auto[FB_MIN_PERIOD:].max()) > FB_MAX_PERIODICITY * float(auto[0]):
        return 0.0, lag
    return peak, lag


class TruePeakLimiter:
    """The program never clips: its true peak (BS.1770 Annex 2: 4x oversampled) stays under
    the ceiling. No look-ahead, so no delay: each 1 ms block's gain is at most what that
    block's peak allows (the gain may drop at a block's start), and recovers at
    ``release_db_per_s``. Inside a block the gain moves linearly between two values that
    are both under the block's limit, so no sample goes over."""

    BLOCK = SAMPLE_RATE // 1000
    TAPS = 48  # 12 per phase

    def __init__(self, ceiling_dbtp: float, release_db_per_s: float) -> None:
        self.ceiling = 10 ** (ceiling_dbtp / 20)
        self._h = (signal.firwin(self.TAPS, 1 / 4) * 4).astype(np.float32)
        self._hist = np.zeros(self.TAPS // 4, dtype=np.float32)
        self._gain = 1.0
        self._recover = 10 ** (release_db_per_s * self.BLOCK / SAMPLE_RATE / 20)
        self.limited_blocks = 0
        self.min_gain_db = 0.0
        self.ramp: np.ndarray | None = None  # the gain the last frame got (None: untouched)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """The frame under the ceiling: the frame itself when nothing is near it."""
        peak_sample = float(np.max(np.abs(frame))) if len(frame) else 0.0
        x = np.concatenate((self._hist, frame))
        self._hist = x[-len(self._hist):].copy()
        if peak_sample < self.ceiling * 0.5 and self._gain >= 1.0:
            self.ramp = None
            return frame  # 6 dB under the ceiling: no inter-sample peak can reach it
        up = np.abs(signal.upfirdn(self._h, x, up=4))
        # the interpolated signal for the frame's samples: skip the history and the filter's delay
        delay = (self.TAPS - 1) // 2
        off = 4 * len(self._hist) + delay
        v = up[off: off + 4 * len(frame)]
        tp = np.maximum(np.maximum(v[0::4], v[1::4]), np.maximum(v[2::4], v[3::4]))
        tp = np.maximum(tp, np.abs(frame))
        nblocks = len(frame) // self.BLOCK
        peaks = tp[: nblocks * self.BLOCK].reshape(nblocks, self.BLOCK).max(axis=1)
        gains = np.empty(nblocks + 1, dtype=np.float32)
        gains[0] = g = self._gain
        for b in range(nblocks):
            need = self.ceiling / peaks[b] if peaks[b] > self.ceiling else 1.0
            g = min(need, g * self._recover, 1.0)
            if need < 1.0 and g < gains[b]:
                gains[b] = min(gains[b], need)  # the block's start too
                self.limited_blocks += 1
            gains[b + 1] = g
        self._gain = g
        self.min_gain_db = min(self.min_gain_db, db(float(gains.min())))
        ramp = np.empty(nblocks * self.BLOCK, dtype=np.float32)
        t = np.arange(self.BLOCK, dtype=np.float32) / self.BLOCK
        ramp.reshape(nblocks, self.BLOCK)[:] = gains[:-1, None] + (gains[1:] - gains[:-1])[:, None] * t
        if len(ramp) < len(frame):
            ramp = np.concatenate((ramp, np.full(len(frame) - len(ramp), ramp[-1], dtype=np.float32)))
        self.ramp = ramp
        out = frame * ramp
        return np.clip(out, -self.ceiling, self.ceiling, out=out)
