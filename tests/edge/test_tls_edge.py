"""The edge's front terminates TLS (`amphi edge run --tls-cert/--tls-key`): listeners play the
live program over https through it, with the front's connection cap either in the fan-out
(which then holds the TLS) or in nginx's stream module (which does). Real Varnish, nginx and
fan-out; ffmpeg verifies the edge's certificate against a private CA."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.audio import SR, dominant_per_window, rms
from tests.certs import Pki, answer_in_the_clear, make_pki

from tests.edge.edges import EdgeProc
from tests.integration.amphi_proc import BIN, AmphiServer, Speaker, free_port, wait_until

CAPS = ("fanout", "nginx")
SECRET = "t" * 64  # the node's and the edges' token key


@dataclass
class TlsTier:
    origin: AmphiServer
    edges: dict[str, EdgeProc]  # by who caps connections (and so terminates TLS)
    space: str
    pki: Pki


class TlsEdge(EdgeProc):
    """An edge serving https; ``up`` checks it with the CA."""

    def __init__(self, *args, ca: Path, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = ca

    def client(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca)), timeout=10)

    def start(self) -> TlsEdge:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "edge.log", "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        with self.client() as c:
            def up() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"edge exited: {(self.workdir / 'edge.log').read_text()}")
                try:
                    return c.get(f"{self.url}/api/node", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, 60, f"edge {self.name} to answer over https")
        return self


@pytest.fixture(scope="module")
def tls_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTier]:
    tmp = tmp_path_factory.mktemp("tls-edge")
    pki = make_pki(tmp / "pki", ("127.0.0.1",))
    data = tmp / "data"
    data.mkdir()
    secret_file = data / "secret"
    secret_file.write_text(SECRET)
    ports = {cap: free_port() for cap in CAPS}
    origin = AmphiServer(data, None, "--pow", "off",
                         *[a for p in ports.values() for a in ("--edge", f"https://127.0.0.1:{p}")]).start()
    edges: dict[str, TlsEdge] = {}
    speaker = None
    try:
        for cap, port in ports.items():
            edges[cap] = TlsEdge(tmp / f"edge-{cap}", f"edge{len(edges) + 1}", origin.url, secret_file,
                                 "--media-rate", "0", "--max-connections-per-address", "40", "--connection-cap", cap,
                                 "--fanout-workers", "1", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                                 port=port, ca=pki.ca).start()
        space, key = origin.create("edge over https")
        origin.start_space(space, key)
        speaker = Speaker(origin, space, key, "--tone", "440").start()
        yield TlsTier(origin, edges, space, pki)  # type: ignore[arg-type]
    finally:
        if speaker is not None:
            speaker.stop()
        for e in edges.values():
            e.stop()
        origin.stop()


def playlist_at(tier: TlsTier, edge: EdgeProc) -> str:
    """A listener's media playlist at ``edge`` (the node hands edges out in turn)."""
    for _ in range(10):
        url = tier.origin.join(tier.space)
        if url.startswith(edge.url + "/"):
            return url
    raise AssertionError(f"no join was sent to {edge.url}")


@pytest.mark.parametrize("cap", CAPS)
def test_ffmpeg_plays_the_live_program_through_the_https_edge(tls_tier: TlsTier, cap: str) -> None:
    edge = tls_tier.edges[cap]
    playlist = playlist_at(tls_tier, edge)
    assert playlist.startswith("https://")  # the node hands out the edge's https URL

    def heard() -> list[np.ndarray] | None:
        out = subprocess.run(["ffmpeg", "-v", "error", "-tls_verify", "1", "-ca_file", str(tls_tier.pki.ca),
                              "-live_start_index", "-1", "-i", playlist, "-t", "4", "-f", "f32le", "-ac", "1",
                              "-ar", str(SR), "-"], capture_output=True, timeout=60, check=True).stdout
        audio = np.frombuffer(out, dtype=np.float32)
        hz = [h for i, h in enumerate(dominant_per_window(audio, 0.25))
              if rms(audio[i * SR // 4:(i + 1) * SR // 4]) > 0.05]
        return [audio] if len(hz) >= 12 and all(abs(h - 440) <= 8 for h in hz) else None

    wait_until(heard, 30, f"the tone through the {cap}-capped https edge")
    with edge.client() as c:
        assert c.get(playlist).status_code == 200  # the fan-out's own answer, over https
        page = c.get(f"{edge.url}/s/{tls_tier.space}")  # handed to nginx, then Varnish, in the clear behind TLS
        assert page.status_code == 200 and "<html" in page.text.lower()


@pytest.mark.parametrize("cap", CAPS)
def test_plain_http_on_the_edges_tls_port_gets_no_answer_and_the_edge_serves_on(tls_tier: TlsTier, cap: str) -> None:
    edge = tls_tier.edges[cap]
    got = answer_in_the_clear(edge.port, "edge")
    assert not got.startswith(b"HTTP/1.1 200"), got[:80]
    with edge.client() as c:
        assert c.get(f"{edge.url}/api/node").status_code == 200


def test_an_edge_without_its_front_cannot_serve_tls(tls_tier: TlsTier, tmp_path: Path) -> None:
    r = subprocess.run([str(BIN), "edge", "run", "--port", str(free_port()), "--dir", str(tmp_path / "e"),
                        "--origin", tls_tier.origin.url, "--secret-file", str(tls_tier.origin.data_dir / "secret"),
                        "--max-connections-per-address", "0", "--tls-cert", str(tls_tier.pki.cert),
                        "--tls-key", str(tls_tier.pki.key)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Varnish has none" in r.stderr, r.stderr
    r = subprocess.run([str(BIN), "edge", "run", "--port", str(free_port()), "--dir", str(tmp_path / "e"),
                        "--origin", tls_tier.origin.url, "--secret-file", str(tls_tier.origin.data_dir / "secret"),
                        "--tls-cert", str(tls_tier.pki.cert)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "both --tls-cert and --tls-key" in r.stderr, r.stderr


@pytest.mark.serial
def test_amphi_loadtest_listens_through_the_https_edges_with_the_ca(tls_tier: TlsTier, tmp_path: Path) -> None:
    """The node (http) sends the load test's listeners to its https edges: they verify them by --ca-file."""
    import json

    out = tmp_path / "r.json"
    cmd = [str(BIN), "loadtest", "--server", tls_tier.origin.url, "--space", tls_tier.space, "--listeners", "20",
           "--duration", "8", "--ramp", "2", "--quiet", "--json", str(out), "--ca-file", str(tls_tier.pki.ca)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["admitted"] == result["with_audio"] == 20, result
    assert result["errors_by_kind"] == {} and result["stalled_listeners"] == 0, result

    untrusted = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=90)  # no --ca-file
    assert untrusted.returncode == 0, untrusted.stdout + untrusted.stderr
    result = json.loads(out.read_text())
    assert result["with_audio"] == 0 and result["errors_by_kind"].get("tls_error", 0) > 0, result
