"""The edge tier: which HTTP cache to build it on, and does the origin stay flat?

    .venv/bin/python bench/edge.py [--choice 1000] [--sizes 1000,5000,10000,20000] [--edges 3] \\
        [--flat-engine wrk|loadtest] [--failover 3000] [--duration 40] [--ramp 10] [--procs 2] \\
        [--engines direct,varnish,nginx] [--steady 30] [--small] [--json bench/out/edge.json] \\
        [--plot bench/out/edge.png]

1. **Engine choice** (``--choice N``): N LL-HLS listeners (``amphi loadtest``, parts +
   blocking reloads + preload-hinted parts) against the same origin three ways: directly,
   through one Varnish edge (Amphi's VCL, ``amphi edge``), and through one nginx edge
   configured as the issue measured it (proxy_cache + proxy_cache_lock + use_stale updating
   + background_update; nginx does not check tokens here: it has no HMAC without njs). For
   each: the origin's media request rate, listeners' latency behind live and first-audio
   p99, stalls, and the edge's CPU. "Added p99" is the edge's latency p99 minus the direct
   one's (target: <= 100 ms).
2. **Flat origin** (``--sizes``): ``--edges`` Varnish edges, each audience size in turn; the
   origin's media request rate over the steady part of the run must stay within +-10 % of
   its mean across sizes. The listeners (``--flat-engine``): by default wrk connections split
   over the edges, each playing segments in step at the live edge (a blocking reload for the
   next segment, then the segment; every answer must be a 200), because 20k Python players
   need more than this machine's 2 cores next to the edges; or ``amphi loadtest`` players
   joined round-robin over the edges (``--flat-engine loadtest``), which at the largest sizes
   fall behind on a 2-core machine (their CPU and stalls are printed).
3. **Failover** (``--failover N``): N listeners (``--flat-player``) over 3 edges (1k each at the default), one edge
   ``kill -9``-ed in the steady part: its listeners' time from losing it to media from another
   (target <= 10 s, the loadtest's ``edge_recovery_max_s``), and the origin's request rate in the
   10 s after the kill against the 8 s before (target <= 2x).

Every engine-choice run must also bring audio to every listener (a broken path, not a figure).
``--small``: the engine choice alone, direct and through Varnish, 100 listeners over 2 s and
6 s of steady listening each (about 35 s); JSON and plot go to the temporary directory.
Everything binds 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from harness import (HOST, WRK_SUMMARY_LUA, NodeProcess, amphi_command, exit_on_sigterm, free_port,  # noqa: E402
                     join_space, kill_group, run, small_mode, start_space, wrk_summary)

from amphi.control.tokens import Signer  # noqa: E402
from amphi.edge.varnish import Edge  # noqa: E402
from amphi.edge.vcl import Backend, EdgeSpec  # noqa: E402
from amphi.core.files import raise_open_files  # noqa: E402
from amphi.loadtest.machine import ProcessCpu  # noqa: E402

SECRET = "b" * 64
SETTLE_S = 5.0


def varnish_edge(name: str, origin_url: str, workdir: Path, port: int) -> Edge:
    # no per-address limits: wrk's connections all come from one address, and the engine comparison is Varnish's
    spec = EdgeSpec.signed(name, SECRET, (Backend.parse("origin", origin_url),), media_rate=0, join_rate=0,
                           max_connections_per_address=0)
    return Edge(spec, workdir, HOST, port).start()


class NginxEdge:
    """nginx as an LL-HLS edge cache, set up as issue 6 measured it (no token check)."""

    def __init__(self, origin_url: str, workdir: Path, port: int) -> None:
        self.dir, self.port, self.origin = workdir, port, origin_url.split("//", 1)[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NginxEdge:
        self.dir.mkdir(parents=True, exist_ok=True)
        cred = Signer(SECRET.encode()).edge_credential("nginx")
        user = "user root;" if os.getuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(f"""{user}
