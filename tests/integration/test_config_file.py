"""``amphi serve --config FILE`` as a real process (docs/config.md): settings from the file, an
AMPHI_* variable over the file, a flag over both, and the node runs with what they say (its
port, /api/node's admission settings, the live playlist's target duration); ``amphi config
show`` prints the same; a bad file stops serve with one line and no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import httpx

from tests.integration.amphi_proc import BIN, free_port, stop_group, wait_until


def test_serve_runs_with_file_environment_and_flags(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "amphi.toml"
    conf.write_text(f"""
demo = true
node_id = "from-file"

[http]
port = {port}

[admission]
max_listeners = 37  # the environment says 41
admit_burst = 7

[media]
parts_per_segment = 9  # the flag says 3

[defense]
pow_mode = "off"
""")
    env = {**os.environ, "AMPHI_ADMISSION_MAX_LISTENERS": "41", "AMPHI_DATA_DIR": str(tmp_path / "data"),
           "AMPHI_OPERATOR_KEY": "config-file-test-key"}
    flags = ["--config", str(conf), "--segment-parts", "3"]

    shown = subprocess.run([str(BIN), "config", "show", *flags], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    effective = tomllib.loads(shown.stdout)
    assert effective["http"]["port"] == port and effective["admission"]["max_listeners"] == 41
    assert effective["media"]["parts_per_segment"] == 3 and effective["data_dir"] == str(tmp_path / "data")
    assert "config-file-test-key" not in shown.stdout and "# operator_key: set (not shown)" in shown.stdout

    log = tmp_path / "serve.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(BIN), "serve", *flags], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            def demo_space() -> str | None:
                assert proc.poll() is None, log.read_text()
                found = re.search(rf"demo Space live, open http://127\.0\.0\.1:{port}/s/([\w-]+)", log.read_text())
                return found[1] if found else None

            space = wait_until(demo_space, 30, "the demo Space on the file's port")
            node = http.get("/api/node").json()
            assert node["admission"]["max_listeners"] == 41  # the environment over the file
            assert node["admission"]["config"]["admit_burst"] == 7  # the file
            assert node["admission"]["config"]["min_listeners"] == 10
            assert (tmp_path / "data").is_dir()  # AMPHI_DATA_DIR

            answer = http.post(f"/api/spaces/{space}/join", json={})
            assert answer.status_code == 200, answer.text  # pow_mode "off" from the file: no challenge
            playlist = answer.json().get("media_playlist", answer.json()["playlist"])

            def target_duration() -> int | None:
                r = http.get(playlist)
                found = re.search(r"#EXT-X-TARGETDURATION:(\d+)", r.text) if r.status_code == 200 else None
                return int(found[1]) if found else None

            # 3 parts of 0.512 s (the flag): 1.536 s segments, target duration 2; the file's 9 would say 5
            assert wait_until(target_duration, 30, "the live playlist") == 2
            dashboard = http.get("/dashboard", headers={"authorization": "Bearer config-file-test-key"})
            assert dashboard.status_code == 200  # AMPHI_OPERATOR_KEY, as before
    finally:
        stop_group(proc, 15)
    assert proc.returncode == 0, log.read_text()


def test_a_bad_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    """(The other refusals are in tests/test_settings.py, in process.)"""
    conf = tmp_path / "amphi.toml"
    conf.write_text("[media]\nparts_per_segmnt = 9\n")
    r = subprocess.run([str(BIN), "serve", "--config", str(conf), "--port", "0"], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("AMPHI_")})
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"Error: {conf}: unknown key 'parts_per_segmnt' in [media]; did you mean 'parts_per_segment'?\n"
