"""Two real ``amphi serve --redis`` nodes sharing one real redis-server (docs/cluster.md)."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from tests.integration.amphi_proc import TEST_SEGMENT_PARTS, AmphiServer, wait_until


def join(node: AmphiServer, space: str, body: dict | None = None) -> httpx.Response:
    return node.http.post(f"/api/spaces/{space}/join", json=body or {})


def test_a_space_created_on_one_node_is_joinable_on_the_other(node_pair) -> None:
    a, b = node_pair()
    space, key = a.create("on a")
    assert b.status(space)["title"] == "on a"
    assert {n["id"] for n in b.http.get("/api/nodes").json()} == {"a", "b"}
    r = b.http.post(f"/api/spaces/{space}/start", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["state"] == "live", r.text  # forwarded to a (docs/cluster.md)
    assert a.status(space)["state"] == "live"
    wait_until(lambda: b.status(space)["state"] == "live", 5, "node b to see the Space live")
    r = join(b, space)
    assert r.status_code == 200, r.text
    playlist = r.json()["playlist"]
    assert playlist.startswith(f"{a.url}/media/{space}/t/")  # the media is where the Space is hosted
    assert httpx.get(playlist, timeout=10).status_code == 200
    assert a.status(space)["listeners"] == 1 and b.status(space)["listeners"] == 1
    renewed = join(a, space, {"token": r.json()["token"]})
    assert renewed.status_code == 200 and renewed.json()["renewed"]


def test_the_cap_is_exact_and_the_line_is_one_fifo_across_nodes(node_pair) -> None:
    a, b = node_pair("--max-listeners", "100", "--admit-rate", "10000", "--admit-burst", "1000")
    space, key = a.create("surge")
    a.start_space(space, key)
    wait_until(lambda: b.status(space)["state"] == "live", 5, "node b to see the Space live")
    nodes = [a, b]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: (i % 2, join(nodes[i % 2], space)), range(300)))
    admitted = [(n, r.json()) for n, r in answers if r.status_code == 200]
    waiting = [(n, r.json()) for n, r in answers if r.status_code == 202]
    assert len(admitted) == 100 and len(waiting) == 200
    assert sorted(w["position"] for _, w in waiting) == list(range(1, 201))
    assert {n for n, _ in waiting} == {0, 1}  # both nodes queued people
    assert a.status(space)["listeners"] == 100 and b.status(space)["waiting"] == 200

    # 50 seats free (leaves on both nodes): the 50 at the front are offered them, in order
    for i, (_, adm) in enumerate(admitted[:50]):
        r = nodes[i % 2].http.post(f"/api/spaces/{space}/leave", json={"token": adm["token"]})
        assert r.json()["status"] == "left"
    wait_until(lambda: b.status(space)["seats_offered"] == 50, 10, "the 50 freed seats to be offered")
    waiting.sort(key=lambda nw: nw[1]["position"])
    asked = time.monotonic()
    wait_until(lambda: time.monotonic() - asked > max(w["retry_after_s"] for _, w in waiting) / 2 + 0.2,
               15, "the earliest poll the waiting clients were told")  # polling sooner is 429 too_early
    # every ticket redeemed at once on both nodes (a replay racing the original): the cap stays
    # exact, and a ticket's two answers are the same seat
    with ThreadPoolExecutor(16) as pool:
        futures = [tuple(pool.submit(join, nodes[k], space, {"ticket": w["ticket"]}) for k in (1 - n, n))
                   for n, w in waiting]
        pairs = [(x.result(), y.result()) for x, y in futures]
    assert [(x.status_code, y.status_code) for x, y in pairs[:50]] == [(200, 200)] * 50
    assert all(x.json()["token"].split(".")[0] == y.json()["token"].split(".")[0] for x, y in pairs[:50])  # one seat
    for x, y in pairs[50:]:  # still waiting: a place each, the second of two polls at once too early (429)
        assert sorted((x.status_code, y.status_code)) in ([202, 202], [202, 429]), (x.text, y.text)
    assert sorted(next(r for r in p if r.status_code == 202).json()["position"] for p in pairs[50:]) == list(range(1, 151))
    assert a.status(space)["listeners"] == 100 and b.status(space)["seats_offered"] == 0


def test_kill_9_one_api_node_joins_continue_on_the_other(node_pair) -> None:
    a, b = node_pair("--max-listeners", "10", "--token-ttl", "3", "--seat-grace", "1")
    space, key = b.create("hosted on b")
    b.start_space(space, key)
    for _ in range(10):
        assert join(a, space).status_code == 200  # seats taken through a; nobody will renew them
    waiting = join(b, space)
    assert waiting.status_code == 202 and waiting.json()["position"] == 1
    a.kill9()
    # b answers joins at once, and the seats a handed out lapse without a
    t0 = time.monotonic()
    r = join(b, space)
    assert r.status_code == 202 and r.json()["position"] == 2 and time.monotonic() - t0 < 1
    wait_until(lambda: b.status(space)["listeners"] == 0, 10, "the dead node's unrenewed seats to lapse")

    def picked_up() -> bool:
        r = join(b, space, {"ticket": waiting.json()["ticket"]})
        return r.status_code == 200 and r.json()["playlist"].startswith(b.url)

    wait_until(picked_up, 15, "the first in line to be admitted on b", interval=0.5)
    wait_until(lambda: {n["id"] for n in b.http.get("/api/nodes").json()} == {"b"}, 10,
               "the dead node to drop out of the registry")


def part_number(uri: str) -> int:
    msn, part = uri.removesuffix(".m4s").split(".")
    return int(msn) * int(TEST_SEGMENT_PARTS) + int(part)  # the parts a segment of the nodes under test


def listed_parts(text: str) -> list[tuple[int, str]]:
    """(number, own URI) of each part the playlist lists (as byte ranges of its segment) or hints."""
    out, counts = [], {}
    for uri in re.findall(r'^#EXT-X-(?:PART|PRELOAD-HINT):.*URI="(\d+)\.m4s"', text, re.M):
        index = counts[uri] = counts.get(uri, -1) + 1
        out.append((part_number(f"{uri}.{index}.m4s"), f"{uri}.{index}.m4s"))
    return out


class Player(threading.Thread):
    """A listener that follows the playlist (blocking reloads), fetches every new part and
    renews its token through the API at half-life, alternating nodes; records any failure."""

    def __init__(self, nodes: list[AmphiServer], space: str, first: dict) -> None:
        super().__init__(daemon=True)
        self.nodes, self.space = nodes, space
        self.token, self.playlist = first["token"], first["media_playlist"]
        self.renew_at = time.monotonic() + first["renew_after_s"]
        self.parts: list[str] = []
        self.errors: list[str] = []
        self.renewals = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                if time.monotonic() >= self.renew_at:
                    node = self.nodes[self.renewals % 2]
                    r = join(node, self.space, {"token": self.token})
                    if r.status_code != 200:
                        self.errors.append(f"renew on {node.url}: {r.status_code} {r.text}")
                        return
                    self.token, self.playlist = r.json()["token"], r.json()["media_playlist"]
                    self.renew_at = time.monotonic() + r.json()["renew_after_s"]
                    self.renewals += 1
                base = self.playlist.rsplit("/", 1)[0]
                r = http.get(self.playlist, follow_redirects=True)
                if r.status_code != 200:
                    self.errors.append(f"playlist {r.status_code} {r.text}")
                    return
                listed = listed_parts(r.text)
                last = part_number(self.parts[-1]) if self.parts else listed[-3][0] - 1
                for _, uri in [(n, u) for n, u in listed if n > last]:
                    p = http.get(f"{base}/{uri}")  # the hinted part: the origin answers once it exists
                    if p.status_code != 200:
                        self.errors.append(f"part {uri}: {p.status_code}")
                        return
                    self.parts.append(uri)
                self.stop.wait(0.3)


def test_redis_restart_mid_space_listeners_keep_playing_and_joins_resume(node_pair, redis_server) -> None:
    a, b = node_pair("--token-ttl", "4", "--seat-grace", "2")
    space, key = a.create("through a redis restart")
    a.start_space(space, key)
    r = join(b, space)
    assert r.status_code == 200
    player = Player([a, b], space, r.json())
    player.start()
    try:
        wait_until(lambda: len(player.parts) >= 3 or player.errors, 15, "the player to fetch parts")
        redis_server.stop()
        refused = wait_until(lambda: (r := join(b, space)).status_code == 503 and r, 10, "joins to be refused")
        assert 2 <= float(refused.headers["retry-after"]) <= 6
        t0 = time.monotonic()
        assert join(a, space).status_code == 503 and time.monotonic() - t0 < 0.5  # fast
        before = len(player.parts)
        renewals = player.renewals
        wait_until(lambda: player.renewals >= renewals + 2 or player.errors, 15, "renewals while Redis is down")
        assert not player.errors and len(player.parts) > before
        redis_server.start()  # empty: nothing persisted
        for node in (a, b):
            wait_until(lambda: join(node, space).status_code == 200, 15, f"joins to resume on {node.url}")
        assert b.status(space)["title"] == "through a redis restart"  # a re-published it
        renewals = player.renewals
        wait_until(lambda: player.renewals >= renewals + 2 or player.errors, 15, "renewals after Redis returns")
        assert not player.errors, player.errors
        assert a.status(space)["listeners"] >= 1  # the player's lost seat was taken back
    finally:
        player.stop.set()
        player.join(5)
    assert not player.errors, player.errors
    flat = [part_number(p) for p in player.parts]
    assert flat == list(range(flat[0], flat[0] + len(flat))), "the player missed parts"


OPERATOR_KEY = "cluster-test-operator-key"


def dashboard_listeners(node: AmphiServer) -> int | None:
    """Listeners in the newest node sample of the dashboard's stream (its first snapshot)."""
    auth = {"authorization": f"Bearer {OPERATOR_KEY}"}
    with node.http.stream("GET", "/dashboard/stream", headers=auth, timeout=10) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                samples = [m for m in orjson.loads(line[6:]) if m.get("series") == "node"]
                return samples[-1]["listeners"] if samples else None
    return None


def test_every_nodes_dashboard_metrics_and_counters_show_the_cluster_wide_audience(node_pair, monkeypatch) -> None:
    """With --redis, obs renders the store's shared figures, not the node's own share."""
    monkeypatch.setenv("AMPHI_OPERATOR_KEY", OPERATOR_KEY)
    a, b = node_pair()
    space, key = a.create("watched from both")
    a.start_space(space, key)
    wait_until(lambda: b.status(space)["state"] == "live", 5, "node b to see the Space live")
    for node, n in ((a, 3), (b, 2)):
        for _ in range(n):
            assert join(node, space).status_code == 200
    auth = {"authorization": f"Bearer {OPERATOR_KEY}"}

    def listeners_metric(node: AmphiServer) -> float:
        text = node.http.get("/metrics", headers=auth).text
        return float(re.search(r"^amphi_listeners (\S+)$", text, re.M).group(1))

    for node in (a, b):
        wait_until(lambda: node.node()["admission"]["occupied"] == 5, 15, f"/api/node on {node.url} to count 5")
        wait_until(lambda: listeners_metric(node) == 5, 15, f"/metrics on {node.url} to count 5")
        wait_until(lambda: dashboard_listeners(node) == 5, 15, f"the dashboard of {node.url} to count 5")
