"""A browser speaks to an https origin that is not localhost (issue 21): browsers grant the
microphone only to secure origins, so a speaker on another machine needs `amphi serve
--tls-cert/--tls-key`.

A private CA signs a certificate for ``amphi.test``; the node serves it on 127.0.0.1 with
``--public-url https://amphi.test:PORT``. Headless Chromium resolves ``amphi.test`` to
127.0.0.1 (``--host-resolver-rules``) and trusts that one certificate's key
(``--ignore-certificate-errors-spki-list``, which keeps the page a secure context), with a
fake microphone playing a tone from a WAV file. The host speaks from the console; ffmpeg,
verifying the certificate against the CA, hears the tone in the live program over https."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.audio import SR, dominant_per_window, rms, tone, write_wav
from tests.certs import Pki, answer_in_the_clear, make_pki
from tests.integration.amphi_proc import BIN, AmphiServer, Speaker, free_port
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, FAKE_MEDIA_ARGS, open_console, wait_for

NAME = "amphi.test"
TONE_HZ = 660.0  # not the fake device's own ~400 Hz beep: the file is what is heard
PROGRAM_S = 4.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), (NAME, "127.0.0.1"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[AmphiServer]:
    port = free_port()
    server = AmphiServer(tmp_path_factory.mktemp("tls-node") / "data", port, "--tls-cert", str(pki.cert),
                         "--tls-key", str(pki.key), "--public-url", f"https://{NAME}:{port}", ca=pki.ca).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Browser]:
    """This module's Chromium (the `pages` fixture opens its pages): amphi.test is 127.0.0.1,
    the node's certificate is trusted by its key alone, and the microphone plays a tone."""
    if not CHROMIUM.exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM}: run `make setup`")
    wav = tmp_path_factory.mktemp("mic") / "tone.wav"
    write_wav(wav, tone(TONE_HZ, 10.0, level=0.5))
    args = [*CHROMIUM_ARGS, *FAKE_MEDIA_ARGS, f"--use-file-for-fake-audio-capture={wav}",
            f"--host-resolver-rules=MAP {NAME} 127.0.0.1", f"--ignore-certificate-errors-spki-list={pki.spki_sha256}"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield b
        b.close()


def local(url: str) -> str:
    """``url`` at 127.0.0.1 (what amphi.test is): the certificate names both."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))


def program(node: AmphiServer, space: str, ca: Path) -> np.ndarray:
    """The live program as ffmpeg hears it over https, verifying the node's certificate."""
    playlist = node.join(space)
    assert playlist.startswith(f"https://{NAME}:"), playlist  # what the node hands out says https
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-tls_verify", "1", "-ca_file", str(ca), "-live_start_index", "-1",
         "-i", local(playlist), "-t", str(PROGRAM_S), "-f", "f32le", "-ac", "1", "-ar", str(SR), "-"],
        capture_output=True, timeout=60, check=True,
    ).stdout
    return np.frombuffer(out, dtype=np.float32)


