"""Mouth-to-ear delay between two speakers on stage: A's WebRTC frame -> B's return feed.

    .venv/bin/python bench/mouth_to_ear.py [--bursts 60] [--json OUT] [--plot OUT.png]

Starts ``amphi serve`` on a free 127.0.0.1 port, creates and starts a Space, invites a
speaker B (who accepts with the grant), and in this process runs both speakers, each one
WebRTC connection made by ``amphi.media.ingest.client.speak`` that sends a track and
receives that speaker's return feed (the mix of everyone else on stage):

* **A** (the host, with the host key) sends a ``--burst-ms`` tone burst every ``--period``
  seconds, silence between. The track's ``on_frame`` hook records the wall time at which the
  frame carrying each burst's first sample goes to aiortc: the **send** time. Bursts start
  ``LEAD_IN_S`` after both speakers show ``connected`` in ``GET /stage``.
* **B** (the invited speaker) sends a quiet 330 Hz tone (-43 dBFS: "talking", below the
  onset threshold as sent; the node's leveler lifts it towards the program loudness,
  docs/sound.md, and mix-minus keeps it out of B's own return feed anyway). Every frame of B's
  return feed goes through an energy onset detector (5 ms RMS windows crossing
  ``--threshold`` after ``QUIET_S`` of quiet, refined to the first sample reaching half the
  threshold). An onset's **arrival** is the wall time the decoded frame came out of B's
  decoder (``on_return``) plus the onset's offset in that frame.

    mouth-to-ear = arrival - send
                 = A's Opus encode, RTP over loopback, the node's aiortc receive jitter buffer
                   (about 4 frames), Opus decode, the node's per-track jitter buffer
                   (``jitter_target_ms``, 60 ms), up to one mixer tick (20 ms), the return
                   feed's Opus encode, RTP, B's aiortc receive jitter buffer (about 4 frames)
                   and Opus decode.

What it does not include: a real talker's **capture** buffer (a browser's microphone path,
typically 10-20 ms plus the 20 ms frame being filled: the send time here is when the frame
is complete) and a real listener's **playout** buffer (WebRTC's NetEq in a browser targets
about 20-80 ms on a clean network, plus the audio output device's 10-20 ms). Add roughly
50-120 ms for "a person talks, another hears it" between two browsers on loopback; a real
network adds its one-way delay twice (talker -> node -> listener) plus the jitter buffers'
growth under its jitter.

An onset is matched to the latest burst sent no later than its arrival, if that was less
than a period before; bursts are a second apart, so the match is unambiguous. A's own
return feed is run through the same detector, after a band-pass around the bursts' frequency
(B's tone, lifted by the leveler, is not A's echo): a burst heard there would be an echo,
which mix-minus must prevent (reported as ``echo_onsets``, expected 0).

Exits 1 if a burst is missing, an echo is heard, or the median exceeds ``--target``
(0.300 s, issue 3), 2 on an error. ``--small``: 6 bursts (about 12 s), the median held to 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from scipy import signal as dsp

from bursts import Bursts as ToneBursts
from bursts import distribution_panel, parse_burst_options
from harness import NodeProcess, end_space, exit_on_sigterm, node_stats, run, start_space

from amphi.core.config import SAMPLE_RATE, MediaConfig
from amphi.media.ingest.client import speak
from amphi.media.ingest.sources import FRAME_SAMPLES, GeneratedTrack, ToneTrack

MEDIA = MediaConfig()
LEAD_IN_S = 1.0  # from "both connected" to the first burst
GRACE_S = 2.0  # after A's last burst, how long B may still hear it
CONNECT_BUDGET_S = 30.0  # signalling + ICE + DTLS for both, and the stage showing them
CLEANUP_TIMEOUT_S = 10.0  # for the speaker tasks to stop
WINDOW = 240  # samples per energy window (5 ms); a 20 ms frame is 4 windows
QUIET_S = 0.2  # quiet needed before an onset counts (re-arms the detector)
B_TONE_HZ = 330.0
B_TONE_AMPLITUDE = 0.01  # RMS 0.007, -43 dBFS: above the node's "talking" level (-45 dBFS)


# -- A's bursts ---------------------------------------------------------------------------


class ArmedBursts(ToneBursts):
    """A's bursts, starting ``LEAD_IN_S`` after ``arm()`` (silence before), matched to onsets
    by arrival time."""

    def __init__(self, count: int, period_s: float, burst_s: float, hz: float, level: float = 0.5) -> None:
        super().__init__(count, period_s, burst_s, hz, lead_in_s=LEAD_IN_S, armed=False, level=level)

    def match(self, arrival: float) -> int | None:
        """The burst an onset heard at ``arrival`` belongs to: the latest one sent before it,
        if sent less than a period before."""
        best = max((k for k, t in self.sent.items() if t <= arrival), key=self.sent.__getitem__, default=None)
        if best is None or arrival - self.sent[best] >= self.period / SAMPLE_RATE:
            return None
        return best


# -- the ear ------------------------------------------------------------------------------


class FrameOnsets:
    """Energy onsets in a stream of 20 ms frames, each with the wall time it came out of the
    decoder. An onset is a window whose RMS reaches ``threshold`` once armed (``QUIET_S``
    of windows below ``threshold / 4``); it is placed at the first sample, from the previous
    window on, whose magnitude reaches half the threshold. Returns arrival wall times."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._armed = False
        self._quiet = 0
        self._need = round(QUIET_S * SAMPLE_RATE / WINDOW)
        self._prev = np.zeros(WINDOW, dtype=np.float32)  # the last window of the previous frame
        self._prev_wall = 0.0
        self._prev_len = FRAME_SAMPLES
        self.frames = 0
        self.gaps = 0  # frames that came more than 3 frames late after the previous one

    def feed(self, samples: np.ndarray, wall: float) -> list[float]:
        self.frames += 1
        if self.frames > 1 and wall - self._prev_wall > 4 * FRAME_SAMPLES / SAMPLE_RATE:
            self.gaps += 1
        usable = len(samples) // WINDOW * WINDOW
        both = np.concatenate([self._prev, samples[:usable]])
        rms = np.sqrt(np.mean(np.square(both[WINDOW:].reshape(-1, WINDOW), dtype=np.float64), axis=1))
        arrivals = []
        for w, level in enumerate(rms):
            if level >= self.threshold:
                if self._armed:
                    arrivals.append(self._place(both, w, wall))
                    self._armed = False
                self._quiet = 0
            elif level < self.threshold / 4:
                self._quiet += 1
                if self._quiet >= self._need:
                    self._armed = True
            else:
                self._quiet = 0
        if usable >= WINDOW:
            self._prev = samples[usable - WINDOW : usable].astype(np.float32, copy=True)
        self._prev_wall, self._prev_len = wall, len(samples)
        return arrivals

    def _place(self, both: np.ndarray, w: int, wall: float) -> float:
        # window w of this frame is both[(w + 1) * WINDOW : (w + 2) * WINDOW]; look from the window before
        lo = w * WINDOW
        loud = np.flatnonzero(np.abs(both[lo : lo + 2 * WINDOW]) >= self.threshold / 2)
        offset = (lo + int(loud[0]) if len(loud) else lo + WINDOW) - WINDOW  # in this frame; < 0: previous frame
        if offset < 0:
            return self._prev_wall + (self._prev_len + offset) / SAMPLE_RATE
        return wall + offset / SAMPLE_RATE


