"""Real edges for tests: `amphi edge run` (varnishd) processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from amphi.edge.varnish import fanout_stats
from tests.integration.amphi_proc import BIN, free_port, stop_group, wait_until


class EdgeProc:
    def __init__(self, workdir: Path, name: str, origin: str, secret_file: Path, *extra: str,
                 port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.cmd = [str(BIN), "edge", "run", "--name", name, "--port", str(self.port), "--dir", str(workdir),
                    "--origin", origin, "--secret-file", str(secret_file), *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EdgeProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "edge.log", "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"edge exited: {(self.workdir / 'edge.log').read_text()}")
            if not (self.workdir / "front" / "fanout-0.sock").exists():  # edge/fanout.py, behind the front
                return False
            try:
                return httpx.get(f"{self.url}/api/node", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, f"edge {self.name} to answer")
        return self

    def fanout(self) -> dict[str, int]:
        """The fan-out's counters (edge/fanout.py ``Fanout.stats``), summed over its workers."""
        return fanout_stats(sorted((self.workdir / "front").glob("fanout-*.sock")))

    def kill9(self) -> None:
        import os
        import signal

        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 10)
            self._log.close()
