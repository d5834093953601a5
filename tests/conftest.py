from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.amphi_proc import AmphiServer


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., AmphiServer]]:
    """Starts a node with the given ``amphi serve`` flags; every node stops after the test.
    Seats are node-wide, so a test about admission gets nodes of its own."""
    started: list[AmphiServer] = []

    def start(*flags: str) -> AmphiServer:
        server = AmphiServer(tmp_path / f"data{len(started)}", None, *flags).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path):
    """A real, empty ``redis-server`` on a free loopback port, stopped after the test."""
    from tests.integration.redis_proc import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
