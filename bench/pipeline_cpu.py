"""CPU cost of one live Space with one speaker, as a share of one core of the node.

    .venv/bin/python bench/pipeline_cpu.py [--seconds 30] [--settle 5] [--small] [--json OUT]

Starts ``amphi serve`` on a free 127.0.0.1 port and measures the node process's CPU time
(user + system, all its threads, via psutil) over three windows of ``--seconds`` each:

1. idle: no Space at all;
2. Space live, nobody speaking: the mixer clock, AAC encoder and segmenter on silence;
3. Space live with one speaker: an ``amphi speak --tone 440`` subprocess (so its own CPU,
   Opus encoding and pacing, is not counted as the node's), after ``SETTLE_S`` on air.

No listener is connected. The media pipeline's cost is (3) - (1). Exits 1 if (3) exceeds
``--target`` (5 % of one core), 2 on an error. ``--small``: windows of 2 s after 2 s of
settling, bar 50 % (a short window on a shared machine is noise; a broken pipeline is not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from harness import (NodeProcess, amphi_command, end_space, exit_on_sigterm, kill_group, process_cpu_s, run,
                     small_mode, start_space, tail)

SETTLE_S = 5.0  # after a change (Space started, speaker on air) before a window opens
ON_AIR_TIMEOUT_S = 30.0  # for the speaker subprocess to report it is connected
PROGRESS_EVERY_S = 10.0


@dataclass
class Window:
    name: str
    seconds: float = 0.0  # wall time of the window
    cpu_s: float = 0.0  # node CPU time (user + system) in the window
    percent: float = 0.0  # of one core
    peak_1s_percent: float = 0.0  # the busiest one-second slice
    speaker_percent: float | None = None  # the speaker subprocess, for reference
    samples: list[float] = field(default_factory=list)  # per-second percentages


def cpu_seconds(proc: psutil.Process) -> float:
    return process_cpu_s(proc.pid)


def sample_window(name: str, node: psutil.Process, seconds: float, speaker: psutil.Process | None = None) -> Window:
    """Node CPU over ``seconds``, read once a second."""
    w = Window(name)
    print(f"[{name}] measuring {seconds:.0f} s", flush=True)
    start_wall, start_cpu = time.monotonic(), cpu_seconds(node)
    speaker_cpu = cpu_seconds(speaker) if speaker else 0.0
    last_wall, last_cpu = start_wall, start_cpu
    next_progress = start_wall + PROGRESS_EVERY_S
    end = start_wall + seconds
    while (now := time.monotonic()) < end:
        time.sleep(min(1.0, end - now))
        wall, cpu = time.monotonic(), cpu_seconds(node)
        w.samples.append(100 * (cpu - last_cpu) / (wall - last_wall))
        last_wall, last_cpu = wall, cpu
        if wall >= next_progress and wall < end - 0.5:
            so_far = 100 * (cpu - start_cpu) / (wall - start_wall)
            print(f"  {wall - start_wall:4.0f} s: {so_far:5.2f} % of one core so far", flush=True)
            next_progress += PROGRESS_EVERY_S
    w.seconds = last_wall - start_wall
    w.cpu_s = last_cpu - start_cpu
    w.percent = 100 * w.cpu_s / w.seconds
    w.peak_1s_percent = max(w.samples, default=0.0)
    if speaker is not None:
        w.speaker_percent = 100 * (cpu_seconds(speaker) - speaker_cpu) / w.seconds
    print(f"[{name}] {w.percent:.2f} % of one core", flush=True)
    return w


class Speaker:
    """``amphi speak --tone`` as a subprocess in its own process group."""

    def __init__(self, server: str, space_id: str, key: str, duration: float, log_path: Path) -> None:
        self.log_path = log_path
        cmd = amphi_command("speak", "--server", server, "--space", space_id, "--key", key,
                            "--tone", "440", "--duration", f"{duration:.0f}")
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_on_air(self) -> None:
        deadline = time.monotonic() + ON_AIR_TIMEOUT_S
        while time.monotonic() < deadline:
            if "on air" in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"amphi speak exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            time.sleep(0.1)
        raise RuntimeError(f"amphi speak was not on air within {ON_AIR_TIMEOUT_S:.0f} s:\n{tail(self.log_path)}")

    def stop(self) -> None:
        kill_group(self.proc)


def print_table(windows: list[Window], cores: int) -> None:
    idle = windows[0].percent
    print()
    print(f"node CPU, % of one core ({cores} cores here)       mean  peak 1 s  minus idle")
    for w in windows:
        print(f"  {w.name:44s} {w.percent:6.2f}  {w.peak_1s_percent:8.2f}  {w.percent - idle:10.2f}")
    for w in windows:
        if w.speaker_percent is not None:
            print(f"  (the speaker subprocess itself: {w.speaker_percent:.2f} %, not counted above)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each window (default 30)")
    parser.add_argument("--target", type=float, default=5.0, help="fail if one Space with a speaker exceeds this %% (default 5)")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds after each change before a window opens (default {SETTLE_S:g})")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    small_mode(parser, seconds=2.0, settle=2.0, target=50.0)
    args = parser.parse_args()
    if args.seconds < 2:
        parser.error("--seconds must be at least 2")
    exit_on_sigterm()

    total = 3 * args.seconds + 3 * args.settle + 10
    print(f"pipeline CPU: 3 windows of {args.seconds:.0f} s; about {total:.0f} s", flush=True)
    windows: list[Window] = []
    node = NodeProcess()
    speaker: Speaker | None = None
    with node:
        print(f"node {node.url} (pid {node.pid}), data in {node.dir}", flush=True)
        proc = psutil.Process(node.pid)
        try:
            time.sleep(args.settle)
            windows.append(sample_window("idle node (no Space)", proc, args.seconds))

            space = start_space(node.url, "pipeline CPU bench", join=False)
            print(f"Space {space.id} live; settling {args.settle:g} s", flush=True)
            time.sleep(args.settle)
            windows.append(sample_window("one Space live, no speaker", proc, args.seconds))

            speaker = Speaker(node.url, space.id, space.host_key, args.settle + args.seconds + 30,
                              node.dir / "speak.log")
            speaker.wait_on_air()
            print(f"speaker on air (pid {speaker.proc.pid}); settling {args.settle:g} s", flush=True)
            time.sleep(args.settle)
            windows.append(sample_window("one Space live, one speaker", proc, args.seconds,
                                         psutil.Process(speaker.proc.pid)))
            if speaker.proc.poll() is not None:
                raise RuntimeError(f"the speaker left during the window:\n{tail(speaker.log_path)}")
            if not node.alive():
                raise RuntimeError("the node exited during the window")
            end_space(node.url, space)
        finally:
            if speaker is not None:
                speaker.stop()

    cores = psutil.cpu_count() or 0
    print_table(windows, cores)
    with_speaker = windows[-1].percent
    summary = {
        "seconds": args.seconds, "cores": cores, "target_percent": args.target,
        "idle_percent": windows[0].percent, "space_percent": windows[1].percent,
        "space_with_speaker_percent": with_speaker,
        "pipeline_percent": with_speaker - windows[0].percent,
        "windows": [asdict(w) for w in windows],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if with_speaker > args.target:
        print(f"FAIL: one Space with a speaker uses {with_speaker:.2f} % of one core > {args.target:g} %")
        return 1
    print(f"PASS: one Space with a speaker uses {with_speaker:.2f} % of one core <= {args.target:g} %")
    return 0


if __name__ == "__main__":
    run(main)
