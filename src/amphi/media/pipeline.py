"""One Space's media pipeline: the async shell around the pure stages.

    tracks (jitter buffers) -> [clock task] mixer -> bounded channel -> [encoder task]
        AAC encoder (worker thread) -> segmenter -> timeline (served live)
                                                 -> bounded queue -> [recorder task]
                                                    recording (live segments, on disk)
                                  mixer -> return feeds (each speaker: the others' mix)

A part is published as soon as it is encoded: the recording's writes (and their fsyncs) run
behind a queue, never between a part and its listeners.

Lifecycle: new -> running (hold or live) -> ended, or -> abandoned, or -> handed off.
``end()`` returns once the last segment is on disk and the replay playlist is written; once
ended, a pipeline cannot be reused. ``stop()`` is ``end()`` for shutdown, then waits until
every task has exited. ``abandon()`` stops the program without ending the Space (this node
lost it to another, which carries it on): nothing is published after it returns, the replay
is not written. ``hand_off()`` is the planned move (``amphi drain``): the program stops at the
next part boundary with its last segment complete and recorded, so another node continues it
with no gap (``Resume(gap=False)``); then as after ``abandon()``.

A pipeline built with ``resume`` (``amphi.media.segmenter.Resume``, from the standby's copy
of a Space hosted elsewhere, ``amphi.media.replica``) continues that Space's program: its
timeline starts with the segments the previous host made, and its first segment follows them
(msn, decode time, moof sequence), with a discontinuity after a crash.
Listeners waiting on a blocking playlist reload are woken whenever the timeline moves.

The tasks run under a ``Supervisor``: a task that raises is logged once with its traceback
and named in ``failures`` (for the Space's status). A dead mixer or encoder stops the
program (the other is cancelled; the recording keeps what reached it and ``end()`` still
closes it); a dead recorder stops the recording, not the live program.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from amphi.core.config import AAC_FRAME, SAMPLE_RATE, MediaConfig
from amphi.core.errors import IllegalTransition
from amphi.core.tasks import Supervisor
from amphi.media.encoder import DELAY, AacEncoder
from amphi.media.guard import GuardStats
from amphi.media.jitter import JitterBuffer
from amphi.media.mixer import Mixer, Mode, ProgramFrame
from amphi.media.programs import hold_music
from amphi.media.recorder import RECORDER_QUEUE_SEGMENTS, Recorder, RecorderStats, Recording
from amphi.media.segmenter import Event, Resume, SegmentClosed, Segmenter
from amphi.media.timeline import MediaTimeline

log = logging.getLogger(__name__)

ENCODER_LAG_FRAMES = 1  # ffmpeg's AAC encoder returns nothing for its first input frame


class FrameChannel:
    """Mixer clock -> encoder: bounded (the oldest frame is dropped when full) and woken by a
    watermark, so the encoder task runs once per part instead of once per 20 ms tick."""

    def __init__(self, bound: int) -> None:
        self._frames: deque[ProgramFrame] = deque()
        self._bound = bound
        self._samples = 0  # samples of the frames held
        self._want = 1  # wake the taker once this many samples are held
        self._ready = asyncio.Event()

    def put(self, frame: ProgramFrame) -> int:
        """Adds a frame; returns how many old frames were dropped to make room. The end
        marker always gets in."""
        dropped = 0
        while len(self._frames) >= self._bound:
            self._samples -= len(self._frames.popleft().samples)
            dropped += 1
        self._frames.append(frame)
        self._samples += len(frame.samples)
        if self._samples >= self._want or frame.mode is Mode.ENDED:
            self._ready.set()
        return dropped

    async def take(self, want_samples: int) -> list[ProgramFrame]:
        """Every frame held, once at least ``want_samples`` samples (or the end) are in."""
        self._want = max(1, want_samples)
        while self._samples < self._want and not (self._frames and self._frames[-1].mode is Mode.ENDED):
            self._ready.clear()
            await self._ready.wait()
        frames = list(self._frames)
        self._frames.clear()
        self._samples = 0
        return frames


class FrameFeed(Protocol):
    def push(self, samples: np.ndarray) -> None:
        """One 20 ms return frame, float32 mono; must not block or keep more than it bounds."""


@dataclass
class PipelineStats:
    ticks: int = 0
    wakeups: int = 0  # times the clock task ran; about one per tick unless it spins
    frames_dropped: int = 0  # program frames dropped because the encoder fell 1 s behind
    late_ticks: int = 0  # ticks produced more than one period late (event loop stalls)
    max_lag_s: float = 0.0  # worst lag of the program clock behind wall time
    encode_s: float = 0.0  # CPU time spent encoding (thread)
    recorder: RecorderStats = field(default_factory=RecorderStats)  # the recording's queue to the disk


class Pipeline:
    def __init__(
        self,
        space_id: str,
        cfg: MediaConfig,
        recording: Recording,
        *,
        live: bool = False,
        hold: Callable[[int, int], np.ndarray] = hold_music,
        recorder_bound: int = RECORDER_QUEUE_SEGMENTS,
        resume: Resume | None = None,
    ) -> None:
        """``resume``: continue the program another node made (see the module's docstring);
        ``recording`` is then the one the standby's copy wrote, already begun, and goes on."""
        self.space_id = space_id
        self._cfg = cfg
        self.recording = recording
        self.resume = resume
        self.mixer = Mixer(cfg, hold)
        if resume is None:
            self.timeline = MediaTimeline(cfg)
        else:
            self.timeline = MediaTimeline(cfg, first_msn=resume.next_msn, segments=resume.segments,
                                          discontinuity_sequence=resume.discontinuity_sequence)
        self.encoder = AacEncoder(cfg.bitrate)
        self.init = self.encoder.init_segment()
        self.stats = PipelineStats()
        self.recorder = Recorder(recording, bound=recorder_bound, stats=self.stats.recorder)
        self._live_from: int | None = None  # program sample where live audio begins
        if live:
            self.mixer.mode = Mode.LIVE
            self._live_from = -DELAY
        self._channel = FrameChannel(cfg.program_queue_ticks)
        self._segmenter: Segmenter | None = None
        self.supervisor = Supervisor(f"pipeline {space_id}")  # the recorder, the mixer clock, the encoder
        self._program: list[asyncio.Task[None]] = []  # the mixer clock and the encoder
        self._started = False
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()  # the program ended, or a task of it died
        self._ended = asyncio.Event()  # ended and the recording closed
        self._abandoned = False
        self._moving = False  # hand_off() asked: the encoder stops at the next part boundary
        self._moved = False  # handed off: the last part is out, listeners waiting for more are released
        self._hand_off: asyncio.Future[int] | None = None
        self._ending = asyncio.Lock()
        self._feeds: dict[str, FrameFeed] = {}
        self.epoch = 0.0  # wall time at which program sample 0 was mixed
        self._wall = 0.0

    # -- control --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("pipeline already started")
        self._started = True
        self.epoch = time.time()
        self._wall = self.epoch  # the segmenter's (and the recording's) epoch: wall time = it + (decode time - DELAY) / rate
        resume = self.resume
        if resume is None:
            self._segmenter = Segmenter(self._cfg, epoch=self.epoch, encoder_delay=DELAY)
        else:
            # decode times run on from the previous host's: program sample s decodes at
            # next_sample + DELAY + s after a crash, next_sample + s after a hand-over (the
            # priming unit is dropped: ``_encode``); the segmenter's wall time of decode time d
            # is epoch + (d - DELAY) / SAMPLE_RATE. After a crash, program sample 0 is mixed
            # now (the wall time jumps over the gap, as in a new program); after a hand-over the
            # first segment starts at the wall time the previous one ended (the same epoch)
            if resume.gap:
                wall = self.epoch - resume.next_sample / SAMPLE_RATE
            else:
                wall = resume.end_wall - (resume.next_sample - DELAY) / SAMPLE_RATE
            self._wall = wall
            self._segmenter = Segmenter(self._cfg, epoch=wall, encoder_delay=DELAY,
                                        first_msn=resume.next_msn, first_sample=resume.next_sample,
                                        first_sequence=resume.next_sequence, discontinuity=resume.gap)
            for seg in resume.unrecorded:  # the previous host's last (partial) segment, before ours
                self.recorder.begin(epoch=seg.pdt - (seg.first_sample - DELAY) / SAMPLE_RATE, delay=DELAY,
                                    asc=self.encoder.audio_specific_config)
                self.recorder.put(seg)
        spawn = self.supervisor.spawn
        spawn(self.recorder.run(), f"recorder:{self.space_id}")  # the consumer first: it outlives the producers
        self._program = [
            spawn(self._clock(), f"mixer:{self.space_id}"),
            spawn(self._encode(), f"encoder:{self.space_id}"),
        ]
        for task in self._program:
            task.add_done_callback(self._program_done)
        log.info("pipeline %s started (%s)", self.space_id, self.mixer.mode.value)

    def go_live(self) -> int:
        """Switches hold -> live at the next aligned sample; returns that sample."""
        return self.mixer.request(Mode.LIVE)

    async def end(self) -> None:
        """Ends the program at the next aligned sample and waits until the recording is
        closed. Idempotent. After a task of the program died, closes the recording with
        what reached it."""
        if not self._settled.is_set():
            if self.mixer.mode is Mode.HOLD and self.mixer.pending is None:
                self.mixer.request(Mode.LIVE)  # a Space ended before it started records nothing
            if self.mixer.mode is not Mode.ENDED:  # the last tick may be mixed, still encoding
                self.mixer.request(Mode.ENDED)
        if not self._started:
            await self._wind_down()
        await self._settled.wait()
        if not self._ended.is_set():
            await self._wind_down()
        await self._ended.wait()

    async def stop(self) -> None:
        """Shutdown: end the program (the recording is closed), then wait until every task
        has exited. A task that failed was logged when it failed and stays in ``failures``."""
        await self.end()
        await self.supervisor.close()

    async def abandon(self) -> None:
        """This node lost the Space (its lease lapsed: fenced): stops the program without
        ending the Space. The mixer and encoder are cancelled (an encode in flight is
        discarded, never published), the recording stops taking segments and is not finished
        as a replay (no vod.m3u8: another node carries the Space on and finishes it), and
        every listener waiting on this pipeline is released (``wait_for`` answers False; a
        streamed segment is cut off). The timeline is not ended: an ended playlist would tell
        players the Space is over. After it returns nothing more is published; ``end()`` and
        ``stop()`` return at once. Idempotent."""
        self._abandoned = True
        async with self._ending:
            if not self._ended.is_set():
                for task in self._program:
                    task.cancel()
                if self._program:
                    await asyncio.wait(self._program)
                await self.recorder.abandon()
                self._settled.set()
                self._ended.set()
                log.warning("pipeline %s abandoned: another node carries the Space on", self.space_id)
        self._notify()
        await self.supervisor.close()

    async def hand_off(self) -> int:
        """A planned move of the program to another node; returns the msn of its last segment
        (the next node resumes at msn + 1 with ``Replica.resume_point(gap=False)``).

        The program ends at the next part boundary (at most one part away): that part is
        published, the open segment is closed there (shorter than the others; its EXTINF says
        so) and listed complete, so a standby following with blocking reloads gets it at once.
        The mixer and the encoder stop; audio mixed past that boundary is never published. The
        recording writes that last segment and is closed without the replay playlist (the
        next node records on). The timeline is not ended (no ENDLIST: the Space goes on): what
        it holds is still served, and listeners waiting for what will not come from here (a
        reload past the last part, the hinted part, the next segment) are released as by
        ``abandon()``. After it returns nothing more is published; ``end()`` returns at once.
        Idempotent, and safe to cancel (the move goes on). After ``end()`` or ``abandon()`` it
        returns the newest complete segment at once; ``IllegalTransition`` if there is none."""
        if self._hand_off is None:
            if not self._started:
                raise IllegalTransition(f"pipeline {self.space_id} (not started) has no segment to hand off")
            self._moving = True  # now: the encoder stops at the first part boundary from here
            self._hand_off = asyncio.ensure_future(self._move())
        return await asyncio.shield(self._hand_off)

    async def _move(self) -> int:
        async with self._ending:
            if not self._ended.is_set():
                encoder = self._program[1]
                await asyncio.wait([encoder])  # it stops at the next part boundary (or ended, or died)
                for task in self._program:
                    task.cancel()
                await asyncio.wait(self._program)
            if not self._ended.is_set():
                await self.recorder.close(replay=False)  # the last segment on disk, no vod.m3u8
                self._settled.set()
                self._ended.set()
                self._moved = True
                log.info("pipeline %s handed off after segment %s: %.3f s recorded here", self.space_id,
                         self._last_msn(), self.recording.duration)
        self._notify()
        await self.supervisor.close()
        msn = self._last_msn()
        if msn is None:
            state = "handed off" if self._moved else "abandoned" if self._abandoned else "ended"
            raise IllegalTransition(f"pipeline {self.space_id} ({state}) has no complete segment to hand off")
        return msn

    def _last_msn(self) -> int | None:
        segments = self.timeline.segments
        return segments[-1].msn if segments else None

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    @property
    def handed_off(self) -> bool:
        """The program moved to another node (``hand_off``): nothing more comes from here."""
        return self._moved

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def failures(self) -> dict[str, str]:
        """Task name -> reason, for each task of this pipeline that raised (empty: healthy).
        What the Space's status shows as ``"pipeline": {"failed": ...}``."""
        return dict(self.supervisor.failures)

    def _program_done(self, task: asyncio.Task[None]) -> None:
        """The mixer and the encoder make one program: if either raised (the supervisor
        logged it) or was cancelled from outside, the other is stopped and ``end()`` stops
        waiting for a program end that cannot come. A dead recorder is not here: the live
        program goes on, its later segments dropped and counted."""
        if not task.cancelled() and task.exception() is None:
            return  # the program ended
        for other in self._program:
            other.cancel()
        self._settled.set()
        self._notify()

    async def _wind_down(self) -> None:
        """Ends the pipeline without its program: cancels what is left of it, closes the
        recording with what reached the recorder, ends the timeline. Once."""
        async with self._ending:
            if self._ended.is_set():
                return
            if not self._started:  # nothing was recorded: nothing to close
                self._settled.set()
                self._ended.set()
                return
            for task in self._program:
                task.cancel()
            if self._program:
                await asyncio.wait(self._program)
            await self.recorder.close()
            self.timeline.end()
            self._settled.set()
            self._ended.set()
            self._notify()
            log.warning("pipeline %s ended after a failure (%s): %.3f s recorded", self.space_id,
                        "; ".join(f"{k}: {v}" for k, v in self.failures.items()) or "cancelled",
                        self.recording.duration)

    # -- tracks ---------------------------------------------------------------------------

    def add_track(self, name: str) -> JitterBuffer:
        """A speaker's input (a new one replaces the speaker's previous input)."""
        return self.mixer.add_track(name)

    def add_feed(self, name: str, feed: FrameFeed) -> None:
        """``feed`` gets the return feed of speaker ``name`` (the others' mix) from now on."""
        self._feeds[name] = feed
        self.mixer.return_to.add(name)

    def remove_feed(self, name: str, feed: FrameFeed) -> None:
        if self._feeds.get(name) is feed:
            del self._feeds[name]
            self.mixer.return_to.discard(name)

    def set_muted(self, names: set[str]) -> None:
        self.mixer.muted = set(names)

    def levels(self) -> dict[str, tuple[float, bool, GuardStats | None]]:
        """Each track's level (0..1) since the last call, whether it is talking (both of what
        the microphone sends, muted or not), and its guard's reading (None: no guard)."""
        guards = self.mixer.guards or {}
        return {name: (m.read(), m.talking, g.stats if (g := guards.get(name)) else None)
                for name, m in self.mixer.meters.items()}

    # -- listeners ------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Waits until ``predicate()`` holds, the program ends, or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if self._abandoned or self._moved:
                return False  # released: this node no longer serves the Space
            if self.timeline.ended:
                return predicate()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return predicate()
        return True

    # -- tasks ----------------------------------------------------------------------------

    async def _clock(self) -> None:
        """Makes tick k at t0 + k * period. After a stall of the event loop (a slow step, the
        process descheduled) several ticks are due at once; the clock yields to the loop
        before each of them, so the speakers' audio that arrived during the stall (waiting
        in the sockets) reaches the jitter buffers before it is mixed, and tells the mixer
        how many ticks are overdue, so that audio is kept for them rather than dropped as
        too far ahead (``MediaConfig.stall_cover_ms``). A stall is then not heard as
        silence. The event loop runs due timers before it polls the sockets, so without
        the yield every late tick would find the buffers empty."""
        loop = asyncio.get_running_loop()
        period = self._cfg.tick_ms / 1000
        t0 = loop.time()
        k = 0
        while True:
            self.stats.wakeups += 1
            now = loop.time()
            # tick k is due at t0 + k * period; compare that very expression with the clock
            # (uvloop's clock moves in whole milliseconds: an integer division of the elapsed
            # time can round a tick that is due right now down to "not yet")
            while t0 + k * period <= now:
                lag = now - (t0 + k * period)
                if lag > period:
                    self.stats.late_ticks += 1
                    self.stats.max_lag_s = max(self.stats.max_lag_s, lag)
                frame = self.mixer.tick(overdue=max(0, math.floor((now - t0) / period) - k))
                k += 1
                self.stats.ticks += 1
                self._put(frame)
                if frame.mode is Mode.ENDED:
                    return
                if t0 + k * period <= now:
                    await asyncio.sleep(0)  # more ticks are due: let what arrived meanwhile in first
                    now = loop.time()
            # uvloop's timers have 1 ms resolution and round shorter sleeps to zero, which
            # would spin; sleep whole milliseconds (a tick may be up to 1 ms late, never early)
            await asyncio.sleep(math.ceil((t0 + k * period - now) * 1000) / 1000)

    def _put(self, frame: ProgramFrame) -> None:
        if frame.returns:
            for name, samples in frame.returns.items():
                feed = self._feeds.get(name)
                if feed is not None:
                    feed.push(samples)
        self.stats.frames_dropped += self._channel.put(frame)

    async def _encode(self) -> None:
        """Encodes in a worker thread, one hand-off per part: a part cannot be published
        before its last sample is mixed anyway, so batching adds no delay."""
        seg = self._segmenter
        assert seg is not None
        next_unit = 0  # index of the next access unit out of the encoder
        handed = 0  # program samples handed to the encoder so far
        # A program that continues another node's with no gap (a hand-over) drops its encoder's
        # first unit, the priming one. AAC overlaps each frame with the next: the decoder holds
        # the second half of the previous host's last frame and adds the first half of ours.
        # The priming unit's first half is silence: the old audio would fade out over 21 ms and
        # ours start at once (a dip, and a click when the two do not line up). Our second unit's
        # first half is our first 1024 samples: the two cross-fade instead (docs/streaming.md,
        # "The seam of a hand-over", has the measurement).
        skip = 1 if self.resume is not None and not self.resume.gap else 0
        try:
            while True:
                # the encoder hands out unit n once it has input frame n + 1
                need = (next_unit + seg.units_to_part_end + ENCODER_LAG_FRAMES) * AAC_FRAME
                batch = await self._channel.take(need - handed)
                if self._live_from is None:
                    self._live_from = next((f.sample for f in batch if f.mode is Mode.LIVE), None)
                ending = batch[-1].mode is Mode.ENDED
                handed += sum(len(f.samples) for f in batch)
                units = await asyncio.to_thread(self._encode_batch, batch, ending)
                for unit in units:
                    start = next_unit * AAC_FRAME - DELAY  # program sample this unit carries
                    live = self._live_from is not None and start >= self._live_from
                    next_unit += 1
                    if skip:
                        skip -= 1
                        continue
                    self._apply(seg.push(unit, live=live))
                    if self._moving and not ending and seg.units_to_part_end == self._cfg.part_packets:
                        # a part was just published: hand-off. Its segment closes here, complete;
                        # the units after it are dropped (the next node mixes on from here)
                        self._apply(seg.finish())
                        return
                if ending:
                    self._apply(seg.finish())
                    await self.recorder.close()  # every segment on disk, then the replay playlist
                    self.timeline.end()
                    self._settled.set()
                    self._ended.set()
                    self._notify()
                    log.info("pipeline %s ended: %.3f s recorded", self.space_id, self.recording.duration)
                    return
        finally:
            self._notify()

    def _encode_batch(self, frames: list[ProgramFrame], ending: bool) -> list[bytes]:
        """Runs in a worker thread; its CPU time is that thread's."""
        t = time.thread_time()
        audio = [f.samples for f in frames if f.mode is not Mode.ENDED]
        units = self.encoder.encode(np.concatenate(audio)) if audio else []
        if ending:
            units += self.encoder.flush()
        self.stats.encode_s += time.thread_time() - t
        return units

    def _apply(self, events: list[Event]) -> None:
        seg = self._segmenter
        assert seg is not None
        if self._abandoned or self._moved:
            return  # fenced or moved: another node publishes this Space now
        for event in events:
            if isinstance(event, SegmentClosed) and event.segment.live:
                self.recorder.begin(epoch=self._wall, delay=DELAY, asc=self.encoder.audio_specific_config)
                self.recorder.put(event.segment)  # never waits: the disk is the recorder task's
            self.timeline.apply(event, seg.next_position)
        if events:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

