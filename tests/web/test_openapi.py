"""The OpenAPI document against the route table it is built from (amphi.web.openapi): every
route a client program calls is described, nothing else is, and the parameters are the
table's grammars."""

from __future__ import annotations

import re

import pytest
import schemathesis

from amphi.web.openapi import DESCRIBED, OPERATIONS, build_document, documented_methods, op, ok, paths
from amphi.web.routes import PLACES, ROUTES, Route, RouteTable


def test_every_described_route_and_no_other() -> None:
    doc = build_document()
    described = {r.template for r in ROUTES if r.kind in DESCRIBED}
    assert set(doc["paths"]) == described
    for template, item in doc["paths"].items():
        methods = {m.upper() for m in item if m != "parameters"}
        assert methods == set().union(*(documented_methods(r) for r in ROUTES if r.template == template)), template
    assert not {r.template for r in ROUTES if r.kind not in DESCRIBED} & set(doc["paths"])
    others = {o["name"] for o in doc["x-amphi-other-routes"]}
    assert others == {r.name for r in ROUTES if r.kind not in DESCRIBED}
    assert "media.part" in others and "listener" in others


def test_parameters_are_the_route_grammar() -> None:
    doc = build_document()
    for r in ROUTES:
        if r.kind not in DESCRIBED:
            continue
        params = doc["paths"][r.template].get("parameters", [])
        assert [p["name"] for p in params] == list(r.params)
        for p in params:
            place = PLACES[p["name"]]
            if place.type is int:
                assert p["schema"]["type"] == "integer"
            else:
                assert p["schema"]["pattern"] == f"^{place.grammar}$"
                # the pattern accepts what the route accepts: a value made to it builds a path
                assert re.fullmatch(place.grammar, "abc") or re.fullmatch(place.grammar, "abc" * 6)


def test_every_operation_documents_its_errors_with_the_shared_schema() -> None:
    doc = build_document()
    for template, item in doc["paths"].items():
        for method, o in item.items():
            if method == "parameters":
                continue
            statuses = {int(s) for s in o["responses"]}
            assert {429, 503} <= statuses, (template, method)
            if "{id}" in template:
                assert 404 in statuses, (template, method)
            if "requestBody" in o:
                assert {400, 413} <= statuses, (template, method)
            if o.get("security") and {} not in o["security"]:
                assert 401 in statuses, (template, method)
            for s, answer in o["responses"].items():
                if int(s) >= 300:
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_an_undescribed_route_or_a_stray_description_fails() -> None:
    extra = RouteTable([*ROUTES, Route("speak.mute", "/api/spaces/{id}/speak/{pid}/mute", "api",
                                       frozenset({"DELETE", "PATCH"}))])
    with pytest.raises(ValueError, match="speak.mute"):
        paths(extra)
    with pytest.raises(ValueError, match="no route"):
        paths(ROUTES, {**OPERATIONS, "gone": {"GET": op("gone", ok(None))}})
    missing_method = {**OPERATIONS, "speak.mute": {"DELETE": op("unmute", ok(None, status=204))}}
    with pytest.raises(ValueError, match="PATCH"):
        paths(extra, missing_method)
    whole = {**OPERATIONS, "speak.mute": {"DELETE": op("unmute", ok(None, status=204)),
                                          "PATCH": op("mute", ok(None, status=204))}}
    assert "delete" in paths(extra, whole)["/api/spaces/{id}/speak/{pid}/mute"]


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(build_document())  # validates it against the OpenAPI 3.1 schema
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) == sum(len(documented_methods(r)) for r in ROUTES if r.kind in DESCRIBED)