worker_processes 1;
worker_rlimit_nofile 120000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
daemon off;
events {{ worker_connections 60000; }}
http {{
  access_log off;
  keepalive_timeout 75s; keepalive_requests 1000000;
  client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp; fastcgi_temp_path {self.dir}/tmp;
  uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
  proxy_cache_path {self.dir}/cache levels=1:2 keys_zone=media:32m max_size=512m inactive=2m use_temp_path=off;
  upstream origin {{ server {self.origin}; keepalive 64; }}
  server {{
    listen {HOST}:{self.port} backlog=4096;
    location ~ "^/o/[^/]+/media/(?<space>[^/]+)/t/[^/]+/(?<file>[^/?]+)$" {{
      proxy_pass http://origin/media/$space/edge/$file$is_args$args;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-amphi-edge "{cred}";
      proxy_cache media;
      proxy_cache_key $space/$file$is_args$args;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 15s;
      proxy_cache_lock_age 15s;
      proxy_cache_use_stale updating error timeout;
      proxy_cache_background_update on;
      proxy_read_timeout 15s;
    }}
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        (self.dir / "tmp").mkdir(exist_ok=True)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with open(self.dir / "nginx.out", "ab") as log:
            self.proc = subprocess.Popen([nginx, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{HOST}:{self.port}/api/node", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {(self.dir / 'nginx.out').read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, 5)


def procs_for(listeners: int, procs: int) -> int:
    """Generator processes: each listener holds two sockets (API, edge) and a process may hold
    RLIMIT_NOFILE of them (20,000 here, hard), so 20k listeners need more than two."""
    import resource

    per_process = max(1000, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 500) // 2)
    return max(procs, -(-listeners // per_process))


def origin_requests(url: str) -> int:
    return int(httpx.get(f"{url}/api/node", timeout=10).json()["origin"]["requests"])


def audience(origin: NodeProcess, space: str, size: int, args: argparse.Namespace, edge_pids: list[int],
             out: Path, player: str = "ll") -> dict[str, object]:
    """One loadtest run; the origin's media request rate and each side's CPU over the steady part.
    Arrivals are spread over at least size/400 s: one node on these 2 cores answers a few
    hundred fresh joins a second next to everything else, and this run is about media."""
    args = argparse.Namespace(**{**vars(args), "ramp": max(args.ramp, size / 400)})
    args.duration = max(args.duration, args.ramp + args.steady)
    cmd = amphi_command("loadtest", "--server", origin.url, "--space", space,
           "--listeners", str(size), "--profile", "ramp", "--ramp", str(args.ramp), "--duration", str(args.duration),
           "--procs", str(procs_for(size, args.procs)), "--json", str(out), "--quiet", "--server-pid", str(origin.pid),
           "--player", player)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t_start = time.monotonic()
        time.sleep(args.ramp + 5)  # the steady part begins
        cpus = [ProcessCpu(origin.pid), *(ProcessCpu(p) for p in edge_pids)]
        r0, c0, t0 = origin_requests(origin.url), [c.cpu_s() for c in cpus], time.monotonic()
        time.sleep(max(1.0, args.duration - (time.monotonic() - t_start) - 3))
        r1, c1, t1 = origin_requests(origin.url), [c.cpu_s() for c in cpus], time.monotonic()
        output, _ = proc.communicate(timeout=args.duration + 120)
    finally:
        if proc.poll() is None:
            kill_group(proc, 5)
    if proc.returncode != 0:
        raise RuntimeError(f"loadtest failed:\n{output.decode(errors='replace')[-2000:]}")
    r = json.loads(out.read_text())
    wall = t1 - t0
    return {
        "listeners": size, "with_audio": r["with_audio"], "stalled_listeners": r["stalled_listeners"],
        "latency_p50_s": r["latency_p50_s"], "latency_p99_s": r["latency_p99_s"],
        "first_audio_p99_s": r["first_audio_p99_s"], "join_p99_s": r["join_p99_s"],
        "listener_req_per_s": round(r["requests_total"] / args.duration, 1),
        "origin_media_req_per_s": round((r1 - r0) / wall, 2),
        "origin_cpu_pct": round(100 * (c1[0] - c0[0]) / wall, 1),
        "edge_cpu_pct": round(100 * sum(b - a for a, b in zip(c0[1:], c1[1:])) / wall, 1),
        "generator_cpu_pct": r["generator_cpu_pct"], "errors": r["errors_by_kind"],
    }


def with_origin(edges: int, fn, *extra: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """An origin sending listeners to ``edges`` edge ports (or none), a live Space on it."""
    ports = [free_port() for _ in range(edges)]
    node = NodeProcess(args=["--max-listeners", "30000", "--admit-rate", "3000", "--admit-burst", "500", *extra,
                             *[a for p in ports for a in ("--edge", f"http://{HOST}:{p}")]])
    with node:
        space = start_space(node.url, "edge bench", join=False)
        time.sleep(SETTLE_S)
        return fn(node, space.id, ports)


def choice(args: argparse.Namespace, work: Path) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    n = args.choice
    for engine in args.engines:
        print(f"engine choice: {engine}, {n} listeners ...", file=sys.stderr, flush=True)

        def go(node: NodeProcess, space: str, ports: list[int], engine: str = engine) -> dict[str, object]:
            if engine == "direct":
                return audience(node, space, n, args, [], work / f"{engine}.json")
            edge = (varnish_edge("edge1", node.url, work / engine, ports[0]) if engine == "varnish"
                    else NginxEdge(node.url, work / engine, ports[0]).start())
            try:
                assert edge.proc is not None
                return audience(node, space, n, args, [edge.proc.pid], work / f"{engine}.json")
            finally:
                edge.stop()

        results[engine] = with_origin(0 if engine == "direct" else 1, go)
        print(f"  {json.dumps(results[engine])}", file=sys.stderr, flush=True)
    base = results["direct"]["latency_p99_s"] or 0.0
    for engine in ("varnish", "nginx"):
        if engine not in results:
            continue
        p99 = results[engine]["latency_p99_s"]
        results[engine]["added_p99_s"] = None if p99 is None else round(p99 - base, 3)  # type: ignore[operator]
    return results


def flat(args: argparse.Namespace, work: Path) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for size in args.sizes:
        print(f"flat origin: {size} listeners over {args.edges} edges ...", file=sys.stderr, flush=True)

        def go(node: NodeProcess, space: str, ports: list[int], size: int = size) -> dict[str, object]:
            edges = [varnish_edge(f"edge{i + 1}", node.url, work / f"flat{size}-{i}", p) for i, p in enumerate(ports)]
            pids = [e.proc.pid for e in edges if e.proc]
            try:
                run = argparse.Namespace(**{**vars(args), "duration": args.flat_duration})
                if args.flat_engine == "wrk":
                    return wrk_audience(node, space, size, ports, pids, run, work)
                return audience(node, space, size, run, pids, work / f"flat{size}.json", args.flat_player)
            finally:
                for e in edges:
                    e.stop()

        # wrk's connections all play on one token: it must outlive the run
        results[str(size)] = with_origin(args.edges, go, *(("--token-ttl", "600") if args.flat_engine == "wrk" else ()))
        print(f"  {json.dumps(results[str(size)])}", file=sys.stderr, flush=True)
    return results


# In-step segment players for wrk (``--flat-engine wrk``): every connection plays at the live edge,
# alternating a blocking reload for the next segment (held by the edge until it exists, which paces
# the connection like a player) and a fetch of the newest segment. The live position is per wrk
# thread, shared by its connections; answers are counted by status, segments by kind.
WRK_PLAYER = r"""
function init(args)
  statuses, segments, playlists = {}, 0, 0
  prefix = args[1]  -- /o/<node>/media/<space>/t/<token>/
  live, uri, flip = nil, nil, false
end

function request()
  flip = not flip
  if live == nil then
    return wrk.format("GET", prefix .. "live.m3u8")
  elseif flip then
    return wrk.format("GET", prefix .. "live.m3u8?_HLS_msn=" .. (live + 1))
  end
  return wrk.format("GET", prefix .. uri)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= 200 then return end
  if string.sub(body, 1, 7) ~= "#EXTM3U" then
    segments = segments + 1
    return
  end
  playlists = playlists + 1
  local last = nil
  for line in string.gmatch(body, "[^\n]+") do
    if string.sub(line, 1, 1) ~= "#" then last = line end
  end
  local msn = last and tonumber(string.match(last, "^(%d+)"))
  if msn and (live == nil or msn > live) then live, uri = msn, last end
end
""" + WRK_SUMMARY_LUA


def wrk_audience(origin: NodeProcess, space: str, size: int, ports: list[int], edge_pids: list[int],
                 args: argparse.Namespace, work: Path) -> dict[str, object]:
    """``size`` wrk connections split over the edges (one wrk process each), all playing with one
    admission token; the origin's request rate and each side's CPU over the steady part."""
    status, answer = join_space(origin.url, space)
    if status != 200:
        raise RuntimeError(f"the bench's join was not admitted: {status} {answer}")
    path = urlsplit(str(answer["media_playlist"])).path  # /o/<node>/media/<space>/t/<token>/live.m3u8
    prefix = path.rsplit("/", 1)[0] + "/"
    script = work / "player.lua"
    script.write_text(WRK_PLAYER)
    wrk = shutil.which("wrk") or "wrk"
    procs = []
    for i, port in enumerate(ports):
        conns = size // len(ports) + (1 if i < size % len(ports) else 0)
        cmd = [wrk, "-t1", f"-c{conns}", f"-d{args.duration:g}s", "--timeout", "10s", "-s", str(script),
               f"http://{HOST}:{port}", "--", prefix]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    try:
        time.sleep(SETTLE_S + 5)  # every connection open and in step
        cpus = [ProcessCpu(origin.pid), ProcessCpu(*edge_pids), ProcessCpu(*(p.pid for p in procs))]
        r0, c0, t0 = origin_requests(origin.url), [c.cpu_s() for c in cpus], time.monotonic()
        time.sleep(max(1.0, args.duration - SETTLE_S - 5 - 3))
        r1, c1, t1 = origin_requests(origin.url), [c.cpu_s() for c in cpus], time.monotonic()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p, 5)  # type: ignore[arg-type]
    runs = [wrk_summary(o) for o in outputs]
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():  # type: ignore[union-attr]
            statuses[k] = statuses.get(k, 0) + v
    requests = sum(int(r["requests"]) for r in runs)  # type: ignore[call-overload]
    errors = sum(sum(r["errors"].values()) - r["errors"]["status"] for r in runs)  # type: ignore[union-attr,index]
    wall = t1 - t0
    return {
        "listeners": size, "engine": "wrk", "listener_req_per_s": round(requests / args.duration, 1),
        "origin_media_req_per_s": round((r1 - r0) / wall, 2), "statuses": statuses, "socket_errors": errors,
        "latency_p99_ms": max(int(r["latency_us"]["p99"]) for r in runs) / 1000,  # type: ignore[index]
        "origin_cpu_pct": round(100 * (c1[0] - c0[0]) / wall, 1), "edge_cpu_pct": round(100 * (c1[1] - c0[1]) / wall, 1),
        "generator_cpu_pct": round(100 * (c1[2] - c0[2]) / wall, 1),
        "stalled_listeners": None, "latency_p99_s": None,
    }


def failover(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """``--failover N`` listeners over 3 edges; ``kill -9`` of one mid-run: how fast its
    listeners are back on the others, and the origin's request rate before and during."""
    n = args.failover
    print(f"failover: {n} listeners over 3 edges, one killed ...", file=sys.stderr, flush=True)

    def go(node: NodeProcess, space: str, ports: list[int]) -> dict[str, object]:
        edges = [varnish_edge(f"edge{i + 1}", node.url, work / f"fail-{i}", p) for i, p in enumerate(ports)]
        out = work / "failover.json"
        cmd = amphi_command("loadtest", "--server", node.url, "--space", space, "--listeners", str(n),
                            "--profile", "ramp", "--ramp", str(args.ramp), "--duration", str(args.duration),
                            "--procs", str(procs_for(n, args.procs)), "--json", str(out), "--quiet",
                            "--server-pid", str(node.pid), "--player", args.flat_player)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(args.ramp + 5)
            r0, t0 = origin_requests(node.url), time.monotonic()
            time.sleep(8)
            r1, t1 = origin_requests(node.url), time.monotonic()
            edges[0].kill()
            time.sleep(10)
            r2, t2 = origin_requests(node.url), time.monotonic()
            output, _ = proc.communicate(timeout=args.duration + 120)
        finally:
            if proc.poll() is None:
                kill_group(proc, 5)
            for e in edges:
                e.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"loadtest failed:\n{output.decode(errors='replace')[-2000:]}")
        r = json.loads(out.read_text())
        return {"listeners": n, "edge_switches": r["edge_switches"], "edge_recovery_p99_s": r["edge_recovery_p99_s"],
                "edge_recovery_max_s": r["edge_recovery_max_s"], "with_audio": r["with_audio"], "failed": r["failed"],
                "stalled_listeners": r["stalled_listeners"], "origin_req_per_s_before": round((r1 - r0) / (t1 - t0), 2),
                "origin_req_per_s_during": round((r2 - r1) / (t2 - t1), 2)}

    return with_origin(3, go)


def report(res: dict[str, dict[str, dict[str, object]]], args: argparse.Namespace) -> int:
    ok = True
    if "choice" in res:
        print(f"\nEngine choice, {args.choice} LL-HLS listeners, one edge:")
        print(f"{'':10}{'origin req/s':>14}{'lat p50':>9}{'lat p99':>9}{'added p99':>11}{'1st audio p99':>15}"
              f"{'stalled':>9}{'edge CPU %':>12}")
        for k, r in res["choice"].items():
            print(f"{k:10}{r['origin_media_req_per_s']:>14}{r['latency_p50_s']:>9}{r['latency_p99_s']:>9}"
                  f"{str(r.get('added_p99_s', '-')):>11}{r['first_audio_p99_s']:>15}{r['stalled_listeners']:>9}"
                  f"{r['edge_cpu_pct']:>12}")
        added = res["choice"]["varnish"].get("added_p99_s")
        # a quantile is exact to one histogram bucket (5 %, amphi.loadtest.stats): at a p99 of ~2 s
        # that is ~0.1 s, the bar's own size, so the bar allows one bucket of the direct p99
        resolution = 0.05 * float(res["choice"]["direct"]["latency_p99_s"] or 0)  # type: ignore[arg-type]
        ok &= added is not None and added <= 0.1 + resolution  # type: ignore[operator]
        for k, r in res["choice"].items():
            if r["with_audio"] != args.choice:
                print(f"{k}: only {r['with_audio']} of {args.choice} listeners had audio")
                ok = False
    if "flat" in res:
        rates = [r["origin_media_req_per_s"] for r in res["flat"].values()]
        mean = sum(rates) / len(rates)  # type: ignore[arg-type]
        players = ("wrk connections playing segments in step" if args.flat_engine == "wrk"
                   else f"amphi loadtest {args.flat_player} players")
        print(f"\nFlat origin, {args.edges} Varnish edges, {players}:")
        print(f"{'listeners':>10}{'listener req/s':>16}{'origin req/s':>14}{'vs mean':>9}{'origin CPU %':>14}"
              f"{'edges CPU %':>13}{'gen CPU %':>11}  listeners' outcome")
        for size, r in res["flat"].items():
            dev = r["origin_media_req_per_s"] / mean - 1  # type: ignore[operator]
            outcome = (f"answers {r['statuses']}, socket errors {r['socket_errors']}, p99 {r['latency_p99_ms']} ms"
                       if r.get("engine") == "wrk" else
                       f"stalled {r['stalled_listeners']}, latency p99 {r['latency_p99_s']} s")
            print(f"{size:>10}{r['listener_req_per_s']:>16}{r['origin_media_req_per_s']:>14}{dev:>+9.1%}"
                  f"{r['origin_cpu_pct']:>14}{r['edge_cpu_pct']:>13}{r['generator_cpu_pct']:>11}  {outcome}")
            ok &= abs(dev) <= 0.10
            if r.get("engine") == "wrk":
                ok &= set(r["statuses"]) == {"200"} and r["socket_errors"] == 0  # type: ignore[arg-type]
    if "failover" in res:
        f = res["failover"]
        print(f"\nFailover, {f['listeners']} listeners over 3 edges, one killed: {f['edge_switches']} moved, back within "
              f"p99 {f['edge_recovery_p99_s']} s / max {f['edge_recovery_max_s']} s; origin {f['origin_req_per_s_before']} "
              f"req/s before, {f['origin_req_per_s_during']} during; {f['failed']} failed, {f['stalled_listeners']} stalled")
        ok &= (f["edge_recovery_max_s"] or 99) <= 10 and f["origin_req_per_s_during"] <= 2 * f["origin_req_per_s_before"]  # type: ignore[operator]
    print(f"\ntargets {'met' if ok else 'MISSED'}: added p99 <= 100 ms (Varnish; + one 5 % histogram bucket), origin rate within +-10 %, "
          "failover back within 10 s with the origin <= 2x")
    return 0 if ok else 1


def plot(res: dict[str, dict[str, dict[str, object]]], path: str) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/edge.py's figure")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if "flat" in res:
        sizes = [int(s) for s in res["flat"]]
        axes[0].plot(sizes, [r["listener_req_per_s"] for r in res["flat"].values()], "o-", label="listeners' requests/s")
        axes[0].plot(sizes, [r["origin_media_req_per_s"] for r in res["flat"].values()], "s-", label="origin requests/s")
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("listeners")
        axes[0].set_title("Request rates behind the edges: listeners vs origin")
        axes[0].legend()
    if "choice" in res:
        names = list(res["choice"])
        axes[1].bar(names, [r["latency_p99_s"] or 0 for r in res["choice"].values()])
        axes[1].set_ylabel("latency behind live p99 (s)")
        axes[1].set_title(f"{args_choice(res)} LL-HLS listeners: direct vs edges")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def args_choice(res: dict[str, dict[str, dict[str, object]]]) -> object:
    return next(iter(res["choice"].values()))["listeners"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--choice", type=int, default=1000, help="listeners for the engine choice; 0 skips it")
    p.add_argument("--sizes", default="1000,5000,10000,20000", help="audience sizes for the flat-origin run; '' skips")
    p.add_argument("--edges", type=int, default=3)
    p.add_argument("--flat-player", choices=("ll", "segments"), default="segments",
                   help="the flat-origin run's players: whole segments (default: 20k LL-HLS listeners need more "
                        "than this machine's 2 cores for the generator and the edges) or LL-HLS parts")
    p.add_argument("--flat-duration", type=float, default=90.0,
                   help="each flat-origin run's length: the origin's rate moves in steps of one segment (3.6 s) per "
                        "edge, so a +-10 %% figure needs a window of many segments")
    p.add_argument("--flat-engine", choices=("wrk", "loadtest"), default="wrk",
                   help="the flat-origin run's listeners: wrk connections playing in step at the live edge "
                        "(default: 20k Python players need more than this machine's 2 cores), or amphi loadtest")
    p.add_argument("--failover", type=int, default=3000, help="listeners for the edge-kill run (1k per edge); 0 skips")
    p.add_argument("--duration", type=float, default=40.0)
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--engines", default="direct,varnish,nginx",
                   help="the engine choice's runs (direct and varnish are needed for the added p99)")
    p.add_argument("--steady", type=float, default=30.0, help="seconds of listening after a run's ramp, at least")
    p.add_argument("--json", default="bench/out/edge.json")
    p.add_argument("--plot", default="bench/out/edge.png")
    tmp = Path(tempfile.gettempdir())
    small_mode(p, choice=100, sizes="", failover=0, duration=8.0, ramp=2.0, steady=6.0, engines="direct,varnish",
               json=str(tmp / "edge_small.json"), plot=str(tmp / "edge_small.png"))
    args = p.parse_args()
    args.engines = [e for e in args.engines.split(",") if e]
    if args.choice and not {"direct", "varnish"} <= set(args.engines) <= {"direct", "varnish", "nginx"}:
        p.error("--engines: direct and varnish, and nginx if you like")
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    exit_on_sigterm()
    raise_open_files()  # wrk, the edges and the loadtest inherit it: a socket per listener
    os.environ["AMPHI_SECRET"] = SECRET  # the origins inherit it; the edges are given it
    work = Path(tempfile.mkdtemp(prefix="amphi-edge-bench-"))
    res: dict[str, dict[str, dict[str, object]]] = {}
    try:
        if args.choice:
            res["choice"] = choice(args, work)
        if args.sizes:
            res["flat"] = flat(args, work)
        if args.failover:
            res["failover"] = failover(args, work)  # type: ignore[assignment]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    plot(res, args.plot)
    return report(res, args)


if __name__ == "__main__":
    run(main)
