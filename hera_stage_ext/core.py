"""Core: the objects one server extension (or one CLI/worker process) works with, bundled.

The faces receive a ``Core`` and call into it; nothing here knows of tornado. Cross-cutting
checks that are not one module's business (who may call the Librarian RPC, what the server
reports about itself) live here.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from .catalogue.catalogue import Catalogue
from .catalogue.ingest import Ingester
from .errors import Forbidden, InvalidRequest, Unauthorized


@dataclass
class Core:
    version: str
    site_name: str
    catalogue: Catalogue
    ingester: Ingester
    allowed_roots: list[str]
    allow_ingest: bool = True
    librarian_authenticators: dict[str, str] = field(default_factory=dict)
    max_search_limit: int = 10_000
    max_rpc_results: int = 100_000

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "site_name": self.site_name,
            "database": self.catalogue.db.backend,
            "counts": self.catalogue.counts(),
            "allow_ingest": self.allow_ingest,
        }

    def check_ingest_allowed(self) -> None:
        if not self.allow_ingest:
            raise Forbidden("ingest is disabled on this server (c.StagingApp.allow_ingest)")

    def check_limit(self, limit: object) -> int:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidRequest("limit must be an integer")
        if not 1 <= limit <= self.max_search_limit:
            raise InvalidRequest(f"limit must be between 1 and {self.max_search_limit}")
        return limit

    def librarian_source(self, authenticator: object) -> str:
        """The source name an authenticator acts as; Unauthorized if it is not configured.

        Every configured authenticator is compared, in constant time, so the answer's timing
        says nothing about how much of a guess was right.
        """
        if not isinstance(authenticator, str) or not authenticator:
            raise Unauthorized("the request carries no authenticator")
        source = None
        given = authenticator.encode()
        for candidate, name in self.librarian_authenticators.items():
            if hmac.compare_digest(candidate.encode(), given):
                source = name
        if source is None:
            raise Unauthorized("unknown authenticator")
        return source

    def close(self) -> None:
        self.catalogue.db.dispose()
