"""The simulator against reality: a small real surge (``amphi serve`` + ``amphi loadtest``)
and its simulation, calibrated from the run's own JSON, agree within 10 % on the admitted
count, the waiting peak and the join answer p99 (arrival -> first answer, admitted or
waiting, as the loadtest measures it)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from amphi.cli import main
from tests.loadtest.test_against_server import finish, live_space, loadtest

LISTENERS, SEATS, RATE, LINE = 500, 300, 40, 150


def test_simulation_predicts_a_real_surge(serve, tmp_path: Path) -> None:
    # 500 arrive within half a second: the burst (100) is seated at once, 150 wait in line,
    # the rest get 503 and come back after Retry-After (8-13 s); the line moves at 40/s until
    # the 300 seats are gone; nobody leaves, so the last comers wait or are refused again
    server = serve("--max-listeners", str(SEATS), "--admit-rate", str(RATE), "--max-waiting", str(LINE))
    space = live_space(server)
    out = tmp_path / "real.json"
    real = finish(loadtest(server, space, out, "--listeners", str(LISTENERS), "--profile", "surge", "--ramp", "0.5",
                           "--duration", "18", "--procs", "2"), out, timeout=90)
    assert real["server_admission"]["max_waiting"] == LINE and real["server_cpu_per_request_s"] > 0
    assert real["errors_by_kind"].get("http_503", 0) > 0  # the scenario did refuse some

    sim_out = tmp_path / "sim.json"
    result = CliRunner().invoke(main, ["simulate", "--calibrate", str(out), "--json", str(sim_out), "--quiet"])
    assert result.exit_code == 0, result.output
    sim = json.loads(sim_out.read_text())
    assert sim["scale"] == 1 and sim["listeners"] == LISTENERS

    def close(key_real: str, key_sim: str) -> None:
        a, b = real[key_real], sim[key_sim]
        assert abs(b - a) <= 0.1 * a, f"{key_real}: real {a}, simulated {b}"

    close("admitted", "admitted")
    close("waiting_max", "waiting_max")
    close("join_p99_s", "join_p99_s")
