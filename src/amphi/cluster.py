"""``amphi cluster up|down``: a whole cluster on loopback, for demos and tests.

    Redis  <-  N API/origin nodes (``amphi serve --redis``)  <-  E edges (Varnish)  <-  listeners
                                                              <-  entry (round-robin API, pages)

Every process runs in its own process group, outlives ``amphi cluster up`` and is listed in
``<dir>/cluster.json``; ``amphi cluster down`` stops them (SIGTERM, then SIGKILL). Ports are
consecutive from ``--base-port``: the entry, then the nodes, then the edges, then Redis.
The nodes share one token secret (``<dir>/secret``), which the edges are given too, and one set
of API keys, in the Redis: ``up`` makes a key named ``cluster`` and prints it (docs/keys.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncio

import httpx

from amphi.control.apikeys import ApiKeys, RedisKeyBook
from amphi.control.tokens import new_secret
from amphi.core.config import ClusterConfig
from amphi.core.errors import Unavailable
from amphi.edge.varnish import Edge
from amphi.edge.vcl import Backend, EdgeSpec
from amphi.server import port_free

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


@dataclass
class Plan:
    dir: Path
    base_port: int = 8100
    nodes: int = 2
    edges: int = 3
    demo: bool = True  # the first node creates a live demo Space
    serve_args: tuple[str, ...] = ()  # extra `amphi serve` options for every node
    media_rate: int = EdgeSpec.media_rate  # per client address at the edges (0: off)

    def ports(self) -> dict[str, list[int]]:
        p = self.base_port
        return {"entry": [p], "nodes": list(range(p + 1, p + 1 + self.nodes)),
                "edges": list(range(p + 1 + self.nodes, p + 1 + self.nodes + self.edges)),
                "redis": [p + 1 + self.nodes + self.edges]}


@dataclass
class Running:
    entry: str
    nodes: list[str]
    edges: list[str]
    redis: str
    pids: list[int] = field(default_factory=list)  # process group leaders, in start order
    demo: str | None = None  # the demo Space's id
    api_key: str | None = None  # a key that creates Spaces on any node (in Redis: made anew by every `up`)


def _amphi(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "amphi"
    return [str(script), *args] if script.is_file() else [sys.executable, "-c", "from amphi.cli import main; main()", *args]


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def _wait(what: str, ready, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        try:
            if ready():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise Unavailable(f"{what} did not come up within {START_TIMEOUT_S:g} s (log: {log})")


def up(plan: Plan, say=print) -> Running:  # type: ignore[no-untyped-def]
    ports = plan.ports()
    busy = [p for ps in ports.values() for p in ps if not port_free(HOST, p)]
    if busy:
        raise Unavailable(f"ports already in use: {busy}; choose another --base-port or run `amphi cluster down`")
    if not shutil.which("redis-server"):
        raise Unavailable("redis-server is not installed: `make setup` installs Debian's redis-server")
    plan.dir.mkdir(parents=True, exist_ok=True)
    secret_file = plan.dir / "secret"
    if not secret_file.exists():
        secret_file.write_text(new_secret().hex())
        os.chmod(secret_file, 0o600)
    secret = secret_file.read_text().strip()
    url = lambda port: f"http://{HOST}:{port}"  # noqa: E731
    run = Running(entry=url(ports["entry"][0]), nodes=[url(p) for p in ports["nodes"]],
                  edges=[url(p) for p in ports["edges"]], redis=f"redis://{HOST}:{ports['redis'][0]}/0")
    state = plan.dir / "cluster.json"
    try:
        (plan.dir / "redis").mkdir(exist_ok=True)
        log = plan.dir / "redis.log"
        proc = _spawn(["redis-server", "--bind", HOST, "--port", str(ports["redis"][0]), "--save", "",
                       "--appendonly", "no", "--dir", str(plan.dir / "redis")], log)
        run.pids.append(proc.pid)
        _wait("redis-server", lambda: socket.create_connection((HOST, ports["redis"][0]), 0.2).close() or True, proc, log)
        say(f"redis      {run.redis}")
        run.api_key = asyncio.run(_api_key(run.redis))
        say(f"API key    {run.api_key}   <- creates Spaces: Authorization: Bearer KEY, or the home page")
        env = {**os.environ, "AMPHI_SECRET": secret}
        for i, port in enumerate(ports["nodes"]):
            name = f"n{i + 1}"
            log = plan.dir / f"{name}.log"
            cmd = _amphi("serve", "--host", HOST, "--port", str(port), "--data-dir", str(plan.dir / name),
                         "--node-id", name, "--redis", run.redis, *[a for e in run.edges for a in ("--edge", e)],
                         "--trusted-proxy", f"{HOST}/32",  # the edges: their X-Forwarded-For names the listener
                         *(["--demo"] if plan.demo and i == 0 else []), *plan.serve_args)
            proc = _spawn(cmd, log, env)
            run.pids.append(proc.pid)
            _wait(f"node {name}", lambda u=url(port): httpx.get(f"{u}/api/node", timeout=1).status_code == 200, proc, log)
            say(f"node {name}    {url(port)}")
        origins = tuple(Backend.parse(f"n{i + 1}", url(p)) for i, p in enumerate(ports["nodes"]))
        for name, port in [*((f"edge{i + 1}", p) for i, p in enumerate(ports["edges"])), ("entry", ports["entry"][0])]:
            spec = EdgeSpec.signed(name, secret, origins, media_rate=plan.media_rate)
            edge = Edge(spec, plan.dir / name, HOST, port).start()
            assert edge.proc is not None
            run.pids.append(edge.proc.pid)
            say(f"{name:10} {edge.url}" + ("   <- listeners and the API, round-robin over the nodes" if name == "entry" else ""))
        if plan.demo:
            run.demo = _demo_space(run.nodes[0])
            if run.demo:
                say(f"demo Space live: open {run.entry}/s/{run.demo}")
    except BaseException:
        _stop(run.pids)
        raise
    finally:
        state.write_text(json.dumps(asdict(run), indent=1))
    return run


async def _api_key(redis_url: str) -> str:
    keys = ApiKeys(RedisKeyBook(redis_url, ClusterConfig.prefix))
    try:
        return (await keys.create("cluster"))[1]
    finally:
        await keys.close()


def _demo_space(node: str) -> str | None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        spaces = httpx.get(f"{node}/api/spaces", timeout=5).json()
        live = next((s["id"] for s in spaces if s.get("state") == "live"), None)
        if live:
            return live
        time.sleep(0.2)
    return None


def _stop(pids: list[int], grace_s: float = 10.0) -> int:
    stopped = 0
    for pid in reversed(pids):  # edges first, Redis last
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped += 1
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace_s
    for pid in reversed(pids):
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    try:  # reap it if it is our child (tests run up and down in one process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def down(directory: Path) -> int:
    """Stops what ``up`` started in ``directory``; the number of process groups signalled."""
    state = directory / "cluster.json"
    if not state.exists():
        return 0
    stopped = _stop(json.loads(state.read_text())["pids"])
    state.unlink()
    return stopped
