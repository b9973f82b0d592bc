"""The sending side's records and views: ``record_remote`` (a peer holds a verified copy),
``remote_sites``, ``list_peers`` (``GET peers``), and the bulk lookups of a batch
(``offers_for``: the announce of many files; ``batch_paths``: the files a peer's
``POST files/batch`` pulls). Sending itself is a transfer job (``jobs.py``), run by the job
engine's worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..catalogue.catalogue import Catalogue
from ..catalogue.db import Database
from ..catalogue.inlist import one_of
from ..catalogue.models import File, Instance, Observation, Store
from ..catalogue.serialize import iso
from ..errors import InvalidRequest, StagingError
from ..paths import confine
from .models import RemoteInstance
from .protocol import BATCH_MAX_FILES, offer_from_detail
from .rclone import RclonePeer, client_for

if TYPE_CHECKING:
    from ..core import Core


def record_remote(db: Database, site: str, transfer: str, names: Sequence[str],
                  answer: str) -> None:
    """Record that ``site`` holds a verified copy of each of ``names`` (once per file and site),
    with a ``transfer-sent`` event."""
    Catalogue(db).record_remote(site, transfer, names, answer)


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


def offers_for(db: Database, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The announce offers of the files ``paths`` names (name -> path in the store), fetched in
    one query of columns (``Catalogue.file_detail`` per file costs queries and objects each);
    names no longer known are left out."""
    out: dict[str, dict[str, Any]] = {}
    names = list(paths)
    columns = (File.name, File.type, File.size, File.is_directory, File.checksums,
               File.create_time, File.obsid, File.source, File.meta,
               Observation.obsid.label("observation"), Observation.start_time_jd,
               Observation.stop_time_jd, Observation.start_lst_hr, Observation.session_id)
    with db.read() as s:
        for row in s.execute(select(*columns).outerjoin(
                Observation, Observation.obsid == File.obsid)
                .where(one_of(db, File.name, names))):
            detail = {
                "name": row.name, "size": row.size, "checksums": dict(row.checksums),
                "is_directory": row.is_directory, "obsid": row.obsid,
                "create_time": iso(row.create_time), "source": row.source,
                "metadata": row.meta,
                "observation": None if row.observation is None else {
                    "obsid": row.observation, "start_time_jd": row.start_time_jd,
                    "stop_time_jd": row.stop_time_jd, "start_lst_hr": row.start_lst_hr,
                    "session_id": row.session_id}}
            out[row.name] = offer_from_detail(detail, paths[row.name])
    return out


def batch_paths(core: Core, names: Any) -> list[tuple[str, Path | str]]:
    """What a peer's ``POST files/batch`` gets, in the order asked: per name the path of an
    available flat instance on an available online store (confined to the store's root), or
    why it cannot be served. One query for the whole batch."""
    if not isinstance(names, list) or not 0 < len(names) <= BATCH_MAX_FILES \
            or not all(isinstance(n, str) for n in names):
        raise InvalidRequest(f"'names' must be a list of 1 to {BATCH_MAX_FILES} names")
    found: dict[str, tuple[str, str, bool]] = {}
    with core.catalogue.db.read() as s:
        rows = s.execute(
            select(File.name, File.is_directory, Instance.path, Store.path)
            .join(Instance, Instance.file_id == File.id)
            .join(Store, Instance.store_id == Store.id)
            .where(one_of(core.catalogue.db, File.name, names), Instance.available,
                   Store.available, Store.kind == "online")
            .order_by(Store.name, Instance.id))
        for name, is_directory, path, root in rows:
            found.setdefault(name, (path, root, is_directory))
    out: list[tuple[str, Path | str]] = []
    folders: dict[tuple[str, str], Path | str] = {}  # confined once per folder
    for name in names:
        if name not in found:
            out.append((name, f"{name!r} has no available instance on an online store here"))
            continue
        path, root, is_directory = found[name]
        if is_directory:
            out.append((name, f"{name!r} is a directory data set: pull it alone"))
            continue
        folder, _, base = path.rpartition("/")
        if (root, folder) not in folders:
            try:
                folders[(root, folder)] = confine(folder or ".", [root], what="instance path")
            except StagingError as exc:
                folders[(root, folder)] = exc.message
        where = folders[(root, folder)]
        if isinstance(where, str):
            out.append((name, where))
            continue
        full = where / base
        if base in ("", ".", "..") or os.path.islink(full):
            # A link may lead anywhere: resolved and confined like any path.
            try:
                full = confine(path, [root], what="instance path")
            except StagingError as exc:
                out.append((name, exc.message))
                continue
        out.append((name, full))
    return out