@dataclass
class Measurement:
    burst: int
    sent: float  # wall time A's onset frame went to aiortc
    arrival: float  # wall time the onset came out of B's decoder (frame time + offset)
    latency: float = 0.0

    def __post_init__(self) -> None:
        self.latency = self.arrival - self.sent


@dataclass
class Ear:
    bursts: ArmedBursts
    detector: FrameOnsets
    measured: dict[int, Measurement] = field(default_factory=dict)
    unmatched_onsets: int = 0

    def on_return(self, samples: np.ndarray, wall: float) -> None:
        for arrival in self.detector.feed(samples, wall):
            k = self.bursts.match(arrival)
            if k is None or k in self.measured:
                self.unmatched_onsets += 1
                continue
            m = Measurement(k, self.bursts.sent[k], arrival)
            self.measured[k] = m
            n = len(self.measured)
            if n % 10 == 0 or n == self.bursts.count:
                so_far = statistics.median(x.latency for x in self.measured.values())
                print(f"  {n:3d}/{self.bursts.count} bursts heard; last {m.latency:.3f} s, median so far {so_far:.3f} s",
                      flush=True)


@dataclass
class RunInfo:
    b_participant: str = ""
    echo_onsets: int = 0  # onsets in A's own return feed (A's bursts must not come back)
    a_return_frames: int = 0
    b_return_frames: int = 0
    b_return_gaps: int = 0
    stage_before: list[dict[str, object]] = field(default_factory=list)
    stage_after: list[dict[str, object]] = field(default_factory=list)
    node_before: dict[str, object] = field(default_factory=dict)
    node_after: dict[str, object] = field(default_factory=dict)


# -- the run -------------------------------------------------------------------------------


def invite(server: str, space_id: str, host_key: str, name: str) -> tuple[str, str]:
    """Host invites ``name``; the invitee accepts with the grant. (participant, grant)."""
    with httpx.Client(base_url=server, timeout=10.0) as api:
        r = api.post(f"/api/spaces/{space_id}/stage/invites", json={"name": name},
                     headers={"Authorization": f"Bearer {host_key}"})
        r.raise_for_status()
        pid, grant = r.json()["participant"], r.json()["grant"]
        api.post(f"/api/spaces/{space_id}/stage/me/accept", headers={"Authorization": f"Bearer {grant}"}).raise_for_status()
    return pid, grant


