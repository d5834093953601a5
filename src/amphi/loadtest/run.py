"""The parent of a load test: splits the schedule over ``procs`` worker processes, starts
them together at T0, merges their once-a-second snapshots into a timeline (printing a
progress line), measures its own CPU and, when the server is on this machine, the
server's, and returns the result that ``report`` prints, writes and plots.
"""

from __future__ import annotations

import json
import os
import multiprocessing as mp
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait

import psutil

from amphi.loadtest.attack import AttackPlan, attack_main
from amphi.core.tls import client_context
from amphi.loadtest.http import split_url
from amphi.loadtest.profiles import schedule
from amphi.loadtest.stats import Histogram, rounded
from amphi.core.files import raise_open_files
from amphi.loadtest.machine import ProcessCpu, cores_busy_s, machine_busy_s
from amphi.loadtest.swarm import END_GRACE_S, LoadConfig, worker_main

READY_TIMEOUT_S = 60.0  # worker processes importing and reporting ready
START_MARGIN_S = 1.0  # from "everyone ready" to T0
WORKER_BUSY = 0.85  # a worker process above this share of one core is saturated
LAG_LIMIT_S = 0.1  # event-loop lag p99 above this: the generator is late on its own timers


@dataclass(frozen=True)
class RunOptions:
    cfg: LoadConfig
    listeners: int
    profile: str = "ramp"
    ramp_s: float = 10.0
    procs: int = 1
    stay_s: float | None = None  # churn: mean session length
    drop_at_s: float | None = None  # reconnect: when everyone drops
    server_pid: int | None = None  # default: whoever listens on the server's port, if local
    also_pids: tuple[int, ...] = ()  # more server-side processes counted as the server (e.g. edges)
    attack: AttackPlan | None = None  # attackers mixed in, in a process of their own
    cpus: tuple[int, ...] = ()  # the generator's processes run on these CPUs only (empty: any)


def parse_cpus(text: str) -> tuple[int, ...]:
    """``"1"``, ``"1,3"`` or ``"2-3"`` -> CPU numbers, each one this process may use."""
    cpus: set[int] = set()
    try:
        for item in text.split(","):
            lo, _, hi = item.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--cpus {text!r}: a list of CPU numbers like 1 or 1,3 or 2-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"--cpus {text!r}: this machine lets the load test use CPUs {sorted(allowed)}")
    return tuple(sorted(cpus))


def find_server_pid(url: str) -> int | None:
    """The process listening on the URL's port, when the host is this machine."""
    host, port, _ = split_url(url)
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    except psutil.AccessDenied:
        return None
    return None


