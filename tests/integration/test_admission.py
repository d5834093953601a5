"""The waiting room against a real server: seats, the line, tokens, the draw at the start."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx

from tests.integration.amphi_proc import AmphiServer, wait_until


def join(amphi: AmphiServer, space: str, **body: str) -> httpx.Response:
    return amphi.http.post(f"/api/spaces/{space}/join", json=body)


def poll_until_admitted(amphi: AmphiServer, space: str, ticket: str, timeout: float = 30) -> dict:
    """Polls the way a client must: never before the server's retry_after_s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = join(amphi, space, ticket=ticket)
        if r.status_code == 200:
            return r.json()
        assert r.status_code in (202, 429), r.text
        time.sleep(float(r.json()["retry_after_s"]))
    raise AssertionError("not admitted in time")


async def concurrent_joins(url: str, space: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.post(f"/api/spaces/{space}/join", json={}) for _ in range(n)))


def test_capacity_100_with_300_concurrent_joiners(serve) -> None:
    # 300 fresh joins from one address that never fetch media look like a flood to the defense
    # (docs/defense.md), which would then ask these places for a proof of work: this test is
    # about admission alone
    amphi = serve("--max-listeners", "100", "--admit-rate", "10000", "--admit-burst", "1000", "--pow", "off")
    space, key = amphi.create("full house")
    amphi.start_space(space, key)
    answers = asyncio.run(concurrent_joins(amphi.url, space, 300))

    admitted = [r.json() for r in answers if r.status_code == 200]
    waiting = [r.json() for r in answers if r.status_code == 202]
    assert len(admitted) == 100 and len(waiting) == 200, {r.status_code for r in answers}
    assert all(a["status"] == "admitted" and "/t/" in a["playlist"] for a in admitted)
    assert all(r.headers["retry-after"].isdigit() for r in answers if r.status_code == 202)
    # positions are exactly 1..200, in the order the server took the joins (a ticket starts
    # with the number of its entry, handed out in arrival order)
    by_arrival = sorted(waiting, key=lambda w: int(w["ticket"].split(".")[0]))
    assert [w["position"] for w in by_arrival] == list(range(1, 201))
    status = amphi.status(space)
    assert (status["listeners"], status["waiting"], status["admitted_total"]) == (100, 200, 100)

    # two admitted listeners leave: the first two in line get the seats, and only they
    for a in admitted[:2]:
        assert amphi.http.post(f"/api/spaces/{space}/leave", json={"token": a["token"]}).json()["status"] == "left"
    first, second, third = by_arrival[:3]
    for w in (first, second):
        got = poll_until_admitted(amphi, space, w["ticket"])
        assert got["status"] == "admitted"
    r = join(amphi, space, ticket=third["ticket"])
    while r.status_code == 429:  # polled before its time: told when to come back
        time.sleep(float(r.json()["retry_after_s"]))
        r = join(amphi, space, ticket=third["ticket"])
    assert r.status_code == 202 and r.json()["position"] == 1
    assert amphi.status(space)["listeners"] == 100


def line_position(doc: dict, place: int) -> int | None:
    """A client's position from the line document and its place number, as the page works it
    out (static/admission.js): None once its turn has come."""
    if place < doc["called"]:
        return None
    return place - doc["called"] + 1 - sum(1 for g in doc["gaps"] if g < place)


