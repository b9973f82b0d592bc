"""The ``site_token`` table: per-user API tokens of a site service without a hub, stored as
hashes (``tokens.py`` issues, checks and revokes them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..catalogue.models import Base, JSONType, utcnow


class SiteToken(Base):
    __tablename__ = "site_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(256), index=True)
    scopes: Mapped[Any] = mapped_column(JSONType)  # ["read", "stage", ...]
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    prefix: Mapped[str] = mapped_column(String(16))  # tells tokens apart in listings
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
