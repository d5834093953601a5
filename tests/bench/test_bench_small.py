"""Every benchmark in its small mode, as a subprocess, the way a person runs it
(``python bench/X.py --small``): it must exit 0 and print its key figures, and the figures
must be sane. A bench whose path breaks (a route renamed, a field gone, nobody seated, a
crash) fails here instead of rotting until someone runs it for minutes.

Those marked ``slow`` (20-45 s each: they start Varnish, nginx or Icecast2 and a load
generator, and wait for a Space to be a few seconds old) run too; ``-m "not slow"`` leaves
them out for a quick pass (about 2 minutes for the rest).

Real components throughout: each bench starts its own ``amphi serve``, and those that need
them Redis, Varnish, nginx, Icecast2, wrk and aiortc clients, as installed by ``make setup``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH_TIMEOUT_S = 150  # a small run takes 2-40 s; this only bounds a hung one


def run_small(name: str, *extra: str) -> str:
    """``bench/<name>.py --small``: its output, after asserting it exited 0."""
    env = dict(os.environ)
    # the bench and every ``amphi`` it starts import this tree's code
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("AMPHI_BENCH_SMALL", None)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--small", *extra], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=BENCH_TIMEOUT_S)
    assert proc.returncode == 0, f"bench/{name}.py --small exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def number(pattern: str, text: str) -> float:
    """The first group of ``pattern`` in ``text`` as a number (thousands separators allowed)."""
    m = re.search(pattern, text, re.MULTILINE)
    assert m is not None, f"no match for {pattern!r} in:\n{text[-4000:]}"
    return float(m.group(1).replace(",", ""))


def test_surge() -> None:
    out = run_small("surge")
    assert "from 600 client addresses" in out
    admitted = number(r"^  admitted \(200\)\s+(\d+)", out)
    waiting = number(r"^  waiting \(202\)\s+(\d+)", out)
    assert admitted + waiting == 600  # every first answer a seat or a place in line: no challenge
    assert number(r"^  other answers .*?(\d+)$", out) == 0
    assert 0 < number(r"^  listeners holding a seat at the end\s+(\d+)", out) <= 100
    assert 0 < number(r"join answer time \(send -> answer\)\s+\d+\s+([\d.]+)", out) < 1.0  # p50
    assert "PASS: every check met" in out


def test_surge_from_one_address_is_challenged() -> None:
    """The contrast that keeps the fix honest: from one address the defense challenges the
    surge (the bench fails, exit 1), which is why the bench spreads its addresses."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "surge.py"), "--small", "--addresses", "1"], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=BENCH_TIMEOUT_S)
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert number(r"^  other answers .*?(\d+)$", proc.stdout) > 500  # 600 joins, a handful let through before
    assert "MISS every first answer admitted or waiting" in proc.stdout


def test_join_rate() -> None:
    out = run_small("join_rate")
    row = r"\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(\d+)"  # requests, decisions, seconds, CPU s, per CPU s
    assert number(r"one join a request, alone" + row, out) > 500  # decisions in 2 s
    assert number(r"one join a request, alone\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+(\d+)", out) >= 1000  # per core-second
    batched = number(r"an edge's batches of 50 \(POST /api/edge/joins\)\s+\d+\s+(\d+)", out)
    assert batched > 1000  # decisions in 2 s, 50 a request
    assert number(r"in process \(Admission.join\)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(?:\d+)", out) > 1000
    assert number(r"in process \(Admission.join\)\s+\d+\s+[\d.]+\s+[\d.]+\s+(\d+)", out) >= 10_000
    assert number(r"node's waiting count \d+ -> (\d+)", out) > 500
    assert "MISS" not in out.split("checks", 1)[1]  # each decision a place in line, every answer 2xx
    assert out.rstrip().splitlines()[-1].startswith("PASS")


def test_request_cost() -> None:
    out = run_small("request_cost")
    for path in ("join", "media"):  # CPU microseconds per request through the whole ASGI app
        assert 0 < number(rf"^{path}\s+([\d,.]+)\s+\(CPU us per request\)", out) < 10_000


def test_pipeline_cpu() -> None:
    out = run_small("pipeline_cpu")
    with_speaker = number(r"PASS: one Space with a speaker uses ([\d.]+) % of one core", out)
    assert 0 < with_speaker <= 50


def test_glass_to_glass() -> None:
    out = run_small("glass_to_glass")  # the stream player: one streamed GET per segment
    p50 = number(r"PASS: p50 ([\d.]+) s", out)
    assert 0.05 < p50 <= 3.0  # a part is 0.512 s: anything under 50 ms would be a measuring error
    assert number(r"^listener: (\d+) parts", out) >= 10 and number(r", (\d+) gaps", out) == 0


def test_mouth_to_ear() -> None:
    out = run_small("mouth_to_ear")
    p50 = number(r"PASS: p50 ([\d.]+) s", out)
    assert 0.02 < p50 <= 1.0


def test_stage_cpu() -> None:
    out = run_small("stage_cpu")
    assert number(r"stage at the end of the window: (\d+)/3 connected", out) == 3
    assert 0 < number(r"PASS: the node uses ([\d.]+) % of one core with 3 on stage", out) <= 100
    assert number(r"listener: (\d+) parts", out) > 0


