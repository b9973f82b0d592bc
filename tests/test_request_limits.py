"""Bodies nested thousands deep, or otherwise bad, at every entry point that reads JSON: the
REST API (search bodies, search text, one-line query text, every body), the SKAO entry point,
the site-to-site peer endpoints and the Librarian RPC's form field. Each answers 4xx with a JSON
message (the RPC in its own v1 shape), never a 500, and the server answers the next request.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from hera_stage_ext.errors import InvalidRequest
from hera_stage_ext.jsonbody import MAX_JSON_DEPTH, json_depth, load_json
from hera_stage_ext.transfer.peers import hash_secret

from .api_fixtures import *  # noqa: F403
from .test_librarian import req, rpc  # noqa: F401 (rpc: a fixture of that module)

DEEP = 5000
PEER_SECRET = "x-to-here-" + "s" * 40


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite only: the limits are read before any query."""
    return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"


@pytest.fixture
def staging_config() -> dict[str, Any]:
    return {"peer_secrets": {"site-x": hash_secret(PEER_SECRET)}}


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_search(depth: int) -> str:
    """A search of ``depth`` nested ``and`` clauses, as JSON text."""
    return '{"and": [' * depth + "{}" + "]}" * depth


@pytest.fixture
def peer_post(http_server_client, jp_base_url):
    async def call(path: str, raw_body: str) -> tuple[int, Any]:
        response = await http_server_client.fetch(
            f"{jp_base_url}hera-stage/peer/{path}", method="POST", body=raw_body,
            headers={"Authorization": f"HeraPeer site-x:{PEER_SECRET}"}, raise_error=False)
        return response.code, json.loads(response.body)
    return call


def assert_refused(code: int, reply: Any, *words: str) -> None:
    assert 400 <= code < 500, (code, reply)
    assert isinstance(reply, dict) and isinstance(reply.get("message"), str), reply
    for word in words:
        assert word in reply["message"], reply


async def test_rest_search_nested_5000_deep_is_a_400(api, ingested):
    body = '{"search": ' + nested_search(DEEP) + "}"
    code, reply = await api("POST", "search", raw_body=body)
    assert_refused(code, reply, "nested")
    as_text = json.dumps({"search": nested_search(DEEP)})  # the search as JSON text
    code, reply = await api("POST", "search", raw_body=as_text)
    assert_refused(code, reply, "nested")
    for query in ("(" * DEEP + "x" + ")" * DEEP, "-" * DEEP + "x", "(" * DEEP):
        code, reply = await api("POST", "search", {"query": query})
        assert_refused(code, reply, "nested")
    # Just inside the limits: an answer (a search deeper than the language allows is still a
    # 400 saying so, from the search's own check).
    code, reply = await api("POST", "search", raw_body='{"search": ' + nested_search(3) + "}")
    assert code == 200, reply
    code, reply = await api("POST", "search", raw_body='{"search": ' + nested_search(20) + "}")
    assert_refused(code, reply, "nested deeper than 16")


@pytest.mark.parametrize(("path", "body"), [
    ("stage", nested_lists(DEEP)),
    ("ingest", '{"store": "onsite", "globs": ' + nested_lists(DEEP) + "}"),
    ("jobs/1/cancel", nested_lists(DEEP)),
    ("stage", '{"destination": "x", "names": ["a"], "dry_run": NaN}'),
    ("stage", '{"destination": "x", "names": ["\\ud800"]}'),
    ("stage", '{"destination": "x", "names": ["a"' + ", 1" * 400_000 + "]}"),
])
async def test_every_rest_body_is_bounded(api, ingested, path, body):
    code, reply = await api("POST", path, raw_body=body)
    assert_refused(code, reply)
    code, reply = await api("GET", "stores")  # the server goes on
    assert code == 200


async def test_skao_and_peer_bodies_nested_5000_deep(http_server_client, jp_base_url,
                                                      jp_auth_header, ingested, peer_post):
    response = await http_server_client.fetch(
        f"{jp_base_url}hera-stage/skao/stage_data?method=local_copy&username=x", method="POST",
        body='{"relative_path": ' + nested_lists(DEEP) + "}", headers=jp_auth_header,
        raise_error=False)
    assert_refused(response.code, json.loads(response.body), "nested")
    for path in ("announce", "status", "files/batch"):
        code, reply = await peer_post(path, '{"files": ' + nested_lists(DEEP) + "}")
        assert_refused(code, reply, "nested")


