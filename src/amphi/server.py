"""``amphi serve``: one process, one event loop (uvloop) shared by the HTTP server (granian,
embedded), the media pipelines and the WebRTC ingest. See docs/architecture.md for why."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket

from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server

from amphi.core.config import Config
from amphi.core.tls import MIN_VERSION, BadCertificate, check_pair
from amphi.node import Node

log = logging.getLogger(__name__)

# The waiting room holds many long-lived small objects (a surge is 10^5..10^6 places in line),
# and CPython's default thresholds (700, 10, 10) rescan them all again and again while they
# pile up: the join path ran 30 % slower with 100k in line. Collect the young generation
# far less often; the program makes few reference cycles.
GC_THRESHOLDS = (50_000, 20, 100)
DRAIN_S = 10.0  # at shutdown, requests in flight get this long to finish (blocking reloads take 6 s at most)


async def _wait_listening(host: str, port: int, server_task: asyncio.Task[None]) -> None:
    while not server_task.done():
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    server_task.result()  # raises what stopped it
    raise RuntimeError("HTTP server exited during start-up")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def unbindable(address: str) -> str | None:
    """Why aioice could not bind a speaker's connection to ``address``, or None if it can."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
    except OSError as e:
        return e.strerror or str(e)
    return None


def _reload_certificate(cfg: Config, server: Server) -> None:
    """SIGHUP: the certificate and key files are read again (a renewed certificate, at the same
    paths) by granian's new HTTP worker; the old one finishes what it serves. Files that do not
    load are refused here and the running certificate stays."""
    try:
        check_pair(cfg.http.tls_cert, cfg.http.tls_key)
    except BadCertificate as e:
        log.error("SIGHUP: keeping the running certificate: %s", e)
        return
    log.info("SIGHUP: reloading the TLS certificate %s", cfg.http.tls_cert)
    server.reload()


async def serve(cfg: Config) -> None:
    """Runs a node until SIGINT/SIGTERM, then shuts down in order."""
    if not port_free(cfg.http.host, cfg.http.port):
        raise SystemExit(f"amphi: {cfg.http.host}:{cfg.http.port} is already in use")
    try:
        tls = check_pair(cfg.http.tls_cert, cfg.http.tls_key)  # a bad file is said here, not deep in granian
    except BadCertificate as e:
        raise SystemExit(f"amphi: {e}") from None
    for address in cfg.ice.addresses:
        if why := unbindable(address):
            raise SystemExit(f"amphi: ice.addresses: {address} is not an address of this host ({why}); behind NAT, "
                             "give the private one, and --ice-announce or --turn (docs/deploying.md)")
    node = Node(cfg)
    await node.open()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what start-up made lives forever: keep it out of every collection
    server = Server(
        node.app.asgi, address=cfg.http.host, port=cfg.http.port, interface=Interfaces.ASGINL,
        http=HTTPModes.http1, backlog=4096, backpressure=65536, log_level=LogLevels.warning, websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=int(cfg.http.header_read_timeout_s * 1000)),
        ssl_cert=cfg.http.tls_cert if tls else None, ssl_key=cfg.http.tls_key if tls else None,
        ssl_protocol_min=SSLProtocols(f"tls{MIN_VERSION}"),
    )  # backpressure: granian serves at most this many connections at once (default backlog // workers
    # = 4096); every LL-HLS listener holds one in a blocking reload, so the default capped a node at 4096
    # listeners and left the rest unanswered (found by `amphi loadtest` at 10k)
    server_task = asyncio.create_task(server.serve(), name="http")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if tls:
        loop.add_signal_handler(signal.SIGHUP, _reload_certificate, cfg, server)
    try:
        await _wait_listening(cfg.http.host, cfg.http.port, server_task)
        log.info("listening on %s", cfg.http.base_url)
        print(f"amphi: serving on {cfg.http.base_url}", flush=True)
        key = (f"operator key {node.operator_key}" if cfg.demo else
               f"operator key: --operator-key, $AMPHI_OPERATOR_KEY or {cfg.data_dir / 'operator_key'}")
        print(f"amphi: operator dashboard {cfg.http.base_url}/dashboard ({key})", flush=True)
        if cfg.demo:
            from amphi.demo import start_demo

            space, key = await start_demo(node)
            print(f"amphi: demo Space live, open {cfg.http.base_url}/s/{space.id}", flush=True)
            print(f"amphi: its host console is {cfg.http.base_url}/s/{space.id}/host (host key {key})", flush=True)
            try:
                _, api_key = await node.access.demo_key(cfg.data_dir / "demo_api_key")
                print(f"amphi: API key to create Spaces (on {cfg.http.base_url}/ or with Authorization: Bearer "
                      f"KEY): {api_key}", flush=True)
            except Exception as e:  # Redis away at start-up: the demo plays on; `amphi keys create` makes one
                print(f"amphi: no demo API key ({e}); make one with `amphi keys create --name demo`", flush=True)
        await asyncio.wait([asyncio.ensure_future(stop.wait()), server_task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        log.info("shutting down")  # stop accepting and drain HTTP, then end the programs, then the store
        if cfg.cluster.redis_url is not None:  # in a cluster, a planned stop first hands the Spaces over
            try:
                async with asyncio.timeout(DRAIN_S):
                    await node.failover.drain()
            except Exception:  # Redis away, a standby gone: what was not handed over ends as before
                log.exception("handing the Spaces over before stopping failed")
        server.stop()
        node.app.close()  # event and dashboard streams end; blocking reloads answer within their timeout
        try:
            async with asyncio.timeout(DRAIN_S):
                await asyncio.gather(server_task, return_exceptions=True)
        except TimeoutError:
            log.warning("HTTP did not drain in %.0f s; closing the node anyway", DRAIN_S)
        await node.close()
