"""Durable file writes, and the open-file limit."""

from __future__ import annotations

import os
import resource
from pathlib import Path

MAX_FILES = 1 << 20  # as many open files as a process asks for at most (Linux's default fs.nr_open)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Writes ``data`` so that ``path`` holds either its old content or all of the new:
    temporary file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def raise_open_files() -> int:
    """Lifts the soft open-file limit to the hard one, and the hard one too where this process
    may (root: up to ``MAX_FILES``): a socket per listener, and a listener may hold two (an edge's
    fan-out at 20,000 listeners; a load generator). A process started afterwards inherits it.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (MAX_FILES if hard == resource.RLIM_INFINITY else max(hard, MAX_FILES), hard):
        if want == resource.RLIM_INFINITY or want <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            continue  # not allowed to raise the hard limit: up to it
    return soft
