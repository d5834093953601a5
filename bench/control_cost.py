"""What waiting and keeping a seat cost an API node: the first wave's clients (ticket polls,
API renewals) and today's (the line document, renewals by playlist reloads), side by side.

    .venv/bin/python bench/control_cost.py [--listeners 10000] [--seats 9000] [--duration 600] \\
        [--ramp 60] [--procs 4] [--order polls,line] [--json OUT] [--plot OUT.png]

For each protocol in turn, the same night on fresh processes: ``amphi serve --max-listeners
SEATS --edge E`` on a free 127.0.0.1 port with one live Space, one Varnish edge in front of it
(``amphi.edge.varnish.Edge``, as deployed: its fan-out renews tokens and reports the seats),
and ``amphi loadtest`` of LISTENERS arriving over RAMP (``--player segments``, the cheapest
player for the generator) into a Space with SEATS seats, so that LISTENERS - SEATS wait in
line for the whole run, as in a full Space at a launch:

* ``polls`` (``amphi loadtest --admission polls``): waiting clients poll their ticket every
  ``retry_after_s`` (1-10 s, jittered), seated ones renew through the API at 40 % of a token's
  life (a request per listener per 24 s at the default 60 s), as the first wave did;
* ``line`` (the default clients): waiting clients read the line document through the edge (one
  fetch a second reaches the node), seats are renewed by the edge's fan-out and reported to the
  node in batches, and the joins that remain (redeeming a turn) reach the node in the edge's
  batches (``polls`` runs with ``amphi edge run --no-batch-joins``, as the first wave's edge).

The node's CPU (user + system, all its threads, ``amphi.loadtest.machine.ProcessCpu``) is sampled once a second; over the
steady part (after the ramp and 10 s more, to the end) its mean is the figure, and the node's
CPU with the Space live and nobody listening, measured first for 10 s, is subtracted to give
the CPU that listening and waiting cost the node. The node's requests by route (``/metrics``)
say what it answered. The target (issue 22): the second figure at least 5x lower with the
line than with polls. Servers on the first core, the generator on the others.

Exits 1 if the ratio is below ``--target`` (5), 2 on an error. ``--small``: 300 listeners, 200
seats, 17 s a protocol (3 s of arrivals), a bar of 1 (the same checks on the answers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import httpx

from harness import HOST, NodeProcess, exit_on_sigterm, free_port, run, small_mode, split_cores, start_space

from amphi.core.files import raise_open_files
from amphi.loadtest.machine import ProcessCpu
from amphi.loadtest.run import RunOptions, run as loadtest
from amphi.loadtest.swarm import LoadConfig

OPERATOR_KEY = "control-cost-bench-operator-key"
BASELINE_S = 10.0  # the node with the Space live and nobody listening
SETTLE_S = 10.0  # after the ramp, before the steady window
WARM_S = 8.0  # the Space's age when the audience arrives (a few segments to play)
PROTOCOLS = ("polls", "line")
ROUTE = re.compile(r'^amphi_http_requests_total\{route="([^"]+)",status="(\d+)"\} ([0-9.e+]+)$', re.M)


class CpuSampler:
    """A process's CPU seconds (all threads and children), read once a second in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = ProcessCpu(pid)
        self.samples: list[tuple[float, float]] = []  # (monotonic, cpu seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cpu")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.proc.cpu_s()))  # a process gone counts nothing
            self._stop.wait(1.0)

    def share(self, start: float, end: float) -> float | None:
        """Mean CPU, % of one core, between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return 100.0 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def routes(url: str) -> dict[str, float]:
    """Requests the node has answered, by route template (every status)."""
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {OPERATOR_KEY}"}, timeout=10).text
    out: dict[str, float] = {}
    for route, _, n in ROUTE.findall(text):
        out[route] = out.get(route, 0.0) + float(n)
    return out


def one(protocol: str, args: argparse.Namespace) -> dict[str, object]:
    """One protocol's night on fresh processes."""
    from amphi.edge.varnish import Edge
    from amphi.edge.vcl import Backend, EdgeSpec

    secret = os.environ.setdefault("AMPHI_SECRET", "c" * 64)  # the node inherits it; the edge is given it
    os.environ["AMPHI_OPERATOR_KEY"] = OPERATOR_KEY
    port = free_port()
    node = NodeProcess(args=["--max-listeners", str(args.seats), "--admit-rate", "2000", "--edge", f"http://{HOST}:{port}",
                             "--trusted-proxy", "127.0.0.1/32", "--pow", "off"])  # the edge forwards the client address
    with node:
        # the first wave's edge sent each join (a poll, a renewal) on its own; today's batches them
        spec = EdgeSpec.signed("edge1", secret, (Backend.parse("origin", node.url),), batch_joins=protocol != "polls")
        edge = Edge(spec, node.dir / "edge", HOST, port).start()
        try:
            space = start_space(node.url, f"control cost, {protocol}", join=False)
            with CpuSampler(node.pid) as cpu:
                time.sleep(WARM_S)
                quiet = time.monotonic()
                time.sleep(BASELINE_S)
                idle = cpu.share(quiet, time.monotonic())
                before = routes(node.url)
                cfg = LoadConfig(server=edge.url, space=space.id, protocol="amphi", player="segments",
                                 duration_s=args.duration, admission=protocol)
                opts = RunOptions(cfg=cfg, listeners=args.listeners, profile="ramp", ramp_s=args.ramp, procs=args.procs,
                                  server_pid=node.pid, cpus=args.generator_cpus)
                started = time.monotonic()

                def progress(line: str) -> None:
                    if not args.quiet:
                        print(f"  [{protocol}] {line}", file=sys.stderr, flush=True)

                r = loadtest(opts, progress)
                steady = cpu.share(started + args.ramp + SETTLE_S, started + args.duration)
            after = routes(node.url)
        finally:
            edge.stop()
    answered = {k: round((after.get(k, 0) - before.get(k, 0)) / args.duration, 1) for k in after
                if after.get(k, 0) - before.get(k, 0) >= 1 and k.startswith("/api/")}
    return {"protocol": protocol, "node_cpu_idle_pct": _r(idle), "node_cpu_steady_pct": _r(steady),
            "node_cpu_listening_pct": _r(None if steady is None or idle is None else max(0.0, steady - idle)),
            "api_requests_per_s": answered, "admitted": r["admitted"], "waiting_max": r["waiting_max"], "failed": r["failed"], "stalled": r["stalled_listeners"],
            "line_reads": r.get("line_reads"), "renewals": r["renewals"], "playlist_renewals": r["playlist_renewals"],
            "requests": r["requests_total"], "errors": r["errors_by_kind"]}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def plot(results: list[dict[str, object]], path: str) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/control_cost.py's figure")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [str(r["protocol"]) for r in results]
    idle = [float(r["node_cpu_idle_pct"] or 0) for r in results]  # type: ignore[arg-type]
    listening = [float(r["node_cpu_listening_pct"] or 0) for r in results]  # type: ignore[arg-type]
    ax.barh(names, idle, color="#bbbbbb", label="the Space live, nobody listening")
    ax.barh(names, listening, left=idle, color="#d62728", label="listening and waiting")
    ax.set_xlabel("API node CPU, % of one core (steady part)")
    ax.set_title(f"{results[0]['admitted']} seated, {results[0]['waiting_max']} waiting: what the node pays")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--seats", type=int, default=9_000, help="the node's --max-listeners: the rest wait")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds a protocol")
    parser.add_argument("--ramp", type=float, default=60.0)
    parser.add_argument("--procs", type=int, default=4, help="generator processes")
    parser.add_argument("--order", default="polls,line")
    parser.add_argument("--target", type=float, default=5.0, help="polls' listening CPU / line's, at least")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--quiet", action="store_true")
    small_mode(parser, listeners=300, seats=200, duration=17.0, ramp=3.0, procs=1, target=1.0)
    args = parser.parse_args()
    order = [p.strip() for p in args.order.split(",") if p.strip()]
    if not order or set(order) - set(PROTOCOLS) or args.seats >= args.listeners or args.ramp + SETTLE_S >= args.duration:
        parser.error("--order is polls and/or line; --seats below --listeners; --ramp + 10 s within --duration")
    exit_on_sigterm()
    raise_open_files()
    args.generator_cpus = split_cores()
    print(f"control cost: {args.listeners} listeners, {args.seats} seats, {args.duration:g} s a protocol "
          f"({' then '.join(order)}), generator on CPU {','.join(map(str, args.generator_cpus)) or 'all'}", flush=True)
    results = []
    for protocol in order:
        print(f"== {protocol}", flush=True)
        r = one(protocol, args)
        results.append(r)
        print(f"   node CPU: {r['node_cpu_steady_pct']} % steady, {r['node_cpu_idle_pct']} % idle -> "
              f"{r['node_cpu_listening_pct']} % for listening and waiting", flush=True)
        print(f"   seated {r['admitted']}, waiting {r['waiting_max']}, failed {r['failed']}, stalled {r['stalled']}; "
              f"node requests/s {r['api_requests_per_s']}", flush=True)
        print(f"   client: line reads {r['line_reads']}, API renewals {r['renewals']}, playlist renewals "
              f"{r['playlist_renewals']}, errors {r['errors']}", flush=True)
    print()
    print(f"{'protocol':<8} {'node CPU %':>10} {'idle %':>8} {'listening %':>12} {'seated':>7} {'waiting':>8}")
    for r in results:
        print(f"{r['protocol']:<8} {_fmt(r['node_cpu_steady_pct']):>10} {_fmt(r['node_cpu_idle_pct']):>8} "
              f"{_fmt(r['node_cpu_listening_pct']):>12} {r['admitted']!s:>7} {r['waiting_max']!s:>8}")
    by = {str(r["protocol"]): r for r in results}
    ok = True
    if "polls" in by and "line" in by:
        old, new = by["polls"]["node_cpu_listening_pct"], by["line"]["node_cpu_listening_pct"]
        ratio = (float(old) / max(float(new), 0.1)) if old is not None and new is not None else None  # type: ignore[arg-type]
        ok = ratio is not None and ratio >= args.target
        print(f"\nlistening and waiting cost the node {_fmt(old)} % of a core with polls, {_fmt(new)} % with the line: "
              f"{_fmt(ratio)}x lower (target >= {args.target:g}x): {'met' if ok else 'MISSED'}")
    for r in results:
        if not r["admitted"] or r["failed"]:
            print(f"FAIL: {r['protocol']}: {r['admitted']} seated, {r['failed']} failed")
            ok = False
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0 if ok else 1


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    run(main)
