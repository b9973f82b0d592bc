"""The catalogue's tables: files, their instances on stores, observations, sessions and events.

This module owns the schema only. Alembic migrations (``migrations/``) create it in a database;
``Base.metadata`` is what they are checked against.

Names follow the HERA Librarian's data model: a *file* is an immutable, uniquely named item (a
flat file or a directory such as a MIRIAD data set); an *instance* is one copy of it on a *store*
at a path relative to the store's root; an *observation* groups the files of one obsid and belongs
to an observing *session*; an *event* records something that happened to a file.

A file or store row is never deleted (a trigger refuses it: migration 0013), so the ids instances
and events hold stay valid without a foreign key checked a row; ``tables.Tables.write`` writes
them only with ids that exist. The relationships below say their joins explicitly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..states import FixityState

#: Longest file name the catalogue accepts, in characters.
MAX_NAME_LENGTH = 256

# File names sort and compare byte-wise on every engine (SQLite's BINARY collation, PostgreSQL's
# "C"), so that a `name-matches` prefix can be answered from the name index as a range and cursor
# pagination orders rows the same way on both databases.
NameType = String(MAX_NAME_LENGTH).with_variant(
    String(MAX_NAME_LENGTH, collation="C"), "postgresql"
)
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    """The current time as a naive UTC datetime, the form every timestamp column stores."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Store(Base):
    """A place where instances live: a folder on an online disk, or a cold (tape-like) store."""

    __tablename__ = "store"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(String(4096))
    kind: Mapped[str] = mapped_column(String(16), default="online")  # "online" | "cold"
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    ssh_host: Mapped[str] = mapped_column(String(256), default="")
    # Settings beyond the columns (a cold store's buffer, buffer_bytes, volume_key: cold.py).
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    instances: Mapped[list[Instance]] = relationship(
        back_populates="store", primaryjoin="Store.id == foreign(Instance.store_id)")


class Session(Base):
    """An observing session (a night), grouping observations."""

    __tablename__ = "session"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    start_time_jd: Mapped[float] = mapped_column(Float)
    stop_time_jd: Mapped[float] = mapped_column(Float)

    observations: Mapped[list[Observation]] = relationship(back_populates="session")


class Observation(Base):
    """One observation, identified by its obsid (GPS seconds of its start, as in HERA)."""

    __tablename__ = "observation"

    obsid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    start_time_jd: Mapped[float] = mapped_column(Float)
    stop_time_jd: Mapped[float] = mapped_column(Float)
    start_lst_hr: Mapped[float] = mapped_column(Float)
    session_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("session.id"), nullable=True, index=True
    )

    session: Mapped[Session | None] = relationship(back_populates="observations")
    files: Mapped[list[File]] = relationship(back_populates="observation")


class File(Base):
    """An immutable, uniquely named file (or directory) known to the catalogue."""

    __tablename__ = "file"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NameType, unique=True)
    type: Mapped[str] = mapped_column(String(64), default="", index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    is_directory: Mapped[bool] = mapped_column(Boolean, default=False)
    # Algorithm name -> lowercase hex digest, e.g. {"md5": ..., "xxh3-128": ...}.
    checksums: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    obsid: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("observation.obsid"), nullable=True, index=True
    )
    source: Mapped[str] = mapped_column(String(256), default="", index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)

    observation: Mapped[Observation | None] = relationship(back_populates="files")
    instances: Mapped[list[Instance]] = relationship(
        back_populates="file", order_by="Instance.id",
        primaryjoin="File.id == foreign(Instance.file_id)")
    events: Mapped[list[Event]] = relationship(
        back_populates="file", order_by="Event.id",
        primaryjoin="File.id == foreign(Event.file_id)")


class Instance(Base):
    """One copy of a file on a store, at a path relative to the store's root."""

    __tablename__ = "instance"
    __table_args__ = (
        UniqueConstraint("store_id", "path", name="uq_instance_store_path"),
        # The audit's "oldest check first" per store.
        Index("ix_instance_store_verified", "store_id", "verified_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The file's and the store's ids: no foreign keys (migration 0013; see the module's doc).
    file_id: Mapped[int] = mapped_column(Integer, index=True)
    # No index of its own: the two above begin with it (migration 0011).
    store_id: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(4096))
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    deletion_policy: Mapped[str] = mapped_column(String(16), default="disallowed")
    create_time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Fixity (catalogue/fixity.py): what the last re-hash of this copy found ("unchecked",
    # "ok", "bad": bytes differ, "missing": gone or unreadable), when, and its details. A copy
    # found bad or missing is also made unavailable, so nothing serves, stages or sends it.
    fixity: Mapped[str] = mapped_column(String(16), default=FixityState.UNCHECKED)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    fixity_detail: Mapped[str] = mapped_column(Text, default="")

    file: Mapped[File] = relationship(
        back_populates="instances", primaryjoin="File.id == foreign(Instance.file_id)")
    store: Mapped[Store] = relationship(
        back_populates="instances", primaryjoin="Store.id == foreign(Instance.store_id)")


class Event(Base):
    """Something that happened to a file (registered, instance added, staged, sent...)."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_type_file", "type", "file_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(Integer, index=True)  # no foreign key: migration 0013
    type: Mapped[str] = mapped_column(String(64))
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    file: Mapped[File] = relationship(
        back_populates="events", primaryjoin="File.id == foreign(Event.file_id)")
