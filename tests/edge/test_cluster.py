"""`amphi cluster up|down`: Redis, two nodes, three edges and an entry, all real, on loopback."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess

import httpx

from tests.integration.amphi_proc import BIN, wait_until


def free_range(n: int) -> int:
    """A base port with ``n`` free ports after it."""
    for _ in range(50):
        base = random.randrange(20_000, 60_000)
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no free port range")


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_cluster_up_serves_a_demo_space_through_edges_and_down_stops_everything(tmp_path) -> None:
    d = tmp_path / "cluster"
    base = free_range(7)
    up = subprocess.run([str(BIN), "cluster", "up", "--dir", str(d), "--base-port", str(base), "--media-rate", "0"],
                        capture_output=True, text=True, timeout=180)
    state = json.loads((d / "cluster.json").read_text()) if (d / "cluster.json").exists() else {"pids": []}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{base}" in up.stdout and "demo Space live" in up.stdout
        assert len(state["pids"]) == 1 + 2 + 3 + 1 and all(alive(p) for p in state["pids"])
        entry, space = state["entry"], state["demo"]
        assert httpx.get(f"{entry}/s/{space}", timeout=10).status_code == 200  # the page, through the entry
        assert f"API key    {state['api_key']}" in up.stdout  # made in the Redis: every node knows it
        assert httpx.post(f"{entry}/api/spaces", json={"title": "x"}, timeout=10).status_code == 401
        for _ in range(2):  # through the entry, to either node
            r = httpx.post(f"{entry}/api/spaces", json={"title": "keyed"}, timeout=10,
                           headers={"authorization": f"Bearer {state['api_key']}"})
            assert r.status_code == 201, r.text
        assert {n["id"] for n in httpx.get(f"{entry}/api/nodes", timeout=10).json()} == {"n1", "n2"}
        edges_seen = set()
        for _ in range(6):  # joins answered through the entry by either node; media from the edges in turn
            r = httpx.post(f"{entry}/api/spaces/{space}/join", json={}, timeout=10)
            assert r.status_code == 200, r.text
            playlist, index = r.json()["media_playlist"], r.json()["playlist"]
            edges_seen.add(playlist.split("/o/")[0])
            assert "/o/n1/media/" in playlist  # the demo Space lives on n1
        assert edges_seen == set(state["edges"])
        pl = wait_until(lambda: (r := httpx.get(playlist, timeout=10)).status_code == 200 and "#EXTINF" in r.text and r,
                        30, "the demo's playlist through an edge")
        assert pl.headers["x-edge"].startswith("edge")
        multivariant = httpx.get(index, timeout=10)  # what the join names, through the edge too
        assert multivariant.status_code == 200 and multivariant.text.splitlines()[-1] == "live.m3u8"
    finally:
        down = subprocess.run([str(BIN), "cluster", "down", "--dir", str(d)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    wait_until(lambda: not any(alive(p) for p in state["pids"]), 15, "every process of the cluster to stop")
    assert not (d / "cluster.json").exists()
