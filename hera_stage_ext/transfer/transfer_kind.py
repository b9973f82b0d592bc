"""Transfer jobs: ``create_transfer_job`` and the ``transfer`` kind the job engine runs.

A transfer job is a job like a staging one (same tables, progress, log, cancel, retry, resume);
its ``destination`` is ``peer:<name>``, its items the instances chosen at launch, each item's
``dest_path`` the instance's path in its store (the layout the receiving store keeps).

A stream of the worker (``peer_sender.PeerSender``) waits for the peer's allowed hours and for
room under its ``max_in_flight``, claims a batch of items, announces it
(``protocol.PeerClient.announce``, the offers read in one query by ``outgoing.offers_for``),
reports at once the files the peer already holds (``have``: item ``skipped``, or ``done`` when
an earlier attempt of this job sent it) and those it refuses (``failed`` with the peer's
reason), then asks the peer's ``status`` (a long poll, answered as soon as one more file is
through) until each file it accepted is ``committed`` (remote instance and ``transfer-sent``
event recorded, item ``done``) or ``failed``. Results go through the run's ``report`` and
``commit`` like staged files. While the peer is unreachable the stream waits with exponential
backoff (capped by the peer's ``retry_max_s``), saying so in the job's log; the job stays
running. A worker that dies leaves its items to the next one, which announces them again: the
peer answers ``have`` for what it committed meanwhile and keeps pulling the rest, so nothing
moves twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..catalogue.db import Database
from ..errors import NotFound, PeerRejected, StagingError, Unavailable
from ..jobs.engine import create_job
from ..jobs.items import claim_items
from ..jobs.cold_kind import ColdFileKind
from ..jobs.plan import unique_names, resolve_names
from ..jobs import recall
from ..states import ItemState
from .kind_db import catalogue_db
from .peer_config import registry_from_env
from .peers import PeerRegistry
from .rclone import RclonePeer, client_for
from .peer_sender import PeerSender, peer_destination
from .rclone_send import RcloneSender

if TYPE_CHECKING:
    from ..jobs.contract import KindRun


def create_transfer_job(
    db: Database, owner: str, names_or_rows: Iterable[str | Mapping[str, Any]],
    registry: PeerRegistry, peer_name: str, *, search: Any = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Launch a job sending ``names`` to ``peer_name``; returns it (``missing``: names with no
    available instance on an online store here).

    Before anything is written: NotFound for an unknown peer or when no file has an instance;
    PeerRejected when the peer answers our ping with a refusal (a wrong secret). A peer that
    cannot be reached now is no reason to refuse: the job waits for it."""
    peer = registry.peer(peer_name)
    items, missing, total = resolve_names(db, unique_names(names_or_rows))
    if not items:
        raise NotFound(f"none of the {len(missing)} file(s) has an available instance on an "
                       f"online store", missing=missing)
    client = client_for(peer, registry.site_name, timeout=10)
    reachable = ""
    try:
        client.ping()
    except Unavailable as exc:
        reachable = f"; the peer cannot be reached now ({exc.message}): the job waits for it"
    except StagingError as exc:
        raise PeerRejected(f"{exc.message} (check c.StagingApp.peers[{peer_name!r}] here and "
                           f"the peer's peer_secrets)") from None
    finally:
        client.close()
    return create_job(
        db, owner, "transfer", peer_destination(peer_name), "transfer", items, missing, total,
        search=search, options={"peer": peer_name}, log_dir=log_dir,
        summary=f"send {len(items)} file(s), {total} bytes to peer {peer_name!r}{reachable}")


class TransferKind(ColdFileKind):
    name = "transfer"

    def __init__(self) -> None:
        self._env_registry: PeerRegistry | None = None

    def registry(self, run: KindRun) -> PeerRegistry:
        """The peers: the worker's configuration if it was given one (in-process runs), else
        what the server passed in the environment."""
        if run.config.peers is not None:
            return run.config.peers
        if self._env_registry is None:
            self._env_registry = registry_from_env()
        return self._env_registry

    def stream(self, run: KindRun) -> None:
        peer_name = run.job.options["peer"]
        registry = self.registry(run)
        try:
            peer = registry.peer(peer_name)
        except NotFound as exc:
            return _fail_all(run, f"{exc.message}; this worker has no configuration for it "
                             "(was it started by the server?)")
        if isinstance(peer, RclonePeer):  # sites without hera_stage_ext: rclone_send.py
            sender: PeerSender = RcloneSender(run, registry, peer)
        else:
            sender = PeerSender(run, registry, peer)
        try:
            recall.with_recall(run, sender.loop)
        finally:
            sender.close()



TRANSFER = TransferKind()


def _fail_all(run: KindRun, message: str) -> None:
    db = catalogue_db(run)
    while batch := claim_items(db, run.job.id, run.config.claim_batch):
        for item in batch:
            run.log.note(f"FAILED {item.name}: {message}")
            run.report(item, ItemState.FAILED, message)
        run.commit(wait=True)
