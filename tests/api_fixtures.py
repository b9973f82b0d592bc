"""Fixtures for tests that talk to a real Jupyter server with the extension loaded.

``jp_server_config`` points the extension at a small demo archive and at the ``db_url`` under
test (SQLite or PostgreSQL); ``api`` calls the REST API with the server's token and returns
(status, json) without raising on 4xx, so tests can assert on error answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from hera_stage_ext.demo import LIBRARIAN_AUTHENTICATOR, DemoArchive, make_demo_archive

ApiCall = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
def archive(tmp_path) -> DemoArchive:
    return make_demo_archive(tmp_path / "demo", files_per_night=6, nights=3)


@pytest.fixture
def staging_config() -> dict[str, Any]:
    """Extra StagingApp settings a test module wants (override in the module)."""
    return {}


@pytest.fixture
def jp_server_config(db_url: str, archive: DemoArchive, staging_config: dict[str, Any]):
    return {
        "ServerApp": {
            "jpserver_extensions": {"hera_stage_ext": True},
            "allow_unauthenticated_access": False,
        },
        "StagingApp": {
            "db_url": db_url,
            "stores": archive.stores,
            "librarian_authenticators": {LIBRARIAN_AUTHENTICATOR: "demo"},
            **staging_config,
        },
    }


@pytest.fixture
def api(jp_fetch) -> ApiCall:
    async def call(method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        if body is not None:
            kwargs["body"] = json.dumps(body)
        try:
            response = await jp_fetch("hera-stage", "api", *path.split("/"), method=method,
                                      **kwargs)
        except HTTPClientError as exc:
            assert exc.response is not None
            return exc.code, json.loads(exc.response.body or b"null")
        ctype = response.headers.get("Content-Type", "")
        payload = json.loads(response.body) if "json" in ctype else response.body
        return response.code, payload

    return call


@pytest.fixture
def ingested(api: ApiCall, jp_asyncio_loop) -> dict[str, Any]:
    """Both demo stores ingested through the REST API; returns the two reports."""

    async def ingest() -> dict[str, Any]:
        reports = {}
        for store in ("onsite", "offsite"):
            code, report = await api("POST", "ingest", {"store": store, "globs": ["*/*"]})
            assert code == 200, report
            reports[store] = report
        return reports

    return jp_asyncio_loop.run_until_complete(ingest())
