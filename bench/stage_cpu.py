"""CPU of the node for one Space with a full stage: 13 speakers talking, each hearing the others;
and what the sound guard (issue 20, ``amphi.media.guard``) costs per speaker.

    .venv/bin/python bench/stage_cpu.py [--speakers 13] [--seconds 30] [--workers 3] \
        [--client-nice 10] [--no-listener] [--settle 5] [--node-guard both|on|off|none] \
        [--guard-seconds 60] [--guard-target 0.5] [--small] [--json OUT] [--plot OUT.png]

Starts ``amphi serve`` on a free 127.0.0.1 port, creates and starts a Space, and invites
``--speakers - 1`` speakers (the host invites, each invitee accepts with its grant). Every
one on stage (the host with its key, the others with their grants) is a real aiortc client
(``amphi.media.ingest.client.stay_on_stage``) sending a tone of its own frequency and
receiving its return feed (the mix of the other twelve: 12 Opus decoders in, 13 mix-minus
mixes and Opus encoders out on the node). The clients run in ``--workers`` separate
processes (multiprocessing, several clients on one asyncio loop each), so the node process
is measured alone; they start ``STAGGER_S`` apart and run at niceness ``--client-nice``
(10), so that on a small machine the node does not wait behind them for a core. One LL-HLS listener (in this process, a thread: blocking playlist reload
+ preload-hinted part, no decoding) also pulls the program unless ``--no-listener``.

Once ``GET /stage`` shows every member connected and talking, the bench waits ``SETTLE_S``
and then reads, once a second for ``--seconds``, the CPU time (user + system, all threads)
of the node, of the client workers and of this process, and the machine's busy time. It
checks the stage again at the end of the window, and the node's pipeline counters
(``GET /api/node``: ``late_ticks``, ``frames_dropped``, ``max_lag_s``) over the window, to
show the program stayed whole while the node was loaded. Each client reports how many
return frames it got, their level (the others' tones) and its reconnections.

The sound guard, two ways. ``--node-guard both`` (the default) runs the whole stage twice,
the node with its guard and then with ``amphi serve --no-sound-guard``, and prints both
and their difference; a node's CPU moves by several points between runs on a shared
machine, so that difference is indicative only. Then, in this process, ``guard_cpu`` drives
``Mixer.tick`` directly with 13 tracks, every one with a return feed, in three scenarios
(a conversation: two talk in turns, espeak-ng speech, five send quiet noise, six silence;
all thirteen talking at once; the tones the clients send), through three mixers given
the same frames tick by tick, in a rotating order: without the guard
(``SoundConfig(enabled=False)``), with it, and with it timing its own guards and limiter.
Each tick is timed on this thread's CPU clock, so the machine's noise falls on all three
alike. It prints per speaker, in % of one core: off, on, on minus off, the guard's own time
(its tracks' guards and the program's limiter), the ratio on/off, and the share of return
feed samples clipped at full scale.

Exits 1 if the node uses more than ``--target`` (100 % of one core) over the window, or if
the guard costs more than ``--guard-target`` (0.5 % of one core per speaker) in the
conversation (the larger of on minus off and its own time), 2 on an error (a client cannot
connect, the stage does not fill, a worker dies). ``--small``: 3 on stage in one worker, a
2 s window after 2 s of settling, the node with its guard only, 4 s of program per guard
scenario, the guard's bar 1 % (about 25 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from amphi.core.config import SAMPLE_RATE
from harness import (NodeProcess, amphi_command, end_space, exit_on_sigterm, machine_busy_s, node_stats, process_cpu_s, run,
                     small_mode, start_space)

STAGE_SIZE = 13  # host + 2 co-hosts + 10 speakers
SETTLE_S = 5.0  # after everyone is connected and talking, before the window opens
FILL_TIMEOUT_S = 60.0  # for every client to connect and the stage to show them talking
STAGGER_S = 0.4  # between two clients' offers (the stage fills one speaker at a time)
WORKER_STOP_S = 15.0  # for the workers to hang up and exit once told to
AMPLITUDE = 0.05  # each speaker's tone: 13 of them sum to at most 0.65, no clipping
NO_GUARD_FLAG = "--no-sound-guard"  # amphi serve without the sound guard (leveler, limiter, feedback)
GUARD_TARGET_PERCENT = 0.5  # of one core per speaker, with 13 on stage (issue 20)
GUARD_WARMUP_TICKS = 50  # 1 s: the jitter buffers fill and the leveler starts before the clock counts


def tone_hz(i: int) -> float:
    """A distinct frequency per speaker: semitones up from 220 Hz."""
    return round(220.0 * 2 ** (i / 12), 1)


# -- the client workers (separate processes) ----------------------------------------------


@dataclass
class ClientReport:
    name: str
    hz: float
    connected: bool = False
    reconnects: int = 0
    drops: list[str] = field(default_factory=list)
    return_frames: int = 0
    return_rms: float = 0.0  # of the return feed over the whole run
    error: str = ""


def worker_main(server: str, space_id: str, clients: list[tuple[int, str, str, str, float]], duration: float,
                events: mp.Queue, stop: mp.Event, nice: int = 0) -> None:  # type: ignore[type-arg]
    """One worker process: its clients on one asyncio loop until ``stop`` is set or
    ``duration`` passes. ``clients``: (start slot, name, "key" or "token", credential, hz).
    Reports ("connected", name) as each comes up, ("log", wall time, logger, message) for
    each warning (e.g. a tone source behind its schedule: this worker is starved), then
    ("report", [ClientReport as dict, ...])."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    if nice:
        os.nice(nice)

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.put(("log", record.created, record.name, record.getMessage()))

    logging.basicConfig(level=logging.WARNING, handlers=[Forward()])
    reports = asyncio.run(_worker(server, space_id, clients, duration, events, stop))
    events.put(("report", [asdict(r) for r in reports]))


