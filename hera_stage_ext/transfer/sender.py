"""The sending side's records and views: ``record_remote`` (a peer holds a verified copy),
``remote_sites``, and ``list_peers`` (``GET peers``). Sending itself is a transfer job
(``jobs.py``), run by the job engine's worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..catalogue.db import Database
from ..catalogue.models import Event, File, utcnow
from ..errors import StagingError
from .models import RemoteInstance
from .rclone import RclonePeer, client_for

if TYPE_CHECKING:
    from ..core import Core


def record_remote(db: Database, site: str, transfer: str, names: Sequence[str],
                  answer: str) -> None:
    """Record that ``site`` holds a verified copy of each of ``names`` (once per file and site),
    with a ``transfer-sent`` event."""
    if not names:
        return
    with db.write() as s:
        ids = dict(s.execute(select(File.name, File.id).where(File.name.in_(list(names)))).all())
        known = set(s.scalars(select(RemoteInstance.file_id).where(
            RemoteInstance.site == site, RemoteInstance.file_id.in_(list(ids.values())))))
        now = utcnow()
        for file_id in ids.values():
            if file_id in known:
                continue
            s.add(RemoteInstance(file_id=file_id, site=site, time=now, transfer=transfer))
            s.add(Event(file_id=file_id, type="transfer-sent", time=now,
                        payload={"to": site, "transfer": transfer, "answer": answer}))


def remote_sites(core: Core, name: str) -> list[str]:
    """The sites known to hold a verified copy of ``name``."""
    with core.catalogue.db.read() as s:
        return list(s.scalars(select(RemoteInstance.site).join(
            File, RemoteInstance.file_id == File.id).where(File.name == name)
            .order_by(RemoteInstance.site)))


def list_peers(core: Core, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Configured peers with their reachability (an authenticated ping), and the sites this one
    accepts transfers from."""
    out = []
    registry = core.peers
    for name in sorted(set(registry.peers) | set(registry.secret_hashes)):
        row: dict[str, Any] = {"name": name, "url": None, "reachable": None, "site": None,
                               "error": "", "accepts_from": name in registry.secret_hashes}
        peer = registry.peers.get(name)
        if isinstance(peer, RclonePeer):
            row["type"], row["remote"] = "rclone", peer.remote
        if peer is not None:
            row["url"] = peer.url or None
            client = client_for(peer, core.site_name, timeout=timeout)
            try:
                row["site"] = client.ping().get("site")
                row["reachable"] = True
            except StagingError as exc:
                row["reachable"], row["error"] = False, exc.message
            finally:
                client.close()
        out.append(row)
    return out
