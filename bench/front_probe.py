"""A design probe for issue 5's CPU target: what would an nginx front that serves segment
players from its own cache cost, next to the edge as it is?

    .venv/bin/python bench/front_probe.py [--listeners 10000] [--setups varnish,varnish-capped,front,front-capped] \\
        [--duration 40] [--json bench/out/front_probe.json]

The same audience (``amphi loadtest``, segment players, ``--listeners`` over a 10 s ramp) plays
from one node through each setup in turn; servers on CPU 0, the generator on CPU 1, as in
``bench/side_by_side.py``. Server CPU is the node's plus everything in front of it, over the
steady part (CPU spent over wall time, ``window_cpu_pct``).

* ``varnish``: the edge as built (``amphi edge``'s VCL and thread settings), no connection cap.
* ``varnish-capped``: as deployed: nginx's stream module caps connections per address and hands
  each to varnishd over a Unix socket (``edge/varnish.py``).
* ``front``: an nginx http server in front of that Varnish. Whole segments, ``init.mp4`` and
  blocking playlist reloads without ``_HLS_part`` (what a segment player asks for) come from
  nginx's own cache (``proxy_cache_lock`` holds the rest of a rush while one request fetches);
  everything else (LL-HLS parts, the first playlist, the API) goes to Varnish. Requests per
  address are limited as Varnish limits them (200 a second); connections are not capped: nginx's
  http ``limit_conn`` counts only connections with a request in progress, so it cannot cap idle
  ones.
* ``front-capped``: the same behind nginx's stream module capping connections per address (256),
  in the same nginx, over a Unix socket with the PROXY protocol.

THIS IS A PROBE, NOT THE EDGE: nginx here does not check admission tokens (Varnish still does
on every request it sees, so only cache hits in nginx skip the check). A real front would
check them with njs (``crypto.createHmac``; Debian's libnginx-mod-http-js), a few microseconds
a request more. Results: docs/benchmarks.md ("What would meet the CPU target").
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

sys.path.insert(0, str(Path(__file__).parent))
from harness import HOST, NodeProcess, free_port, kill_group, run, start_space  # noqa: E402

from amphi.edge.varnish import STREAM_MODULE, Edge  # noqa: E402
from amphi.edge.vcl import Backend, EdgeSpec  # noqa: E402
from amphi.loadtest.machine import raise_open_files  # noqa: E402
from amphi.loadtest.run import RunOptions, run as loadtest, window_cpu_pct  # noqa: E402
from amphi.loadtest.swarm import LoadConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("varnish", "varnish-capped", "front", "front-capped")
WARM_S = 12.0  # as in side_by_side: a segment player starts three segments behind live
RAMP_S = 10.0
CAP = 256  # EdgeSpec's default connections per address
MEDIA_RATE = 200  # EdgeSpec's default media requests per address per second


def front_conf(d: Path, port: int, varnish: int, *, capped: bool, listeners: int) -> str:
    """nginx: an http cache for segment players in front of Varnish on ``varnish``; with
    ``capped``, behind a stream server that caps connections per address."""
    # the capped front holds two connections a listener (client, and stream -> http): two workers
    workers, conns = (2, min(2 * listeners + 1000, 19_000)) if capped else (1, min(listeners + 1000, 19_000))
    listen = (f"listen unix:{d}/http.sock proxy_protocol;\n    set_real_ip_from unix:;\n"
              "    real_ip_header proxy_protocol;" if capped else f"listen {HOST}:{port} backlog=16384;")
    stream = f"""
stream {{
  limit_conn_zone $binary_remote_addr zone=per_address:10m;
  server {{
    listen {HOST}:{port} backlog=16384;
    limit_conn per_address {CAP};
    proxy_pass unix:{d}/http.sock;
    proxy_protocol on;
    proxy_timeout 60s;
  }}
}}""" if capped else ""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{f"load_module {STREAM_MODULE};" if capped else ""}
{user}worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections {conns}; }}
http {{
  access_log off;
  tcp_nodelay on;
  keepalive_timeout 75s; keepalive_requests 1000000;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  proxy_cache_path {d}/cache keys_zone=media:10m max_size=200m inactive=60s use_temp_path=off;
  limit_req_zone $binary_remote_addr zone=media_rate:10m rate={MEDIA_RATE}r/s;
  # to Varnish, not from this cache: LL-HLS (a part asked for), the first playlist (no msn)
  map "$arg__HLS_part:$arg__HLS_msn:$uri" $to_varnish {{
    "~^[^:]+:" 1;
    "~\\.(m4s|mp4)$" 0;
    "~^::" 1;
    default 0;
  }}
  upstream varnish {{ server {HOST}:{varnish}; keepalive 64; }}
  server {{
    {listen}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location ~ ^/o/([^/]+)/media/([^/]+)/t/[^/]+/([0-9]+\\.m4s|init\\.mp4|live\\.m3u8)$ {{
      limit_req zone=media_rate burst={2 * MEDIA_RATE} nodelay;
      set $file "$1/$2/$3";
      proxy_no_cache $to_varnish;
      proxy_cache_bypass $to_varnish;
      proxy_cache media;
      proxy_cache_key "$file?$arg__HLS_msn";
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;  # a blocking reload is held up to a segment (3.584 s)
      proxy_cache_lock_age 10s;
      proxy_ignore_headers Cache-Control Expires;
      proxy_cache_valid 200 10s;
      proxy_pass http://varnish;
    }}
    location / {{ proxy_pass http://varnish; }}
  }}
}}{stream}
"""