def test_sound() -> None:
    """The guard's sound offline: the small run's figures are sane (the targets themselves are
    judged by the full run, ``python bench/sound.py``)."""
    out = run_small("sound")
    level_row = r"^  en\s+{}\s+[\d.]+%\s+[-\d.]+\s+[-\d.]+\s+([-+][\d.]+)"  # voice, input dBFS -> error LU
    assert abs(number(level_row.format(-30), out)) <= 2.0  # a -30 dBFS speaker at the target
    assert number(level_row.format(-40), out) > -6.0  # lifted (the input is 20 LU or more under the target)
    assert number(r"dBFS\), ([-\d.]+) dBTP before the encoder", out) <= -1.0  # the limiter holds the program
    assert number(r"^  digital silence .*output peak ([-\d.e+]+)", out) == 0
    assert number(r"^  -65 dBFS noise alone\s+[-\d.]+\s+[-\d.]+\s+([-+][\d.]+)", out) <= 1.0  # dB lifted
    assert number(r"loops: detected (\d+), missed", out) > 0
    assert number(r"time to detect median ([\d.]+) s", out) <= 1.0
    assert number(r"lag error max (\d+) ms", out) <= 25
    for case in ("two voices at once", r"tone 440 Hz vs tone 466\.2 Hz", r"tone 440 Hz vs tone 440 Hz",
                 r"stage_cpu's 13 tones: 220 Hz vs the other 12"):
        assert number(rf"^  {case}\s+\d+ x\s+\d+\s+\d+\s+(\d+)", out) == 0  # alarms
    assert re.search(r"^\s+1000 Hz\s+\d", out, re.MULTILINE)  # a 1 kHz howl found
    assert "PASS: every target met" in out or "small: the path works" in out


def test_cluster_join() -> None:
    out = run_small("cluster_join")
    for run in ("embedded", r"redis, 1 node", r"redis, 2 nodes"):
        assert number(rf"^{run}\s+(\d+) joins/s", out) > 0
        assert number(rf"^{run} .*listeners (\d+)/10", out) == 10
        assert number(rf"^{run} .*max error ([\d.]+) %", out) <= 1.0
    assert "PASS" in out


def test_simulate_8m() -> None:
    out = run_small("simulate_8m")
    assert "80,000 listeners" in out
    assert number(r"best ([\d.]+) s,", out) < 60
    assert "PASS" in out


@pytest.mark.slow
def test_defense_flood() -> None:
    out = run_small("defense")
    assert number(r"admitted (\d+), failed", out) == 60
    assert number(r"stalled (\d+), join p99", out) == 0
    assert number(r"join flood: sent (\d+)", out) > 0
    assert number(r"join flood: sent \d+, refused \d+ \{.*'challenge_required': (\d+)", out) > 0  # suspects challenged
    assert number(r"bad tokens: sent (\d+)", out) > 0
    assert number(r"bad tokens: sent \d+, refused \d+, accepted (\d+)", out) == 0
    assert "MISSED" not in out


@pytest.mark.slow
def test_edge_engine_choice() -> None:
    out = run_small("edge")
    assert re.search(r"^direct\s+[\d.]+", out, re.MULTILINE)
    direct_p99 = number(r"^direct\s+[\d.]+\s+[\d.]+\s+([\d.]+)", out)
    # added p99, to within a quantile's resolution: one 5 % histogram bucket (amphi.loadtest.stats)
    assert number(r"^varnish\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(-?[\d.]+)", out) <= 0.1 + 0.05 * direct_p99
    assert "targets met" in out


@pytest.mark.slow
def test_front_probe() -> None:
    out = run_small("front_probe")
    assert number(r"^edge\s+(\d+)", out) == 100  # seated
    assert number(r"^edge\s+\d+\s+\d+\s+(\d+)", out) > 0  # requests a second
    assert "PASS" in out


@pytest.mark.slow
def test_side_by_side(tmp_path: Path) -> None:
    out = run_small("side_by_side", "--md", str(tmp_path / "b.md"), "--json", str(tmp_path / "b.json"), "--plot", "")
    assert "PASS" in out
    runs = re.findall(r"^   stalled (\d+), failed (\d+), join p99", out, re.MULTILINE)
    assert len(runs) == 2 and all(failed == "0" for _, failed in runs), out[-3000:]  # Amphi, Icecast2
    assert "Icecast" in (tmp_path / "b.md").read_text()
    # Amphi's row is the stream player (issue 18): near the live edge, its requests counted per listener
    assert 0.2 < number(r"^   latency p50 ([\d.]+) s", out) < 3.0
    assert number(r"requests per listener per second ([\d.]+)", out) > 0


@pytest.mark.slow
def test_control_cost() -> None:
    out = run_small("control_cost")
    for protocol in ("polls", "line"):
        assert number(rf"^{protocol}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)", out) == 200  # seated: every seat
        assert number(rf"^{protocol}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+\s+(\d+)", out) >= 90  # the rest waited
    assert number(r"client: line reads (\d+)", out.split("== line")[1]) > 0  # the line's clients read it
    assert "'/api/spaces/{id}/line'" in out.split("== line")[1]
    assert "cost the node" in out


@pytest.mark.slow
def test_calibrate() -> None:
    out = run_small("calibrate")
    assert number(r"^seated\s+(\d+)", out) == 300  # every seat, in the real run
    assert number(r"^waiting peak\s+(\d+)", out) >= 100
    assert number(r"line reads (\d+)", out) > 0  # the real waiters read the line document through the edge
    assert "PASS: within 10% on every figure" in out