def test_waiting_by_the_line_document(serve) -> None:
    amphi = serve("--max-listeners", "2", "--pow", "off")
    space, key = amphi.create("a line to watch")
    amphi.start_space(space, key)
    seated = [join(amphi, space).json() for _ in range(2)]
    waiting = [join(amphi, space).json() for _ in range(6)]
    assert [w["position"] for w in waiting] == [1, 2, 3, 4, 5, 6]
    assert all(w["line"] == f"/api/spaces/{space}/line" for w in waiting)

    r = amphi.http.get(waiting[0]["line"])
    assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=1"
    doc = r.json()
    assert (doc["space"], doc["state"], doc["waiting"], doc["free"]) == (space, "live", 6, 0)
    assert [line_position(doc, w["place"]) for w in waiting] == [1, 2, 3, 4, 5, 6]

    # two leave from the middle: everyone behind them moves up, as the API says too
    for w in (waiting[1], waiting[3]):
        assert amphi.http.post(f"/api/spaces/{space}/leave", json={"ticket": w["ticket"]}).json()["status"] == "left"
    stayed = [waiting[i] for i in (0, 2, 4, 5)]

    def fresh() -> dict:  # the node keeps a document a second: the next second's shows the leaves
        return amphi.http.get(f"/api/spaces/{space}/line").json()

    wait_until(lambda: fresh()["waiting"] == 4, 5, "a document with the leaves")
    doc = fresh()
    assert [line_position(doc, w["place"]) for w in stayed] == [1, 2, 3, 4]
    assert sorted(doc["gaps"]) == sorted([waiting[1]["place"], waiting[3]["place"]])
    by_api = [poll_until_position(amphi, space, w["ticket"]) for w in stayed]
    assert by_api == [1, 2, 3, 4]

    # a document that lies (forged, or replayed from later) only makes a client come early:
    # the node answers with the true place, and no seat
    early = poll_until_position(amphi, space, stayed[1]["ticket"])
    assert early == 2

    # a seat frees: the document says the head's turn has come; only then it redeems, once
    amphi.http.post(f"/api/spaces/{space}/leave", json={"token": seated[0]["token"]})
    wait_until(lambda: line_position(fresh(), stayed[0]["place"]) is None, 10, "the head's turn in the document")
    assert line_position(fresh(), stayed[1]["place"]) == 1
    got = join(amphi, space, ticket=stayed[0]["ticket"])
    assert got.status_code == 200 and got.json()["status"] == "admitted"
    # the same redemption again (a retry, or a copied ticket) is the same seat: the cap holds
    again = join(amphi, space, ticket=stayed[0]["ticket"])
    assert again.status_code == 200 and again.json()["token"].split(".")[0] == got.json()["token"].split(".")[0]
    status = amphi.status(space)
    assert (status["listeners"], status["waiting"]) == (2, 3)

    # not a document: the wrong method, an unknown Space
    assert amphi.http.post(f"/api/spaces/{space}/line", json={}).status_code == 405
    assert amphi.http.get("/api/spaces/nosuchspace/line").status_code == 404


def poll_until_position(amphi: AmphiServer, space: str, ticket: str) -> int:
    while True:
        r = join(amphi, space, ticket=ticket)
        if r.status_code == 202:
            return r.json()["position"]
        assert r.status_code == 429, r.text
        time.sleep(float(r.json()["retry_after_s"]))


def test_tokens_renew_and_a_silent_listener_frees_its_seat(serve) -> None:
    ttl, grace = 8, 2
    amphi = serve("--max-listeners", "1", "--token-ttl", str(ttl), "--seat-grace", str(grace))
    space, key = amphi.create("renewals")
    amphi.start_space(space, key)
    a = join(amphi, space).json()
    playlist = a["media_playlist"]  # the live playlist, whose requests renew (the join names the multivariant)
    wait_until(lambda: "#EXTINF" in amphi.http.get(playlist).text, 15, "a first segment")
    w = join(amphi, space)
    assert w.status_code == 202  # the one seat is taken

    # renewal: same seat, a later expiry; the renewed token reads media
    time.sleep(ttl / 2 + 0.5)
    b = join(amphi, space, token=a["token"]).json()
    assert b["status"] == "admitted" and b["renewed"] and b["token"] != a["token"]
    assert b["expires_at"] > a["expires_at"]
    assert amphi.http.get(b["playlist"]).status_code == 200

    # a player that only follows URLs is redirected to a renewed token once past half its life
    r = wait_until(lambda: (r := amphi.http.get(playlist, follow_redirects=False)).status_code == 307 and r,
                   ttl, "a renewal redirect")
    assert "/t/" in r.headers["location"] and a["token"] not in r.headers["location"]

    # the old token expires: its parts are refused; then the listener goes quiet
    wait_until(lambda: amphi.http.get(playlist.replace("live.m3u8", "init.mp4")).status_code == 401,
               ttl + 2, "the first token to expire")
    wait_until(lambda: amphi.status(space)["listeners"] == 0, ttl + grace + 5, "the seat to be freed")
    r = join(amphi, space, token=b["token"])
    assert r.status_code == 401 and r.json()["error"] == "token_expired"
    r = amphi.http.get(playlist)  # a replayed expired token, its seat gone
    assert r.status_code == 401
    assert poll_until_admitted(amphi, space, w.json()["ticket"])["status"] == "admitted"  # the next in line


