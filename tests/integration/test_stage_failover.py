"""The stage outlives its host (docs/stage.md, "When the host node dies"): real `amphi serve
--redis` nodes on a real redis-server. The host's stage is in Redis as it changes; after a
kill -9 of the host, the standby that takes the Space over has the same stage."""

from __future__ import annotations

import httpx
import orjson
import redis

from amphi.control.stage import Stage
from tests.integration.amphi_proc import AmphiServer, wait_until

SECRET = "stage-failover-test-secret-0123456789abcdef"


def busy_stage(node: AmphiServer, space: str, key: str) -> dict[str, str]:
    """Through the API: a co-host, a host-muted speaker, a pending request, a pending invite,
    one removed from the Space. Returns their grants by name."""
    cora, cora_grant = node.on_stage(space, key, "Cora")
    assert node.stage_call(space, f"/{cora}/role", key, {"role": "cohost"}).status_code == 200
    sam, sam_grant = node.on_stage(space, key, "Sam")
    assert node.stage_call(space, f"/{sam}/mute", cora_grant).status_code == 200  # the co-host mutes Sam
    rita = node.stage_call(space, "/requests", body={"name": "Rita"})
    assert rita.status_code == 201
    ian = node.stage_call(space, "/invites", key, {"name": "Ian"})
    assert ian.status_code == 201
    rex = node.stage_call(space, "/requests", body={"name": "Rex"})
    assert node.stage_call(space, f"/{rex.json()['participant']}/remove", key, {"from": "space"}).status_code == 200
    return {"cora": cora_grant, "sam": sam_grant, "rita": rita.json()["grant"], "ian": ian.json()["grant"],
            "rex": rex.json()["grant"]}


def stage_part(view: dict) -> dict:
    """What the stage says (not the audience or the sound panel), media state left out."""
    members = [{k: v for k, v in m.items() if k not in ("connected", "talking", "level", "feedback", "muted_talking")}
               for m in view["members"]]
    return {"members": members, "requests": view["requests"], "invited": view["invited"]}


def test_the_hosts_stage_is_in_redis_as_it_changes(tmp_path, redis_server, monkeypatch) -> None:
    monkeypatch.setenv("AMPHI_SECRET", SECRET)
    node = AmphiServer(tmp_path / "data", None, "--redis", redis_server.url, "--node-id", "a", "--pow", "off").start()
    try:
        space, key = node.create("stage in redis")
        node.start_space(space, key)
        busy_stage(node, space, key)
        view = node.stage(space, key)
        with redis.Redis.from_url(redis_server.url) as r:

            def saved() -> dict | None:
                raw = r.get(f"amphi:stage:{space}")
                return None if raw is None else orjson.loads(raw)

            wait_until(lambda: saved() is not None and Stage.restore(saved()).version > view["version"], 5,
                       "the stage's last change in Redis")
            assert 0 < r.ttl(f"amphi:stage:{space}") <= 86_400
            restored = Stage.restore(saved(), space_id=space).view(moderator=True)
        assert stage_part(restored) == stage_part(view)
    finally:
        node.stop()


def test_the_standby_that_takes_over_after_kill_9_has_the_same_stage(tmp_path, redis_server, monkeypatch) -> None:
    monkeypatch.setenv("AMPHI_SECRET", SECRET)
    a, b = (AmphiServer(tmp_path / f"data-{n}", None, "--redis", redis_server.url, "--node-id", n, "--pow", "off")
            for n in "ab")
    try:
        a.start()
        b.start()
        space, key = a.create("stage outlives its host")
        a.start_space(space, key)
        grants = busy_stage(a, space, key)
        before = a.stage(space, key)

        def standby_copies() -> bool:
            try:
                return b.node()["failover"]["standbys"].get(space, {}).get("segments", 0) >= 1
            except httpx.TransportError:
                return False

        wait_until(standby_copies, 30, "node b to stand by", interval=0.3)
        a.kill9()
        wait_until(lambda: b.node()["failover"]["takeovers"] == 1, 10, "node b to take the Space over", interval=0.1)
        after = b.stage(space, key)
        assert stage_part(after) == stage_part(before)
        assert after["version"] > before["version"]
        assert not any(m["connected"] for m in after["members"])  # they come back by offering again
        # the grants given on node a act on node b: a host mute sticks, the removed stay removed
        unmute = b.stage_call(space, "/me/unmute", grants["sam"])
        assert unmute.status_code == 403 and unmute.json()["error"] == "host_muted", unmute.text
        assert b.stage_call(space, "/me/accept", grants["ian"]).status_code == 200
        assert b.stage_call(space, "", grants["rex"], method="GET").status_code == 403
    finally:
        for node in (a, b):
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
            else:
                node.http.close()
