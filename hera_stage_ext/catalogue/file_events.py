"""How a file's events are stored and shown: one row for a registration with its first copy.

Registering a new file with its first instance (ingest, an upload, a transfer's receiver) is two
facts: ``file-registered`` (payload ``{"source"}``) and ``instance-added`` (``{"store",
"path"}``), at the same time. They are stored as ONE event row of type ``REGISTERED_WITH_COPY``
with the three keys: a second row cost the PostgreSQL server a heap tuple, three index entries
and a foreign-key check a file, a fifth of its work in registering (benchmarks/README.md,
session 10). Every reader shows such a row as the two events it stands for (``shown``), and a
search for either type finds it (``stored_types``); catalogues written before keep their two
rows, which read the same. The stored type is reserved: no caller may record it directly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

REGISTERED = "file-registered"
INSTANCE_ADDED = "instance-added"
#: The stored type of a registration with its first copy (never shown as such).
REGISTERED_WITH_COPY = "file-registered+instance-added"


def registered_with_copy_payload(source_json: str, store_json: str, path_json: str) -> str:
    """The JSON text of a ``REGISTERED_WITH_COPY`` row's payload, from its values' JSON."""
    return f'{{"source": {source_json}, "store": {store_json}, "path": {path_json}}}'


def shown(type_: str, time: dt.datetime, payload: dict[str, Any]
          ) -> list[tuple[str, dt.datetime, dict[str, Any]]]:
    """The events (type, time, payload) a stored row stands for, in the order they happened."""
    if type_ != REGISTERED_WITH_COPY:
        return [(type_, time, payload)]
    return [(REGISTERED, time, {"source": payload.get("source", "")}),
            (INSTANCE_ADDED, time, {"store": payload.get("store"), "path": payload.get("path")})]


def stored_type_alias(type_: str) -> str:
    """The other stored type whose rows show ``type_`` (``type_`` itself when none): a search
    for events of ``type_`` matches ``type IN (type_, stored_type_alias(type_))``."""
    return REGISTERED_WITH_COPY if type_ in (REGISTERED, INSTANCE_ADDED) else type_


def stored_types(type_: str) -> tuple[str, ...]:
    """The stored types of the rows that show an event of ``type_``."""
    alias = stored_type_alias(type_)
    return (type_,) if alias == type_ else (type_, alias)
