"""``POST search`` answers byte for byte as pinned: a representative set of searches (every kind,
a text query, sorts, a count, a cursor's next page, nested clauses, an empty result, an error)
on the demo archive with its times fixed, on SQLite and PostgreSQL.

The pinned bodies (``search_reply_bytes.json``, per database: PostgreSQL's JSONB orders an
object's keys its own way) were written by the code before the search path was made faster
(issue 19); any change to a reply's bytes, spacing and key order included, fails here. To pin a
deliberate change of the reply, run this file with ``HERA_PIN_SEARCH_REPLIES=1``: it writes the
bodies it got and fails, so a run that rewrote them never passes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import File, Instance

from .api_fixtures import *  # noqa: F403

PINNED = Path(__file__).with_name("search_reply_bytes.json")
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)

#: The requests, in order; "<cursor 0>" is replaced by the next_cursor of the first reply.
REQUESTS: list[dict[str, Any]] = [
    {"search": {"name-matches": "zen.2457644.%"}, "limit": 3},
    {"search": {"name-matches": "zen.2457644.%"}, "limit": 3, "cursor": "<cursor 0>"},
    {"query": "zen.2457645.*", "limit": 2, "count": True},
    {"search": {"name-is-exactly": "zen.2457644.10000.xx.HH.uvh5"}},
    {"search": {"num-instances-greater-than": 1}, "limit": 2, "sort": "-size"},
    {"search": {"obs-matches": {"session-id-is-exactly": 2457645}}, "limit": 2,
     "sort": "obsid"},
    {"search": {"or": {"name-is-exactly": "zen.2457646.10745.xx.HH.uvh5",
                       "name-matches": "zen.2457646.1%", "obsid-in-range": [0, 1]}},
     "limit": 2, "sort": "create_time"},
    {"search": {"type-is-exactly": "uv"}},
    {"search": {"source-matches": "%"}, "limit": 2, "sort": "-name"},
    {"search": {"name-matches": "nothing-%"}, "count": True},
    {"kind": "instances", "search": {"store-name-is-exactly": "offsite"}, "limit": 2},
    {"kind": "observations", "search": {"session-id-is-exactly": 2457645}, "limit": 2},
    {"kind": "sessions", "search": {"num-files-greater-than": 1}, "limit": 2, "count": True},
    {"search": {"name-smells-like": "zen"}},
]


def _fix_times(db_url: str) -> None:
    """Times that do not depend on when the test runs; one copy checked, one unavailable."""
    db = Database(db_url)
    try:
        with db.write() as s:
            s.execute(update(File).values(create_time=WHEN))
            s.execute(update(Instance).values(create_time=WHEN))
            checked, unavailable = s.scalars(
                select(Instance.id).join(File, Instance.file_id == File.id)
                .where(File.name == "zen.2457644.10000.xx.HH.uvh5").order_by(Instance.id)).all()
            s.execute(update(Instance).where(Instance.id == checked)
                      .values(fixity="ok", verified_at=WHEN + dt.timedelta(days=1)))
            s.execute(update(Instance).where(Instance.id == unavailable).values(available=False))
    finally:
        db.dispose()


async def test_search_replies_are_byte_for_byte_as_pinned(
    db_url, archive, ingested, http_server_client, jp_auth_header, jp_base_url
):
    _fix_times(db_url)
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    root = str(archive.root)
    got: list[list[Any]] = []
    cursor0 = None
    for request in REQUESTS:
        if request.get("cursor") == "<cursor 0>":
            assert cursor0, "the first search must have a next page"
            request = {**request, "cursor": cursor0}
        response = await http_server_client.fetch(
            f"{jp_base_url}hera-stage/api/search", method="POST", body=json.dumps(request),
            headers=jp_auth_header, raise_error=False)
        body = response.body.decode("utf-8")
        if cursor0 is None:
            cursor0 = json.loads(body)["next_cursor"]
        # The archive's temporary directory is the one thing that varies between runs.
        got.append([response.code, body.replace(json.dumps(root)[1:-1], "<root>")])
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    if os.environ.get("HERA_PIN_SEARCH_REPLIES"):
        pinned[backend] = got
        PINNED.write_text(json.dumps(pinned, indent=1) + "\n")
        pytest.fail(f"wrote the {backend} replies to {PINNED.name}; run again without "
                    "HERA_PIN_SEARCH_REPLIES")
    expected = pinned[backend]
    assert len(got) == len(expected) == len(REQUESTS)
    assert all("<root>" in body for _, body in got[:3])  # the replacement happened
    for request, (code, body), (want_code, want_body) in zip(REQUESTS, got, expected):
        assert (code, body) == (want_code, want_body), request
