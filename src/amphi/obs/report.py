"""``amphi report SPACE``: what happened in a Space, from its stored timeline
(``<data_dir>/spaces/<id>/timeline.jsonl``, see ``amphi.obs.timeline``) and its state
(``space.json``).

Writes ``report.png`` (five panels on one time axis: audience, arrivals by outcome,
refusals by reason, seat limit and degradation rung, detector state; the lifecycle marked
on each) and ``report.html`` (self-contained: the PNG embedded, a summary and every state
change). Works on a live Space too (a report so far) and on one cut off by a crash.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from amphi.obs.timeline import FILE, Timeline, read

WIDTH_PX, HEIGHT_PX, DPI = 1200, 1100, 100
OUTCOMES = ("admitted", "renewed", "waiting", "refused", "challenged", "ended")
DETECTOR = {"normal": 0, "surge": 1, "attack": 2, "surge+attack": 3}


class ReportError(Exception):
    """No such Space, or nothing recorded for it."""


def write_report(data_dir: Path, space_id: str, out: Path | None = None) -> tuple[Path, Path]:
    """(report.html, report.png) for ``space_id``."""
    space_dir = data_dir / "spaces" / space_id
    meta = space_dir / "space.json"
    if not meta.exists():
        raise ReportError(f"no Space {space_id!r} in {data_dir} (looked for {meta})")
    space = json.loads(meta.read_text())
    timeline = read(space_dir / FILE)
    if not timeline.samples and not timeline.events:
        raise ReportError(f"Space {space_id} has no timeline ({space_dir / FILE} is missing or empty)")
    out = out or space_dir
    out.mkdir(parents=True, exist_ok=True)
    png = out / "report.png"
    png.write_bytes(plot(space, timeline))
    page = out / "report.html"
    page.write_text(render_html(space, timeline, png.read_bytes()))
    return page, png


def _rates(samples: list[dict[str, Any]], key: str) -> tuple[list[float], dict[str, list[float]]]:
    """Per-second rates from the cumulative counts under ``key`` (a dict per sample)."""
    names = sorted({n for s in samples for n in (s.get(key) or {})})
    ts, out = [], {n: [] for n in names}
    for prev, cur in zip(samples, samples[1:], strict=False):
        dt = max(cur["t"] - prev["t"], 1e-3)
        ts.append(cur["t"])
        for n in names:
            out[n].append(max(0.0, ((cur.get(key) or {}).get(n, 0) - (prev.get(key) or {}).get(n, 0)) / dt))
    return ts, out


def totals(samples: list[dict[str, Any]], key: str) -> dict[str, int]:
    return dict((samples[-1].get(key) or {}) if samples else {})


def plot(space: dict[str, Any], tl: Timeline) -> bytes:
    import io

    from amphi.core.extras import pyplot

    plt = pyplot("amphi report")
    import matplotlib.dates as mdates

    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    s = tl.samples
    t = [when(x["t"]) for x in s]
    fig, axes = plt.subplots(5, 1, figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 2, 2, 1.3]})
    fig.suptitle(f"Space {space['id']}: {space['title']}", fontsize=13)
    audience, arrivals, refusals, limits, detector = axes

    audience.plot(t, [x["listeners"] for x in s], label="listeners", color="#d2462f")
    audience.plot(t, [x["waiting"] for x in s], label="waiting", color="#b7791f")
    audience.plot(t, [x.get("peak", 0) for x in s], label="peak", color="#6b645c", linestyle=":")
    audience.set_ylabel("people")

    ts, by_outcome = _rates(s, "joins")
    for name in OUTCOMES:
        if name in by_outcome:
            arrivals.plot([when(x) for x in ts], by_outcome[name], label=name)
    arrivals.set_ylabel("joins / s")

    ts, by_reason = _rates(s, "refusals")
    for name, values in by_reason.items():
        refusals.plot([when(x) for x in ts], values, label=name)
    if not by_reason:
        refusals.text(0.5, 0.5, "no join was refused", transform=refusals.transAxes, ha="center", va="center",
                      color="#6b645c")
    refusals.set_ylabel("refused / s")

    limits.plot(t, [x.get("limit") for x in s], label="seat limit", color="#3b6fb6")
    limits.set_ylabel("seats")
    rung = limits.twinx()
    rung.step(t, [x.get("level", 0) for x in s], where="post", label="degradation rung", color="#8e44ad")
    rung.set_ylim(-0.2, 2.5)
    rung.set_yticks([0, 1, 2])
    rung.set_ylabel("rung")

    det = [DETECTOR.get(x.get("detector")) if x.get("detector") else None for x in s]
    if any(v is not None for v in det):
        detector.step(t, [float("nan") if v is None else v for v in det], where="post", color="#16a085")
    else:
        detector.text(0.5, 0.5, "no detector ran", transform=detector.transAxes, ha="center", va="center",
                      color="#6b645c")
    detector.set_ylim(-0.3, 3.3)
    detector.set_yticks(list(DETECTOR.values()), list(DETECTOR))
    detector.set_ylabel("detector")

    marks = [e for e in tl.events if e.get("kind") in ("space", "degradation", "detector")]
    for ax in axes:
        for e in marks:
            ax.axvline(when(e["t"]), color="#999999" if e["kind"] != "space" else "#333333",
                       linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    for e in marks:
        if e["kind"] == "space":
            audience.annotate(e.get("new", ""), (when(e["t"]), 1.0), xycoords=("data", "axes fraction"),
                              fontsize=8, rotation=90, va="top", ha="right")
    for ax in (audience, arrivals, refusals):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8, ncol=3)
    lines = limits.get_legend_handles_labels()[0] + rung.get_legend_handles_labels()[0]
    limits.legend(lines, [str(ln.get_label()) for ln in lines], loc="upper left", fontsize=8)
    detector.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    detector.set_xlabel("time (UTC)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _iso(t: object) -> str:
    return "" if not isinstance(t, (int, float)) else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def render_html(space: dict[str, Any], tl: Timeline, png: bytes) -> str:
    esc = html.escape
    s = tl.samples
    joins = totals(s, "joins")
    refused = totals(s, "refusals")
    summary = [
        ("Space", f"{space['id']}: {space['title']}"), ("State", space["state"]),
        ("Scheduled for", _iso(space.get("starts_at"))), ("Started", _iso(space.get("started_at"))),
        ("Ended", _iso(space.get("ended_at"))), ("End reason", space.get("end_reason") or ""),
        ("Peak listeners", str(max([space.get("peak_listeners", 0)] + [x.get("peak", 0) for x in s]))),
        ("Admitted", str(s[-1]["admitted_total"] if s else 0)),
        ("Joins by outcome", ", ".join(f"{k} {v}" for k, v in sorted(joins.items())) or "none"),
        ("Refusals by reason", ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"),
        ("Most waiting at once", str(max([x["waiting"] for x in s] or [0]))),
        ("Lowest seat limit", str(min([x.get("limit", 0) for x in s] or [0]))),
        ("Highest degradation rung", str(max([x.get("level", 0) for x in s] or [0]))),
        ("Samples", f"{len(s)} (one a second while scheduled with an audience or live)"
                    + (f"; {tl.skipped} unreadable line(s) skipped" if tl.skipped else "")),
    ]
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary)
    events = "\n".join(
        f'<tr class="{esc(str(e.get("kind")))}"><td>{esc(_iso(e["t"]))}</td><td>{esc(str(e.get("kind")))}</td>'
        f'<td>{esc(str(e.get("msg", "")))}</td></tr>' for e in tl.events)
    img = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Amphi report: {esc(space['title'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1240px; margin: 1rem auto; padding: 0 1rem; color: #1d1b19; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ text-align: left; padding: .25rem .8rem .25rem 0;
vertical-align: top; }} th {{ color: #6b645c; font-weight: normal; }} img {{ max-width: 100%; height: auto; }}
tr.space td {{ font-weight: 600; }}
</style></head><body>
<h1>{esc(space['title'])}</h1>
<table class="summary">{rows}</table>
<img src="data:image/png;base64,{img}" alt="timeline of Space {esc(space['id'])}" width="{WIDTH_PX}">
<h2>State changes</h2>
<table class="events"><thead><tr><th>time (UTC)</th><th>kind</th><th>what</th></tr></thead>
<tbody>
{events}
</tbody></table>
</body></html>
"""
