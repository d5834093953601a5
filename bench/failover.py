"""The Space outlives its origin (issue 19; docs/cluster.md): kill -9 the node that hosts a live
Space, then drain the node that took it over, with listeners and speakers on it all along.

    redis-server, nodes a and b (`amphi serve --redis`), one edge (`amphi edge run`: Varnish and
    the fan-out) in front of both; a Space on a with two speakers (`amphi speak`, distinct tones,
    pointed at the edge); `amphi loadtest` listeners through the edge (the stream player).

    t = --kill-at    kill -9 of node a (the host): node b, its standby, carries the Space on
    t = --restart-at node a starts again (same data dir): it must not end the Space; it stands by
    t = --drain-at   `amphi drain b`: the Space moves back to a, at a part boundary

Printed (and written to bench/out/failover.json, with a plot bench/out/failover.png):
* listeners: the longest gap each heard (p50/p99/max, from each one's playback buffer), stalls
  in the drain's window, re-joins, failed;
* speakers: when each tone is heard again after the kill (from the replay's program times);
* the replay (vod.m3u8 and download.m4a, from the node that ends the Space): one playlist, its
  discontinuities, and the gap in program time at each seam.

Targets (issue 19): gap p99 <= 3 s, 0 re-joins, 0 failed; both speakers back within 5 s; the
replay one playlist with one gap <= 3 s; the drain: 0 stalls and no gap.

    .venv/bin/python bench/failover.py [--listeners 500] [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cluster_join import start_redis  # noqa: E402
from harness import HOST, amphi_command, exit_on_sigterm, free_port, kill_group, run  # noqa: E402

from amphi.loadtest.run import RunOptions, run as loadtest  # noqa: E402
from amphi.loadtest.swarm import LoadConfig  # noqa: E402

SECRET = "failover-bench-secret-0123456789abcdef"
TONES = (440, 660)  # the host's tone and the second speaker's
SR = 48_000
OUT = Path(__file__).parent / "out"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Node:
    """One `amphi serve --redis` whose data dir survives a kill -9 and a restart."""

    def __init__(self, name: str, redis_url: str, edge_url: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.data = workdir / f"data-{name}"
        self.log = workdir / f"node-{name}.log"
        self.cmd = amphi_command("serve", "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data),
                                 "--redis", redis_url, "--node-id", name, "--edge", edge_url, "--pow", "off",
                                 "--max-listeners", "100000")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "AMPHI_SECRET": SECRET})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/node", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node {self.name} did not start:\n{self.log.read_text()[-2000:]}")

    @property
    def key(self) -> str:
        return (self.data / "operator_key").read_text().strip()

    def failover(self) -> dict:
        try:
            return httpx.get(f"{self.url}/api/node", timeout=2).json()["failover"]
        except httpx.HTTPError:
            return {}

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc)


def speaker(entry: str, space: str, credential: str, hz: int, *, grant: bool, log: Path) -> subprocess.Popen[bytes]:
    who = ["--as", "speaker", "--token", credential] if grant else ["--key", credential]
    out = open(log, "ab")
    proc = subprocess.Popen(amphi_command("speak", "--server", entry, "--space", space, *who, "--tone", str(hz)),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "on air" in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"speaker {hz} Hz did not get on air:\n{log.read_text()[-2000:]}")


def tone_level(audio: np.ndarray, hz: int, window: int) -> np.ndarray:
    """Per window, the tone's amplitude (a single-bin DFT), so two tones mixed are told apart."""
    n = len(audio) // window
    t = np.arange(window) / SR
    probe = np.exp(-2j * np.pi * hz * t)
    frames = audio[: n * window].reshape(n, window)
    return 2 * np.abs(frames @ probe) / window


def decode(data: bytes) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"],
                         input=data, capture_output=True, check=True, timeout=120).stdout
    return np.frombuffer(out, dtype=np.float32)


def replay(node_url: str, space: str) -> dict[str, object]:
    """The ended Space's replay: its segments' program times, seams, and each tone per 0.1 s."""
    with httpx.Client(base_url=node_url, timeout=60) as http:
        vod = http.get(f"/media/{space}/vod.m3u8").text
        init = http.get(f"/media/{space}/init.mp4").content
        segs = segments_of(vod)
        body = b"".join(http.get(f"/media/{space}/{msn}.m4s").content for msn, _, _, _ in segs)
        download = http.get(f"/media/{space}/download.m4a").content
    audio = decode(init + body)
    seams = [{"after_msn": a[0], "gap_s": round(b[1] - (a[1] + a[2]), 3), "discontinuity": b[3]}
             for a, b in zip(segs, segs[1:])]
    return {"vod": vod, "segments": segs, "seams": [s for s in seams if abs(s["gap_s"]) > 0.05 or s["discontinuity"]],
            "audio": audio, "download_s": round(len(decode(download)) / SR, 2),
            "vod_s": round(len(audio) / SR, 2), "msns_contiguous": [s[0] for s in segs] == list(
                range(segs[0][0], segs[-1][0] + 1)) if segs else False}


