"""The catalogue's operations: stores, registering files and instances, lookups, search, events.

This is the core API every face (REST, Librarian RPC, CLI through REST, jobs, transfers) calls;
it knows nothing of tornado. Registration keeps the Librarian's invariant: a name, once known,
always means the same bytes. Registering it again with other content is a Conflict that changes
nothing; the same content again is a no-op.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import joinedload, selectinload

from ..errors import Conflict, InvalidRequest, NotFound
from . import checksums as ck
from . import search as search_language
from .db import Database
from .models import Event, File, Instance, Observation, Session, Store, utcnow
from .naming import ObservationInfo, ObservationNamer, file_type, validate_name
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


class Catalogue:
    def __init__(self, db: Database, namer: ObservationNamer | None = None) -> None:
        self.db = db
        self.namer = namer or ObservationNamer()

    # ----- stores -------------------------------------------------------------------------
    def sync_stores(self, configured: dict[str, dict[str, Any]]) -> None:
        """Make the store table match configuration; stores no longer configured become
        unavailable (their instances stay known)."""
        for name, spec in configured.items():
            if spec.get("kind", "online") not in STORE_KINDS:
                raise ValueError(f"store {name!r}: kind must be one of {STORE_KINDS}")
            if "path" not in spec:
                raise ValueError(f"store {name!r} needs a 'path'")
        with self.db.write() as s:
            existing = {st.name: st for st in s.scalars(select(Store))}
            for name, spec in configured.items():
                store = existing.pop(name, None) or Store(name=name)
                store.path = str(spec["path"])
                store.kind = spec.get("kind", "online")
                store.available = bool(spec.get("available", True))
                store.ssh_host = spec.get("ssh_host", "")
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
                store_row = s.scalar(select(Store).where(Store.name == store))
                if store_row is None:
                    raise NotFound(f"no store named {store!r}")
            known = {
                f.name: f
                for f in s.scalars(select(File).where(File.name.in_([sp.name for sp in specs])))
            }
            results = []
            for i, spec in enumerate(specs):
                file = known.get(spec.name)
                created = file is None
                if file is None:
                    file = self._new_file(s, spec)
                    known[spec.name] = file
                else:
                    self._check_same_content(file, spec)
                added = False
                if store_row is not None:
                    assert paths is not None
                    added = self._add_instance(s, file, store_row, paths[i])
                results.append(Registration(spec.name, created, added))
            return results

    @staticmethod
    def _check_same_content(file: File, spec: FileSpec) -> None:
        if file.size != spec.size or not ck.compare(file.checksums, spec.checksums):
            raise Conflict(
                f"{spec.name!r} is already registered with other content "
                f"(size {file.size}, checksums {file.checksums}); names are immutable",
                name=spec.name,
            )

    def _new_file(self, s: DbSession, spec: FileSpec) -> File:
        obs = spec.observation or self.namer.observation_of(spec.name)
        obsid = spec.obsid if spec.obsid is not None else (obs.obsid if obs else None)
        if obs is not None and obsid == obs.obsid:
            self._ensure_observation(s, obs)
        elif obsid is not None and s.get(Observation, obsid) is None:
            raise InvalidRequest(f"{spec.name}: unknown obsid {obsid}")
        file = File(
            name=spec.name,
            type=file_type(spec.name),
            size=spec.size,
            is_directory=spec.is_directory,
            checksums=spec.checksums,
            create_time=spec.create_time or utcnow(),
            obsid=obsid,
            source=spec.source,
            meta=spec.meta,
        )
        s.add(file)
        s.flush()
        s.add(Event(file_id=file.id, type="file-registered", payload={"source": spec.source}))
        return file

    @staticmethod
    def _ensure_observation(s: DbSession, obs: ObservationInfo) -> None:
        if s.get(Observation, obs.obsid) is not None:
            return
        session = s.get(Session, obs.session_id)
        if session is None:
            s.add(Session(id=obs.session_id, start_time_jd=obs.start_time_jd,
                          stop_time_jd=obs.stop_time_jd))
        else:
            session.start_time_jd = min(session.start_time_jd, obs.start_time_jd)
            session.stop_time_jd = max(session.stop_time_jd, obs.stop_time_jd)
        s.add(Observation(obsid=obs.obsid, start_time_jd=obs.start_time_jd,
                          stop_time_jd=obs.stop_time_jd, start_lst_hr=obs.start_lst_hr,
                          session_id=obs.session_id))
        s.flush()

    @staticmethod
    def _add_instance(s: DbSession, file: File, store: Store, path: str) -> bool:
        existing = s.scalar(
            select(Instance).where(Instance.store_id == store.id, Instance.path == path)
        )
        if existing is not None:
            if existing.file_id != file.id:
                raise Conflict(f"{store.name}:{path} already holds another file", name=file.name)
            return False
        s.add(Instance(file_id=file.id, store_id=store.id, path=path))
        s.add(Event(file_id=file.id, type="instance-added",
                    payload={"store": store.name, "path": path}))
        return True

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
                out.update(dict(rows.tuples().all()))
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
        """Run a search; the reply of ``POST search``: results, next_cursor, total."""
        with self.db.read() as s:
            page = search_language.run_search(
                s, kind, search, limit=limit, cursor=cursor, count=count, sort=sort
            )
            rows = page.rows
            if kind == "files" and rows:
                # Load every row's instances in one query, not one per row.
                s.scalars(
                    select(File)
                    .where(File.id.in_([f.id for f in rows]))
                    .options(selectinload(File.instances).joinedload(Instance.store))
                ).all()
                results = [file_json(f, instances=True) for f in rows]
            elif kind == "instances" and rows:
                s.scalars(
                    select(Instance)
                    .where(Instance.id.in_([i.id for i in rows]))
                    .options(joinedload(Instance.store), joinedload(Instance.file))
                ).all()
                results = [instance_json(i) for i in rows]
            else:
                results = [SERIALIZERS[kind](r) for r in rows]
            return {"kind": kind, "results": results, "next_cursor": page.next_cursor,
                    "total": page.total}
