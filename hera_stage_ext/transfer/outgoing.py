"""The sending site's records and lookups (it sends nothing itself): ``record_remote`` (a peer
holds a verified copy), ``remote_sites``, ``list_peers`` (``GET peers``), and the bulk lookups
of a batch (``offers_for``: the announce of many files, and where those a sending stream
pushes lie; ``batch_paths``, ``members_at`` and ``MemberReader``: the files a peer's
``POST files/batch`` pulls, or a sending stream pushes). Sending itself is a
transfer job (``transfer_kind.py``; its streams: ``peer_sender.py``, ``rclone_send.py``), run
by the job engine's worker.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select

from ..catalogue.catalogue import Catalogue
from ..catalogue.db import Database, driver_rows, loads_json_texts
from ..catalogue.inlist import bound_values, one_of_sql
from ..catalogue.models import File
from ..catalogue.serialize import iso, iso_of_stored
from ..errors import InvalidRequest, StagingError
from ..paths import check_canonical, confine
from ..safefs import Folders, open_beneath
from .models import RemoteInstance
from .protocol import BATCH_MAX_FILES
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


#: The instances a batch pull may be served from: available, on an available online store,
#: the first of each file by store name, then instance.
_INSTANCE_OK, _STORE_OK, _FIRST = "i.available", "s.available AND s.kind = 'online'", (
    " ORDER BY s.name, i.id")
#: The columns of an announce offer (``offers_for``), for the database driver; with
#: ``_OFFER_PATHS``, also the paths of the instances a batch pull may be served from (a file
#: without one keeps its row, NULL paths: outer joins, each a lookup by index, where joining
#: the two tables inside one outer join had SQLite scan every instance).
_OFFER_SQL = (
    "SELECT f.name, f.size, f.is_directory, f.checksums, f.create_time, f.obsid, f.source, "
    "f.metadata, o.obsid, o.start_time_jd, o.stop_time_jd, o.start_lst_hr, o.session_id{paths} "
    "FROM file f LEFT OUTER JOIN observation o ON o.obsid = f.obsid{joins} WHERE {condition}"
    "{order}")
_OFFER_PATHS = {
    "paths": ", i.path, s.path",
    "joins": f" LEFT OUTER JOIN instance i ON i.file_id = f.id AND {_INSTANCE_OK} "
             f"LEFT OUTER JOIN store s ON s.id = i.store_id AND {_STORE_OK}",
    "order": _FIRST}
_BATCH_SQL = (
    "SELECT f.name, f.is_directory, i.path, s.path FROM file f "
    "JOIN instance i ON i.file_id = f.id JOIN store s ON i.store_id = s.id "
    f"WHERE {{condition}} AND {_INSTANCE_OK} AND {_STORE_OK}{_FIRST}")


#: Where a batch member lies, by name (``offers_for``'s ``found``, ``batch_paths``): (its
#: instance's path in the store, the store's root, whether it is a directory data set).
Found = dict[str, tuple[str, str, bool]]


def offers_for(db: Database, paths: dict[str, str], found: Found | None = None
               ) -> dict[str, dict[str, Any]]:
    """The announce offers of the files ``paths`` names (name -> path in the store), fetched in
    one query on the database driver (an offer per file from ORM rows cost the sending worker
    more than the rest of its announce: a result processor per JSON and time column, a row
    object, then dicts made from its dicts); names no longer known are left out. Each offer
    holds what ``Catalogue.file_detail`` says of the file, as ``protocol.check_offer`` reads
    it. With ``found`` (a sender about to push them): the same query also fills it with where
    each file a batch pull would be served from lies (``batch_paths``'s lookup; the members
    then come from ``members_at``), so a push's files are looked up once, not twice."""
    out: dict[str, dict[str, Any]] = {}
    with db.read() as s:
        connection = s.connection()
        backend = connection.dialect.name
        sql = _OFFER_SQL.format(condition=one_of_sql(backend, "f.name"), **(
            _OFFER_PATHS if found is not None else {"paths": "", "joins": "", "order": ""}))
        rows = driver_rows(connection, sql, (bound_values(backend, paths),))
    text = backend != "postgresql"  # SQLite: JSON as its text, times as SQLAlchemy's text
    if text:  # each column's JSON texts decoded in one call for the whole batch, not a call each
        sums = loads_json_texts(row[3] for row in rows)
        metas = loads_json_texts(row[7] for row in rows)
    else:
        sums, metas = [row[3] for row in rows], [row[7] for row in rows]
    for row, checksums, meta in zip(rows, sums, metas):
        name = row[0]
        if found is not None and row[14] is not None:  # (NULL: none, or not on a usable store)
            found.setdefault(name, (row[13], row[14], bool(row[2])))
        if name in out:  # (another instance of a file already made an offer)
            continue
        (name, size, is_directory, _sums, created, obsid, source, _meta, observation,
         start_jd, stop_jd, start_lst, session) = row[:13]
        out[name] = {
            "name": name, "size": size, "checksums": checksums, "path": paths[name],
            "is_directory": bool(is_directory), "obsid": obsid,
            "create_time": _iso_text(created) if text else iso(created),
            "source": source or "", "meta": meta or {},
            "observation": None if observation is None else {
                "obsid": observation, "start_time_jd": start_jd, "stop_time_jd": stop_jd,
                "start_lst_hr": start_lst, "session_id": session}}
    return out


