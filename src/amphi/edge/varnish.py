"""Runs one edge: ``varnishd`` in the foreground with a rendered VCL, its own working
directory and its own port. Lifecycle: new -> running -> stopped.

Varnish cannot cap the TCP connections one client address holds. With
``EdgeSpec.max_connections_per_address`` set, the front takes the edge's port: the fan-out's
workers (``edge/fanout.py``) and nginx behind them.

* the cap (``EdgeSpec.connection_cap``): by default the fan-out's, which counts each address's
  connections itself (the kernel steers every connection of an address to one worker); or the
  kernel's, an iptables ``connlimit`` rule (``edge/firewall.py``, root only, and it turns on
  connection tracking, about a tenth of the fan-out's CPU at 10,000 listeners); or nginx's
  stream module (layer 4, ``limit_conn``) in front of the fan-out, handing each connection on
  over a Unix socket with the PROXY protocol, which costs a hop a request;
* nginx's http server answers segment players from its own cache: ``init.mp4`` and blocking
  playlist reloads without ``_HLS_part``, once the admission token checks out
  (``front.js``: the same HMAC as the VCL, and the expiry). A rush for one object waits on
  ``proxy_cache_lock`` while one request fetches it from Varnish. An event loop answers these
  for about half of what Varnish's thread hand-over costs a request (bench/front_probe.py);
  segment players are the audience's bulk (docs/benchmarks.md). Segments are not: a segment is
  streamed while it is made, and nginx serves no cached copy before it is whole (its waiters
  would get the segment at its end) nor a Range of a copy it got chunked;
* everything else (segments, LL-HLS parts and their blocking reloads, which need Varnish's
  instant wake-up or its streaming to every waiter, any token that does not check out, the API
  and pages) goes to varnishd over another
  Unix socket, with the client's address in ``x-amphi-client``.

Both run in one process group: nginx starts first, as a child that gets SIGTERM when its
parent goes (``PR_SET_PDEATHSIG``), and that parent then becomes varnishd (``exec``)."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from amphi.control.tokens import TOKEN
from amphi.core.errors import Unavailable
from amphi.core.tls import MIN_VERSION, BadCertificate, check_pair
from amphi.edge import firewall
from amphi.edge.vcl import WHOLE_RANGE, EdgeSpec, render
from amphi.web.routes import JOIN_BODY_LIMIT, ROUTES

VARNISHD = shutil.which("varnishd") or "/usr/sbin/varnishd"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian's libnginx-mod-stream
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")  # Debian's libnginx-mod-http-js (njs)

# Slow clients are cut off; idle keep-alive connections are cheap (Varnish parks them on its
# waiter, not on a thread) but bounded in time.
UPSTREAM_IDLE_S = 4  # the front's idle connections to Varnish and the fan-out: less than their 5 s
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
    # A listener reading a segment that is still being made holds a thread until the segment ends
    # (Varnish delivers each response on its own thread): the pools' ceiling follows the streams
    # the edge is sized for (Edge.streams, below); a stream over it waits for a thread, and so
    # gets its segment only once whole (docs/edge.md, "Streamed segments")
    "thread_pool_min": "100",  # per pool: a surge does not wait for threads to be made one by one
    "thread_pools": "2",
    "thread_queue_limit": "20000",  # requests waiting for a thread before the edge drops new sessions
    "http_resp_hdr_len": "16k",
    "max_restarts": "2",
    "timeout_linger": "0.001",  # a thread waits this long (s) for a connection's next request before
    # handing it to the waiter: players ask again seconds later, not within the default 50 ms
}


TLS_PROTOCOLS = tuple(v for v in ("TLSv1.2", "TLSv1.3") if v >= f"TLSv{MIN_VERSION}")  # nginx's names
FANOUT_WORKERS = 2  # the fan-out's processes: each holds at most its open-file limit of sockets (a
# listener holds two), and each can have a core of its own
STREAMS = 10_000  # listeners an edge streams segments to at once, by default (one thread each)
SPARE_THREADS = 200  # per pool, over the streams: everything else (playlists, parts, the API)


def pool_max(streams: int) -> int:
    """Threads a pool may have for ``streams`` concurrent streamed segments."""
    pools = int(PARAMS["thread_pools"])
    return -(-streams // pools) + SPARE_THREADS


class Edge:
    def __init__(self, spec: EdgeSpec, workdir: Path, host: str, port: int, *, storage_mb: int = 256,
                 streams: int = STREAMS, fanout_workers: int = FANOUT_WORKERS,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.spec = spec
        self.tls = tls  # (certificate chain, key), PEM: the front serves https (Varnish has no TLS)
        self.fanout_workers = fanout_workers  # processes of the fan-out (edge/fanout.py)
        self.workdir = workdir.resolve()
        self.host, self.port = host, port
        self.url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.storage_mb = storage_mb
        self.streams = streams  # segments streamed at once: about the edge's live audience
        self.proc: subprocess.Popen[bytes] | None = None
        self.capped_by: str | None = None  # "fanout", "firewall" or "nginx" once prepared, if there is a cap
        self._tag = f"{os.getpid()}-{id(self):x}"  # this edge's firewall rules

    @property
    def _socket(self) -> Path:
        """Where varnishd listens behind the front (only this user may connect)."""
        return self.workdir / "varnish.sock"

    def command(self) -> list[str]:
        params = [arg for k, v in {**PARAMS, "thread_pool_max": str(pool_max(self.streams))}.items()
                  for arg in ("-p", f"{k}={v}")]
        listen = (f"{self._socket},mode=600" if self.spec.max_connections_per_address else f"{self.host}:{self.port}")
        return [VARNISHD, "-F", "-j", "none", "-n", str(self.workdir / "varnish"),
                "-a", listen, "-f", str(self.workdir / "edge.vcl"),
                "-s", f"malloc,{self.storage_mb}m", *params]

    def front_command(self) -> list[str] | None:
        """nginx capping connections per client address in front of varnishd; None without a cap."""
        if not self.spec.max_connections_per_address:
            return None
        d = self.workdir / "front"
        return [NGINX, "-e", str(d / "error.log"), "-c", str(d / "nginx.conf"), "-p", str(d)]

    def fanout_commands(self) -> list[list[str]]:
        """The fan-out's workers behind the front (``edge/fanout.py``); none without a front.
        They share the edge's port (SO_REUSEPORT: the kernel spreads connections over them), or
        behind nginx's stream cap each has a socket of its own; each has its internal socket."""
        d = self.workdir / "front"
        return [[sys.executable, "-m", "amphi.edge.fanout", "--internal", str(sock),
                 "--public", str(d / f"public-{k}.sock") if self.capped_by == "nginx" else f"{self.host}:{self.port}",
                 "--upstream", str(self._socket), "--front", str(d / "http.sock"), "--secret-file", str(d / "secret"),
                 "--media-rate", str(self.spec.media_rate), "--join-rate", str(self.spec.join_rate),
                 *(() if self.spec.batch_joins else ("--no-batch-joins",)), "--name", self.spec.name, "--released", str(d / "released.json"),
                 "--token-ttl", f"{self.spec.token_ttl_s:g}", "--workers", str(self.fanout_workers),
                 "--max-connections", str(self.spec.max_connections_per_address if self.capped_by == "fanout" else 0),
                 *(("--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1]))
                   if self.tls and self.capped_by != "nginx" else ())]
                for k, sock in enumerate(self.fanout_sockets)]

    @property
    def fanout_sockets(self) -> list[Path]:
        """Each fan-out worker's internal socket (nginx's way to it, and its counters); none
        without a front."""
        if not self.spec.max_connections_per_address:
            return []
        return [self.workdir / "front" / f"fanout-{k}.sock" for k in range(self.fanout_workers)]

    def front_commands(self) -> list[list[str]]:
        """What starts before varnishd: the fan-out's workers, then nginx (none without a front)."""
        return [*self.fanout_commands(), *filter(None, [self.front_command()])]

    def keeper_command(self) -> list[str] | None:
        """The process that takes the firewall rule away when the edge ends; None without one."""
        return firewall.keeper_command(self.host, self.port, self._tag) if self.capped_by == "firewall" else None

    def _cap(self, cap: int) -> str:
        """Who enforces the connection cap: the fan-out (``auto``), the firewall if asked and
        this process may set it, or nginx's stream module if asked."""
        if self.spec.connection_cap in ("auto", "fanout"):
            return "fanout"
        if self.spec.connection_cap == "nginx":
            return "nginx"
        try:
            firewall.install(self.host, self.port, cap, self._tag)
        except Unavailable as e:
            raise Unavailable(f"cannot cap connections in the firewall: {e}") from None
        return "firewall"

    def prepare(self) -> None:
        """Writes the VCL and the front's files, and sets the firewall rule if it caps connections."""
        if self.tls is not None:
            if not self.spec.max_connections_per_address:
                raise Unavailable("TLS is served by the edge's front (the fan-out, or nginx's stream cap) and "
                                  "Varnish has none: give --max-connections-per-address above 0 with --tls-cert")
            try:
                check_pair(*self.tls)
            except BadCertificate as e:
                raise Unavailable(str(e)) from None
            self.tls = (self.tls[0].resolve(), self.tls[1].resolve())  # nginx and the fan-out run elsewhere
        self.workdir.mkdir(parents=True, exist_ok=True)
        vcl = self.workdir / "edge.vcl"
        vcl.write_text(render(self.spec))
        os.chmod(vcl, 0o600)
        cap = self.spec.max_connections_per_address
        if cap:
            if self.capped_by is None:
                self.capped_by = self._cap(cap)
            for module, package in ((STREAM_MODULE, "libnginx-mod-stream"), (JS_MODULE, "libnginx-mod-http-js")):
                if not module.exists() and (module is JS_MODULE or self.capped_by == "nginx"):
                    self._uncap()
                    raise Unavailable(f"{module} is missing: install {package} (make setup), or run "
                                      "the edge without a per-address connection cap (and so without its front)")
            front = self.workdir / "front"
            for sub in ("cache", "tmp"):
                (front / sub).mkdir(parents=True, exist_ok=True)
            self._socket.unlink(missing_ok=True)
            (front / "http.sock").unlink(missing_ok=True)
            for old in (*front.glob("fanout-*.sock"), *front.glob("public-*.sock")):
                old.unlink()
            secret = front / "secret"  # for the fan-out's token checks
            secret.write_text(self.spec.secret)
            os.chmod(secret, 0o600)
            script = front / "front.js"
            script.write_text(front_script(self.spec.secret))
            os.chmod(script, 0o600)
            (front / "nginx.conf").write_text(front_config(self.spec, self.host, self.port, front, self._socket,
                                                          stream=self.capped_by == "nginx",
                                                          fanout_workers=self.fanout_workers, tls=self.tls))
            test = subprocess.run([*(self.front_command() or ()), "-t", "-q"], capture_output=True, text=True, timeout=30)
            if test.returncode:
                self._uncap()
                raise Unavailable(f"the front's nginx.conf does not load: {test.stderr.strip()}")

    def exec(self) -> NoReturn:
        """Becomes varnishd (for ``amphi edge run``, once ``prepare`` has run), after starting the
        front and the firewall's keeper if there are: signals and ``kill -9`` of the process
        group reach the whole edge."""
        launch(self.front_commands(), self.command(), self.keeper_command())

    def start(self, *, timeout_s: float = 30.0) -> Edge:
        """Starts the edge as a child in its own process group; returns once it accepts."""
        self.prepare()
        log = open(self.workdir / "varnishd.log", "ab")
        cmd = [sys.executable, "-m", "amphi.edge.varnish", json.dumps(self.front_commands()), json.dumps(self.command()),
               json.dumps(self.keeper_command())]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._uncap()
                tail = (self.workdir / "varnishd.log").read_text(errors="replace")[-2000:]
                raise Unavailable(f"varnishd exited with {self.proc.returncode}:\n{tail}")
            if self._accepting():
                return self
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"edge {self.spec.name} did not start listening within {timeout_s:g} s")

    def _accepting(self) -> bool:
        """Varnish answers HTTP on the edge's port (through the front, when there is one)."""
        import socket

        if not all(p.exists() for p in self.fanout_sockets):
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as raw, \
                    (_unverified().wrap_socket(raw) if self.tls else raw) as s:  # up, not trusted
                s.sendall(b"GET /o/ready HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
                head = s.recv(4096)
                return head.startswith(b"HTTP/1.1") and b"\r\nx-edge:" in head.lower()  # Varnish's answer
        except OSError:
            return False

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def _uncap(self) -> None:
        """Takes the firewall rule away now (its keeper would, a moment after the edge ends)."""
        if self.capped_by == "firewall":
            firewall.remove(self.host, self.port, self._tag)

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._uncap()

    def kill(self) -> None:
        """``kill -9`` the whole edge (manager and child): a crash, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._uncap()

    def stats(self) -> dict[str, int]:
        """Varnish's counters (varnishstat), e.g. MAIN.cache_hit, MAIN.backend_req, and the
        fan-out's as FANOUT.<name> (``Fanout.stats``) when there is a front."""
        out = subprocess.run(["varnishstat", "-n", str(self.workdir / "varnish"), "-1", "-j"],
                             capture_output=True, check=True, timeout=10).stdout
        counters = json.loads(out).get("counters", {})
        stats = {k: int(v.get("value", 0)) for k, v in counters.items()}
        stats.update({f"FANOUT.{k}": v for k, v in fanout_stats(self.fanout_sockets).items()})
        return stats


def _unverified() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fanout_stats(sockets: list[Path]) -> dict[str, int]:
    """The fan-out's counters (``Fanout.stats``, ``GET /_fanout`` on each worker's internal
    socket), summed over its workers; {} for none."""
    import httpx

    total: dict[str, int] = {}
    for sock in sockets:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
            for k, v in c.get("http://edge/_fanout").json().items():
                total[k] = total.get(k, 0) + int(v)
    return total


def front_script(secret: str) -> str:
    """njs for the front: ``token_bad`` is "" for an admission token that the VCL would let
    through to the cache (well formed, this Space's MAC, not expired), "1" otherwise."""
    return f"""// Amphi edge front, rendered by Edge: do not edit. It holds the cluster's token secret.
import crypto from 'crypto';
const SECRET = {json.dumps(secret)};
const TOKEN = /{TOKEN.numbered()}/;
function token_bad(r) {{
    const m = TOKEN.exec(r.variables.amphi_token || '');
    if (!m || Number(m[{TOKEN.group("expires")}]) <= Date.now() / 1000) {{
        return '1';
    }}
    const mac = crypto.createHmac('sha256', SECRET).update('token|' + r.variables.amphi_space + '|' + m[{TOKEN.group("body")}])
        .digest().slice(0, 16).toString('base64url');
    return mac === m[{TOKEN.group("mac")}] ? '' : '1';
}}
export default {{ token_bad }};
"""


def _error_answer(status: int, code: str, message: str, *, retry_after_s: int | None) -> str:
    """An nginx location's body answering with the edge's JSON error shape (as the VCL's synth)."""
    retry = f"\n            add_header retry-after {retry_after_s} always;" if retry_after_s is not None else ""
    return (f"""            default_type application/json;{retry}
            add_header cache-control no-store always;
            add_header access-control-allow-origin * always;
            return {status} '{{"error": "{code}", "message": "{message}"}}';""")


def front_config(spec: EdgeSpec, host: str, port: int, d: Path, varnish_socket: Path, *, stream: bool,
                 fanout_workers: int = FANOUT_WORKERS, tls: tuple[Path, Path] | None = None) -> str:
    """nginx in front of varnishd: a cache for segment players (http) and, with ``stream``, the
    per-address connection cap (else the firewall has it), terminating TLS if given ``tls``
    (else the fan-out does); see the module's docstring."""

    def servers(kind: str) -> str:  # the fan-out's workers' sockets, as an upstream's servers
        return "\n".join(f"        server unix:{d}/{kind}-{k}.sock;" for k in range(fanout_workers))

    # the workers run as this user (root included): only this user may connect to the sockets,
    # so nothing on the machine can bypass the cap or forge a client's address
    user = "user root;\n" if os.geteuid() == 0 else ""
    rate = (f"limit_req zone=media_rate burst={spec.media_rate} nodelay;" if spec.media_rate else "")
    # a listener holds up to three of the front's connections (the client's and, with the stream
    # server, its connection to the http server and that one's end): two workers, each with all
    # the open files it may have
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    # init is immutable; a blocking reload's answer (keyed by its msn) is kept about a segment: a
    # player that asks later than that gets a fresh one. Segments go to Varnish: they are streamed
    # to every listener while they are made (docs/edge.md, "Streamed segments")
    cached = "\n".join(f"""        location ~ "{ROUTES.edge_regex(names, "nginx", node=True).text}" {{
            {rate}
            proxy_cache media;
            proxy_cache_key "$amphi_node/$amphi_space/$amphi_file?$arg__HLS_msn";
            proxy_cache_bypass $amphi_not_here $amphi_token_bad;
            proxy_no_cache $amphi_not_here $amphi_token_bad;
            proxy_cache_lock on;  # a rush waits while one request fetches
            proxy_cache_lock_timeout 10s;  # a blocking reload is held up to a segment (3.584 s)
            proxy_cache_lock_age 10s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            proxy_cache_valid 200 {ttl}s;
            add_header x-front-cache $upstream_cache_status always;
            proxy_pass http://{to};
        }}""" for names, ttl, to in ((("media.init",), spec.media_ttl_cap_s, "varnish"),
                                     (("media.live",), 4, "$amphi_live_to")))
    # a join on a connection the fan-out handed over (a page's, say): to the fan-out's batches
    joins = f"""        location ~ "{ROUTES.edge_regex(("join",), "nginx").text}" {{
            client_max_body_size {JOIN_BODY_LIMIT};  # the fan-out's bound
            error_page 413 = @too_large;
            proxy_pass http://$amphi_join_to;
        }}
        location @too_large {{
{_error_answer(413, "payload_too_large", f"body larger than {JOIN_BODY_LIMIT} bytes", retry_after_s=None)}
        }}
""" if spec.batch_joins else ""
    tls_lines = f"""
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};
        ssl_protocols {" ".join(TLS_PROTOCOLS)};
        ssl_handshake_timeout 5s;  # as the http server's client_header_timeout: slowloris""" if tls else ""
    capped = f"""stream {{
    limit_conn_zone $binary_remote_addr zone=per_address:10m;
    upstream fanout_public {{
{servers("public")}
    }}
    server {{
        listen {host}:{port}{" ssl" if tls else ""} backlog=4096;{tls_lines}
        limit_conn per_address {spec.max_connections_per_address};  # one more is closed at once
        proxy_pass fanout_public;  # the fan-out (edge/fanout.py), which hands nginx the rest
        proxy_protocol on;
        proxy_connect_timeout 2s;
        proxy_timeout 60s;  # no byte either way for this long: closed (the http server's timeouts are shorter)
    }}
}}
""" if stream else ""
    # the fan-out takes the edge's port (or the stream cap's connections) and hands nginx every
    # connection it does not answer itself, with the client's address in the PROXY protocol
    listen = f"""listen unix:{d}/http.sock proxy_protocol backlog=4096;
        set_real_ip_from unix:;
        real_ip_header proxy_protocol;"""
    return f"""{f"load_module {STREAM_MODULE};" if stream else ""}
load_module {JS_MODULE};
{user}daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile {files};
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections {files - 100}; }}
{capped}http {{
    access_log off;
    tcp_nodelay on;
    client_header_timeout 5s;  # as Varnish's timeout_idle: slowloris
    client_body_timeout 5s;
    keepalive_timeout 5s;  # keep-alive connections nobody uses
    keepalive_requests 1000000;
    send_timeout 15s;  # slow readers
    client_max_body_size 64k;
    client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
    proxy_cache_path {d}/cache keys_zone=media:10m max_size=256m inactive={spec.media_ttl_cap_s}s use_temp_path=off;
    limit_req_zone $binary_remote_addr zone=media_rate:10m rate={max(spec.media_rate, 1)}r/s;
    limit_req_status 429;
    js_import front from {d}/front.js;
    js_set $amphi_token_bad front.token_bad;
    # not from this cache: LL-HLS (a part asked for) and the first playlist (no msn): Varnish
    map "$arg__HLS_part:$arg__HLS_msn:$uri" $amphi_not_here {{
        "~^[^:]+:" 1;
        "~\\.(m4s|mp4)$" "";
        "~^::" 1;
        default "";
    }}
    # a GET of a segment from byte 0 to the end, with a token that checks out: the fan-out's
    # (edge/fanout.py); any other Range (a part's bytes), a bad token: Varnish's
    map "$request_method:$http_range" $amphi_whole {{
        "GET:" 1;
        "~^GET:{WHOLE_RANGE.removeprefix("^")}" 1;
        default "";
    }}
    map "$amphi_whole:$amphi_token_bad" $amphi_segment_to {{
        "1:" fanout;
        default varnish;
    }}
    # the live playlist on a connection the fan-out handed over (one that loaded a page, say), not
    # this cache's (LL-HLS, or the first one), with a token that checks out and no Range: the
    # fan-out's, which renews a token past half its life (edge/renewals.py); else Varnish's
    map "$request_method:$http_range:$amphi_not_here:$amphi_token_bad" $amphi_live_to {{
        "GET::1:" fanout;
        default varnish;
    }}
    map $request_method $amphi_join_to {{
        POST fanout;
        default varnish;
    }}
    # An idle upstream connection is dropped before the other end drops it (Varnish's timeout_idle
    # and the fan-out's IDLE_S are 5 s): a request written on a connection the other end has just
    # closed fails, and nginx retries only GETs; a join or a leave (POST) got a 502, answered 503
    # (bench/control_cost.py: 17,734 in 10 minutes of 10,000 listeners)
    upstream fanout {{
{servers("fanout")}
        keepalive {files // 4};  # a listener's connection to it is kept between its requests
        keepalive_requests 1000000;
        keepalive_timeout {UPSTREAM_IDLE_S}s;
    }}
    upstream varnish {{
        server unix:{varnish_socket};
        # every LL-HLS listener's blocking request waits on its own connection to Varnish: kept
        # open for the next one, not made and closed for each
        keepalive {files // 4};
        keepalive_requests 1000000;
        keepalive_timeout {UPSTREAM_IDLE_S}s;
    }}
    server {{
        {listen}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header x-amphi-client $remote_addr;
        proxy_set_header x-amphi-forwarded-for $proxy_add_x_forwarded_for;
        proxy_read_timeout 30s;  # more than Varnish's first_byte_timeout (edge/vcl.py)
        error_page 429 = @too_many;
        error_page 502 504 = @unavailable;  # Varnish is not up (yet, or any more)
{cached}
{joins}        location ~ "{ROUTES.edge_regex(("media.segment",), "nginx", node=True).text}" {{
            # streamed while it is made: each part goes on the moment it arrives (buffered, nginx
            # sends only whole 4 KB buffers and holds a part's tail until the next part)
            proxy_buffering off;
            proxy_buffer_size 16k;  # a part (about 4 KB at 64 kbps) is read and sent in one piece
            proxy_buffers 4 16k;  # (unused unbuffered, but nginx checks their sizes)
            proxy_busy_buffers_size 16k;
            proxy_pass http://$amphi_segment_to;
        }}
        location / {{
            proxy_pass http://varnish;
        }}
        location @unavailable {{
{_error_answer(503, "unavailable", "the edge is not ready", retry_after_s=2)}
        }}
        location @too_many {{
            keepalive_timeout 0;  # a flooding connection is closed
{_error_answer(429, "too_many_requests", "slow down", retry_after_s=1)}
        }}
    }}
}}
"""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _arm_keeper() -> None:
    """``preexec_fn`` of the firewall's keeper: SIGTERM when its parent (the edge) ends, and
    the stop signals held until it waits for them, so one that comes while Python starts is
    not lost."""
    signal.pthread_sigmask(signal.SIG_BLOCK, firewall.STOP_SIGNALS)
    _die_with_parent()


def launch(front: list[list[str]], varnishd: list[str], keeper: list[str] | None = None) -> NoReturn:
    """Starts ``keeper`` (if any: in its own session, so that only this process's end, not a
    signal to the edge's group, sets it off) and the ``front``'s commands (the fan-out and
    nginx, if there is a front) as children that end with this process, then becomes varnishd."""
    if keeper is not None:
        subprocess.Popen(keeper, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=_arm_keeper)
    for command in front:
        subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    os.execv(varnishd[0], varnishd)


if __name__ == "__main__":  # Edge.start: python -m amphi.edge.varnish FRONT_JSON VARNISHD_JSON KEEPER_JSON
    launch(json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]))
