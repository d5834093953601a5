"""The OpenAPI document (``/api/openapi.json``) checked against a real node's answers: a Space's
whole life through the API (create, list, show, join, line, the stage, start, end, events)
and its refusals, every answer's status, content type and body validated against the
document's schema for that path, method and status (jsonschema)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator

from amphi.web.routes import ROUTES
from tests.integration.amphi_proc import AmphiServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmphiServer]:
    s = AmphiServer(tmp_path_factory.mktemp("document") / "data").start()
    yield s
    s.stop()


class Checker:
    """Sends requests and validates each answer against the served document."""

    def __init__(self, http: httpx.Client) -> None:
        r = http.get(ROUTES["openapi"].path())
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert "public" in r.headers["cache-control"]
        self.doc = r.json()
        self.http = http
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, route: str, status: int, *, json: object = None, content: bytes | None = None,
                 headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
        r_ = ROUTES[route]
        r = self.http.request(method, r_.path(**params), json=json, content=content, headers=headers)
        assert r.status_code == status, f"{method} {r_.template}: {r.status_code} {r.text[:300]}"
        self.validate(method, r_.template, r)
        return r

    def validate(self, method: str, template: str, r: httpx.Response) -> None:
        operation = self.doc["paths"][template][method.lower()]
        answer = operation["responses"].get(str(r.status_code))
        assert answer is not None, f"{method} {template}: {r.status_code} is not documented"
        self.seen.add((method, template, r.status_code))
        content = answer.get("content")
        if content is None:
            return
        media = r.headers["content-type"].split(";")[0].strip()
        assert media in content, f"{method} {template} {r.status_code}: {media} not in {list(content)}"
        if media != "application/json":
            return
        schema = {**content[media]["schema"], "components": self.doc["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(r.json()), key=str)
        assert not errors, f"{method} {template} {r.status_code}: {errors[0].message} at {list(errors[0].path)}"


def test_a_space_life_matches_the_document(server: AmphiServer) -> None:
    check = Checker(server.http)
    check("GET", "openapi", 200)
    check("GET", "node", 200)
    check("GET", "nodes", 200)

    api = server.api_headers  # an API key (docs/keys.md)
    check("POST", "node.drain", 401, node="origin")
    check("POST", "node.drain", 404, headers=api, node="no-such-node")  # alone: no other node
    assert "no standby" in check("POST", "node.drain", 409, headers=api, node="origin").json()["message"]
    check("POST", "spaces.create", 401, json={"title": "No key"})
    check("POST", "spaces.create", 401, json={"title": "Bad key"}, headers={"authorization": "Bearer amphi_x_y"})
    check("POST", "spaces.create", 400, json={"title": ""}, headers=api)
    check("POST", "spaces.create", 400, json={"title": "x", "starts_at": 1e300}, headers=api)
    check("POST", "spaces.create", 400, content=b"[1]", headers={"content-type": "application/json", **api})
    check("POST", "spaces.create", 413, content=b"{" + b" " * 2_000_000 + b"}",
          headers={"content-type": "application/json", **api})
    made = check("POST", "spaces.create", 201, json={"title": "Documented", "dead_air_s": 30}, headers=api).json()
    sid, key = made["id"], made["host_key"]
    host = {"authorization": f"Bearer {key}"}
    check("POST", "spaces.create", 201, json={"title": "Later", "starts_at": "2099-01-01T20:00:00Z"}, headers=api)
    assert {s["id"] for s in check("GET", "spaces.list", 200).json()} >= {sid}
    check("GET", "space", 200, id=sid)
    check("GET", "space", 404, id="no-such-space")

    joined = check("POST", "join", 200, json={}, id=sid).json()
    assert joined["status"] == "admitted"
    check("POST", "join", 400, content=b"not json", id=sid)
    assert check("POST", "join", 400, json={"ticket": False}, id=sid).json()["error"] == "malformed_body"
    check("POST", "join", 400, json={"challenge": "c", "solution": 520}, headers=host, id=sid)
    check("POST", "leave", 400, json={"ticket": False, "token": joined["token"]}, id=sid)
    check("POST", "join", 404, json={}, id="no-such-space")
    check("GET", "line", 200, id=sid)
    check("GET", "line", 404, id="no-such-space")
    assert check("POST", "leave", 200, json={"token": joined["token"]}, id=sid).json()["status"] == "left"

    check("GET", "stage", 200, id=sid)
    check("GET", "stage", 401, headers={"authorization": "Basic abc"}, id=sid)
    check("POST", "stage.session", 401, id=sid)
    grant = check("POST", "stage.session", 200, headers=host, id=sid).json()
    assert check("GET", "stage", 200, headers={"authorization": f"Bearer {grant['grant']}"}, id=sid).json()["moderator"]
    asked = check("POST", "stage.requests", 201, json={"name": "Ada"}, id=sid).json()
    check("POST", "stage.requests", 400, json={"name": ""}, id=sid)
    check("POST", "stage.invites", 201, json={"name": "Bo"}, headers=host, id=sid)
    check("POST", "stage.invites", 401, json={"name": "Bo"}, id=sid)
    check("POST", "stage.action", 200, headers=host, id=sid, pid=asked["participant"], action="accept")
    check("POST", "stage.action", 404, headers=host, id=sid, pid="nobody", action="accept")
    check("POST", "stage.action", 403, headers={"authorization": f"Bearer {asked['grant']}"}, id=sid,
          pid=asked["participant"], action="role")
    check("POST", "speak", 401, content=b"v=0", headers={"content-type": "application/sdp"}, id=sid)
    check("POST", "speak", 415, content=b"v=0", headers={"content-type": "text/plain", **host}, id=sid)
    unknown = "x" * 24  # a session id of the grammar that no session has
    check("DELETE", "speak.session", 401, id=sid, session=unknown)
    check("DELETE", "speak.session", 404, headers=host, id=sid, session=unknown)
    check("PATCH", "speak.session", 404, content=b"a=ice-ufrag:x\r\n",
          headers={"content-type": "application/trickle-ice-sdpfrag", **host}, id=sid, session=unknown)
    check("GET", "speak.ice", 401, id=sid)
    assert check("GET", "speak.ice", 200, headers=host, id=sid).json() == {"ice_servers": []}
    check("POST", "space.defense", 200, json={"pow": "auto"}, headers=api, id=sid)  # an API key: any Space
    check("POST", "space.defense", 200, json={"pow": "auto"}, headers=host, id=sid)
    check("POST", "space.defense", 400, json={"pow": "sometimes"}, headers=host, id=sid)

    check("POST", "space.start", 401, id=sid)
    check("POST", "space.start", 403, headers={"authorization": "Bearer wrong"}, id=sid)
    assert check("POST", "space.start", 200, headers=host, id=sid).json()["state"] == "live"
    check("POST", "space.start", 409, headers=host, id=sid)
    assert check("POST", "space.end", 200, headers=host, id=sid).json()["state"] == "ended"
    check("POST", "space.end", 409, headers=host, id=sid)
    check("POST", "space.end", 404, headers=host, id="no-such-space")
    assert check("POST", "join", 200, json={}, id=sid).json()["status"] == "ended"
    check("POST", "stage.requests", 409, json={"name": "Late"}, id=sid)
    events = check("GET", "events", 200, id=sid)
    assert "event: ended" in events.text
    check("GET", "events", 404, id="no-such-space")

    # every operation of the document was answered at least once
    operations = {(m.upper(), p) for p, item in check.doc["paths"].items() for m in item if m != "parameters"}
    answered = {(m, p) for m, p, _ in check.seen}
    assert operations - answered == set()
    assert len(check.seen) >= 35


def test_media_and_pages_are_listed_not_described(server: AmphiServer, tmp_path: Path) -> None:
    doc = server.http.get("/api/openapi.json").json()
    others = {o["template"] for o in doc["x-amphi-other-routes"]}
    assert "/media/{id}/t/{token}/live.m3u8" in others and "/s/{id}/host" in others
    assert not others & set(doc["paths"])


def test_a_method_not_described_is_a_405_with_allow(server: AmphiServer) -> None:
    """Any method a path does not take: 405, the shared error, and Allow naming what it takes
    (RFC 9110), on the Starlette API and the raw endpoints (join, line, events) alike."""
    check = Checker(server.http)
    sid = server.http.post("/api/spaces", json={"title": "methods"}, headers=server.api_headers).json()["id"]
    error = {"$ref": "#/components/schemas/Error", "components": check.doc["components"]}
    for template, item in check.doc["paths"].items():
        documented = {m.upper() for m in item if m != "parameters"}
        path = template.replace("{id}", sid).replace("{pid}", "host").replace("{action}", "mute")
        for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - documented):
            r = server.http.request(method, path)
            assert r.status_code == 405, (method, template, r.status_code)
            assert r.headers["content-type"] == "application/json"
            Draft202012Validator(error).validate(r.json())
            allowed = {m.strip() for m in r.headers["allow"].split(",")}
            assert documented <= allowed <= documented | {"HEAD", "OPTIONS"}, (method, template, allowed)
