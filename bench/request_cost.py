"""Instructions per request on the node's hot paths, this tree side by side with a git ref.

    .venv/bin/python bench/request_cost.py [--against fb7258e] [--requests 2000] [--small] [--json OUT]

Wall-clock rates on this shared machine swing by a third from one run to the next (the same
code gave 10,055 and 5,859 join decisions per core-second an hour apart), so a regression of a
few per cent cannot be seen in them. This bench counts instead: the node's whole ASGI app
(middleware, route table, shield, admission, answer) runs in process under valgrind's
callgrind, which counts the instructions executed, the same on every run whatever else the
machine does. Each path is run twice, with ``--requests`` and with 5x as many, after the same
warm-up; the difference over the extra requests is the cost of one request, start-up and
warm-up cancelled out. Paths:

* ``join``: ``POST /api/spaces/<id>/join`` ``{}`` from a new client address each time (a
  trusted proxy's X-Forwarded-For), on a Space whose one seat is taken: a waiting answer;
* ``media``: ``GET /media/<id>/t/<token>/init.mp4``: the route, the token's check, the answer.

The node is built but not opened (no background tasks: their work would be counted per
request) and its Space's pipeline is stopped once started. ``--against REF`` runs the same
driver on ``git archive REF src`` in a temporary directory, with this tree's virtualenv, and
prints the ratio. ``--small``: no valgrind, a few thousand requests timed in CPU seconds
(a check that the driver runs against the current code, for the test suite). Exits 2 on an
error; there is no bar (it is a comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import run, small_mode

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("join", "media")
DRIVER = r'''
import asyncio, random, sys, tempfile, time
from dataclasses import fields, replace
from pathlib import Path

import uvloop

from amphi.core.config import Config
import amphi.node as root

path_name, n = sys.argv[1], int(sys.argv[2])


def configured(cfg):
    adm = replace(cfg.admission, max_listeners=1, min_listeners=1)
    names = {f.name for f in fields(cfg.defense)}
    want = {"trusted_proxies": ("127.0.0.1/32",), "join_rate_per_s": 1e6, "pow_mode": "off"}
    return replace(cfg, admission=adm, defense=replace(cfg.defense, **{k: v for k, v in want.items() if k in names}))


async def main():
    node = root.Node(configured(Config(data_dir=Path(tempfile.mkdtemp()))))
    if hasattr(node, "spaces"):  # the redesigned root
        app, spaces = node.app.asgi, node.spaces
        space, _ = await spaces.create("cost")
        await spaces.start(space)
        pipelines = spaces.pipelines
    else:  # the first wave's Node
        from amphi.web.app import App
        app = App(node)
        space, _ = await node.create_space("cost")
        await node.start_space(space)
        pipelines = node.pipelines
    await pipelines[space.id].stop()
    token = node.signer.token(space.id, "seat0000cost", int(time.time()) + 3600)
    rnd = random.Random(1)
    body = {"type": "http.request", "body": b"{}", "more_body": False}

    async def receive():
        return body

    async def send(message):
        pass

    def join():
        ip = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}".encode()
        return {"type": "http", "method": "POST", "path": f"/api/spaces/{space.id}/join", "query_string": b"",
                "client": ("127.0.0.1", 5555), "headers": [(b"host", b"node"), (b"content-length", b"2"),
                                                             (b"x-forwarded-for", ip)]}

    def media():
        return {"type": "http", "method": "GET", "path": f"/media/{space.id}/t/{token}/init.mp4",
                "query_string": b"", "client": ("127.0.0.1", 5555), "headers": [(b"host", b"node")]}

    scope = {"join": join, "media": media}[path_name]
    await app(scope(), receive, send)  # the first join takes the one seat
    for _ in range(1000):
        await app(scope(), receive, send)
    t0 = time.thread_time()
    for _ in range(n):
        await app(scope(), receive, send)
    print(f"cpu_us {(time.thread_time() - t0) / n * 1e6:.2f}")

uvloop.run(main())
'''


def measure(src: Path, path: str, n: int, counted: bool) -> float:
    """Instructions per request (callgrind), or CPU microseconds per request."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"}
    if not counted:
        out = subprocess.run([sys.executable, "-c", DRIVER, path, str(n)], env=env, capture_output=True,
                             text=True, check=True, timeout=300).stdout
        return float(re.search(r"cpu_us (\S+)", out).group(1))
    totals = []
    for count in (n, 5 * n):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg",
                                sys.executable, "-c", DRIVER, path, str(count)],
                               env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"callgrind failed:\n{r.stderr[-2000:]}")
        totals.append(int(re.search(r"Collected : (\d+)", r.stderr).group(1)))
    return (totals[1] - totals[0]) / (4 * n)


def tree_of(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default=None, help="a git ref to compare with (e.g. the first wave's fb7258e)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--json", type=Path, default=None)
    small = small_mode(p, requests=3000)
    args = p.parse_args()
    counted = not small
    unit = "instructions" if counted else "CPU us"
    trees = {"this tree": ROOT / "src"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            trees[args.against] = tree_of(args.against, Path(tmp))
        results: dict[str, dict[str, float]] = {}
        for path in args.paths.split(","):
            results[path] = {}
            for label, src in trees.items():
                print(f"{path:6} {label:>12}: measuring ({'callgrind, two runs' if counted else 'timed'}) ...",
                      flush=True)
                results[path][label] = measure(src, path, args.requests, counted)
    print(f"\n{'path':6} " + " ".join(f"{label:>16}" for label in trees) + ("   ratio" if args.against else ""))
    for path, row in results.items():
        cells = " ".join(f"{row[label]:>16,.1f}" for label in trees)
        ratio = f"   {row['this tree'] / row[args.against]:.3f}" if args.against else ""
        print(f"{path:6} {cells}{ratio}   ({unit} per request)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"unit": unit, "results": results}, indent=2))
    return 0 if all(v > 0 for row in results.values() for v in row.values()) else 2


if __name__ == "__main__":
    run(main)
