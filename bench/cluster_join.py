"""Join throughput and latency with the Redis-backed control plane against the embedded one,
and how exact the waiting-room positions are when two nodes take joins at once.

    .venv/bin/python bench/cluster_join.py [--seconds 5] [--concurrency 64] [--seats 10] [--small] [--json OUT]

Three runs, each on fresh processes (127.0.0.1, free ports, temporary dirs):

1. **embedded**: one ``amphi serve`` (no Redis);
2. **redis, 1 node**: one ``amphi serve --redis`` and a ``redis-server`` (no persistence);
3. **redis, 2 nodes**: two ``amphi serve --redis`` on the same Redis; joins alternate.

Each run creates one live Space with ``--seats`` seats, takes them all, then
``--concurrency`` client tasks POST ``{}`` to ``/api/spaces/<id>/join`` for ``--seconds``:
every one of those joins is a decision that ends in a place in line (the surge's common
case), and the line cannot move (no seat frees), so every position told is checkable. Printed per run:
joins/s, latency p50/p99, answers by status, node and Redis CPU microseconds per join (the
figure that does not depend on how busy the machine is). For the line:
the positions handed out must be exactly 1..W (W = waiting answers, across nodes), so the
bench reports duplicates, gaps and the largest error as a share of the line (target <= 1 %).
The client runs on the same machine and takes CPU too: figures are relative, and noisy
when other work runs. Exits 1 if a position error is above 1 %, the cap was exceeded or an
answer was not a place in line.

Each join comes from a client address of its own (``X-Forwarded-For``; the nodes trust
127.0.0.1 as an edge), the node-wide join budget is lifted and the proof of work is off, as
in join_rate.py: the bench measures decisions, not the defense (one address joining
thousands of times, or joins that never poll, are rightly challenged). ``--small``: 1 s
per run on 16 connections, about 15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from harness import (TRUSTED_PROXY, NodeProcess, client_address, free_port, join_space, kill_group, process_cpu_s,
                     run, small_mode, space_status, start_space)

# as join_rate.py: a crowd through a trusted edge, no node-wide join budget, no proof of work
DEFENSE_ARGS = ("--trusted-proxy", TRUSTED_PROXY, "--join-rate", "1000000", "--pow", "off")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    kill_group(proc)
    raise RuntimeError("redis-server did not start")


async def drive(urls: list[str], space: str, seconds: float, concurrency: int) -> dict[str, object]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    positions: list[int] = []
    stop = time.monotonic() + seconds

    sent = 0

    async def worker(i: int, http: aiohttp.ClientSession) -> None:
        nonlocal sent
        n = i
        while time.monotonic() < stop:
            url = f"{urls[n % len(urls)]}/api/spaces/{space}/join"
            n += 1
            headers = {"content-type": "application/json", "x-forwarded-for": client_address(sent)}
            sent += 1
            t0 = time.perf_counter()
            async with http.post(url, data=b"{}", headers=headers) as r:
                body = await r.json(content_type=None)
            latencies.append(time.perf_counter() - t0)
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status == 202:
                positions.append(int(body["position"]))

    connector = aiohttp.TCPConnector(limit=concurrency)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(i, http) for i in range(concurrency)))
    elapsed = time.monotonic() - t0
    latencies.sort()
    total = len(latencies)
    total_w = len(positions)
    distinct = set(positions)
    dupes = total_w - len(distinct)
    gaps = len(set(range(1, total_w + 1)) - distinct)
    # the largest error: a position told vs the rank it would have in a perfect line
    err = max((abs(p - r) for r, p in enumerate(sorted(positions), start=1)), default=0)
    return {
        "joins": total, "seconds": round(elapsed, 2), "joins_per_s": round(total / elapsed),
        "p50_ms": round(1000 * latencies[total // 2], 2) if total else None,
        "p99_ms": round(1000 * latencies[int(0.99 * (total - 1))], 2) if total else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "waiting_answers": total_w, "position_duplicates": dupes, "position_gaps": gaps,
        "position_max_error_pct": round(100 * err / max(1, total_w), 3),
    }


def one_run(name: str, nodes_n: int, use_redis: bool, args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="amphi-cluster-bench-"))
    redis_proc = None
    nodes: list[NodeProcess] = []
    try:
        flags = ["--max-listeners", str(args.seats), "--admit-burst", str(args.seats), *DEFENSE_ARGS]
        if use_redis:
            redis_proc, url = start_redis(work)
            flags += ["--redis", url]
        for i in range(nodes_n):
            nodes.append(NodeProcess(args=[*flags, "--node-id", f"n{i}"]).start())
        space = start_space(nodes[0].url, name, join=False)
        for i in range(args.seats):  # take every seat, through every node
            code, _ = join_space(nodes[i % nodes_n].url, space.id)
            if code != 200:
                raise RuntimeError(f"join {i} was not admitted ({code}): raise --admit-burst")
        cpu0 = [process_cpu_s(n.pid) for n in nodes]
        rcpu0 = process_cpu_s(redis_proc.pid) if redis_proc else 0.0
        result = asyncio.run(drive([n.url for n in nodes], space.id, args.seconds, args.concurrency))
        result["node_cpu_s"] = [round(process_cpu_s(n.pid) - c, 2) for n, c in zip(nodes, cpu0)]
        result["redis_cpu_s"] = round(process_cpu_s(redis_proc.pid) - rcpu0, 2) if redis_proc else None
        joins = max(1, int(result["joins"]))  # type: ignore[call-overload]
        result["node_cpu_us_per_join"] = round(1e6 * sum(result["node_cpu_s"]) / joins)  # type: ignore[arg-type]
        result["redis_cpu_us_per_join"] = round(1e6 * result["redis_cpu_s"] / joins) if redis_proc else None  # type: ignore[operator]
        status = space_status(nodes[-1].url, space.id)
        result["listeners"] = status["listeners"]
        result["cap_exact"] = status["listeners"] == args.seats
        return {"run": name, **result}
    finally:
        for n in nodes:
            n.stop()
        if redis_proc is not None:
            kill_group(redis_proc)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--max-other", type=float, default=0.0,
                   help="share of answers that may be other than a place in line (default 0; --small 0.01: an "
                        "overloaded shared machine makes a node shed a few, 429)")
    small_mode(p, seconds=1.0, concurrency=16, max_other=0.01)
    args = p.parse_args()
    os.environ.setdefault("AMPHI_SECRET", secrets.token_hex(32))  # the nodes must share it
    print(f"machine: {psutil.cpu_count()} cores, load {os.getloadavg()[0]:.1f} (shared: figures are noisy)")
    results = []
    for name, n, use_redis in (("embedded", 1, False), ("redis, 1 node", 1, True), ("redis, 2 nodes", 2, True)):
        r = one_run(name, n, use_redis, args)
        results.append(r)
        print(f"{name:15s} {r['joins_per_s']:>6} joins/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
              f"answers {r['statuses']}  listeners {r['listeners']}/{args.seats}  CPU per join: node "
              f"{r['node_cpu_us_per_join']} us, redis {r['redis_cpu_us_per_join']} us  positions: {r['waiting_answers']} told, "
              f"{r['position_duplicates']} duplicates, {r['position_gaps']} gaps, "
              f"max error {r['position_max_error_pct']} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failures = [f"{r['run']}: {problem}" for r in results for problem in problems(r, args.max_other)]
    print("FAIL: " + "; ".join(failures) if failures else "PASS: cap exact, every answer a place in line, "
          "positions within 1 % in every run")
    return 1 if failures else 0


def problems(r: dict[str, object], max_other: float) -> list[str]:
    out = []
    if not r["cap_exact"]:
        out.append(f"listeners {r['listeners']} != seats")
    joins, statuses = int(r["joins"]), dict(r["statuses"])  # type: ignore[call-overload, arg-type]
    if not joins or joins - statuses.get("202", 0) > max_other * joins:
        out.append(f"answers {statuses}, expected only 202 (a place in line; at most {max_other:.0%} other)")
    if r["position_max_error_pct"] > 1.0:  # type: ignore[operator]
        out.append(f"position error {r['position_max_error_pct']} % > 1 %")
    return out


if __name__ == "__main__":
    run(main)
