"""Glass-to-glass latency of one live Space: speaker's WebRTC frame -> listener having the audio.

    .venv/bin/python bench/glass_to_glass.py [--player stream|ll] [--edge] [--segment-parts N] [--bursts 60] \\
        [--json OUT] [--plot OUT.png]

Starts ``amphi serve`` on a free 127.0.0.1 port (with ``--edge``, one Varnish edge in front,
``amphi edge`` as deployed: the listener joins at the node and fetches media from the edge the
join names), creates and starts a Space, and in this process runs both ends:

* a speaker (``amphi.media.ingest.client.speak``) whose ``GeneratedTrack`` sends a short
  tone burst every ``--period`` seconds, silence between; the track's ``on_frame`` hook
  records the wall time at which the frame carrying each burst's onset goes to aiortc;
* a listener (httpx, HTTP/1.1 keep-alive) that decodes each part as it has it (one AAC
  decoder kept across parts, as a player's audio pipeline does) and finds burst onsets by
  energy. ``--player ll`` behaves like an LL-HLS player: it asks for the preload-hinted part
  (the request blocks until the part exists) and, alongside, the blocking playlist reload for
  that same part. ``--player stream`` (the listener page's mode, issue 18) follows the join's
  multivariant playlist, then makes one GET per segment whose body the origin streams as the
  segment is made: a part is had when the last byte of its ``moof`` + ``mdat`` has arrived;
  the live playlist is read once per segment.

The onset's program time is ``PROGRAM-DATE-TIME`` of its segment + the part's offset in
the segment + the onset's offset in the part: the wall time at which the node mixed it.
An onset is matched to the latest burst sent no later than that program time (plus
``MATCH_TOLERANCE_S``); bursts are a second apart, so this is unambiguous.

    latency = arrival of the part carrying the onset - send time of the burst
            = (program time - send)         ingest: RTP, aiortc + node jitter buffers, mix tick
            + (part end - program time)     waiting for the rest of the 0.512 s part
            + (arrival - part end)          encoder look-ahead, packaging, HTTP

Exits 1 if a burst is missing or the median exceeds ``--target`` (2.0 s), 2 on an error.
``--small``: 6 bursts (about 15 s), the median held to 3 s (any ``--player``, with or
without ``--edge``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import httpx
import numpy as np

from bursts import Bursts as ToneBursts
from bursts import distribution_panel, parse_burst_options
from harness import HOST, NodeProcess, end_space, exit_on_sigterm, free_port, join_space, run, start_space

from amphi.core.config import SAMPLE_RATE, MediaConfig
from amphi.loadtest import playlist as m3u8
from amphi.loadtest.fragments import FragmentReader, init_timescale
from amphi.media.ingest.client import speak
from amphi.media.ingest.sources import GeneratedTrack

MEDIA = MediaConfig()
LEAD_IN_S = 2.0  # silence from the first frame to the first burst: the connection settles
GRACE_S = 6.0  # after the speaker hangs up, how long the listener may still find bursts
CONNECT_BUDGET_S = 30.0  # signalling + ICE + DTLS, generously
CLEANUP_TIMEOUT_S = 10.0  # for the speaker and listener tasks to stop
MATCH_TOLERANCE_S = 0.05  # an onset's program time may precede its send time by this much
WINDOW = 256  # samples per energy window (5.3 ms); a part is 96 windows, an AAC frame 4
QUIET_S = 0.2  # silence needed before an onset counts (re-arms the detector)


# -- the speaker's bursts --------------------------------------------------------------------


class Bursts(ToneBursts):
    """The speaker's bursts, from the first frame on, matched to onsets by program time."""

    def match(self, program_time: float) -> int | None:
        """The burst an onset heard at ``program_time`` belongs to: the latest one sent
        no later than that (plus the tolerance), if it was sent less than a period before."""
        best = None
        for k, t in self.sent.items():
            if t <= program_time + MATCH_TOLERANCE_S and (best is None or t > self.sent[best]):
                best = k
        if best is None or program_time - self.sent[best] > self.period / SAMPLE_RATE - MATCH_TOLERANCE_S:
            return None
        return best


# -- the listener --------------------------------------------------------------------------


@dataclass(frozen=True)
class PartInfo:
    uri: str  # the part's own URI, <msn>.<index>.m4s
    start: float  # program (wall) time of its first sample
    duration: float


