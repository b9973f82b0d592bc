"""Per-user API tokens of a site service without a hub: issued by an admin command
(``hera-stage site-token issue USER``), printed once, stored as a SHA-256 hash with the user
they stand for and their scopes; checked on every request, revoked by id.

A token is 32 random bytes: a plain hash (no salt, no slow hash) is as strong as the token and
lets one indexed lookup find it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ..catalogue.db import Database, driver_mark, driver_rows, loads_json_column
from ..catalogue.serialize import iso
from ..errors import InvalidRequest, NotFound
from .models import SiteToken

#: The scopes a site token (or a hub token, as custom:hera-stage:<scope>) may carry.
SCOPES = ("read", "stage", "transfer", "ingest", "admin")
#: What a token carries when its issuer names no scope: what a user needs to stage.
DEFAULT_SCOPES = ("read", "stage")
TOKEN_PREFIX = "hst_"
#: ``lookup``'s statement in the driver's SQL ({m}: its placeholder): run on the driver's cursor,
#: it costs a fifth of a prebuilt Core statement's CPU (SQLAlchemy's cache key and result set-up
#: per execution), paid on every request.
_LOOKUP_SQL = ('SELECT "user", CAST(scopes AS TEXT) FROM site_token WHERE token_hash = {m}')


@dataclass(frozen=True)
class TokenUser:
    user: str
    scopes: frozenset[str]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    out = sorted(set(scopes))
    unknown = [s for s in out if s not in SCOPES]
    if unknown:
        raise InvalidRequest(f"unknown scope(s) {', '.join(unknown)}; one of {', '.join(SCOPES)}")
    return out


def issue(db: Database, user: str, scopes: Iterable[str] = DEFAULT_SCOPES,
          note: str = "") -> tuple[str, dict[str, Any]]:
    """A new token of ``user``: (the token, shown once; its record)."""
    if not user or len(user) > 256 or user != user.strip() or "\x00" in user:
        raise InvalidRequest("a token needs a user name (at most 256 characters)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.write() as s:
        row = SiteToken(user=user, scopes=check_scopes(scopes), token_hash=token_hash(token),
                        prefix=token[:10], note=note)
        s.add(row)
        s.flush()
        return token, _json(row)


def _json(row: SiteToken) -> dict[str, Any]:
    return {"id": row.id, "user": row.user, "scopes": list(row.scopes), "prefix": row.prefix,
            "note": row.note, "created_at": iso(row.created_at)}


def list_tokens(db: Database, user: str | None = None) -> list[dict[str, Any]]:
    query = select(SiteToken).order_by(SiteToken.id)
    if user is not None:
        query = query.where(SiteToken.user == user)
    with db.read() as s:
        return [_json(row) for row in s.scalars(query)]


def revoke(db: Database, token_id: int) -> None:
    with db.write() as s:
        token = s.get(SiteToken, token_id)
        if token is None:
            raise NotFound(f"no site token {token_id}")
        s.delete(token)


def lookup(db: Database, token: str) -> TokenUser | None:
    """Who ``token`` stands for, or None: read from the database on every request, never
    from a cache, so a revoke takes effect on the next request of every replica of the
    service (one indexed read on a bare connection: ``benchmarks/token_bench.py``)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    with db.read_connection() as connection:
        mark = driver_mark(connection)
        rows = driver_rows(connection, _LOOKUP_SQL.format(m=mark), (token_hash(token),))
    if not rows:
        return None
    user, scopes = rows[0]  # (the scopes as their JSON text, on both databases)
    return TokenUser(user, frozenset((loads_json_column(scopes) if scopes else None) or ()))
