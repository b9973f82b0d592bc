"""Fixity: re-hashing the copies (instances) a site keeps, recording what was found, and the
periodic, throttled audit that does it on every online store.

Each instance carries ``fixity`` ("unchecked", "ok", "bad": its bytes no longer match the
file's checksums, "missing": gone or unreadable), ``verified_at`` and ``fixity_detail``. A copy
found bad or missing is made unavailable in the same write (``Instance.available``), and every
place that picks a copy to serve, stage or send already takes available instances only: that
column is the one rule, so a bad copy is never used again until a repair (``replicate.py``)
puts good bytes back and re-verifies them. Findings are events on the file (``fixity-bad``,
``fixity-missing``, ``fixity-restored``); a check that finds what was expected writes no event.

The ``Auditor`` runs in the server process that owns the database (a ``Ticker``, app.py): each
tick it re-hashes the instances checked longest ago (never-checked first) within a byte budget
that refills at ``bytes_per_hour``, and optionally does nothing while staging or transfer jobs
run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from ..errors import InvalidRequest, NotFound
from ..paths import is_within
from ..states import ACTIVE_JOB_STATES, BAD_FIXITY_STATES, FixityState
from . import checksums as ck
from .db import Database
from .catalogue import Catalogue
from .models import File, Instance, Store, utcnow

log = logging.getLogger("hera_stage_ext")



@dataclass
class Finding:
    """What re-hashing one instance found."""

    name: str
    store: str
    path: str
    state: FixityState  # never UNCHECKED
    detail: str
    size: int  # bytes read (the file's size when it was read whole)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "store": self.store, "path": self.path, "state": self.state,
                "detail": self.detail}


def instance_location(store_root: str, path: str) -> str:
    """The absolute path of an instance, refused (NotFound) when it resolves outside its store
    (a symlink planted in the store must not make the audit or a repair touch other files)."""
    full = os.path.join(store_root, path)
    if os.path.isabs(path) or not is_within(full, store_root):
        raise NotFound(f"instance path {path!r} leaves its store")
    return full


def check_copy(full_path: str, size: int,
               checksums: dict[str, str]) -> tuple[FixityState, str, int]:
    """Re-hash one copy: ``(state, detail, bytes read)``, state OK, BAD or MISSING."""
    algorithm = ck.preferred_algorithm(checksums)
    try:
        digest = ck.hash_path(full_path, (algorithm,))
    except FileNotFoundError:
        return FixityState.MISSING, "no file or directory at the instance's path", 0
    except OSError as exc:
        return FixityState.MISSING, f"unreadable: {exc.strerror or exc}", 0
    if digest.size != size:
        return FixityState.BAD, f"size {digest.size}, expected {size}", digest.size
    if digest.checksums[algorithm] != checksums[algorithm]:
        return (FixityState.BAD, f"{algorithm} {digest.checksums[algorithm]}, expected "
                f"{checksums[algorithm]}", digest.size)
    return FixityState.OK, f"{algorithm} matches", digest.size


def record(db: Database, instance_id: int, state: str, detail: str,
           when: dt.datetime | None = None, *, context: str = "audit") -> bool:
    """Store what a check of one instance found; returns whether the state changed.

    A bad or missing copy becomes unavailable; a copy that was bad and checks ok again (an
    operator put the bytes back, or a repair did) becomes available again. Changes are events.
    """
    with db.write() as s:
        return _record_in(db, s, instance_id, state, detail, when or utcnow(), context)


def _record_in(db: Database, s: Any, instance_id: int, state: str, detail: str, when: dt.datetime,
               context: str) -> bool:
    """``record`` inside a write transaction (the audit records a batch in one)."""
    catalogue = Catalogue(db)
    inst = s.get(Instance, instance_id)
    if inst is None:  # deleted meanwhile
        return False
    before = inst.fixity
    change: dict[str, Any] = {"fixity": state, "verified_at": when,
                              "fixity_detail": detail[:2000]}
    store = s.get(Store, inst.store_id)
    payload = {"store": store.name if store else "", "path": inst.path, "detail": detail,
               "context": context}
    events = []
    if state in BAD_FIXITY_STATES:
        change["available"] = False
        if before != state:
            events.append((inst.file_id, f"fixity-{state}", payload))
    elif before in BAD_FIXITY_STATES:
        change["available"] = True
        events.append((inst.file_id, "fixity-restored", payload))
    catalogue.update_instances([(instance_id, change)], within=s)
    catalogue.add_events(events, within=s)
    s.expire(inst)  # changed underneath the ORM: read again if used
    return before != state


def _record_batch(db: Database, batch: list[tuple[int, Finding]]) -> None:
    """Record the audit's findings of one batch in one transaction: findings that need no event
    (the usual case) in one executemany UPDATE, the others one by one."""
    when = utcnow()
    with db.write() as s:
        before = dict(s.execute(select(Instance.id, Instance.fixity)
                                .where(Instance.id.in_([i for i, _ in batch]))).all())
        def quiet(i: int, f: Finding) -> bool:  # no event, no change of availability
            return before.get(i) == f.state or (before.get(i) == FixityState.UNCHECKED
                                                and f.state == FixityState.OK)

        Catalogue(db).update_instances(
            [(i, {"verified_at": when, "fixity": f.state, "fixity_detail": f.detail[:2000]})
             for i, f in batch if quiet(i, f)], within=s)
        for instance_id, finding in batch:
            if instance_id in before and not quiet(instance_id, finding):
                _record_in(db, s, instance_id, finding.state, finding.detail, when, "audit")


_TARGET_COLUMNS = (Instance.id, File.name, Store.name, Store.path, Instance.path, File.size,
                   File.checksums)


def _check_target(row: Any) -> Finding:
    """Re-hash the instance of a ``_TARGET_COLUMNS`` row (no database access)."""
    _, name, store, root, path, size, sums = row
    try:
        full = instance_location(root, path)
        state, detail, read = check_copy(full, size, dict(sums or {}))
    except (NotFound, InvalidRequest) as exc:
        state, detail, read = FixityState.MISSING, exc.message, 0
    if state in BAD_FIXITY_STATES:
        log.warning("fixity: %s on %s:%s is %s (%s)", name, store, path, state, detail)
    return Finding(name, store, path, state, detail, read)


def verify_instance(db: Database, instance_id: int, *, context: str = "audit") -> Finding:
    """Re-hash one instance now and record the finding."""
    with db.read() as s:
        row = s.execute(select(*_TARGET_COLUMNS)
                        .join(File, Instance.file_id == File.id)
                        .join(Store, Instance.store_id == Store.id)
                        .where(Instance.id == instance_id)).first()
    if row is None:
        raise NotFound(f"no instance {instance_id}")
    finding = _check_target(row)
    record(db, instance_id, finding.state, finding.detail, context=context)
    return finding


def verify_file(db: Database, name: str, store: str | None = None) -> list[Finding]:
    """Re-hash every instance of ``name`` on online stores (or those on ``store``) now."""
    with db.read() as s:
        if s.scalar(select(File.id).where(File.name == name)) is None:
            raise NotFound(f"no file named {name!r}")
        query = (select(Instance.id).join(File, Instance.file_id == File.id)
                 .join(Store, Instance.store_id == Store.id)
                 .where(File.name == name, Store.kind == "online").order_by(Instance.id))
        if store is not None:
            query = query.where(Store.name == store)
        ids = list(s.scalars(query))
    return [verify_instance(db, i, context="check") for i in ids]


def findings(db: Database, *, states: tuple[str, ...] = BAD_FIXITY_STATES,
             store: str | None = None, limit: int = 1000) -> dict[str, Any]:
    """Instances whose last check found one of ``states``, with a summary of every state."""
    for state in states:
        if state not in tuple(FixityState):
            raise InvalidRequest(f"unknown fixity state {state!r}; one of "
                                 f"{', '.join(FixityState)}")
    with db.read() as s:
        query = (select(File.name, Store.name, Instance.path, Instance.fixity,
                        Instance.verified_at, Instance.fixity_detail)
                 .join(File, Instance.file_id == File.id)
                 .join(Store, Instance.store_id == Store.id)
                 .where(Instance.fixity.in_(states))
                 .order_by(Store.name, Instance.path).limit(limit))
        summary_q = select(Instance.fixity, func.count()).group_by(Instance.fixity)
        oldest_q = select(func.min(Instance.verified_at))
        if store is not None:
            if s.scalar(select(Store.id).where(Store.name == store)) is None:
                raise NotFound(f"no store named {store!r}")
            query = query.where(Store.name == store)
            summary_q = summary_q.join(Store, Instance.store_id == Store.id).where(
                Store.name == store)
            oldest_q = oldest_q.join(Store, Instance.store_id == Store.id).where(
                Store.name == store)
        rows = [{"name": n, "store": st, "path": p, "state": f,
                 "verified_at": None if v is None else v.isoformat() + "Z", "detail": d}
                for n, st, p, f, v, d in s.execute(query)]
        summary = {state.value: 0 for state in FixityState}
        summary.update(dict(s.execute(summary_q).all()))
        oldest = s.scalar(oldest_q)
    return {"instances": rows, "summary": summary,
            "oldest_check": None if oldest is None else oldest.isoformat() + "Z"}


class Auditor:
    """The periodic audit: ``tick()`` re-hashes the instances checked longest ago within the
    byte budget that has accrued since the last tick (at ``bytes_per_hour``; up to one hour's
    worth is saved up while idle). A copy larger than the budget is read when the budget is
    positive, and the debt is paid off by the following ticks, so the average holds."""

    def __init__(self, db: Database, bytes_per_hour: float, *, pause_while_jobs: bool = False,
                 batch: int = 100) -> None:
        if bytes_per_hour <= 0:
            raise ValueError("the audit's bytes_per_hour must be positive")
        self.db, self.rate = db, bytes_per_hour / 3600.0
        self.pause_while_jobs, self.batch = pause_while_jobs, batch
        self.capacity = float(bytes_per_hour)
        self.budget = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.instances_checked = 0

    def _jobs_running(self) -> bool:
        from ..jobs.models import JobRow

        with self.db.read() as s:
            running = select(JobRow.id).where(JobRow.state.in_(ACTIVE_JOB_STATES)).limit(1)
            return s.scalar(running) is not None

    def _due(self, s: Any, skip: set[int]) -> list[Any]:
        query = (select(*_TARGET_COLUMNS)
                 .join(File, Instance.file_id == File.id)
                 .join(Store, Instance.store_id == Store.id)
                 .where(Instance.available, Store.available, Store.kind == "online")
                 .order_by(Instance.verified_at.asc().nulls_first(), Instance.id)
                 .limit(self.batch))
        return [row for row in s.execute(query) if row[0] not in skip]

    def tick(self) -> list[Finding]:
        """One round of the audit; returns what it found (ok copies included). The findings
        of each batch are recorded in one transaction."""
        with self._lock:
            now = time.monotonic()
            self.budget = min(self.capacity, self.budget + (now - self._last) * self.rate)
            self._last = now
            if self.budget <= 0 or (self.pause_while_jobs and self._jobs_running()):
                return []
            found: list[Finding] = []
            checked: set[int] = set()
            while self.budget > 0:
                with self.db.read() as s:
                    due = self._due(s, checked)
                if not due:
                    break
                batch: list[tuple[int, Finding]] = []
                for row in due:
                    if self.budget <= 0:
                        break
                    checked.add(row[0])
                    finding = _check_target(row)
                    batch.append((row[0], finding))
                    self.budget -= max(finding.size, 1)
                    self.bytes_read += finding.size
                    self.instances_checked += 1
                _record_batch(self.db, batch)
                found += [finding for _, finding in batch]
            return found
