"""``amphi --version`` and ``amphi space ...`` against a real node: the installed command as a
user runs it for the version and an unreachable node, the same click commands in-process
(``CliRunner``, over real HTTP) for the rest (each ``amphi`` process takes seconds of imports)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from importlib.metadata import version
from typing import NamedTuple

import pytest
from click.testing import CliRunner

from amphi.cli import main

from tests.integration.amphi_proc import BIN, AmphiServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmphiServer]:
    s = AmphiServer(tmp_path_factory.mktemp("cli") / "data").start()
    yield s
    s.stop()


def run_amphi(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMPHI_")}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, env=clean)


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def amphi(*args: str, **env: str) -> Result:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AMPHI_")}
    r = CliRunner().invoke(main, list(args), env={**unset, **env})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def test_version() -> None:
    r = run_amphi("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"amphi, version {version('amphi')}"


def test_a_space_from_the_command_line(server: AmphiServer) -> None:
    r = amphi("space", "create", "--title", "No key", "--server", server.url)
    assert r.returncode == 1 and "needs an API key" in r.stderr and "401" in r.stderr
    assert server.api_key is not None
    r = amphi("space", "create", "--title", "From the shell", "--dead-air", "20", "--json", "--server", server.url,
              "--key", server.api_key)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    sid, key = made["id"], made["host_key"]
    assert made["title"] == "From the shell" and made["dead_air_s"] == 20 and made["state"] == "scheduled"
    assert server.http.get(f"/api/spaces/{sid}").json()["title"] == "From the shell"

    r = amphi("space", "create", "--title", "Readable", "--starts-at", "2099-01-01T20:00:00Z", AMPHI_SERVER=server.url,
              AMPHI_API_KEY=server.api_key)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines())
    other = lines["id"].strip()
    assert lines["host key"].split()[0]
    assert lines["listen"].strip().endswith(f"/s/{other}")
    assert lines["host"].strip() == f"{server.url}/s/{other}/host"
    assert "2099-01-01T20:00:00Z" in lines["state"]

    r = amphi("space", "list", "--server", server.url)
    assert r.returncode == 0 and sid in r.stdout and "Readable" in r.stdout
    listed = json.loads(amphi("space", "list", "--json", "--server", server.url).stdout)
    assert {s["id"] for s in listed} == {sid, other}

    r = amphi("space", "show", sid, "--server", server.url)
    assert r.returncode == 0 and "scheduled" in r.stdout and "From the shell" in r.stdout

    r = amphi("space", "start", sid, "--server", server.url)  # no key
    assert r.returncode == 2 and "--host-key" in r.stderr
    r = amphi("space", "start", sid, "--host-key", "wrong", "--server", server.url)
    assert r.returncode == 1 and "host key" in r.stderr and "403" in r.stderr
    r = amphi("space", "start", sid, "--server", server.url, AMPHI_HOST_KEY=key)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{sid}: live"
    assert server.http.get(f"/api/spaces/{sid}").json()["state"] == "live"
    r = amphi("space", "end", sid, "--json", "--server", server.url, AMPHI_HOST_KEY=key)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "ended"
    r = amphi("space", "end", sid, "--server", server.url, AMPHI_HOST_KEY=key)
    assert r.returncode == 1 and "409" in r.stderr

    r = amphi("space", "show", "no-such-space", "--server", server.url)
    assert r.returncode == 1 and "no Space 'no-such-space'" in r.stderr
    r = amphi("space", "show", "not/an/id", "--server", server.url)
    assert r.returncode == 2 and "not a Space id" in r.stderr
    r = amphi("space", "create", "--title", " ", "--server", server.url, AMPHI_API_KEY=server.api_key)
    assert r.returncode == 1 and "title" in r.stderr and "400" in r.stderr


def test_an_api_key_goes_as_a_bearer(server: AmphiServer) -> None:
    """The CLI sends --key (AMPHI_API_KEY) as a bearer: a key the operator made (amphi keys
    create) creates Spaces and starts any of them; a wrong one is the node's 401."""
    made_key = amphi("keys", "create", "--name", "cli", "--data-dir", str(server.data_dir))
    assert made_key.returncode == 0, made_key.stderr
    key = made_key.stdout.strip()
    made = json.loads(amphi("space", "create", "--title", "keyed", "--json", "--server", server.url,
                            AMPHI_API_KEY=key).stdout)
    r = amphi("space", "start", made["id"], "--server", server.url, AMPHI_API_KEY=key)
    assert r.returncode == 0 and "live" in r.stdout, r.stderr  # an API key serves where the host key is taken
    r = amphi("space", "create", "--title", "x", "--server", server.url, "--key", key + "x")
    assert r.returncode == 1 and "401" in r.stderr


def test_unreachable_node() -> None:
    r = run_amphi("space", "list", "--server", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "cannot reach http://127.0.0.1:" in r.stderr and "Traceback" not in r.stderr
