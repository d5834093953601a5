"""``amphi edge config`` renders an edge's VCL; ``amphi edge run`` runs the edge with it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from amphi.control.tokens import Signer
from amphi.edge.vcl import Backend, EdgeSpec, render


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
    ]):
        f = option(f)
    return f


def spec_from(name: str, origins: tuple[str, ...], api: tuple[str, ...], secret_file: Path | None,
              media_rate: int, join_rate: int) -> EdgeSpec:
    secret = _secret(secret_file)
    try:
        return EdgeSpec(name=name, credential=Signer(secret.encode()).edge_credential(name), secret=secret,
                        origins=_backends(origins, "origin"), api=_backends(api, "api"),
                        media_rate=media_rate, join_rate=join_rate)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.group()
def edge() -> None:
    """The edge tier: Varnish caches in front of the origins (docs/edge.md)."""


@edge.command("config")
@edge_options
def config(**kw) -> None:  # type: ignore[no-untyped-def]
    """Print the edge's VCL (it holds the token secret: keep it private)."""
    click.echo(render(spec_from(**kw)), nl=False)


@edge.command("run")
@edge_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dir", "workdir", default="edge", show_default=True, type=click.Path(path_type=Path),
              help="Working directory: the VCL, Varnish's state and log.")
@click.option("--storage-mb", default=256, show_default=True, type=click.IntRange(16), help="Cache size in memory.")
def run(host: str, port: int, workdir: Path, storage_mb: int, **kw) -> None:  # type: ignore[no-untyped-def]
    """Run the edge (varnishd) in the foreground until Ctrl-C."""
    from amphi.edge.varnish import Edge

    e = Edge(spec_from(**kw), workdir, host, port, storage_mb=storage_mb).start()
    click.echo(f"amphi edge {e.spec.name}: serving on {e.url}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: e.stop())
    try:
        raise SystemExit(e.wait())
    except KeyboardInterrupt:
        e.stop()
