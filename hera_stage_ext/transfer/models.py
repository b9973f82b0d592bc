"""Transfer tables: ``transfer_item`` (receiving side) and ``remote_instance`` (sending side).

They live on the catalogue's ``Base`` so one alembic history (revision 0005) covers them.

``transfer_item`` is the receiver's truth of a transfer: one row per (peer, name), written when
a batch is announced, updated as the bytes are pulled and verified, ``committed`` only after the
file is in the store and registered. A restart resumes every row that is ``queued`` or
``receiving`` from the bytes already in its partial file. ``holder`` and ``lease_expires`` are
the lease of the receiver pulling it (replicas of a site share the table: one pulls an item at
a time; ``receiver.py``).

``remote_instance`` is the sender's record that a peer holds a verified copy of a file (it
answered ``have``, or reported ``committed``): file, site, when, which transfer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..catalogue.models import Base, JSONType, NameType, utcnow
from ..states import TransferItemState


class TransferItem(Base):
    __tablename__ = "transfer_item"
    __table_args__ = (UniqueConstraint("peer", "name", name="uq_transfer_item_peer_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transfer: Mapped[str] = mapped_column(String(64), index=True)  # the announcing batch's id
    peer: Mapped[str] = mapped_column(String(128))  # the sending site
    name: Mapped[str] = mapped_column(NameType)
    path: Mapped[str] = mapped_column(String(4096))  # relative to the receiving store's root
    size: Mapped[int] = mapped_column(BigInteger)
    checksums: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    # The file's metadata as announced (FileSpec fields, observation), for registration.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # A ``states.TransferItemState``; ``queued``/``receiving`` are resumed on restart.
    state: Mapped[str] = mapped_column(String(16), default=TransferItemState.QUEUED,
                                       index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Bytes already in the partial file when the last attempt started (> 0: a resume).
    resumed_from: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    # The receiver (server process, ``jobs.engine.new_worker_id``) whose queue or pull holds it,
    # and until when (the database's clock), as a job's worker and lease: taken by a
    # conditional update, so one replica of a site pulls it at a time; another takes it over
    # once the lease runs out.
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RemoteInstance(Base):
    __tablename__ = "remote_instance"
    __table_args__ = (UniqueConstraint("file_id", "site", name="uq_remote_instance_file_site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("file.id"), index=True)
    site: Mapped[str] = mapped_column(String(128), index=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    transfer: Mapped[str] = mapped_column(String(64), default="")