def measure(setup: str, args: argparse.Namespace) -> dict[str, object]:
    secret = os.environ.setdefault("AMPHI_SECRET", "s" * 64)
    port, varnish_port = free_port(), free_port()
    front = setup.startswith("front")
    node = NodeProcess(args=["--max-listeners", str(max(args.listeners, 10_000)), "--admit-rate", "2000",
                             "--edge", f"http://{HOST}:{port}"])
    d = Path(tempfile.mkdtemp(prefix="amphi-front-"))
    nginx: subprocess.Popen[bytes] | None = None
    with node:
        # Varnish limits per client address: behind the front every request comes from nginx's
        spec = EdgeSpec.signed("edge1", secret, (Backend.parse("origin", node.url),),
                               max_connections_per_address=CAP if setup == "varnish-capped" else 0,
                               media_rate=0 if front else MEDIA_RATE)
        edge = Edge(spec, node.dir / "edge", HOST, varnish_port if front else port).start()
        try:
            assert edge.proc is not None
            pids = [edge.proc.pid]
            if front:
                (d / "tmp").mkdir()
                (d / "nginx.conf").write_text(front_conf(d, port, varnish_port, capped=setup == "front-capped",
                                                         listeners=args.listeners))
                nginx = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
                pids.append(nginx.pid)
            space = start_space(node.url, f"front probe {setup}", join=False)
            time.sleep(WARM_S)
            cfg = LoadConfig(server=node.url, space=space.id, protocol="amphi", player="segments",
                             duration_s=args.duration)
            r = loadtest(RunOptions(cfg=cfg, listeners=args.listeners, profile="ramp", ramp_s=RAMP_S, procs=2,
                                    server_pid=node.pid, also_pids=tuple(pids), cpus=args.generator_cpus))
        finally:
            if nginx is not None:
                kill_group(nginx)
            edge.stop()
            shutil.rmtree(d, ignore_errors=True)
    tl = r["timeline"]
    steady = window_cpu_pct(tl, RAMP_S + 2, args.duration)  # type: ignore[arg-type]
    rows = [row for row in tl if RAMP_S + 2 < row["t"] <= args.duration]  # type: ignore[index, operator]
    before = [row for row in tl if row["t"] <= RAMP_S + 2][-1]  # type: ignore[index, operator]
    req_s = (rows[-1]["requests_total"] - before["requests_total"]) / (rows[-1]["wall_s"] - before["wall_s"])
    srv = steady["server_cpu_pct"]
    return {"setup": setup, "admitted": r["admitted"], "stalled_listeners": r["stalled_listeners"],
            "errors_by_kind": r["errors_by_kind"], "join_p99_s": r["join_p99_s"],
            "latency_p50_s": r["latency_p50_s"], "req_per_s": round(req_s),
            "server_cpu_pct": srv, "server_cores_busy_pct": steady["server_cores_busy_pct"],
            "generator_cpu_pct": steady["generator_cpu_pct"],
            "server_us_per_request": round(srv / 100 / req_s * 1e6, 1) if srv and req_s else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "front_probe.json")
    args = parser.parse_args()
    setups = [s for s in args.setups.split(",") if s]
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}: choose from {', '.join(SETUPS)}")
    raise_open_files()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error("needs 2 cores: the servers on one, the generator on the other")
    os.sched_setaffinity(0, cpus[:1])  # the servers (started from here) on the first core
    args.generator_cpus = tuple(cpus[1:])
    results = []
    print(f"{'setup':<16}{'admitted':>9}{'stalled':>8}{'req/s':>7}{'server CPU %':>14}{'us/req':>8}"
          f"{'join p99 s':>11}  errors")
    for setup in setups:
        r = measure(setup, args)
        results.append(r)
        print(f"{setup:<16}{r['admitted']:>9}{r['stalled_listeners']:>8}{r['req_per_s']:>7}"
              f"{r['server_cpu_pct']:>14}{r['server_us_per_request']:>8}{r['join_p99_s']:>11}  "
              f"{r['errors_by_kind'] or 'none'}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"listeners": args.listeners, "results": results}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run(main)