async def _worker(server: str, space_id: str, clients: list[tuple[int, str, str, str, float]], duration: float,
                  events: mp.Queue, stop: mp.Event) -> list[ClientReport]:  # type: ignore[type-arg]
    import numpy as np

    from amphi.media.ingest.client import stay_on_stage
    from amphi.media.ingest.sources import ToneTrack

    reports = [ClientReport(name, hz) for _, name, _, _, hz in clients]
    sums = [0.0] * len(clients)

    async def one(i: int, slot: int, kind: str, credential: str) -> None:
        r = reports[i]
        await asyncio.sleep(slot * STAGGER_S)
        track = ToneTrack(r.hz, AMPLITUDE)

        def connected() -> None:
            if not r.connected:
                events.put(("connected", r.name))
            r.connected = True

        def heard(samples: np.ndarray, wall: float) -> None:
            r.return_frames += 1
            sums[i] += float(np.dot(samples, samples))

        def dropped(reason: str, delay: float) -> None:
            r.drops.append(f"{time.time():.1f} {reason}")
            events.put(("drop", r.name, reason))

        creds = {"key": credential} if kind == "key" else {"token": credential}
        try:
            r.reconnects = await stay_on_stage(server, space_id, track, duration=duration, on_connected=connected,
                                               on_return=heard, on_drop=dropped, **creds)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            r.error = repr(exc)
            events.put(("error", r.name, repr(exc)))
        finally:
            track.stop()

    tasks = [asyncio.create_task(one(i, slot, kind, cred)) for i, (slot, _, kind, cred, _) in enumerate(clients)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while not stop.is_set() and loop.time() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=WORKER_STOP_S - 5)
    for r, s in zip(reports, sums):
        if r.return_frames:
            r.return_rms = (s / (r.return_frames * 960)) ** 0.5
    return reports


# -- the listener (a thread here) ---------------------------------------------------------


@dataclass
class ListenerStats:
    parts: int = 0
    bytes: int = 0
    errors: int = 0
    last_error: str = ""


def listen(playlist_url: str, stop: threading.Event, stats: ListenerStats) -> None:
    """Like an LL-HLS player: preload-hinted part + blocking reload for it, part after part."""
    from glass_to_glass import Playlist

    url = playlist_url
    with httpx.Client(timeout=10.0, follow_redirects=True) as client:
        while not stop.is_set():
            try:
                r = client.get(url)
                r.raise_for_status()
                url = str(r.url).split("?", 1)[0] if r.history else url  # renewed token
                hint = Playlist.parse(r.text).hint
                while hint and not stop.is_set():
                    base = url.split("?", 1)[0].rsplit("/", 1)[0] + "/"
                    part = client.get(base + hint)
                    part.raise_for_status()
                    stats.parts += 1
                    stats.bytes += len(part.content)
                    msn, index = hint.split(".")[:2]
                    r = client.get(f"{url}{'&' if '?' in url else '?'}_HLS_msn={msn}&_HLS_part={index}")
                    r.raise_for_status()
                    url = str(r.url).split("?", 1)[0] if r.history else url
                    hint = Playlist.parse(r.text).hint
            except httpx.HTTPError as exc:
                stats.errors += 1
                stats.last_error = repr(exc)
                stop.wait(0.5)


# -- the guard, in process: the same mixer ticks with it on and off ------------------------


def stage_audio(scenario: str, n: int, speakers: int, tmp: Path) -> list[np.ndarray]:
    """``speakers`` tracks of ``n`` samples for one scenario (float32, 48 kHz):

    * ``conversation``: two talk in turns of 6 s that overlap by 1 s (espeak-ng speech at
      -30 and -24 dBFS, so the leveler works), five send -60 dBFS room noise, the rest
      silence (a muted microphone still sends frames);
    * ``all talking``: every one talks at once (three voices at staggered offsets and
      levels from -40 to -20 dBFS): a loud room, the guard's worst case;
    * ``tones``: what this bench's clients send the node (a tone each, -29 dBFS).
    """
    from sound import VOICES, at_level, fit, noise, speech

    t = np.arange(n) / SAMPLE_RATE
    if scenario == "tones":
        return [(AMPLITUDE * np.sin(2 * np.pi * tone_hz(i) * t)).astype(np.float32) for i in range(speakers)]
    voices = [speech(v, text, tmp) for _, v, text in VOICES]
    if scenario == "all talking":
        return [fit(np.roll(at_level(voices[i % 3], -40 + 20 * (i % 5) / 4), int(1.7 * i * SAMPLE_RATE)), n)
                for i in range(speakers)]
    assert scenario == "conversation"
    turn = t % 10.0
    a = (fit(at_level(voices[0], -30.0), n) * (turn < 6.0)).astype(np.float32)
    b = (fit(at_level(voices[1], -24.0), n) * ((turn >= 5.0) | (turn < 1.0) & (t >= 10.0))).astype(np.float32)
    rest = speakers - 2
    quiet = [noise(n / SAMPLE_RATE, -60.0, seed=i)[:n] for i in range(min(5, rest))]
    return [a, b, *quiet, *[np.zeros(n, dtype=np.float32) for _ in range(rest - len(quiet))]]


