"""The probe behind the edge's front (docs/edge.md): what a request costs through Varnish
alone, through the edge as built, and through an nginx cache with nothing else to do.

    .venv/bin/python bench/front_probe.py [--listeners 10000] [--setups varnish,edge,front] \\
        [--duration 40] [--ramp 10] [--warm 12] [--small] [--json bench/out/front_probe.json]

The same audience (``amphi loadtest``, segment players, ``--listeners`` over a 10 s ramp) plays
from one node through each setup in turn; servers on CPU 0, the generator on CPU 1, as in
``bench/side_by_side.py``. Server CPU is the node's plus everything in front of it, over the
steady part (CPU spent over wall time, ``window_means``).

* ``varnish``: Varnish alone on the port (``--max-connections-per-address 0``): every request
  handed from Varnish's waiter thread to a worker.
* ``edge``: the edge as built and deployed (as root): the kernel's firewall capping connections
  per address (``edge/firewall.py``), nginx's http server answering segment players from its
  cache once ``front.js`` has checked their tokens, Varnish behind it.
* ``edge-nginx``: the same with the cap in nginx's stream module (``--connection-cap nginx``, what
  an edge that may not set firewall rules does): one more hop a request.
* ``front``: the floor: an nginx http cache in front of Varnish with no connection cap (nginx's
  http ``limit_conn`` counts only connections with a request in progress, so it cannot cap
  idle ones) and no token check (Varnish checks only what nginx does not answer itself). Not
  deployable: against ``edge`` it shows what the token check costs.

Exits 1 if a setup did not seat every listener (a broken path, not a figure), 2 on an error.
``--small``: 100 listeners through the edge as built, a 2 s ramp, 8 s in all on a Space 5 s
old (about 20 s); the JSON goes to the temporary directory.

Before the edge had its front, this probe measured the edge as deployed then (stream cap straight
to Varnish) at 84.0 % of a core for 10,000 listeners, Varnish alone at 74.9 %, the same nginx
cache behind the cap (no token check) at 46.0 % and the floor at 31.9 % (docs/benchmarks.md).
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
from harness import HOST, NodeProcess, free_port, kill_group, run, small_mode, split_cores, start_space  # noqa: E402

from amphi.edge.varnish import Edge  # noqa: E402
from amphi.edge.vcl import Backend, EdgeSpec  # noqa: E402
from amphi.core.files import raise_open_files  # noqa: E402
from amphi.loadtest.run import RunOptions, run as loadtest, window_means  # noqa: E402
from amphi.loadtest.swarm import LoadConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("varnish", "edge", "edge-nginx", "front")
WARM_S = 12.0  # as in side_by_side: a segment player starts three segments behind live
RAMP_S = 10.0
CAP = 256  # EdgeSpec's default connections per address
MEDIA_RATE = 200  # EdgeSpec's default media requests per address per second


def front_conf(d: Path, port: int, varnish: int) -> str:
    """nginx: an http cache for segment players in front of Varnish on ``varnish``, nothing else."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 19000; }}
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
    listen {HOST}:{port} backlog=16384;
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
      proxy_cache_lock_timeout 10s;
      proxy_cache_lock_age 10s;
      proxy_ignore_headers Cache-Control Expires;
      proxy_cache_valid 200 10s;
      proxy_pass http://varnish;
    }}
    location / {{ proxy_pass http://varnish; }}
  }}
}}
"""


def measure(setup: str, args: argparse.Namespace) -> dict[str, object]:
    secret = os.environ.setdefault("AMPHI_SECRET", "s" * 64)
    port, varnish_port = free_port(), free_port()
    front = setup == "front"
    node = NodeProcess(args=["--max-listeners", str(max(args.listeners, 10_000)), "--admit-rate", "2000",
                             "--edge", f"http://{HOST}:{port}"])
    d = Path(tempfile.mkdtemp(prefix="amphi-front-"))
    nginx: subprocess.Popen[bytes] | None = None
    with node:
        # Varnish limits per client address: behind the front every request comes from nginx's
        spec = EdgeSpec.signed("edge1", secret, (Backend.parse("origin", node.url),),
                               max_connections_per_address=CAP if setup.startswith("edge") else 0,
                               connection_cap="nginx" if setup == "edge-nginx" else "auto",
                               media_rate=0 if front else MEDIA_RATE)
        edge = Edge(spec, node.dir / "edge", HOST, varnish_port if front else port).start()
        try:
            assert edge.proc is not None
            capped_by = edge.capped_by
            pids = [edge.proc.pid]
            if front:
                (d / "tmp").mkdir()
                (d / "nginx.conf").write_text(front_conf(d, port, varnish_port))
                nginx = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
                pids.append(nginx.pid)
            space = start_space(node.url, f"front probe {setup}", join=False)
            time.sleep(args.warm)
            cfg = LoadConfig(server=node.url, space=space.id, protocol="amphi", player="segments",
                             duration_s=args.duration)
            r = loadtest(RunOptions(cfg=cfg, listeners=args.listeners, profile="ramp", ramp_s=args.ramp, procs=2,
                                    server_pid=node.pid, also_pids=tuple(pids), cpus=args.generator_cpus))
        finally:
            if nginx is not None:
                kill_group(nginx)
            edge.stop()
            shutil.rmtree(d, ignore_errors=True)
    steady = window_means(r["timeline"], args.ramp + 2, args.duration)  # type: ignore[arg-type]
    srv, req_s = steady["server_cpu_pct"], steady["request_rate"]
    return {"setup": setup, "capped_by": capped_by, "admitted": r["admitted"], "stalled_listeners": r["stalled_listeners"],
            "errors_by_kind": r["errors_by_kind"], "join_p99_s": r["join_p99_s"],
            "latency_p50_s": r["latency_p50_s"], "req_per_s": round(req_s) if req_s else None,
            "server_cpu_pct": srv, "server_cores_busy_pct": steady["server_cores_busy_pct"],
            "generator_cpu_pct": steady["generator_cpu_pct"],
            "server_us_per_request": round(srv / 100 / req_s * 1e6, 1) if srv and req_s else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--ramp", type=float, default=RAMP_S, help="seconds over which the listeners arrive")
    parser.add_argument("--warm", type=float, default=WARM_S, help="the Space's age when the listeners arrive")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "front_probe.json")
    small_mode(parser, listeners=100, setups="edge", duration=8.0, ramp=2.0, warm=5.0,
               json=Path(tempfile.gettempdir()) / "front_probe_small.json")
    args = parser.parse_args()
    setups = [s for s in args.setups.split(",") if s]
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}: choose from {', '.join(SETUPS)}")
    raise_open_files()
    args.generator_cpus = split_cores()  # the servers (started from here) on the first core
    if not args.generator_cpus:
        parser.error("needs 2 cores: the servers on one, the generator on the other")
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
    short = [f"{r['setup']} seated {r['admitted']} of {args.listeners}" for r in results
             if r["admitted"] != args.listeners]
    print("FAIL: " + "; ".join(short) if short else f"PASS: every setup seated all {args.listeners} listeners")
    return 1 if short else 0


if __name__ == "__main__":
    run(main)