def segments_of(vod: str) -> list[tuple[int, float, float, bool]]:
    """(msn, program date-time, duration, after a discontinuity) of each segment of a playlist."""
    out, pdt, dur, cut = [], 0.0, 0.0, False
    for line in vod.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            cut = True
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
        elif line.startswith("#EXTINF:"):
            dur = float(line[8:].split(",")[0])
        elif line.endswith(".m4s"):
            out.append((int(line.removesuffix(".m4s")), pdt, dur, cut))
            pdt, cut = pdt + dur, False
    return out


def heard_again(rep: dict[str, object], after_wall: float, hz: int) -> float | None:
    """Seconds from ``after_wall`` to the first 0.1 s of the replay (in program time) where the tone is
    heard, among the segments made after that moment."""
    window = SR // 10
    level = tone_level(rep["audio"], hz, window)  # type: ignore[arg-type]
    offset = 0.0
    for _, pdt, dur, _ in rep["segments"]:  # type: ignore[union-attr]
        first, last = int(offset * 10), int((offset + dur) * 10)
        if pdt >= after_wall:
            for i in range(first, min(last, len(level))):
                if level[i] > 0.2:  # half the tone's level (0.37 in the mix): heard, not a fade
                    return round(pdt + (i - first) / 10 - after_wall, 2)
        offset += dur
    return None