def guard_cpu(seconds: float, speakers: int) -> dict[str, object]:
    """The guard's CPU per speaker, measured in this process on ``Mixer.tick`` alone: three
    mixers get the same tracks, every one a speaker with a return feed; one without the
    guard (``SoundConfig(enabled=False)``), one with it, and one with it whose guards and
    limiter time themselves. They tick in turn (the order rotating), each tick timed by this
    thread's CPU clock, so the machine's noise falls on all three alike. The guard's cost is
    on minus off; its own time (the third mixer's guards and limiter) says the same from
    inside."""
    from amphi.core.config import MediaConfig, SoundConfig
    from amphi.media.guard import TrackGuard, TruePeakLimiter
    from amphi.media.mixer import Mixer, Mode

    class TimedGuard(TrackGuard):
        ns = [0]

        def process(self, frame: np.ndarray, z: float | None = None) -> np.ndarray:
            t = time.thread_time_ns()
            out = super().process(frame, z)
            self.ns[0] += time.thread_time_ns() - t
            return out

        def skip(self) -> None:
            t = time.thread_time_ns()
            super().skip()
            self.ns[0] += time.thread_time_ns() - t

        def sent(self, frame: np.ndarray | None) -> None:
            t = time.thread_time_ns()
            super().sent(frame)
            self.ns[0] += time.thread_time_ns() - t

    from amphi.media import mixer as mixer_module

    batched = mixer_module.k_weighted  # the mixer filters all tracks' frames in one call: time that too

    def timed_k_weighted(guards: list[TrackGuard], frames: list[np.ndarray]) -> list[float]:
        t = time.thread_time_ns()
        out = batched(guards, frames)
        if guards and isinstance(guards[0], TimedGuard):
            TimedGuard.ns[0] += time.thread_time_ns() - t
        return out

    mixer_module.k_weighted = timed_k_weighted

    class TimedLimiter(TruePeakLimiter):
        ns = [0]

        def process(self, frame: np.ndarray) -> np.ndarray:
            t = time.thread_time_ns()
            out = super().process(frame)
            self.ns[0] += time.thread_time_ns() - t
            return out

    on_cfg = MediaConfig()
    off_cfg = MediaConfig(sound=SoundConfig(enabled=False))
    tick_n = on_cfg.tick_samples
    tick_s = tick_n / SAMPLE_RATE
    ticks = GUARD_WARMUP_TICKS + max(1, int(seconds / tick_s))
    n = ticks * tick_n
    print(f"\nthe guard in process: {speakers} speakers, {ticks - GUARD_WARMUP_TICKS} ticks "
          f"({(ticks - GUARD_WARMUP_TICKS) * tick_s:.0f} s of program) per scenario, mixers without, with, and with "
          f"a timed guard, tick by tick", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="amphi-stage-audio-") as tmp:
        for scenario in ("conversation", "all talking", "tones"):
            tracks = stage_audio(scenario, n, speakers, Path(tmp))
            silent = np.zeros(0, dtype=np.float32)
            mixers = {"off": Mixer(off_cfg, lambda s, k: silent), "on": Mixer(on_cfg, lambda s, k: silent),
                      "timed": Mixer(on_cfg, lambda s, k: silent)}
            TimedGuard.ns[0] = TimedLimiter.ns[0] = 0
            names = [f"s{i}" for i in range(speakers)]
            timed = mixers["timed"]
            assert timed.guards is not None
            for name in names:
                timed.guards[name] = TimedGuard(on_cfg.sound, tick_n)  # add_track keeps a guard it finds
            timed.limiter = TimedLimiter(on_cfg.sound.ceiling_dbtp, on_cfg.sound.limiter_release_db_per_s)
            buffers = {}
            for key, m in mixers.items():
                m.request(Mode.LIVE)
                for name in names:
                    buffers[key, name] = m.add_track(name)
                m.return_to = set(names)
            spent = dict.fromkeys(mixers, 0)
            clipped = dict.fromkeys(mixers, 0)
            returned = dict.fromkeys(mixers, 0)
            order = list(mixers)
            guard_ns = limiter_ns = 0
            for k in range(ticks):
                if k == GUARD_WARMUP_TICKS:
                    spent = dict.fromkeys(mixers, 0)
                    guard_ns, limiter_ns = TimedGuard.ns[0], TimedLimiter.ns[0]
                s = slice(k * tick_n, (k + 1) * tick_n)
                for key in mixers:
                    for name, track in zip(names, tracks):
                        buffers[key, name].push(track[s])
                for key in order[k % 3:] + order[: k % 3]:
                    t0 = time.thread_time_ns()
                    frame = mixers[key].tick()
                    spent[key] += time.thread_time_ns() - t0
                    if k >= GUARD_WARMUP_TICKS and frame.returns and key != "timed":
                        for r in frame.returns.values():
                            clipped[key] += int(np.count_nonzero(np.abs(r) >= 1.0))
                            returned[key] += len(r)
            measured = (ticks - GUARD_WARMUP_TICKS) * tick_s  # program seconds
            guard_ns, limiter_ns = TimedGuard.ns[0] - guard_ns, TimedLimiter.ns[0] - limiter_ns
            guards = mixers["on"].guards or {}

            def per_speaker(ns: float) -> float:
                return 100 * ns / 1e9 / measured / speakers

            results.append({
                "scenario": scenario, "speakers": speakers, "program_s": measured,
                "off_percent": per_speaker(spent["off"]), "on_percent": per_speaker(spent["on"]),
                "guard_percent": per_speaker(spent["on"] - spent["off"]),
                "guard_own_percent": per_speaker(guard_ns + limiter_ns),
                "tracks_own_percent": per_speaker(guard_ns), "limiter_own_percent": per_speaker(limiter_ns),
                "timed_mixer_percent": per_speaker(spent["timed"]),
                "ratio_on_off": spent["on"] / max(spent["off"], 1),
                "returns_clipped_on": clipped["on"] / max(returned["on"], 1),
                "returns_clipped_off": clipped["off"] / max(returned["off"], 1),
                "checks": sum(g.stats.checks for g in guards.values()),
                "loops": sum(1 for g in guards.values() if g.stats.feedback == "loop"),
                "resonances": sum(1 for g in guards.values() if g.stats.feedback == "resonance"),
                "gains_db": [round(g.stats.gain_db, 1) for g in guards.values()],
            })
            r = results[-1]
            print(f"  {scenario}: on {r['on_percent']:.3f} %, off {r['off_percent']:.3f} %, guard "
                  f"{r['guard_percent']:.3f} % per speaker", flush=True)
    conv = results[0]  # the verdict's scenario: a stage as it sounds (print_guard judges it)
    return {"scenarios": results, "verdict": {"scenario": conv["scenario"],
                                              "per_speaker_percent": max(conv["guard_percent"], conv["guard_own_percent"])}}


