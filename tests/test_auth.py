"""Every route refuses requests without credentials; the OpenAPI document matches the routes."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from hera_stage_ext.api.openapi import openapi_document
from hera_stage_ext.api.routes import API_PREFIX, NATIVE_ROUTES, handlers

from hera_stage_ext.transfer.peers import hash_secret

from .api_fixtures import *  # noqa: F403

VERBS = ("get", "post", "put", "patch", "delete")
PEER_SECRET = "s" * 43


@pytest.fixture
def staging_config():
    # A known peer, so that a wrong secret for a known site is refused too (port 9: nobody).
    return {"peer_secrets": {"demo-peer": hash_secret(PEER_SECRET)},
            "peers": {"demo-peer": {"url": "http://127.0.0.1:9/", "secret": PEER_SECRET}}}


def _example_path(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>\[\^/\]\+\)", "zen.2457644.10000.xx.HH.uvh5", pattern).rstrip("$")


def _routes() -> list[tuple[str, str]]:
    out = []
    for pattern, handler in handlers():
        for verb in VERBS:
            if verb in vars(handler):  # a verb the handler itself defines
                out.append((verb.upper(), _example_path(pattern).replace("\\", "")))
    return out


def test_every_handler_has_a_verb():
    assert len(_routes()) >= len(handlers())


@pytest.mark.parametrize(("method", "path"), _routes())
async def test_unauthenticated_requests_are_refused(http_server_client, jp_base_url, ingested,
                                                    method, path):
    body = json.dumps({"search": {"always-true": 1}, "store": "onsite"}) \
        if method not in ("GET", "DELETE") else None
    response = await http_server_client.fetch(
        jp_base_url.rstrip("/") + path, method=method, body=body, raise_error=False,
        follow_redirects=False,
    )
    if "librarian" in path:
        # The Librarian RPC authenticates by its own authenticator field.
        assert response.code == 400
        assert json.loads(response.body)["success"] is False
    elif "/hera-stage/peer/" in path:
        # Site-to-site endpoints authenticate by the peer secret (Authorization: HeraPeer).
        assert response.code == 401, (path, response.code, response.body[:200])
        assert json.loads(response.body)["error"] == "Unauthorized"
    else:
        assert response.code == 403, (path, response.code, response.body[:200])
    wrong = await http_server_client.fetch(
        jp_base_url.rstrip("/") + path, method=method, body=body, raise_error=False,
        follow_redirects=False, headers={"Authorization": "token not-the-token"},
    )
    expected = 400 if "librarian" in path else 401 if "/hera-stage/peer/" in path else 403
    assert wrong.code == expected
    if "/hera-stage/peer/" in path:
        for header in ("HeraPeer nobody:" + "x" * 43, "HeraPeer demo-peer:" + "x" * 43):
            forged = await http_server_client.fetch(
                jp_base_url.rstrip("/") + path, method=method, body=body, raise_error=False,
                follow_redirects=False, headers={"Authorization": header},
            )
            assert forged.code == 401, (path, header.split(":")[0], forged.code)


async def test_a_search_with_the_token_in_the_header_is_answered_without_a_login_cookie(
        http_server_client, jp_base_url, jp_auth_header, ingested):
    url = jp_base_url.rstrip("/") + "/hera-stage/api/search"
    body = json.dumps({"search": {"always-true": 1}, "limit": 1})
    response = await http_server_client.fetch(url, method="POST", body=body,
                                              headers=jp_auth_header, raise_error=False)
    assert response.code == 200 and "Set-Cookie" not in response.headers
    # The token in the URL (how a browser is sent in) still leaves Jupyter's login cookie,
    # which then authenticates that browser's later requests without the token.
    token = jp_auth_header["Authorization"].split()[1]
    response = await http_server_client.fetch(f"{url}?token={token}", method="POST",
                                              body=body, raise_error=False)
    assert response.code == 200
    cookie = response.headers["Set-Cookie"].split(";")[0]
    status_url = jp_base_url.rstrip("/") + "/hera-stage/api/status"
    later = await http_server_client.fetch(status_url, headers={"Cookie": cookie},
                                           raise_error=False)
    assert later.code == 200
    # And without either, nothing.
    assert (await http_server_client.fetch(status_url, raise_error=False)).code == 403
    # Other routes answer a token in the header as Jupyter does (with its cookie).
    response = await http_server_client.fetch(status_url, headers=jp_auth_header,
                                              raise_error=False)
    assert response.code == 200 and "Set-Cookie" in response.headers


def test_openapi_paths_are_exactly_the_routes():
    doc = openapi_document("0")
    assert set(doc["paths"]) == set(NATIVE_ROUTES)
    jsonschema.Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})


async def test_served_document_validates_real_replies(api, ingested):
    code, doc = await api("GET", "openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")

    def check(schema_name: str, value: object) -> None:
        jsonschema.validate(value, {**doc, "$ref": f"#/components/schemas/{schema_name}"},
                            cls=jsonschema.Draft202012Validator)

    check("Status", (await api("GET", "status"))[1])
    check("SearchReply", (await api("POST", "search", {"query": "zen.*", "count": True}))[1])
    _, detail = await api("GET", "files/zen.2457644.10000.xx.HH.uvh5")
    check("FileDetail", detail)
    _, results = await api("POST", "search", {"query": "zen.2457644.*"})
    for row in results["results"]:
        check("File", row)
    _, stores = await api("GET", "stores")
    for store in stores["stores"]:
        check("Store", store)
    check("IngestReply", (await api("POST", "ingest", {"store": "onsite", "globs": ["*/*"]}))[1])
    check("Error", (await api("GET", "files/nope"))[1])
    check("DryRun", (await api("POST", "stage", {"query": "zen.2457644.*", "destination": "d",
                                                 "dry_run": True}))[1])
    code, job = await api("POST", "stage", {"query": "zen.2457644.*", "destination": "d"})
    assert code == 202
    check("Job", job)
    _, job = await api("POST", f"jobs/{job['id']}/cancel", {})
    check("Job", job)
    _, peers = await api("GET", "peers")
    assert [p["name"] for p in peers["peers"]] == ["demo-peer"]
    assert peers["peers"][0]["reachable"] is False and peers["peers"][0]["accepts_from"]
    for peer in peers["peers"]:
        check("Peer", peer)
    assert API_PREFIX == doc["servers"][0]["url"]
