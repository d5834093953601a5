"""Join path cost: how many join decisions (the waiting answer) a node makes per CPU second.

    .venv/bin/python bench/join_rate.py [--seconds 10] [--connections 64] [--threads 1] \\
        [--inproc-seconds 3] [--target 20000] [--small] [--json OUT]

Measured two ways, both printed:

1. **over HTTP**: ``amphi serve --max-listeners 1`` on a free 127.0.0.1 port, one live Space
   whose one seat this bench takes first, so every further join is a waiting answer. wrk
   (``-t1 -c64 -d10s`` by default) POSTs ``{}`` to ``/api/spaces/<id>/join`` over keep-alive
   connections, each from a new random client address (an X-Forwarded-For the node trusts,
   as behind an edge: the per-address limits see a crowd, not one flooding address); a Lua
   script counts the answers by status. The node's CPU time (user +
   system, all its threads, psutil) over the run gives *decisions per core-second* =
   requests / node CPU seconds. The node's own ``waiting`` count must have grown by about
   the number of requests. Skipped, with a message, if ``wrk`` is not installed
   (``make system`` installs it).
2. **in process**: ``amphi.control.admission.Admission.join`` called in a tight loop on a
   node-less ``Admission`` with one seat, already taken: decisions per CPU second of this
   process. That is the decision alone (line, position, estimate, signed ticket), without
   HTTP, JSON or the ASGI stack.

Exits 1 if a figure measured is below ``--target`` (20,000 per core-second: issue 22; it was 10,000), 2 on an error.
Runs about 25 s with the defaults. ``--small``: wrk for 2 s on 16 connections, 0.5 s in
process, about 10 s, with a bar of 1,000 (a short run on a shared machine says little about
the rate; the checks on the answers, the line's growth and errors are the same).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import psutil

from harness import (WRK_SUMMARY_LUA, NodeProcess, split_cores, end_space, exit_on_sigterm, join_space, machine_busy_s,
                     main_thread_cpu_s, process_cpu_s, run, small_mode, space_status, start_space, wrk_summary)

from amphi.control.tokens import Signer
from amphi.core.files import raise_open_files
from amphi.edge.joins import MAX_BATCH

SETTLE_S = 2.0  # after the Space starts, before measuring
BASELINE_S = 2.0  # the node's CPU with the live Space and no joins, for reference
WRK_GRACE_S = 30.0  # beyond --seconds, before wrk is killed
INPROC_MAX_DECISIONS = 400_000  # bounds the in-process line's memory (about 100 MB)
TOKEN_TTL_S = 600  # the seat the bench takes must outlive the run
# wrk stands for an edge in front of many clients: the node believes 127.0.0.1's X-Forwarded-For, so the
# per-address and per-prefix limits see a crowd. The node's join budget is lifted (it would cap the rate
# measured), and the proof of work is off: joins that never poll are, rightly, a flood to the detector.
SERVE_ARGS = ("--trusted-proxy", "127.0.0.1/32", "--join-rate", "1000000", "--pow", "off")

BATCH_SCRIPT = r"""
-- join_rate.py: an edge's batches of joins (edge/joins.py): POST /api/edge/joins with N joins, each
-- from a new random client address, with the edge's credential; count the answers by status
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-amphi-edge"] = "CREDENTIAL"

function init(args)
  statuses = {}
  space = args[1]
  n = tonumber(args[2])
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local rows = {}
  for i = 1, n do
    rows[i] = string.format('["%s","10.%d.%d.%d","{}",null,120]', space, math.random(0, 255), math.random(0, 255),
                            math.random(1, 254))
  end
  wrk.body = '{"joins":[' .. table.concat(rows, ",") .. ']}'
  return wrk.format()
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
""" + WRK_SUMMARY_LUA

WRK_SCRIPT = r"""
-- join_rate.py: POST an empty JSON body to join; count the answers by status
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"