def print_guard(guard: dict[str, object], target: float) -> None:
    scenarios = guard["scenarios"]
    assert isinstance(scenarios, list)
    guard["verdict"]["met"] = all(  # type: ignore[index]
        x <= target for x in (scenarios[0]["guard_percent"], scenarios[0]["guard_own_percent"]))
    print()
    print(f"the sound guard's CPU, % of one core per speaker ({scenarios[0]['speakers']} on stage, in process, "
          f"Mixer.tick only: no Opus, no network; {scenarios[0]['program_s']:.0f} s of program each)")
    print(f"  {'scenario':14s} {'guard off':>9s} {'guard on':>9s} {'on - off':>9s} {'its own':>8s} {'(tracks':>8s} "
          f"{'limiter)':>8s} {'on/off':>7s} {'returns clipped on/off':>23s}  verdict (<= {target:g} %)")
    for r in scenarios:
        worst = max(r["guard_percent"], r["guard_own_percent"])
        print(f"  {r['scenario']:14s} {r['off_percent']:9.3f} {r['on_percent']:9.3f} {r['guard_percent']:9.3f} "
              f"{r['guard_own_percent']:8.3f} {r['tracks_own_percent']:8.3f} {r['limiter_own_percent']:8.3f} "
              f"{r['ratio_on_off']:6.1f}x {100 * r['returns_clipped_on']:10.3f} % / {100 * r['returns_clipped_off']:.3f} %"
              f"  {'PASS' if worst <= target else 'FAIL'}")
    print("  conversation: 2 talk in turns (espeak-ng), 5 send -60 dBFS noise, 6 silence; all talking: 13 voices at "
          "once; tones: this bench's clients. 'its own': time inside the guards and the limiter (a third mixer, "
          "timed); the verdict takes the larger of on - off and its own")
    for r in scenarios:
        if r["loops"] or r["resonances"]:
            print(f"  warning: {r['scenario']}: {r['loops']} loops and {r['resonances']} resonances at the end "
                  f"(none is one)")


def print_node_comparison(on: dict[str, object], off: dict[str, object]) -> None:
    speakers = on["speakers"]
    assert isinstance(speakers, int)
    a, b = on["node_percent"], off["node_percent"]
    ma, mb = on["machine_busy_percent"], off["machine_busy_percent"]
    assert isinstance(a, float) and isinstance(b, float) and isinstance(ma, float) and isinstance(mb, float)
    print()
    print(f"the node with its sound guard on, then off (amphi serve {NO_GUARD_FLAG}), one run after the other:")
    print(f"  node {a:.1f} % vs {b:.1f} % of one core: {a - b:+.1f} points, {(a - b) / speakers:+.2f} per speaker, "
          f"ratio {a / b if b else math.nan:.2f}; machine busy {ma:.0f} % vs {mb:.0f} % (other processes move "
          f"this by several points between runs: the in-process figures below are the guard's cost)")


