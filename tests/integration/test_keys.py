"""API keys against real nodes (docs/keys.md): `amphi keys` makes, lists and revokes them while
`amphi serve` runs; creating a Space needs one, managing any Space accepts one, the host key
still manages its own; revocation counts within a second, on one node and on two sharing Redis."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from click.testing import CliRunner

from amphi.cli import main
from tests.integration.amphi_proc import AmphiServer, wait_until

RATE_FLAGS = ("--key-rate", "0.05", "--key-burst", "3")  # a key may make 3 requests, then one every 20 s


def keys_cli(*args: str, ok: bool = True):  # type: ignore[no-untyped-def]
    """``amphi keys ...`` through the real command line (in this process: a new Python costs seconds
    on a busy machine), beside the running node, on the same files or Redis."""
    done = CliRunner().invoke(main, ["keys", *args])
    assert (done.exit_code == 0) == ok, done.stdout + done.stderr + repr(done.exception)
    return done


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def refused(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code, body
    if status == 401:
        assert r.headers["www-authenticate"].startswith('Bearer realm="amphi"')
    return body


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    server = AmphiServer(tmp_path_factory.mktemp("keys") / "data", None, *RATE_FLAGS).start()
    yield server
    server.stop()


def test_creating_a_space_needs_a_key(node: AmphiServer) -> None:
    title = {"title": "keyed"}
    body = refused(node.http.post("/api/spaces", json=title), 401, "api_key_required")
    assert "amphi keys create --name" in body["message"] and "Authorization: Bearer" in body["message"]
    refused(node.http.post("/api/spaces", json=title, headers={"authorization": "Basic dTpw"}), 401,
            "api_key_required")
    refused(node.http.post("/api/spaces", json=title, headers=bearer("not-a-key")), 401, "invalid_api_key")
    refused(node.http.post("/api/spaces", json=title, headers=bearer("amphi_0123456789ab_" + "A" * 43)), 401,
            "invalid_api_key")

    made = keys_cli("create", "--name", "studio", "--data-dir", str(node.data_dir))
    key = made.stdout.strip()
    assert re.fullmatch(r"amphi_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key) and "shown only this once" in made.stderr
    key_id = key.split("_")[1]
    assert key_id in made.stderr
    assert key not in (node.data_dir / "api_keys.json").read_text()

    r = node.http.post("/api/spaces", json=title, headers=bearer(key))
    assert r.status_code == 201, r.text
    space, host_key = r.json()["id"], r.json()["host_key"]
    assert node.start_space(space, host_key)["state"] == "live"  # the host key still manages its own Space
    assert node.end_space(space, host_key)["state"] == "ended"

    listed = json.loads(keys_cli("list", "--json", "--data-dir", str(node.data_dir)).stdout)
    mine = next(k for k in listed if k["id"] == key_id)
    assert mine["name"] == "studio" and mine["revoked"] is False and mine["last_used_at"] is not None
    assert all("hash" not in k and "secret" not in k for k in listed)
    table = keys_cli("list", "--data-dir", str(node.data_dir)).stdout
    assert re.search(rf"^{key_id}\s+studio\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d{{4}}.*\s+no$", table, re.M), table


@pytest.mark.serial  # the revocation must count within a second: alone (make test)
def test_an_api_key_manages_any_space_and_a_revoked_key_is_refused_within_a_second(node: AmphiServer) -> None:
    space, host_key = node.create("someone else's")  # made with the operator key (docs/keys.md)
    key = keys_cli("create", "--name", "operator's script", "--data-dir", str(node.data_dir)).stdout.strip()
    r = node.http.post(f"/api/spaces/{space}/stage/session", headers=bearer(key))
    assert r.status_code == 200 and r.json()["grant"], r.text
    r = node.http.post(f"/api/spaces/{space}/start", headers=bearer(key))
    assert r.status_code == 200 and r.json()["state"] == "live", r.text
    refused(node.http.post(f"/api/spaces/{space}/end"), 401, "unauthorized")
    refused(node.http.post(f"/api/spaces/{space}/end", headers=bearer("wrong")), 403, "forbidden")
    refused(node.http.post(f"/api/spaces/{space}/end", headers=bearer("amphi_0123456789ab_" + "A" * 43)), 401,
            "invalid_api_key")

    key_id = key.split("_")[1]
    assert f"revoked {key_id}" in keys_cli("revoke", key_id, "--data-dir", str(node.data_dir)).stdout
    revoked_at = time.monotonic()
    body = wait_until(lambda: (r := node.http.post(f"/api/spaces/{space}/end", headers=bearer(key))).status_code
                      == 401 and r.json(), 1.0, "the revocation to count", interval=0.02)
    assert body["error"] == "revoked_api_key" and time.monotonic() - revoked_at < 1.0
    assert node.status(space)["state"] == "live"
    assert node.end_space(space, host_key)["state"] == "ended"
    listed = json.loads(keys_cli("list", "--json", "--data-dir", str(node.data_dir)).stdout)
    assert next(k for k in listed if k["id"] == key_id)["revoked"] is True
    assert "no API key" in keys_cli("revoke", "000000000000", "--data-dir", str(node.data_dir), ok=False).stderr


def test_a_key_is_rate_limited(node: AmphiServer) -> None:
    key = keys_cli("create", "--name", "eager", "--data-dir", str(node.data_dir)).stdout.strip()
    answers = [node.http.post("/api/spaces", json={"title": f"n{i}"}, headers=bearer(key)) for i in range(4)]
    assert [r.status_code for r in answers[:3]] == [201, 201, 201]
    body = refused(answers[3], 429, "key_rate_limited")
    assert 1 <= int(answers[3].headers["retry-after"]) <= 20 and body["retry_after_s"] > 0
    r = node.http.post("/api/spaces", json={"title": "another key"}, headers=node.api_headers)  # its own budget
    assert r.status_code == 201, r.text


def test_failed_key_attempts_from_one_address_are_limited(node: AmphiServer) -> None:
    """Last in this module: it leaves 127.0.0.1 refused for a while."""
    good = keys_cli("create", "--name", "good", "--data-dir", str(node.data_dir)).stdout.strip()
    bad = bearer("amphi_0123456789ab_" + "B" * 43)
    codes = [node.http.post("/api/spaces", json={"title": "x"}, headers=bad).status_code for _ in range(21)]
    # a burst of 20 failures (KeysConfig.failure_burst), a few of them spent by the tests above
    assert 401 in codes and codes[-1] == 429 and codes == sorted(codes), codes
    assert 14 <= codes.count(401) <= 20, codes
    body = refused(node.http.post("/api/spaces", json={"title": "x"}, headers=bad), 429, "key_failures_limited")
    assert body["retry_after_s"] > 0
    # refused before the key is looked at: a right guess now would tell nothing
    refused(node.http.post("/api/spaces", json={"title": "x"}, headers=bearer(good)), 429, "key_failures_limited")


def test_the_demo_prints_one_key_and_reuses_it(tmp_path) -> None:
    def demo_key(server: AmphiServer) -> str:
        found = wait_until(lambda: re.search(r"amphi: API key to create Spaces .*: (amphi_\S+)",
                                             server.log.read_text()), 20, "the demo's key line")
        return found.group(1)

    server = AmphiServer(tmp_path / "data", None, "--demo").start()
    try:
        first = demo_key(server)
        assert server.http.post("/api/spaces", json={"title": "demo"}, headers=bearer(first)).status_code == 201
    finally:
        server.stop()
    again = AmphiServer(tmp_path / "data", None, "--demo").start()
    try:
        assert demo_key(again) == first
        names = [k["name"] for k in json.loads(keys_cli("list", "--json", "--data-dir", str(tmp_path / "data")).stdout)]
        assert names == ["demo"]
    finally:
        again.stop()


def test_a_key_made_with_redis_works_on_every_node(tmp_path, redis_server, monkeypatch) -> None:
    monkeypatch.setenv("AMPHI_SECRET", "keys-cluster-test-secret-0123456789")
    nodes = [AmphiServer(tmp_path / f"data-{n}", None, "--redis", redis_server.url, "--node-id", n).start()
             for n in ("a", "b")]
    try:
        a, b = nodes
        key = keys_cli("create", "--name", "cluster", "--redis", redis_server.url).stdout.strip()
        spaces = []
        for node in nodes:
            r = node.http.post("/api/spaces", json={"title": f"on {node.url}"}, headers=bearer(key))
            assert r.status_code == 201, r.text
            spaces.append(r.json()["id"])
        r = b.http.post(f"/api/spaces/{spaces[1]}/start", headers=bearer(key))  # any Space, on its node
        assert r.status_code == 200 and r.json()["state"] == "live", r.text
        assert not (tmp_path / "data-a" / "api_keys.json").exists()  # the keys live in Redis

        listed = json.loads(keys_cli("list", "--json", "--redis", redis_server.url).stdout)
        assert [k["name"] for k in listed] == ["cluster"] and listed[0]["last_used_at"] is not None
        keys_cli("revoke", listed[0]["id"], "--redis", redis_server.url)
        for node in nodes:
            refused(node.http.post("/api/spaces", json={"title": "late"}, headers=bearer(key)), 401,
                    "revoked_api_key")
    finally:
        for node in nodes:
            node.stop()