def levels_after(rep: dict[str, object], after_wall: float, hz: int) -> list[float]:
    """The tone's level per 0.1 s over the first 6 s of program made after ``after_wall``."""
    level = tone_level(rep["audio"], hz, SR // 10)  # type: ignore[arg-type]
    offset = 0.0
    for _, pdt, dur, _ in rep["segments"]:  # type: ignore[union-attr]
        if pdt >= after_wall:
            return [round(float(v), 3) for v in level[int(offset * 10):int(offset * 10) + 60]]
        offset += dur
    return []


def main() -> int:
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listeners", type=int, default=500)
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--player", default="stream", choices=["stream", "ll", "segments"])
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--kill-at", type=float, default=20.0)
    p.add_argument("--restart-at", type=float, default=28.0)
    p.add_argument("--drain-at", type=float, default=42.0)
    p.add_argument("--duration", type=float, default=58.0)
    p.add_argument("--out", type=Path, default=OUT / "failover.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amphi-failover-"))
    (work / "secret").write_text(SECRET)
    redis_proc, redis_url = start_redis(work)
    edge_port = free_port()
    edge_url = f"http://{HOST}:{edge_port}"
    a, b = Node("a", redis_url, edge_url, work), Node("b", redis_url, edge_url, work)
    edge = speakers = None
    events: dict[str, float] = {}
    try:
        a.start(), b.start()
        edge = subprocess.Popen(amphi_command("edge", "run", "--name", "e1", "--port", str(edge_port), "--dir",
                                              str(work / "edge"), "--origin", f"a={a.url}", "--origin", f"b={b.url}",
                                              "--secret-file", str(work / "secret"), "--media-rate", "0",
                                              "--join-rate", "0", "--max-connections-per-address", "0"),
                                stdout=open(work / "edge.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{edge_url}/api/node", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edge did not start:\n{(work / 'edge.log').read_text()[-2000:]}")
            time.sleep(0.2)
        api = httpx.Client(base_url=a.url, timeout=10)
        made = api.post("/api/spaces", json={"title": "failover bench"},
                        headers={"authorization": f"Bearer {a.key}"}).json()
        space, host_key = made["id"], made["host_key"]
        api.post(f"/api/spaces/{space}/start", headers={"authorization": f"Bearer {host_key}"}).raise_for_status()
        asked = api.post(f"/api/spaces/{space}/stage/requests", json={"name": "second"}).json()
        api.post(f"/api/spaces/{space}/stage/{asked['participant']}/accept",
                 headers={"authorization": f"Bearer {host_key}"}).raise_for_status()
        speakers = [speaker(edge_url, space, host_key, TONES[0], grant=False, log=work / "speaker-440.log"),
                    speaker(edge_url, space, asked["grant"], TONES[1], grant=True, log=work / "speaker-660.log")]
        say(f"Space {space} live on a, two speakers on air through the edge; waiting for b to stand by")
        deadline = time.monotonic() + 30
        while b.failover().get("standbys", {}).get(space, {}).get("segments", 0) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("node b did not stand by")
            time.sleep(0.3)

        t0: list[float] = []

        def progress(line: str) -> None:
            if not t0:
                t0.append(time.time() - 1.0)  # the first line is the first tick's

        result: dict[str, object] = {}
        cfg = LoadConfig(server=edge_url, space=space, player=args.player, duration_s=args.duration)
        runner = threading.Thread(target=lambda: result.update(loadtest(RunOptions(
            cfg, args.listeners, ramp_s=args.ramp, procs=args.procs), progress)), daemon=True)
        runner.start()
        while not t0:
            time.sleep(0.05)

        def at(t: float) -> None:
            time.sleep(max(0.0, t0[0] + t - time.time()))

        at(args.kill_at)
        a.kill9()
        events["kill"] = time.time()
        say(f"t={events['kill'] - t0[0]:.1f} s: kill -9 of node a")
        while b.failover().get("takeovers", 0) < 1:
            time.sleep(0.05)
            if time.time() - events["kill"] > 15:
                raise RuntimeError("node b did not take over")
        events["taken_over"] = time.time()
        say(f"node b took over {events['taken_over'] - events['kill']:.2f} s after the kill")
        at(args.restart_at)
        a.start()
        events["restart"] = time.time()
        say(f"t={events['restart'] - t0[0]:.1f} s: node a back; waiting for it to stand by")
        at(args.drain_at)
        events["drain"] = time.time()
        drained = subprocess.run(amphi_command("drain", "b", "--server", edge_url, "--key", b.key, "--json"),
                                 capture_output=True, text=True, timeout=60)
        events["drained"] = time.time()
        drain = json.loads(drained.stdout) if drained.returncode == 0 else {"error": drained.stderr}
        say(f"t={events['drain'] - t0[0]:.1f} s: amphi drain b -> {drain}")
        runner.join(args.duration + 120)
        httpx.post(f"{edge_url}/api/spaces/{space}/end", headers={"authorization": f"Bearer {host_key}"},
                   timeout=20).raise_for_status()
        host = a.url if drain.get("moved") else b.url
        rep = replay(host, space)
        timeline = result.get("timeline", [])
        drain_t = events["drain"] - t0[0]
        stalls_at = {int(r["t"]): int(r["stalls"]) for r in timeline}  # type: ignore[index]
        before = max((v for t, v in stalls_at.items() if t <= drain_t - 1), default=0)
        after = max((v for t, v in stalls_at.items() if t <= drain_t + 10), default=0)
        figures = {
            "listeners": args.listeners, "player": args.player,
            "takeover_s": round(events["taken_over"] - events["kill"], 2),
            "gap_p50_s": result.get("gap_p50_s"), "gap_p99_s": result.get("gap_p99_s"),
            "gap_max_s": result.get("gap_max_s"), "rejoins": result.get("rejoins"), "failed": result.get("failed"),
            "with_audio": result.get("with_audio"), "stalled_listeners": result.get("stalled_listeners"),
            "stalls_in_drain_window": after - before,
            "speakers_back_s": {hz: heard_again(rep, events["kill"], hz) for hz in TONES},
            "tone_levels_after_kill": {hz: levels_after(rep, events["kill"], hz) for hz in TONES},
            "replay_seams": rep["seams"], "replay_msns_contiguous": rep["msns_contiguous"],
            "replay_discontinuities": rep["vod"].count("#EXT-X-DISCONTINUITY\n"),  # type: ignore[union-attr]
            "vod_s": rep["vod_s"], "download_s": rep["download_s"], "drain": drain,
            "events_t": {k: round(v - t0[0], 2) for k, v in events.items()},
        }
        say(json.dumps(figures, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**figures, "loadtest": {k: v for k, v in result.items() if k != "timeline"},
                                        "timeline": timeline}, indent=1))
        plot(timeline, figures, args.out.with_suffix(".png"))
        say(f"wrote {args.out} and {args.out.with_suffix('.png')}")
        return 0
    finally:
        for proc in speakers or []:
            kill_group(proc)
        if edge is not None:
            kill_group(edge)
        a.stop(), b.stop()
        kill_group(redis_proc)
        shutil.rmtree(work, ignore_errors=True)


def plot(timeline: list[dict], figures: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in timeline]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(t, [r["playing"] for r in timeline], label="playing")
    ax1.plot(t, [r["failed"] for r in timeline], label="failed")
    ax1.set_ylabel("listeners")
    ax2.plot(t, [r["stalled_now"] for r in timeline], label="stalled now", color="#dd8452")
    ax2.plot(t, [r["stalls"] for r in timeline], label="stall episodes (cumulative)", color="#c44e52")
    ax2.set_ylabel("listeners")
    ax2.set_xlabel("seconds")
    for name, when in figures["events_t"].items():  # type: ignore[union-attr]
        if name in ("kill", "restart", "drain"):
            for ax in (ax1, ax2):
                ax.axvline(when, color="grey", linestyle="--")
            ax1.annotate(name, (when, 0), rotation=90, fontsize=8)
    ax1.legend(loc="lower right")
    ax2.legend(loc="upper left")
    fig.suptitle(f"{figures['listeners']} listeners through an edge: kill -9 of the host, then a drain "
                 f"(gap p99 {figures['gap_p99_s']} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    run(main)