# -- the run -------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the window opened
    node: float  # % of one core over the last second
    clients: float
    bench: float
    machine: float  # busy, % of one core (all cores together)


@dataclass
class Window:
    seconds: float = 0.0
    node_cpu_s: float = 0.0
    clients_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def percent(self, cpu_s: float) -> float:
        return 100 * cpu_s / self.seconds if self.seconds else 0.0


def invite_all(server: str, space_id: str, host_key: str, n: int) -> list[tuple[str, str]]:
    """(participant, grant) for ``n`` invited speakers, each having accepted its invite."""
    out = []
    with httpx.Client(base_url=server, timeout=10.0) as api:
        for i in range(n):
            r = api.post(f"/api/spaces/{space_id}/stage/invites", json={"name": f"speaker {i + 1}"},
                         headers={"Authorization": f"Bearer {host_key}"})
            r.raise_for_status()
            pid, grant = r.json()["participant"], r.json()["grant"]
            api.post(f"/api/spaces/{space_id}/stage/me/accept",
                     headers={"Authorization": f"Bearer {grant}"}).raise_for_status()
            out.append((pid, grant))
    return out


def stage_members(server: str, space_id: str) -> list[dict[str, object]]:
    r = httpx.get(f"{server}/api/spaces/{space_id}/stage", timeout=10.0)
    r.raise_for_status()
    return list(r.json()["members"])


def drain(events: mp.Queue, log: list[tuple[object, ...]]) -> None:  # type: ignore[type-arg]
    while True:
        try:
            log.append(events.get_nowait())
        except queue.Empty:
            return


def check_workers(workers: list[mp.Process], log: list[tuple[object, ...]]) -> None:
    errors = [e for e in log if e[0] == "error"]
    if errors:
        raise RuntimeError(f"a client failed: {errors[0][1]}: {errors[0][2]}")
    for w in workers:
        if not w.is_alive():
            raise RuntimeError(f"client worker {w.name} exited with {w.exitcode}")


def wait_for_stage(server: str, space_id: str, n: int, workers: list[mp.Process], events: mp.Queue,  # type: ignore[type-arg]
                   log: list[tuple[object, ...]]) -> list[dict[str, object]]:
    deadline = time.monotonic() + FILL_TIMEOUT_S
    last_print = 0
    while True:
        drain(events, log)
        check_workers(workers, log)
        members = stage_members(server, space_id)
        up = sum(1 for m in members if m["connected"])
        talking = sum(1 for m in members if m["connected"] and m["talking"])
        if up != last_print:
            print(f"  {up}/{n} connected, {talking} talking", flush=True)
            last_print = up
        if len(members) == n and up == n and talking == n:
            return members
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stage did not fill within {FILL_TIMEOUT_S:.0f} s: {up}/{n} connected, "
                               f"{talking} talking")
        time.sleep(0.25)


def sample_window(node_pid: int, workers: list[mp.Process], seconds: float, cores: int,
                  log: list[tuple[object, ...]], events: mp.Queue) -> Window:  # type: ignore[type-arg]
    me = psutil.Process(os.getpid())  # this process alone: the node and the workers are its children
    pids = [w.pid for w in workers if w.pid is not None]

    def read() -> tuple[float, float, float, float, float]:
        return (time.monotonic(), process_cpu_s(node_pid), sum(process_cpu_s(p) for p in pids), sum(me.cpu_times()[:2]),
                machine_busy_s())

    w = Window()
    start = last = read()
    end = start[0] + seconds
    while (now := time.monotonic()) < end:
        time.sleep(min(1.0, end - now))
        cur = read()
        dt = cur[0] - last[0]
        w.samples.append(Sample(round(cur[0] - start[0], 2), *(100 * (c - p) / dt for c, p in zip(cur[1:], last[1:]))))
        last = cur
        drain(events, log)
        check_workers(workers, log)
        if len(w.samples) % 10 == 0:
            s = w.samples[-1]
            print(f"  {s.t:4.0f} s: node {s.node:5.1f} %, clients {s.clients:5.1f} %, machine busy {s.machine:5.1f} % "
                  f"(of {100 * cores} %)", flush=True)
    w.seconds = last[0] - start[0]
    w.node_cpu_s, w.clients_cpu_s, w.bench_cpu_s, w.machine_busy_s = (c - p for c, p in zip(last[1:], start[1:]))
    return w


def pipeline_delta(before: dict[str, object], after: dict[str, object], space_id: str) -> dict[str, float]:
    b = before.get("pipelines", {}).get(space_id, {})  # type: ignore[union-attr]
    a = after.get("pipelines", {}).get(space_id, {})  # type: ignore[union-attr]
    out = {k: a.get(k, 0) - b.get(k, 0) for k in ("ticks", "wakeups", "late_ticks", "frames_dropped", "encode_s")}
    out["max_lag_s_total"] = a.get("max_lag_s", 0.0)  # since the Space started (not resettable)
    out["late_ticks_total"] = a.get("late_ticks", 0)
    out["frames_dropped_total"] = a.get("frames_dropped", 0)
    return out


