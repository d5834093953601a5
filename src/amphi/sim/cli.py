"""``amphi simulate``: a whole night on a virtual clock, with the production admission code."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import click

from amphi.sim.model import ARRIVALS, PLAYERS

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|min|h)?$")


def parse_duration(text: str, what: str) -> float:
    """"600", "600s", "10m", "1.5h" -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise click.BadParameter(f"{text!r} is not a duration like 600s, 10m or 1h", param_hint=what)
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def parse_arrival(text: str) -> tuple[str, float]:
    """"surge:600s" -> ("surge", 600.0)."""
    kind, _, window = text.partition(":")
    if kind not in ARRIVALS or not window:
        raise click.BadParameter(f"{text!r}: give KIND:WINDOW, KIND one of {', '.join(ARRIVALS)} (e.g. surge:600s)",
                                 param_hint="--arrival")
    return kind, parse_duration(window, "--arrival")


@click.command()
@click.option("--scenario", default=None, metavar="NAME|FILE.toml",
              help="Start from a shipped scenario (may-2023-launch, aug-2024-interview, 8m-test) or a TOML file.")
@click.option("--calibrate", default=None, type=click.Path(exists=True, dir_okay=False), metavar="LOADTEST.json",
              help="Take the node's settings, costs and the arrivals from an `amphi loadtest --json` run.")
@click.option("--listeners", default=None, type=click.IntRange(1), help="Listeners arriving, all nodes together.")
@click.option("--arrival", default=None, metavar="KIND:WINDOW", help="surge:600s (a scheduled start), ramp:10m, poisson:1h.")
@click.option("--listen", default=None, metavar="DURATION", help="Simulated time after the arrival window [1h].")
@click.option("--stay", default=None, metavar="DURATION", help="Mean listening time (exponential) [to the end].")
@click.option("--api-nodes", default=None, type=click.IntRange(1), help="API nodes sharing the joins [1].")
@click.option("--max-listeners", default=None, type=click.IntRange(1), help="Seats in all, shared out among the API nodes.")
@click.option("--admit-rate", default=None, type=click.FloatRange(min=0.1), help="Seats per second per API node [500].")
@click.option("--edges", default=None, type=click.IntRange(0), help="Edge caches serving the media (0: the nodes do) [0].")
@click.option("--edge-capacity", default=None, type=click.IntRange(1), help="Listeners one edge serves [10000].")
@click.option("--edge-rps", default=None, type=click.FloatRange(min=1), help="Requests per second one edge serves.")
@click.option("--player", default=None, type=click.Choice(PLAYERS), help="ll (parts) or segments [ll].")
@click.option("--fail-edge-at", default=None, type=click.FloatRange(min=0), metavar="MIN",
              help="Lose the fullest edge at this minute.")
@click.option("--request-cost", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="API node time per request [0.0002, or measured with --calibrate].")
@click.option("--join-cost", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="API node time per join in an edge's batch, on top of --request-cost per batch [0.00005].")
@click.option("--max-clients", default=None, type=click.IntRange(1), help="Simulated clients per node at most [20000].")
@click.option("--seed", default=None, type=int, help="Seed of arrivals and jitter [1].")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the result as JSON.")
@click.option("--plot", "plot_out", default=None, type=click.Path(dir_okay=False), help="Write a PNG plot over time.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def simulate(scenario: str | None, calibrate: str | None, listeners: int | None, arrival: str | None,
             listen: str | None, stay: str | None, api_nodes: int | None, max_listeners: int | None,
             admit_rate: float | None, edges: int | None, edge_capacity: int | None, edge_rps: float | None,
             player: str | None, fail_edge_at: float | None, request_cost: float | None, join_cost: float | None,
             max_clients: int | None,
             seed: int | None, json_out: str | None, plot_out: str | None, quiet: bool) -> None:
    """Plan a night: arrivals, retries, the waiting room, edges and origin on a virtual clock,
    admission decided by Amphi's own code (docs/simulate.md)."""
    from amphi.core.extras import MissingExtra, need_plots
    from amphi.sim import report
    from amphi.sim.model import SimError, Simulation
    from amphi.sim.scenario import build, calibrate as from_loadtest, load_scenario

    given: dict[str, Any] = {"listeners": listeners, "api_nodes": api_nodes, "max_listeners": max_listeners,
                             "edges": edges, "edge_capacity": edge_capacity, "edge_rps": edge_rps, "player": player,
                             "request_cost_s": request_cost, "join_cost_s": join_cost, "max_clients": max_clients,
                             "seed": seed}
    if arrival is not None:
        given["arrival"], given["arrival_s"] = parse_arrival(arrival)
    if listen is not None:
        given["listen_s"] = parse_duration(listen, "--listen")
    if stay is not None:
        given["stay_s"] = parse_duration(stay, "--stay")
    if fail_edge_at is not None:
        given["fail_edge_at_s"] = fail_edge_at * 60
    if admit_rate is not None:
        given["admission"] = {"admit_rate_per_s": admit_rate}
    try:
        base = load_scenario(scenario) if scenario else {}
        measured = from_loadtest(calibrate) if calibrate else {}
        cfg = build(base, measured, given)
    except SimError as e:
        raise click.UsageError(e.message) from None
    if plot_out:
        try:
            need_plots("amphi simulate --plot")
        except MissingExtra as e:
            raise click.UsageError(str(e)) from None
    about = base.get("about", {})
    title = about.get("title") or f"amphi simulate: {cfg.listeners:,} listeners"
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        if not quiet:
            click.echo(("\r\x1b[K" + line) if tty else line, err=True, nl=not tty)

    started = time.perf_counter()
    result = Simulation(cfg, progress).run()
    elapsed = time.perf_counter() - started
    result["about"] = about
    result["elapsed_s"] = round(elapsed, 2)
    if tty and not quiet:
        click.echo("", err=True)
    click.echo(report.summary(result, title))
    click.echo(f"  simulated {cfg.horizon_s / 60:.0f} min in {elapsed:.1f} s of wall time")
    if json_out:
        report.write_json(result, json_out)
        click.echo(f"wrote {json_out}")
    if plot_out:
        report.plot(result, plot_out, title)
        click.echo(f"wrote {plot_out}")
