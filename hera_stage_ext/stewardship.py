"""Stewardship: what the faces (REST, CLI through REST, the Librarian RPC) call to keep the
archive: fixity findings and checks, repair, safe deletion, deletion policies, offload.

The work itself lives in ``catalogue/fixity.py`` (checks and the audit),
``catalogue/replicate.py`` (verified copies and repair) and ``catalogue/deletion.py`` (the
deletion rule and offload); this object bundles them with the server's settings and refuses
changes on servers whose users may not change the catalogue (``allow_ingest``).
"""

from __future__ import annotations

from typing import Any

from .catalogue import deletion, fixity, replicate
from .catalogue.catalogue import Catalogue
from .catalogue.deletion import DeletionRule, Offloader
from .errors import Forbidden, InvalidRequest
from .states import BAD_FIXITY_STATES


class Stewardship:
    def __init__(self, catalogue: Catalogue, rule: DeletionRule, *,
                 auditor: fixity.Auditor | None = None, allow_changes: bool = True,
                 max_matching: int = 100_000,
                 peers: replicate.PeerSource | None = None) -> None:
        self.catalogue, self.db, self.rule = catalogue, catalogue.db, rule
        self.auditor = auditor
        self.peers = peers  # where a file with no good copy here is pulled again from
        self.allow_changes = allow_changes
        self.max_matching = max_matching
        self.offloader = Offloader(self.db, rule)

    def _check_allowed(self) -> None:
        if not self.allow_changes:
            raise Forbidden("changing the archive is disabled on this server "
                            "(c.StagingApp.allow_ingest)")

    # ----- fixity -----------------------------------------------------------------------------
    def fsck(self, *, states: list[str] | None = None, store: str | None = None,
             limit: int = 1000) -> dict[str, Any]:
        """Copies whose last check found ``states`` (default: bad and missing), and a summary."""
        chosen = tuple(states) if states else BAD_FIXITY_STATES
        return fixity.findings(self.db, states=chosen, store=store, limit=limit)

    def check(self, name: str, store: str | None = None) -> dict[str, Any]:
        """Re-hash the copies of ``name`` now."""
        return {"name": name, "instances": [f.to_json() for f in
                                            fixity.verify_file(self.db, name, store)]}

    def audit_now(self) -> dict[str, Any]:
        """One round of the periodic audit, now (within its byte budget)."""
        if self.auditor is None:
            raise InvalidRequest("the fixity audit is off on this server "
                                 "(c.StagingApp.fixity_bytes_per_hour = 0)")
        return {"instances": [f.to_json() for f in self.auditor.tick()]}

    def repair(self, name: str, store: str | None = None) -> dict[str, Any]:
        self._check_allowed()
        return replicate.repair_file(self.db, name, store, peers=self.peers)

    # ----- deletion ---------------------------------------------------------------------------
    def set_policy(self, name: str, policy: str, *, store: str | None = None,
                   all_instances: bool = False) -> dict[str, Any]:
        self._check_allowed()
        return {"name": name, "instances": deletion.set_policy(
            self.db, name, policy, store=store, all_instances=all_instances)}

    def delete(self, name: str, *, store: str | None = None, dry_run: bool = False,
               context: str = "") -> dict[str, Any]:
        if not dry_run:
            self._check_allowed()
        return {"name": name, "dry_run": dry_run, **deletion.delete_instances(
            self.db, name, self.rule, store=store, dry_run=dry_run, context=context)}

    def delete_matching(self, search: Any, *, store: str | None = None, dry_run: bool = False,
                        context: str = "") -> dict[str, dict[str, Any]]:
        """``delete`` for every file ``search`` matches now, by name."""
        if not dry_run:
            self._check_allowed()
        names = self.catalogue.names_matching(search, self.max_matching)
        if len(names) > self.max_matching:
            raise InvalidRequest(f"the search matches more than {self.max_matching} files; "
                                 "narrow it")
        return {name: deletion.delete_instances(self.db, name, self.rule, store=store,
                                                dry_run=dry_run, context=context)
                for name in names}

    # ----- offload ----------------------------------------------------------------------------
    def offload(self, source: str, dest: str, *, wait: bool = False) -> dict[str, Any]:
        """Move the instances of ``source`` onto ``dest`` (in the background, v1's reply; with
        ``wait``, now, replying with what happened to each file)."""
        self._check_allowed()
        if wait:
            return deletion.offload(self.db, source, dest, self.rule)
        return self.offloader.launch(source, dest)