def print_table(summary: dict[str, object]) -> None:
    w = summary["window"]
    p = summary["pipeline"]
    assert isinstance(w, dict) and isinstance(p, dict)
    cores = summary["cores"]
    secs = w["seconds"]

    def pct(x: float) -> float:
        return 100 * x / secs

    others = w["machine_busy_s"] - w["node_cpu_s"] - w["clients_cpu_s"] - w["bench_cpu_s"]
    node_peak = max((s["node"] for s in w["samples"]), default=0.0)
    print()
    guard = "" if summary.get("guard", True) else ", the node's sound guard off (--no-sound-guard)"
    print(f"{summary['speakers']} on stage{guard}, {secs:.1f} s window; CPU, % of one core ({cores} cores here)   "
          f"mean  peak 1 s")
    print(f"  {'node (amphi serve, all threads)':58s} {pct(w['node_cpu_s']):6.1f}  {node_peak:7.1f}")
    print(f"  {'clients (' + str(summary['workers']) + ' worker processes, ' + str(summary['speakers']) + ' aiortc clients)':58s} "
          f"{pct(w['clients_cpu_s']):6.1f}")
    print(f"  {'bench process (sampling, listener thread)':58s} {pct(w['bench_cpu_s']):6.1f}")
    print(f"  {'other processes':58s} {pct(max(0.0, others)):6.1f}")
    print(f"  {'machine busy':58s} {pct(w['machine_busy_s']):6.1f}  (of {100 * cores})")
    print(f"pipeline over the window: {p['ticks']} ticks in {p['wakeups']} clock wake-ups, {p['late_ticks']} of them late "
          f"(> 20 ms), {p['frames_dropped']} frames dropped; "
          f"since start: {p['late_ticks_total']} late, max lag {p['max_lag_s_total']:.3f} s, "
          f"{p['frames_dropped_total']} dropped; AAC encode {p['encode_s']:.2f} s CPU")
    fill = summary["fill"]
    assert isinstance(fill, dict)
    print(f"while the stage filled ({fill['seconds']:.1f} s, one offer every {STAGGER_S:g} s): {fill['late_ticks']} late "
          f"ticks, max lag {fill['max_lag_s_total']:.3f} s, {fill['frames_dropped']} frames dropped")
    warned = summary["client_warnings_in_window"]
    assert isinstance(warned, list)
    print(f"client warnings: {summary['client_warnings_total']} in all, {len(warned)} in the window")
    for e in warned[:5]:
        print(f"  {e[2]}: {e[3]}")
    clients = summary["clients"]
    assert isinstance(clients, list)
    frames = [c["return_frames"] for c in clients]
    rms = [c["return_rms"] for c in clients]
    reconnects = sum(c["reconnects"] for c in clients)
    print(f"clients: {len(clients)} reported, return frames {min(frames, default=0)}..{max(frames, default=0)} each, "
          f"return RMS {min(rms, default=0):.3f}..{max(rms, default=0):.3f}, {reconnects} reconnections")
    for c in clients:
        for d in c["drops"][:3]:
            print(f"  {c['name']}: drop {d}")
    stage_end = summary["stage_at_end"]
    assert isinstance(stage_end, dict)
    print(f"stage at the end of the window: {stage_end['connected']}/{summary['speakers']} connected, "
          f"{stage_end['talking']} talking")
    listener = summary["listener"]
    if listener:
        assert isinstance(listener, dict)
        print(f"listener: {listener['parts']} parts, {listener['bytes']} bytes, {listener['errors']} errors "
              f"{listener['last_error']}".rstrip())