def server_admission(url: str, ca_file: str | None = None) -> dict[str, object] | None:
    """The node's admission settings (``GET /api/node``), recorded so that ``amphi simulate
    --calibrate`` can model the same node; None if the node does not say."""
    try:
        tls = client_context(ca_file) if url.startswith("https://") else None
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/node", timeout=5, context=tls) as resp:
            return json.loads(resp.read())["admission"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run(opts: RunOptions, progress: Callable[[str], None] | None = None) -> dict[str, object]:
    cfg = opts.cfg
    sessions = schedule(opts.profile, opts.listeners, duration_s=cfg.duration_s, ramp_s=opts.ramp_s, seed=cfg.seed,
                        stay_s=opts.stay_s, drop_at_s=opts.drop_at_s)
    files = raise_open_files()
    procs = max(1, min(opts.procs, len(sessions) or 1))
    per_proc = -(-len(sessions) // procs)
    warnings: list[str] = []
    if files < per_proc + 100:
        warnings.append(f"open-file limit {files} is below the {per_proc} connections one process needs")
    server_pid = opts.server_pid or find_server_pid(cfg.server)
    admission = server_admission(cfg.server, cfg.ca_file) if cfg.protocol == "amphi" else None
    if cfg.protocol == "amphi" and admission is None:
        warnings.append("could not read the node's admission settings (GET /api/node): amphi simulate "
                        "cannot be calibrated from this run")
    server = ProcessCpu(server_pid, *opts.also_pids) if server_pid else None

    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for k in range(procs):
        parent_end, child_end = ctx.Pipe()
        w = ctx.Process(target=worker_main, args=(child_end, cfg, sessions[k::procs], k), daemon=True,
                        name=f"amphi-loadtest-{k}")
        w.start()
        child_end.close()
        pipes.append(parent_end)
        workers.append(w)
    attack_pipe = None
    if opts.attack is not None:
        attack_pipe, child_end = ctx.Pipe()
        w = ctx.Process(target=attack_main, args=(child_end, opts.attack), daemon=True, name="amphi-loadtest-attack")
        w.start()
        child_end.close()
        workers.append(w)
    for w in workers if opts.cpus else ():  # listeners and attackers alike
        os.sched_setaffinity(w.pid, opts.cpus)  # type: ignore[arg-type]
    try:
        result = _drive(opts, sessions, pipes, workers, server, warnings, progress,
                        [attack_pipe] if attack_pipe else [])
        if attack_pipe is not None:
            attack_end = float(result["t0_unix"]) + opts.attack.start_s + opts.attack.duration_s  # type: ignore[arg-type]
            wait_s = max(0.0, attack_end - time.time()) + 30.0
            result["attack"] = attack_pipe.recv()["attack"] if attack_pipe.poll(wait_s) else None
            if result["attack"] is None:
                warnings.append("the attack process did not report")
        result["server_admission"] = admission
        return result
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
                w.join(timeout=5)


def _drive(opts: RunOptions, sessions: list, pipes: list, workers: list, server: ProcessCpu | None,
           warnings: list[str], progress: Callable[[str], None] | None, starters: list) -> dict[str, object]:
    """``starters``: other processes (the attack) that only need to start at T0."""
    cfg = opts.cfg
    deadline = time.monotonic() + READY_TIMEOUT_S
    for p in pipes + starters:
        if not p.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError("a load-test worker did not start in time")
        p.recv()
    me = psutil.Process()
    wprocs = [psutil.Process(w.pid) for w in workers]

    def gen_cpu() -> float:
        total = sum(me.cpu_times()[:2])
        for p in wprocs:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    t0 = time.time() + START_MARGIN_S
    for p in pipes + starters:
        p.send(t0)
    gen0, srv0, busy0 = gen_cpu(), (server.cpu_s() if server else 0.0), machine_busy_s()
    t_read0 = time.time()
    last_cpu = (t_read0, gen0, srv0)
    # with the generator pinned (--cpus), the other cores are the server's side of the machine
    server_cores = tuple(sorted(os.sched_getaffinity(0) - set(opts.cpus))) if opts.cpus else ()
    cores0 = last_cores = cores_busy_s(server_cores) if server_cores else (0.0, 0.0)
    ticks: dict[int, list[dict]] = {}
    finals: dict[int, dict] = {}
    timeline: list[dict[str, object]] = []
    last_tick: dict[int, int] = {}
    last_snap: dict[int, dict] = {}
    lag_max = 0.0
    hard_stop = time.monotonic() + START_MARGIN_S + cfg.duration_s + END_GRACE_S + 20.0
    open_pipes = dict(enumerate(pipes))
    waiting_max = 0
    while open_pipes and time.monotonic() < hard_stop:
        for p in wait(list(open_pipes.values()), timeout=0.5):
            k = next(i for i, q in open_pipes.items() if q is p)
            while k in open_pipes and p.poll():  # drain: a worker must never wait on its pipe
                try:
                    msg = p.recv()
                except EOFError:
                    del open_pipes[k]
                    break
                if "final" in msg:
                    finals[k] = msg["final"]
                    del open_pipes[k]
                    break
                ticks.setdefault(msg["tick"], []).append(msg)
                last_tick[k] = msg["tick"]
                last_snap[k] = msg
                lag_max = max(lag_max, msg["lag_max"])
        # a second is complete when every worker has reported it or has finished
        for tick in sorted(ticks):
            if any(last_tick.get(k, 0) < tick for k in open_pipes):
                break
            snaps = ticks[tick]
            # a worker that has finished still counts: its cumulative figures as last reported,
            # its listeners done
            for k in finals:
                if last_tick.get(k, 0) < tick and k in last_snap:
                    done = sum(last_snap[k]["states"].values())
                    snaps.append({**last_snap[k], "states": {"done": done}, "stalled_now": 0, "lag_max": 0.0,
                                  "join": {"counts": {}, "n": 0, "total": 0.0, "max": 0.0},
                                  "audio": {"counts": {}, "n": 0, "total": 0.0, "max": 0.0}})
            now = time.time()
            g, s = gen_cpu(), (server.cpu_s() if server else 0.0)
            dt = max(1e-3, now - last_cpu[0])
            row = _merge_tick(tick, snaps, timeline[-1] if timeline else None)
            row["generator_cpu_pct"] = round(100 * (g - last_cpu[1]) / dt, 1)
            row["server_cpu_pct"] = round(100 * (s - last_cpu[2]) / dt, 1) if server else None
            last_cpu = (now, g, s)
            # the same, cumulative since the start: a window's mean is a difference of two rows
            # (a row read late covers a short span, and an average of its rate would weigh it as a second)
            row["wall_s"] = round(now - t_read0, 3)
            row["generator_cpu_s"] = round(g - gen0, 3)
            row["server_cpu_s"] = round(s - srv0, 3) if server else None
            if server_cores:
                cores = cores_busy_s(server_cores)
                row["server_cores_busy_pct"] = round(100 * (cores[0] - last_cores[0]) / dt, 1)
                row["server_cores_softirq_pct"] = round(100 * (cores[1] - last_cores[1]) / dt, 1)
                row["server_cores_busy_s"] = round(cores[0] - cores0[0], 3)
                row["server_cores_softirq_s"] = round(cores[1] - cores0[1], 3)
                last_cores = cores
            waiting_max = max(waiting_max, int(row["waiting"]))  # type: ignore[call-overload]
            timeline.append(row)
            del ticks[tick]
            if progress:
                progress(_progress_line(row))
    end = time.time()
    for k, p in enumerate(pipes):
        if k in open_pipes:
            warnings.append(f"worker {k} did not finish in time; its figures are missing")
    wall = max(1e-3, end - t0)
    gen_total = gen_cpu() - gen0
    srv_total = (server.cpu_s() - srv0) if server else None
    result = _result(opts, sessions, list(finals.values()), timeline, wall, gen_total, srv_total, server,
                     waiting_max, warnings, len(workers))
    busy1 = machine_busy_s()
    softirq = 100 * (busy1[1] - busy0[1]) / wall
    others = 100 * (busy1[0] - busy0[0] - gen_total - (srv_total or 0.0)) / wall - softirq
    result["t0_unix"] = round(t0, 3)  # when arrivals (and attacks) are counted from
    result["softirq_cpu_pct"] = round(softirq, 1)
    result["other_processes_cpu_pct"] = round(max(0.0, others), 1)  # neither generator, server nor softirq
    # after the ramp: listeners playing, no more joins (fitted: stream listeners ask in bursts)
    steady = steady_request_rate(timeline, opts.ramp_s + 2, cfg.duration_s)
    seated = int(result["admitted"])  # type: ignore[call-overload]
    result["request_rate_steady"] = steady
    result["requests_per_listener_s"] = round(steady / seated, 3) if steady is not None and seated else None
    requests = int(result["requests_total"])  # type: ignore[call-overload]
    result["server_cpu_per_request_s"] = round(srv_total / requests, 7) if srv_total is not None and requests else None
    result["generator_cpu_per_request_s"] = round(gen_total / requests, 7) if requests else None
    result["generator_pipe_wait_s"] = round(sum(f.get("send_s", 0.0) for f in finals.values()), 3)
    if others > 20:
        warnings.append(f"other processes used {others:.0f} % of a core during the run: figures are noisier")
    return result


# a window's means, each from a cumulative figure of the timeline's rows: (row key, scale)
WINDOW_MEANS = {"generator_cpu_pct": ("generator_cpu_s", 100), "server_cpu_pct": ("server_cpu_s", 100),
                "server_cores_busy_pct": ("server_cores_busy_s", 100),
                "server_cores_softirq_pct": ("server_cores_softirq_s", 100),
                "request_rate": ("requests_total", 1)}


def window_means(timeline: list[dict[str, object]], after_s: float, until_s: float) -> dict[str, float | None]:
    """Means over the seconds ``after_s < t <= until_s`` of a run's timeline: CPU (% of one core)
    of the generator, the server and the server's cores, and requests a second. Each is what
    accrued between the row before the window and its last row, over the wall time between them
    (rows carry cumulative figures). None for a figure the run did not measure or a window with
    no row."""
    inside = [i for i, row in enumerate(timeline) if after_s < row["t"] <= until_s]  # type: ignore[operator]
    out: dict[str, float | None] = dict.fromkeys(WINDOW_MEANS)
    if not inside:
        return out
    first, last = timeline[inside[0] - 1] if inside[0] else None, timeline[inside[-1]]
    wall = float(last["wall_s"]) - (float(first["wall_s"]) if first else 0.0)  # type: ignore[arg-type]
    if wall <= 0:
        return out
    for key, (cum, scale) in WINDOW_MEANS.items():
        if last.get(cum) is not None:
            before = float(first[cum]) if first else 0.0  # type: ignore[arg-type]
            out[key] = round(scale * (float(last[cum]) - before) / wall, 1)  # type: ignore[arg-type]
    return out


def fitted_rate(points: list[tuple[float, float]]) -> float | None:
    """The slope of a counter sampled over time, ``(t, count)`` pairs, by least squares. A stream
    listener's requests come in a burst at each segment boundary, so a counter read once a
    second climbs in steps a segment apart: the difference of two readings is off by up to a
    step, the fitted line through all of them by a small fraction of one. None with fewer than
    two points or no time between them."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mc = sum(c for _, c in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return sum((t - mt) * (c - mc) for t, c in points) / var


def steady_request_rate(timeline: list[dict[str, object]], after_s: float, until_s: float) -> float | None:
    """Requests a second over the seconds ``after_s < t <= until_s`` of a run's timeline, fitted
    (``fitted_rate``) through each row's cumulative request count at its wall time."""
    points = [(float(row["wall_s"]), float(row["requests_total"]))  # type: ignore[arg-type]
              for row in timeline if after_s < row["t"] <= until_s and row.get("wall_s") is not None]  # type: ignore[operator]
    rate = fitted_rate(points)
    return None if rate is None else round(rate, 1)


def _merge_tick(tick: int, snaps: list[dict], prev: dict | None) -> dict[str, object]:
    states: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    join, audio = Histogram(), Histogram()
    row: dict[str, object] = {"t": tick}
    stalled_now = stalls = requests = 0
    stall_s = lag = 0.0
    for s in snaps:
        states.update(s["states"])
        errors.update(s["errors"])
        join.merge(s["join"])
        audio.merge(s["audio"])
        stalled_now += s["stalled_now"]
        stalls += s["stalls"]
        stall_s += s["stall_s"]
        requests += s["requests"]
        lag = max(lag, s["lag_max"])
    prev_requests = int(prev["requests_total"]) if prev else 0  # type: ignore[call-overload]
    row.update({
        "playing": states["playing"], "waiting": states["waiting"], "joining": states["joining"],
        "failed": states["failed"], "done": states["done"], "stalled_now": stalled_now, "stalls": stalls,
        "stall_s": round(stall_s, 3), "requests_total": requests, "request_rate": requests - prev_requests,
        "errors": sum(errors.values()),
        "join_p50_s": rounded(join.quantile(0.5), 4), "join_p99_s": rounded(join.quantile(0.99), 4),
        "first_audio_p50_s": rounded(audio.quantile(0.5), 4), "first_audio_p99_s": rounded(audio.quantile(0.99), 4),
        "loop_lag_max_s": round(lag, 4),
    })
    return row


def _progress_line(row: dict[str, object]) -> str:
    def f(v: object) -> str:
        return "-" if v is None else f"{v:.3f}"

    srv = row["server_cpu_pct"]
    return (f"t={row['t']:>4}s playing {row['playing']:>6} waiting {row['waiting']:>6} failed {row['failed']:>4} | "
            f"stalled {row['stalled_now']} now, {row['stalls']} in all | join p99 {f(row['join_p99_s'])} s "
            f"audio p99 {f(row['first_audio_p99_s'])} s | {row['request_rate']:>6} req/s | "
            f"gen {row['generator_cpu_pct']:.0f}%" + (f" srv {srv:.0f}%" if srv is not None else ""))


def _result(opts: RunOptions, sessions: list, finals: list[dict], timeline: list[dict[str, object]], wall: float,
            gen_cpu_s: float, srv_cpu_s: float | None, server: ProcessCpu | None, waiting_max: int,
            warnings: list[str], procs: int) -> dict[str, object]:
    cfg = opts.cfg
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    hists = {k: Histogram() for k in ("join", "audio", "latency", "admit_wait", "lag", "edge_recovery", "part_gap",
                                      "segment_gap", "gap")}
    totals: Counter[str] = Counter()
    for f in finals:
        outcomes.update(f["outcomes"])
        errors.update(f["errors"])
        for k, h in hists.items():
            h.merge(f[k])
        for key in ("sessions", "admitted", "with_audio", "waited", "admitted_from_line", "answered", "stalled_listeners", "stalls",
                    "requests", "renewals", "playlist_renewals", "line_reads", "drops", "edge_switches", "joins_cut_off", "pow_solved",
                    "rejoins"):
            totals[key] += f[key]
    stall_s = sum(f["stall_s"] for f in finals)
    worker_cpu = [f["cpu_s"] for f in finals]
    gen_pct = 100 * gen_cpu_s / wall
    cores = psutil.cpu_count() or 1
    lag99 = hists["lag"].quantile(0.99) or 0.0
    busiest = max((100 * c / wall for c in worker_cpu), default=0.0)
    if busiest > 100 * WORKER_BUSY:
        warnings.append(f"a generator process used {busiest:.0f} % of a core: the generator, not the server, may be "
                        f"the bottleneck (use more --procs if there are idle cores)")
    if lag99 > LAG_LIMIT_S:
        warnings.append(f"the generator's event loop ran {lag99:.3f} s late (p99): its timings include its own delay")
    srv_pct = 100 * srv_cpu_s / wall if srv_cpu_s is not None else None
    if srv_pct is not None and gen_pct + srv_pct > 100 * cores * 0.9:
        warnings.append(f"generator ({gen_pct:.0f} %) and server ({srv_pct:.0f} %) together use nearly all "
                        f"{cores} cores: they compete for CPU")
    failed = outcomes["failed"]
    return {
        "listeners": opts.listeners,
        "sessions": totals["sessions"],
        "profile": opts.profile,
        "protocol": cfg.protocol,
        "player": cfg.player,
        "admitted": totals["admitted"],
        "with_audio": totals["with_audio"],
        "waited": totals["waited"],
        "admitted_from_line": totals["admitted_from_line"],
        "waiting_max": waiting_max,
        "waiting_end": outcomes["waiting"],
        "failed": failed,
        "never_answered": totals["sessions"] - totals["answered"],
        "outcomes": dict(outcomes),
        "errors_by_kind": dict(errors),
        "join_p50_s": rounded(hists["join"].quantile(0.5), 4),
        "join_p99_s": rounded(hists["join"].quantile(0.99), 4),
        "join_max_s": rounded(hists["join"].max if hists["join"].n else None, 4),
        "admit_wait_p99_s": rounded(hists["admit_wait"].quantile(0.99), 4),
        "edge_recovery_p99_s": rounded(hists["edge_recovery"].quantile(0.99), 3),  # lost edge -> media again
        "edge_recovery_max_s": rounded(hists["edge_recovery"].max, 3) if hists["edge_recovery"].n else None,
        # stream: the time between parts arriving, within a segment and across a segment boundary
        # (0.512 s on time; the boundary's includes the playlist request and the next GET)
        **{f"{k}_{q}_s": rounded(hists[k].quantile(v), 3) if hists[k].n else None
           for k in ("part_gap", "segment_gap") for q, v in (("p50", 0.5), ("p99", 0.99))},
        "first_audio_p50_s": rounded(hists["audio"].quantile(0.5), 4),
        "first_audio_p99_s": rounded(hists["audio"].quantile(0.99), 4),
        "stalled_listeners": totals["stalled_listeners"],
        "stalls": totals["stalls"],
        "stall_seconds_total": round(stall_s, 3),
        # the longest gap each listener heard (its longest stall; 0 without one): a fail-over's size
        "gap_p50_s": rounded(hists["gap"].quantile(0.5), 3) if hists["gap"].n else None,
        "gap_p99_s": rounded(hists["gap"].quantile(0.99), 3) if hists["gap"].n else None,
        "gap_max_s": rounded(hists["gap"].max, 3) if hists["gap"].n else None,
        "rejoins": totals["rejoins"],
        "latency_p50_s": rounded(hists["latency"].quantile(0.5), 3),
        "latency_p95_s": rounded(hists["latency"].quantile(0.95), 3),
        "latency_p99_s": rounded(hists["latency"].quantile(0.99), 3),
        "requests_total": totals["requests"],
        "request_rate_avg": round(totals["requests"] / wall, 1),
        "renewals": totals["renewals"],
        "playlist_renewals": totals["playlist_renewals"],
        "line_reads": totals["line_reads"],
        "drops": totals["drops"],
        "edge_switches": totals["edge_switches"],
        "joins_cut_off": totals["joins_cut_off"],
        "pow_solved": totals["pow_solved"],
        "pow_s_total": round(sum(f.get("pow_s", 0.0) for f in finals), 3),
        "generator_cpu_pct": round(gen_pct, 1),
        "generator_procs": procs,
        "generator_cpus": sorted({c for f in finals for c in f.get("cpus", ())}),  # where its processes ran
        "generator_proc_cpu_pct": [round(100 * c / wall, 1) for c in worker_cpu],
        "generator_loop_lag_p99_s": round(lag99, 4),
        "server_pid": server.pid if server else None,
        "server_cpu_pct": rounded(srv_pct, 1),
        "server_rss_mb_max": round(server.rss_max / 2**20, 1) if server else None,
        "cores": cores,
        "wall_s": round(wall, 2),
        "warnings": warnings,
        "settings": {**asdict(cfg), "listeners": opts.listeners, "profile": opts.profile, "ramp_s": opts.ramp_s,
                     "procs": procs, "python": sys.version.split()[0]},
        "timeline": timeline,
    }