@dataclass(frozen=True)
class Playlist:
    parts: dict[str, PartInfo]
    hint: str | None  # URI of the preload-hinted part, <msn>.<index>.m4s

    @classmethod
    def parse(cls, text: str) -> Playlist:
        """Parts by their own URIs: a playlist listing parts as byte ranges of their segment
        (``URI="12.m4s",BYTERANGE=...``) names them by segment and position, and the origin
        still serves each at ``<msn>.<index>.m4s``; a byte-range hint is the next part of the
        segment it names."""
        pl = m3u8.parse(text)
        parts = {f"{p.msn}.{p.index}.m4s": PartInfo(f"{p.msn}.{p.index}.m4s", p.pdt, p.duration)
                 for p in pl.parts if p.pdt is not None}
        hint = pl.preload_hint
        if hint is not None and pl.preload_hint_start is not None:
            msn = int(hint.split(".", 1)[0])
            listed = next((len(seg.parts) for seg in pl.segments if seg.msn == msn), 0)
            hint = f"{msn}.{listed}.m4s"
        return cls(parts, hint)


class PartDecoder:
    """init + part through PyAV's demuxer; the AAC decoder itself persists across parts, so
    each part's first frame overlaps the previous one as in a real player."""

    def __init__(self, init: bytes) -> None:
        self._init = init
        self._codec: av.CodecContext | None = None

    def decode(self, part: bytes) -> np.ndarray:
        out = []
        with av.open(io.BytesIO(self._init + part)) as container:
            stream = container.streams.audio[0]
            if self._codec is None:
                self._codec = av.CodecContext.create(stream.codec_context.name, "r")
                self._codec.extradata = stream.codec_context.extradata
            for packet in container.demux(stream):
                if packet.size:
                    for frame in self._codec.decode(packet):
                        out.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class OnsetDetector:
    """Energy onsets across a stream fed part by part: the first window whose RMS reaches
    ``threshold`` once the detector is armed, which takes ``QUIET_S`` of consecutive
    windows below ``threshold / 4``. Windows in between neither arm nor disarm it (the
    rising edge of a burst often is one)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._armed = False
        self._quiet_windows = 0
        self._need = round(QUIET_S * SAMPLE_RATE / WINDOW)

    def feed(self, samples: np.ndarray) -> list[int]:
        """Sample offsets (within ``samples``) of the onsets found."""
        usable = len(samples) // WINDOW * WINDOW
        rms = np.sqrt(np.mean(np.square(samples[:usable].reshape(-1, WINDOW), dtype=np.float64), axis=1))
        onsets = []
        for w, level in enumerate(rms):
            if level >= self.threshold:
                if self._armed:
                    onsets.append(self._first_loud(samples, w))
                    self._armed = False
                self._quiet_windows = 0
            elif level < self.threshold / 4:
                self._quiet_windows += 1
                if self._quiet_windows >= self._need:
                    self._armed = True
            else:
                self._quiet_windows = 0
        return onsets

    def _first_loud(self, samples: np.ndarray, w: int) -> int:
        """The onset to the sample: the first one from the previous window on whose
        magnitude reaches half the threshold."""
        lo = max(0, (w - 1) * WINDOW)
        loud = np.flatnonzero(np.abs(samples[lo : (w + 1) * WINDOW]) >= self.threshold / 2)
        return lo + int(loud[0]) if len(loud) else w * WINDOW


@dataclass
class Measurement:
    burst: int
    sent: float  # wall time the onset frame went to aiortc
    program: float  # program time of the onset (PDT + part offset + onset offset)
    part: str
    part_end: float  # program time of the end of that part
    arrival: float  # wall time the part's body had arrived
    latency: float = 0.0
    ingest: float = 0.0  # program - sent
    part_fill: float = 0.0  # part_end - program
    deliver: float = 0.0  # arrival - part_end

    def __post_init__(self) -> None:
        self.latency = self.arrival - self.sent
        self.ingest = self.program - self.sent
        self.part_fill = self.part_end - self.program
        self.deliver = self.arrival - self.part_end


@dataclass
class ListenerStats:
    parts: int = 0
    resyncs: int = 0  # the hinted part could not be had; restarted from a fresh playlist
    renewals: int = 0  # playlist requests redirected to a renewed admission token
    gaps: int = 0  # a part came that does not follow the previous one
    unmatched_onsets: int = 0  # onsets heard that match no burst (noise, or a burst heard twice)
    seconds_decoded: float = 0.0
    log: list[str] = field(default_factory=list)


class Listener:
    def __init__(self, playlist_url: str, bursts: Bursts, threshold: float, on_measure: Callable[[Measurement], None]) -> None:
        self.url = playlist_url
        self.base = playlist_url.split("?", 1)[0].rsplit("/", 1)[0] + "/"
        self.bursts = bursts
        self.detector = OnsetDetector(threshold)
        self.on_measure = on_measure
        self.measured: dict[int, Measurement] = {}
        self.stats = ListenerStats()
        self.ready = asyncio.Event()
        self.previous: str | None = None  # the last part had (stream player)

    def _adopt(self, playlist: httpx.Response) -> None:
        """Like hls.js, resolve from where the playlist really came: the origin renews an
        admission token by redirecting a playlist request to a URL with a new one."""
        if playlist.history:
            self.url = str(playlist.url).split("?", 1)[0]
            self.base = self.url.rsplit("/", 1)[0] + "/"
            self.stats.renewals += 1

    def _reload_url(self, uri: str) -> str:
        msn, index = uri.split(".")[:2]
        return f"{self.url}{'&' if '?' in self.url else '?'}_HLS_msn={msn}&_HLS_part={index}"

    async def _open(self, client: httpx.AsyncClient) -> httpx.Response:
        """The join's playlist; a multivariant one is followed to its (one) variant."""
        r = await client.get(self.url)
        r.raise_for_status()
        if m3u8.is_multivariant(r.content):
            variant = m3u8.parse_multivariant(r.text)[0]
            self.url = self.base + variant.uri.split("?", 1)[0]
            r = await client.get(self.url)
            r.raise_for_status()
        self._adopt(r)
        return r

    async def run(self, client: httpx.AsyncClient) -> None:
        r = await self._open(client)
        playlist = Playlist.parse(r.text)
        init = await client.get(self.base + "init.mp4")
        init.raise_for_status()
        decoder = PartDecoder(init.content)
        self.ready.set()
        previous: str | None = None
        while True:
            uri = playlist.hint
            if uri is None:
                raise RuntimeError("the live playlist has no preload hint (did the Space end?)")
            part_req = asyncio.ensure_future(client.get(self.base + uri))
            reload_req = asyncio.ensure_future(client.get(self._reload_url(uri)))
            try:
                part = await part_req
                arrival = time.time()
                reloaded = await reload_req
            finally:
                part_req.cancel()
                reload_req.cancel()
            if part.status_code != 200 or reloaded.status_code != 200:
                self.stats.resyncs += 1
                self.stats.log.append(f"resync at {uri}: part {part.status_code}, playlist {reloaded.status_code}")
                r = await client.get(self.url)
                r.raise_for_status()
                self._adopt(r)
                playlist, previous = Playlist.parse(r.text), None
                continue
            self._adopt(reloaded)
            playlist = Playlist.parse(reloaded.text)
            info = playlist.parts.get(uri)
            if info is None:
                raise RuntimeError(f"part {uri} arrived but the playlist reloaded for it does not list it")
            if previous is not None and not _follows(previous, uri):
                self.stats.gaps += 1
            previous = uri
            samples = await asyncio.to_thread(decoder.decode, part.content)
            self.stats.parts += 1
            self.stats.seconds_decoded += len(samples) / SAMPLE_RATE
            for offset in self.detector.feed(samples):
                self._onset(info, offset, arrival)

    def _onset(self, part: PartInfo, offset: int, arrival: float) -> None:
        program = part.start + offset / SAMPLE_RATE
        k = self.bursts.match(program)
        if k is None or k in self.measured:
            self.stats.unmatched_onsets += 1
            return
        m = Measurement(k, self.bursts.sent[k], program, part.uri, part.start + part.duration, arrival)
        self.measured[k] = m
        self.on_measure(m)


