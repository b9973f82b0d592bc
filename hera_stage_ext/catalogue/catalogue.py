"""The catalogue's operations: stores, registering files and instances, lookups, search, events.

This is the core API every face (REST, Librarian RPC, CLI through REST, jobs, transfers) calls;
it knows nothing of tornado. It owns its tables: every write of a file, instance, event or
remote instance goes through a method here (in bulk where callers write many: ``register``,
``register_each``, ``register_batches``, ``add_events``, ``update_instances``,
``record_remote``), most of them through
``tables`` (the driver, not SQLAlchemy's per-row work); a caller already in a write transaction
passes its session (``within``). Registration keeps the Librarian's invariant: a name, once known,
always means the same bytes. Registering it again with other content is a Conflict that changes
nothing; the same content again is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import joinedload, selectinload

from ..errors import Conflict, InvalidRequest, NotFound, StagingError
from ..paths import check_text, is_within
from ..states import FixityState
from . import checksums as ck
from . import cold
from . import file_events
from . import search as search_language
from .db import Database
from .inlist import one_of
from .models import File, Instance, Observation, Session, Store, utcnow
from .naming import ObservationInfo, ObservationNamer, file_type, validate_name
from .search_reply import reply_text
from .search_rows import files_with_instances, files_with_instances_text
from .serialize import (
    SERIALIZERS,
    events_json,
    file_json,
    instance_json,
    observation_json,
    store_json,
)
from .tables import Found, Tables, dumps, json_string

STORE_KINDS = ("online", "cold")
log = logging.getLogger(__name__)

#: SQLSTATE of a unique index's refusal (PostgreSQL).
_UNIQUE_VIOLATION = "23505"


@contextlib.contextmanager
def _raced_as_conflict() -> Iterator[None]:
    """A registration's transaction whose writes a unique index refused (PostgreSQL: another
    registration committed one of its names or store paths after this one's checks (a session
    or observation is an upsert: ``Tables.write``); SQLite's writers take turns, so its checks
    see them) raises Conflict: the transaction is rolled back, nothing of the batch is written,
    and ``register_each`` goes on file by file (whose checks then see the other's rows)."""
    try:
        yield
    except Exception as exc:
        # The driver's error, or SQLAlchemy's wrapping it (``orig``).
        driver_error = getattr(exc, "orig", None) or exc
        if getattr(driver_error, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
        log.info("registration raced another: %s", driver_error)
        raise Conflict("another registration wrote a name or store path of this batch while "
                       "it was written; nothing of the batch was registered (try again)") from exc


def _at_index(also_write: Callable[[DbSession, Sequence[int]], None], index: int
              ) -> Callable[[DbSession, Sequence[int]], None]:
    """An ``also_write`` of a batch for the registration of its spec ``index`` alone."""
    return lambda s, _registered: also_write(s, (index,))


#: An event recorded with an instance ``register`` adds: its type and payload, a dict or the
#: JSON text of one (``json.dumps``' own: a caller registering thousands puts it together from
#: its parts, as ``file_events`` does, and trusts no outside text as one).
InstanceEvent = tuple[str, dict[str, Any] | str]


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
    id: int
    size: int
    checksums: dict[str, str]


@dataclass
class _RegistrationPlan:
    """What one ``register`` batch will write, decided before anything is written."""

    known: dict[str, _KnownFile] = field(default_factory=dict)  # name -> row already stored
    new: dict[str, FileSpec] = field(default_factory=dict)  # name -> the spec that creates it
    invalid: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be created
    files: list[tuple[Any, ...]] = field(default_factory=list)  # file rows, but for their id
    observations: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: dict[int, list[Any]] = field(default_factory=dict)  # id -> [start, stop, old, dirty]


#: A row's first value (an observation's obsid).
_first = itemgetter(0)


class _EarlierBatchFailed(Exception):
    """A batch of ``register_batches`` whose earlier batch raised: it writes nothing."""


def _after(earlier: futures.Future[Any] | None) -> Callable[[], None] | None:
    """A ``before_write`` that waits for the ``earlier`` batch to finish, and refuses to
    write when it raised."""
    if earlier is None:
        return None

    def wait() -> None:
        if earlier.exception() is not None:  # waits for it
            raise _EarlierBatchFailed()
    return wait


class Catalogue:
    def __init__(self, db: Database, namer: ObservationNamer | None = None, *,
                 search_timeout_s: float = 0,
                 max_search_limit: int = search_language.MAX_LIMIT) -> None:
        self.db = db
        self.namer = namer or ObservationNamer()
        # Longest a search statement may run (0: no limit): one user cannot hold the database.
        self.search_timeout_s = search_timeout_s
        # Largest page of a search (c.StagingApp.max_search_limit; the REST API's maximum).
        self.max_search_limit = max_search_limit

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
        self, specs: Sequence[FileSpec], store: str | None = None,
        paths: Sequence[str] | None = None, *,
        instance_events: Sequence[InstanceEvent | None] | None = None,
        before_write: Callable[[], None] | None = None,
        also_write: Callable[[DbSession, Sequence[int]], None] | None = None,
    ) -> list[Registration]:
        """Register files (and, with ``store``, their instances at ``paths``) in one transaction.

        Raises Conflict, leaving the catalogue unchanged, when any name is known with other
        content or any store path already holds another file (also when another registration
        commits such a row while this one writes: ``_raced_as_conflict``). ``instance_events``:
        per spec, an event (type, payload) more to record with its instance when this call adds
        it (a transfer's ``transfer-received``; its payload a dict, or the JSON text of one
        that its caller put together: ``InstanceEvent``).

        Bulk by design (ingest calls it with hundreds of files): one query each fetches the
        batch's known files, observations, sessions and store paths, every check runs in the
        order of ``specs`` before anything is written, and the new rows go in with one
        statement per table (``tables``: through the driver, not SQLAlchemy's per-row work).
        ``before_write``: called after the checks, before the first write (which it may delay,
        or refuse by raising: ``register_batches``). ``also_write``: called with the session
        and the indices in ``specs`` registered once their rows are written, in the same
        transaction: what it writes commits with them or not at all (a receiver's item rows).
        """
        if store is not None and (paths is None or len(paths) != len(specs)):
            raise InvalidRequest("register: one path per file is needed with a store")
        if instance_events is not None and len(instance_events) != len(specs):
            raise InvalidRequest("register: one instance event (or None) per file is needed")
        for spec in specs:
            validate_name(spec.name)
            # (Checksums a peer's offer was checked with pass as they are: ``ck.Checksums``.)
            spec.checksums = ck.normalise(spec.checksums)
            if not spec.checksums:
                raise InvalidRequest(f"{spec.name}: at least one checksum is required")
            if not isinstance(spec.size, int) or spec.size < 0:
                raise InvalidRequest(f"{spec.name}: size must be a non-negative integer")
        # Every spec's observation (what a new file of that name would belong to): looked up
        # with the rest, before it is known which names are new.
        observed = [spec.observation or self.namer.observation_of(spec.name) for spec in specs]
        obsids = {obs.obsid for obs in observed if obs is not None}
        obsids |= {spec.obsid for spec in specs if spec.obsid is not None}
        with _raced_as_conflict(), self.db.write() as s:
            tables = Tables(s)
            found = tables.find(store, {spec.name for spec in specs},
                                set(paths) if store is not None and paths else (),
                                obsids, {obs.session_id for obs in observed if obs is not None})
            if store is not None and found.store is None:
                raise NotFound(f"no store named {store!r}")
            plan = _RegistrationPlan(known={
                name: _KnownFile(*row) for name, row in found.files.items()})
            self._plan_new_files(tables, specs, observed, found, plan)
            held = found.held
            # Every check, in the order of the batch, before anything is written.
            added_paths: dict[str, tuple[str, int]] = {}  # path -> name, index of its spec
            results = []
            new, invalid, stored_files = plan.new, plan.invalid, plan.known
            for i, spec in enumerate(specs):
                created = new.get(spec.name) is spec
                if created and invalid and spec.name in invalid:
                    raise InvalidRequest(invalid[spec.name])
                if not created:
                    known = stored_files.get(spec.name) or new[spec.name]
                    self._check_same_content(known, spec)
                added = False
                if found.store is not None:
                    assert paths is not None
                    path = paths[i]
                    owner = added_paths.get(path)
                    if owner is None and path in held:
                        stored = stored_files.get(spec.name)
                        if stored is None or held[path] != stored.id:
                            raise Conflict(f"{store}:{path} already holds another file",
                                           name=spec.name)
                    elif owner is not None and owner[0] != spec.name:
                        raise Conflict(f"{store}:{path} already holds another file",
                                       name=spec.name)
                    elif owner is None:
                        added_paths[path] = (spec.name, i)
                        added = True
                results.append(Registration(spec.name, created, added))
            if before_write is not None:
                before_write()
            self._write_registration(tables, plan, found.store, added_paths, instance_events)
            if also_write is not None:
                also_write(s, range(len(specs)))
            return results

    def register_each(
        self, specs: Sequence[FileSpec], store: str | None = None,
        paths: Sequence[str] | None = None, *,
        instance_events: Sequence[InstanceEvent | None] | None = None,
        before_write: Callable[[], None] | None = None,
        also_write: Callable[[DbSession, Sequence[int]], None] | None = None,
    ) -> list[Registration | StagingError]:
        """``register``, where one bad file must not sink the rest (ingest, an upload, a
        transfer's batch): the batch in one transaction, or, if anything in it is refused,
        each file in a transaction of its own. Per spec, its Registration or its refusal
        (Conflict, InvalidRequest); a missing store is raised. ``before_write``: as
        ``register``'s, also called before the one-by-one fallback begins. ``also_write``:
        as ``register``'s, in each transaction that registers (one by one: with that file's
        index)."""
        try:
            return list(self.register(specs, store, paths, instance_events=instance_events,
                                      before_write=before_write, also_write=also_write))
        except (Conflict, InvalidRequest):
            pass
        if before_write is not None:
            before_write()
        out: list[Registration | StagingError] = []
        for i, spec in enumerate(specs):
            try:
                out += self.register(
                    [spec], store, None if paths is None else [paths[i]],
                    instance_events=None if instance_events is None else [instance_events[i]],
                    also_write=None if also_write is None else _at_index(also_write, i))
            except (Conflict, InvalidRequest) as exc:
                out.append(exc)
        return out

    def register_batches(
        self, batches: Iterable[tuple[Sequence[FileSpec], Sequence[str] | None]],
        store: str | None = None,
    ) -> Iterator[list[Registration | StagingError]]:
        """``register_each`` of each (specs, paths) of ``batches`` in turn, its outcomes
        yielded in order: what a bulk caller (ingest) does batch after batch, with the work
        overlapped where it can be. While one batch is registered, the caller makes the next
        (ingest hashes it); on PostgreSQL, while one batch is written (the server's work), the
        next is also checked (its lookups, on a connection of its own). Each batch
        writes only after the one before it has finished, so the outcome is that of one
        batch after another: ids ascend batch by batch, a batch is one transaction (or
        ``register_each``'s one by one), and a batch with a name or store path of the one
        before it is checked only after that one (so it sees its rows). A session or
        observation that the batch before wrote after this one looked is widened or kept
        (``Tables.write``'s upserts). An error of a batch (a missing store) is raised when
        its turn comes, and no later batch writes anything. A caller that stops taking
        outcomes (closes the iterator) leaves at most one batch registered beyond the last
        outcome it took (the next: at most two batches are in hand at once)."""
        pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="register")
        in_flight: deque[futures.Future[list[Registration | StagingError]]] = deque()
        previous: tuple[futures.Future[Any], set[str], set[str]] | None = None
        try:
            for specs, paths in batches:
                names = {spec.name for spec in specs}
                held = set(paths or ())
                after = None if previous is None else previous[0]
                # After the one before, not beside it: on SQLite, whose write transaction
                # (and lock) begins before the checks, so a batch checked early would hold the
                # lock that the one before waits for; and where it must see the rows of the
                # one before (a name or path of it).
                if previous is not None and (
                        self.db.backend != "postgresql"
                        or names & previous[1] or held & previous[2]):
                    futures.wait([previous[0]])
                future = pool.submit(self.register_each, specs, store, paths,
                                     before_write=_after(after))
                in_flight.append(future)
                previous = (future, names, held)
                while len(in_flight) > 1:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            pool.shutdown(wait=True)

    @staticmethod
    def _check_same_content(file: File | _KnownFile | FileSpec, spec: FileSpec) -> None:
        if file.size == spec.size and file.checksums == spec.checksums:
            return  # the usual case of a known file, without compare's work per algorithm
        if file.size != spec.size or not ck.compare(file.checksums, spec.checksums):
            raise Conflict(
                f"{spec.name!r} is already registered with other content "
                f"(size {file.size}, checksums {file.checksums}); names are immutable",
                name=spec.name,
            )

    @staticmethod
    def _plan_new_files(tables: Tables, specs: Sequence[FileSpec],
                        observed: Sequence[ObservationInfo | None], found: Found,
                        plan: _RegistrationPlan) -> None:
        """Decide the rows of the batch's new files, observations and sessions (in order: the
        first spec of a new name creates it, an obsid must exist or be created earlier)."""
        existing_obs = found.observations
        sessions = {  # id -> [start, stop, stored already, changed]
            id_: [start, stop, True, False] for id_, (start, stop) in found.sessions.items()}
        now = tables.time(utcnow())
        for spec, obs in zip(specs, observed):
            if spec.name in plan.known or spec.name in plan.new:
                continue
            plan.new[spec.name] = spec
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
                    plan.observations.append((obs.obsid, obs.start_time_jd, obs.stop_time_jd,
                                              obs.start_lst_hr, obs.session_id))
            elif obsid is not None and obsid not in existing_obs:
                # Raised by ``register`` in batch order, after the checks of earlier files.
                plan.invalid[spec.name] = f"{spec.name}: unknown obsid {obsid}"
                continue
            plan.files.append((
                spec.name, file_type(spec.name), spec.size, spec.is_directory,
                ck.checksums_json(spec.checksums),
                now if spec.create_time is None else tables.time(spec.create_time),
                obsid, spec.source, dumps(spec.meta) if spec.meta else "{}",
            ))
        plan.sessions = sessions

    @staticmethod
    def _write_registration(
        tables: Tables, plan: _RegistrationPlan, store_row: tuple[int, str] | None,
        added_paths: dict[str, tuple[str, int]],
        instance_events: Sequence[InstanceEvent | None] | None,
    ) -> None:
        """Write what ``register`` decided: one statement a table (``Tables.write``), the new
        files' instances and events given their ids (``Tables.new_file_ids``)."""
        now = tables.time(utcnow())
        ids = tables.new_file_ids(len(plan.files))
        files = [(id_, *row) for id_, row in zip(ids, plan.files)]
        # A new file with its first copy: one event row for its two events (``file_events``).
        first_copy: dict[int, str] = {}  # new file's id -> the JSON of its first copy's path
        instances = []
        instance_added: list[tuple[int, str, Any, str]] = []
        extra_events: list[tuple[int, str, Any, str]] = []
        store_text = ""
        if store_row is not None and added_paths:
            file_ids = {name: known.id for name, known in plan.known.items()}
            file_ids.update((row[1], row[0]) for row in files)
            store_id, store_name = store_row
            store_text = json_string(store_name)
            for path, (name, i) in added_paths.items():
                file_id = file_ids[name]
                instances.append((file_id, store_id, path, True, "disallowed", now,
                                  FixityState.UNCHECKED, None, ""))
                if name in plan.known or file_id in first_copy:
                    instance_added.append((
                        file_id, file_events.INSTANCE_ADDED, now,
                        f'{{"store": {store_text}, "path": {json_string(path)}}}'))
                else:
                    first_copy[file_id] = json_string(path)
                extra = None if instance_events is None else instance_events[i]
                if extra is not None:
                    payload = extra[1]
                    extra_events.append((file_id, extra[0], now, payload
                                         if payload.__class__ is str else dumps(payload)))
        events: list[tuple[int, str, Any, str]] = [
            (row[0], file_events.REGISTERED, now, f'{{"source": {json_string(row[8])}}}')
            if row[0] not in first_copy else
            (row[0], file_events.REGISTERED_WITH_COPY, now,
             file_events.registered_with_copy_payload(
                 json_string(row[8]), store_text, first_copy[row[0]]))
            for row in files
        ]
        events += instance_added + extra_events
        tables.write(
            # By id: two registrations at once upsert their common sessions in one order
            # (each waits for the other's row lock, never both for each other's).
            sessions=[(sid, v[0], v[1]) for sid, v in sorted(plan.sessions.items())
                      if not v[2] or v[3]],
            # By obsid, as sessions by id: two registrations at once insert their common new
            # observations in one order (never each waiting for the other's row).
            observations=sorted(plan.observations, key=_first), files=files, instances=instances,
            events=events)

    def known_instances(self, store: str, paths: Iterable[str]) -> dict[str, int]:
        """Of ``paths`` on ``store``, those already registered, with their file's size."""
        with self.db.read() as s:
            return dict(s.execute(
                select(Instance.path, File.size)
                .join(File, Instance.file_id == File.id)
                .join(Store, Instance.store_id == Store.id)
                .where(Store.name == store, one_of(self.db, Instance.path, paths))
            ).all())

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
            out["events"] = [shown for e in file.events for shown in events_json(e)]
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
        self.add_events([(name, type_, payload)])

    def add_events(self, events: Sequence[tuple[str | int, str, dict[str, Any]]], *,
                   within: DbSession | None = None) -> None:
        """Record events, each (file name or id, type, payload), in one transaction (or in the
        write session ``within``); NotFound (and nothing recorded) when a named file does not
        exist."""
        if not events:
            return
        if any(type_ == file_events.REGISTERED_WITH_COPY for _f, type_, _p in events):
            raise InvalidRequest(f"the event type {file_events.REGISTERED_WITH_COPY!r} is "
                                 "reserved: record 'file-registered' and 'instance-added'")
        with self._writing(within) as s:
            tables = Tables(s)
            names = {file for file, _t, _p in events if isinstance(file, str)}
            missing = sorted(names - tables.file_ids(names).keys())
            if missing:
                raise NotFound(f"no file named {missing[0]!r}")
            now = tables.time(utcnow())
            tables.write(events=[(file, type_, now, dumps(payload))
                                 for file, type_, payload in events])

    def add_instance(self, file_id: int, store_id: int, path: str, *,
                     deletion_policy: str = "disallowed", fixity: str = FixityState.UNCHECKED,
                     verified_at: dt.datetime | None = None, fixity_detail: str = "",
                     event: tuple[str, dict[str, Any]] | None = None,
                     within: DbSession | None = None) -> None:
        """Record an available instance of a file at ``path`` of a store (a copy made by an
        offload, a recall's buffer copy), with ``event`` (type, payload) when given, in one
        transaction (or in the write session ``within``)."""
        with self._writing(within) as s:
            tables = Tables(s)
            now = tables.time(utcnow())
            tables.write(
                instances=[(file_id, store_id, path, True, deletion_policy, now, fixity,
                            None if verified_at is None else tables.time(verified_at),
                            fixity_detail)],
                events=[] if event is None else [(file_id, event[0], now, dumps(event[1]))])

    def remove_instance(self, instance_id: int,
                        event: tuple[str, dict[str, Any]] | None = None, *,
                        within: DbSession | None = None) -> bool:
        """Forget an instance (its bytes are gone), with ``event`` (type, payload) for its file
        when given; False if it was not there."""
        with self._writing(within) as s:
            row = s.execute(select(Instance.file_id).where(Instance.id == instance_id)).first()
            if row is None:
                return False
            s.execute(delete(Instance).where(Instance.id == instance_id),
                      execution_options={"synchronize_session": False})
            if event is not None:
                self.add_events([(row.file_id, event[0], event[1])], within=s)
            return True

    #: Instance columns ``update_instances`` changes (the rest say where a copy is: immutable).
    INSTANCE_STATE = ("available", "deletion_policy", "fixity", "verified_at", "fixity_detail")

    def update_instances(self, changes: Sequence[tuple[int, dict[str, Any]]], *,
                         within: DbSession | None = None) -> None:
        """Change the state of instances (``INSTANCE_STATE``), each (instance id, {column:
        value}): one executemany UPDATE per set of columns changed, in one transaction (or
        in the write session ``within``). An instance gone meanwhile is left alone."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for instance_id, values in changes:
            unknown = set(values) - set(self.INSTANCE_STATE)
            if unknown:
                raise ValueError(f"not instance state: {sorted(unknown)}")
            groups.setdefault(tuple(sorted(values)), []).append(
                {"instance_id": instance_id, **values})
        with self._writing(within) as s:
            for columns, rows in groups.items():
                s.connection().execute(
                    update(Instance).where(Instance.id == bindparam("instance_id"))
                    .values({c: bindparam(c) for c in columns}), rows)

    @contextlib.contextmanager
    def _writing(self, within: DbSession | None) -> Iterator[DbSession]:
        """The write session ``within``, else a write transaction of its own."""
        if within is not None:
            yield within
            return
        with self.db.write() as s:
            yield s

    def record_remote(self, site: str, transfer: str, names: Sequence[str],
                      answer: str) -> None:
        """Record that ``site`` holds a verified copy of each of ``names`` (once per file and
        site), with a ``transfer-sent`` event; names the catalogue does not hold are left."""
        if not names:
            return
        with self.db.write() as s:
            tables = Tables(s)
            # By id: the rows go in without looking each file up by name again.
            new = tables.files_without_remote(site, names)
            now = tables.time(utcnow())
            payload = dumps({"to": site, "transfer": transfer, "answer": answer})
            tables.write(remote_instances=[(file_id, site, now, transfer) for file_id in new],
                         events=[(file_id, "transfer-sent", now, payload) for file_id in new])

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

        def read(connection: Connection) -> str:
            page = self._search_page(connection, kind, search, limit, cursor, count, sort,
                                     for_text=True)
            results = (files_with_instances_text(connection, page.rows, page.instances,
                                                 json_as_text=page.json_as_text)
                       if page.rows else [])
            return reply_text(kind, results, page.next_cursor, page.total, search)

        # Plain rows on a plain connection: no ORM session per search.
        return self.db.run_limited_plain(self.search_timeout_s, read)

    def _search_page(self, s: DbSession | Connection, kind: str, search: Any, limit: int,
                     cursor: str | None, count: bool, sort: str | None,
                     for_text: bool = False) -> search_language.SearchPage:
        return search_language.run_search(
            s, kind, search, limit=limit, cursor=cursor, count=count, sort=sort,
            plain=kind == "files", max_limit=self.max_search_limit,
            for_text=for_text,
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