async def stage_members(client: httpx.AsyncClient, space_id: str) -> list[dict[str, object]]:
    r = await client.get(f"/api/spaces/{space_id}/stage")
    r.raise_for_status()
    return list(r.json()["members"])


async def measure(server: str, space_id: str, host_key: str, grant: str, args: argparse.Namespace,
                  info: RunInfo) -> Ear:
    bursts = ArmedBursts(args.bursts, args.period, args.burst_ms / 1000, args.hz)
    a_track = GeneratedTrack(bursts.render, on_frame=bursts.on_frame)
    b_track = ToneTrack(B_TONE_HZ, B_TONE_AMPLITUDE)
    ear = Ear(bursts, FrameOnsets(args.threshold))
    echo = FrameOnsets(args.threshold)

    band = dsp.butter(4, [args.hz / 1.25, args.hz * 1.25], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    band_state = [np.zeros((band.shape[0], 2))]

    def a_return(samples: np.ndarray, wall: float) -> None:
        info.a_return_frames += 1
        heard, band_state[0] = dsp.sosfilt(band, samples, zi=band_state[0])  # A's bursts' frequency only
        info.echo_onsets += len(echo.feed(heard.astype(np.float32), wall))

    def b_return(samples: np.ndarray, wall: float) -> None:
        info.b_return_frames += 1
        ear.on_return(samples, wall)

    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)  # clean up, then exit
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(base_url=server, timeout=10.0) as api:
        try:
            tasks.append(asyncio.create_task(speak(server, space_id, a_track, key=host_key, on_return=a_return), name="A"))
            tasks.append(asyncio.create_task(speak(server, space_id, b_track, token=grant, on_return=b_return), name="B"))
            deadline = time.monotonic() + CONNECT_BUDGET_S
            while True:
                for t in tasks:
                    if t.done():
                        t.result()  # SpeakError if it could not connect
                        raise RuntimeError(f"speaker {t.get_name()} hung up before the bursts")
                members = await stage_members(api, space_id)
                if len(members) == 2 and all(m["connected"] for m in members):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"both speakers not connected within {CONNECT_BUDGET_S:.0f} s: {members}")
                await asyncio.sleep(0.2)
            info.stage_before = members
            info.node_before = await asyncio.to_thread(node_stats, server)
            print(f"A (host) and B on stage and connected; {args.bursts} bursts, one every {args.period:g} s",
                  flush=True)
            bursts.arm()
            budget = LEAD_IN_S + args.bursts * args.period + 10
            done, _ = await asyncio.wait([tasks[0]], timeout=budget)
            if tasks[0] not in done:
                raise RuntimeError(f"A did not finish within {budget:.0f} s")
            tasks[0].result()
            if tasks[1].done():
                tasks[1].result()
                raise RuntimeError("B hung up during the bursts")
            deadline = time.monotonic() + GRACE_S
            while len(ear.measured) < len(bursts.sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            info.stage_after = await stage_members(api, space_id)
            info.node_after = await asyncio.to_thread(node_stats, server)
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            if tasks:
                _, stuck = await asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT_S)
                if stuck:
                    print(f"warning: {len(stuck)} speaker(s) did not stop within {CLEANUP_TIMEOUT_S:.0f} s",
                          file=sys.stderr)
            a_track.stop()
            b_track.stop()
    info.b_return_frames = ear.detector.frames
    info.b_return_gaps = ear.detector.gaps
    return ear


def summarize(ear: Ear, info: RunInfo, args: argparse.Namespace) -> dict[str, object]:
    measured = [ear.measured[k] for k in sorted(ear.measured) if k >= args.warmup]
    missing = sorted(k for k in range(args.bursts) if k not in ear.measured)
    lat = np.asarray([m.latency for m in measured])
    stats = ({"min": float(lat.min()), "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
              "max": float(lat.max()), "mean": float(lat.mean())} if len(lat) else {})
    return {
        "settings": {"bursts": args.bursts, "warmup": args.warmup, "period_s": args.period, "burst_ms": args.burst_ms,
                     "tone_hz": args.hz, "threshold": args.threshold, "target_p50_s": args.target,
                     "jitter_target_ms": MEDIA.jitter_target_ms, "tick_ms": MEDIA.tick_ms},
        "count": len(measured),
        "sent": len(ear.bursts.sent),
        "heard": len(ear.measured),
        "missing": missing,
        "latency_s": stats,
        "unmatched_onsets": ear.unmatched_onsets,
        "run": asdict(info),
        "bursts": [asdict(m) for m in sorted(ear.measured.values(), key=lambda m: m.burst)],
    }


