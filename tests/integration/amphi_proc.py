"""Real Amphi processes for integration tests: a server and speakers, on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent / "amphi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process group; SIGKILL if it has not exited after ``grace_s``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def collect_segments(client: httpx.Client, playlist: str, until, timeout: float) -> tuple[dict[int, bytes], list[str]]:
    """Reads the live playlist like a player that keeps every segment, until ``until(segments)``."""
    got: dict[int, bytes] = {}
    texts = []
    base = playlist.rsplit("/", 1)[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = client.get(playlist).text
        texts.append(text)
        for line in text.splitlines():
            if line.endswith(".m4s") and not line.startswith("#") and int(line[:-4]) not in got:
                got[int(line[:-4])] = client.get(f"{base}/{line}").content
        if until(got):
            return got, texts
        time.sleep(0.5)
    raise AssertionError(f"timed out with segments {sorted(got)}")


TEST_SEGMENT_PARTS = "7"  # 3.584 s segments unless a test asks for others: the tests that wait for whole
# segments wait half as long as with the default's 6.144 s (tests/web/test_streamed_player.py runs the default)


class AmphiServer:
    def __init__(self, data_dir: Path, port: int | None = None, *extra: str, ca: Path | None = None) -> None:
        """``ca``: the node serves https (``extra`` has its --tls-cert/--tls-key) with a certificate
        this CA signed for 127.0.0.1; the test's clients trust it."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.ca = ca
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.extra = extra if "--segment-parts" in extra else (*extra, "--segment-parts", TEST_SEGMENT_PARTS)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"amphi-{self.port}.log"
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 verify=ssl.create_default_context(cafile=str(ca)) if ca else True)
        self.expect_feedback = False  # a node raising a feedback alarm fails its test unless it made a loop
        self.api_key: str | None = None  # what creates Spaces (docs/keys.md): the node's operator key, once started

    def start(self) -> AmphiServer:
        cmd = [str(BIN), "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"amphi serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                return self.http.get("/api/node", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, "amphi serve to answer")
        self.api_key = self._operator_key()
        return self

    def _operator_key(self) -> str:
        """The node's operator key, which counts as an API key (docs/keys.md): ``--operator-key``,
        else $AMPHI_OPERATOR_KEY as the node was started with, else the one it made in its data dir."""
        if "--operator-key" in self.extra:
            return self.extra[self.extra.index("--operator-key") + 1]
        return os.environ.get("AMPHI_OPERATOR_KEY") or (self.data_dir / "operator_key").read_text().strip()

    @property
    def api_headers(self) -> dict[str, str]:
        """The header that lets a request create Spaces (and manage any Space)."""
        assert self.api_key is not None, "start the server first"
        return {"authorization": f"Bearer {self.api_key}"}

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._logf.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 15)
        self.close()
        self.check_no_feedback()

    def check_no_feedback(self) -> None:
        """Steady tones, music, hold audio and two speakers at once are not feedback
        (docs/sound.md): every test's node is checked for a false alarm when it stops."""
        if self.expect_feedback or not self.log.exists():
            return
        alarms = [line for line in self.log.read_text(errors="replace").splitlines() if '"what": "feedback"' in line
                  or '"what":"feedback"' in line]
        assert not alarms, "feedback alarm(s) with no loop:\n" + "\n".join(alarms[:3])

    def close(self) -> None:
        self.http.close()
        if self.proc is not None:
            self._logf.close()

    # -- API ------------------------------------------------------------------------------

    def create(self, title: str = "test", starts_at: str | float | None = None) -> tuple[str, str]:
        body: dict[str, object] = {"title": title}
        if starts_at is not None:
            body["starts_at"] = starts_at
        r = self.http.post("/api/spaces", json=body, headers=self.api_headers)
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["host_key"]

    def start_space(self, space: str, key: str) -> dict:
        r = self.http.post(f"/api/spaces/{space}/start", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def end_space(self, space: str, key: str) -> dict:
        r = self.http.post(f"/api/spaces/{space}/end", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def status(self, space: str) -> dict:
        r = self.http.get(f"/api/spaces/{space}")
        assert r.status_code == 200, r.text
        return r.json()

    def join(self, space: str, timeout_s: float = 30.0, *, multivariant: bool = False) -> str:
        """A listener's media playlist URL (``multivariant``: the playlist the join answer names,
        which names the media playlist; both carry the token in the path). A node under pressure puts new joins in line (202,
        docs/admission.md): like a player, this asks again with its ticket after the answer's
        retry_after_s, until it is admitted."""
        deadline = time.monotonic() + timeout_s
        body: dict = {}
        while True:
            r = self.http.post(f"/api/spaces/{space}/join", json=body)
            if r.status_code == 200:
                answer = r.json()
                return answer["playlist"] if multivariant else answer.get("media_playlist", answer["playlist"])
            assert r.status_code == 202 and time.monotonic() < deadline, r.text
            answer = r.json()
            body = {"ticket": answer["ticket"]}
            time.sleep(answer["retry_after_s"])

    def node(self) -> dict:
        return self.http.get("/api/node").json()


    # -- the room (docs/stage.md) ----------------------------------------------------------

    def stage_call(self, space: str, path: str, credential: str | None = None, body: dict | None = None,
                   method: str = "POST") -> httpx.Response:
        headers = {"authorization": f"Bearer {credential}"} if credential else {}
        return self.http.request(method, f"/api/spaces/{space}/stage{path}", json=body, headers=headers)

    def on_stage(self, space: str, key: str, name: str) -> tuple[str, str]:
        """A listener asks to speak and the host accepts: (participant id, grant)."""
        r = self.stage_call(space, "/requests", body={"name": name})
        assert r.status_code == 201, r.text
        pid, grant = r.json()["participant"], r.json()["grant"]
        r = self.stage_call(space, f"/{pid}/accept", key)
        assert r.status_code == 200, r.text
        return pid, grant

    def stage(self, space: str, credential: str | None = None) -> dict:
        r = self.stage_call(space, "", credential, method="GET")
        assert r.status_code == 200, r.text
        return r.json()

    def member(self, space: str, pid: str) -> dict | None:
        return next((m for m in self.stage(space)["members"] if m["id"] == pid), None)


class Speaker:
    """`amphi speak` as a separate process; ``start`` returns once it is on air. A credential
    with a dot is a speaker's grant (``--as speaker --token``), else the host key."""

    def __init__(self, server: AmphiServer, space: str, credential: str, *args: str) -> None:
        who = ["--as", "speaker", "--token", credential] if "." in credential else ["--key", credential]
        ca = ("--ca-file", str(server.ca)) if server.ca else ()
        self.cmd = [str(BIN), "speak", "--server", server.url, "--space", space, *who, *ca, *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> Speaker:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            if "on air" in line:
                os.set_blocking(self.proc.stderr.fileno(), False)
                return self
        raise AssertionError(f"speaker did not get on air: {''.join(seen)}")

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, 10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
