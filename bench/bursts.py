"""What the latency benches share: tone bursts a speaker sends (with the wall time each
onset went to aiortc), their command-line options, and the distribution panel of their plots."""

from __future__ import annotations

import argparse

import numpy as np

from harness import small_mode

from amphi.core.config import SAMPLE_RATE
from amphi.media.ingest.sources import FRAME_SAMPLES

TAIL_S = 1.0  # silence after the last burst before the track ends


class Bursts:
    """``count`` bursts of a ``hz`` tone, ``burst_s`` long, one every ``period_s``, the first
    ``lead_in_s`` after the track is armed (at once, unless ``armed=False``; then silence
    until ``arm()``): the render function and ``on_frame`` hook of a ``GeneratedTrack``."""

    def __init__(self, count: int, period_s: float, burst_s: float, hz: float, *, lead_in_s: float,
                 armed: bool = True, level: float = 0.5) -> None:
        self.count = count
        self.period = round(period_s * SAMPLE_RATE)
        self.length = round(burst_s * SAMPLE_RATE)
        self.lead_in = round(lead_in_s * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
        if self.period % FRAME_SAMPLES:
            raise ValueError("the burst period must be a whole number of 20 ms frames")
        if not 0 < self.length < self.period:
            raise ValueError("a burst must be shorter than the period")
        self.hz = hz
        self.level = level
        self.first: int | None = None  # sample index of the first burst, set once armed
        self.end: int | None = None  # the sample at which the track ends
        self.sent: dict[int, float] = {}  # burst index -> wall time its onset frame went to aiortc
        self.armed = armed
        if armed:
            self._start_at(0)

    def _start_at(self, sample: int) -> None:
        self.first = sample + self.lead_in
        self.end = self.first + (self.count - 1) * self.period + self.length + round(TAIL_S * SAMPLE_RATE)

    def arm(self) -> None:
        self.armed = True

    def render(self, start: int, n: int) -> np.ndarray | None:
        if self.first is None and self.armed:
            self._start_at(start)
        out = np.zeros(n, dtype=np.float32)
        if self.first is None or self.end is None:
            return out
        if start >= self.end:
            return None
        rel = np.arange(start, start + n) - self.first
        k = np.floor_divide(rel, self.period)
        inside = (rel >= 0) & (k < self.count) & (rel - k * self.period < self.length)
        if inside.any():
            t = (rel[inside] - k[inside] * self.period) / SAMPLE_RATE
            out[inside] = self.level * np.sin(2 * np.pi * self.hz * t)
        return out

    def on_frame(self, sample: int, wall: float) -> None:
        if self.first is None:
            return
        rel = sample - self.first
        if rel >= 0 and rel % self.period == 0 and rel // self.period < self.count:
            self.sent[rel // self.period] = wall


SMALL_BURSTS = 6  # --small: bursts sent (the first one warm-up), about 10 s of air


def parse_burst_options(parser: argparse.ArgumentParser, *, hz_help: str, target: float, target_help: str,
                        plot_help: str, small_target: float) -> argparse.Namespace:
    """The latency benches' options; ``--small`` sends ``SMALL_BURSTS`` and holds the median
    to ``small_target`` (relaxed: a small run on a busy machine); a missing burst still fails."""
    parser.add_argument("--bursts", type=int, default=60, help="tone bursts to send (default 60)")
    parser.add_argument("--warmup", type=int, default=3, help="first bursts left out of the figures (default 3)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between bursts, a multiple of 0.02 (default 1.0)")
    parser.add_argument("--burst-ms", type=float, default=100.0, help="length of a burst in ms (default 100)")
    parser.add_argument("--hz", type=float, default=1000.0, help=hz_help)
    parser.add_argument("--threshold", type=float, default=0.1, help="onset RMS threshold; bursts are sent at RMS 0.35")
    parser.add_argument("--target", type=float, default=target, help=target_help)
    parser.add_argument("--json", metavar="OUT", help="write the figures and every burst as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help=plot_help)
    small_mode(parser, bursts=SMALL_BURSTS, warmup=1, target=small_target)
    args = parser.parse_args()
    if args.bursts <= args.warmup:
        parser.error("--bursts must exceed --warmup")
    return args


def distribution_panel(ax, values: np.ndarray, unit: str, fmt: str) -> None:  # noqa: ANN001 (a matplotlib Axes)
    """A histogram of ``values`` with its p50 and p95 marked."""
    ax.hist(values, bins=20, color="#4c72b0")
    for q, style in ((50, "-"), (95, "--")):
        v = float(np.percentile(values, q))
        ax.axvline(v, color="black", linestyle=style, linewidth=1, label=f"p{q} {v:{fmt}} {unit}")
    ax.set_ylabel("bursts")
    ax.set_title("distribution")
    ax.legend(fontsize=8)