def _follows(a: str, b: str) -> bool:
    (am, ai), (bm, bi) = (tuple(int(x) for x in u.split(".")[:2]) for u in (a, b))
    return (bm == am and bi == ai + 1) or (bm == am + 1 and bi == 0)


class StreamListener(Listener):
    """The stream player (``--player stream``): the join's multivariant playlist, its media
    playlist, then one streaming GET per segment from the newest on. Each part is decoded when
    the last byte of its ``moof`` + ``mdat`` has arrived; its program time is the segment's
    date-time plus its decode time's distance from the segment's first part."""

    async def run(self, client: httpx.AsyncClient) -> None:
        r = await self._open(client)
        pl = m3u8.parse(r.text)
        init = await client.get(self.base + (pl.map_uri or "init.mp4"))
        init.raise_for_status()
        decoder = PartDecoder(init.content)
        timescale = init_timescale(init.content)
        self.ready.set()
        newest = pl.segments[-1]
        msn, pdt = newest.msn, newest.pdt
        while True:
            if pdt is None:
                raise RuntimeError(f"no program date-time for segment {msn}")
            got = await self._segment(client, msn, pdt, decoder, timescale)
            if got is None:  # not there (any more): from the newest again
                self.stats.resyncs += 1
                self.stats.log.append(f"resync at segment {msn}")
                r = await client.get(self.url)
                r.raise_for_status()
                self._adopt(r)
                pl = m3u8.parse(r.text)
                msn, pdt = pl.segments[-1].msn, pl.segments[-1].pdt
                continue
            r = await client.get(self.url)  # once per segment: renewals, and the segment's date-time
            r.raise_for_status()
            self._adopt(r)
            pl = m3u8.parse(r.text)
            if pl.ended:
                return
            done = next((seg for seg in pl.segments if seg.msn == msn and seg.uri is not None), None)
            pdt = done.pdt + done.duration if done is not None and done.pdt is not None else pdt + got
            msn += 1

    async def _segment(self, client: httpx.AsyncClient, msn: int, pdt: float, decoder: PartDecoder,
                       timescale: int) -> float | None:
        """Streams segment ``msn``; its seconds of audio, or None if the origin does not have it."""
        reader = FragmentReader(timescale)
        body = bytearray()
        first: int | None = None
        seconds = 0.0
        index = 0
        async with client.stream("GET", f"{self.base}{msn}.m4s") as resp:
            if resp.status_code == 404:
                return None
            resp.raise_for_status()
            async for chunk in resp.aiter_raw():
                arrival = time.time()
                body += chunk
                for f in reader.feed(chunk):
                    first = f.decode_time if first is None else first
                    info = PartInfo(f"{msn}.{index}.m4s", pdt + (f.decode_time - first) / timescale, f.duration_s)
                    name = info.uri
                    if self.previous is not None and not _follows(self.previous, name):
                        self.stats.gaps += 1
                    self.previous = name
                    index += 1
                    seconds += f.duration_s
                    samples = await asyncio.to_thread(decoder.decode, bytes(body[f.end - f.size:f.end]))
                    self.stats.parts += 1
                    self.stats.seconds_decoded += len(samples) / SAMPLE_RATE
                    for offset in self.detector.feed(samples):
                        self._onset(info, offset, arrival)
        return seconds


