"""The receiving side: answer an announce, pull the bytes, verify, move into the store, register.

Every accepted offer becomes a ``transfer_item`` row (the database is the truth), then a pull in
a small thread pool of this server: ``GET files/<name>/content`` at the sender, with ``Range``
from the bytes already in the partial file ``<store>/.hera-stage-incoming/<item id>.part``
(hashed again on resume, so the checksums cover every byte). When the size and every announced
checksum match, the file is hard-linked into the store at the announced relative path (atomic,
and never over an existing file), the partial name removed, and file, instance, metadata and a
``transfer-received`` event registered through ``Catalogue.register``; only then is the item
``committed``. A mismatch discards the partial file and pulls again from zero, up to
``max_attempts``; network errors back off and resume. A server restart resumes every item still
``queued`` or ``receiving`` (``resume``).

Directory data sets (MIRIAD) are pulled as one tar stream (the sender's ``files/<name>/content``
of a directory) and unpacked with tarfile's ``data`` filter (no absolute paths, no links or
members leading out) into ``<store>/.hera-stage-incoming/<item id>.dir``; the tree is then
hashed exactly as ingest hashes a directory (``checksums.hash_directory``: the Librarian's
manifest digest of its members) and compared with the announced checksums before it is renamed
into place (never over an existing path). A tar stream has no offsets: a broken pull of a
directory starts again from zero (data sets are a few files; big files are flat).
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ..catalogue import checksums as ck
from ..catalogue.catalogue import Catalogue
from ..catalogue.models import File, Instance, Store, utcnow
from ..errors import Conflict, InvalidRequest, StagingError, Unavailable
from ..jobs.methods import _rename_noreplace, remove_path
from ..paths import confine
from .models import ACTIVE_ITEM_STATES, TransferItem
from .peers import PeerRegistry
from .protocol import (
    CONFLICT,
    HAVE,
    MAX_OFFERS,
    NO_SPACE,
    REFUSED,
    SEND,
    PeerClient,
    check_offer,
    spec_from_offer,
)

log = logging.getLogger("hera_stage_ext.transfer")

INCOMING_DIR = ".hera-stage-incoming"
#: Test-only fault: flip one byte of the first chunk received of this file name, once per process.
FLIP_ONCE_ENV = "HERA_STAGE_TEST_FLIP_ONCE"
_flipped: set[str] = set()


class ChecksumMismatch(StagingError):
    status = 422


class _Stopped(Exception):
    pass


class Receiver:
    def __init__(self, catalogue: Catalogue, registry: PeerRegistry, store: str | None, *,
                 streams: int = 2, reserve_bytes: int = 0, max_attempts: int = 5,
                 backoff_s: float = 1.0) -> None:
        self.catalogue = catalogue
        self.db = catalogue.db
        self.registry = registry
        self.store = store or None
        self.reserve_bytes = reserve_bytes
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._pool = ThreadPoolExecutor(max(1, streams), thread_name_prefix="hera-receive")
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._stop = threading.Event()

    # ----- store --------------------------------------------------------------------------
    def _store_root(self) -> Path:
        if self.store is None:
            raise InvalidRequest("this site receives no transfers (c.StagingApp.receive_store)")
        root = Path(os.path.realpath(self.catalogue.store(self.store)["path"]))
        return root

    def _part(self, root: Path, item_id: int) -> Path:
        return root / INCOMING_DIR / f"{item_id}.part"

    # ----- announce and status ------------------------------------------------------------
    def announce(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        transfer = body.get("transfer")
        if not isinstance(transfer, str) or not 0 < len(transfer) <= 64:
            raise InvalidRequest("'transfer' must be a string of 1 to 64 characters")
        offers = body.get("files")
        if not isinstance(offers, list) or len(offers) > MAX_OFFERS:
            raise InvalidRequest(f"'files' must be a list of at most {MAX_OFFERS} offers")
        offers = [check_offer(o) for o in offers]
        if len({o["name"] for o in offers}) != len(offers):
            raise InvalidRequest("a name is offered twice")
        reply = {"transfer": transfer, "site": self.registry.site_name, "files": []}
        refusal = None
        if self.store is None:
            refusal = "this site receives no transfers (c.StagingApp.receive_store)"
        elif peer not in self.registry.peers:
            refusal = (f"this site has no URL for peer {peer!r} to pull from "
                       "(c.StagingApp.peers)")
        if refusal:
            reply["files"] = [{"name": o["name"], "answer": REFUSED, "message": refusal}
                              for o in offers]
            return reply
        root = self._store_root()
        answers = self._answers(peer, offers, root)
        queued = self._record(peer, transfer, offers, answers)
        reply["files"] = [{"name": o["name"], "answer": answers[o["name"]][0],
                           "message": answers[o["name"]][1]} for o in offers]
        for item_id in queued:
            self._submit(item_id)
        return reply

    def _answers(self, peer: str, offers: list[dict[str, Any]], root: Path
                 ) -> dict[str, tuple[str, str]]:
        names = [o["name"] for o in offers]
        with self.db.read() as s:
            known = {row.name: row for row in s.execute(
                select(File.name, File.size, File.checksums,
                       func.count(Instance.id).label("instances"))
                .outerjoin(Instance, (Instance.file_id == File.id) & Instance.available)
                .where(File.name.in_(names)).group_by(File.id))}
            held = dict(s.execute(
                select(Instance.path, File.name).join(File, Instance.file_id == File.id)
                .join(Store, Instance.store_id == Store.id)
                .where(Store.name == self.store,
                       Instance.path.in_([o["path"] for o in offers]))).all())
            partial = {row.name: row.id for row in s.execute(
                select(TransferItem.name, TransferItem.id)
                .where(TransferItem.peer == peer, TransferItem.name.in_(names)))}
        free = shutil.disk_usage(root).free - self.reserve_bytes
        answers: dict[str, tuple[str, str]] = {}
        for offer in offers:
            name, row = offer["name"], known.get(offer["name"])
            try:
                same = row is not None and row.size == offer["size"] and \
                    ck.compare(row.checksums, offer["checksums"])
            except InvalidRequest as exc:
                answers[name] = (REFUSED, exc.message)
                continue
            if row is not None and not same:
                answers[name] = (CONFLICT, (f"{name!r} is known here with other content "
                                            f"(size {row.size}, checksums {row.checksums})"))
            elif same and row.instances:
                answers[name] = (HAVE, "")
            elif held.get(offer["path"], name) != name:
                answers[name] = (CONFLICT, f"{self.store}:{offer['path']} holds another file")
            else:
                have = 0
                if name in partial:
                    part = self._part(root, partial[name])
                    have = part.stat().st_size if part.exists() else 0
                need = max(offer["size"] - have, 0)
                if need > free:
                    answers[name] = (NO_SPACE, (f"store {self.store!r} has {max(free, 0)} "
                                                f"bytes free (after the reserve), {need} needed"))
                else:
                    free -= need
                    answers[name] = (SEND, "")
        return answers

    def _record(self, peer: str, transfer: str, offers: list[dict[str, Any]],
                answers: dict[str, tuple[str, str]]) -> list[int]:
        """Create or re-arm the items of every ``send`` answer; their ids."""
        sending = [o for o in offers if answers[o["name"]][0] == SEND]
        if not sending:
            return []
        ids = []
        with self.db.write() as s:
            rows = {r.name: r for r in s.scalars(select(TransferItem).where(
                TransferItem.peer == peer,
                TransferItem.name.in_([o["name"] for o in sending])))}
            for offer in sending:
                item = rows.get(offer["name"])
                checksums = offer["checksums"]
                fresh = item is None or item.state not in ACTIVE_ITEM_STATES or \
                    item.size != offer["size"] or item.checksums != checksums
                if item is None:
                    item = TransferItem(peer=peer, name=offer["name"], attempts=0,
                                        resumed_from=0, created_at=utcnow())
                    s.add(item)
                if fresh:
                    if item.id is not None and (item.size != offer["size"]
                                                or item.checksums != checksums):
                        self._discard_part(item.id)  # bytes of other content
                    item.state, item.attempts, item.error = "queued", 0, ""
                item.transfer = transfer
                item.path, item.size = offer["path"], offer["size"]
                item.checksums = checksums
                item.spec = offer
                item.updated_at = utcnow()
            s.flush()
            ids = [r.id for r in s.scalars(select(TransferItem).where(
                TransferItem.peer == peer,
                TransferItem.name.in_([o["name"] for o in sending])))]
        return ids

    def _discard_part(self, item_id: int) -> None:
        try:
            root = self._store_root()
            self._part(root, item_id).unlink(missing_ok=True)
            remove_path(self._tree(root, item_id))
        except (OSError, StagingError):
            pass

    def _tree(self, root: Path, item_id: int) -> Path:
        """Where a directory data set is unpacked before it is verified."""
        return root / INCOMING_DIR / f"{item_id}.dir"

    def status(self, peer: str, names: Any) -> dict[str, Any]:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                or len(names) > 10 * MAX_OFFERS:
            raise InvalidRequest(f"'names' must be a list of at most {10 * MAX_OFFERS} names")
        with self.db.read() as s:
            items = {i.name: i for i in s.scalars(select(TransferItem).where(
                TransferItem.peer == peer, TransferItem.name.in_(names)))}
            s.expunge_all()  # keep the loaded values past the read session's rollback
        root = self._store_root() if self.store else None
        files = []
        for name in names:
            item = items.get(name)
            if item is None:
                files.append({"name": name, "state": "unknown", "bytes": 0, "attempts": 0,
                              "error": ""})
                continue
            done = item.size if item.state == "committed" else 0
            if item.state == "receiving" and root is not None:
                part = self._part(root, item.id)
                done = part.stat().st_size if part.exists() else 0
            files.append({"name": name, "state": item.state, "bytes": done,
                          "attempts": item.attempts, "error": item.error})
        return {"files": files}

    # ----- pulls --------------------------------------------------------------------------
    def resume(self) -> list[int]:
        """At server start: pull again every item left queued or receiving."""
        if self.store is None:
            return []
        with self.db.read() as s:
            ids = list(s.scalars(select(TransferItem.id).where(
                TransferItem.state.in_(ACTIVE_ITEM_STATES)).order_by(TransferItem.id)))
        for item_id in ids:
            self._submit(item_id)
        return ids

    def _submit(self, item_id: int) -> None:
        with self._lock:
            if item_id in self._running or self._stop.is_set():
                return
            self._running.add(item_id)
        self._pool.submit(self._run, item_id)

    def _run(self, item_id: int) -> None:
        try:
            self._pull(item_id)
        except _Stopped:
            pass
        except Exception:  # a pull must never take the pool down
            log.exception("transfer item %d: unexpected failure", item_id)
            self._finish(item_id, "failed", "internal error (see the server log)")
        finally:
            with self._lock:
                self._running.discard(item_id)

    def _finish(self, item_id: int, state: str, error: str = "") -> None:
        with self.db.write() as s:
            item = s.get(TransferItem, item_id)
            if item is not None:
                item.state, item.error, item.updated_at = state, error, utcnow()

    def _pull(self, item_id: int) -> None:
        root = self._store_root()
        while True:
            if self._stop.is_set():
                raise _Stopped
            part = self._part(root, item_id)
            with self.db.write() as s:
                item = s.get(TransferItem, item_id)
                if item is None or item.state not in ACTIVE_ITEM_STATES:
                    return
                item.state = "receiving"
                item.attempts += 1
                item.resumed_from = part.stat().st_size if part.exists() else 0
                item.updated_at = utcnow()
                s.flush()
                s.expunge(item)
            try:
                self._receive(item, root, part)
                return
            except ChecksumMismatch as exc:
                part.unlink(missing_ok=True)
                log.warning("transfer %s of %s from %s: %s", item.transfer, item.name, item.peer,
                            exc.message)
                if item.attempts >= self.max_attempts:
                    self._finish(item_id, "failed", exc.message)
                    return
                self._set_error(item_id, exc.message)
            except (Unavailable, OSError) as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                log.warning("transfer %s of %s from %s: %s", item.transfer, item.name, item.peer,
                            message)
                if item.attempts >= self.max_attempts:
                    self._finish(item_id, "failed", message)
                    return
                self._set_error(item_id, message)
                if self._stop.wait(min(self.backoff_s * 2 ** (item.attempts - 1), 60.0)):
                    raise _Stopped from None
            except StagingError as exc:  # conflict, unauthorized at the sender, bad request
                log.warning("transfer %s of %s from %s failed: %s", item.transfer, item.name,
                            item.peer, exc.message)
                self._finish(item_id, "failed", exc.message)
                return

    def _set_error(self, item_id: int, message: str) -> None:
        with self.db.write() as s:
            item = s.get(TransferItem, item_id)
            if item is not None:
                item.error, item.updated_at = message, utcnow()

    def _receive(self, item: TransferItem, root: Path, part: Path) -> None:
        dest = confine(item.path, [root], what="transfer path")
        # The fastest checksum announced (xxh3-128 when the sender has it; MD5 costs more than
        # the transfer itself): corruption on the way shows in either.
        algorithms = [ck.preferred_algorithm(item.checksums)]
        if dest.exists():
            # Linked by an attempt that died before registering (or a stray file): never
            # overwritten; registered only if it is exactly what was announced.
            digest = ck.hash_path(dest, algorithms)
            if digest.size != item.size or not ck.compare(digest.checksums, item.checksums):
                raise Conflict(f"{self.store}:{item.path} already holds other content")
            part.unlink(missing_ok=True)
            self._commit(item)
            return
        if item.spec.get("is_directory"):
            self._receive_directory(item, root, dest, algorithms)
            return
        part.parent.mkdir(parents=True, exist_ok=True)
        hasher = ck.StreamHasher(algorithms)
        offset = part.stat().st_size if part.exists() else 0
        if offset > item.size:
            part.unlink()
            offset = 0
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(ck.CHUNK_SIZE):
                    hasher.update(chunk)
        if offset < item.size:
            peer = self.registry.peer(item.peer)
            client = PeerClient(peer, self.registry.site_name)
            flip = os.environ.get(FLIP_ONCE_ENV)
            try:
                with open(part, "ab") as f:
                    for chunk in client.content(item.name, offset):
                        if self._stop.is_set():
                            raise _Stopped
                        if flip == item.name and item.name not in _flipped and chunk:
                            _flipped.add(item.name)
                            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        f.write(chunk)
                        hasher.update(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                client.close()
        digest = hasher.digest()
        if digest.size != item.size or not ck.compare(digest.checksums, item.checksums):
            raise ChecksumMismatch(
                f"{item.name}: received {digest.size} bytes with checksums {digest.checksums}, "
                f"announced {item.size} bytes with {item.checksums}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(part, dest)  # atomic; FileExistsError (an OSError) if something appeared
        try:
            part.unlink()
            self._commit(item)
        except Conflict:
            dest.unlink(missing_ok=True)
            raise

    def _receive_directory(self, item: TransferItem, root: Path, dest: Path,
                           algorithms: list[str]) -> None:
        work = self._tree(root, item.id)
        remove_path(work)  # a broken tar pull starts again from zero
        work.mkdir(parents=True)
        client = PeerClient(self.registry.peer(item.peer), self.registry.site_name)
        try:
            stream = _ChunkReader(client.content(item.name, 0), self._stop)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if member.name.split("/", 1)[0] != item.name:
                        raise ChecksumMismatch(f"{item.name}: the tar stream holds "
                                               f"{member.name!r}, outside the data set")
                    tar.extract(member, work, filter="data")
        except (tarfile.TarError, EOFError) as exc:
            remove_path(work)
            raise Unavailable(f"the tar stream of {item.name!r} broke: {exc}") from None
        except BaseException:
            remove_path(work)
            raise
        finally:
            client.close()
        tree = work / item.name
        digest = ck.hash_directory(tree, algorithms) if tree.is_dir() else None
        if digest is None or digest.size != item.size or \
                not ck.compare(digest.checksums, item.checksums):
            remove_path(work)
            raise ChecksumMismatch(
                f"{item.name}: the received directory has "
                f"{'no tree' if digest is None else f'{digest.size} bytes, {digest.checksums}'}"
                f"; announced {item.size} bytes with {item.checksums}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            _rename_noreplace(str(tree), str(dest))  # FileExistsError if something appeared
        finally:
            remove_path(work)
        try:
            self._commit(item)
        except Conflict:
            remove_path(dest)
            raise

    def _commit(self, item: TransferItem) -> None:
        spec = spec_from_offer(item.spec, item.peer)
        spec.checksums = dict(item.checksums)
        [registration] = self.catalogue.register([spec], self.store, [item.path])
        if registration.instance_added:
            self.catalogue.add_event(item.name, "transfer-received", {
                "from": item.peer, "transfer": item.transfer, "store": self.store,
                "path": item.path, "attempts": item.attempts})
        self._finish(item.id, "committed")
        log.info("transfer %s: %s from %s committed to %s:%s", item.transfer, item.name,
                 item.peer, self.store, item.path)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _ChunkReader:
    """A read-only file object over an iterator of byte chunks (what tarfile's stream mode
    reads from), stopping when the receiver stops."""

    def __init__(self, chunks: Iterator[bytes], stop: threading.Event) -> None:
        self._chunks = chunks
        self._stop = stop
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            if self._stop.is_set():
                raise _Stopped
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out
