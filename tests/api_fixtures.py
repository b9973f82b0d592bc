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
def api(jp_serverapp, http_server_client, jp_auth_header, jp_base_url) -> ApiCall:
    """Call ``hera-stage/api/<path>`` with the server's token. ``path`` goes out as written (no
    re-quoting), so tests can send percent-encoded bytes; ``raw_body`` sends a body verbatim."""

    async def call(method: str, path: str, body: Any = None, *, raw_body: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if raw_body is None and body is not None:
            raw_body = json.dumps(body)
        if raw_body is None and method in ("POST", "PUT", "PATCH"):
            raw_body = ""
        response = await http_server_client.fetch(
            f"{jp_base_url}hera-stage/api/{path}", method=method, body=raw_body,
            headers={**jp_auth_header, **(headers or {})}, raise_error=False,
        )
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


@pytest.fixture
def started(jp_serverapp, jp_asyncio_loop):
    """Run the extensions' start hooks (pytest-jupyter initialises the server but does not
    start it): job resumption and the progress notifier begin here, as in a real server."""
    jp_asyncio_loop.run_until_complete(jp_serverapp.extension_manager.start_all_extensions())
    return jp_serverapp
