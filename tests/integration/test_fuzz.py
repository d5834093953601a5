"""A property-based fuzz of the whole JSON API from its own OpenAPI document (schemathesis,
docs/api.md): every operation of ``/api/openapi.json``, against a real node, with valid and
invalid inputs, on random Spaces and on a real one, with no credentials, the host key, an API key or junk.
Every answer must be documented: no 5xx, a documented status, content type and body (every
refusal the shared JSON error).

Bounded (``EXAMPLES`` per operation, derandomized: the same inputs on every run, so CI is
stable); ``AMPHI_FUZZ_EXAMPLES=200`` for a longer hunt, ``AMPHI_FUZZ_SEED=N`` for other inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection, response_schema_conformance,
                                               status_code_conformance)

from amphi.web.openapi import build_document
from tests.integration.amphi_proc import AmphiServer

EXAMPLES = int(os.environ.get("AMPHI_FUZZ_EXAMPLES", "12"))  # per operation and mode
SEED = os.environ.get("AMPHI_FUZZ_SEED")  # other inputs than the derandomized ones, for a hunt
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, negative_data_rejection]
STREAMS = {"/api/spaces/{id}/events"}  # an open Space's events never end: fuzzed on Spaces that do not exist

schemathesis.serializer.alias("application/sdp", "text/plain")  # an SDP offer is text
schemathesis.serializer.alias("application/trickle-ice-sdpfrag", "text/plain")  # so are WHIP's trickled candidates

OPERATIONS = [(path, method.upper()) for path, item in build_document()["paths"].items()
              for method in item if method != "parameters"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AmphiServer, str, str]]:
    """A node, and a Space on it with its host key."""
    server = AmphiServer(tmp_path_factory.mktemp("fuzz") / "data").start()
    try:
        made = server.http.post("/api/spaces", json={"title": "fuzzed"}, headers=server.api_headers)
        assert made.status_code == 201, made.text
        yield server, made.json()["id"], made.json()["host_key"]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def schema(node: tuple[AmphiServer, str, str]) -> schemathesis.BaseSchema:
    server, _, _ = node
    return schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")  # the served document, validated


def not_blank_json(case: schemathesis.Case) -> bool:
    """Not a JSON body of only whitespace: the node takes an empty body as {} on purpose
    (``amphi.web.asgi.parse_body``), and whitespace as empty; schemathesis counts it as invalid JSON."""
    body = case.body
    return not (case.media_type == "application/json" and isinstance(body, (str, bytes)) and not body.strip())


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_fuzz(node: tuple[AmphiServer, str, str], schema: schemathesis.BaseSchema, path: str, method: str) -> None:
    server, space, key = node
    operation = schema[path][method]
    auths = [{}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer not-a-key"},
             {"Authorization": f"Bearer {server.api_key}"}]  # an API key (docs/keys.md)
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for headers in auths:
            strategies.append(operation.as_strategy(mode, headers=headers))
            if "{id}" in path and path not in STREAMS:
                strategies.append(operation.as_strategy(mode, headers=headers, path_parameters={"id": space}))
    seen: list[int] = []

    @settings(max_examples=EXAMPLES * 2, derandomize=SEED is None, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies).filter(not_blank_json))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, timeout=20)
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    (fuzz if SEED is None else seed(int(SEED))(fuzz))()
    assert seen, "no request was made"
