"""The route table (amphi.web.routes) and the token formats (amphi.control.tokens): pure, no
server. The edge's generated patterns are checked here with Python's ``re`` against the
table's own matcher; tests/edge runs them in real Varnish and nginx."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amphi.control.tokens import EDGE, GRANT, TICKET, TOKEN, Signer
from amphi.edge import vcl
from amphi.edge.varnish import front_config, front_script
from amphi.web.routes import MEDIA_OTHER, OTHER, ROUTES, Route

SIGNER = Signer(b"s" * 32)
TOK = SIGNER.token("abc", "seat0000seat", 1_900_000_000)
SAMPLE = {"id": "Sp_ace-1", "token": TOK, "msn": 12, "part": 3, "pid": "p4rt_id", "action": "mute",
          "name": "style.css", "node": "origin", "session": "Wh1p-session_0123456789ab"}


def sample(route: Route) -> dict[str, object]:
    return {p: SAMPLE[p] for p in route.params}


@pytest.mark.parametrize("route", list(ROUTES), ids=lambda r: r.name)
def test_every_route_round_trips(route: Route) -> None:
    params = sample(route)
    path = route.path(**params)
    m = ROUTES.match(path, next(iter(sorted(route.methods))))
    assert m is not None and m.route == route and m.allowed and m.params == params
    assert ROUTES.label(path) == route.template


def test_no_path_is_two_routes() -> None:
    for route in ROUTES:
        path = route.path(**sample(route))
        others = [r.name for r in ROUTES if r.regex.match(path) and r.template != route.template]
        assert others == [], (route.name, others)


@pytest.mark.parametrize("path, label", [
    ("/media/abc/t/l1.2.3/live.m3u8", "/media/{id}/t/{token}/live.m3u8"),
    ("/media/abc/t/l1.2.3/12.3.m4s", "/media/{id}/t/{token}/{msn}.{part}.m4s"),
    ("/media/abc/t/l1.2.3/12.m4s", "/media/{id}/t/{token}/{msn}.m4s"),
    ("/media/abc/t/l1.2.3/init.mp4", "/media/{id}/t/{token}/init.mp4"),
    ("/media/abc/12.m4s", "/media/{id}/{msn}.m4s"),
    ("/media/abc/vod.m3u8", "/media/{id}/vod.m3u8"),
    ("/media/abc/download.m4a", "/media/{id}/download.m4a"),
    ("/media/abc/edge/live.m3u8", "/media/{id}/edge/live.m3u8"),
    ("/api/spaces/abc/join", "/api/spaces/{id}/join"),
    ("/api/spaces/abc/events", "/api/spaces/{id}/events"),
    ("/api/spaces/abc/stage/host/accept", "/api/spaces/{id}/stage/{pid}/{action}"),
    ("/api/spaces/abc/speak", "/api/spaces/{id}/speak"),
    ("/api/spaces/abc/speak/Wh1p-session_0123456789ab", "/api/spaces/{id}/speak/{session}"),
    ("/api/spaces/abc/speak/short", OTHER),  # not a session id: too short to be one of ours
    ("/metrics", "/metrics"),
    ("/", "/"),
    # no route: a path with a Space id or a token never becomes a label
    ("/media/abc/../../etc/passwd", MEDIA_OTHER),
    ("/media/abc/t/l1.2.3/live.m3u9", MEDIA_OTHER),
    (f"/media/abc/t/{'l' * 200}/live.m3u8", MEDIA_OTHER),  # too long to be a token
    ("/media/a.b/vod.m3u8", MEDIA_OTHER),
    (f"/media/{'a' * 65}/vod.m3u8", MEDIA_OTHER),
    ("/media/abc/1234567890.m4s", MEDIA_OTHER),
    ("/media/abc/t//init.mp4", MEDIA_OTHER),
    ("/api/spaces/a.b/join", OTHER),
    ("/api/spaces/abc/join/", OTHER),
    ("/nowhere", OTHER),
    ("", OTHER),
])
def test_labels(path: str, label: str) -> None:
    assert ROUTES.label(path) == label
    assert (ROUTES.match(path) is None) == (label in (MEDIA_OTHER, OTHER))


def test_media_routes_say_how_they_are_let_in() -> None:
    m = ROUTES.match(f"/media/abc/t/{TOK}/7.2.m4s")
    assert m is not None and (m.route.file, m.route.access) == ("part", "token")
    assert m.params == {"id": "abc", "token": TOK, "msn": 7, "part": 2}
    m = ROUTES.match("/media/abc/edge/init.mp4")
    assert m is not None and (m.route.file, m.route.access) == ("init", "edge")
    public = {r.file for r in ROUTES.named("bare.") if r.public_once_ended}
    assert public == {"vod", "init", "download", "segment"}  # live and parts always need a token
    m = ROUTES.match("/media/abc/t/garbage/live.m3u8")  # routed: the Signer's 403, not a 404
    assert m is not None and m.route.name == "media.live"


def test_methods() -> None:
    assert ROUTES.match("/api/spaces", "POST").route.name == "spaces.create"
    assert ROUTES.match("/api/spaces", "GET").route.name == "spaces.list"
    m = ROUTES.match("/api/spaces/abc/join", "GET")
    assert m is not None and m.route.name == "join" and not m.allowed
    assert ROUTES.match("/media/abc/vod.m3u8", "HEAD").allowed


def test_building_a_path_checks_its_values() -> None:
    assert ROUTES["media.live"].path(id="abc", token=TOK) == f"/media/abc/t/{TOK}/live.m3u8"
    with pytest.raises(ValueError):
        ROUTES["join"].path(id="a/b")
    with pytest.raises(ValueError):
        ROUTES["join"].path()
    with pytest.raises(ValueError):
        ROUTES["join"].path(id="abc", extra=1)


def _python(edge_regex: str) -> re.Pattern[str]:
    """A VCL or nginx regex, in Python's syntax (named groups are spelled (?P<...>))."""
    return re.compile(edge_regex.replace("(?<", "(?P<"))


