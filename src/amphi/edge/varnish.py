"""Runs one edge: ``varnishd`` in the foreground with a rendered VCL, its own working
directory and its own port. Lifecycle: new -> running -> stopped.

Varnish cannot cap the TCP connections one client address holds. With
``EdgeSpec.max_connections_per_address`` set, nginx's stream module (layer 4, no HTTP) takes
the edge's port and does just that (``limit_conn``), handing every connection to varnishd
over a Unix socket with the PROXY protocol, so Varnish still sees each client's own address.
Both run in one process group: nginx starts first, as a child that gets SIGTERM when its
parent goes (``PR_SET_PDEATHSIG``), and that parent then becomes varnishd (``exec``)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from amphi.core.errors import Unavailable
from amphi.edge.vcl import EdgeSpec, render

VARNISHD = shutil.which("varnishd") or "/usr/sbin/varnishd"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian's libnginx-mod-stream

# Slow clients are cut off; idle keep-alive connections are cheap (Varnish parks them on its
# waiter, not on a thread) but bounded in time.
PARAMS = {
    "timeout_idle": "5",  # until a request's whole header has arrived, a connection is idle and is
    # closed after this (s): slowloris, and keep-alive connections nobody uses
    "send_timeout": "15",  # a response must be sent within this (s): slow readers
    "idle_send_timeout": "5",  # no progress writing to a client for this long: cut (s)
    # Few threads, a long queue. Every listener's blocking reload parks on the same busy object
    # and is rushed back the instant it arrives: thousands of requests wanting a thread at once.
    # With up to 5,000 threads a pool, Varnish made them all and the context switches cost
    # 113 us a request at 10k wrk players on one edge; with a few hundred they queue, and a
    # request costs 44-63 us (bench/edge.py, docs/edge.md). Each request holds a thread only while it is answered
    # (parked ones and idle connections hold none), and answers are small.
    "thread_pool_min": "100",  # per pool: a surge does not wait for threads to be made one by one
    "thread_pool_max": "200",
    "thread_pools": "2",
    "thread_queue_limit": "20000",  # requests waiting for a thread before the edge drops new sessions
    "http_resp_hdr_len": "16k",
    "max_restarts": "2",
    "timeout_linger": "0.001",  # a thread waits this long (s) for a connection's next request before
    # handing it to the waiter: players ask again seconds later, not within the default 50 ms
}


class Edge:
    def __init__(self, spec: EdgeSpec, workdir: Path, host: str, port: int, *, storage_mb: int = 256) -> None:
        self.spec = spec
        self.workdir = workdir.resolve()
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.storage_mb = storage_mb
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def _socket(self) -> Path:
        """Where varnishd listens behind the connection cap (PROXY protocol)."""
        return self.workdir / "varnish.sock"

    def command(self) -> list[str]:
        params = [arg for k, v in PARAMS.items() for arg in ("-p", f"{k}={v}")]
        listen = (f"{self._socket},PROXY" if self.spec.max_connections_per_address else f"{self.host}:{self.port}")
        return [VARNISHD, "-F", "-j", "none", "-n", str(self.workdir / "varnish"),
                "-a", listen, "-f", str(self.workdir / "edge.vcl"),
                "-s", f"malloc,{self.storage_mb}m", *params]

    def front_command(self) -> list[str] | None:
        """nginx capping connections per client address in front of varnishd; None without a cap."""
        if not self.spec.max_connections_per_address:
            return None
        d = self.workdir / "front"
        return [NGINX, "-e", str(d / "error.log"), "-c", str(d / "nginx.conf"), "-p", str(d)]

    def _write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        vcl = self.workdir / "edge.vcl"
        vcl.write_text(render(self.spec))
        os.chmod(vcl, 0o600)
        cap = self.spec.max_connections_per_address
        if cap:
            if not STREAM_MODULE.exists():
                raise Unavailable(f"{STREAM_MODULE} is missing: install libnginx-mod-stream (make setup), or run "
                                  "the edge without a per-address connection cap")
            (self.workdir / "front").mkdir(exist_ok=True)
            self._socket.unlink(missing_ok=True)
            (self.workdir / "front" / "nginx.conf").write_text(front_config(self.host, self.port, self._socket, cap))

    def exec(self) -> NoReturn:
        """Becomes varnishd (for ``amphi edge run``), after starting the connection cap if there is
        one: signals and ``kill -9`` of the process group reach the whole edge."""
        self._write()
        launch(self.front_command(), self.command())

    def start(self, *, timeout_s: float = 30.0) -> Edge:
        """Starts the edge as a child in its own process group; returns once it accepts."""
        self._write()
        log = open(self.workdir / "varnishd.log", "ab")
        cmd = [sys.executable, "-m", "amphi.edge.varnish", json.dumps(self.front_command()), json.dumps(self.command())]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.workdir / "varnishd.log").read_text(errors="replace")[-2000:]
                raise Unavailable(f"varnishd exited with {self.proc.returncode}:\n{tail}")
            if self._accepting():
                return self
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"edge {self.spec.name} did not start listening within {timeout_s:g} s")

    def _accepting(self) -> bool:
        """The edge answers HTTP on its port (through the cap, when there is one)."""
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"GET /o/ready HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.1")
        except OSError:
            return False

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """``kill -9`` the whole edge (manager and child): a crash, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stats(self) -> dict[str, int]:
        """Varnish's counters (varnishstat), e.g. MAIN.cache_hit, MAIN.backend_req."""
        out = subprocess.run(["varnishstat", "-n", str(self.workdir / "varnish"), "-1", "-j"],
                             capture_output=True, check=True, timeout=10).stdout
        counters = json.loads(out).get("counters", {})
        return {k: int(v.get("value", 0)) for k, v in counters.items()}


def front_config(host: str, port: int, varnish_socket: Path, cap: int) -> str:
    """nginx (stream) on ``host:port``: at most ``cap`` connections per client address, each
    handed to varnishd on ``varnish_socket`` with the PROXY protocol."""
    # the workers run as this user (root included): only this user may connect to varnishd's socket,
    # so nothing on the machine can bypass the cap or forge a PROXY header
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""load_module {STREAM_MODULE};
{user}daemon off;
master_process on;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 20000; }}
stream {{
    limit_conn_zone $binary_remote_addr zone=per_address:10m;
    server {{
        listen {host}:{port} backlog=4096;
        limit_conn per_address {cap};  # one more is closed at once, before a byte reaches Varnish
        proxy_pass unix:{varnish_socket};
        proxy_protocol on;
        proxy_connect_timeout 2s;
        proxy_timeout 60s;  # no byte either way for this long: closed (Varnish's own timeouts are shorter)
    }}
}}
"""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(front: list[str] | None, varnishd: list[str]) -> NoReturn:
    """Starts ``front`` (if any) as a child that ends with this process, then becomes varnishd."""
    if front is not None:
        subprocess.Popen(front, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    os.execv(varnishd[0], varnishd)


if __name__ == "__main__":  # Edge.start: python -m amphi.edge.varnish FRONT_JSON VARNISHD_JSON
    launch(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
