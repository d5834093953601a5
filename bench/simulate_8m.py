"""How long ``amphi simulate`` takes for the 8-million-listener night (the shipped
``8m-test`` scenario: a 10-minute surge and an hour of listening), against the 60 s target.

    .venv/bin/python bench/simulate_8m.py [--scenario 8m-test] [--repeat 3] [--target 60] [--scale 1] \\
        [--small] [--json OUT]

Prints the wall time of each run (the CLI's own work: building the model, the run, the
summary), the best and the simulated minutes per wall second. Exits 1 if the best run is
slower than ``--target`` seconds, or if the night it simulates seats nobody. The machine is
shared: quote the figures with its load. ``--scale S`` divides the audience, the seats, the
edges and the API nodes by S (the same night, smaller); ``--small``: ``--scale 100`` (80,000
listeners), one run, the same bar.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import small_mode  # noqa: E402

from amphi.sim.model import Simulation  # noqa: E402
from amphi.sim.report import summary  # noqa: E402
from amphi.sim.scenario import build, load_scenario  # noqa: E402

SCALED = ("listeners", "max_listeners", "edges", "api_nodes")  # divided by --scale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="8m-test")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target", type=float, default=60.0, help="seconds the best run may take")
    ap.add_argument("--scale", type=float, default=1.0, help="divide the audience, seats, edges and API nodes by this")
    ap.add_argument("--json", default=None)
    small_mode(ap, repeat=1, scale=100.0)
    args = ap.parse_args()
    if args.scale < 1 or args.repeat < 1:
        ap.error("--scale and --repeat must be at least 1")
    scenario = load_scenario(args.scenario)
    smaller = {k: max(1, math.ceil(scenario[k] / args.scale)) for k in SCALED if k in scenario}
    cfg = build(scenario, smaller)
    times, result = [], None
    for i in range(args.repeat):
        load = os.getloadavg()[0]
        t = time.perf_counter()
        result = Simulation(cfg).run()
        times.append(time.perf_counter() - t)
        print(f"run {i + 1}: {times[-1]:.2f} s wall (load average {load:.1f} on {os.cpu_count()} cores)")
    assert result is not None
    best = min(times)
    print(summary(result, scenario["about"].get("title")))
    print(f"{cfg.listeners:,} listeners, {cfg.horizon_s / 60:.0f} simulated minutes: best {best:.2f} s, "
          f"{cfg.horizon_s / 60 / best:.0f} simulated minutes per wall second (target {args.target:g} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenario": args.scenario, "wall_s": times, "best_s": best, "target_s": args.target}, f)
    if not result.get("admitted"):
        print("FAIL: the simulated night seated nobody")
        return 1
    print(f"{'PASS' if best <= args.target else 'FAIL'}: best {best:.2f} s {'<=' if best <= args.target else '>'} "
          f"{args.target:g} s")
    return 0 if best <= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