# -- the run -------------------------------------------------------------------------------


async def measure(server: str, space_id: str, host_key: str, playlist: str, args: argparse.Namespace) -> Listener:
    bursts = Bursts(args.bursts, args.period, args.burst_ms / 1000, args.hz, lead_in_s=LEAD_IN_S)
    track = GeneratedTrack(bursts.render, on_frame=bursts.on_frame)

    def progress(m: Measurement) -> None:
        n = len(listener.measured)
        if n % 10 == 0 or n == args.bursts:
            so_far = statistics.median(x.latency for x in listener.measured.values())
            print(f"  {n:3d}/{args.bursts} bursts heard; last {m.latency:.3f} s, median so far {so_far:.3f} s",
                  flush=True)

    listener = (StreamListener if args.player == "stream" else Listener)(playlist, bursts, args.threshold, progress)
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)  # clean up, then exit
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=15.0, limits=limits, http2=False, follow_redirects=True) as client:
        listening = asyncio.create_task(listener.run(client), name="listener")
        speaking: asyncio.Task[None] | None = None
        try:
            ready = asyncio.ensure_future(listener.ready.wait())
            await asyncio.wait([ready, listening], return_when=asyncio.FIRST_COMPLETED, timeout=15)
            ready.cancel()
            if listening.done():
                listening.result()
            if not listener.ready.is_set():
                raise RuntimeError("the listener did not get the live playlist within 15 s")

            def connected() -> None:
                print(f"speaker on air; {args.bursts} bursts, one every {args.period:g} s", flush=True)

            speaking = asyncio.create_task(speak(server, space_id, track, key=host_key, on_connected=connected),
                                           name="speaker")
            budget = CONNECT_BUDGET_S + bursts.end / SAMPLE_RATE + 5
            done, _ = await asyncio.wait([speaking, listening], timeout=budget, return_when=asyncio.FIRST_COMPLETED)
            if listening in done:
                listening.result()
                raise RuntimeError("the listener stopped early")
            if speaking not in done:
                raise RuntimeError(f"the speaker did not finish within {budget:.0f} s")
            speaking.result()  # SpeakError if it could not connect
            deadline = time.monotonic() + max(GRACE_S, 2 * args.target)
            while len(listener.measured) < len(bursts.sent) and time.monotonic() < deadline and not listening.done():
                await asyncio.sleep(0.1)
            if listening.done():
                listening.result()
        finally:
            for task in (speaking, listening):
                if task is not None and not task.done():
                    task.cancel()
            tasks = [t for t in (speaking, listening) if t is not None]
            _, stuck = await asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT_S)
            if stuck:
                print(f"warning: {len(stuck)} task(s) did not stop within {CLEANUP_TIMEOUT_S:.0f} s", file=sys.stderr)
            track.stop()
    return listener


