"""``amphi loadtest``: real HTTP listeners against a server, and what each one experienced."""

from __future__ import annotations

import sys

import click

from amphi.loadtest.attack import ATTACKS, AttackPlan
from amphi.loadtest.profiles import PROFILES


@click.command()
@click.option("--server", required=True,
              help="Amphi base URL (http://127.0.0.1:8000); for --protocol hls the playlist URL, for icecast the mount URL.")
@click.option("--space", default="", help="Space id (--protocol amphi).")
@click.option("--listeners", required=True, type=click.IntRange(0),
              help="Audience size (places, for churn); 0 for an attack alone.")
@click.option("--profile", default="ramp", show_default=True, type=click.Choice(PROFILES),
              help="Arrival schedule: ramp, surge, poisson, churn or reconnect (see docs/loadtest.md).")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds from T0 to the end of the run.")
@click.option("--ramp", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds over which listeners arrive (surge: the window around T0).")
@click.option("--procs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Generator processes; each runs a share of the listeners.")
@click.option("--cpus", default=None,
              help="Run the generator on these CPUs only (1, 1,3 or 2-3); pin the server to the others "
                   "(taskset) so that the two do not compete.")
@click.option("--protocol", default="amphi", show_default=True, type=click.Choice(["amphi", "hls", "icecast"]),
              help="amphi: join + token + LL-HLS; hls: a plain playlist URL; icecast: one endless GET.")
@click.option("--player", default="ll", show_default=True, type=click.Choice(["ll", "segments", "stream"]),
              help="ll: parts with blocking reload (hls.js low-latency); segments: whole segments only; stream: "
                   "one GET per segment, read part by part as the origin streams it (docs/loadtest.md).")
@click.option("--admission", "admission", default="line", show_default=True, type=click.Choice(["line", "polls"]),
              help="amphi: line: wait by the line document and keep the seat by playlist reloads (docs/admission.md); "
                   "polls: as the first wave's clients did (ticket polls, API renewals), to compare the two.")
@click.option("--stay", default=None, type=click.FloatRange(min=0.1), help="churn: mean seconds a session stays.")
@click.option("--drop-at", default=None, type=click.FloatRange(min=0), help="reconnect: when every connection drops (s).")
@click.option("--stream-kbps", default=64.0, show_default=True, type=click.FloatRange(min=1),
              help="icecast: the mount's bitrate, to turn bytes into seconds of audio.")
@click.option("--server-pid", default=None, type=int, help="Server process to measure (default: found by port when local).")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the schedule and the jitter.")
@click.option("--attack", default=None, type=click.Choice(ATTACKS),
              help="Mix attackers in, from many source addresses on 127.0.0.0/8 (see docs/defense.md).")
@click.option("--attack-rate", default=100.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Attack requests per second (slowloris: new sockets per second).")
@click.option("--attack-start", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds after T0 the attack begins.")
@click.option("--attack-duration", default=None, type=click.FloatRange(min=0.1),
              help="Seconds the attack lasts (default: to the end of the run).")
@click.option("--attack-sources", default=64, show_default=True, type=click.IntRange(1, 1000),
              help="Distinct attacker addresses (spread over four /24s of 127.200.0.0/16).")
@click.option("--attack-connections", default=5000, show_default=True, type=click.IntRange(1, 50_000),
              help="slowloris: sockets held open at once at most.")
@click.option("--ca-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Trust https servers (the node, its edges) only if this CA (PEM) signed them; default: the "
                   "system's store, or $SSL_CERT_FILE.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the result as JSON.")
@click.option("--plot", "plot_out", default=None, type=click.Path(dir_okay=False), help="Write a PNG plot over time.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def loadtest(server: str, space: str, listeners: int, profile: str, duration: float, ramp: float, procs: int,
             cpus: str | None, protocol: str, player: str, admission: str, stay: float | None, drop_at: float | None, stream_kbps: float,
             server_pid: int | None, seed: int, attack: str | None, attack_rate: float, attack_start: float,
             attack_duration: float | None, attack_sources: int, attack_connections: int, ca_file: str | None,
             json_out: str | None,
             plot_out: str | None, quiet: bool) -> None:
    """Drive real HTTP listeners that behave like players, and report what each experienced."""
    from amphi.core.extras import MissingExtra, need_plots
    from amphi.loadtest import report
    from amphi.loadtest.run import RunOptions, parse_cpus, run
    from amphi.loadtest.swarm import LoadConfig

    if protocol == "amphi" and not space:
        raise click.UsageError("--space is required with --protocol amphi")
    if ramp >= duration:
        raise click.UsageError("--ramp must be shorter than --duration")
    if not server.startswith(("http://", "https://")):
        raise click.UsageError("--server must be an http:// or https:// URL")
    if plot_out:
        try:
            need_plots("amphi loadtest --plot")
        except MissingExtra as e:
            raise click.UsageError(str(e)) from None
    cfg = LoadConfig(server=server.rstrip("/") if protocol == "amphi" else server, space=space, protocol=protocol,
                     player=player, duration_s=duration, stream_kbps=stream_kbps, seed=seed, admission=admission,
                     ca_file=ca_file)
    plan = None
    if attack:
        if protocol != "amphi":
            raise click.UsageError("--attack needs --protocol amphi")
        if not server.startswith("http://"):
            raise click.UsageError("--attack needs an http:// server (the attackers speak no TLS)")
        if attack_start + (attack_duration or 0) > duration:
            raise click.UsageError("the attack must end by the end of the run (--attack-start + --attack-duration)")
        try:
            plan = AttackPlan(attack, server.rstrip("/"), space, attack_rate, attack_start,
                              attack_duration or duration - attack_start, attack_sources, attack_connections, seed)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    elif listeners == 0:
        raise click.UsageError("--listeners 0 needs --attack")
    try:
        cpu_set = parse_cpus(cpus) if cpus else ()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    opts = RunOptions(cfg=cfg, listeners=listeners, profile=profile, ramp_s=ramp, procs=procs, stay_s=stay,
                      drop_at_s=drop_at, server_pid=server_pid, attack=plan, cpus=cpu_set)
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        if not quiet:
            click.echo(("\r\x1b[K" + line) if tty else line, err=True, nl=not tty)

    click.echo(f"amphi loadtest: {listeners} listeners, profile {profile}, {duration:g} s, {procs} process(es)",
               err=True)
    try:
        result = run(opts, progress)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if tty and not quiet:
        click.echo("", err=True)
    click.echo(report.summary_table(result))
    if json_out:
        report.write_json(result, json_out)
        click.echo(f"wrote {json_out}")
    if plot_out:
        report.plot(result, plot_out)
        click.echo(f"wrote {plot_out}")
