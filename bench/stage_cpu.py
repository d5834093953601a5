"""CPU of the node for one Space with a full stage: 13 speakers talking, each hearing the others.

    .venv/bin/python bench/stage_cpu.py [--speakers 13] [--seconds 30] [--workers 3] \
        [--client-nice 10] [--no-listener] [--settle 5] [--small] [--json OUT] [--plot OUT.png]

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

Exits 1 if the node uses more than ``--target`` (100 % of one core) over the window, 2 on
an error (a client cannot connect, the stage does not fill, a worker dies). ``--small``: 3 on
stage in one worker, a 2 s window after 2 s of settling (about 15 s), the same bar.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from harness import (NodeProcess, end_space, exit_on_sigterm, machine_busy_s, node_stats, process_cpu_s, run,
                     small_mode, start_space)

STAGE_SIZE = 13  # host + 2 co-hosts + 10 speakers
SETTLE_S = 5.0  # after everyone is connected and talking, before the window opens
FILL_TIMEOUT_S = 60.0  # for every client to connect and the stage to show them talking
STAGGER_S = 0.4  # between two clients' offers (the stage fills one speaker at a time)
WORKER_STOP_S = 15.0  # for the workers to hang up and exit once told to
AMPLITUDE = 0.05  # each speaker's tone: 13 of them sum to at most 0.65, no clipping


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
    print(f"{summary['speakers']} on stage, {secs:.1f} s window; CPU, % of one core ({cores} cores here)   "
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


def plot(summary: dict[str, object], path: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = summary["window"]["samples"]  # type: ignore[index]
    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(t, [s["node"] for s in samples], label="node (amphi serve)", color="#c44e52", linewidth=2)
    ax.plot(t, [s["clients"] for s in samples], label=f"{summary['speakers']} clients ({summary['workers']} processes)",
            color="#4c72b0")
    ax.plot(t, [s["machine"] for s in samples], label="machine busy (all cores)", color="#888888", linestyle=":")
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:g} % (one core)")
    ax.set_ylim(0, max(target, max((s["machine"] for s in samples), default=0)) * 1.35)
    ax.set_xlabel("seconds into the window")
    ax.set_ylabel("% of one core")
    ax.set_title(f"CPU with {summary['speakers']} on stage, all talking (1 s samples)")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=STAGE_SIZE, help="people on stage, the host included (default 13)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measured window (default 30)")
    parser.add_argument("--workers", type=int, default=3, help="client processes (default 3)")
    parser.add_argument("--client-nice", type=int, default=10, metavar="N",
                        help="niceness of the client workers (default 10: the node goes first; 0: they compete as equals)")
    parser.add_argument("--no-listener", action="store_true", help="no LL-HLS listener")
    parser.add_argument("--target", type=float, default=100.0, help="fail if the node exceeds this %% of one core (default 100)")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write CPU over time")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds after the stage fills before the window opens (default {SETTLE_S:g})")
    small_mode(parser, speakers=3, seconds=2.0, workers=1, settle=2.0)
    args = parser.parse_args()
    if not 1 <= args.speakers <= STAGE_SIZE:
        parser.error(f"--speakers must be 1..{STAGE_SIZE}")
    if args.seconds < 2 or args.workers < 1:
        parser.error("--seconds must be at least 2 and --workers at least 1")
    exit_on_sigterm()

    cores = psutil.cpu_count() or 1
    client_duration = FILL_TIMEOUT_S + args.settle + args.seconds + 30  # a bound; they are told to stop long before
    print(f"stage CPU: {args.speakers} on stage in {args.workers} client processes, a {args.seconds:.0f} s window; "
          f"about {args.seconds + args.settle + 25:.0f} s", flush=True)
    ctx = mp.get_context("spawn")
    events: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    workers: list[mp.Process] = []
    log: list[tuple[object, ...]] = []
    listener_stop = threading.Event()
    listener_stats: ListenerStats | None = None
    listener_thread: threading.Thread | None = None
    node = NodeProcess()
    with node:
        print(f"node {node.url} (pid {node.pid}), data in {node.dir}", flush=True)
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

    summary: dict[str, object] = {
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
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        print(f"wrote {args.json}")
    if args.plot:
        plot(summary, args.plot, args.target)
        print(f"wrote {args.plot}")

    node_percent = summary["node_percent"]
    assert isinstance(node_percent, float)
    if stage_end["connected"] != args.speakers:
        print(f"warning: only {stage_end['connected']} of {args.speakers} connected at the end of the window",
              file=sys.stderr)
    if node_percent > args.target:
        print(f"FAIL: the node uses {node_percent:.1f} % of one core with {args.speakers} on stage > {args.target:g} %")
        return 1
    print(f"PASS: the node uses {node_percent:.1f} % of one core with {args.speakers} on stage <= {args.target:g} %")
    return 0


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
