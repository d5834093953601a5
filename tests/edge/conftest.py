from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.edge.edges import EdgeProc
from tests.integration.amphi_proc import AmphiServer, Speaker, free_port

SECRET = "e" * 64  # all nodes and edges share the token key (AMPHI_SECRET or <data_dir>/secret)


@dataclass
class Tier:
    origin: AmphiServer
    edges: list[EdgeProc]
    space: str
    key: str
    secret_file: Path


@pytest.fixture(scope="package")
def tier(tmp_path_factory, request):
    """One origin (node "origin") with a live Space and a 440 Hz speaker, behind 3 edges
    (shared by test_edge and test_streaming: it takes some 10 s to start)."""
    tmp = tmp_path_factory.mktemp("edge")
    data = tmp / "data"
    data.mkdir()
    secret_file = data / "secret"
    secret_file.write_text(SECRET)
    ports = [free_port() for _ in range(3)]
    # --pow off: every test joins from 127.0.0.1, which the node would rightly call a suspect
    origin = AmphiServer(data, None, "--token-ttl", "10", "--seat-grace", "30", "--pow", "off",
                         *[a for p in ports for a in ("--edge", f"http://127.0.0.1:{p}")]).start()
    edges = []
    speaker = None
    try:
        for i, port in enumerate(ports):
            edges.append(EdgeProc(tmp / f"edge{i + 1}", f"edge{i + 1}", origin.url, secret_file,
                                  "--media-rate", "0", "--join-rate", "5", "--max-connections-per-address", "40",
                                  "--token-ttl", "10",
                                  port=port).start())
        space, key = origin.create("edge")
        origin.start_space(space, key)
        speaker = Speaker(origin, space, key, "--tone", "440").start()
        yield Tier(origin, edges, space, key, secret_file)
    finally:
        if speaker is not None:
            speaker.stop()
        for e in edges:
            e.stop()
        origin.stop()