def plot(runs: list[dict[str, object]], path: str, target: float) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/stage_cpu.py's figure")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    top = target
    for summary, (node_color, style) in zip(runs, (("#c44e52", "-"), ("#dd8452", "--"))):
        samples = summary["window"]["samples"]  # type: ignore[index]
        t = [s["t"] for s in samples]
        tag = ("guard on" if summary["guard"] else "guard off") if len(runs) > 1 else ""
        ax.plot(t, [s["node"] for s in samples], label=f"node (amphi serve{', ' + tag if tag else ''})",
                color=node_color, linewidth=2, linestyle=style)
        ax.plot(t, [s["clients"] for s in samples],
                label=f"{summary['speakers']} clients ({summary['workers']} processes){', ' + tag if tag else ''}",
                color="#4c72b0", linestyle=style)
        ax.plot(t, [s["machine"] for s in samples], label=f"machine busy (all cores){', ' + tag if tag else ''}",
                color="#888888", linestyle=":" if style == "-" else "-.")
        top = max(top, max((s["machine"] for s in samples), default=0))
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:g} % (one core)")
    ax.set_ylim(0, top * 1.35)
    ax.set_xlabel("seconds into the window")
    ax.set_ylabel("% of one core")
    ax.set_title(f"CPU with {runs[0]['speakers']} on stage, all talking (1 s samples)")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stage_run(args: argparse.Namespace, cores: int, serve_args: tuple[str, ...] = ()) -> dict[str, object]:
    """One node (``amphi serve`` with ``serve_args``), one Space, ``args.speakers`` on stage:
    the figures of one measured window."""
    client_duration = FILL_TIMEOUT_S + args.settle + args.seconds + 30  # a bound; they are told to stop long before
    ctx = mp.get_context("spawn")
    events: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    workers: list[mp.Process] = []
    log: list[tuple[object, ...]] = []
    listener_stop = threading.Event()
    listener_stats: ListenerStats | None = None
    listener_thread: threading.Thread | None = None
    node = NodeProcess(args=serve_args)
    with node:
        print(f"node {node.url} (pid {node.pid}{', ' + ' '.join(serve_args) if serve_args else ''}), data in "
              f"{node.dir}", flush=True)
        space = start_space(node.url, "stage CPU bench", join=not args.no_listener)
        try:
            grants = invite_all(node.url, space.id, space.host_key, args.speakers - 1)
            clients = [(0, "host", "key", space.host_key, tone_hz(0))]
            clients += [(i + 1, pid, "token", grant, tone_hz(i + 1)) for i, (pid, grant) in enumerate(grants)]
            for k in range(args.workers):
                mine = clients[k :: args.workers]
                if not mine:
                    continue
                w = ctx.Process(target=worker_main, name=f"clients-{k}", daemon=True,
                                args=(node.url, space.id, mine, client_duration, events, stop, args.client_nice))
                w.start()
                workers.append(w)
            if space.playlist:
                listener_stats = ListenerStats()
                listener_thread = threading.Thread(target=listen, args=(space.playlist, listener_stop, listener_stats),
                                                   name="listener", daemon=True)
                listener_thread.start()
            filling = node_stats(node.url)
            fill_started = time.time()
            print(f"{len(workers)} client workers started (pids {[w.pid for w in workers]}); filling the stage",
                  flush=True)
            wait_for_stage(node.url, space.id, args.speakers, workers, events, log)
            filled = node_stats(node.url)
            fill_s = time.time() - fill_started
            print(f"all {args.speakers} connected and talking; settling {args.settle:g} s", flush=True)
            time.sleep(args.settle)
            if listener_thread is not None:  # the window is measured with the listener playing: its first part
                # comes once the Space's first whole segment exists (up to a segment after the start)
                deadline = time.time() + 20
                while listener_stats.parts == 0 and time.time() < deadline:
                    time.sleep(0.1)
            before = node_stats(node.url)
            print(f"measuring {args.seconds:.0f} s", flush=True)
            window_start = time.time()
            window = sample_window(node.pid, workers, args.seconds, cores, log, events)
            window_end = time.time()
            after = node_stats(node.url)
            members = stage_members(node.url, space.id)
            stage_end = {"connected": sum(1 for m in members if m["connected"]),
                         "talking": sum(1 for m in members if m["connected"] and m["talking"]), "members": members}
            if not node.alive():
                raise RuntimeError("the node exited during the window")
        finally:
            stop.set()
            listener_stop.set()
            reports = collect(workers, events, log)
            if listener_thread is not None:
                listener_thread.join(15)
            end_space(node.url, space)

    return {
        "serve_args": list(serve_args), "guard": "--no-sound-guard" not in serve_args,
        "speakers": args.speakers, "workers": len(workers), "cores": cores, "seconds": args.seconds,
        "target_percent": args.target, "listener": asdict(listener_stats) if listener_stats else None,
        "node_percent": window.percent(window.node_cpu_s),
        "clients_percent": window.percent(window.clients_cpu_s),
        "machine_busy_percent": window.percent(window.machine_busy_s),
        "machine_busy_share": window.machine_busy_s / (window.seconds * cores),
        "window": asdict(window),
        "pipeline": pipeline_delta(before, after, space.id),
        "fill": {"seconds": fill_s, **pipeline_delta(filling, filled, space.id)},
        "client_warnings_in_window": [list(e) for e in log if e[0] == "log" and window_start <= e[1] <= window_end],
        "client_warnings_total": sum(1 for e in log if e[0] == "log"),
        "node_after": after,
        "stage_at_end": stage_end,
        "clients": reports,
        "events": [list(e) for e in log if e[0] != "report"],
    }


