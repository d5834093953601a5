"""Observability against a real ``amphi serve``: /metrics while ``amphi loadtest`` runs, the
JSON log of a Space's whole lifecycle, and ``amphi report`` on the finished Space."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import matplotlib.image
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.amphi_proc import BIN, free_port, stop_group, wait_until
from tests.loadtest.test_against_server import finish, live_space, loadtest

KEY = "operator-key-for-tests"
PART_ROUTE = "/media/{id}/t/{token}/{msn}.{part}.m4s"
JOIN_ROUTE = "/api/spaces/{id}/join"


def scrape(server, key: str = KEY) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed by Prometheus' own text parser: {(name, labels): value}."""
    r = server.http.get("/metrics", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_operator_only_and_move_while_a_loadtest_runs(serve, tmp_path: Path) -> None:
    server = serve("--operator-key", KEY)
    assert server.http.get("/metrics").status_code == 401
    assert server.http.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    space = live_space(server)
    before = scrape(server)
    assert value(before, "amphi_space_listeners", space=space) == 0
    assert value(before, "amphi_space_state", space=space, state="live") == 1
    out = tmp_path / "r.json"
    proc = loadtest(server, space, out, "--listeners", "150", "--duration", "8", "--ramp", "2")
    during = wait_until(lambda: (m := scrape(server)) and value(m, "amphi_space_listeners", space=space) >= 100 and m,
                        30, "the listeners gauge to rise past 100")
    assert value(during, "amphi_listeners") >= 100
    r = finish(proc, out)
    assert r["admitted"] == 150 and r["failed"] == 0
    after = scrape(server)
    assert value(after, "amphi_joins_total", space=space, outcome="admitted") == 150 + 1  # and the host's own
    assert value(after, "amphi_joins_total", space=space, outcome="renewed") >= 0
    assert value(after, "amphi_space_admitted_total", space=space) == 150
    assert value(after, "amphi_space_peak_listeners", space=space) == 150
    parts = value(after, "amphi_http_requests_total", route=PART_ROUTE, status="200")
    assert parts - value(before, "amphi_http_requests_total", route=PART_ROUTE, status="200") > 150 * 4
    joins = value(after, "amphi_http_requests_total", route=JOIN_ROUTE, status="200")
    assert joins - value(before, "amphi_http_requests_total", route=JOIN_ROUTE, status="200") >= 150
    assert value(after, "amphi_http_response_start_seconds_count", route=PART_ROUTE) >= parts
    # route labels are templates: no raw path (with a Space id or a token) ever becomes a label
    assert not [k for k in after if any(space in v for _, v in k[1])
                and k[0].startswith("amphi_http")], "a raw path leaked into a label"
    assert 0 <= value(after, "amphi_segment_production_lag_seconds", space=space) < 2.0
    assert value(after, "amphi_recording_bytes_total", space=space) > value(before, "amphi_recording_bytes_total", space=space)
    assert value(after, "process_resident_memory_bytes") > 10e6 and value(after, "process_cpu_seconds_total") > 0


def test_json_logs_one_line_per_state_change_and_the_report(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    err, out = tmp_path / "stderr.log", tmp_path / "stdout.log"
    with open(err, "wb") as e, open(out, "wb") as o:
        proc = subprocess.Popen([str(BIN), "serve", "--port", str(port), "--data-dir", str(data), "--log-format",
                                 "json", "--node-id", "node-a", "--max-listeners", "3"],
                                stdout=o, stderr=e, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        def up() -> bool:
            assert proc.poll() is None, err.read_text()
            try:
                return http.get("/api/node", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, "amphi serve to answer")
        operator = {"authorization": f"Bearer {(data / 'operator_key').read_text().strip()}"}  # docs/keys.md
        space, key = (r := http.post("/api/spaces", json={"title": "Logged"}, headers=operator).json())["id"], r["host_key"]
        auth = {"authorization": f"Bearer {key}"}
        assert http.post(f"/api/spaces/{space}/start", headers=auth).status_code == 200
        answers = [http.post(f"/api/spaces/{space}/join", json={}).status_code for _ in range(5)]
        assert answers.count(200) == 3 and answers.count(202) == 2  # 3 seats, the rest wait
        for _ in range(40):  # traffic that must not be logged
            assert http.get(f"/api/spaces/{space}").status_code == 200
        assert http.post("/api/spaces/nope/join", json={}).status_code == 404
        wait_until(lambda: (data / "spaces" / space / "timeline.jsonl").read_text().count('"sample"') >= 2, 10,
                   "two samples in the Space's timeline")
        assert http.post(f"/api/spaces/{space}/end", headers=auth).status_code == 200
    finally:
        http.close()
        stop_group(proc, 15)

    lines = [json.loads(line) for line in err.read_text().splitlines()]  # every line is JSON
    assert lines and all(line["node_id"] == "node-a" and line["ts"] and line["msg"] for line in lines)
    changes = [line for line in lines if line.get("event") == "space"]
    assert [(c["old"], c["new"]) for c in changes] == [(None, "scheduled"), ("scheduled", "live"), ("live", "ended")]
    assert all(c["space_id"] == space for c in changes)
    assert changes[2]["reason"] == "host"
    assert changes[1].get("request_id")  # the host's start request, as it was handled
    assert not [line for line in lines if "/join" in line["msg"] or f"/api/spaces/{space}" in line["msg"]]
    assert len(lines) < 25, [line["msg"] for line in lines]  # state changes, not 46 requests

    html_path, png_path = tmp_path / "report" / "report.html", tmp_path / "report" / "report.png"
    run = subprocess.run([str(BIN), "report", space, "--data-dir", str(data), "--out", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    page = html_path.read_text()
    for text in (f"space {space} created (scheduled)", f"space {space} scheduled -&gt; live",
                 f"space {space} live -&gt; ended (host)", "Logged", "admitted 3, waiting 2",
                 "data:image/png;base64,"):
        assert text in page, text
    image = matplotlib.image.imread(png_path)
    assert image.shape[:2] == (1100, 1200) and image.std() > 0.05
    missing = subprocess.run([str(BIN), "report", "nope", "--data-dir", str(data)], capture_output=True, text=True)
    assert missing.returncode == 1 and "no Space 'nope'" in missing.stderr