URLS = [
    f"/media/abc/t/{TOK}/live.m3u8", f"/media/abc/t/{TOK}/live.m3u8?_HLS_msn=3&_HLS_part=1",
    f"/media/abc/t/{TOK}/init.mp4", f"/media/abc/t/{TOK}/12.3.m4s", f"/media/abc/t/{TOK}/12.m4s",
    f"/media/abc/t/{TOK}/vod.m3u8", f"/media/abc/t/{TOK}/download.m4a",
    "/media/abc/vod.m3u8", "/media/abc/init.mp4", "/media/abc/download.m4a", "/media/abc/12.m4s",
    "/media/abc/12.3.m4s", "/media/abc/live.m3u8", "/media/abc/edge/live.m3u8",
    f"/media/abc/t/{TOK}/other.txt", f"/media/a.b/t/{TOK}/init.mp4", f"/media/abc/t/{'x' * 129}/init.mp4",
    f"/media/abc/t/{TOK}/12.3.m4s?a=/b", f"/media/abc/t/{TOK}/1234567890.m4s", "/media/abc/passwd",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("node", ["origin", "n-2", "bad.node"])
def test_the_vcl_patterns_accept_what_the_table_routes(url: str, node: str) -> None:
    path, _, query = url.partition("?")
    m = ROUTES.match(path)
    query_ok = re.fullmatch(r"[A-Za-z0-9_=&-]{0,64}", query) is not None
    node_ok = re.fullmatch(r"[A-Za-z0-9_-]{1,32}", node) is not None
    at_edge = f"/o/{node}{url}"
    tokened = m is not None and m.route.access == "token" and query_ok and node_ok
    assert bool(_python(vcl.MEDIA.text).match(at_edge)) == tokened
    replay = m is not None and m.route.public_once_ended and not query and node_ok
    assert bool(_python(vcl.REPLAY.text).match(at_edge)) == replay
    if tokened:  # the captures the VCL takes apart
        g = _python(vcl.MEDIA.text).match(at_edge)
        assert g is not None
        assert g.group(vcl.MEDIA.group("id")) == m.params["id"] and g.group(vcl.MEDIA.group("token")) == TOK
        assert g.group(vcl.MEDIA.group("file")) + g.group(vcl.MEDIA.group("query")) == url.rpartition("/")[2]


@pytest.mark.parametrize("url", URLS)
def test_the_nginx_locations_cache_what_the_table_routes(url: str, tmp_path: Path) -> None:
    spec = vcl.EdgeSpec.signed("e1", "k" * 32, (vcl.Backend.parse("origin", "http://127.0.0.1:9"),))
    conf = front_config(spec, "127.0.0.1", 9000, tmp_path, tmp_path / "v.sock", stream=False)
    blocks = re.findall(r'location ~ "([^"]+)" \{(.*?)\n        \}', conf, re.S)
    assert len(blocks) == 4
    locations = [_python(p) for p, body in blocks if "proxy_cache media;" in body]
    streamed = [_python(p) for p, body in blocks if "proxy_buffering off;" in body]
    joins = [_python(p) for p, body in blocks if "$amphi_join_to" in body]  # back to the fan-out's batches
    assert len(locations) == 2 and len(streamed) == 1 and len(joins) == 1
    assert joins[0].match("/api/spaces/abc/join") and not joins[0].match("/api/spaces/abc/leave")
    assert not joins[0].match(f"/o/origin{url}")
    m = ROUTES.match(url)  # nginx matches $uri: no query
    cached = m is not None and m.route.name in ("media.init", "media.live")
    hit = [loc.match(f"/o/origin{url}") for loc in locations]
    assert any(hit) == cached
    # segments are streamed while they are made: to Varnish, unbuffered, never the front's cache
    assert bool(streamed[0].match(f"/o/origin{url}")) == (m is not None and m.route.name == "media.segment")
    if cached:
        g = next(h for h in hit if h)
        assert (g["amphi_node"], g["amphi_space"], g["amphi_token"]) == ("origin", "abc", TOK)
        assert g["amphi_file"] == url.rpartition("/")[2]


def test_the_join_throttle_pattern() -> None:
    join = _python(vcl.JOIN)
    assert join.match("/api/spaces/abc/join") and join.match("/api/spaces/abc/join?x=1")
    assert not join.match("/api/spaces/abc/leave") and not join.match("/api/spaces/abc/joinx")
    assert f'req.url ~ "{vcl.JOIN}"' in vcl.render(vcl.EdgeSpec.signed(
        "e1", "k" * 32, (vcl.Backend.parse("origin", "http://127.0.0.1:9"),)))


def mutations(token: str) -> list[str]:
    return [token[:-1], token + "A", "x" + token[1:], token.replace(".", ",", 1), token[:5] + "/" + token[6:],
            token.rsplit(".", 1)[0] + ".", f"{token[0]}{'a' * 33}.{token.split('.')[1]}.{token.split('.')[2]}",
            token.split(".")[0] + ".1234567890123." + token.split(".")[2], "", "l"]


def test_the_token_format_matches_what_the_signer_makes() -> None:
    for host in (False, True):
        token = SIGNER.token("abc", "seat0000seat", 1_900_000_000, host=host)
        assert re.fullmatch(TOKEN.pattern, token)
        f = TOKEN.parse(token)
        assert f is not None and f.kind == ("h" if host else "l") and f.values == ("seat0000seat", "1900000000")
        assert f.body == token.rpartition(".")[0] and f.mac == token.rpartition(".")[2]
        for bad in mutations(token):
            assert not re.fullmatch(TOKEN.pattern, bad) and TOKEN.parse(bad) is None, bad
    vcl_token = re.compile(vcl.TOKEN_RE)  # the edges' copy is the format's own
    assert vcl_token.pattern == TOKEN.numbered() and f"/{TOKEN.numbered()}/" in front_script("k" * 32)
    m = vcl_token.match(TOK)
    assert m is not None and m.group(TOKEN.group("expires")) == "1900000000"
    assert m.group(TOKEN.group("body")) + "." + m.group(TOKEN.group("mac")) == TOK


def test_the_other_formats() -> None:
    ticket = SIGNER.ticket("abc", 170_000_000_000_001, 1_700_000_000)
    f = TICKET.parse(ticket)
    assert f is not None and f.values == ("170000000000001", "1700000000")
    assert TICKET.parse("7.1700000000.mac") is None and TICKET.parse(None) is None
    assert TICKET.parse("²." + ticket.partition(".")[2]) is None  # only ASCII digits
    grant = SIGNER.grant("abc", "p4rt_id", 1_900_000_000)
    assert GRANT.parse(grant) is not None and GRANT.parse("l" + grant[1:]) is None
    assert SIGNER.verify_grant("abc", grant, 0) == ("p4rt_id", 1_900_000_000)
    cred = SIGNER.edge_credential("e1")
    assert EDGE.parse(cred) is not None and SIGNER.verify_edge(cred) == "e1"
