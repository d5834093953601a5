"""What the benchmarks share: an ``amphi serve`` subprocess on 127.0.0.1 and the API calls
that put a Space on air.

Lifecycle of a ``NodeProcess``: new -> running (``start()``, returns once the API answers)
-> stopped (``stop()``: SIGTERM to its process group, SIGKILL if it has not exited in
``STOP_GRACE_S``). Use it as a context manager so it is stopped even when a bench fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import NoReturn

import httpx

from amphi.core.extras import need_plots
from amphi.loadtest.machine import ProcessCpu
from amphi.loadtest.machine import machine_busy_s as busy_and_softirq_s

need_plots("the bench scripts' figures")  # every bench draws some: say so before a run, not after it

HOST = "127.0.0.1"  # the benches bind and target loopback only
# A bench that stands for many clients tells the node to trust it as a proxy (an edge, as
# deployed) and sends each client's address in X-Forwarded-For: the node's defense then sees
# a crowd, not one address joining thousands of times (which it rightly challenges).
TRUSTED_PROXY = "127.0.0.1/32"
START_TIMEOUT_S = 30.0  # from spawning the node to its API answering
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL


def amphi_command(*args: str) -> list[str]:
    """The ``amphi`` CLI of the interpreter running the bench (the venv's entry point)."""
    script = Path(sys.executable).parent / "amphi"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-c", "from amphi.cli import main; main()", *args]


SMALL_ENV = "AMPHI_BENCH_SMALL"  # set (non-empty, not "0") to run every bench in its small mode


def small_mode(parser: argparse.ArgumentParser, **defaults: object) -> bool:
    """Adds ``--small`` to a bench's options: the same code path and the same printed figures,
    in seconds instead of minutes (``tests/bench`` runs every bench this way, so a bench that
    breaks fails the suite). ``defaults`` are the small sizes and relaxed bars; options given
    on the command line still win. Also on when ``AMPHI_BENCH_SMALL`` is set. Call it before
    ``parse_args``; returns whether the run is small."""
    parser.add_argument("--small", action="store_true",
                        help=f"seconds, not minutes: small sizes, relaxed bars (also ${SMALL_ENV}=1)")
    small = "--small" in sys.argv[1:] or os.environ.get(SMALL_ENV, "") not in ("", "0")
    if small:
        parser.set_defaults(small=True, **defaults)
    return small


def client_address(k: int, per_prefix: int = 4) -> str:
    """The ``k``-th client address of a crowd: ``per_prefix`` consecutive ones share a /24 in
    10.0.0.0/8 (65,536 /24s; past them, round again with the next host numbers)."""
    prefix, host = divmod(k, per_prefix)
    spill, prefix = divmod(prefix, 1 << 16)
    return f"10.{prefix >> 8}.{prefix & 255}.{(spill * per_prefix + host) % 254 + 1}"


def split_cores() -> tuple[int, ...]:
    """Pins this process to its first core, so that every server started from it runs there, and
    returns the others, for the load generator (``RunOptions.cpus``): each side has cores of its
    own, and the generator's load cannot slow the server under test, nor the other way round.
    With fewer than 2 cores nothing is pinned and the answer is empty."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return ()
    os.sched_setaffinity(0, cpus[:1])
    return tuple(cpus[1:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Stops a process started with ``start_new_session=True`` and everything it spawned."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc, signal.SIGKILL)  # stragglers in the group, if any
    if proc.poll() is None:
        proc.wait(grace_s)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the session leader's pid is its group id
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


API_KEYS: dict[str, str] = {}  # node URL -> its operator key, which creates Spaces (docs/keys.md)


def operator_key(args: Sequence[str], data_dir: Path) -> str:
    """A node's operator key: ``--operator-key``, else $AMPHI_OPERATOR_KEY, else the file it made."""
    args = list(args)
    if "--operator-key" in args:
        return args[args.index("--operator-key") + 1]
    return os.environ.get("AMPHI_OPERATOR_KEY") or (data_dir / "operator_key").read_text().strip()


class NodeProcess:
    """``amphi serve`` on a free 127.0.0.1 port with a throw-away data dir."""

    def __init__(self, *, keep_dir: bool = False, args: Sequence[str] = ()) -> None:
        self.args = tuple(args)  # extra ``amphi serve`` options, e.g. ("--max-listeners", "2000")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="amphi-bench-"))
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._keep_dir = keep_dir

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> NodeProcess:
        cmd = amphi_command("serve", "--host", HOST, "--port", str(self.port), "--data-dir", str(self.dir / "data"),
                            *self.args)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"amphi serve exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                if httpx.get(f"{self.url}/api/spaces", timeout=1.0).status_code == 200:
                    API_KEYS[self.url] = operator_key(self.args, self.dir / "data")
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"amphi serve did not answer within {START_TIMEOUT_S:.0f} s:\n{tail(self.log_path)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
        if not self._keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is not None and not isinstance(ev, (KeyboardInterrupt, SystemExit)):
            log = tail(self.log_path)
            if log:
                print(f"--- last lines of the server log ---\n{log}", file=sys.stderr)
        self.stop()


@dataclass(frozen=True)
class LiveSpace:
    id: str
    host_key: str
    playlist: str  # live.m3u8 URL handed to a listener (with its session id)


def start_space(server: str, title: str, *, join: bool = True, api_key: str | None = None) -> LiveSpace:
    """Creates a Space (with ``api_key``, by default the operator key of the ``NodeProcess`` at
    ``server``), starts it (hold -> live) and, with ``join``, joins it as a listener."""
    key = api_key or API_KEYS[server]
    with httpx.Client(base_url=server, timeout=10.0) as api:
        r = api.post("/api/spaces", json={"title": title}, headers={"Authorization": f"Bearer {key}"})
        r.raise_for_status()
        space = r.json()
        auth = {"Authorization": f"Bearer {space['host_key']}"}
        api.post(f"/api/spaces/{space['id']}/start", headers=auth).raise_for_status()
        playlist = ""
        if join:
            r = api.post(f"/api/spaces/{space['id']}/join", json={})
            r.raise_for_status()
            playlist = r.json()["media_playlist"]
    return LiveSpace(space["id"], space["host_key"], playlist)


def end_space(server: str, space: LiveSpace) -> None:
    """Best effort: the node is stopped right after anyway."""
    try:
        httpx.post(f"{server}/api/spaces/{space.id}/end", headers={"Authorization": f"Bearer {space.host_key}"},
                   timeout=10.0)
    except httpx.HTTPError:
        pass


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (and the node's clean-up) run."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run(main: Callable[[], int]) -> NoReturn:
    """A bench's entry point: exit 0 (target met), 1 (missed), 130 (interrupted) or 2 (error)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bench reports and exits 2
        print(f"error: {exc!r}", file=sys.stderr)
        sys.exit(2)


# -- for the admission benches (surge.py, join_rate.py) -------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) and of its live children."""
    return ProcessCpu(pid).cpu_s()


def space_status(server: str, space_id: str) -> dict[str, object]:
    """``GET /api/spaces/<id>``: state, listeners, waiting, admitted_total, peak_listeners, ..."""
    r = httpx.get(f"{server}/api/spaces/{space_id}", timeout=10.0)
    r.raise_for_status()
    return dict(r.json())


def node_stats(server: str) -> dict[str, object]:
    """``GET /api/node``; empty if the node does not answer."""
    try:
        r = httpx.get(f"{server}/api/node", timeout=10.0)
        return dict(r.json()) if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def join_space(server: str, space_id: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    """``POST /api/spaces/<id>/join`` with a JSON body (``{}`` by default): (status, answer).
    200 admitted (token, playlist), 202 waiting (ticket, position), 429/503 retry later."""
    r = httpx.post(f"{server}/api/spaces/{space_id}/join", json=body or {}, timeout=10.0)
    try:
        answer = dict(r.json())
    except ValueError:
        answer = {"error": "not_json", "message": r.text[:200]}
    return r.status_code, answer


def first_media(playlist_url: str, text: str) -> tuple[str, str]:
    """The init segment and the first part or segment a live playlist lists, as absolute
    URLs. Relative URIs resolve against the playlist's own URL, so a token in its path
    carries over to them."""
    from urllib.parse import urljoin

    init = media = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-MAP:") and init is None:
            init = _uri_attribute(line)
        elif line.startswith("#EXT-X-PART:") and media is None:
            media = _uri_attribute(line)
        elif line and not line.startswith("#") and media is None:
            media = line
        if init is not None and media is not None:
            break
    if init is None or media is None:
        raise ValueError(f"the playlist lists no {'init segment' if init is None else 'media'}")
    return urljoin(playlist_url, init), urljoin(playlist_url, media)


def _uri_attribute(line: str) -> str | None:
    for item in line.split(":", 1)[1].split(","):
        key, _, value = item.partition("=")
        if key.strip() == "URI":
            return value.strip().strip('"')
    return None


def machine_busy_s() -> float:
    """CPU seconds all cores of this machine have spent busy (not idle, not waiting on I/O)
    since boot: compare with a process's CPU to see how much other processes took."""
    return busy_and_softirq_s()[0]


def main_thread_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process's main thread (a node's event loop)."""
    import psutil

    try:
        for t in psutil.Process(pid).threads():
            if t.id == pid:
                return t.user_time + t.system_time
    except psutil.NoSuchProcess:
        pass
    return 0.0


# wrk's end of run, appended to a bench's own Lua script (which keeps a global ``statuses``
# table: answers by status): one line "WRK_JSON {...}" that ``wrk_summary`` reads.
WRK_SUMMARY_LUA = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "p50": %d, "p90": %d, ' ..
    '"p99": %d, "max": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ", ")))
end
"""


def wrk_summary(text: str) -> dict[str, object]:
    """The WRK_JSON line of a run whose script ends with ``WRK_SUMMARY_LUA``."""
    import json
    import re

    m = re.search(r"^WRK_JSON (.*)$", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"wrk printed no summary:\n{text[-2000:]}")
    return dict(json.loads(m.group(1)))
