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