def serve_has(flag: str) -> bool:
    """Whether this tree's ``amphi serve`` takes ``flag``."""
    try:
        out = subprocess.run(amphi_command("serve", "--help"), capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=STAGE_SIZE, help="people on stage, the host included (default 13)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measured window (default 30)")
    parser.add_argument("--workers", type=int, default=3, help="client processes (default 3)")
    parser.add_argument("--client-nice", type=int, default=10, metavar="N",
                        help="niceness of the client workers (default 10: the node goes first; 0: they compete as equals)")
    parser.add_argument("--no-listener", action="store_true", help="no LL-HLS listener")
    parser.add_argument("--target", type=float, default=100.0, help="fail if the node exceeds this %% of one core (default 100)")
    parser.add_argument("--node-guard", choices=("on", "off", "both", "none"), default="both",
                        help="the node's sound guard: on (the default node), off (amphi serve --no-sound-guard), "
                             "both (one node after the other, the default), none (no node: only the in-process "
                             "comparison)")
    parser.add_argument("--guard-seconds", type=float, default=60.0,
                        help="program seconds per scenario of the in-process guard comparison (default 60; 0: skip it)")
    parser.add_argument("--guard-target", type=float, default=GUARD_TARGET_PERCENT,
                        help=f"fail if the guard costs more than this %% of one core per speaker in the conversation "
                             f"(default {GUARD_TARGET_PERCENT:g})")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write CPU over time")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds after the stage fills before the window opens (default {SETTLE_S:g})")
    small_mode(parser, speakers=3, seconds=2.0, workers=1, settle=2.0, node_guard="on", guard_seconds=4.0,
               guard_target=1.0)
    args = parser.parse_args()
    if not 1 <= args.speakers <= STAGE_SIZE:
        parser.error(f"--speakers must be 1..{STAGE_SIZE}")
    if args.seconds < 2 or args.workers < 1:
        parser.error("--seconds must be at least 2 and --workers at least 1")
    exit_on_sigterm()

    cores = psutil.cpu_count() or 1
    modes = {"on": [True], "off": [False], "both": [True, False], "none": []}[args.node_guard]
    if False in modes and not serve_has(NO_GUARD_FLAG):
        print(f"warning: amphi serve has no {NO_GUARD_FLAG} here: the node runs with its guard only", file=sys.stderr)
        modes = [m for m in modes if m] or [True]
    if modes:
        print(f"stage CPU: {args.speakers} on stage in {args.workers} client processes, a {args.seconds:.0f} s window, "
              f"node guard {' then '.join('on' if m else 'off' for m in modes)}; about "
              f"{len(modes) * (args.seconds + args.settle + 25):.0f} s", flush=True)
    runs = [stage_run(args, cores, () if on else (NO_GUARD_FLAG,)) for on in modes]
    for summary in runs:
        print_table(summary)
    if len(runs) == 2:
        print_node_comparison(runs[0], runs[1])
    guard = None
    if args.guard_seconds > 0:
        guard = guard_cpu(args.guard_seconds, STAGE_SIZE)
        print_guard(guard, args.guard_target)

    summary: dict[str, object] = {"runs": runs, "guard_in_process": guard}
    if len(runs) == 1:
        summary.update(runs[0])  # the single run's figures at the top, as before
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        print(f"wrote {args.json}")
    if args.plot and runs:
        plot(runs, args.plot, args.target)
        print(f"wrote {args.plot}")

    failed = 0
    for run_ in runs:
        node_percent = run_["node_percent"]
        stage_end = run_["stage_at_end"]
        assert isinstance(node_percent, float) and isinstance(stage_end, dict)
        what = f"the node ({'guard on' if run_['guard'] else 'guard off'})" if len(runs) > 1 else "the node"
        if stage_end["connected"] != args.speakers:
            print(f"warning: only {stage_end['connected']} of {args.speakers} connected at the end of the window",
                  file=sys.stderr)
        if node_percent > args.target:
            print(f"FAIL: {what} uses {node_percent:.1f} % of one core with {args.speakers} on stage > {args.target:g} %")
            failed += 1
        else:
            print(f"PASS: {what} uses {node_percent:.1f} % of one core with {args.speakers} on stage <= {args.target:g} %")
    if guard is not None:
        verdict = guard["verdict"]
        assert isinstance(verdict, dict)
        line = (f"the sound guard costs {verdict['per_speaker_percent']:.3f} % of one core per speaker with "
                f"{STAGE_SIZE} on stage ({verdict['scenario']}, guard on minus off, in process)")
        if verdict["met"]:
            print(f"PASS: {line} <= {args.guard_target:g} %")
        else:
            print(f"FAIL: {line} > {args.guard_target:g} %")
            failed += 1
    return 1 if failed else 0


def collect(workers: list[mp.Process], events: mp.Queue, log: list[tuple[object, ...]]) -> list[dict[str, object]]:  # type: ignore[type-arg]
    """Waits for the workers' reports, then for them to exit (killing stragglers)."""
    reports: list[dict[str, object]] = [r for e in log if e[0] == "report" for r in e[1]]  # type: ignore[union-attr]
    got = sum(1 for e in log if e[0] == "report")
    deadline = time.monotonic() + WORKER_STOP_S
    while got < len(workers) and time.monotonic() < deadline:
        if not any(w.is_alive() for w in workers) and events.empty():
            break
        try:
            e = events.get(timeout=0.5)
        except queue.Empty:
            continue
        log.append(e)
        if e[0] == "report":
            reports.extend(e[1])  # type: ignore[arg-type]
            got += 1
    for w in workers:
        w.join(max(0.1, deadline - time.monotonic()))
        if w.is_alive():
            print(f"warning: client worker {w.name} did not exit; killing it", file=sys.stderr)
            w.kill()
            w.join(5)
    return reports


if __name__ == "__main__":
    run(main)