def test_bad_credentials_are_refused_cheaply(serve) -> None:
    amphi = serve("--max-listeners", "1")
    space, key = amphi.create("strict")
    other, other_key = amphi.create("other")
    for s, k in ((space, key), (other, other_key)):
        amphi.start_space(s, k)
    a = join(amphi, space).json()
    w = join(amphi, space).json()
    token, ticket = a["token"], w["ticket"]

    def err(r: httpx.Response, status: int, code: str) -> None:
        assert r.status_code == status, r.text
        assert r.json()["error"] == code

    base = f"/media/{space}/t"
    err(amphi.http.get(f"/media/{space}/live.m3u8"), 401, "unauthorized")
    err(amphi.http.get(f"/media/{other}/t/{token}/live.m3u8"), 403, "forbidden")  # another Space's
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    err(amphi.http.get(f"{base}/{forged}/init.mp4"), 403, "forbidden")
    seat, expires, mac = token.split(".")
    err(amphi.http.get(f"{base}/{seat}.{int(expires) + 3600}.{mac}/init.mp4"), 403, "forbidden")  # extended
    err(amphi.http.get(f"{base}/{token}/live.m3u8", params={"_HLS_msn": "-1"}), 400, "bad_request")
    err(amphi.http.get(f"{base}/{token}/live.m3u8", params={"_HLS_msn": "1" * 40}), 400, "bad_request")
    err(join(amphi, space, ticket="garbage"), 400, "bad_ticket")
    err(join(amphi, other, ticket=ticket), 400, "bad_ticket")  # another Space's ticket
    err(join(amphi, space, token=forged), 403, "forbidden")
    err(amphi.http.post(f"/api/spaces/{space}/join", content=b"[1]"), 400, "malformed_body")
    err(amphi.http.post(f"/api/spaces/{space}/join", content=b"x" * 10_000), 413, "payload_too_large")
    err(amphi.http.get(f"/api/spaces/{space}/join"), 405, "method_not_allowed")
    err(amphi.http.post(f"/api/spaces/{space}/join", json={}, headers={"authorization": "Bearer nope"}),
        403, "forbidden")
    # the same ticket from two clients keeps one place
    again = join(amphi, space, ticket=ticket)
    while again.status_code == 429:
        time.sleep(float(again.json()["retry_after_s"]))
        again = join(amphi, space, ticket=ticket)
    assert again.json()["position"] == 1 and amphi.status(space)["waiting"] == 1
    # the host is never queued, and takes no listener's seat
    host = amphi.http.post(f"/api/spaces/{space}/join", json={}, headers={"authorization": f"Bearer {key}"})
    assert host.status_code == 200 and amphi.status(space)["listeners"] == 1
    # nothing above disturbed the admitted listener
    assert amphi.http.get(a["playlist"]).status_code == 200


def test_early_arrivals_are_drawn_at_random_when_the_space_starts(serve) -> None:
    # --pow off: 22 joins from one address would be suspects (tests/integration/test_defense.py)
    amphi = serve("--max-listeners", "1", "--admit-rate", "1000", "--ticket-hold", "60", "--pow", "off")
    starts = datetime.now(UTC) + timedelta(seconds=6)
    space, _ = amphi.create("at noon", starts.isoformat().replace("+00:00", "Z"))
    assert join(amphi, space).status_code == 200  # the seat, before the start (hold music)
    early = [join(amphi, space).json() for _ in range(20)]
    assert all(w["status"] == "waiting" and w["order"] == "draw_at_start" for w in early)
    wait_until(lambda: amphi.status(space)["state"] == "live", 15, "the scheduled start")

    def position(w: dict) -> int:
        r = join(amphi, space, ticket=w["ticket"])
        while r.status_code == 429:
            time.sleep(float(r.json()["retry_after_s"]))
            r = join(amphi, space, ticket=w["ticket"])
        assert r.status_code == 202 and r.json()["order"] == "fifo"
        return r.json()["position"]

    positions = [position(w) for w in early]
    assert sorted(positions) == list(range(1, 21))
    assert positions != list(range(1, 21))  # drawn, not by who came first (1 in 20! to fail)
    late = join(amphi, space).json()
    assert late["position"] == 21 and late["order"] == "fifo"