def print_table(summary: dict[str, object]) -> None:
    settings = summary["settings"]
    run_info = summary["run"]
    s = summary["latency_s"]
    assert isinstance(settings, dict) and isinstance(run_info, dict) and isinstance(s, dict)
    print()
    print(f"bursts: {summary['sent']} sent, {summary['heard']} heard, {len(summary['missing'])} missing "  # type: ignore[arg-type]
          f"{summary['missing'] or ''}; {summary['count']} measured ({settings['warmup']} warm-up discarded)")
    if s:
        print(f"{'seconds':44s} {'min':>7s} {'p50':>7s} {'p95':>7s} {'max':>7s}")
        print(f"{'mouth to ear (A send -> B decoded)':44s} {s['min']:7.3f} {s['p50']:7.3f} {s['p95']:7.3f} {s['max']:7.3f}")
    print(f"B's return feed: {run_info['b_return_frames']} frames, {run_info['b_return_gaps']} gaps > 80 ms, "
          f"{summary['unmatched_onsets']} unmatched onsets")
    print(f"A's return feed: {run_info['a_return_frames']} frames, {run_info['echo_onsets']} echo onsets (A's own bursts)")
    pipelines = run_info["node_after"].get("pipelines", {}) if isinstance(run_info["node_after"], dict) else {}
    for pid, p in pipelines.items():
        print(f"node pipeline {pid}: {p.get('ticks')} ticks, {p.get('late_ticks')} late, "
              f"max lag {p.get('max_lag_s', 0):.3f} s, {p.get('frames_dropped')} frames dropped")


def plot(summary: dict[str, object], path: str, target: float) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/mouth_to_ear.py's figure")

    warmup = summary["settings"]["warmup"]  # type: ignore[index]
    bursts = [b for b in summary["bursts"] if b["burst"] >= warmup]  # type: ignore[union-attr]
    if not bursts:
        return
    x = [b["burst"] for b in bursts]
    ms = np.array([1000 * b["latency"] for b in bursts])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    ax1.plot(x, ms, "o-", markersize=3, color="#4c72b0", label="A send -> B decoded")
    ax1.axhline(1000 * target, color="red", linestyle="--", linewidth=1, label=f"target p50 {1000 * target:.0f} ms")
    ax1.set_ylim(0, max(1000 * target, float(ms.max())) * 1.15)
    ax1.set_xlabel("burst")
    ax1.set_ylabel("ms")
    ax1.set_title("mouth-to-ear delay per burst (speaker A -> speaker B's return feed)")
    ax1.legend(loc="lower right", fontsize=8)
    distribution_panel(ax2, ms, "ms", ".0f")
    ax2.set_xlabel("delay (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args = parse_burst_options(parser, hz_help="A's tone frequency (default 1000)", target=0.3,
                               target_help="fail if the median delay exceeds this (s, default 0.3)",
                               plot_help="write a per-burst timeline and a histogram", small_target=1.0)
    exit_on_sigterm()

    print(f"mouth-to-ear: {args.bursts} bursts; about {LEAD_IN_S + args.bursts * args.period + 10:.0f} s", flush=True)
    info = RunInfo()
    node = NodeProcess()
    with node:
        print(f"node {node.url} (pid {node.pid}), data in {node.dir}", flush=True)
        space = start_space(node.url, "mouth-to-ear bench", join=False)
        try:
            info.b_participant, grant = invite(node.url, space.id, space.host_key, "B")
            ear = asyncio.run(measure(node.url, space.id, space.host_key, grant, args, info))
        except asyncio.CancelledError:
            raise SystemExit(128 + signal.SIGTERM) from None  # the only thing that cancels it
        finally:
            exit_on_sigterm()  # the event loop restored the default handler when it closed
            end_space(node.url, space)

    summary = summarize(ear, info, args)
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot(summary, args.plot, args.target)
        print(f"wrote {args.plot}")

    latency = summary["latency_s"]
    assert isinstance(latency, dict)
    failures = []
    if summary["missing"]:
        failures.append(f"{len(summary['missing'])} bursts missing")  # type: ignore[arg-type]
    if info.echo_onsets:
        failures.append(f"{info.echo_onsets} of A's bursts came back in A's own return feed")
    if not latency:
        failures.append("no burst measured")
    elif latency["p50"] > args.target:
        failures.append(f"p50 {latency['p50']:.3f} s > target {args.target:g} s")
    print("FAIL: " + "; ".join(failures) if failures else f"PASS: p50 {latency['p50']:.3f} s <= {args.target:g} s")
    return 1 if failures else 0


if __name__ == "__main__":
    run(main)
