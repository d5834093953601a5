"""What a load test prints, writes and plots, from the result ``run.run`` returns."""

from __future__ import annotations

import json
from pathlib import Path


def _s(v: object, unit: str = " s") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}" if unit == " s" else f"{v:.1f}{unit}"
    return f"{v}{unit}"


def summary_table(r: dict[str, object]) -> str:
    rows = [
        ("listeners (sessions)", f"{r['listeners']} ({r['sessions']}), profile {r['profile']}, "
                                 f"{r['protocol']}/{r['player']}"),
        ("admitted / with audio", f"{r['admitted']} / {r['with_audio']}"),
        ("waited in line / seated from it / max waiting / still waiting",
         f"{r['waited']} / {r['admitted_from_line']} / {r['waiting_max']} / {r['waiting_end']}"),
        ("failed / never answered", f"{r['failed']} / {r['never_answered']}"),
        ("join answer p50 / p99 / max", f"{_s(r['join_p50_s'])} / {_s(r['join_p99_s'])} / {_s(r['join_max_s'])}"),
        ("arrival -> seat p99", _s(r["admit_wait_p99_s"])),
        ("first audio p50 / p99", f"{_s(r['first_audio_p50_s'])} / {_s(r['first_audio_p99_s'])}"),
        ("stalled listeners / stalls / stalled seconds",
         f"{r['stalled_listeners']} / {r['stalls']} / {r['stall_seconds_total']}"),
        ("longest gap a listener heard p50 / p99 / max; re-joins",
         f"{_s(r.get('gap_p50_s'))} / {_s(r.get('gap_p99_s'))} / {_s(r.get('gap_max_s'))}; {r.get('rejoins', 0)}"),
        ("stream: between parts p50 / p99, across a segment boundary p50 / p99",
         f"{_s(r.get('part_gap_p50_s'))} / {_s(r.get('part_gap_p99_s'))}, {_s(r.get('segment_gap_p50_s'))} / "
         f"{_s(r.get('segment_gap_p99_s'))}"),
        ("latency behind live p50 / p95 / p99", f"{_s(r['latency_p50_s'])} / {_s(r.get('latency_p95_s'))} / "
                                                f"{_s(r['latency_p99_s'])}"),
        ("requests (avg rate)", f"{r['requests_total']} ({r['request_rate_avg']}/s)"),
        ("requests per listener per second, after the ramp",
         "-" if r.get("requests_per_listener_s") is None else f"{r['requests_per_listener_s']:.3f}"),
        ("errors by kind", ", ".join(f"{k} {v}" for k, v in sorted(r["errors_by_kind"].items())) or "none"),  # type: ignore[union-attr]
        ("generator CPU (% of one core)", f"{r['generator_cpu_pct']} over {r['generator_procs']} process(es) "
                                          f"{r['generator_proc_cpu_pct']}, loop lag p99 "
                                          f"{_s(r['generator_loop_lag_p99_s'])}"),
        ("server CPU (% of one core) / RSS max", f"{_s(r['server_cpu_pct'], ' %')} / {_s(r['server_rss_mb_max'], ' MB')}"
                                                 + (f" (pid {r['server_pid']})" if r["server_pid"] else " (not local)")),
        ("kernel softirq (loopback TCP) / other processes' CPU", f"{_s(r.get('softirq_cpu_pct'), ' %')} / "
                                                                 f"{_s(r.get('other_processes_cpu_pct'), ' %')}"),
    ]
    if r.get("pow_solved"):
        rows.append(("proof-of-work challenges solved (seconds)", f"{r['pow_solved']} ({r['pow_s_total']} s)"))
    atk = r.get("attack")
    if isinstance(atk, dict):
        rows.append((f"attack {atk['kind']} ({atk['rate']:g}/s, {atk['sources']} addresses)",
                     f"sent {atk['sent']}, refused {atk['refused']}, accepted {atk['accepted']}, answer p99 "
                     f"{_s(atk['answer_p99_s'])}"))
        rows.append(("attack refusals by error", ", ".join(f"{k} {v}" for k, v in sorted(atk["by_error"].items()))
                     or "none"))
        if atk["kind"] == "slowloris":
            rows.append(("slowloris sockets opened / cut off / open at most / held p50",
                         f"{atk['opened']} / {atk['cut_off']} / {atk['open_max']} / {_s(atk['held_p50_s'])}"))
        if atk["transport_errors"]:
            rows.append(("attack transport errors", ", ".join(f"{k} {v}" for k, v in atk["transport_errors"].items())))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    for w in r["warnings"]:  # type: ignore[union-attr]
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def write_json(r: dict[str, object], path: str | Path) -> None:
    Path(path).write_text(json.dumps(r, indent=1, default=str))


def plot(r: dict[str, object], path: str | Path, title: str | None = None) -> None:
    """Five panels over time: listeners (playing, waiting, failed), request rate, stalls,
    join answer p50/p99 and first-audio p50/p99 per second, and CPU."""
    from amphi.core.extras import pyplot

    plt = pyplot("amphi loadtest --plot")

    tl = r["timeline"]
    assert isinstance(tl, list)
    t = [row["t"] for row in tl]

    def col(key: str) -> list[float]:
        return [float("nan") if row.get(key) is None else row[key] for row in tl]

    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    (a1, a2), (a3, a4), (a5, a6) = axes
    a1.plot(t, col("playing"), label="playing", color="#55a868")
    a1.plot(t, col("waiting"), label="waiting", color="#4c72b0")
    a1.plot(t, col("failed"), label="failed", color="#c44e52")
    a1.set_title("listeners")
    a1.legend(fontsize=8)
    a2.plot(t, col("request_rate"), color="#8172b2")
    a2.set_title("requests per second")
    a3.plot(t, col("stalls"), label="stall episodes (cumulative)", color="#c44e52")
    a3.plot(t, col("stalled_now"), label="stalled now", color="#dd8452")
    a3.set_title("stalls")
    a3.legend(fontsize=8)
    a4.plot(t, col("join_p50_s"), label="join p50", color="#4c72b0", marker=".")
    a4.plot(t, col("join_p99_s"), label="join p99", color="#4c72b0", linestyle="--", marker=".")
    a4.set_title("join answer time, per second (s)")
    a4.legend(fontsize=8)
    a5.plot(t, col("first_audio_p50_s"), label="first audio p50", color="#55a868", marker=".")
    a5.plot(t, col("first_audio_p99_s"), label="first audio p99", color="#55a868", linestyle="--", marker=".")
    a5.set_title("first audio after admission, per second (s)")
    a5.legend(fontsize=8)
    a6.plot(t, col("generator_cpu_pct"), label="generator", color="#937860")
    if any(row.get("server_cpu_pct") is not None for row in tl):
        a6.plot(t, col("server_cpu_pct"), label="server", color="#da8bc3")
    a6.set_title("CPU, % of one core")
    a6.legend(fontsize=8)
    for ax in (a5, a6):
        ax.set_xlabel("seconds from T0")
    fig.suptitle(title or f"amphi loadtest: {r['listeners']} listeners, {r['profile']}, {r['protocol']}/{r['player']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
