"""The simulator against a real surge behind an edge, with today's protocol (the line
document, renewals by the edge): a real run and its simulation side by side.

    .venv/bin/python bench/calibrate.py [--listeners 10000] [--seats 6000] [--rate 500] \\
        [--max-waiting 2000] [--window 5] [--duration 60] [--procs 4] [--no-batch-joins] [--json OUT] \\
        [--real-json OUT | --from-real FILE]

``amphi serve --max-listeners SEATS --admit-rate RATE --max-waiting MAX_WAITING`` on a free
127.0.0.1 port with one live Space, behind one Varnish edge (``amphi.edge.varnish.Edge``), and
``amphi loadtest`` of LISTENERS arriving within WINDOW seconds (``--profile surge``), through
the edge (joins, the line document and media alike). The Space is full from the start: the
burst is seated at once, MAX_WAITING wait and read the line document, everyone else gets 503
and comes back after Retry-After, and the line moves at RATE until the seats are gone.

Then ``amphi simulate --calibrate`` of that run's JSON, with one edge (the run's: waiting
clients read the line there, not at the node), and the three figures the issue names are
compared: seated, the waiting peak and the join p99 (arrival -> first answer, admitted or
waiting). Exits 1 if any differs by more than ``--tolerance`` (10 %), 2 on an error.
``--small``: 600 listeners, 300 seats, rate 40, 150 in line, 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from harness import HOST, NodeProcess, exit_on_sigterm, free_port, run, small_mode, split_cores, start_space

from amphi.cli import main as amphi_main
from amphi.core.files import raise_open_files
from amphi.loadtest.report import write_json
from amphi.loadtest.run import RunOptions, run as loadtest
from amphi.loadtest.swarm import LoadConfig

FIGURES = (("seated", "admitted", "admitted"), ("waiting peak", "waiting_max", "waiting_max"),
           ("join p99 (s)", "join_p99_s", "join_p99_s"))


def real_run(args: argparse.Namespace, out: Path) -> dict[str, object]:
    from amphi.edge.varnish import Edge
    from amphi.edge.vcl import Backend, EdgeSpec

    secret = os.environ.setdefault("AMPHI_SECRET", "k" * 64)
    port = free_port()
    node = NodeProcess(args=["--max-listeners", str(args.seats), "--admit-rate", str(args.rate),
                             "--max-waiting", str(args.max_waiting), "--edge", f"http://{HOST}:{port}",
                             "--trusted-proxy", "127.0.0.1/32", "--pow", "off"])  # the edge forwards the client address
    with node:
        spec = EdgeSpec.signed("edge1", secret, (Backend.parse("origin", node.url),), batch_joins=args.batch_joins)
        edge = Edge(spec, node.dir / "edge", HOST, port).start()
        try:
            space = start_space(node.url, "calibration", join=False)
            cfg = LoadConfig(server=edge.url, space=space.id, protocol="amphi", player="segments",
                             duration_s=args.duration)
            opts = RunOptions(cfg=cfg, listeners=args.listeners, profile="surge", ramp_s=args.window, procs=args.procs,
                              server_pid=node.pid, cpus=args.generator_cpus)

            def progress(line: str) -> None:
                if not args.quiet:
                    print(f"  [real] {line}", file=sys.stderr, flush=True)

            result = loadtest(opts, progress)
        finally:
            edge.stop()
    write_json(result, str(out))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--seats", type=int, default=6_000)
    parser.add_argument("--rate", type=float, default=500.0, help="the node's --admit-rate")
    parser.add_argument("--max-waiting", type=int, default=2_000)
    parser.add_argument("--window", type=float, default=5.0, help="everyone arrives within this (s)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--real-json", metavar="OUT", help="keep the real run's amphi loadtest JSON here")
    parser.add_argument("--from-real", metavar="FILE",
                        help="simulate a real run kept with --real-json instead of running one (to work on the model)")
    parser.add_argument("--no-batch-joins", dest="batch_joins", action="store_false",
                        help="the edge sends each join on its own (amphi edge run --no-batch-joins)")
    small_mode(parser, listeners=600, seats=300, rate=40.0, max_waiting=150, window=0.5, duration=20.0, procs=2)
    args = parser.parse_args()
    exit_on_sigterm()
    raise_open_files()
    args.generator_cpus = split_cores()
    print(f"calibration: {args.listeners} listeners within {args.window:g} s through one edge into {args.seats} "
          f"seats at {args.rate:g}/s, {args.max_waiting} in line at most, {args.duration:g} s; joins "
          f"{'in batches' if args.batch_joins else 'each on its own'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out, sim_out = Path(args.real_json or Path(tmp) / "real.json"), Path(tmp) / "sim.json"
        if args.from_real:
            out = Path(args.from_real)
            real = json.loads(out.read_text())
            print(f"the real run: {out} (not run again)", flush=True)
        else:
            real = real_run(args, out)
        result = CliRunner().invoke(amphi_main, ["simulate", "--calibrate", str(out), "--edges", "1", "--json",
                                                 str(sim_out), "--quiet"])
        if result.exit_code != 0:
            raise RuntimeError(f"amphi simulate --calibrate failed: {result.output}")
        sim = json.loads(sim_out.read_text())
    print(f"\nreal: {real['requests_total']} requests, line reads {real.get('line_reads')}, "
          f"errors {real['errors_by_kind']}, node CPU per request {real.get('server_cpu_per_request_s')} s")
    print(f"{'figure':<14} {'real':>10} {'simulated':>10} {'difference':>11}")
    ok = True
    rows = []
    for name, key_real, key_sim in FIGURES:
        a, b = real.get(key_real), sim.get(key_sim)
        diff = None if not a or b is None else (float(b) - float(a)) / float(a)  # type: ignore[arg-type]
        good = diff is not None and abs(diff) <= args.tolerance
        ok &= good
        rows.append({"figure": name, "real": a, "simulated": b, "difference": diff})
        print(f"{name:<14} {a!s:>10} {b!s:>10} {'-' if diff is None else f'{diff:+.1%}':>11}"
              f"  {'ok' if good else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "settings": vars(args) | {"generator_cpus": None}},
                                              indent=1, default=str))
        print(f"wrote {args.json}")
    print(f"{'PASS' if ok else 'FAIL'}: within {args.tolerance:.0%} on every figure" if ok
          else f"FAIL: a figure differs by more than {args.tolerance:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main)
