"""JSON forms of catalogue rows: the one place that decides what a file, instance... looks like.

Used by the REST API, the Librarian RPC listings and the CLI's ``--json``; times are ISO 8601 UTC
with a trailing ``Z``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from typing import Any

from ..states import FixityState
from . import file_events
from .models import Event, File, Instance, Observation, Session, Store


def iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat() + "Z"


#: A time as SQLAlchemy keeps it in SQLite (``2026-12-07 22:33:16.039264``).
_SQLITE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}")


def iso_of_stored(value: str) -> str | None:
    """``iso`` of a time in SQLAlchemy's SQLite text, made from the text itself (``T`` between
    date and time, the microseconds left out when zero, as ``isoformat`` writes them): no
    ``datetime`` parsed and formatted again, which cost a search page's and a push's rows more
    than the rest of the time's work. None for a text of any other form (to be parsed)."""
    if not _SQLITE_TIME.fullmatch(value):
        return None
    clock = value[11:19] if value.endswith(".000000") else value[11:]
    return f"{value[:10]}T{clock}Z"


def unix_seconds(when: dt.datetime) -> float:
    return when.replace(tzinfo=dt.timezone.utc).timestamp()


def store_json(store: Store) -> dict[str, Any]:
    return {
        "name": store.name,
        "path": store.path,
        "kind": store.kind,
        "available": store.available,
        "ssh_host": store.ssh_host,
        "options": dict(store.options or {}),  # a cold store's buffer, buffer_bytes, volume_key
    }


def instance_fields(
    file_name: str, store_name: str, store_root: str, store_kind: str, store_available: bool,
    path: str, available: bool, deletion_policy: str, create_time: dt.datetime,
    fixity: str = FixityState.UNCHECKED, verified_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """An instance's JSON from plain values (for callers that fetched columns, not objects)."""
    return {
        "file": file_name,
        "store": store_name,
        "path": path,
        "full_path": os.path.join(store_root, path),
        "available": bool(available and store_available),
        "store_kind": store_kind,
        "deletion_policy": deletion_policy,
        "create_time": iso(create_time),
        "fixity": fixity,
        "verified_at": iso(verified_at),
    }


#: The columns ``instance_fields`` takes after the file name, in order.
INSTANCE_COLUMNS = (Store.name, Store.path, Store.kind, Store.available, Instance.path,
                    Instance.available, Instance.deletion_policy, Instance.create_time,
                    Instance.fixity, Instance.verified_at)


def instance_json(instance: Instance) -> dict[str, Any]:
    store = instance.store
    return instance_fields(instance.file.name, store.name, store.path, store.kind,
                           store.available, instance.path, instance.available,
                           instance.deletion_policy, instance.create_time, instance.fixity,
                           instance.verified_at)


def events_json(event: Event) -> list[dict[str, Any]]:
    """The events a stored event row stands for (one, or two: ``file_events``)."""
    return [{"type": type_, "time": iso(time), "payload": payload}
            for type_, time, payload in file_events.shown(event.type, event.time, event.payload)]


def file_json(file: File, *, instances: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": file.name,
        "type": file.type,
        "size": file.size,
        "is_directory": file.is_directory,
        "checksums": dict(file.checksums),
        "create_time": iso(file.create_time),
        "obsid": file.obsid,
        "source": file.source,
        "metadata": file.meta,
    }
    if instances:
        out["instances"] = [instance_json(i) for i in file.instances]
    return out


def observation_json(obs: Observation) -> dict[str, Any]:
    return {
        "obsid": obs.obsid,
        "start_time_jd": obs.start_time_jd,
        "stop_time_jd": obs.stop_time_jd,
        "start_lst_hr": obs.start_lst_hr,
        "session_id": obs.session_id,
    }


def session_json(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "start_time_jd": session.start_time_jd,
        "stop_time_jd": session.stop_time_jd,
    }


#: The reply of each kind of search, by kind.
SERIALIZERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "files": file_json,
    "instances": instance_json,
    "observations": observation_json,
    "sessions": session_json,
}