def test_chromium_speaks_to_an_https_origin_that_is_not_localhost(node: AmphiServer, pages, pki: Pki) -> None:
    space, key = node.create("tls")
    node.start_space(space, key)
    host = open_console(pages, SimpleNamespace(url=f"https://{NAME}:{node.port}"), space, key)
    assert host.url.startswith(f"https://{NAME}:")
    assert host.evaluate("window.isSecureContext") is True  # else no microphone at all
    host.click("#speak")
    host.wait_for_function("window.amphiStage.speaking.state === 'connected'", timeout=20_000)

    def heard() -> list[np.ndarray] | None:
        audio = program(node, space, pki.ca)
        quarter = SR // 4
        loud = [i for i in range(len(audio) // quarter) if rms(audio[i * quarter:(i + 1) * quarter]) > 0.05]
        return [audio] if len(loud) >= 8 else None  # the tone has reached the live edge

    audio = wait_for("the tone in the live program", heard, 30, 0.5)[0]
    windows = [hz for i, hz in enumerate(dominant_per_window(audio, 0.25))
               if rms(audio[i * SR // 4:(i + 1) * SR // 4]) > 0.05]
    assert len(windows) >= 8
    on_tone = [abs(hz - TONE_HZ) <= 8 for hz in windows]
    assert sum(on_tone) >= 0.9 * len(on_tone), windows


def test_ffmpeg_without_the_ca_is_refused(node: AmphiServer) -> None:
    """The check above means something: a verifying client that does not trust the CA fails."""
    space, key = node.create("untrusted")
    node.start_space(space, key)
    playlist = local(node.join(space))
    r = subprocess.run(["ffmpeg", "-v", "error", "-tls_verify", "1", "-i", playlist, "-t", "1", "-f", "null", "-"],
                       capture_output=True, timeout=60)
    assert r.returncode != 0
    assert b"verif" in r.stderr.lower(), r.stderr


def test_plain_http_on_the_tls_port_fails_cleanly_and_the_node_serves_on(node: AmphiServer) -> None:
    for _ in range(3):
        got = answer_in_the_clear(node.port, NAME, 5)
        assert not got.startswith(b"HTTP/1.1 200"), got[:80]  # no answer in the clear
    ctx = ssl.create_default_context(cafile=str(node.ca))
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=NAME) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert node.http.get("/api/node").status_code == 200  # still serving
    assert node.proc is not None and node.proc.poll() is None


def test_tls_1_2_clients_are_served(node: AmphiServer) -> None:
    """TLS 1.2 is the minimum (amphi.core.tls.MIN_VERSION): OBS on Windows 10 stops there."""
    ctx = ssl.create_default_context(cafile=str(node.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=NAME) as tls:
        assert tls.version() == "TLSv1.2"


@pytest.mark.parametrize("case", ["missing", "not_pem", "mismatch", "cert_alone"])
def test_a_bad_certificate_is_a_clear_cli_error(tmp_path: Path, pki: Pki, case: str) -> None:
    other = make_pki(tmp_path / "other", ("other.test",))
    bad = tmp_path / "bad.pem"
    bad.write_text("hello\n")
    args = {"missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.key)],
            "not_pem": ["--tls-cert", str(bad), "--tls-key", str(pki.key)],
            "mismatch": ["--tls-cert", str(pki.cert), "--tls-key", str(other.key)],
            "cert_alone": ["--tls-cert", str(pki.cert)]}[case]
    r = subprocess.run([str(BIN), "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr  # a setting that cannot be used (docs/config.md): one line, exit 1
    assert "Traceback" not in r.stderr
    expected = {"missing": "No such file", "not_pem": "not a PEM certificate",
                "mismatch": "does not match the certificate", "cert_alone": "--tls-cert: TLS needs both http.tls_cert and http.tls_key"}[case]
    assert expected in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()  # refused before the node was made


def test_amphi_speak_trusts_a_private_ca_by_ca_file_or_ssl_cert_file(node: AmphiServer, pki: Pki) -> None:
    space, key = node.create("speak over https")
    node.start_space(space, key)
    cmd = [str(BIN), "speak", "--server", node.url, "--space", space, "--key", key, "--tone", "440",
           "--no-reconnect", "--duration", "1"]
    untrusted = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
    by_env = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "SSL_CERT_FILE": str(pki.ca)})
    assert by_env.returncode == 0 and "on air" in by_env.stderr, by_env.stderr

    speaker = Speaker(node, space, key, "--tone", "440").start()  # with --ca-file (Speaker adds it)
    try:
        assert "--ca-file" in speaker.cmd

        def heard() -> list[np.ndarray] | None:
            audio = program(node, space, pki.ca)
            hz = [h for i, h in enumerate(dominant_per_window(audio, 0.25)) if rms(audio[i * SR // 4:(i + 1) * SR // 4]) > 0.05]
            return [audio] if len(hz) >= 12 and all(abs(h - 440) <= 8 for h in hz) else None

        wait_for("amphi speak's tone in the program", heard, 30, 0.5)
    finally:
        speaker.stop()
