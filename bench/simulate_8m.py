"""How long ``amphi simulate`` takes for the 8-million-listener night (the shipped
``8m-test`` scenario: a 10-minute surge and an hour of listening), against the 60 s target.

    .venv/bin/python bench/simulate_8m.py [--scenario 8m-test] [--repeat 3] [--target 60] [--json OUT]

Prints the wall time of each run (the CLI's own work: building the model, the run, the
summary), the best and the simulated minutes per wall second. Exits 1 if the best run is
slower than ``--target`` seconds. The machine is shared: quote the figures with its load.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from amphi.sim.model import Simulation
from amphi.sim.report import summary
from amphi.sim.scenario import build, load_scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="8m-test")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target", type=float, default=60.0, help="seconds the best run may take")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    cfg = build(scenario)
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
    return 0 if best <= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
