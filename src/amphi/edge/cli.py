"""``amphi edge config`` renders an edge's VCL; ``amphi edge run`` runs the edge with it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from amphi.edge.varnish import FANOUT_WORKERS, STREAMS
from amphi.edge.vcl import CONNECTION_CAPS, Backend, EdgeSpec, render


def _backends(values: tuple[str, ...], default_name: str) -> tuple[Backend, ...]:
    out = []
    for i, value in enumerate(values):
        name, sep, url = value.partition("=")
        if not sep:
            name, url = (default_name if len(values) == 1 else f"{default_name}{i + 1}"), value
        try:
            out.append(Backend.parse(name, url))
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return tuple(out)


def _secret(secret_file: Path | None) -> str:
    if secret_file is not None:
        return secret_file.read_text().strip()
    if env := os.environ.get("AMPHI_SECRET"):
        return env
    raise click.UsageError("the edge verifies tokens with the nodes' secret: give --secret-file "
                           "(the node's <data_dir>/secret) or set AMPHI_SECRET")


def edge_options(f):  # type: ignore[no-untyped-def]
    for option in reversed([
        click.option("--name", default="edge1", show_default=True, help="This edge's name."),
        click.option("--origin", "origins", multiple=True, required=True,
                     help="An origin node: NODE_ID=http://HOST:PORT (repeat per node); a bare URL is "
                          "node 'origin', the default `amphi serve --node-id`."),
        click.option("--api", "api", multiple=True,
                     help="An API node for /api/ and pages (repeat); default: the origins."),
        click.option("--secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The nodes' token secret (<data_dir>/secret); default $AMPHI_SECRET."),
        click.option("--media-rate", default=EdgeSpec.media_rate, show_default=True, type=click.IntRange(0),
                     help="Media requests per client address per second (0: no limit)."),
        click.option("--join-rate", default=EdgeSpec.join_rate, show_default=True, type=click.IntRange(0),
                     help="Joins per client address per second (0: no limit)."),
        click.option("--batch-joins/--no-batch-joins", default=EdgeSpec.batch_joins, show_default=True,
                     help="The fan-out sends joins to the API nodes in batches, at most 10 a second a worker "
                          "(docs/admission.md, \"Joins batched at the edge\"); off: each join on its own."),
        click.option("--max-connections-per-address", "max_connections", show_default=True, type=click.IntRange(0),
                     default=EdgeSpec.max_connections_per_address,
                     help="TCP connections one client address may hold, with nginx in front of Varnish "
                          "(0: no cap, Varnish alone on the port)."),
        click.option("--token-ttl", default=EdgeSpec.token_ttl_s, show_default=True, type=click.FloatRange(min=2),
                     help="The nodes' token life (amphi serve --token-ttl): the edge renews listeners' tokens "
                          "at half of it."),
        click.option("--connection-cap", "connection_cap", type=click.Choice(CONNECTION_CAPS), show_default=True,
                     default=EdgeSpec.connection_cap,
                     help="Who caps them: the fan-out on the edge's port (auto), the kernel's firewall "
                          "(iptables connlimit, needs root), or nginx's stream module (one more hop a request)."),
    ]):
        f = option(f)
    return f


def spec_from(name: str, origins: tuple[str, ...], api: tuple[str, ...], secret_file: Path | None,
              media_rate: int, join_rate: int, batch_joins: bool, max_connections: int, connection_cap: str,
              token_ttl: float) -> EdgeSpec:
    secret = _secret(secret_file)
    try:
        return EdgeSpec.signed(name, secret, _backends(origins, "origin"), api=_backends(api, "api"),
                               media_rate=media_rate, join_rate=join_rate, batch_joins=batch_joins,
                               max_connections_per_address=max_connections,
                               connection_cap=connection_cap, token_ttl_s=token_ttl)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.group()
def edge() -> None:
    """The edge tier: Varnish caches in front of the origins (docs/edge.md)."""


@edge.command("config")
@edge_options
def config(**kw) -> None:  # type: ignore[no-untyped-def]
    """Print the edge's VCL (it holds the token secret: keep it private). With a connection cap,
    `run` also writes nginx's configuration into --dir/front."""
    click.echo(render(spec_from(**kw)), nl=False)


