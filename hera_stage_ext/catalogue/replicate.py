"""Copying a file's bytes from one good instance to a place in a store, verified before they
count, and the two users of that: repairing a bad copy from another good copy at this site (else
by pulling it again from a peer that holds it), and removing a copy's bytes (read-only data sets
included).

A copy is written under a hidden temporary name beside its final place, hashed as it is
written (a directory is hashed again after the copy), compared with the file's checksums, and
only then renamed into place: a flat file with one ``rename`` (atomic: readers see the old bytes
or the new, never a mix), a directory by moving the old one aside first. A pull from a peer
lands under such a temporary name too, through the transfer protocol's receiving side, which
verifies it as it verifies every transfer (``PeerSource``: ``transfer/repair.py``); it is put in
place the same way. Every repair step is an event on the file (``repair-started``,
``repair-source-bad``, ``repair-copied``, ``repair-pull-started``, ``repair-pulled``,
``repair-verified``, ``repair-failed``).
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from typing import Any, Protocol

from sqlalchemy import select

from ..errors import Conflict, CopyFailed, NotFound, StagingError
from . import checksums as ck
from .db import Database
from ..states import BAD_FIXITY_STATES, FixityState
from .fixity import (
    Finding,
    check_copy,
    instance_location,
    record,
    verify_instance,
)
from .catalogue import Catalogue
from .models import File, Instance, Store

CHUNK = ck.CHUNK_SIZE


class PeerSource(Protocol):
    """Where a file with no good copy at this site is pulled again from."""

    def holders(self, name: str) -> list[str]:
        """The configured peers to try, those known to hold the file first."""
        ...

    def pull(self, peer: str, name: str, size: int, checksums: dict[str, str],
             is_directory: bool, work: str) -> str:
        """Pull and verify the file (``Receiver.pull_verified``): the verified path."""
        ...


def _temp_beside(final: str) -> str:
    head, tail = os.path.split(final)
    return os.path.join(head, f".hera-stage-copy-{uuid.uuid4().hex[:12]}-{tail}"[:255])


def make_writable(path: str) -> None:
    """Give the owner write permission on a directory tree (staged and stored data sets are
    read-only, and a read-only folder's entries cannot be removed)."""
    for root, dirs, _ in os.walk(path):
        os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) | stat.S_IWUSR | stat.S_IXUSR)
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | stat.S_IWUSR | stat.S_IXUSR)


def remove_path(path: str) -> None:
    """Remove a flat file or a directory tree (made writable first); a symlink is removed
    itself, never followed."""
    if os.path.isdir(path) and not os.path.islink(path):
        make_writable(path)
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_file_hashed(src: str, dst: str, algorithm: str) -> ck.Digest:
    hasher = ck.StreamHasher((algorithm,))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with open(src, "rb", buffering=0) as fin:
        fd = os.open(dst, flags, 0o600)
        with os.fdopen(fd, "wb", buffering=0) as fout:
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while n := fin.readinto(buffer):
                hasher.update(view[:n])
                fout.write(view[:n])
            os.fsync(fout.fileno())
    shutil.copymode(src, dst)
    return hasher.digest()


def copy_verified(src: str, final: str, size: int, checksums: dict[str, str]) -> None:
    """Copy ``src`` (a file or a data set) to ``final``, verified, replacing what is there.
    Raises CopyFailed (nothing at ``final`` changed) when the copy does not match."""
    algorithm = ck.preferred_algorithm(checksums)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    temp = _temp_beside(final)
    try:
        if os.path.isdir(src):
            shutil.copytree(src, temp, symlinks=True)
            digest = ck.hash_directory(temp, (algorithm,))
        else:
            digest = _copy_file_hashed(src, temp, algorithm)
        if digest.size != size or digest.checksums[algorithm] != checksums[algorithm]:
            raise CopyFailed(f"the copy of {src} does not match the file's checksums "
                             f"({algorithm} {digest.checksums[algorithm]}, size {digest.size})")
        put_in_place(temp, final)
    except BaseException:
        if os.path.lexists(temp):
            remove_path(temp)
        raise


def put_in_place(verified: str, final: str) -> None:
    """Move the verified ``verified`` (beside ``final``) over what ``final`` holds: one atomic
    rename for a file; a directory's old tree is moved aside first, then removed."""
    if os.path.isdir(verified) and not os.path.islink(verified):
        if os.path.lexists(final):
            aside = _temp_beside(final)
            os.rename(final, aside)
            os.rename(verified, final)
            remove_path(aside)
        else:
            os.rename(verified, final)
    else:
        if os.path.isdir(final) and not os.path.islink(final):
            remove_path(final)
        os.replace(verified, final)


def _event(db: Database, file_id: int, type_: str, payload: dict[str, Any]) -> None:
    Catalogue(db).add_events([(file_id, type_, payload)])


