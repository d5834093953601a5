"""A Space's timeline on disk: ``<data_dir>/spaces/<id>/timeline.jsonl``, one JSON object per
line, appended as things happen.

    {"t": 1763755200.0, "kind": "sample", "listeners": 120, "waiting": 4, ...}   once a second
    {"t": 1763755201.3, "kind": "space", "event": "scheduled -> live", ...}      per state change

Samples are written once a second while the Space is scheduled or live; events whenever
the node records one (``Observer.event`` in ``amphi.obs.observer``). Each line is one ``write`` on a file opened
for appending, so a crash loses at most the line being written, and a reader skips a torn
last line. The file is bounded: past ``max_bytes`` samples are no longer written (events
still are, they are few) and one ``timeline_full`` event says from when.

Reading is pure (``read``), for ``amphi report`` and the tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

FILE = "timeline.jsonl"
MAX_BYTES = 64 * 1024 * 1024  # about 2 days of one-second samples


class TimelineFile:
    """Appends lines to one Space's timeline. Blocking, but one small write to the page cache
    (no fsync): about 10 microseconds, once a second per Space."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self._max = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self.full = self._size >= max_bytes

    def append(self, line: dict[str, object]) -> None:
        sample = line.get("kind") == "sample"
        if sample and self.full:
            return
        data = orjson.dumps(line) + b"\n"
        if sample and self._size + len(data) > self._max:
            self.full = True
            data = orjson.dumps({"t": line["t"], "kind": "timeline_full", "max_bytes": self._max}) + b"\n"
        os.write(self._fd, data)
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Timeline:
    """What a timeline file holds, in order."""

    samples: list[dict[str, object]] = field(default_factory=list)
    events: list[dict[str, object]] = field(default_factory=list)
    skipped: int = 0  # lines that were not JSON objects (a torn last line after a crash)


def read(path: Path) -> Timeline:
    out = Timeline()
    if not path.exists():
        return out
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            out.skipped += 1
            continue
        if not isinstance(line, dict) or "t" not in line:
            out.skipped += 1
        elif line.get("kind") == "sample":
            out.samples.append(line)
        else:
            out.events.append(line)
    return out
