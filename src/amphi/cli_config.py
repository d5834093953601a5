"""The CLI side of settings (docs/config.md): ``--config FILE`` and serve's flags, one table of
flag -> setting path, and ``amphi config show|example``. The settings themselves, their types and
their checks are ``amphi.core.settings``; here are only the file, the environment and click."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from amphi.core import settings
from amphi.core.config import Config
from amphi.core.settings import BOUNDS, CHOICES, Given, SettingsError


@dataclass(frozen=True)
class Flag:
    """An ``amphi serve`` flag: the setting it gives. Its click type, default (shown in --help) and
    limits come from the setting; given, it overrides the file and the environment."""

    decl: str  # "--max-listeners"
    path: str  # "admission.max_listeners"
    help: str = ""
    metavar: str | None = None
    invert: bool = False  # a --no-X switch: given, the (boolean) setting is false

    @property
    def name(self) -> str:
        return "flag_" + self.decl.lstrip("-").replace("-", "_")


FLAGS = (
    Flag("--host", "http.host", "Address to bind."),
    Flag("--port", "http.port", "Port to bind (0: any free one)."),
    Flag("--data-dir", "data_dir", "Recordings and Space state live here."),
    Flag("--public-url", "http.public_url", "Base URL handed to clients (default http://HOST:PORT, https:// with --tls-cert)."),
    Flag("--tls-cert", "http.tls_cert", "PEM certificate chain: serve https (browsers grant the microphone only to "
         "https origins, or localhost). With --tls-key; SIGHUP reads both again (a renewal). See docs/tls.md.", "FILE"),
    Flag("--tls-key", "http.tls_key", "PEM private key of --tls-cert.", "FILE"),
    Flag("--demo", "demo", "Create a live demo Space with a built-in speaker."),
    Flag("--max-listeners", "admission.max_listeners",
         "Seat ceiling of this node; the adaptive limit stays at or below it."),
    Flag("--admit-rate", "admission.admit_rate_per_s", "New listeners seated per second (GCRA)."),
    Flag("--admit-burst", "admission.admit_burst", "Seats that may be given at once after a quiet spell."),
    Flag("--token-ttl", "admission.token_ttl_s", "Admission token lifetime in seconds; clients renew at half of it."),
    Flag("--seat-grace", "admission.seat_grace_s",
         "Seconds a seat outlives its last token before it is given to someone else."),
    Flag("--ticket-hold", "admission.ticket_hold_s",
         "Seconds a seat offered to a place in line is held for its ticket (a place is held until its turn)."),
    Flag("--max-waiting", "admission.max_waiting",
         "Places in the waiting line, node-wide; beyond it joins get 503 and come back later."),
    Flag("--speaker-timeout", "stage.silence_timeout_s",
         "Hang up a speaker's connection that sends no audio this long."),
    Flag("--pow", "defense.pow_mode",
         "Proof of work on joins: always, never, or while the detector says attack and for addresses "
         "or prefixes that join again and again (docs/defense.md)."),
    Flag("--pow-bits", "defense.pow_bits",
         "Proof-of-work difficulty at rest, in leading zero bits of SHA-256 (16: about 1 s in a browser)."),
    Flag("--trusted-proxy", "defense.trusted_proxies",
         "An edge whose X-Forwarded-For is believed (repeatable); none by default.", "CIDR"),
    Flag("--join-rate", "defense.join_rate_per_s", "Node-wide budget of fresh joins per second; beyond it 429."),
    Flag("--address-join-rate", "defense.address_rate_per_s", "Join-endpoint requests per second per client address."),
    Flag("--address-join-burst", "defense.address_burst", "... and how many at once after a quiet spell."),
    Flag("--header-timeout", "http.header_read_timeout_s",
         "Seconds a connection may take to send a request head (slowloris); idle keep-alive connections are "
         "closed after it too."),
    Flag("--operator-key", "operator_key",
         "Key for /dashboard and /metrics [env AMPHI_OPERATOR_KEY; default: made once into DATA_DIR/operator_key]."),
    Flag("--node-id", "node_id",
         "This node's name: in logs and samples; edges route /o/NODE_ID/media/ to it; with --redis, "
         "its name in the node registry (give every node its own)."),
    Flag("--edge", "edges", "Base URL of an edge cache to send listeners to (repeat; round-robin). Default: none, "
         "this node serves its listeners itself. See docs/edge.md."),
    Flag("--redis", "cluster.redis_url",
         "Share Spaces, admission and the node registry with other nodes through this Redis "
         "(e.g. redis://127.0.0.1:6379/0). All nodes need the same AMPHI_SECRET. See docs/cluster.md.", "URL"),
    Flag("--segment-parts", "media.parts_per_segment",
         "Parts (0.512 s each) per HLS segment: longer segments, fewer requests for streaming and "
         "segment players, later starts for players that ignore parts (docs/streaming.md)."),
    Flag("--loudness-target", "media.sound.target_lufs",
         "Program loudness in LUFS that each speaker is brought towards (docs/sound.md)."),
    Flag("--dead-air", "media.sound.dead_air_s",
         "Seconds of dead air in a live Space before its hosts are alerted (a Space may set its own)."),
    Flag("--no-sound-guard", "media.sound.enabled",
         "Mix speakers as they arrive: no leveler, limiter or feedback detection (dead-air alerts stay).",
         invert=True),
    Flag("--key-rate", "keys.rate_per_s", "Requests per second one API key may make (creates, starts, ends; "
         "docs/keys.md) ..."),
    Flag("--key-burst", "keys.burst", "... and how many at once after a quiet spell; beyond it 429."),
    Flag("--ice-address", "ice.addresses",
         "Address the node offers to speakers' WebRTC (an IP literal; repeatable). Default: --host if it is an "
         "address other than 0.0.0.0 or ::, else 127.0.0.1. It must be on one of this host's interfaces; behind "
         "NAT, see --ice-announce and --turn (docs/deploying.md).", "IP"),
    Flag("--ice-announce", "ice.announced",
         "Behind 1:1 NAT: the public address to offer in place of each --ice-address, in the same order "
         "(repeatable; the NAT must map it to the private one, port for port).", "IP"),
    Flag("--stun", "ice.stun", "A STUN server for speakers' clients, stun:host:port (repeatable).", "URL"),
    Flag("--turn", "ice.turn", "A TURN server, turn:host:port?transport=udp|tcp or turns:... (repeatable; "
         "needs --turn-secret).", "URL"),
    Flag("--turn-secret", "ice.turn_secret", "The TURN server's static-auth-secret (TURN REST credentials) [env AMPHI_TURN_SECRET]."),
    Flag("--turn-ttl", "ice.turn_ttl_s", "Seconds an ephemeral TURN credential lives."),
)

F = TypeVar("F", bound=Callable[..., Any])


def _click_type(path: str, hint: Any) -> Any:
    inner, _ = settings._unwrap(hint)
    element = settings._element(inner)
    if element is not None:
        inner = element
    if path in CHOICES:
        return click.Choice(CHOICES[path])
    lo, hi = BOUNDS.get(path, (None, None))
    if inner is int:
        return click.IntRange(lo, hi) if path in BOUNDS else int  # type: ignore[arg-type]
    if inner is float:
        return click.FloatRange(lo, hi) if path in BOUNDS else float
    if inner is Path:
        return click.Path(path_type=Path)
    return str


def _option(flag: Flag) -> Callable[[F], F]:
    s = settings.settings()[flag.path]
    if flag.invert or s.hint is bool:
        return click.option(flag.decl, flag.name, is_flag=True, help=flag.help)
    multiple = settings._element(settings._unwrap(s.hint)[0]) is not None
    default = None if s.computed or s.path in settings.SECRETS else s.default
    return click.option(flag.decl, flag.name, type=_click_type(flag.path, s.hint), default=default,
                        show_default=default is not None and default != (), multiple=multiple,
                        metavar=flag.metavar, help=flag.help)


def setting_options(f: F) -> F:
    """``--config FILE`` and every flag of ``FLAGS`` (for serve, and config show)."""
    for flag in reversed(FLAGS):
        f = _option(flag)(f)
    return click.option("--config", "config_file", default=None, envvar="AMPHI_CONFIG", metavar="FILE",
                        type=click.Path(path_type=Path, dir_okay=False),
                        help="A TOML file of settings (docs/config.md; amphi.example.toml) [env AMPHI_CONFIG]. "
                             "AMPHI_* variables override it, flags override both.")(f)


def from_flags(ctx: click.Context) -> dict[str, Given]:
    """The settings of the flags the user gave (not their defaults)."""
    out = {}
    for flag in FLAGS:
        if ctx.get_parameter_source(flag.name) is ParameterSource.COMMANDLINE:
            value = ctx.params[flag.name]
            out[flag.path] = Given(not value if flag.invert else value, flag.decl)
    return out


def effective_config(ctx: click.Context, environ: Mapping[str, str] | None = None) -> Config:
    """The Config of the file, the environment and the flags given to this command."""
    path: Path | None = ctx.params.get("config_file")
    try:
        layers = []
        if path is not None:
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise SettingsError(f"--config {path}: {getattr(e, 'strerror', None) or e}") from None
            layers.append(settings.from_file(text, str(path)))
        layers.append(settings.from_env(os.environ if environ is None else environ))
        layers.append(from_flags(ctx))
        return settings.build(*layers)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None


@click.group("config")
def config() -> None:
    """The node's configuration: file, environment, flags (docs/config.md)."""


@config.command()
@setting_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.pass_context
def show(ctx: click.Context, as_json: bool, **_: Any) -> None:
    """Print the configuration `amphi serve` would run with these settings (the file, AMPHI_*
    variables and the same flags), as TOML that --config takes back. Secrets are not printed."""
    cfg = effective_config(ctx)
    if as_json:
        click.echo(json.dumps(settings.to_json(cfg), indent=2))
    else:
        click.echo(settings.to_toml(cfg), nl=False)


@config.command()
def example() -> None:
    """Print every setting at its default, commented (amphi.example.toml)."""
    click.echo(settings.example(), nl=False)
