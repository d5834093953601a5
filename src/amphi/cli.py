"""Command line: ``amphi serve``, ``speak``, ``space``, ``loadtest``, ``simulate``, ``report`` and ``edge``."""

from __future__ import annotations

import asyncio

from pathlib import Path

import click
import uvloop

from amphi.core.config import (AdmissionConfig, ClusterConfig, Config, DefenseConfig, HttpConfig, MediaConfig,
                               SoundConfig, StageConfig)
from amphi.edge.vcl import NAME as NODE_ID
from amphi.obs.logging import configure as configure_logging
from amphi.defense.shield import parse_networks


@click.group()
@click.version_option(package_name="amphi", prog_name="amphi")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Amphi: live-audio rooms that survive the surge."""
    ctx.obj = {"verbose": verbose}
    configure_logging("text", verbose)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--data-dir", default="data", show_default=True, type=click.Path(path_type=Path),
              help="Recordings and Space state live here.")
@click.option("--public-url", default=None, help="Base URL handed to clients (default http://HOST:PORT).")
@click.option("--demo", is_flag=True, help="Create a live demo Space with a built-in speaker.")
@click.option("--max-listeners", default=AdmissionConfig.max_listeners, show_default=True, type=click.IntRange(1),
              help="Seat ceiling of this node; the adaptive limit stays at or below it.")
@click.option("--admit-rate", default=AdmissionConfig.admit_rate_per_s, show_default=True,
              type=click.FloatRange(min=0.1), help="New listeners seated per second (GCRA).")
@click.option("--admit-burst", default=AdmissionConfig.admit_burst, show_default=True, type=click.IntRange(1),
              help="Seats that may be given at once after a quiet spell.")
@click.option("--token-ttl", default=AdmissionConfig.token_ttl_s, show_default=True, type=click.FloatRange(min=2),
              help="Admission token lifetime in seconds; clients renew at half of it.")
@click.option("--seat-grace", default=AdmissionConfig.seat_grace_s, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a seat outlives its last token before it is given to someone else.")
@click.option("--ticket-hold", default=AdmissionConfig.ticket_hold_s, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a seat offered to a place in line is held for its ticket (a place is held until its turn).")
@click.option("--max-waiting", default=AdmissionConfig.max_waiting, show_default=True, type=click.IntRange(1),
              help="Places in the waiting line, node-wide; beyond it joins get 503 and come back later.")
@click.option("--speaker-timeout", default=StageConfig.silence_timeout_s, show_default=True,
              type=click.FloatRange(min=1), help="Hang up a speaker's connection that sends no audio this long.")
@click.option("--pow", "pow_mode", default=DefenseConfig.pow_mode, show_default=True,
              type=click.Choice(["on", "off", "auto"]),
              help="Proof of work on joins: always, never, or while the detector says attack and for addresses "
                   "or prefixes that join again and again (docs/defense.md).")
@click.option("--pow-bits", default=DefenseConfig.pow_bits, show_default=True, type=click.IntRange(1, 28),
              help="Proof-of-work difficulty at rest, in leading zero bits of SHA-256 (16: about 1 s in a browser).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="CIDR",
              help="An edge whose X-Forwarded-For is believed (repeatable); none by default.")
@click.option("--join-rate", default=DefenseConfig.join_rate_per_s, show_default=True, type=click.FloatRange(min=0.1),
              help="Node-wide budget of fresh joins per second; beyond it 429.")
@click.option("--address-join-rate", default=DefenseConfig.address_rate_per_s, show_default=True,
              type=click.FloatRange(min=0.1), help="Join-endpoint requests per second per client address.")
@click.option("--address-join-burst", default=DefenseConfig.address_burst, show_default=True,
              type=click.IntRange(1), help="... and how many at once after a quiet spell.")
@click.option("--header-timeout", default=HttpConfig.header_read_timeout_s, show_default=True,
              type=click.FloatRange(min=1), help="Seconds a connection may take to send a request head (slowloris); "
                                                "idle keep-alive connections are closed after it too.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None,
              help="Log lines as JSON objects or text (default: JSON unless stderr is a terminal).")
@click.option("--operator-key", envvar="AMPHI_OPERATOR_KEY", default=None,
              help="Key for /dashboard and /metrics [env AMPHI_OPERATOR_KEY; default: made once into "
                   "DATA_DIR/operator_key].")
@click.option("--node-id", default=Config.node_id, show_default=True,
              help="This node's name: in logs and samples; edges route /o/NODE_ID/media/ to it; with --redis, "
                   "its name in the node registry (give every node its own).")
@click.option("--edge", "edges", multiple=True,
              help="Base URL of an edge cache to send listeners to (repeat; round-robin). Default: none, "
                   "this node serves its listeners itself. See docs/edge.md.")
@click.option("--redis", "redis_url", default=None, metavar="URL",
              help="Share Spaces, admission and the node registry with other nodes through this Redis "
                   "(e.g. redis://127.0.0.1:6379/0). All nodes need the same AMPHI_SECRET. See docs/cluster.md.")
@click.option("--segment-parts", default=MediaConfig.parts_per_segment, show_default=True, type=click.IntRange(2, 16),
              help="Parts (0.512 s each) per HLS segment: longer segments, fewer requests for streaming and "
                   "segment players, later starts for players that ignore parts (docs/streaming.md).")
@click.option("--loudness-target", default=SoundConfig.target_lufs, show_default=True,
              type=click.FloatRange(-30, -10), help="Program loudness in LUFS that each speaker is brought towards "
                                                    "(docs/sound.md).")
@click.option("--dead-air", default=SoundConfig.dead_air_s, show_default=True, type=click.FloatRange(2, 3600),
              help="Seconds of dead air in a live Space before its hosts are alerted (a Space may set its own).")
@click.option("--no-sound-guard", is_flag=True, help="Mix speakers as they arrive: no leveler, limiter or "
                                                      "feedback detection (dead-air alerts stay).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, data_dir: Path, public_url: str | None, demo: bool,
          max_listeners: int, admit_rate: float, admit_burst: int, token_ttl: float, seat_grace: float,
          ticket_hold: float, max_waiting: int, speaker_timeout: float, log_format: str | None, operator_key: str | None,
          node_id: str, edges: tuple[str, ...], pow_mode: str, pow_bits: int, trusted_proxies: tuple[str, ...],
          join_rate: float, address_join_rate: float, address_join_burst: int, header_timeout: float,
          redis_url: str | None, segment_parts: int, loudness_target: float, dead_air: float,
          no_sound_guard: bool) -> None:
    """Run a node: API, origin, waiting room, media pipelines, recordings."""
    from amphi.server import serve as run

    configure_logging(log_format, ctx.obj["verbose"])

    admission = AdmissionConfig(max_listeners=max_listeners, min_listeners=min(max_listeners, AdmissionConfig.min_listeners),
                                admit_rate_per_s=admit_rate, admit_burst=admit_burst, token_ttl_s=token_ttl,
                                seat_grace_s=seat_grace, ticket_hold_s=ticket_hold, max_waiting=max_waiting)
    stage = StageConfig(silence_timeout_s=speaker_timeout)
    try:
        parse_networks(trusted_proxies)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--trusted-proxy") from None
    defense = DefenseConfig(pow_mode=pow_mode, pow_bits=pow_bits, trusted_proxies=trusted_proxies,
                            join_rate_per_s=join_rate, address_rate_per_s=address_join_rate,
                            address_burst=address_join_burst)
    if not NODE_ID.match(node_id):
        raise click.BadParameter("1-32 letters, digits, '_' or '-'", param_hint="--node-id")
    cfg = Config(data_dir=data_dir, http=HttpConfig(host=host, port=port, public_url=public_url,
                                                        header_read_timeout_s=header_timeout), demo=demo,
                 admission=admission, stage=stage, node_id=node_id, edges=tuple(e.rstrip("/") for e in edges),
                 operator_key=operator_key or None, defense=defense,
                 cluster=ClusterConfig(redis_url=redis_url),
                 media=MediaConfig(parts_per_segment=segment_parts,
                                   sound=SoundConfig(enabled=not no_sound_guard, target_lufs=loudness_target,
                                                     dead_air_s=dead_air)))
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
def speak(server: str, space_id: str, role: str, key: str | None, token: str | None, path: str | None,
          tone: float | None, loop: bool, duration: float | None, return_to: Path | None, no_reconnect: bool) -> None:
    """Join a Space's stage over WebRTC, send audio in real time and hear the others."""
    from amphi.media.ingest.client import SpeakError, follow_room, speak as once, stay_on_stage
    from amphi.media.ingest.sources import FileTrack, ToneTrack
    from amphi.media.wav import WavWriter

    if (path is None) == (tone is None):
        raise click.UsageError("give exactly one of --file or --tone")
    credential = key if role == "host" else token
    if credential is None:
        raise click.UsageError("--as host needs --key HOST_KEY" if role == "host" else "--as speaker needs --token GRANT")
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
        room = asyncio.ensure_future(follow_room(server, space_id, credential, tell))
        try:
            await run(server.rstrip("/"), space_id, track, key=credential, duration=duration,  # type: ignore[operator]
                      on_connected=connected, on_return=on_return, **extra)
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
    from amphi.obs.report import ReportError, write_report

    try:
        html, png = write_report(data_dir, space_id, out)
    except ReportError as e:
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

from amphi.space_cli import space  # noqa: E402 - Spaces over a node's API (docs/api.md)

main.add_command(space)
