import os
import signal

import pytest

from tests.integration.amphi_proc import AmphiServer, Speaker


@pytest.fixture
def amphi(tmp_path):
    server = AmphiServer(tmp_path / "data").start()
    yield server
    server.stop()


@pytest.fixture
def speakers():
    started: list[Speaker] = []

    def make(server: AmphiServer, space: str, key: str, *args: str) -> Speaker:
        sp = Speaker(server, space, key, *args).start()
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()


PAIR_SECRET = "cluster-test-secret-0123456789abcdef"  # the nodes' shared token key (AMPHI_SECRET)


@pytest.fixture
def node_pair(tmp_path, redis_server, monkeypatch):
    """start(*flags) -> two nodes on the same Redis and secret."""
    monkeypatch.setenv("AMPHI_SECRET", PAIR_SECRET)
    started: list[AmphiServer] = []

    def start(*flags: str) -> tuple[AmphiServer, AmphiServer]:
        # the tests' hundreds of joins from one address that never fetch media look like a flood to the
        # defense (docs/defense.md): it is about admission here, so no proof of work
        for name in ("a", "b"):
            started.append(AmphiServer(tmp_path / f"data-{name}", None, "--redis", redis_server.url,
                                       "--node-id", name, "--pow", "off", *flags).start())
        return started[-2], started[-1]

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGCONT)  # a test that stopped it (SIGSTOP) and failed
        server.stop()
