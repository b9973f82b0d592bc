"""Repair from a peer: a copy found bad with no good copy at this site is pulled again from a
peer that holds the file, through the receiving side of the transfer protocol
(``Receiver.pull_verified``: the same pull, resume and verification as every transfer), then
put in place and re-verified by ``catalogue/replicate.py``.

The peers tried are the configured ones (``c.StagingApp.peers``, with a URL this site pulls
from), those known to hold the file first: sites that confirmed a copy (``remote_instance``,
written when a transfer to them commits) and sites that sent it here (a committed
``transfer_item``); then the others, which answer 404 when they do not have it.
"""

from __future__ import annotations

from sqlalchemy import select

from ..catalogue.db import Database
from ..catalogue.models import File
from ..states import TransferItemState
from .models import RemoteInstance, TransferItem
from .peers import PeerRegistry
from .receiver import Receiver


class PeerRepairSource:
    """``replicate.PeerSource`` over this site's peers and receiver."""

    def __init__(self, db: Database, registry: PeerRegistry, receiver: Receiver) -> None:
        self.db, self.registry, self.receiver = db, registry, receiver

    def holders(self, name: str) -> list[str]:
        with self.db.read() as s:
            confirmed = set(s.scalars(select(RemoteInstance.site).join(
                File, RemoteInstance.file_id == File.id).where(File.name == name)))
            senders = set(s.scalars(select(TransferItem.peer).where(
                TransferItem.name == name, TransferItem.state == TransferItemState.COMMITTED)))
        configured = sorted(self.registry.peers)
        known = [p for p in configured if p in confirmed | senders]
        return known + [p for p in configured if p not in known]

    def pull(self, peer: str, name: str, size: int, checksums: dict[str, str],
             is_directory: bool, work: str) -> str:
        return self.receiver.pull_verified(peer, name, size, checksums, is_directory, work)
