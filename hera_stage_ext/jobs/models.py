"""The job tables: ``job`` (one request: what, where, how, progress, lease) and ``job_item``
(one file or directory to move, with the instance chosen at launch and its expected checksums).

They live on the catalogue's ``Base`` so one alembic history covers both. The database is the
truth of a job; marker files, logs and events are views written from it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (BigInteger, Boolean, ColumnElement, DateTime, ForeignKey, Index, Integer,
                        String, Text, literal, text)
from sqlalchemy.orm import Mapped, mapped_column

from ..catalogue.models import Base, JSONType, NameType, utcnow
from ..states import ItemState, JobState, RecallState


class JobRow(Base):
    """One job. Counters: ``files_done``/``bytes_done`` count items present and verified at the
    destination (copied *or* skipped as identical); ``files_skipped`` and ``files_failed`` are
    the subsets that were skipped or failed. Progress is (done + failed) / total.
    ``bytes_moving``: bytes the running worker has written (or a peer has received) and not
    yet committed, as its last heartbeat said; never part of ``bytes_done``."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_state_lease", "state", "lease_expires"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="stage")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)  # a JobState
    destination: Mapped[str] = mapped_column(String(4096), index=True)  # resolved, absolute
    method: Mapped[str] = mapped_column(String(16), default="copy")
    search: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # Per-job settings decided at launch (read_only, ...), so a worker needs no server config.
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    files_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    files_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    files_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_moving: Mapped[int] = mapped_column(BigInteger, default=0)
    files_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    # Names asked for that had no available instance on an online store at launch.
    missing: Mapped[list[str]] = mapped_column(JSONType, default=list)
    error: Mapped[str] = mapped_column(Text, default="")
    log_path: Mapped[str] = mapped_column(String(4096), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The worker running the job ("host:pid:random") and until when its claim holds; a job
    # whose lease expired (or whose local worker pid is gone) is taken over by another worker.
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


def _items_in(state: ItemState, name: str, *columns: str) -> Index:
    """An index of the job's items in ``state`` only (a partial index, on both databases)."""
    where = text(f"state = '{state}'")
    return Index(name, *columns, sqlite_where=where, postgresql_where=where)


#: ``job_item``'s indexes. Every item row is written twice as it goes through (claimed:
#: queued -> running; recorded: running -> done, skipped or failed), so no index holds the
#: state of every row: a claim takes the row out of the queued items' index, and recording it
#: done or skipped touches no index at all (on SQLite 3.3 against 5.7 us an item for a claim
#: and its record, benchmarks/README.md, session 11). Readers of the other states
#: (``running``, ``done``, ``skipped``: a job's release, its counts and results) read the
#: job's rows through ``ix_job_item_job``; ``waiting`` and ``failed`` items are few and asked
#: for across jobs (metrics, recalls), so they keep their own.
JOB_ITEM_INDEXES = (
    Index("ix_job_item_job", "job_id"),
    _items_in(ItemState.QUEUED, "ix_job_item_queued", "job_id", "id"),
    _items_in(ItemState.WAITING, "ix_job_item_waiting", "job_id"),
    _items_in(ItemState.FAILED, "ix_job_item_failed", "job_id"),
)


class JobItem(Base):
    """One thing to move: a file (or a directory data set) from one chosen instance."""

    __tablename__ = "job_item"
    __table_args__ = JOB_ITEM_INDEXES

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(NameType)
    store: Mapped[str] = mapped_column(String(128))
    source_path: Mapped[str] = mapped_column(String(4096))  # absolute path of the instance
    dest_path: Mapped[str] = mapped_column(String(4096))  # relative to the job's destination
    size: Mapped[int] = mapped_column(BigInteger)
    is_directory: Mapped[bool] = mapped_column(Boolean, default=False)
    checksums: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=ItemState.QUEUED)  # an ItemState
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    # No longer written (migration 0012's release): the job's ``worker_id`` names the one worker
    # holding all its running items, and writing it into each claimed row and clearing it at its
    # record cost 0.7 us an item on SQLite. Kept while a site's replicas of the version before
    # may still write it during an upgrade; a row running at the upgrade keeps its stale value
    # (nothing reads the column).
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


def item_state_is(state: ItemState) -> ColumnElement[bool]:
    """``JobItem.state == state`` with the state written into the SQL, not bound: a statement
    PostgreSQL's driver prepares gets a generic plan, which cannot use a partial index."""
    return JobItem.state == literal(str(state), literal_execute=True)


#: The two tables as Core ``Table`` objects (to a type checker ``__table__`` is only a
#: ``FromClause``), for Core statements where the ORM's cost per row counts.
JOB_TABLE = Base.metadata.tables[JobRow.__tablename__]
JOB_ITEM_TABLE = Base.metadata.tables[JobItem.__tablename__]


class AuditEntry(Base):
    """One staging request as it arrived, accepted or refused: who, what, where, the outcome
    and the reason (kept when the job itself is forgotten)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    via: Mapped[str] = mapped_column(String(16))  # "rest" | "librarian" | "skao"
    user: Mapped[str] = mapped_column(String(256), index=True)
    action: Mapped[str] = mapped_column(String(16))  # "stage" | "dry-run"
    destination: Mapped[str] = mapped_column(String(4096))  # as asked for
    method: Mapped[str] = mapped_column(String(32))
    request: Mapped[Any] = mapped_column(JSONType, nullable=True)  # the search or the names
    outcome: Mapped[str] = mapped_column(String(16))  # "accepted" | "refused"
    reason: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RecallCopy(Base):
    """One file recalled from a cold store into its buffer store for a job (``jobs/recall.py``):
    reserved (``recalling``) before the copy starts, ``recalled`` once verified and registered
    as an instance on the buffer, ``reaping`` once no unfinished job needs it (its instance
    removed), ``reaped`` once the buffer copy is gone. Kept when the job is forgotten (no foreign key)."""

    __tablename__ = "recall_copy"
    __table_args__ = (Index("ix_recall_copy_buffer_state", "buffer", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(NameType)
    cold_store: Mapped[str] = mapped_column(String(128))
    volume: Mapped[str] = mapped_column(String(256))
    buffer: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(4096))  # relative to both stores' roots
    size: Mapped[int] = mapped_column(BigInteger)
    # A RecallState: the bytes of the ``HELD_RECALL_STATES`` count against the buffer's cap;
    # ``reaped`` and ``failed`` ones are the history.
    state: Mapped[str] = mapped_column(String(16), default=RecallState.RECALLING)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    recalled_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    reaped_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
