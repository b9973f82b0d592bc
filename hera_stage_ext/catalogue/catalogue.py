"""The catalogue's operations: stores, registering files and instances, lookups, search, events.

This is the core API every face (REST, Librarian RPC, CLI through REST, jobs, transfers) calls;
it knows nothing of tornado. Registration keeps the Librarian's invariant: a name, once known,
always means the same bytes. Registering it again with other content is a Conflict that changes
nothing; the same content again is a no-op.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import joinedload, selectinload

from ..errors import Conflict, InvalidRequest, NotFound
from ..paths import check_text, is_within
from . import checksums as ck
from . import cold
from . import search as search_language
from .db import Database
from .models import Event, File, Instance, Observation, Session, Store, utcnow
from .naming import ObservationInfo, ObservationNamer, file_type, validate_name
from .search_reply import reply_text
from .search_rows import files_with_instances, files_with_instances_text
from .serialize import (
    SERIALIZERS,
    event_json,
    file_json,
    instance_json,
    observation_json,
    store_json,
)

STORE_KINDS = ("online", "cold")


@dataclass
class FileSpec:
    """What is known of a file being registered (from ingest, upload or a peer)."""

    name: str
    size: int
    checksums: dict[str, str]
    is_directory: bool = False
    source: str = ""
    obsid: int | None = None
    create_time: dt.datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    observation: ObservationInfo | None = None


@dataclass
class Registration:
    name: str
    created: bool  # a new file row
    instance_added: bool


class _KnownFile(NamedTuple):
    id: int | None  # None: created by the batch being registered
    size: int
    checksums: dict[str, str]


@dataclass
class _RegistrationPlan:
    """What one ``register`` batch will write, decided before anything is written."""

    known: dict[str, _KnownFile] = field(default_factory=dict)  # name -> row already stored
    new: dict[str, FileSpec] = field(default_factory=dict)  # name -> the spec that creates it
    new_known: dict[str, _KnownFile] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be created
    files: list[dict[str, Any]] = field(default_factory=list)  # rows of table file
    observations: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[int, list[Any]] = field(default_factory=dict)  # id -> [start, stop, old, dirty]


#: Values per ``IN (...)`` list (SQLite allows 32,766 bound values per statement).
_IN_CHUNK = 5_000


def _insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """One executemany INSERT (on psycopg, measured faster than multi-row VALUES through
    SQLAlchemy's insertmanyvalues, which RETURNING would select)."""
    if rows:
        conn.execute(insert(table), rows)


def _select_in(s: DbSession, stmt: Select, column: Any, values: Iterable[Any]) -> list[Any]:
    """The rows of ``stmt`` restricted to ``column IN values`` (queried in chunks).

    On PostgreSQL the values are rendered into the SQL text. With bound parameters every batch
    sends the same text, which psycopg turns into a server-side prepared statement after five
    runs; PostgreSQL then keeps the generic plan it chose while the tables were nearly empty (a
    sequential scan) until the next ANALYZE, and a fresh catalogue's first ingest minute ran at
    a few hundred files/s, slowing as the tables grew. Literal values get a plan per batch.
    """
    values = list(values)
    literal = s.get_bind().dialect.name == "postgresql"
    rows: list[Any] = []
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        if literal:
            chunk = bindparam("values", chunk, expanding=True, literal_execute=True)
        rows.extend(s.execute(stmt.where(column.in_(chunk))))
    return rows


class Catalogue:
    def __init__(self, db: Database, namer: ObservationNamer | None = None, *,
                 search_timeout_s: float = 0) -> None:
        self.db = db
        self.namer = namer or ObservationNamer()
        # Longest a search statement may run (0: no limit): one user cannot hold the database.
        self.search_timeout_s = search_timeout_s

    # ----- stores -------------------------------------------------------------------------
    def sync_stores(self, configured: dict[str, dict[str, Any]]) -> None:
        """Make the store table match configuration; stores no longer configured become
        unavailable (their instances stay known)."""
        for name, spec in configured.items():
            if spec.get("kind", "online") not in STORE_KINDS:
                raise ValueError(f"store {name!r}: kind must be one of {STORE_KINDS}")
            if "path" not in spec:
                raise ValueError(f"store {name!r} needs a 'path'")
        cold.check_stores(configured)
        with self.db.write() as s:
            existing = {st.name: st for st in s.scalars(select(Store))}
            for name, spec in configured.items():
                store = existing.pop(name, None) or Store(name=name)
                store.path = str(spec["path"])
                store.kind = spec.get("kind", "online")
                store.available = bool(spec.get("available", True))
                store.ssh_host = spec.get("ssh_host", "")
                store.options = cold.store_options(spec)
                s.add(store)
            for store in existing.values():
                store.available = False

    def stores(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            counts = dict(
                s.execute(select(Instance.store_id, func.count()).group_by(Instance.store_id)).all()
            )
            out = []
            for store in s.scalars(select(Store).order_by(Store.name)):
                out.append({**store_json(store), "instances": counts.get(store.id, 0)})
            return out

    def store(self, name: str) -> dict[str, Any]:
        with self.db.read() as s:
            store = s.scalar(select(Store).where(Store.name == name))
            if store is None:
                raise NotFound(f"no store named {name!r}")
            return store_json(store)

    # ----- registration -------------------------------------------------------------------
    def register(
        self, specs: Sequence[FileSpec], store: str | None = None, paths: Sequence[str] | None = None
    ) -> list[Registration]:
        """Register files (and, with ``store``, their instances at ``paths``) in one transaction.

        Raises Conflict, leaving the catalogue unchanged, when any name is known with other
        content or any store path already holds another file.

        Bulk by design (ingest calls it with hundreds of files): one query each fetches the
        batch's known files, observations, sessions and store paths, every check runs in the
        order of ``specs`` before anything is written, and the new rows go in with one
        executemany INSERT per table (Core, not ORM units of work).
        """
        if store is not None and (paths is None or len(paths) != len(specs)):
            raise InvalidRequest("register: one path per file is needed with a store")
        for spec in specs:
            validate_name(spec.name)
            spec.checksums = ck.normalise(spec.checksums)
            if not spec.checksums:
                raise InvalidRequest(f"{spec.name}: at least one checksum is required")
            if not isinstance(spec.size, int) or spec.size < 0:
                raise InvalidRequest(f"{spec.name}: size must be a non-negative integer")
        with self.db.write() as s:
            store_row = None
            if store is not None:
                store_row = s.execute(
                    select(Store.id, Store.name).where(Store.name == store)
                ).first()
                if store_row is None:
                    raise NotFound(f"no store named {store!r}")
            plan = _RegistrationPlan()
            plan.known = {
                row.name: _KnownFile(row.id, row.size, row.checksums)
                for row in _select_in(
                    s, select(File.id, File.name, File.size, File.checksums), File.name,
                    {sp.name for sp in specs},
                )
            }
            self._plan_new_files(s, specs, plan)
            if store_row is not None:
                assert paths is not None
                held = {
                    row.path: row.file_id
                    for row in _select_in(
                        s,
                        select(Instance.path, Instance.file_id).where(
                            Instance.store_id == store_row.id
                        ),
                        Instance.path,
                        set(paths),
                    )
                }
            # Every check, in the order of the batch, before anything is written.
            added_paths: dict[str, str] = {}  # path -> name, for instances added by this batch
            results = []
            for i, spec in enumerate(specs):
                created = spec.name in plan.new and plan.new[spec.name] is spec
                if created and spec.name in plan.invalid:
                    raise InvalidRequest(plan.invalid[spec.name])
                if not created:
                    known = plan.known.get(spec.name) or plan.new_known[spec.name]
                    self._check_same_content(known, spec)
                added = False
                if store_row is not None:
                    assert paths is not None
                    path = paths[i]
                    owner = added_paths.get(path)
                    if owner is None and path in held:
                        known = plan.known.get(spec.name)
                        if known is None or held[path] != known.id:
                            raise Conflict(f"{store_row.name}:{path} already holds another file",
                                           name=spec.name)
                    elif owner is not None and owner != spec.name:
                        raise Conflict(f"{store_row.name}:{path} already holds another file",
                                       name=spec.name)
                    elif owner is None:
                        added_paths[path] = spec.name
                        added = True
                results.append(Registration(spec.name, created, added))
            self._write_registration(s, plan, store_row, added_paths)
            return results

    @staticmethod
    def _check_same_content(file: File | _KnownFile, spec: FileSpec) -> None:
        if file.size != spec.size or not ck.compare(file.checksums, spec.checksums):
            raise Conflict(
                f"{spec.name!r} is already registered with other content "
                f"(size {file.size}, checksums {file.checksums}); names are immutable",
                name=spec.name,
            )

    def _plan_new_files(
        self, s: DbSession, specs: Sequence[FileSpec], plan: _RegistrationPlan
    ) -> None:
        """Decide the rows of the batch's new files, observations and sessions (in order: the
        first spec of a new name creates it, an obsid must exist or be created earlier)."""
        fresh: list[tuple[FileSpec, ObservationInfo | None]] = []
        for spec in specs:
            if spec.name in plan.known or spec.name in plan.new:
                continue
            plan.new[spec.name] = spec
            plan.new_known[spec.name] = _KnownFile(None, spec.size, spec.checksums)
            fresh.append((spec, spec.observation or self.namer.observation_of(spec.name)))
        if not fresh:
            return
        wanted = {obs.obsid for _, obs in fresh if obs is not None}
        wanted |= {sp.obsid for sp, _ in fresh if sp.obsid is not None}
        existing_obs = {
            row.obsid for row in _select_in(s, select(Observation.obsid), Observation.obsid, wanted)
        }
        session_ids = {obs.session_id for _, obs in fresh if obs is not None}
        sessions = {
            row.id: [row.start_time_jd, row.stop_time_jd, True, False]  # start, stop, old, dirty
            for row in _select_in(
                s, select(Session.id, Session.start_time_jd, Session.stop_time_jd), Session.id,
                session_ids,
            )
        }
        now = utcnow()
        for spec, obs in fresh:
            obsid = spec.obsid if spec.obsid is not None else (obs.obsid if obs else None)
            if obs is not None and obsid == obs.obsid:
                if obs.obsid not in existing_obs:
                    existing_obs.add(obs.obsid)
                    session = sessions.get(obs.session_id)
                    if session is None:
                        sessions[obs.session_id] = [obs.start_time_jd, obs.stop_time_jd, False,
                                                    False]
                    else:
                        session[0] = min(session[0], obs.start_time_jd)
                        session[1] = max(session[1], obs.stop_time_jd)
                        session[3] = True
                    plan.observations.append({
                        "obsid": obs.obsid, "start_time_jd": obs.start_time_jd,
                        "stop_time_jd": obs.stop_time_jd, "start_lst_hr": obs.start_lst_hr,
                        "session_id": obs.session_id,
                    })
            elif obsid is not None and obsid not in existing_obs:
                # Raised by ``register`` in batch order, after the checks of earlier files.
                plan.invalid[spec.name] = f"{spec.name}: unknown obsid {obsid}"
                continue
            plan.files.append({
                "name": spec.name, "type": file_type(spec.name), "size": spec.size,
                "is_directory": spec.is_directory, "checksums": spec.checksums,
                "create_time": spec.create_time or now, "obsid": obsid, "source": spec.source,
                "metadata": spec.meta,
            })
        plan.sessions = sessions

    @staticmethod
    def _write_registration(
        s: DbSession, plan: _RegistrationPlan, store_row: Any, added_paths: dict[str, str]
    ) -> None:
        conn = s.connection()
        new_sessions = [
            {"id": sid, "start_time_jd": v[0], "stop_time_jd": v[1]}
            for sid, v in plan.sessions.items() if not v[2]
        ]
        if new_sessions:
            _insert_rows(conn, Session.__table__, new_sessions)
        changed = [
            {"sid": sid, "start": v[0], "stop": v[1]}
            for sid, v in plan.sessions.items() if v[2] and v[3]
        ]
        if changed:
            table = Session.__table__
            conn.execute(
                update(table)
                .where(table.c.id == bindparam("sid"))
                .values(start_time_jd=bindparam("start"), stop_time_jd=bindparam("stop")),
                changed,
            )
        if plan.observations:
            _insert_rows(conn, Observation.__table__, plan.observations)
        now = utcnow()
        ids = {name: known.id for name, known in plan.known.items()}
        if plan.files:
            table = File.__table__
            rows = conn.execute(
                insert(table).returning(table.c.id, table.c.name),
                plan.files,
            )
            ids.update({row.name: row.id for row in rows})
            _insert_rows(conn, Event.__table__, [
                {"file_id": ids[f["name"]], "type": "file-registered", "time": now,
                 "payload": {"source": f["source"]}}
                for f in plan.files
            ])
        if added_paths:
            _insert_rows(conn, Instance.__table__, [
                {"file_id": ids[name], "store_id": store_row.id, "path": path,
                 "available": True, "deletion_policy": "disallowed", "create_time": now}
                for path, name in added_paths.items()
            ])
            _insert_rows(conn, Event.__table__, [
                {"file_id": ids[name], "type": "instance-added", "time": now,
                 "payload": {"store": store_row.name, "path": path}}
                for path, name in added_paths.items()
            ])

    def known_instances(self, store: str, paths: Iterable[str]) -> dict[str, int]:
        """Of ``paths`` on ``store``, those already registered, with their file's size."""
        paths = list(paths)
        out: dict[str, int] = {}
        with self.db.read() as s:
            for start in range(0, len(paths), 500):
                chunk = paths[start : start + 500]
                rows = s.execute(
                    select(Instance.path, File.size)
                    .join(File, Instance.file_id == File.id)
                    .join(Store, Instance.store_id == Store.id)
                    .where(Store.name == store, Instance.path.in_(chunk))
                )
                out.update({path: size for path, size in rows})
        return out

    # ----- lookups ------------------------------------------------------------------------
    def file_detail(self, name: str) -> dict[str, Any]:
        """A file with its instances, observation and events."""
        with self.db.read() as s:
            file = s.scalar(
                select(File)
                .where(File.name == name)
                .options(
                    selectinload(File.instances).joinedload(Instance.store),
                    selectinload(File.events),
                    joinedload(File.observation),
                )
            )
            if file is None:
                raise NotFound(f"no file named {name!r}")
            out = file_json(file, instances=True)
            out["observation"] = observation_json(file.observation) if file.observation else None
            out["events"] = [event_json(e) for e in file.events]
            return out

    def locate(self, name: str, *, store: str | None = None) -> dict[str, Any]:
        """One available instance of ``name`` on an available online store (the Librarian's
        ``locate_file_instance``): the first by store name."""
        with self.db.read() as s:
            query = (
                select(Instance)
                .join(File, Instance.file_id == File.id)
                .join(Store, Instance.store_id == Store.id)
                .where(File.name == name, Instance.available, Store.available)
                .options(joinedload(Instance.store), joinedload(Instance.file))
                .order_by(Store.kind.desc(), Store.name, Instance.id)  # "online" before "cold"
            )
            if store is not None:
                query = query.where(Store.name == store)
            instance = s.scalars(query).first()
            if instance is None:
                if s.scalar(select(File.id).where(File.name == name)) is None:
                    raise NotFound(f"no file named {name!r}")
                raise NotFound(f"file {name!r} has no available instance")
            return instance_json(instance)

    def file_at(self, full_path: str) -> str:
        """The name of the file whose instance lies at ``full_path`` on some store (the path
        resolved through symlinks and confined to that store's root)."""
        real = os.path.realpath(check_text(full_path, "path on storage"))
        with self.db.read() as s:
            for store in s.scalars(select(Store).where(Store.available)):
                root = os.path.realpath(store.path)
                if not is_within(real, root):
                    continue
                name = s.scalar(
                    select(File.name)
                    .join(Instance, Instance.file_id == File.id)
                    .where(Instance.store_id == store.id,
                           Instance.path == os.path.relpath(real, root))
                )
                if name is not None:
                    return name
        raise NotFound(f"{full_path!r} is not a file of any available store's catalogue")

    def add_event(self, name: str, type_: str, payload: dict[str, Any]) -> None:
        with self.db.write() as s:
            file_id = s.scalar(select(File.id).where(File.name == name))
            if file_id is None:
                raise NotFound(f"no file named {name!r}")
            s.add(Event(file_id=file_id, type=type_, payload=payload))

    def counts(self) -> dict[str, int]:
        with self.db.read() as s:
            return {
                "files": s.scalar(select(func.count()).select_from(File)) or 0,
                "instances": s.scalar(select(func.count()).select_from(Instance)) or 0,
                "observations": s.scalar(select(func.count()).select_from(Observation)) or 0,
                "sessions": s.scalar(select(func.count()).select_from(Session)) or 0,
                "stores": s.scalar(select(func.count()).select_from(Store)) or 0,
            }

    # ----- search -------------------------------------------------------------------------
    def search(
        self,
        kind: str,
        search: Any,
        *,
        limit: int = 100,
        cursor: str | None = None,
        count: bool = False,
        sort: str | None = None,
    ) -> dict[str, Any]:
        """Run a search; the reply of ``POST search``: results, next_cursor, total. Raises
        ``QueryTimeout`` when it runs longer than ``search_timeout_s``."""

        def read(s: DbSession) -> dict[str, Any]:
            page = self._search_page(s, kind, search, limit, cursor, count, sort)
            rows = page.rows
            if kind == "files" and rows:
                results = files_with_instances(s, rows)
            else:
                # Instance rows come with their file and store loaded by the search.
                results = [SERIALIZERS[kind](r) for r in rows]
            return {"kind": kind, "results": results, "next_cursor": page.next_cursor,
                    "total": page.total}

        return self.db.run_limited(self.search_timeout_s, read)

    def search_text(
        self,
        kind: str,
        search: Any,
        *,
        limit: int = 100,
        cursor: str | None = None,
        count: bool = False,
        sort: str | None = None,
    ) -> str:
        """``json.dumps`` of ``search``'s reply with ``"search": search`` added (the body of
        ``POST search``), a files page written as text straight from its rows."""
        if kind != "files":
            return json.dumps({**self.search(kind, search, limit=limit, cursor=cursor,
                                             count=count, sort=sort), "search": search})

        def read(s: DbSession) -> str:
            page = self._search_page(s, kind, search, limit, cursor, count, sort)
            results = files_with_instances_text(s, page.rows) if page.rows else []
            return reply_text(kind, results, page.next_cursor, page.total, search)

        return self.db.run_limited(self.search_timeout_s, read)

    def _search_page(self, s: DbSession, kind: str, search: Any, limit: int,
                     cursor: str | None, count: bool, sort: str | None
                     ) -> search_language.SearchPage:
        return search_language.run_search(
            s, kind, search, limit=limit, cursor=cursor, count=count, sort=sort,
            plain=kind == "files",
        )

    def names_matching(self, search: Any, limit: int) -> list[str]:
        """The names of the files ``search`` matches now, in name order: at most ``limit + 1``
        (one more says there are more). One query of the name column alone: a job launched
        from a search needs nothing else, and paging through whole results (checksums,
        metadata, instances) cost more than the rest of a launch."""

        def read(s: DbSession) -> list[str]:
            stmt = search_language.search_select(s, "files", search)
            return list(s.scalars(stmt.with_only_columns(File.name).order_by(File.name)
                                  .limit(limit + 1)))

        return self.db.run_limited(self.search_timeout_s, read)