def summarize(listener: Listener, args: argparse.Namespace) -> dict[str, object]:
    sent = listener.bursts.sent
    measured = [listener.measured[k] for k in sorted(listener.measured) if k >= args.warmup]
    missing = sorted(k for k in range(args.bursts) if k not in listener.measured)

    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        a = np.asarray(values)
        return {"min": float(a.min()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
                "max": float(a.max()), "mean": float(a.mean())}

    return {
        "settings": {"player": args.player, "edge": args.edge,
                     "bursts": args.bursts, "warmup": args.warmup, "period_s": args.period, "burst_ms": args.burst_ms,
                     "tone_hz": args.hz, "threshold": args.threshold, "target_p50_s": args.target,
                     "part_s": MEDIA.part_s, "parts_per_segment": args.segment_parts or MEDIA.parts_per_segment,
                     "jitter_target_ms": MEDIA.jitter_target_ms, "tick_ms": MEDIA.tick_ms},
        "count": len(measured),
        "sent": len(sent),
        "missing": missing,
        "latency_s": stats([m.latency for m in measured]),
        "ingest_s": stats([m.ingest for m in measured]),
        "program_to_arrival_s": stats([m.part_fill + m.deliver for m in measured]),
        "part_fill_s": stats([m.part_fill for m in measured]),
        "deliver_s": stats([m.deliver for m in measured]),
        "listener": asdict(listener.stats),
        "bursts": [asdict(m) for m in sorted(listener.measured.values(), key=lambda m: m.burst)],
    }


def print_table(summary: dict[str, object]) -> None:
    rows = [
        ("glass to glass (send -> part arrived)", "latency_s"),
        ("  send -> program time (ingest + jitter buffers)", "ingest_s"),
        ("  program time -> part arrived", "program_to_arrival_s"),
        ("    program time -> part end (rest of the part)", "part_fill_s"),
        ("    part end -> part arrived (encode, package, HTTP)", "deliver_s"),
    ]
    settings = summary["settings"]
    assert isinstance(settings, dict)
    print()
    print(f"bursts: {summary['count']} measured ({settings['warmup']} warm-up discarded), "
          f"{len(summary['missing'])} missing {summary['missing'] or ''}".rstrip())  # type: ignore[arg-type]
    print(f"{'seconds':52s} {'min':>7s} {'p50':>7s} {'p95':>7s} {'max':>7s}")
    for label, key in rows:
        s = summary[key]
        assert isinstance(s, dict)
        if s:
            print(f"{label:52s} {s['min']:7.3f} {s['p50']:7.3f} {s['p95']:7.3f} {s['max']:7.3f}")
    listener = summary["listener"]
    assert isinstance(listener, dict)
    print(f"listener: {listener['parts']} parts, {listener['resyncs']} resyncs, {listener['renewals']} token renewals, {listener['gaps']} gaps, "
          f"{listener['unmatched_onsets']} unmatched onsets")
    for line in listener["log"][:10]:
        print(f"  {line}")


def plot(summary: dict[str, object], path: str, target: float) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/glass_to_glass.py's figure")

    bursts = [b for b in summary["bursts"] if b["burst"] >= summary["settings"]["warmup"]]  # type: ignore[index, union-attr]
    if not bursts:
        return
    x = [b["burst"] for b in bursts]
    ingest = np.array([b["ingest"] for b in bursts])
    fill = np.array([b["part_fill"] for b in bursts])
    deliver = np.array([b["deliver"] for b in bursts])
    total = np.array([b["latency"] for b in bursts])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    ax1.bar(x, ingest, label="send -> program time", color="#4c72b0")
    ax1.bar(x, fill, bottom=ingest, label="program time -> part end", color="#dd8452")
    ax1.bar(x, deliver, bottom=ingest + fill, label="part end -> arrived", color="#55a868")
    ax1.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target p50 {target:g} s")
    ax1.set_xlabel("burst")
    ax1.set_ylabel("seconds")
    ax1.set_title("glass-to-glass latency per burst")
    ax1.legend(loc="upper right", fontsize=8)
    distribution_panel(ax2, total, "s", ".3f")
    ax2.set_xlabel("latency (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def listener_playlist(node_url: str, space_id: str, via_edge: bool) -> str:
    """The playlist URL a listener starts from: the join's ``playlist`` (the multivariant playlist
    on nodes that have one), on the first edge the join names when ``via_edge``."""
    status, answer = join_space(node_url, space_id)
    if status != 200:
        raise RuntimeError(f"join answered {status}: {answer}")
    url = str(answer["playlist"])
    if via_edge:
        edges = answer.get("edges") or []
        if not edges:
            raise RuntimeError("the node named no edge in its join answer")
        # the playlist's path is the same on the edge (it routes /o/<node>/media/ to the node): swap host:port
        edge_host = str(edges[0]).split("://", 1)[1].split("/", 1)[0]  # type: ignore[index]
        url = f"http://{edge_host}/" + url.split("://", 1)[1].split("/", 1)[1]
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--player", choices=("ll", "stream"), default="stream",
                        help="stream (the listener page's mode): one streamed GET per segment; ll: a request per "
                             "part with blocking reloads")
    parser.add_argument("--edge", action="store_true", help="through one Varnish edge (amphi edge), as deployed")
    parser.add_argument("--segment-parts", type=int, default=None, help="parts per segment (amphi serve --segment-parts)")
    args = parse_burst_options(parser, hz_help="tone frequency (default 1000)", target=2.0,
                               target_help="fail if the median latency exceeds this (s)",
                               plot_help="write a per-burst breakdown and a histogram", small_target=3.0)
    exit_on_sigterm()

    print(f"glass-to-glass ({args.player} player{', through an edge' if args.edge else ''}): {args.bursts} bursts; "
          f"about {LEAD_IN_S + args.bursts * args.period + 10:.0f} s", flush=True)
    edge = None
    node_args: list[str] = ["--segment-parts", str(args.segment_parts)] if args.segment_parts else []
    if args.edge:
        os.environ.setdefault("AMPHI_SECRET", "s" * 64)  # the node inherits it; the edge is given it
        edge_port = free_port()
        node_args += ["--edge", f"http://{HOST}:{edge_port}"]
    node = NodeProcess(args=node_args)
    with node:
        print(f"node {node.url} (pid {node.pid}), data in {node.dir}", flush=True)
        try:
            if args.edge:
                from amphi.edge.varnish import Edge
                from amphi.edge.vcl import Backend, EdgeSpec

                spec = EdgeSpec.signed("edge1", os.environ["AMPHI_SECRET"], (Backend.parse("origin", node.url),))
                edge = Edge(spec, node.dir / "edge", HOST, edge_port).start()
                print(f"edge http://{HOST}:{edge_port} (pid {edge.proc.pid if edge.proc else '?'})", flush=True)
            space = start_space(node.url, "glass-to-glass bench", join=False)
            try:
                playlist = listener_playlist(node.url, space.id, args.edge)
                listener = asyncio.run(measure(node.url, space.id, space.host_key, playlist, args))
            except asyncio.CancelledError:
                raise SystemExit(128 + signal.SIGTERM) from None  # the only thing that cancels it
            finally:
                exit_on_sigterm()  # the event loop restored the default handler when it closed
                end_space(node.url, space)
        finally:
            if edge is not None:
                edge.stop()

    summary = summarize(listener, args)
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
    if not latency:
        failures.append("no burst measured")
    elif latency["p50"] > args.target:
        failures.append(f"p50 {latency['p50']:.3f} s > target {args.target:g} s")
    print("FAIL: " + "; ".join(failures) if failures else f"PASS: p50 {latency['p50']:.3f} s <= {args.target:g} s")
    return 1 if failures else 0


if __name__ == "__main__":
    run(main)