def _iso_text(created: str | None) -> str | None:
    """``iso`` of a time as SQLite gives it: from its text (``iso_of_stored``: parsing it and
    formatting it again was about a tenth of ``offers_for``), any other form parsed."""
    if created is None:
        return None
    return iso_of_stored(created) or iso(dt.datetime.fromisoformat(created))


class BatchMember(NamedTuple):
    """A file a peer's ``POST files/batch`` asked for: where it lies (``path``, below the
    store's resolved ``root``, canonical but not resolved: ``MemberReader`` opens it without
    following a link), or why it cannot be served (``error``)."""

    name: str
    path: str = ""
    root: str = ""
    error: str = ""


def batch_paths(db: Database, names: Any) -> list[BatchMember]:
    """What a peer's ``POST files/batch`` gets, in the order asked: ``members_at`` of the
    instances found in one query for the whole batch, on the database driver (a peer asks for
    a thousand names at a time)."""
    if not isinstance(names, list) or not 0 < len(names) <= BATCH_MAX_FILES \
            or not all(isinstance(n, str) for n in names):
        raise InvalidRequest(f"'names' must be a list of 1 to {BATCH_MAX_FILES} names")
    found: Found = {}
    with db.read() as s:
        connection = s.connection()
        backend = connection.dialect.name
        rows = driver_rows(connection, _BATCH_SQL.format(
            condition=one_of_sql(backend, "f.name")), (bound_values(backend, names),))
    for name, is_directory, path, root in rows:
        found.setdefault(name, (path, root, bool(is_directory)))
    return members_at(names, found)


def members_at(names: Sequence[str], found: Found) -> list[BatchMember]:
    """What a peer's batch pull gets, and what a sender's push reads, in the order of
    ``names``: per name the path of an available flat instance on an available online store
    (``found``: a canonical relative path below the store's root: the row is not trusted, and
    nothing is resolved here; ``MemberReader`` follows no link), or why it cannot be served."""
    out: list[BatchMember] = []
    real_roots: dict[str, str] = {}  # each store's root (an admin's setting) resolved once
    folders: dict[str, str] = {}  # each folder checked once: why it is refused, or ""
    for name in names:
        if name not in found:
            out.append(BatchMember(name, error=f"{name!r} has no available instance on an "
                                   "online store here"))
            continue
        path, root, is_directory = found[name]
        if is_directory:
            out.append(BatchMember(name, error=f"{name!r} is a directory data set: pull it "
                                   "alone"))
            continue
        folder, _, base = path.rpartition("/")
        if folder not in folders:
            try:
                if folder:
                    check_canonical(folder, "instance path")
                folders[folder] = ""
            except InvalidRequest as exc:
                folders[folder] = exc.message
        error = folders[folder]
        if error or base in ("", ".", "..") or "\x00" in base:
            out.append(BatchMember(name, error=error or f"{name!r}: instance path {path!r} "
                                   "names no file"))
            continue
        if root not in real_roots:
            real_roots[root] = os.path.realpath(root)
        real = real_roots[root]
        out.append(BatchMember(name, f"{real}/{path}", real))
    return out


#: Folders a ``MemberReader`` keeps open at most (the least recently used closed first): more
#: than a claim's files usually lie in (HERA's: one a night), bounded for the descriptors a
#: server serving several batch pulls at once holds.
FOLDERS_OPEN = 128
#: (``O_NONBLOCK``: a FIFO in the store must not hang the reader; it is then refused as no
#: regular file.)
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class MemberReader:
    """Reads batch members (``batch_paths``) without resolving any path: each member's folder
    opened once below its store's root, following no link (``safefs.Folders``, at most
    ``FOLDERS_OPEN`` kept open), and the file opened in it with ``O_NOFOLLOW``. A folder or
    file that is a link (rare in a store, or one swapped in since) is resolved and confined to
    the store's root (``Forbidden`` when it leads out: never read), then opened below the root
    following no link (a link swapped in meanwhile: ``PathChanged``). One per claim or batch
    pull, used by one thread at a time; ``close`` it."""

    def __init__(self, members: Sequence[BatchMember], folders_open: int = FOLDERS_OPEN
                 ) -> None:
        self.folders = Folders({m.root for m in members if m.root}, size=folders_open)

    def read(self, member: BatchMember, limit: int) -> bytes:
        """The bytes of ``member`` whole, or its first ``limit + 1`` bytes when it is larger
        (read as large as the file is, not as the limit: a read of the limit allocates
        megabytes per file), with plain ``os`` calls."""
        folder, _, base = member.path.rpartition("/")
        try:
            fd = os.open(base, _READ | os.O_NOFOLLOW, dir_fd=self.folders.get(folder))
        except OSError as exc:  # (a folder that is a link: PathChanged, errno ELOOP)
            if exc.errno != errno.ELOOP:
                raise
            real = confine(member.path, [member.root], what="instance path")
            fd = open_beneath(self.folders.root_fd(member.root),
                              os.path.relpath(real, member.root), _READ)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            want = min(status.st_size, limit) + 1
            data = os.read(fd, want)
            while len(data) < want - 1 and (more := os.read(fd, want - len(data))):
                data += more  # a short read (a file system that returns less than asked)
            return data
        finally:
            os.close(fd)

    def close(self) -> None:
        self.folders.close()

    def __enter__(self) -> MemberReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
