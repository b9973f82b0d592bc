"""Which hera-stage scopes (``tokens.SCOPES``) an authenticated user of the site service holds:
a site token's own, or a hub user's custom scopes ``custom:hera-stage:<scope>``. Read by the
authorizer (``auth.py``) and by every handler that acts for a user (``api/base.py``)."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.identity import User

from .tokens import SCOPES

#: Hub RBAC custom scopes: this prefix, then one of ``tokens.SCOPES``.
HUB_SCOPE_PREFIX = "custom:hera-stage:"


class SiteUser(User):
    """A user authenticated by a site token, with the token's scopes."""

    def __init__(self, username: str, scopes: frozenset[str]) -> None:
        super().__init__(username=username)
        self.scopes = scopes


def user_scopes(user: Any) -> frozenset[str]:
    """The hera-stage scopes of an authenticated user (admin brings every other one)."""
    if isinstance(user, SiteUser):
        scopes = set(user.scopes)
    else:
        hub_user = getattr(user, "hub_user", None) or {}
        # Only unfiltered custom scopes: a filter ("!user=...") has no meaning here.
        scopes = {s[len(HUB_SCOPE_PREFIX):] for s in hub_user.get("scopes", ())
                  if isinstance(s, str) and s.startswith(HUB_SCOPE_PREFIX) and "!" not in s}
    scopes &= set(SCOPES)
    if "admin" in scopes:
        scopes |= set(SCOPES)
    return frozenset(scopes)
