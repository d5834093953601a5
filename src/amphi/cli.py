"""Command line: ``amphi serve``, ``speak``, ``space``, ``keys``, ``config``, ``loadtest``, ``simulate``, ``report`` and ``edge``."""

from __future__ import annotations

import asyncio

from pathlib import Path

import click
import uvloop

from amphi.cli_config import config, effective_config, setting_options
from amphi.core.tls import BadCertificate, client_context
from amphi.obs.logging import configure as configure_logging


@click.group()
@click.version_option(package_name="amphi", prog_name="amphi")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Amphi: live-audio rooms that survive the surge."""
    ctx.obj = {"verbose": verbose}
    configure_logging("text", verbose)


@main.command()
@setting_options
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None,
              help="Log lines as JSON objects or text (default: JSON unless stderr is a terminal).")
@click.pass_context
def serve(ctx: click.Context, log_format: str | None, **_: object) -> None:
    """Run a node: API, origin, waiting room, media pipelines, recordings. Every setting comes from
    --config FILE, then AMPHI_* variables, then the flags below (docs/config.md)."""
    from amphi.server import serve as run

    cfg = effective_config(ctx)
    configure_logging(log_format, ctx.obj["verbose"])
    uvloop.run(run(cfg))


@main.command()
@click.option("--server", required=True, help="Base URL of the Amphi node, e.g. http://127.0.0.1:8000")
@click.option("--space", "space_id", required=True, help="Space id.")
@click.option("--as", "role", type=click.Choice(["host", "speaker"]), default="host", show_default=True,
              help="Speak as the host (--key) or as a speaker on stage (--token, their grant).")
@click.option("--key", default=None, help="Host key of the Space (--as host).")
@click.option("--token", default=None, help="The speaker's grant (--as speaker); see docs/stage.md.")
@click.option("--file", "path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Audio file to send (anything PyAV reads).")
@click.option("--tone", default=None, type=click.FloatRange(20, 20000), help="Send a sine tone of this frequency (Hz).")
@click.option("--loop", is_flag=True, help="Loop --file.")
@click.option("--duration", default=None, type=click.FloatRange(min=0.1), help="Stop after this many seconds.")
@click.option("--return-to", "return_to", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write what this speaker hears (the others on stage) to this WAV file.")
@click.option("--no-reconnect", is_flag=True, help="Give up when the connection drops instead of reconnecting.")
@click.option("--ice-address", "ice_addresses", multiple=True, metavar="IP",
              help="This machine's address to offer in ICE (an IP literal; repeatable). Default: the address it "
                   "reaches --server from. STUN and TURN servers come from the node.")
@click.option("--ca-file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust an https server's certificate only if this CA (PEM) signed it (a private CA); "
                   "default: the system's store, or $SSL_CERT_FILE.")
def speak(server: str, space_id: str, role: str, key: str | None, token: str | None, path: str | None,
          tone: float | None, loop: bool, duration: float | None, return_to: Path | None, no_reconnect: bool,
          ice_addresses: tuple[str, ...], ca_file: Path | None) -> None:
    """Join a Space's stage over WebRTC, send audio in real time and hear the others."""
    from amphi.control.ice import parse_address
    from amphi.media.ingest.client import (SpeakError, Suspicion, follow_room, local_address_towards, speak as once,
                                           stay_on_stage)
    from amphi.media.ingest.sources import FileTrack, ToneTrack
    from amphi.media.wav import WavWriter

    if (path is None) == (tone is None):
        raise click.UsageError("give exactly one of --file or --tone")
    credential = key if role == "host" else token
    if credential is None:
        raise click.UsageError("--as host needs --key HOST_KEY" if role == "host" else "--as speaker needs --token GRANT")
    try:
        addresses = tuple(parse_address(a) for a in ice_addresses)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ice-address") from None
    if not addresses:
        try:
            addresses = (local_address_towards(server),)
        except OSError as e:
            raise click.ClickException(f"no route to {server} ({e}): give --ice-address") from None
    try:
        verify = client_context(ca_file)
    except BadCertificate as e:
        raise click.BadParameter(str(e), param_hint="--ca-file") from None
    track = FileTrack(path, loop=loop) if path else ToneTrack(tone)  # type: ignore[arg-type]
    writer = WavWriter(return_to) if return_to else None

    def connected() -> None:
        click.echo(f"amphi speak: on air in Space {space_id}", err=True)

    def dropped(reason: str, delay: float) -> None:
        click.echo(f"amphi speak: {reason}; reconnecting in {delay:.1f} s", err=True)

    def tell(notice: str) -> None:
        click.echo(f"amphi speak: {notice}", err=True)

    on_return = writer.write if writer else None
    run = once if no_reconnect else stay_on_stage
    extra = {} if no_reconnect else {"on_drop": dropped}

    async def speak_and_listen() -> None:
        """Speaks; beside it, follows the room to say what the speaker should know (muted, feedback)."""
        suspicion = Suspicion()  # the room's stream broke: the node may be gone, look harder at the return feed
        room = asyncio.ensure_future(follow_room(server, space_id, credential, tell, verify, suspicion))
        try:
            await run(server.rstrip("/"), space_id, track, key=credential, duration=duration,  # type: ignore[operator]
                      ice_addresses=addresses, on_connected=connected, on_return=on_return, verify=verify,
                      suspicion=suspicion, **extra)
        finally:
            room.cancel()
            await asyncio.gather(room, return_exceptions=True)

    try:
        uvloop.run(speak_and_listen())
    except SpeakError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if writer is not None:
            writer.close()


@main.command()
@click.argument("space_id", metavar="SPACE")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(path_type=Path, file_okay=False),
              help="The node's data directory (the Space's timeline is in DATA_DIR/spaces/SPACE/).")
@click.option("--out", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Where to write report.html and report.png (default: the Space's directory).")
def report(space_id: str, data_dir: Path, out: Path | None) -> None:
    """Write a Space's post-event report: an HTML page and a PNG timeline."""
    from amphi.core.extras import MissingExtra, need_plots
    from amphi.obs.report import ReportError, write_report

    try:
        need_plots("amphi report")
        html, png = write_report(data_dir, space_id, out)
    except (ReportError, MissingExtra) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"amphi report: {html}")
    click.echo(f"amphi report: {png}")


from amphi.loadtest.cli import loadtest  # noqa: E402 - the load test lives in its own package
from amphi.sim.cli import simulate  # noqa: E402 - so does the simulator

main.add_command(loadtest)

from amphi.edge.cli import cluster, edge  # noqa: E402

main.add_command(edge)
main.add_command(cluster)
main.add_command(simulate)
main.add_command(config)

from amphi.keys_cli import keys  # noqa: E402 - the operator's API keys (docs/keys.md)

main.add_command(keys)

from amphi.space_cli import drain, space  # noqa: E402 - Spaces over a node's API (docs/api.md)

main.add_command(space)
main.add_command(drain)