def repair_file(db: Database, name: str, store: str | None = None,
                peers: PeerSource | None = None) -> dict[str, Any]:
    """Replace every bad or missing instance of ``name`` (on ``store`` only, if given) with the
    bytes of another good instance at this site, else (``peers``) pulled again from a peer
    that holds it, then re-verify it.

    A source is re-hashed before it is used (a copy that went bad unnoticed is recorded bad and
    the next is tried). Returns ``{"repaired": [...], "failed": [...]}``; a file with no bad
    copy is a Conflict, one with no good copy here nor at a peer has its bad copies listed as
    failed.
    """
    with db.read() as s:
        file = s.execute(select(File.id, File.size, File.checksums, File.is_directory)
                         .where(File.name == name)).first()
        if file is None:
            raise NotFound(f"no file named {name!r}")
        rows = s.execute(
            select(Instance.id, Instance.fixity, Instance.available, Store.name, Store.path,
                   Store.kind, Store.available, Instance.path)
            .join(Store, Instance.store_id == Store.id)
            .where(Instance.file_id == file.id).order_by(Store.name, Instance.id)).all()
    bad = [r for r in rows if r[1] in BAD_FIXITY_STATES and r[5] == "online"
           and (store is None or r[3] == store)]
    if not bad:
        raise Conflict(f"{name!r} has no bad or missing copy"
                       + (f" on {store!r}" if store else "") + " to repair")
    sources = [r for r in rows
               if r[1] not in BAD_FIXITY_STATES and r[2] and r[6] and r[5] == "online"]
    checksums = dict(file.checksums)
    repaired: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for target in bad:
        target_id, _, _, t_store, t_root, _, _, t_path = target
        where = {"store": t_store, "path": t_path}
        _event(db, file.id, "repair-started", where)
        done = False
        for source in sources:
            s_id, _, _, s_store, s_root, _, _, s_path = source
            source_finding: Finding = verify_instance(db, s_id, context="repair source")
            if source_finding.state != FixityState.OK:
                _event(db, file.id, "repair-source-bad",
                       {**where, "source": s_store, "detail": source_finding.detail})
                continue
            try:
                src = instance_location(s_root, s_path)
                final = instance_location(t_root, t_path)
                copy_verified(src, final, file.size, checksums)
            except (OSError, StagingError) as exc:
                detail = getattr(exc, "message", None) or str(exc)
                _event(db, file.id, "repair-failed", {**where, "source": s_store,
                                                      "detail": detail})
                continue
            _event(db, file.id, "repair-copied", {**where, "source": s_store})
            state, detail, _ = check_copy(final, file.size, checksums)
            record(db, target_id, state, detail, context="repair")
            if state == FixityState.OK:
                _event(db, file.id, "repair-verified", {**where, "source": s_store})
                repaired.append({**where, "source": s_store})
                done = True
                break
            _event(db, file.id, "repair-failed", {**where, "source": s_store,
                                                  "detail": f"re-verification: {detail}"})
        if not done and peers is not None:
            peer = _repair_from_peers(db, file, name, target_id, (t_root, t_path), where,
                                      peers)
            if peer is not None:
                repaired.append({**where, "source": f"peer {peer}"})
                done = True
        if not done:
            if not sources:
                _event(db, file.id, "repair-failed",
                       {**where, "detail": "no good copy at this site"
                        + (" nor at a peer" if peers is not None else "")})
            failed.append({**where, "reason": "no good copy at this site"
                           + (" nor at a peer" if peers is not None else "")
                           + " could replace it"})
    return {"name": name, "repaired": repaired, "failed": failed}


def _repair_from_peers(db: Database, file: Any, name: str, target_id: int,
                       location: tuple[str, str], where: dict[str, Any],
                       peers: PeerSource) -> str | None:
    """Pull the file again from each peer in turn (verified by the receiving side), put it in
    place of the bad copy (``location``: its store root and path) and re-verify it there;
    the peer that repaired it, or None."""
    checksums = dict(file.checksums)
    try:
        final = instance_location(*location)
    except StagingError as exc:
        _event(db, file.id, "repair-failed", {**where, "detail": exc.message})
        return None
    for peer in peers.holders(name):
        _event(db, file.id, "repair-pull-started", {**where, "peer": peer})
        work = _temp_beside(final)
        try:
            verified = peers.pull(peer, name, file.size, checksums, bool(file.is_directory),
                                  work)
            _event(db, file.id, "repair-pulled", {**where, "peer": peer})
            put_in_place(verified, final)
        except (OSError, StagingError) as exc:
            detail = getattr(exc, "message", None) or str(exc)
            _event(db, file.id, "repair-failed", {**where, "peer": peer, "detail": detail})
            continue
        finally:
            if os.path.lexists(work):
                remove_path(work)
        _event(db, file.id, "repair-copied", {**where, "source": f"peer {peer}"})
        state, detail, _ = check_copy(final, file.size, checksums)
        record(db, target_id, state, detail, context="repair")
        if state == FixityState.OK:
            _event(db, file.id, "repair-verified", {**where, "source": f"peer {peer}"})
            return peer
        _event(db, file.id, "repair-failed", {**where, "peer": peer,
                                              "detail": f"re-verification: {detail}"})
    return None
