"""The ``standing_order`` table: a user's saved search kept in sync with a peer.

On the catalogue's ``Base`` so the one alembic history (revision 0007) covers it. The order
itself is the search, the peer and the paused flag; the ``last_*`` columns are what its latest
evaluation found and launched, shown to the user (``GET standing-orders``). No foreign key to
``job``: forgetting a job must not be held up by (or delete) the order that launched it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..catalogue.models import Base, JSONType, utcnow


class StandingOrder(Base):
    __tablename__ = "standing_order"
    # Names are per user: users sharing one catalogue each see and name only their own orders.
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_standing_order_owner_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    name: Mapped[str] = mapped_column(String(128))
    peer: Mapped[str] = mapped_column(String(128))
    search: Mapped[Any] = mapped_column(JSONType)  # the JSON search, validated at creation
    query: Mapped[str] = mapped_column(Text, default="")  # the one-line text it came from, if any
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_evaluated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_launched_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_files: Mapped[int] = mapped_column(Integer, default=0)  # files the last launch sent
    last_message: Mapped[str] = mapped_column(Text, default="")  # what the last evaluation did
