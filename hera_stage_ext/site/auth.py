"""Who a request to the site service is, and what it may do.

Identity (a jupyter_server ``IdentityProvider``):

- ``HubIdentityProvider``: behind JupyterHub (the service is a hub-managed service; the hub
  sets ``JUPYTERHUB_API_TOKEN`` and friends in its environment): jupyterhub's own provider,
  ``HubOAuth`` underneath: ``Authorization: token <hub token>`` for programs (a user's server
  and worker send their ``$JUPYTERHUB_API_TOKEN``), the OAuth cookie and the hub's login
  redirect for browsers. The hub checks ``access:services!service=<name>``.
- ``SiteTokenIdentityProvider``: without a hub, the per-user tokens of ``tokens.py``, sent as
  ``Authorization: token <t>`` (never in the URL: it would be in every log).

Authorization (``SiteAuthorizer``): only the hera_stage resource, never a Jupyter one (kernels,
contents, terminals, sessions: the service account must never run or read anything for a
user); each hera_stage handler's method needs one scope (``required_scope``): read, stage,
transfer, ingest, or admin (which holds them all). Hub users carry them as the custom scopes
``custom:hera-stage:<scope>``; site tokens carry the bare names.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web

from ..api import (
    content,
    handlers,
    jobs,
    members,
    orders,
    peer,
    skao,
    staged,
    stewardship,
    upload,
    worker,
)
from ..api.base import AUTH_RESOURCE
from .scopes import SiteUser, user_scopes
from .tokens import lookup

#: Cancel, retry and forget: any scope that launches jobs (``Core`` then checks the job's kind).
CONTROL = "control"
LAUNCHING = frozenset({"stage", "transfer", "ingest"})


#: The scope each hera_stage handler's methods need.
SCOPE_TABLE: dict[type, dict[str, str]] = {
    handlers.StatusHandler: {"GET": "read"},
    handlers.StoresHandler: {"GET": "read"},
    handlers.SearchHandler: {"POST": "read"},
    handlers.FileHandler: {"GET": "read"},
    handlers.OpenAPIHandler: {"GET": "read"},
    handlers.IngestHandler: {"POST": "ingest"},
    content.FileContentHandler: {"GET": "read"},
    members.FileMembersHandler: {"GET": "read"},
    stewardship.FixityHandler: {"GET": "read"},
    jobs.StageHandler: {"POST": "stage"},
    skao.SkaoStageHandler: {"POST": "stage"},
    jobs.JobsHandler: {"GET": "read"},
    jobs.JobHandler: {"GET": "read", "DELETE": CONTROL},
    jobs.JobCancelHandler: {"POST": CONTROL},
    jobs.JobRetryHandler: {"POST": CONTROL},
    jobs.JobLogHandler: {"GET": "read"},
    jobs.TransfersHandler: {"POST": "transfer"},
    peer.PeersHandler: {"GET": "read"},
    upload.UploadHandler: {"POST": "ingest"},
    orders.StandingOrdersHandler: {"GET": "read", "POST": "transfer"},
    orders.StandingOrderHandler: {"GET": "read", "DELETE": "transfer"},
    orders.StandingOrderPauseHandler: {"POST": "transfer"},
    orders.StandingOrderResumeHandler: {"POST": "transfer"},
    staged.StagedHandler: {"GET": "stage"},
    staged.StagedCleanHandler: {"POST": "stage"},
    staged.StagedRecordsHandler: {"GET": "stage"},
    staged.StagedCleanedHandler: {"POST": "stage"},
    worker.WorkerClaimHandler: {"POST": "stage"},
    worker.WorkerJobHandler: {"GET": "stage", "POST": "stage"},
}


def required_scope(handler: web.RequestHandler) -> str:
    """The scope a request to ``handler`` needs; admin for anything not in the table."""
    for cls in type(handler).__mro__:
        if cls in SCOPE_TABLE:
            return SCOPE_TABLE[cls].get(handler.request.method or "", "admin")
    return "admin"


class SiteAuthorizer(Authorizer):
    """Only hera_stage, by scope; nothing of Jupyter's own (kernels, contents, terminals...)."""

    def is_authorized(self, handler: web.RequestHandler, user: User, action: str,
                      resource: str) -> bool:
        if resource != AUTH_RESOURCE:
            self.log.warning("site service: %s refused %s on %s (only %s is served)",
                             user.username, action, resource, AUTH_RESOURCE)
            return False
        have = user_scopes(user)
        needed = required_scope(handler)
        if needed == CONTROL:
            return bool(have & LAUNCHING)
        return needed in have


class SiteTokenIdentityProvider(IdentityProvider):
    """Users by their site tokens (``hera-stage site-token issue``); no login page, no cookie,
    no Jupyter token."""

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return False

    async def get_user(self, handler: web.RequestHandler) -> User | None:
        header = handler.request.headers.get("Authorization", "")
        match = self.auth_header_pat.match(header)
        if not match:
            return None
        core = handler.settings.get("hera_stage")
        if core is None:
            return None
        token = match.group(2).strip()
        # Looked up on every request (no cache): a revoked token is refused at once by every
        # replica of the service. In a thread, also on SQLite: a read there can still wait (for
        # a pooled connection, or on SQLITE_BUSY while another process recovers or cleans up
        # the WAL), and in the event loop that wait would stall every request.
        found = await asyncio.get_running_loop().run_in_executor(
            None, lookup, core.catalogue.db, token)
        if found is None:
            return None
        handler._token_authenticated = True  # type: ignore[attr-defined]  # no XSRF check
        return SiteUser(found.user, found.scopes)

    def get_handlers(self) -> list[tuple[str, object]]:
        return []

    def validate_security(self, app: Any, ssl_options: dict[str, Any] | None = None) -> None:
        """Every request needs a site token: nothing to warn about."""


def hub_identity_provider() -> type[IdentityProvider]:
    """jupyterhub's identity provider (imported only behind a hub: jupyterhub is needed)."""
    from jupyterhub.singleuser.extension import JupyterHubIdentityProvider

    return JupyterHubIdentityProvider