@edge.command("run")
@edge_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dir", "workdir", default="edge", show_default=True, type=click.Path(path_type=Path),
              help="Working directory: the VCL, Varnish's state and log.")
@click.option("--storage-mb", default=256, show_default=True, type=click.IntRange(16), help="Cache size in memory.")
@click.option("--streams", default=STREAMS, show_default=True, type=click.IntRange(100),
              help="Without the front (--max-connections-per-address 0): listeners Varnish streams segments to "
                   "at once (about its live audience), each holding one of its threads, about 0.2 MB.")
@click.option("--fanout-workers", default=FANOUT_WORKERS, show_default=True, type=click.IntRange(1, 64),
              help="Processes of the fan-out on the edge's port (docs/edge.md): each holds up to its open-file "
                   "limit of sockets (two a streaming listener) and can use a core.")
@click.option("--tls-cert", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM certificate chain: the edge's front serves https to listeners (with --tls-key; needs "
                   "the front: --max-connections-per-address above 0). See docs/tls.md.")
@click.option("--tls-key", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM private key of --tls-cert.")
def run(host: str, port: int, workdir: Path, storage_mb: int, streams: int,  # type: ignore[no-untyped-def]
        fanout_workers: int, tls_cert: Path | None, tls_key: Path | None, **kw) -> None:
    """Run the edge (varnishd) in the foreground until Ctrl-C."""
    from amphi.core.errors import Unavailable
    from amphi.core.tls import BadCertificate, check_pair
    from amphi.edge.varnish import Edge

    try:
        tls = (tls_cert, tls_key) if check_pair(tls_cert, tls_key) else None
    except BadCertificate as err:
        raise click.BadParameter(str(err), param_hint="--tls-cert/--tls-key") from None
    e = Edge(spec_from(**kw), workdir, host, port, storage_mb=storage_mb, streams=streams,
             fanout_workers=fanout_workers, tls=tls)  # type: ignore[arg-type]
    try:
        e.prepare()
    except Unavailable as err:
        raise click.ClickException(str(err)) from None
    cap = e.spec.max_connections_per_address
    by = {"fanout": "the fan-out", "firewall": "the kernel's firewall", "nginx": "nginx's stream module"}
    click.echo(f"amphi edge {e.spec.name}: starting varnishd on {e.url}"
               + (f" behind its front (the fan-out, nginx), at most {cap} connections per client address, capped by {by[e.capped_by or '']}"
                  if cap else ""), err=True)
    e.exec()


@click.group()
def cluster() -> None:
    """A local cluster on loopback: Redis, API/origin nodes, edges and an entry (docs/cluster.md)."""


@cluster.command("up")
@click.option("--dir", "directory", default="cluster", show_default=True, type=click.Path(path_type=Path, file_okay=False),
              help="Logs, data, the shared secret and cluster.json (what `down` stops).")
@click.option("--base-port", default=8100, show_default=True, type=click.IntRange(1024, 65000),
              help="The entry's port; the nodes, edges and Redis take the next ones.")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 9))
@click.option("--edges", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--demo/--no-demo", default=True, show_default=True, help="A live demo Space on the first node.")
@click.option("--media-rate", default=EdgeSpec.media_rate, show_default=True, type=click.IntRange(0),
              help="Media requests per client address per second at the edges (0: no limit).")
@click.option("--serve-arg", "serve_args", multiple=True, help="An extra `amphi serve` argument for every node (repeat).")
def cluster_up(directory: Path, base_port: int, nodes: int, edges: int, demo: bool, media_rate: int,
               serve_args: tuple[str, ...]) -> None:
    """Start the cluster in the background and print its URLs."""
    from amphi.cluster import Plan, up
    from amphi.core.errors import Unavailable

    try:
        up(Plan(directory, base_port, nodes, edges, demo, serve_args, media_rate), say=click.echo)
    except Unavailable as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"stop it with: amphi cluster down --dir {directory}")


@cluster.command("down")
@click.option("--dir", "directory", default="cluster", show_default=True, type=click.Path(path_type=Path, file_okay=False))
def cluster_down(directory: Path) -> None:
    """Stop everything `amphi cluster up` started in --dir."""
    from amphi.cluster import down

    click.echo(f"amphi cluster: stopped {down(directory)} process groups")
