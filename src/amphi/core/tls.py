"""TLS in one place: the certificate and key a server (the node, the edge's front) is handed,
checked before anything starts; the minimum protocol version; and the trust a client of
Amphi's own (``amphi speak``, ``amphi loadtest``) puts in a server's certificate.

A bad file is the operator's mistake: ``check_pair`` says which file and what is wrong with
it (missing, not PEM, a key that does not match), where granian or nginx would fail later
with a library's message or a crash.

Clients verify by default. ``client_context(ca_file)`` trusts only ``ca_file`` (a private CA)
when given; otherwise the system's store, which OpenSSL reads from ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` when they are set (as ``curl`` and ``ffmpeg`` do)."""

from __future__ import annotations

import ssl
from pathlib import Path

# TLS 1.2 and 1.3 (Mozilla's "intermediate" profile), not 1.3 alone (granian's default): Windows
# 10's TLS stack (Schannel, which OBS Studio's libcurl uses there) and older Android and Java
# clients stop at 1.2. Browsers negotiate 1.3 either way.
MIN_VERSION = "1.2"
MIN_TLS = ssl.TLSVersion[f"TLSv{MIN_VERSION.replace('.', '_')}"]  # the same, as Python's ssl names it


class BadCertificate(ValueError):
    """A certificate or key file that a TLS server could not use; the message says why."""


def check_pair(cert: Path | None, key: Path | None) -> bool:
    """Whether to serve TLS: False for neither file, True for a certificate chain and a key that
    load and match. Raises ``BadCertificate`` for one without the other or a file that does not
    load."""
    if cert is None and key is None:
        return False
    if cert is None or key is None:
        raise BadCertificate("give both --tls-cert and --tls-key, or neither")
    for path, what, marker in ((cert, "certificate", "CERTIFICATE-----"), (key, "key", "PRIVATE KEY-----")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as e:
            raise BadCertificate(f"TLS {what} {path}: {e.strerror or e}") from None
        if marker not in text:
            raise BadCertificate(f"TLS {what} {path}: not a PEM {'certificate' if what == 'certificate' else 'private key'}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise BadCertificate(f"TLS key {key} does not match the certificate {cert}") from None
        raise BadCertificate(f"TLS certificate {cert} with key {key} does not load: {e.reason or e}") from None
    return True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server's context (the edge's fan-out): the chain and key, TLS ``MIN_VERSION`` and later."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_TLS
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """What a client of Amphi's own trusts: ``ca_file`` alone if given (a private CA's PEM), else
    the system's store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` if set). It always verifies."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as e:
        raise BadCertificate(f"CA file {ca_file}: {getattr(e, 'strerror', None) or e}") from None


def own_context(cert: Path) -> ssl.SSLContext:
    """Trusts exactly the certificates in ``cert`` (a server's own chain), under any name: the
    node's demo speaker reaching the node itself at an address its certificate does not name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # still CERT_REQUIRED: the chain must be this one
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf (or an intermediate) is the anchor
    ctx.load_verify_locations(cafile=str(cert))
    return ctx
