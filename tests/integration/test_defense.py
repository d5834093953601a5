"""Defense against a real ``amphi serve`` over loopback (docs/defense.md): limits, sizes,
slow clients, tokens that must never pass, proof of work, the detector, and fuzzed input."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amphi.defense.pow import solve
from tests.integration.amphi_proc import AmphiServer, wait_until


def live(server: AmphiServer, title: str = "defense") -> tuple[str, str]:
    space, key = server.create(title)
    server.start_space(space, key)
    return space, key


def join(client: httpx.Client, space: str, body: dict | None = None, **kw) -> httpx.Response:
    return client.post(f"/api/spaces/{space}/join", json=body or {}, **kw)


def from_address(server: AmphiServer, address: str) -> httpx.Client:
    """A client that connects from ``address`` (any of 127.0.0.0/8 is loopback on Linux)."""
    return httpx.Client(base_url=server.url, timeout=10, transport=httpx.HTTPTransport(local_address=address))


def test_address_limit_refuses_with_jittered_retry_after_and_spares_other_addresses(
        serve: Callable[..., AmphiServer]) -> None:
    server = serve("--address-join-rate", "1", "--address-join-burst", "3")
    space, _ = live(server)
    with from_address(server, "127.0.9.1") as a, from_address(server, "127.0.9.2") as b:
        assert [join(a, space).status_code for _ in range(3)] == [200, 200, 200]
        refused = [join(a, space) for _ in range(3)]
        assert {r.status_code for r in refused} == {429}
        assert all(r.json()["error"] == "address_rate_limited" and int(r.headers["retry-after"]) >= 1 for r in refused)
        assert len({r.json()["retry_after_s"] for r in refused}) > 1  # jittered
        assert join(b, space).status_code == 200  # another address has its own budget
        # X-Forwarded-For from an untrusted peer is ignored: still the same address, still refused
        r = join(a, space, headers={"x-forwarded-for": "203.0.113.7"})
        assert r.status_code == 429
    assert server.status(space)["listeners"] == 4


def test_an_address_that_joins_again_and_again_must_work_before_any_verdict(
        serve: Callable[..., AmphiServer]) -> None:
    server = serve("--pow-bits", "6")
    space, _ = live(server)
    with from_address(server, "127.0.11.1") as bot, from_address(server, "127.0.12.1") as person:
        assert [join(bot, space).status_code for _ in range(8)] == [200] * 8
        r = join(bot, space)  # the ninth fresh join from one address within the detector's window
        assert r.status_code == 429 and r.json()["error"] == "challenge_required", r.text
        c = r.json()["challenge"]
        assert server.status(space)["detector"]["pow"]["active"] is False  # no verdict: this address alone
        assert join(bot, space, {"challenge": c["challenge"], "solution": solve(c["challenge"], c["bits"])}
                    ).status_code == 200  # worked for it: seated
        assert join(person, space).status_code == 200  # someone else is not touched
    assert server.node()["defense"]["challenges"]["to_suspects"] == 1
    assert server.status(space)["listeners"] == 10


def test_trusted_proxy_forwarded_for_is_the_client(serve: Callable[..., AmphiServer]) -> None:
    server = serve("--address-join-rate", "1", "--address-join-burst", "1", "--trusted-proxy", "127.0.0.0/8")
    space, _ = live(server)
    for i in range(4):  # one edge, four clients behind it: each its own budget
        assert join(server.http, space, headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code == 200
    r = join(server.http, space, headers={"x-forwarded-for": "198.51.100.1"})
    assert r.status_code == 429 and r.json()["error"] == "address_rate_limited"
    # what the client itself wrote is left of the edge's entry and does not help it
    r = join(server.http, space, headers={"x-forwarded-for": "192.0.2.99, 198.51.100.1"})
    assert r.status_code == 429


def test_oversized_headers_and_bodies_are_refused(amphi: AmphiServer) -> None:
    space, _ = live(amphi)
    r = join(amphi.http, space, headers={"x-padding": "a" * 9000})
    assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
    r = amphi.http.post(f"/api/spaces/{space}/join", content=b"{" + b" " * 5000 + b"}",
                        headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert join(amphi.http, space).status_code == 200


def test_slow_clients_are_cut_off_and_joins_still_answered(serve: Callable[..., AmphiServer]) -> None:
    server = serve("--header-timeout", "2")
    space, _ = live(server)
    slow = []
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), source_address=(f"127.0.8.{i + 1}", 0))
        s.sendall(b"POST /api/spaces/x/join HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        slow.append(s)
    idle = socket.create_connection(("127.0.0.1", server.port))  # connects and sends nothing
    started = time.monotonic()
    assert join(server.http, space).status_code == 200
    for s in slow:
        s.sendall(b"X-More: 1\r\n")  # trickling does not extend the deadline
    assert all(closed_by_server(s) for s in [*slow, idle])
    assert time.monotonic() - started < 6


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        while s.recv(1024):  # a 408 answer, then the close
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        s.close()


def test_tokens_forged_expired_replayed_or_foreign_are_never_accepted(serve: Callable[..., AmphiServer]) -> None:
    server = serve("--token-ttl", "2", "--seat-grace", "0")
    space, _ = live(server, "one")
    other, _ = live(server, "other")
    answer = join(server.http, space).json()
    token = answer["token"]
    base = f"/media/{space}/t/{token}"
    wait_until(lambda: server.http.get(f"{base}/init.mp4").status_code == 200, 10, "init with a good token")
    seat, expires, mac = token.split(".")
    forged = [
        f"{seat}.{int(expires) + 3600}.{mac}",  # extended
        f"{seat[0]}AAAAAAAAAAAA.{expires}.{mac}",  # another seat
        f"{seat}.{expires}.{'A' * 22}",  # made-up MAC
        "h" + token[1:],  # promoted to host
        "garbage", "l" * 200,
    ]
    refused = []
    for bad in forged:
        for name in ("init.mp4", "live.m3u8", "0.0.m4s", "0.m4s"):
            refused.append(server.http.get(f"/media/{space}/t/{bad}/{name}").status_code)
    for name in ("init.mp4", "live.m3u8", "0.0.m4s"):  # the token on another Space
        refused.append(server.http.get(f"/media/{other}/t/{token}/{name}").status_code)
    server.http.post(f"/api/spaces/{space}/leave", json={"token": token})
    wait_until(lambda: time.time() > int(expires) + 0.2, 5, "the token to expire")
    for name in ("init.mp4", "live.m3u8", "0.0.m4s", "0.m4s"):  # expired, and its seat released
        refused.append(server.http.get(f"{base}/{name}").status_code)
    assert len(refused) == 31 and all(s in (401, 403) for s in refused[:20] + refused[24:]), refused
    assert refused[20:24] == [404] * 4  # too long to be a token at all: not even routed
    # a renewal with the expired token of a released seat is refused too
    assert join(server.http, space, {"token": token}).status_code == 401
    # the detector counted them
    wait_until(lambda: server.status(space)["detector"]["evidence"].get("token_validity") not in (None, 1.0), 10,
               "the detector to count invalid tokens")


def test_pow_operator_switch_challenge_single_use_and_bound(serve: Callable[..., AmphiServer]) -> None:
    server = serve("--pow-bits", "8")
    space, key = live(server)
    other, _ = live(server, "other")
    assert server.http.post(f"/api/spaces/{space}/defense", json={"pow": "on"}).status_code == 401
    r = server.http.post(f"/api/spaces/{space}/defense", json={"pow": "sometimes"},
                         headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 400
    r = server.http.post(f"/api/spaces/{space}/defense", json={"pow": "on"}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["pow"]["active"] is True
    assert join(server.http, other).status_code == 200  # the switch is per Space
    r = join(server.http, space)
    assert r.status_code == 429 and r.json()["error"] == "challenge_required"
    c = r.json()["challenge"]
    body = {"challenge": c["challenge"], "solution": solve(c["challenge"], c["bits"])}
    assert join(server.http, other, body).status_code == 200  # pow is off there: the fields are ignored
    wrong = join(server.http, space, {"challenge": c["challenge"], "solution": "x"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "bad_solution"
    assert join(server.http, space, body).status_code == 200
    again = join(server.http, space, body)
    assert again.status_code == 403 and again.json()["error"] == "challenge_reused"
    # solved for this Space, it is worth nothing for another one with the PoW on too
    third, third_key = server.create("third")
    server.start_space(third, third_key)
    server.http.post(f"/api/spaces/{third}/defense", json={"pow": "on"}, headers={"authorization": f"Bearer {third_key}"})
    c = join(server.http, space).json()["challenge"]
    body = {"challenge": c["challenge"], "solution": solve(c["challenge"], c["bits"])}
    foreign = join(server.http, third, body)
    assert foreign.status_code == 403 and foreign.json()["error"] == "bad_solution"
    assert join(server.http, space, body).status_code == 200


def test_a_flood_is_called_an_attack_and_switches_the_pow_on(serve: Callable[..., AmphiServer]) -> None:
    server = serve("--pow-bits", "8")
    space, _ = live(server)
    answers: list[str] = []
    with from_address(server, "127.0.7.1") as bot:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:  # hundreds of fresh joins, never solving, never coming back
            r = join(bot, space)
            answers.append(str(r.status_code) if r.status_code != 429 else r.json()["error"])
            if len(answers) % 50 == 0 and server.status(space)["detector"]["pow"]["active"]:
                break
        else:
            raise AssertionError(f"no verdict while flooding: {server.status(space)['detector']}")
    # seated until the address turned suspect, challenged from then on (before and after the verdict)
    # or refused once past its rate: never seated again
    assert answers[:9] == ["200"] * 8 + ["challenge_required"], answers[:20]
    assert set(answers[9:]) <= {"challenge_required", "address_rate_limited"}, set(answers)
    status = server.status(space)["detector"]
    assert "attack" in status["label"] and status["pow"]["active"]
    assert status["evidence"]["challenge_solve_ratio"] == 0 and status["evidence"]["bad_join_share"] > 0.5
    node = server.node()["defense"]
    assert "attack" in node["label"] and node["challenges"]["to_suspects"] >= 1
    log = server.log.read_text()
    assert "detector node: normal -> attack" in log and "proof of work on" in log


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                       max_leaves=10)
FIELDS = st.fixed_dictionaries({}, optional={"ticket": JSONISH, "token": JSONISH, "challenge": JSONISH,
                                             "solution": JSONISH, "pow": JSONISH})


def test_fuzzed_join_and_media_inputs_never_5xx(serve: Callable[..., AmphiServer]) -> None:
    server = serve("--pow", "on", "--pow-bits", "4", "--address-join-burst", "100000")
    space, _ = live(server)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=FIELDS | JSONISH, raw=st.binary(max_size=64), path=st.text(max_size=30),
           query=st.text(max_size=30), target=st.sampled_from([space, "nope", "x" * 64]))
    def check(body, raw, path, query, target) -> None:
        r = server.http.post(f"/api/spaces/{target}/join", json=body)
        assert r.status_code < 500, (body, r.text)
        assert "error" in r.json() or r.status_code in (200, 202)
        r = server.http.post(f"/api/spaces/{target}/join", content=raw)
        assert r.status_code < 500, (raw, r.text)
        r = server.http.get(f"/media/{target}/t/{quote(path, safe='') or 'x'}/live.m3u8", params={"_HLS_msn": query})
        assert r.status_code < 500, (path, query, r.text)

    check()
    assert server.proc is not None and server.proc.poll() is None
    assert join(server.http, space).status_code == 429  # still answering, PoW still on