-- wrk ... URL -- spread | ADDRESS: the client address the node sees (it trusts 127.0.0.1's
-- X-Forwarded-For, as behind an edge): a new random one per request, or always the same one
function init(args)
  statuses = {}
  client = args[1] or "spread"
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  if client == "spread" then
    wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255),
                                                   math.random(1, 254))
  else
    wrk.headers["X-Forwarded-For"] = client
  end
  return wrk.format()
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
""" + WRK_SUMMARY_LUA


@dataclass
class HttpRun:
    skipped: str | None = None
    command: list[str] = field(default_factory=list)
    batch: int = 0  # joins a request (an edge's batch), 0: one join a request
    requests: int = 0
    decisions: int = 0
    seconds: float = 0.0
    requests_per_s: float = 0.0
    node_cpu_s: float = 0.0
    node_percent: float = 0.0  # of one core, over the run
    loop_percent: float = 0.0  # the node's main thread (event loop), of one core
    others_percent: float = 0.0  # every other process on the machine, of one core
    baseline_percent: float = 0.0  # the node with the live Space and no joins
    wrk_cpu_s: float = 0.0
    wrk_percent: float = 0.0
    per_cpu_s: float = 0.0  # decisions / node CPU seconds
    per_loop_cpu_s: float = 0.0  # decisions / CPU seconds of the node's event-loop thread
    statuses: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    waiting_before: int | None = None
    waiting_after: int | None = None
    waiting_growth: int | None = None
    wrk_output: str = ""


@dataclass
class InprocRun:
    skipped: str | None = None
    decisions: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    per_cpu_s: float = 0.0
    line_length: int = 0
    answer: str = ""  # the last answer, for the record


# -- 1. over HTTP ---------------------------------------------------------------------------


def take_the_seat(server: str, space_id: str) -> None:
    status, answer = join_space(server, space_id)
    if status != 200:
        raise RuntimeError(f"the first join should take the one seat; got HTTP {status}: {answer}")
    status, answer = join_space(server, space_id)
    if status != 202 or answer.get("status") != "waiting":
        raise RuntimeError(f"with the seat taken a join should wait; got HTTP {status}: {answer}")


def measure_http(node: NodeProcess, space_id: str, args: argparse.Namespace, client: str = "spread",
                 url: str | None = None, wrk_cpus: tuple[int, ...] = (), batch: int = 0) -> HttpRun:
    """wrk POSTing joins to the node (or to ``url``, an edge in front of it); ``client``: the address
    the node sees, "spread" for a new one per request (the node must trust 127.0.0.1's
    X-Forwarded-For: ``SERVE_ARGS``). ``batch``: instead, an edge's batches of that many joins
    (``POST /api/edge/joins``), each join from a new address. The node's CPU is measured either way;
    a request is ``batch`` decisions."""
    out = HttpRun(batch=batch)
    wrk = shutil.which("wrk") or "wrk"  # main() checked that it is installed
    script = node.dir / ("batch.lua" if batch else "join.lua")
    if batch:
        credential = Signer((node.dir / "data" / "secret").read_text().strip().encode()).edge_credential("bench")
        script.write_text(BATCH_SCRIPT.replace("CREDENTIAL", credential))
        url = f"{url or node.url}/api/edge/joins"
        tail = [space_id, str(batch)]
        connections = min(args.connections, args.batch_connections)
    else:
        script.write_text(WRK_SCRIPT)
        url = f"{url or node.url}/api/spaces/{space_id}/join"
        tail = [client]
        connections = args.connections
    out.command = [wrk, f"-t{args.threads}", f"-c{connections}", f"-d{args.seconds:g}s", "--timeout", "5s",
                   "-s", str(script), url, "--", *tail]

    print(f"[http] node baseline {BASELINE_S:.0f} s (live Space, no joins)", flush=True)
    cpu0, t0 = process_cpu_s(node.pid), time.monotonic()
    time.sleep(BASELINE_S)
    out.baseline_percent = 100 * (process_cpu_s(node.pid) - cpu0) / (time.monotonic() - t0)

    out.waiting_before = _int(space_status(node.url, space_id).get("waiting"))
    print(f"[http] {' '.join(out.command[:-4 - len(tail)])} ... {url} -- {' '.join(tail)}", flush=True)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, loop0, all0, t0 = process_cpu_s(node.pid), main_thread_cpu_s(node.pid), machine_busy_s(), time.monotonic()
    proc = subprocess.Popen(out.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, wrk_cpus)) if wrk_cpus else None)
    try:
        text, _ = proc.communicate(timeout=args.seconds + WRK_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise RuntimeError(f"wrk did not finish within {args.seconds + WRK_GRACE_S:.0f} s") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    wall = time.monotonic() - t0
    node_cpu = process_cpu_s(node.pid) - cpu0
    loop_cpu = main_thread_cpu_s(node.pid) - loop0
    all_cpu = machine_busy_s() - all0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.wrk_output = text
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    summary = wrk_summary(text)

    out.requests = int(summary["requests"])
    out.decisions = out.requests * max(1, batch)
    out.seconds = summary["duration_us"] / 1e6
    out.requests_per_s = out.requests / out.seconds if out.seconds else 0.0
    out.node_cpu_s = node_cpu
    out.node_percent = 100 * node_cpu / wall
    out.wrk_cpu_s = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    out.wrk_percent = 100 * out.wrk_cpu_s / wall
    out.loop_percent = 100 * loop_cpu / wall
    out.per_loop_cpu_s = out.decisions / loop_cpu if loop_cpu > 0 else 0.0
    out.others_percent = max(0.0, 100 * (all_cpu - node_cpu - out.wrk_cpu_s) / wall)
    out.per_cpu_s = out.decisions / node_cpu if node_cpu > 0 else 0.0
    out.statuses = {k: int(v) for k, v in sorted(summary["statuses"].items())}
    out.non_2xx = sum(n for status, n in out.statuses.items() if not 200 <= int(status) < 300)
    out.socket_errors = {k: int(v) for k, v in summary["errors"].items() if k != "status"}
    out.latency_ms = {k: v / 1000 for k, v in summary["latency_us"].items()}
    out.waiting_after = _int(space_status(node.url, space_id).get("waiting"))
    if out.waiting_before is not None and out.waiting_after is not None:
        out.waiting_growth = out.waiting_after - out.waiting_before
    print(f"[http] {out.requests} requests ({out.decisions} decisions) in {out.seconds:.1f} s ({out.requests_per_s:.0f}/s); "
          f"node CPU {node_cpu:.2f} s ({out.node_percent:.0f} % of one core): "
          f"{out.per_cpu_s:.0f} decisions per core-second", flush=True)
    return out


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# -- 2. in process --------------------------------------------------------------------------


def measure_inproc(seconds: float) -> InprocRun:
    """``Admission.join`` in a loop: one seat, taken, so every call is a waiting answer."""
    out = InprocRun()
    try:
        from amphi.control.admission import Admission, Waiting
        from amphi.control.tokens import Signer, new_secret
        from amphi.core.config import AdmissionConfig
    except ImportError as exc:
        out.skipped = f"amphi.control.admission is not importable: {exc}"
        print(f"[in process] skipped: {out.skipped}", flush=True)
        return out
    names = {f.name for f in fields(AdmissionConfig)}
    cfg = replace(AdmissionConfig(), max_listeners=1,
                  **({"max_waiting": INPROC_MAX_DECISIONS + 10} if "max_waiting" in names else {}))
    admission = Admission(cfg, Signer(new_secret()))
    space = "bench-space"
    first = admission.join(space, time.time())
    if isinstance(first, Waiting):
        raise RuntimeError(f"the first in-process join should take the seat; got {first}")
    print(f"[in process] Admission.join in a loop for {seconds:g} s", flush=True)
    join, clock = admission.join, time.time
    batch = 1000
    n = 0
    answer = None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while n < INPROC_MAX_DECISIONS and time.perf_counter() < deadline:
        for _ in range(batch):
            answer = join(space, clock())
        n += batch
    out.cpu_s = time.process_time() - cpu0
    out.wall_s = time.perf_counter() - wall0
    if not isinstance(answer, Waiting):
        raise RuntimeError(f"an in-process join with the seat taken should wait; got {answer}")
    out.decisions = n
    out.per_cpu_s = n / out.cpu_s if out.cpu_s else 0.0
    out.line_length = answer.waiting
    out.answer = repr(answer)[:200]
    print(f"[in process] {n} decisions in {out.cpu_s:.2f} CPU s: {out.per_cpu_s:.0f} per CPU second", flush=True)
    return out


# -- report ---------------------------------------------------------------------------------


def print_table(runs: list[HttpRun], inproc: InprocRun, args: argparse.Namespace, cores: int) -> list[tuple[bool, str]]:
    """The figures, and the checks: the target applies to the batched joins (what a node pays for
    joins that come through edges, docs/admission.md "Joins batched at the edge"); a join that
    comes alone (no edge in front) is printed beside it, met or not."""
    print()
    print(f"join decisions, waiting answer ({cores} cores here)          requests  decisions  seconds   CPU s  "
          f"per CPU s  target {args.target:g}")
    results: list[tuple[bool, str]] = []
    for http in runs:
        name = f"an edge's batches of {http.batch} (POST /api/edge/joins)" if http.batch else "one join a request, alone"
        if http.skipped:
            print(f"  {name:56s} skipped: {http.skipped}")
            continue
        ok = http.per_cpu_s >= args.target
        if http.batch:
            results.append((ok, f"batched over HTTP {http.per_cpu_s:.0f} decisions per core-second >= {args.target:g}"))
        print(f"  {name:56s} {http.requests:8d} {http.decisions:10d} {http.seconds:8.1f} {http.node_cpu_s:7.2f} "
              f"{http.per_cpu_s:10.0f}  {'met' if ok else 'MISSED'}")
    if inproc.skipped:
        print(f"  {'in process (Admission.join)':56s} skipped: {inproc.skipped}")
    else:
        ok = inproc.per_cpu_s >= args.target
        results.append((ok, f"in process {inproc.per_cpu_s:.0f} decisions per CPU second >= {args.target:g}"))
        print(f"  {'in process (Admission.join)':56s} {'':8s} {inproc.decisions:10d} {inproc.wall_s:8.1f} "
              f"{inproc.cpu_s:7.2f} {inproc.per_cpu_s:10.0f}  {'met' if ok else 'MISSED'}")
    measured = [h for h in runs if not h.skipped]
    if len(measured) == 2 and measured[0].per_cpu_s:
        print(f"batched / alone: {measured[1].per_cpu_s / measured[0].per_cpu_s:.2f}x the decisions per core-second")
    for http in measured:
        lat = http.latency_ms
        print(f"{'batched' if http.batch else 'alone'}: {' '.join(http.command[:6])}: {http.requests_per_s:.0f} req/s; "
              f"latency ms p50 {lat['p50']:.2f}, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}, max {lat['max']:.2f}; "
              f"answers {http.statuses}, non-2xx {http.non_2xx}, socket errors {sum(http.socket_errors.values())}")
        print(f"      CPU, % of one core: node {http.node_percent:.0f} (event loop thread {http.loop_percent:.0f}, "
              f"baseline with the live Space and no joins {http.baseline_percent:.1f}), wrk {http.wrk_percent:.0f}, "
              f"other processes {http.others_percent:.0f}")
        print(f"      per CPU second of the event-loop thread alone (the serial part): {http.per_loop_cpu_s:.0f}")
        print(f"      node's waiting count {http.waiting_before} -> {http.waiting_after} "
              f"(+{http.waiting_growth}; {http.decisions} decisions answered)")
        slack = args.connections * max(1, http.batch)  # answers in flight when wrk stopped
        growth_ok = http.waiting_growth is not None and abs(http.waiting_growth - http.decisions) <= slack
        allowed = int(args.max_other * http.requests)
        label = "batched" if http.batch else "alone"
        results.append((http.non_2xx <= allowed and not sum(http.socket_errors.values()),
                        f"{label}: every HTTP answer 2xx: {http.non_2xx} non-2xx (at most {allowed}), "
                        f"{sum(http.socket_errors.values())} socket errors"))
        expected = "200" if http.batch else "202"  # a batch's answer lists its joins' answers
        others = http.requests - http.statuses.get(expected, 0)
        results.append((http.requests > 0 and others <= allowed,
                        f"{label}: every HTTP answer {expected}: {http.statuses} (at most {allowed} other)"))
        results.append((growth_ok, f"{label}: the node's line grew by {http.waiting_growth}, {http.decisions} "
                                   f"decisions answered (within {slack}): each a place in line"))
    if not inproc.skipped:
        print(f"in process: line {inproc.line_length} long at the end; last answer {inproc.answer}")
    print("checks")
    for ok, text in results:
        print(f"  {'ok  ' if ok else 'MISS'} {text}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--batch", type=int, default=MAX_BATCH,
                        help=f"joins in an edge's batch (default {MAX_BATCH}, edge/joins.py MAX_BATCH)")
    parser.add_argument("--batch-connections", type=int, default=8,
                        help="wrk connections for the batches (default 8: an edge tier's workers each send one at a time)")
    parser.add_argument("--inproc-seconds", type=float, default=3.0, help="in-process loop length (default 3)")
    parser.add_argument("--target", type=float, default=20_000.0,
                        help="decisions per core-second that each measurement must reach (default 20000, issue 22)")
    parser.add_argument("--max-other", type=float, default=0.0,
                        help="share of HTTP answers that may be other than a place in line (default 0; --small "
                             "0.01: an overloaded shared machine makes the node shed a few, 429)")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="let the node and wrk share every core (default: the node on the first core, wrk on the "
                             "others: sharing, each slowed the other and the figure swung by a fifth)")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    small_mode(parser, seconds=2.0, connections=16, inproc_seconds=0.5, target=1000.0, max_other=0.01, batch=50,
               batch_connections=4)
    args = parser.parse_args()
    if (args.seconds < 1 or args.connections < 1 or args.threads < 1 or args.connections < args.threads
            or args.batch < 1 or args.batch_connections < args.threads):
        parser.error("--seconds >= 1, --connections >= --threads >= 1, --batch >= 1, --batch-connections >= --threads")
    exit_on_sigterm()
    raise_open_files()

    print(f"join rate: wrk {args.seconds:g} s over HTTP, {args.inproc_seconds:g} s in process; "
          f"about {args.seconds + args.inproc_seconds + SETTLE_S + BASELINE_S + 8:.0f} s", flush=True)
    runs = [HttpRun(), HttpRun(batch=args.batch)]
    serve_args = ["--max-listeners", "1", "--token-ttl", str(TOKEN_TTL_S), *SERVE_ARGS]
    if shutil.which("wrk") is None:
        for http in runs:
            http.skipped = "wrk is not installed (make system installs it; or apt-get install wrk)"
        print(f"[http] skipped: {runs[0].skipped}", flush=True)
    else:
        wrk_cpus = split_cores() if args.split else ()  # the node starts on the first core, wrk on the others
        with NodeProcess(args=serve_args) as node:
            print(f"node {node.url} (pid {node.pid}), amphi serve {' '.join(serve_args)}"
                  + (f"; node on core {sorted(os.sched_getaffinity(node.pid))}, wrk on {list(wrk_cpus)}" if wrk_cpus
                     else ""), flush=True)
            space = start_space(node.url, "join rate bench", join=False)
            time.sleep(SETTLE_S)
            take_the_seat(node.url, space.id)
            runs = [measure_http(node, space.id, args, wrk_cpus=wrk_cpus),  # side by side, on one node
                    measure_http(node, space.id, args, wrk_cpus=wrk_cpus, batch=args.batch)]
            if not node.alive():
                raise RuntimeError("the node exited during the run")
            end_space(node.url, space)
    inproc = measure_inproc(args.inproc_seconds)

    cores = psutil.cpu_count() or 0
    results = print_table(runs, inproc, args, cores)
    if args.json:
        summary = {"target_per_core_s": args.target, "cores": cores, "http": asdict(runs[0]), "batched": asdict(runs[1]),
                   "in_process": asdict(inproc),
                   "checks": [{"ok": ok, "check": text} for ok, text in results]}
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    missed = [text for ok, text in results if not ok]
    if not results:
        print("FAIL: nothing measured")
        return 1
    print("FAIL: " + "; ".join(missed) if missed else "PASS: " + "; ".join(text for _, text in results[:2]))
    return 1 if missed else 0


if __name__ == "__main__":
    run(main)
