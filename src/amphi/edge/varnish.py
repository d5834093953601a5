"""Runs one edge: ``varnishd`` in the foreground with a rendered VCL, its own working
directory and its own port. Lifecycle: new -> running -> stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from amphi.core.errors import Unavailable
from amphi.edge.vcl import EdgeSpec, render

VARNISHD = shutil.which("varnishd") or "/usr/sbin/varnishd"

# Slow clients are cut off; idle keep-alive connections are cheap (Varnish parks them on its
# waiter, not on a thread) but bounded in time.
PARAMS = {
    "timeout_idle": "5",  # until a request's whole header has arrived, a connection is idle and is
    # closed after this (s): slowloris, and keep-alive connections nobody uses
    "send_timeout": "15",  # a response must be sent within this (s): slow readers
    "idle_send_timeout": "5",  # no progress writing to a client for this long: cut (s)
    "thread_pool_min": "200",  # per pool: a surge does not wait for threads to be made one by one
    "thread_pool_max": "5000",
    "thread_pools": "2",
    "thread_queue_limit": "1000",  # sessions waiting for a thread before the edge drops new ones
    "http_resp_hdr_len": "16k",
    "max_restarts": "2",
}


class Edge:
    def __init__(self, spec: EdgeSpec, workdir: Path, host: str, port: int, *, storage_mb: int = 256) -> None:
        self.spec = spec
        self.workdir = workdir.resolve()
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.storage_mb = storage_mb
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        params = [arg for k, v in PARAMS.items() for arg in ("-p", f"{k}={v}")]
        return [VARNISHD, "-F", "-j", "none", "-n", str(self.workdir / "varnish"),
                "-a", f"{self.host}:{self.port}", "-f", str(self.workdir / "edge.vcl"),
                "-s", f"malloc,{self.storage_mb}m", *params]

    def _write_vcl(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        vcl = self.workdir / "edge.vcl"
        vcl.write_text(render(self.spec))
        os.chmod(vcl, 0o600)

    def exec(self) -> None:
        """Becomes varnishd (for ``amphi edge run``): signals and ``kill -9`` reach the edge itself."""
        self._write_vcl()
        os.execv(VARNISHD, self.command())

    def start(self, *, timeout_s: float = 30.0) -> Edge:
        """Starts varnishd as a child in its own process group; returns once it accepts."""
        self._write_vcl()
        log = open(self.workdir / "varnishd.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
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
        import json

        out = subprocess.run(["varnishstat", "-n", str(self.workdir / "varnish"), "-1", "-j"],
                             capture_output=True, check=True, timeout=10).stdout
        counters = json.loads(out).get("counters", {})
        return {k: int(v.get("value", 0)) for k, v in counters.items()}
