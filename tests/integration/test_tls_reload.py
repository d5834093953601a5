"""A renewed certificate is taken up on SIGHUP without a restart (amphi/server.py), and a
broken one is refused while the running one stays."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
from pathlib import Path

import httpx

from tests.certs import Pki, make_pki
from tests.integration.amphi_proc import AmphiServer, wait_until


def trusted_by(ca: Path, port: int) -> bool:
    """A TLS handshake with the node verifies against ``ca``."""
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
            return True
    except (ssl.SSLError, OSError):
        return False


def test_sighup_takes_up_a_renewed_certificate_and_refuses_a_broken_one(tmp_path: Path) -> None:
    old, new = make_pki(tmp_path / "old", ("127.0.0.1",)), make_pki(tmp_path / "new", ("127.0.0.1",))
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    node = AmphiServer(tmp_path / "data", None, "--tls-cert", str(cert), "--tls-key", str(key), ca=old.ca).start()
    try:
        space, host_key = node.create("renewal")
        node.start_space(space, host_key)
        playlist = node.join(space)
        assert trusted_by(old.ca, node.port) and not trusted_by(new.ca, node.port)

        def renew(pki: Pki) -> None:
            shutil.copy(pki.cert, cert)
            shutil.copy(pki.key, key)
            assert node.proc is not None
            node.proc.send_signal(signal.SIGHUP)

        renew(new)
        # granian starts a new worker with the files read again, then stops the old one (which
        # serves the old certificate until then): a few handshakes in a row, each the new one
        wait_until(lambda: all(trusted_by(new.ca, node.port) and not trusted_by(old.ca, node.port) for _ in range(5)),
                   30, "the renewed certificate alone")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(new.ca)), timeout=10) as c:
            assert c.get(playlist).status_code == 200  # the same listener's token plays on

        cert.write_text("not a certificate\n")  # a botched renewal
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the running certificate" in node.log.read_text(errors="replace"), 20,
                   "the node to refuse the broken file")
        assert trusted_by(new.ca, node.port) and node.proc.poll() is None
    finally:
        node.stop()
