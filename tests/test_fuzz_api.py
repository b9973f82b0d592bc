"""API fuzzing (issue 7): schemathesis against the SERVED ``openapi.json`` of a real server.

A Jupyter server subprocess (``jupyter_process``) on a small ingested demo archive, with a worker
for the jobs that fuzzed ``POST stage`` calls launch. Every operation of the document gets a
bounded number of generated requests, schema-valid ones and schema-violating ones, sent over
real HTTP with the token header, and every response must: not be a 5xx, have a documented
status code and content type, have a body valid against the documented schema, and (for a
request that violates the schema) be a 4xx. The run is bounded in count (``MAX_EXAMPLES`` per
operation and mode) and in time (each request times out; the module takes well under two
minutes), and fuzzed staging writes only inside the server's root: a sentinel folder next to
the root stays empty and nothing outside the root changes.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from hera_stage_ext.api.openapi import openapi_document
from hera_stage_ext.catalogue.search_parse import MAX_SEARCH_BYTES
from hera_stage_ext.app import StagingApp
from hera_stage_ext.demo import LIBRARIAN_AUTHENTICATOR

from .test_hostile_paths import Site, site

MAX_EXAMPLES = 40
#: (path, method) of every operation, from the document the server serves (checked below).
OPERATIONS = [(path, method.upper()) for path, item in openapi_document("0")["paths"].items()
              for method in item]
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Site]:
    with site(tmp_path_factory.mktemp("fuzz")) as s:
        yield s


@pytest.fixture(scope="module")
def schema(fuzzed):
    url = fuzzed.server.url + "hera-stage/api/openapi.json"
    loaded = schemathesis.openapi.from_url(url, headers=auth(fuzzed), timeout=30)
    loaded.config.update(base_url=fuzzed.server.url.rstrip("/") + "/hera-stage/api")
    return loaded


def auth(s: Site) -> dict[str, str]:
    return {"Authorization": f"token {s.server.token}"}


def test_served_document_is_the_one_in_the_code(fuzzed):
    served = fuzzed.server.api("openapi.json")
    default_limit = StagingApp.max_search_limit.default_value  # the fuzzed server's
    assert served == openapi_document(served["info"]["version"], default_limit)
    assert {(p, m.upper()) for p, item in served["paths"].items() for m in item} == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_operation(schema, fuzzed, path, method, mode):
    operation = schema[path][method]
    session = requests.Session()
    # Jupyter answers a token-authenticated request with a login cookie; kept, it would
    # authenticate the negative cases that drop the Authorization header on purpose.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        # A header with a control character is no HTTP: tornado's parser drops it with a bare
        # 400 before any handler runs (not the API's answer to judge).
        assume(not any(_CONTROL.search(str(v)) for v in (case.headers or {}).values()))
        # Nor is a generated Host header (another host, or none valid): tornado answers it
        # with a bare 400 before any handler runs.
        assume(all(k.lower() != "host" for k in (case.headers or {})))
        # A query parameter given as an empty list is not sent at all: the request is then
        # another one than the case says (a "violating" extra parameter that never arrives).
        assume(all(v != [] for v in (case.query or {}).values()))
        # An empty, '.' or '..' path segment makes another URL (the client drops dot
        # segments): Jupyter's own 404 page for it is not this operation's answer.
        assume(all(str(v) not in ("", ".", "..") for v in (case.path_parameters or {}).values()))
        case.call_and_validate(session=session, headers=auth(fuzzed), checks=checks, timeout=30)
        assert list(fuzzed.outside.iterdir()) == []

    fuzz()
    for job in fuzzed.server.api("jobs")["jobs"]:
        assert Path(os.path.realpath(job["destination"])).is_relative_to(fuzzed.root), job


# ----- nesting and bad JSON at every entry point that reads a body (issue 15, finding 7) -------
def _nested(depth: int, shape: str) -> str:
    """JSON text nested ``depth`` deep: lists, objects, or ``and`` clauses of a search."""
    if shape == "lists":
        return "[" * depth + "]" * depth
    if shape == "objects":
        return '{"a": ' * depth + "1" + "}" * depth
    return '{"and": [' * depth + "{}" + "]}" * depth


def _bodies(s: Site, depth: int, shape: str, place: str) -> tuple[str, dict[str, Any], Any]:
    """(URL path, extra request arguments, expected reply shape) posting text nested
    ``depth`` deep at ``place``."""
    text = _nested(depth, shape)
    token = {"Authorization": f"token {s.server.token}"}
    if place == "rpc-field":
        return "hera-stage/librarian/api/search", {"data": {"request": text}}, "v1"
    if place == "rpc-search":
        request = json.dumps({"authenticator": LIBRARIAN_AUTHENTICATOR,
                              "output_format": "file-listing-json"})
        return "hera-stage/librarian/api/search", {
            "data": {"request": request[:-1] + ', "search": ' + text + "}"}}, "v1"
    if place == "rpc-search-text":
        return "hera-stage/librarian/api/search", {"data": {"request": json.dumps(
            {"authenticator": LIBRARIAN_AUTHENTICATOR, "search": text})}}, "v1"
    if place == "query":
        query = "(" * depth + "x" + ")" * depth if shape != "lists" else "-" * depth + "x"
        return "hera-stage/api/search", {"json": {"query": query}, "headers": token}, "rest"
    if place == "search-text":
        return "hera-stage/api/search", {"json": {"search": text}, "headers": token}, "rest"
    path = {"search": "hera-stage/api/search", "stage": "hera-stage/api/stage",
            "skao": "hera-stage/skao/stage_data?method=local_copy&username=astro"}[place]
    field = {"search": "search", "stage": "names", "skao": "relative_path"}[place]
    return path, {"data": '{"' + field + '": ' + text + "}", "headers": token}, "rest"


PLACES = ["search", "search-text", "query", "stage", "skao", "rpc-field", "rpc-search",
          "rpc-search-text"]


def test_nested_bodies_are_answered_4xx_with_json(fuzzed):
    """Any depth, any shape, at any place a body is read: a 2xx or a 4xx with a JSON message
    (the Librarian RPC's in its v1 shape), never a 5xx."""

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(depth=st.one_of(st.integers(1, 80), st.integers(80, 6000)),
           shape=st.sampled_from(["lists", "objects", "search"]),
           place=st.sampled_from(PLACES))
    # A search text past its size limit before its nesting (found by a random draw).
    @example(depth=5958, shape="search", place="search-text")
    def check(depth: int, shape: str, place: str) -> None:
        path, kwargs, style = _bodies(fuzzed, depth, shape, place)
        reply = requests.post(fuzzed.server.url + path, timeout=30, **kwargs)
        assert reply.status_code < 500, (place, depth, shape, reply.text[:300])
        body = reply.json()
        if reply.status_code >= 400:
            assert isinstance(body.get("message"), str), body
            if style == "v1":
                assert body["success"] is False, body
        if depth > 5000 // 2:  # far past every limit: refused, and the reason is the nesting
            assert reply.status_code in (400, 403), (place, body)
            # (or, for a search given as text, that text's size: a deep enough one passes
            # MAX_SEARCH_BYTES before its nesting is read)
            too_long = place.endswith("search-text") and \
                len(_nested(depth, shape).encode()) > MAX_SEARCH_BYTES
            reason = f"larger than {MAX_SEARCH_BYTES} bytes" if too_long else "nested"
            assert reason in body["message"] or reply.status_code == 403, (place, body)

    check()
    assert fuzzed.server.api("stores")  # the server goes on