async def test_librarian_rpc_search_nested_5000_deep(rpc, ingested):  # noqa: F811
    deep = json.loads(nested_search(50))  # a value: the form field is encoded below
    field = json.dumps(req(output_format="file-listing-json"))[:-1] + ', "search": ' + \
        nested_search(DEEP) + "}"
    for request in (field, json.dumps(req(search=nested_search(DEEP))),
                    json.dumps(req(search=deep)), nested_lists(DEEP)):
        code, reply = await rpc("search", request)
        assert 400 <= code < 500, (code, reply)
        assert reply["success"] is False and "nested" in reply["message"], reply
    code, reply = await rpc("ping", req())
    assert code == 200 and reply["success"] is True


async def test_librarian_form_field_not_utf8(http_server_client, jp_base_url, ingested):
    body = "request=" + urllib.parse.quote_from_bytes(b'{"a": "\xff"}')
    response = await http_server_client.fetch(
        f"{jp_base_url}hera-stage/librarian/api/ping", method="POST", body=body,
        raise_error=False, headers={"Content-Type": "application/x-www-form-urlencoded"})
    reply = json.loads(response.body)
    assert response.code == 400 and reply["success"] is False, reply
    assert "UTF-8" in reply["message"]


def test_depth_is_measured_without_recursion():
    assert json_depth('{"a": "[[[[{{{{", "b": [1, {"c": "\\"]]]"}]}') == 3
    assert json_depth("1") == 0
    assert json_depth(nested_lists(1_000_000)) == 1_000_000
    with pytest.raises(InvalidRequest, match=f"at most {MAX_JSON_DEPTH}"):
        load_json(nested_lists(100_000))
    assert load_json(nested_lists(MAX_JSON_DEPTH)) is not None
    with pytest.raises(InvalidRequest, match="not a number JSON allows"):
        load_json('{"a": Infinity}')


@pytest.mark.parametrize("text", [
    nested_lists(MAX_JSON_DEPTH), nested_lists(MAX_JSON_DEPTH + 1),
    # Brackets and escapes inside strings: the exact path, never counted as nesting.
    '{"a": "' + "[" * 100 + '"}', '{"a": "\\"' + "{" * 100 + '"}',
    '["a", "b]", ' + nested_lists(MAX_JSON_DEPTH - 1) + "]",
    '[' * MAX_JSON_DEPTH + '"x"' + ']' * MAX_JSON_DEPTH,
    '[' * (MAX_JSON_DEPTH + 1) + '"x"' + ']' * (MAX_JSON_DEPTH + 1),
    '{"k": [{"a": 1, "b": {}}]}' * 1, '[{"x": "\\u00e9", "y": "]"}]',
    # Escapes outside any bracket in their string (a worker's log lines): the fast path.
    '[' * MAX_JSON_DEPTH + '"a\\nb\\\\"' + ']' * MAX_JSON_DEPTH,
    '[' * (MAX_JSON_DEPTH + 1) + '"a\\nb\\\\"' + ']' * (MAX_JSON_DEPTH + 1),
    '["a\\\\", ' + nested_lists(MAX_JSON_DEPTH) + "]", '{"log": "x\\ny\\"z\\u005b\\n"}',
    '{"log": "x\\\\\\"[[[[", "b": ' + nested_lists(MAX_JSON_DEPTH - 1) + "}",
])
def test_bytes_and_text_get_the_same_answer(text):
    """A body as bytes (the fast path of ``load_json``) is refused exactly when the same text
    is, and both parse to the same value: the depth of its nesting outside strings."""
    def outcome(data):
        try:
            return load_json(data)
        except InvalidRequest as exc:
            return exc.message
    by_text, by_bytes = outcome(text), outcome(text.encode())
    assert by_text == by_bytes
    assert isinstance(by_text, str) == (json_depth(text) > MAX_JSON_DEPTH)


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "\\udbff"])
def test_a_lone_surrogate_escape_in_bytes_is_refused(escape):
    with pytest.raises(InvalidRequest, match="lone surrogate"):
        load_json(f'{{"names": ["a", "b{escape}"]}}'.encode())
    assert load_json('["\\ud83d\\ude00"]'.encode()) == ["\U0001F600"]
