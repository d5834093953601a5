"""One process's share of the listeners: a uvloop event loop running a ``Listener`` task per
session, and a reporter that sends a snapshot to the parent once a second over a pipe.

Messages, worker -> parent: ``{"ready": True}``, then ``{"tick": k, ...}`` once a second
(counts now, cumulative counters, histograms of the last second), then ``{"final": ...}``.
Parent -> worker: the wall time of T0, once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from multiprocessing.connection import Connection as Pipe

from amphi.loadtest.buffer import Playback
from amphi.loadtest.config import LoadConfig
from amphi.loadtest.http import Tls
from amphi.loadtest.listener import Listener
from amphi.core.files import raise_open_files
from amphi.loadtest.profiles import Session
from amphi.loadtest.stats import Histogram

LAG_PROBE_S = 0.05  # event-loop lag probe period
END_GRACE_S = 15.0  # after the run's end: leaves in flight


class Swarm:
    def __init__(self, cfg: LoadConfig, sessions: list[Session], worker: int) -> None:
        self.cfg = cfg
        self.tls = Tls(cfg.ca_file)  # which servers speak https, and the trust in them
        self.sessions = sessions
        self.rng = random.Random(cfg.seed * 1000 + worker)
        self.listeners: list[Listener] = []
        self.t0_wall = 0.0
        self.t0_loop = 0.0
        self.requests = 0
        self.renewals = 0  # through the API (join with the token)
        self.playlist_renewals = 0  # by a live-playlist reload's redirect (docs/admission.md)
        self.line_reads = 0  # line documents read while waiting (docs/admission.md)
        self.drops = 0
        self.edge_switches = 0  # media moved to another edge after one stopped answering
        self.joins_cut_off = 0  # join requests in flight when their session ended
        self.rejoins = 0  # joins for a new seat by a listener that had one (its token refused, or lost)
        self.errors: Counter[str] = Counter()
        self.join_hist, self.audio_hist, self.latency = Histogram(), Histogram(), Histogram()
        self.admit_wait = Histogram()  # arrival -> admitted
        self.edge_recovery = Histogram()  # an edge stopped answering -> media again from another
        self.part_gap = Histogram()  # stream: between two parts' arrivals within a segment (0.512 s when on time)
        self.segment_gap = Histogram()  # stream: last part of a segment -> first part of the next
        self.tick_join, self.tick_audio = Histogram(), Histogram()
        self.lag = Histogram()
        self.lag_max = 0.0
        self.send_s = 0.0  # time spent handing snapshots to the parent
        self.pow_solved = 0  # proof-of-work challenges solved (docs/defense.md) ...
        self.pow_s = 0.0  # ... and the seconds spent on them

    # -- callbacks from listeners ---------------------------------------------------------------

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def join_answer(self, seconds: float) -> None:
        self.join_hist.add(seconds)
        self.tick_join.add(seconds)

    def first_audio(self, seconds: float) -> None:
        self.audio_hist.add(seconds)
        self.tick_audio.add(seconds)

    def admitted(self, listener: Listener, now: float) -> None:
        self.admit_wait.add(now - listener.arrived)

    # -- time -----------------------------------------------------------------------------------

    def loop_time(self, at_s: float) -> float:
        return self.t0_loop + at_s

    def wall_time(self, at_s: float) -> float:
        return self.t0_wall + at_s

    async def sleep_until(self, at_s: float) -> None:
        delay = self.loop_time(at_s) - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- running --------------------------------------------------------------------------------

    async def run(self, pipe: Pipe) -> None:
        loop = asyncio.get_running_loop()
        t0_wall = pipe.recv()  # the parent's go
        self.t0_wall = t0_wall
        self.t0_loop = loop.time() + (t0_wall - time.time())
        self.listeners = [Listener(self, s, random.Random(self.rng.random())) for s in self.sessions]
        tasks = [asyncio.create_task(lst.run()) for lst in self.listeners]
        probe = asyncio.create_task(self._probe())
        reporter = asyncio.create_task(self._report(pipe))
        try:
            if not tasks:  # an attack alone (--listeners 0): this worker only reports, until the end
                await asyncio.sleep(max(0.0, self.loop_time(self.cfg.duration_s) - loop.time()))
            done, pending = await asyncio.wait(tasks, timeout=max(0.0, self.loop_time(self.cfg.duration_s) - loop.time())
                                               + END_GRACE_S) if tasks else (set(), set())
            for t in pending:
                t.cancel()
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    self.error(f"bug_{type(t.exception()).__name__}")
        finally:
            probe.cancel()
            reporter.cancel()
        pipe.send({"final": self.final()})

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            lag = loop.time() - t - LAG_PROBE_S
            self.lag.add(max(0.0, lag))
            self.lag_max = max(self.lag_max, lag)

    async def _report(self, pipe: Pipe) -> None:
        k = 0
        loop = asyncio.get_running_loop()
        while True:
            k += 1
            await asyncio.sleep(max(0.0, self.loop_time(float(k)) - loop.time()))
            snap = self.snapshot(k)
            t = time.perf_counter()
            pipe.send(snap)  # small (a few KB); blocks only if the parent stops reading
            self.send_s += time.perf_counter() - t

    def snapshot(self, k: int) -> dict[str, object]:
        now = time.time()
        states: Counter[str] = Counter()
        stalled_now = stalls = 0
        stall_s = 0.0
        for lst in self.listeners:
            states[lst.state] += 1
            b = lst.buffer
            if b is not None:
                stall_s += b.stalled_seconds(min(now, lst.ends_at))  # a session is not played past its end
                stalls += b.stalls
                if b.state is Playback.STALLED and lst.state == "playing":
                    stalled_now += 1
        snap = {"tick": k, "states": dict(states), "stalled_now": stalled_now, "stalls": stalls, "stall_s": stall_s,
                "requests": self.requests, "errors": dict(self.errors), "join": self.tick_join.to_dict(),
                "audio": self.tick_audio.to_dict(), "lag_max": self.lag_max, "cpu_s": time.process_time()}
        self.tick_join, self.tick_audio = Histogram(), Histogram()
        self.lag_max = 0.0
        return snap

    def final(self) -> dict[str, object]:
        outcomes: Counter[str] = Counter(lst.outcome or lst.state for lst in self.listeners)
        stalled = [lst.buffer for lst in self.listeners if lst.buffer is not None and lst.buffer.stalls]
        return {
            "sessions": len(self.listeners),
            "outcomes": dict(outcomes),
            "admitted": sum(lst.admitted_at is not None for lst in self.listeners),
            "with_audio": sum(lst.first_audio is not None for lst in self.listeners),
            "waited": sum(lst.waited for lst in self.listeners),
            "admitted_from_line": sum(lst.waited and lst.admitted_at is not None for lst in self.listeners),
            "answered": sum(lst.answered is not None for lst in self.listeners),
            "stalled_listeners": len(stalled),
            "stalls": sum(b.stalls for b in stalled),
            "stall_s": sum(b.stalled_seconds(b.last) for b in stalled),
            # the longest gap each listener that played heard (0 for most; a fail-over's shows here)
            "gap": Histogram.of(lst.buffer.longest_gap(lst.buffer.last) for lst in self.listeners
                                if lst.buffer is not None and lst.buffer.started_at is not None).to_dict(),
            "rejoins": self.rejoins,
            "requests": self.requests, "renewals": self.renewals,
            "playlist_renewals": self.playlist_renewals, "line_reads": self.line_reads, "drops": self.drops,
            "edge_switches": self.edge_switches,
            "joins_cut_off": self.joins_cut_off,
            "errors": dict(self.errors),
            "join": self.join_hist.to_dict(), "audio": self.audio_hist.to_dict(),
            "latency": self.latency.to_dict(), "admit_wait": self.admit_wait.to_dict(), "lag": self.lag.to_dict(),
            "edge_recovery": self.edge_recovery.to_dict(),
            "part_gap": self.part_gap.to_dict(), "segment_gap": self.segment_gap.to_dict(),
            "cpu_s": time.process_time(), "send_s": self.send_s, "cpus": sorted(os.sched_getaffinity(0)),
            "pow_solved": self.pow_solved, "pow_s": self.pow_s,
        }


def worker_main(pipe: Pipe, cfg: LoadConfig, sessions: list[Session], worker: int) -> None:
    """Entry point of a worker process."""
    import gc

    import uvloop

    raise_open_files()
    swarm = Swarm(cfg, sessions, worker)
    # thousands of listeners are hundreds of thousands of long-lived objects: a full collection
    # of them stalled the loop for a large part of a second (every listener's buffer at once).
    # What exists now is never collected; young objects are, less often
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    pipe.send({"ready": True})
    try:
        uvloop.run(swarm.run(pipe))
    except KeyboardInterrupt:
        pass
    finally:
        pipe.close()
