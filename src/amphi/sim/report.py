"""What ``amphi simulate`` prints, writes and plots, from the result ``Simulation.run`` returns."""

from __future__ import annotations

import json
from pathlib import Path


def _n(v: object) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if isinstance(v, float) else str(v)


def _s(v: object) -> str:
    if v is None:
        return "-"
    v = float(v)  # type: ignore[arg-type]
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def summary(r: dict[str, object], title: str | None = None) -> str:
    cfg = r["config"]
    plan = r["plan"]
    assert isinstance(cfg, dict) and isinstance(plan, dict)
    adm = cfg["admission"]
    seats = cfg["max_listeners"] if cfg["max_listeners"] is not None else adm["max_listeners"] * cfg["api_nodes"]
    lines = [title] if title else []
    rows = [
        ("listeners, arrivals", f"{_n(r['listeners'])}, {cfg['arrival']} over {_s(cfg['arrival_s'])}, then "
                                f"{_s(cfg['listen_s'])} of listening"),
        ("topology", f"{cfg['api_nodes']} API node(s) at {adm['admit_rate_per_s']:g} seats/s each, {_n(seats)} seats; "
                     + (f"{cfg['edges']} edges x {_n(cfg['edge_capacity'])} listeners" if cfg["edges"] else "no edges (nodes serve media)")),
        ("admitted / playing at the end", f"{_n(r['admitted'])} / {_n(r['playing_end'])}"),
        ("waiting: peak / at the end", f"{_n(r['waiting_max'])} / {_n(r['waiting_end'])}"),
        ("gave up / left", f"{_n(r['failed'])} / {_n(r['left'])}"),
        ("join answer p50 / p99", f"{_s(r['join_p50_s'])} / {_s(r['join_p99_s'])}"),
        ("arrival -> seat p50 / p99 / max", f"{_s(r['wait_p50_s'])} / {_s(r['wait_p99_s'])} / {_s(r['wait_max_s'])}"),
        ("stalls (listener-seconds, peak listeners)", f"{_n(r['stall_listener_s'])}, {_n(r['stalled_peak'])}"),
        ("degradation level reached", str(r["degradation_level_max"])),
        ("plan: edges for zero stalls at the peak", f"{plan['edges_for_zero_stalls']} ({plan['edges_to_survive_one_loss']} to "
                                                     f"survive losing one), peak {_n(r['peak_listeners'])} listeners"),
        ("plan: origin requests/s", f"{_n(plan['origin_rps'])} with {plan['edges_to_survive_one_loss']} edges"
                                    + (f" ({_n(plan['origin_rps_with_given_edges'])} with {cfg['edges']})" if cfg["edges"] else "")),
        ("plan: control plane", f"peak {_n(plan['api_rps_peak'])} requests/s, {_n(plan['joins_per_s_peak'])} joins/s decided"
                                + (" (in the edges' batches)" if cfg["edges"] else "")
                                + f", {_n(plan['seats_per_s_peak'])} seats/s: "
                                f"{plan['api_nodes_needed']} API node(s) at {adm['max_loop_cpu']:.0%} busy"),
    ]
    loss = r.get("edge_loss")
    if isinstance(loss, dict):
        rows.append(("edge lost", f"at {_s(loss['at_s'])}: {_n(loss['listeners_moved'])} listeners moved to "
                                  f"{loss['edges_left']} edges, all back within {_s(loss['back_by_s'])}; "
                                  f"{_n(loss['gap_stall_listener_s'])} listener-s of silence beyond their "
                                  f"{_s(loss['buffer_s'])} buffers, {_n(loss['stall_listener_s'])} listener-s stalled after"))
    rows.append(("resolution", f"{_n(r['simulated_clients'])} simulated clients per node, each {r['scale']} listener(s); "
                               f"counts x {r['real_per_simulated']}"))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += [f"  warning: {w}" for w in r["warnings"]]  # type: ignore[union-attr]
    return "\n".join(lines)


def write_json(r: dict[str, object], path: str | Path) -> None:
    Path(path).write_text(json.dumps(r, indent=1, default=str))


def plot(r: dict[str, object], path: str | Path, title: str | None = None) -> None:
    """Four panels over time: listeners (arrived, playing, waiting, gave up); seats given per
    second; control-plane requests and joins decided, origin and line-document requests per
    second; stalled listeners and live edges."""
    from amphi.core.extras import pyplot

    plt = pyplot("amphi simulate --plot")

    tl = r["timeline"]
    assert isinstance(tl, list)
    t = [row["t"] / 60 for row in tl]

    def col(key: str) -> list[float]:
        return [row[key] for row in tl]

    fig, ((a1, a2), (a3, a4)) = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    a1.plot(t, col("arrived"), label="arrived", color="#999999", linestyle=":")
    a1.plot(t, col("playing"), label="playing (admitted)", color="#55a868")
    a1.plot(t, col("waiting"), label="waiting", color="#4c72b0")
    a1.plot(t, col("failed"), label="gave up", color="#c44e52")
    a1.set_title("listeners")
    a1.legend(fontsize=8)
    a2.plot(t, col("seats_per_s"), color="#55a868")
    a2.set_title("seats given per second")
    edges = bool(r["config"]["edges"])  # type: ignore[index]
    a3.plot(t, col("api_rps"), label="control plane requests (" + ("join batches, leaves, renewal reports)" if edges
                                                                   else "joins, leaves, renewals)"), color="#8172b2")
    if any(row.get("joins_per_s") for row in tl):
        a3.plot(t, [row.get("joins_per_s", 0) for row in tl], label="joins decided by the nodes", color="#8172b2",
                linestyle=":")
    a3.plot(t, col("origin_rps"), label="origin", color="#dd8452")
    if any(row.get("line_rps") for row in tl):
        a3.plot(t, [row.get("line_rps", 0) for row in tl], label="line document reads (at the edges)",
                color="#64b5cd", linestyle="--")
    a3.set_yscale("symlog")
    a3.set_ylim(top=300 * max(1.0, a3.get_ylim()[1]))  # room above the curves for the legend
    a3.set_title("requests per second")
    a3.legend(fontsize=7, loc="upper right")
    a4.plot(t, col("stalled_now"), label="stalled listeners", color="#c44e52")
    a4.set_title("stalled listeners")
    if any(row["edges_alive"] for row in tl):
        ax = a4.twinx()
        ax.plot(t, col("edges_alive"), color="#937860", linestyle="--", label="edges alive")
        ax.set_ylabel("edges alive")
        ax.set_ylim(0, 1.15 * max(col("edges_alive")))
    for ax in (a3, a4):
        ax.set_xlabel("minutes from T0")
    fig.suptitle(title or f"amphi simulate: {r['listeners']:,} listeners")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
