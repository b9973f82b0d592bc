"""The receiving side: answer an announce, pull the bytes, verify, move into the store, register.

Every accepted offer becomes a ``transfer_item`` row (the database is the truth), then a pull in
a small thread pool of this server: ``GET files/<name>/content`` at the sender, with ``Range``
from the bytes already in the partial file ``<store>/.hera-stage-incoming/<item id>.part``
(hashed again on resume, so the checksums cover every byte; resumed from a whole block, and
before the partial file's first hole). A connection that ends before its length (a sender
killed mid-body) is a break to resume from, like any network error. The
bytes go straight to the disk from the buffers they arrive in (``directio``: no copy through
the page cache, which cost this server more CPU than the network), or, where the store's file
system refuses that, are written behind in a thread of their own. When the size and every announced
checksum match, the file is hard-linked into the store at the announced relative path (atomic,
and never over an existing file; the folder synced, up to the store), the partial name removed,
and file, instance, metadata and a ``transfer-received`` event registered through
``Catalogue.register``; only then is the item ``committed``. A mismatch discards the partial
file and pulls again from zero, up to ``max_attempts``; network errors back off and resume. A
server restart resumes every item still ``queued`` or ``receiving`` (``resume``) that no other
receiver holds.

One receiver pulls an item at a time, also when several servers (replicas of a site) share the
catalogue and the store: an item is queued or pulled only once this receiver took the lease on
its row (``holder``, ``lease_expires`` on the database's clock, as a job's worker and lease), by
one conditional update (``_claim``: of receivers claiming it at once exactly one wins) when it
is dispatched; the lease is renewed while the item is pulled, by a thread of its own
(``_keep_leases``), and at each attempt of a large file or directory, or of a batch whose leases
are not all surely held (``_renew_held``: an attempt whose item another receiver took over
leaves it), and given up when the item ends. That thread also takes over items whose lease ran
out (their receiver died, or they waited in another replica's queue), which resume from their
partial file; at start a receiver takes over at once the items of a process of its host that
is gone (``resume``). A pull writes, links or renames only while it surely holds its item
(``_holding``: its lease taken or renewed here less than half a lease ago, so it runs another
half lease at least): never two writers of one partial file, never a rename of one another
receiver writes.

Small flat files (up to ``protocol.BATCH_FILE_MAX``) are pulled in batches instead
(``_pull_batch``): one ``POST files/batch`` streams up to ``BATCH_MAX_FILES`` of them; each member
is verified on its own against its announced size and checksum and only then written to its own
partial file (a damaged member is never written and is pulled again in the next round, the
others go on); their data is synced (``durable.py``: on a quiet machine one ``syncfs`` of the
store's file system once the stream ends, as a staging commit does; where other writers hold
much unwritten data, which a ``syncfs`` would write back too, each file's ``fdatasync`` by a
pool of threads as soon as it is written, overlapping the rest of the stream); once all are
synced they are renamed into place (never over anything) and the folders that changed are
synced; then they are registered with ONE
``Catalogue.register_each`` call (with their ``transfer-received`` events; one by one
only if something in it conflicts) and committed in ONE more transaction. A broken
stream keeps what was verified and pulls the rest again after a backoff; a member whose final
name is taken meanwhile takes the single-file path (verified there, registered only if it is
exactly what was announced). Small files wait in a queue per peer (``_small``) that up to
``streams`` drainers empty a batch at a time: what several announces queued meanwhile goes in one
batch, and one batch streams while another syncs and registers; a drainer keeps one client (a
keep-alive connection) per peer for all its batches. ``changes`` counts finished items, for the
long poll of ``POST status``.

Small flat files (up to ``protocol.PUSH_FILE_MAX``) may also come pushed, with their announce
(``push``): the offers are checked as an announce's, each file verified and written nameless
(``O_TMPFILE``) in its destination folder, and the push made durable, final and registered as
one batch by the batch pull's own steps (``_write_member``, ``_make_final``: each file linked to
its final name once its data is synced, never over anything; ``durable.link_final``); each item
is recorded once, ``committed``, in its registration's own transaction (``register_each``'s
``also_write``). A kill at any point leaves nothing of a push but folders it made (a nameless
file goes with its process). Where that cannot be (``_write_nameless``: a push synced file
by file, a folder on another file system, no ``O_TMPFILE`` or no ``/proc``, as many nameless
files held as this process may, ``durable.HELD_MAX``), a pushed file is written to a partial file of its own in the incoming folder instead (``-<n>.part``: no item's id, one
per push of it) and renamed; those a stopped server left are removed when it starts again
(``resume``). A name already being pulled for that peer keeps its pull; one whose final name
is taken takes the single-file path.

Directory data sets (MIRIAD) are pulled as one tar stream (the sender's ``files/<name>/content``
of a directory) and unpacked with tarfile's ``data`` filter (no absolute paths, no links or
members leading out) into ``<store>/.hera-stage-incoming/<item id>.dir``; the tree is then
hashed exactly as ingest hashes a directory (``checksums.hash_directory``: the Librarian's
manifest digest of its members) and compared with the announced checksums, and its files and
folders synced, before it is renamed into place (never over an existing path). A tar stream
has no offsets: a broken pull of a directory starts again from zero (data sets are a few files;
big files are flat).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import itertools
import logging
import math
import os
import secrets
import shutil
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import func, or_, select, update

from .. import directio, safefs
from ..catalogue import checksums as ck
from ..catalogue.catalogue import Catalogue, InstanceEvent
from ..catalogue.db import driver_mark, driver_rows, loads_json_column
from ..catalogue.inlist import bound_values, one_of, one_of_sql
from ..catalogue.models import utcnow
from ..catalogue.tables import dumps, json_string
from ..errors import ChecksumMismatch, Conflict, InvalidRequest, StagingError, Unavailable
from ..jobs.engine import lease_clock, local_worker_dead, new_worker_id
from ..jobs.methods import TMP_SUFFIX, rename_path_noreplace, write_all, remove_path
from ..paths import CONTROL_CHARACTERS, confine
from ..states import ACTIVE_TRANSFER_ITEM_STATES, TransferItemState
from .durable import (
    Destinations,
    FileSyncer,
    Link,
    Rename,
    SyncBatch,
    link_final,
    make_final,
    sync_tree,
)
from .item_rows import ItemRow, ItemRows
from .models import TransferItem
from .peers import PeerRegistry
from .protocol import (
    BATCH_FILE_MAX,
    BATCH_MAX_BYTES,
    BATCH_MAX_FILES,
    COMMITTED,
    CONFLICT,
    HAVE,
    MAX_OFFERS,
    NO_SPACE,
    PUSH_FILE_MAX,
    REFUSED,
    RETRY,
    SEND,
    UNKNOWN,
    PeerClient,
    check_offer,
    file_spec,
    push_capability,
    spec_json,
    spec_of,
    split_push,
)
from .thread_writer import ChunkWriter, ThreadWriter

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("hera_stage_ext.transfer")

INCOMING_DIR = ".hera-stage-incoming"
#: Folders of the receiving store that are the receiver's own: no offered path may enter one.
RESERVED_DIRS = (INCOMING_DIR,)
#: Test-only fault: flip one byte of the first chunk received of this file name, once per process.
FLIP_ONCE_ENV = "HERA_STAGE_TEST_FLIP_ONCE"
_flipped: set[str] = set()
#: Test-only pause: once per process, when a batch's members are written and before their syncs
#: are waited for and they are renamed, create this file (its text: how the batch is synced,
#: "whole" or "file-by-file") and wait (for a test to kill the server).
PAUSE_BEFORE_SYNC_ENV = "HERA_STAGE_TEST_PAUSE_BEFORE_SYNC"
_paused: list[bool] = []
#: Destination folders a receiver remembers as confined, at most (then it starts afresh).
_CONFINED_MAX = 100_000
#: Item states after which nothing more happens to it (until it is announced again).
_FINISHED_STATES = (TransferItemState.COMMITTED, TransferItemState.FAILED)

#: ``Receiver._answers``' reads, for the database driver (``{}``: a condition on one bound list,
#: or the placeholder): each offered name's file with its count of available instances, and
#: the files the receiving store holds at the offered paths.
_KNOWN_SQL = (
    "SELECT f.name, f.size, f.checksums, count(i.id) FROM file f LEFT OUTER JOIN instance i "
    "ON i.file_id = f.id AND i.available WHERE {} GROUP BY f.id")
_HELD_SQL = (
    "SELECT i.path, f.name FROM instance i JOIN file f ON i.file_id = f.id "
    "JOIN store s ON i.store_id = s.id WHERE s.name = {} AND {}")


class _Stopped(Exception):
    pass


class _Member(NamedTuple):
    """A member of a batch that arrived: its item, its partial file (a name in the incoming
    folder; for one written nameless, only its name in the batch's syncs), its final path, why
    it failed verification ("": verified and written), and, written nameless in its
    destination folder, its open descriptor (-1: none; closed by whoever wrote the batch)."""

    item: ItemRow
    part: str
    dest: str
    error: str
    fd: int = -1


class Receiver:
    def __init__(self, catalogue: Catalogue, registry: PeerRegistry, store: str | None, *,
                 streams: int = 2, reserve_bytes: int = 0, max_attempts: int = 5,
                 backoff_s: float = 1.0, fsync: bool = True, lease_s: float = 30.0) -> None:
        self.catalogue = catalogue
        self.db = catalogue.db
        self.registry = registry
        self.store = store or None
        self.reserve_bytes = reserve_bytes
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.fsync = fsync
        # Large files straight to the disk until the store's file system refuses it.
        self._direct = True
        self._root: Path | None = None
        #: Items finished (committed or failed) since start: the long poll watches it.
        self.changes = 0
        self._pool = ThreadPoolExecutor(max(1, streams), thread_name_prefix="hera-receive")
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._streams = max(1, streams)
        #: Small files waiting for a batch pull: peer -> {item id: size}, in arrival order.
        self._small: dict[str, dict[int, int]] = {}
        self._drainers = 0  # batch pulls running (at most ``streams``)
        #: Small items recorded by this process, until their batch starts: id -> their
        #: checksums and spec as JSON text and as values (``ItemRows.start``: not parsed again).
        self._parsed: dict[int, tuple[str, str, dict[str, str], dict[str, Any]]] = {}
        #: Destination folders confined already (``_confine_folder``): relative -> absolute.
        self._confined: dict[str, str] = {}
        #: Ids of pushed files' partial files (negative: no item's), ``<id>.part``.
        #: (Several servers may receive into one store, replicas of a site: each starts at a
        #: random point, and a pushed partial file is created exclusively, so no two pushes
        #: ever share one; a collision fails that member, which is sent again.)
        self._push_ids = itertools.count(-1 - secrets.randbits(62), -1)
        #: Syncs each file of a batch as it is written (``durable.py``).
        self._syncer = FileSyncer()
        #: Pushed files written nameless in their destination folders (``O_TMPFILE``) until
        #: the store's file system refuses it; only where ``/proc`` is mounted: without it a
        #: kernel before 6.10 cannot link them for an unprivileged process
        #: (``safefs.link_open_file``), and each push would be written for nothing.
        self._in_place = os.path.isdir("/proc/self/fd")
        self._stop = threading.Event()
        #: This receiver's name in the leases of the items it holds (``_claim``), how long a
        #: lease runs, the items it holds (queued or being pulled): id -> when
        #: (``time.monotonic``) the statement that took or renewed its lease began (the lease
        #: runs until a lease after that at least), and the thread that renews them and takes
        #: over items whose lease ran out.
        self._holder = new_worker_id()
        self.lease_s = lease_s
        self._held: dict[int, float] = {}
        self._keeper: threading.Thread | None = None
        #: Items this receiver holds that nothing pulls any more: their pull failed and so
        #: did the write marking them failed (the database away), or they were dispatched
        #: again (announced again) while a pull of them ran (``_again`` until it ends). The
        #: keeper pulls them again if they are still active (``_sweep``): no other receiver
        #: would, while this one's lease on them is live.
        self._orphans: set[int] = set()
        self._again: set[int] = set()

    # ----- store --------------------------------------------------------------------------
    def _store_root(self) -> Path:
        if self.store is None:
            raise InvalidRequest("this site receives no transfers (c.StagingApp.receive_store)")
        if self._root is None:  # a store's path is fixed while the server runs
            self._root = Path(os.path.realpath(self.catalogue.store(self.store)["path"]))
        return self._root

    def _part(self, root: Path, item_id: int) -> Path:
        return root / INCOMING_DIR / f"{item_id}.part"

    # ----- announce and status ------------------------------------------------------------
    def announce(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        transfer, offers, reply, refused = self._offered(peer, body)
        if refused:
            return reply
        answers = self._answers(peer, offers, self._store_root())
        queued = self._record(peer, transfer, offers, answers)
        reply["files"] = _replies(offers, answers)
        self._dispatch(peer, queued)
        return reply

    def _offered(self, peer: str, body: dict[str, Any]
                 ) -> tuple[str, list[dict[str, Any]], dict[str, Any], bool]:
        """What ``announce`` and ``push`` check first: the transfer's id and its offers, each
        checked whole (InvalidRequest: one malformed field refuses them all, nothing of them
        kept), the reply begun, and whether this site takes none of them (the reply's
        ``files`` then say so, each refused)."""
        transfer = body.get("transfer")
        if not isinstance(transfer, str) or not 0 < len(transfer) <= 64 \
                or CONTROL_CHARACTERS.search(transfer):
            raise InvalidRequest("'transfer' must be a string of 1 to 64 characters without "
                                 "control characters")
        offers = body.get("files")
        if not isinstance(offers, list) or len(offers) > MAX_OFFERS:
            raise InvalidRequest(f"'files' must be a list of at most {MAX_OFFERS} offers")
        # Every offer checked whole before anything is recorded or pulled: one malformed
        # field refuses the announce (400 naming the file and field), nothing of it is kept.
        offers = [check_offer(o, RESERVED_DIRS, TMP_SUFFIX) for o in offers]
        if len({o["name"] for o in offers}) != len(offers):
            raise InvalidRequest("a name is offered twice")
        if len({o["path"] for o in offers}) != len(offers):
            raise InvalidRequest("a path is offered twice (for two names)")
        # Every reply says this receiver takes pushes, as its ping does (a sender pushes only
        # to a peer that said so).
        reply: dict[str, Any] = {"transfer": transfer, "site": self.registry.site_name,
                                 "files": [], "push": push_capability()}
        refusal = None
        if self.store is None:
            refusal = "this site receives no transfers (c.StagingApp.receive_store)"
        elif peer not in self.registry.peers:
            refusal = (f"this site has no URL for peer {peer!r} to pull from "
                       "(c.StagingApp.peers)")
        if refusal:
            reply["files"] = [{"name": o["name"], "answer": REFUSED, "message": refusal}
                              for o in offers]
        return transfer, offers, reply, refusal is not None

    def _answers(self, peer: str, offers: list[dict[str, Any]], root: Path,
                 states: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
        """Each offer's answer and message. ``states``: filled with the state of each item of
        ``peer`` already recorded under an offered name (what a push needs to know too)."""
        names = [o["name"] for o in offers]
        # The driver's SQL, in one read transaction (the ORM's three statements cost a push
        # more than its answers' own work); name -> (size, checksums, available instances).
        with self.db.read() as s:
            connection = s.connection()
            backend, mark = connection.dialect.name, driver_mark(connection)
            known = {name: (size, loads_json_column(checksums) if isinstance(checksums, str)
                            else checksums, instances)  # SQLite: JSON's text
                     for name, size, checksums, instances in driver_rows(
                         connection, _KNOWN_SQL.format(one_of_sql(backend, "f.name")),
                         (bound_values(backend, names),))}
            held = dict(driver_rows(
                connection, _HELD_SQL.format(mark, one_of_sql(backend, "i.path")),
                (self.store, bound_values(backend, [o["path"] for o in offers]))))
            partial: dict[str, int] = {}
            for name, (item_id, state, _size, _checksums) in ItemRows(s).known(
                    peer, names).items():
                partial[name] = item_id
                if states is not None:
                    states[name] = state
        free = shutil.disk_usage(root).free - self.reserve_bytes
        answers: dict[str, tuple[str, str]] = {}
        for offer in offers:
            name, row = offer["name"], known.get(offer["name"])
            try:
                same = row is not None and row[0] == offer["size"] and \
                    ck.compare(row[1], offer["checksums"])
            except InvalidRequest as exc:
                answers[name] = (REFUSED, exc.message)
                continue
            if row is not None and not same:
                answers[name] = (CONFLICT, (f"{name!r} is known here with other content "
                                            f"(size {row[0]}, checksums {row[1]})"))
            elif row is not None and same and row[2]:
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
                answers: dict[str, tuple[str, str]]) -> list[tuple[int, int, bool]]:
        """Create or re-arm the items of every ``send`` answer; their (id, size, is it a
        directory). New items go in with one statement (announces carry hundreds)."""
        sending = [o for o in offers if answers[o["name"]][0] == SEND]
        if not sending:
            return []
        names = [o["name"] for o in sending]
        # Each offer's JSON text before the transaction (which holds SQLite's write lock).
        texts = []
        parsed: dict[str, tuple[str, str, dict[str, str], dict[str, Any]]] = {}
        for offer in sending:
            spec_value = spec_of(offer)
            checksums, spec = ck.checksums_json(offer["checksums"]), spec_json(spec_value)
            texts.append((checksums, spec))
            if offer["size"] <= BATCH_FILE_MAX and not offer.get("is_directory"):
                parsed[offer["name"]] = (checksums, spec, offer["checksums"], spec_value)
        with self.db.write() as s:
            rows = ItemRows(s)
            known = rows.known(peer, names)
            now = rows.time(utcnow())
            new: list[tuple[Any, ...]] = []
            again: list[tuple[Any, ...]] = []
            for offer, (checksums, spec) in zip(sending, texts):
                row = known.get(offer["name"])
                if row is None:  # in the order of item_rows.NEW_COLUMNS
                    new.append((transfer, peer, offer["name"], offer["path"], offer["size"],
                                checksums, spec, TransferItemState.QUEUED, 0, 0, "", now, now))
                    continue
                item_id, state, size, known_checksums = row
                other = size != offer["size"] or known_checksums != offer["checksums"]
                if other:
                    self._discard_part(item_id)  # bytes of other content
                again.append((transfer, offer["path"], offer["size"], checksums, spec, now,
                              other or state not in ACTIVE_TRANSFER_ITEM_STATES, item_id))
            rows.rearm(again)
            rows.insert(new)
            ids = rows.ids(peer, names) if new else {}
        ids.update((name, row[0]) for name, row in known.items())
        self._parsed.update((ids[name], value) for name, value in parsed.items())
        return [(ids[o["name"]], o["size"], bool(o.get("is_directory"))) for o in sending]

    def _discard_part(self, item_id: int) -> None:
        try:
            root = self._store_root()
            remove_path(self._part(root, item_id))
            remove_path(self._tree(root, item_id))
        except (OSError, StagingError):
            pass

    def _tree(self, root: Path, item_id: int) -> Path:
        """Where a directory data set is unpacked before it is verified."""
        return root / INCOMING_DIR / f"{item_id}.dir"

    def status(self, peer: str, names: Any, finished_only: bool = False,
               all_known: bool = False) -> dict[str, Any]:
        """Per name its item's state (``unknown``: no item); with ``finished_only`` only the
        names committed, failed or unknown: the rows of those still on their way are not
        even read (a sender following thousands asks often, and most are on their way).
        ``all_known``: an earlier look found an item for every name (items are never
        deleted), so none is looked for as unknown (a long poll looks again at each change)."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                or len(names) > 10 * MAX_OFFERS:
            raise InvalidRequest(f"'names' must be a list of at most {10 * MAX_OFFERS} names")
        mine = (TransferItem.peer == peer, one_of(self.db, TransferItem.name, names))
        unknown: set[str] = set()
        with self.db.read() as s:  # columns, not objects: the long poll asks often
            query = select(TransferItem.id, TransferItem.name, TransferItem.state,
                           TransferItem.size, TransferItem.attempts,
                           TransferItem.error).where(*mine)
            if finished_only:
                query = query.where(TransferItem.state.in_(_FINISHED_STATES))
            items = {i.name: i for i in s.execute(query)}
            if finished_only and not all_known and s.scalar(
                    select(func.count()).select_from(TransferItem)
                                          .where(*mine)) != len(set(names)):
                unknown = set(names) - set(s.scalars(select(TransferItem.name).where(*mine)))
        root = self._store_root() if self.store else None
        files = []
        for name in names:
            item = items.get(name)
            if item is None:
                if not finished_only or name in unknown:
                    files.append({"name": name, "state": UNKNOWN, "bytes": 0,
                                  "attempts": 0, "error": ""})
                continue
            done = item.size if item.state == TransferItemState.COMMITTED else 0
            # Progress of a large pull (small files arrive whole, a batch at a time).
            if item.state == TransferItemState.RECEIVING and root is not None \
                    and item.size > BATCH_FILE_MAX:
                part = self._part(root, item.id)
                done = part.stat().st_size if part.exists() else 0
            files.append({"name": name, "state": item.state, "bytes": done,
                          "attempts": item.attempts, "error": item.error})
        return {"files": files}

    # ----- pulls --------------------------------------------------------------------------
    def resume(self) -> list[int]:
        """At server start: pull again every item left queued or receiving that no other
        receiver holds (``_sweep``), and from now on take over those whose lease runs out
        (``_keep_leases``); the ids taken."""
        if self.store is None:
            return []
        self._discard_pushed_parts()
        taken = self._sweep(at_start=True)
        self._keep()
        return taken

    # ----- leases: one receiver pulls an item at a time -----------------------------------
    def _claim(self, item_ids: list[int], dead: Sequence[str] = ()) -> set[int]:
        """Take the lease of each item of ``item_ids`` still active and held by no other
        receiver under a live lease (nor by one of ``dead``); the ids taken. One conditional
        update: of replicas claiming one item at once exactly one wins (SQLite: one writer at
        a time; PostgreSQL: the second waits for the first's row lock and then finds the
        row held)."""
        if not item_ids:
            return set()
        self._keep()
        began = time.monotonic()
        with self.db.write() as s:
            now = lease_clock(s)
            free = or_(TransferItem.holder.is_(None), TransferItem.holder == self._holder,
                       TransferItem.lease_expires < now)
            won = set(s.scalars(
                update(TransferItem).where(
                    one_of(self.db, TransferItem.id, item_ids),
                    TransferItem.state.in_(ACTIVE_TRANSFER_ITEM_STATES),
                    or_(free, TransferItem.holder.in_(dead)) if dead else free)
                .values(holder=self._holder, lease_expires=self._expiry(now))
                .returning(TransferItem.id)
                .execution_options(synchronize_session=False)))
        self._stamp(won, began)
        return won

    def _expiry(self, now: Any) -> Any:
        return now + dt.timedelta(seconds=self.lease_s)

    def _stamp(self, item_ids: Iterable[int], began: float) -> None:
        """``item_ids`` are held here under leases taken or renewed at ``began``."""
        with self._lock:
            self._held.update(dict.fromkeys(item_ids, began))

    def _keep(self) -> None:
        """Start the thread that keeps this receiver's leases (once: at start, or at its
        first claim)."""
        with self._lock:
            if self._keeper is not None:
                return
            self._keeper = threading.Thread(target=self._keep_leases, daemon=True,
                                            name="hera-receive-leases")
        self._keeper.start()

    def _keep_leases(self) -> None:
        """Until the receiver stops: renew the leases of the items it pulls, and take over
        items whose lease ran out (their receiver died or lost the database), several times a
        lease. (Items queued here are not renewed, so that a backlog of thousands costs no
        update of them all every few seconds: a batch renews those whose lease is not surely
        held when it starts, and another replica may meanwhile take over one whose lease ran
        out, to pull it itself.)"""
        while not self._stop.wait(self.lease_s / 6):
            try:
                self._renew()
                self._sweep()
            except Exception as exc:  # the database away: the pulls stop (``_holding``)
                log.warning("transfer leases: %s: %s", type(exc).__name__, exc)

    def _renew(self) -> None:
        with self._lock:
            held = [item_id for item_id in self._held if item_id in self._running]
        if held:
            with self.db.write() as s:
                self._renew_held(s, held)

    def _renew_held(self, s: Any, item_ids: list[int]) -> list[int]:
        """Of ``item_ids``, those this receiver still holds, their leases renewed (in the
        session ``s``; one another receiver took over is not renewed, and its pull stops,
        ``_holding``)."""
        began = time.monotonic()
        held = list(s.scalars(
            update(TransferItem).where(one_of(self.db, TransferItem.id, item_ids),
                                       TransferItem.holder == self._holder)
            .values(lease_expires=self._expiry(lease_clock(s)))
            .returning(TransferItem.id).execution_options(synchronize_session=False)))
        with self._lock:  # (not one that left meanwhile)
            self._held.update((i, began) for i in held if i in self._held)
        return held

    def _surely_held(self, item_id: int) -> bool:
        """Whether this receiver's lease of ``item_id`` runs another half lease at least
        (taken or renewed here less than half a lease ago)."""
        return time.monotonic() - self._held.get(item_id, -math.inf) <= self.lease_s / 2

    def _holding(self, item: TransferItem | ItemRow) -> None:
        """Unavailable unless this receiver surely holds ``item`` (its lease not renewed for
        half a lease: the database unreachable, the keeper starved, the item taken over), so
        the pull stops writing before another replica may take the item over (and is tried
        again, under a lease renewed, ``_pull``, ``_start_batch``). A repair's pull
        (``pull_verified``: no item row, its own work path) holds no lease."""
        if item.id is not None and not self._surely_held(item.id):
            raise Unavailable("this receiver could not renew its lease of the item in time; "
                              "the pull stops and is tried again")

    def _sweep(self, at_start: bool = False) -> list[int]:
        """Pull every item queued or receiving that no other receiver holds under a live
        lease (``at_start``: nor one of this host whose process is gone), and this receiver's
        ``_orphans`` still active; the ids taken. (This receiver's own, their leases run out
        while they wait in its queue, stay there.)"""
        with self._lock:
            orphans, self._orphans = self._orphans, set()
        try:
            return self._take_free(orphans, at_start)
        except BaseException:  # (the database away: the orphans wait for the next sweep)
            with self._lock:
                self._orphans |= orphans
            raise

    def _take_free(self, orphans: set[int], at_start: bool) -> list[int]:
        by_peer: dict[str, list[tuple[int, int, bool]]] = {}
        dead: list[str] = []
        with self.db.read() as s:
            now = lease_clock(s)
            free = or_(TransferItem.holder.is_(None), (TransferItem.lease_expires < now)
                       & (TransferItem.holder != self._holder))
            if orphans:
                free = or_(free, one_of(self.db, TransferItem.id, orphans)
                           & (TransferItem.holder == self._holder))
            if at_start:
                dead = [holder for holder in s.scalars(
                    select(TransferItem.holder).distinct().where(
                        TransferItem.state.in_(ACTIVE_TRANSFER_ITEM_STATES),
                        TransferItem.holder.is_not(None)))
                        if holder is not None and local_worker_dead(holder)]
                if dead:
                    free = or_(free, TransferItem.holder.in_(dead))
            for i in s.execute(select(TransferItem.id, TransferItem.peer, TransferItem.size,
                                      TransferItem.spec).where(
                    TransferItem.state.in_(ACTIVE_TRANSFER_ITEM_STATES), free)
                    .order_by(TransferItem.id)):
                by_peer.setdefault(i.peer, []).append(
                    (i.id, i.size, bool(i.spec.get("is_directory"))))
        return sorted(i for peer, items in by_peer.items()
                      for i in self._dispatch(peer, items, dead))

    def _discard_pushed_parts(self) -> None:
        """Remove the partial files of pushes a stopped server left (no item names them: the
        sender sends such a push again whole). One of another server receiving into the store
        (a replica) may go too: its rename then fails and that member is answered ``retry``;
        nothing is ever renamed but a file its own push wrote (``_write_member``)."""
        try:
            incoming, _made = safefs.open_dir(str(self._store_root() / INCOMING_DIR))
        except (OSError, StagingError):  # none yet (or not a folder: nothing of ours there)
            return
        try:
            for name in os.listdir(incoming):
                if name.startswith("-") and name.endswith(".part"):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=incoming)
        finally:
            os.close(incoming)

    def _dispatch(self, peer: str, items: list[tuple[int, int, bool]],
                  dead: Sequence[str] = ()) -> set[int]:
        """Pull ``items`` ((id, size, is it a directory) each) of ``peer`` that this receiver
        can claim (``_claim``, ``dead`` as there; the others another receiver holds):
        directories and large files one by one, small flat files queued for batch pulls. The
        ids claimed."""
        claimed = self._claim([item_id for item_id, _size, _is_directory in items], dead)
        small = []
        for item_id, size, is_directory in items:
            if item_id not in claimed:
                continue
            if is_directory or size > BATCH_FILE_MAX:
                self._submit(item_id)
            else:
                small.append((item_id, size))
        if not small:
            return claimed
        with self._lock:
            if self._stop.is_set():
                return claimed
            queue = self._small.setdefault(peer, {})
            queue.update((i, size) for i, size in small if i not in self._running)
            self._again.update(i for i, _size in small if i in self._running)
            start = self._drainers < self._streams
            self._drainers += start
        if start:
            self._pool.submit(self._drain)
        return claimed

    def _drain(self) -> None:
        """Pull queued small files in batches until none is left: what several announces
        queued meanwhile goes in one batch (fewer syncs and transactions). A drainer keeps one
        client (a keep-alive connection) per peer for all its batches: a new session and
        connection a batch cost both sites a few percent of their CPU."""
        clients: dict[str, PeerClient] = {}
        try:
            while True:
                with self._lock:
                    item_ids = [] if self._stop.is_set() else self._take()
                    if not item_ids:
                        self._drainers -= 1
                        return
                try:
                    self._run_batch(item_ids, clients)
                except BaseException:
                    # Its place given back, and taken by a new drainer if files wait.
                    with self._lock:
                        again = any(self._small.values()) and not self._stop.is_set()
                        self._drainers -= not again
                    if again:
                        self._pool.submit(self._drain)
                    raise
        finally:
            for client in clients.values():
                client.close()

    def _take(self) -> list[int]:
        """The next batch from the queue of small files (the caller holds the lock)."""
        for queue in self._small.values():
            item_ids: list[int] = []
            total = 0
            while queue and len(item_ids) < BATCH_MAX_FILES and total < BATCH_MAX_BYTES:
                item_id = next(iter(queue))
                total += queue.pop(item_id)
                item_ids.append(item_id)
            if item_ids:
                self._running.update(item_ids)
                return item_ids
        return []

    def _submit(self, item_id: int) -> None:
        with self._lock:
            if item_id in self._running:  # (pulled again once that pull ends: ``_ran``)
                self._again.add(item_id)
                return
            if self._stop.is_set():
                return
            self._running.add(item_id)
        self._pool.submit(self._run, item_id)

    def _run(self, item_id: int) -> None:
        orphaned = False
        try:
            self._pull(item_id)
        except _Stopped:
            pass
        except Exception:  # a pull must never take the pool down
            log.exception("transfer item %d: unexpected failure", item_id)
            try:
                self._finish(item_id, TransferItemState.FAILED,
                             "internal error (see the server log)")
            except Exception as exc:  # the database away too: pulled again later
                orphaned = _unmarked([item_id], exc)
        finally:
            self._ran([item_id], orphaned)

    def _finish(self, item_id: int, state: str, error: str = "") -> None:
        """The item's end (committed or failed), its lease given up; nothing if another
        receiver holds it now (this one's lease ran out: the item is that one's to end)."""
        with self.db.write() as s:
            item = s.get(TransferItem, item_id)
            if item is not None and item.holder == self._holder:
                item.state, item.error, item.updated_at = state, error, utcnow()
                item.holder = item.lease_expires = None
        self._changed()

    def _changed(self) -> None:
        with self._lock:
            self.changes += 1

    def _pull(self, item_id: int) -> None:
        root = self._store_root()
        while True:
            if self._stop.is_set():
                raise _Stopped
            part = self._part(root, item_id)
            with self.db.write() as s:
                # Each attempt under this receiver's lease, renewed (none if another took it
                # over: its lease ran out here).
                if not self._renew_held(s, [item_id]):
                    return
                item = s.get(TransferItem, item_id)
                if item is None or item.state not in ACTIVE_TRANSFER_ITEM_STATES:
                    return
                item.state = TransferItemState.RECEIVING
                item.attempts += 1
                item.resumed_from = _resume_offset(part, item.size)
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
                    self._finish(item_id, TransferItemState.FAILED, exc.message)
                    return
                self._set_error(item_id, exc.message)
            except (Unavailable, OSError) as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                log.warning("transfer %s of %s from %s: %s", item.transfer, item.name, item.peer,
                            message)
                if item.attempts >= self.max_attempts:
                    self._finish(item_id, TransferItemState.FAILED, message)
                    return
                self._set_error(item_id, message)
                if self._stop.wait(min(self.backoff_s * 2 ** (item.attempts - 1), 60.0)):
                    raise _Stopped from None
            except StagingError as exc:  # conflict, unauthorized at the sender, bad request
                log.warning("transfer %s of %s from %s failed: %s", item.transfer, item.name,
                            item.peer, exc.message)
                self._finish(item_id, TransferItemState.FAILED, exc.message)
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
            if self.fsync:  # on disk (its attempt may have died before syncing it)
                sync_tree(str(dest))
                self._sync_folder(root, dest.parent)
            self._commit(item)
            return
        if item.spec.get("is_directory"):
            self._receive_directory(item, root, dest, algorithms)
            return
        # Folders opened without following a symlink, files never written through one.
        incoming, _made = safefs.open_dir(str(part.parent), create=True)
        with contextlib.closing(_Fd(incoming)):
            self._receive_file(item, root, part, dest, incoming, algorithms)
        try:
            self._commit(item)
        except Conflict:
            dest.unlink(missing_ok=True)
            raise

    def _receive_file(self, item: TransferItem, root: Path, part: Path, dest: Path,
                      incoming: int, algorithms: list[str]) -> None:
        """Pull into ``part`` (in the open folder ``incoming``), verify, link to ``dest``."""
        self._pull_file(item, part, incoming, algorithms)
        self._holding(item)  # (the partial file is this receiver's until it is linked)
        with safefs.Folders([str(root)]) as folders:
            # atomic; FileExistsError (an OSError) if something appeared
            os.link(part.name, dest.name, src_dir_fd=incoming,
                    dst_dir_fd=folders.get(str(dest.parent), create=True), follow_symlinks=False)
            if self.fsync:  # the new name on disk before the item is committed
                safefs.sync_folders([str(dest.parent)], [str(root)], folders)
        os.unlink(part.name, dir_fd=incoming)

    def _pull_file(self, item: TransferItem, part: Path, incoming: int,
                   algorithms: list[str]) -> None:
        """Pull ``item``'s bytes into ``part`` (in the open folder ``incoming``; resumed from
        what it holds, hashed again), then verify them: ChecksumMismatch unless they are the
        announced size and checksums."""
        hasher = ck.StreamHasher(algorithms)
        offset = _resume_offset(part, item.size, incoming)
        fd = os.open(part.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=incoming)
        try:
            os.ftruncate(fd, offset)
            if offset:
                with open(fd, "rb", closefd=False) as f:
                    while chunk := f.read(ck.CHUNK_SIZE):
                        hasher.update(chunk)
            if offset < item.size:
                self._pull_into(item, fd, offset, hasher)
        finally:
            os.close(fd)
        digest = hasher.digest()
        if digest.size != item.size or not ck.compare(digest.checksums, item.checksums):
            raise ChecksumMismatch(
                f"{item.name}: received {digest.size} bytes with checksums {digest.checksums}, "
                f"announced {item.size} bytes with {item.checksums}")

    def _pull_into(self, item: TransferItem, fd: int, offset: int,
                   hasher: ck.StreamHasher) -> None:
        """Pull ``item``'s bytes from ``offset`` on into ``fd``, hashing them as they come;
        synced before returning."""
        client = PeerClient(self.registry.peer(item.peer), self.registry.site_name)
        flip = os.environ.get(FLIP_ONCE_ENV)
        try:
            try:
                stream = client.content(item.name, offset)
            except StagingError as exc:
                if offset and exc.status == 416:
                    # The sender's file is shorter than what arrived before: it changed there.
                    raise ChecksumMismatch(f"{item.name}: the sender holds fewer than the "
                                           f"{offset} bytes received before; pulling again "
                                           f"from zero") from None
                raise
            try:
                writer = self._writer(fd, offset)
            except BaseException:
                stream.close()
                raise
            try:
                while True:
                    buffer = writer.buffer()
                    try:
                        if self._stop.is_set():
                            raise _Stopped
                        self._holding(item)
                        n = stream.fill(buffer)
                        if flip == item.name and item.name not in _flipped and n:
                            _flipped.add(item.name)
                            buffer[0] ^= 0xFF
                        with memoryview(buffer) as view:
                            hasher.update(view[:n])
                    except BaseException:  # the buffer goes back to the pool
                        writer.give_back(buffer)
                        raise
                    writer.write(buffer, n)
                    if n < len(buffer) or writer.failed:
                        break
                writer.close()
            except directio.Unsupported:
                # The store's file system took the flag and refused the first write: from now
                # on this receiver writes behind; this pull starts again from ``offset``.
                self._direct = False
                os.ftruncate(fd, offset)
                raise Unavailable("the receive store refuses direct writes: pulling again "
                                  "the ordinary way") from None
            finally:
                writer.abort()
                stream.close()
            os.fsync(fd)
        finally:
            client.close()

    def _writer(self, fd: int, offset: int) -> ChunkWriter:
        """Straight to the disk where the file system takes it, else in a thread of its own."""
        if self._direct:
            with contextlib.suppress(directio.Unsupported):
                return directio.DirectWriter(fd, offset)
        return ThreadWriter(fd, offset)

    def _sync_folder(self, root: Path, folder: Path) -> None:
        """The entries of ``folder`` (below ``root``) on disk, and the folder itself."""
        safefs.sync_folders([str(folder)], [str(root)])

    def _receive_directory(self, item: TransferItem, root: Path, dest: Path,
                           algorithms: list[str]) -> None:
        work = self._tree(root, item.id)
        tree = self._pull_tree(item, work, algorithms)
        if self.fsync:  # its files on disk before they take their final name
            sync_tree(str(tree))
        os.close(safefs.open_dir(str(dest.parent), create=True)[0])
        self._holding(item)
        try:
            rename_path_noreplace(str(tree), str(dest))  # FileExistsError if something appeared
        finally:
            remove_path(work)
        if self.fsync:
            self._sync_folder(root, dest.parent)
        try:
            self._commit(item)
        except Conflict:
            remove_path(dest)
            raise

    def _pull_tree(self, item: TransferItem, work: Path, algorithms: list[str]) -> Path:
        """Pull the data set ``item`` (a tar stream) into the folder ``work`` and verify it;
        returns the tree (``work/<name>``). On any failure ``work`` is removed."""
        remove_path(work)  # a broken tar pull starts again from zero
        work_fd, _made = safefs.open_dir(str(work), create=True)
        client = PeerClient(self.registry.peer(item.peer), self.registry.site_name)
        try:
            stream = _ChunkReader(client.chunks(item.name), self._stop)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    self._holding(item)
                    if member.name.split("/", 1)[0] != item.name:
                        raise ChecksumMismatch(f"{item.name}: the tar stream holds "
                                               f"{member.name!r}, outside the data set")
                    # Into the folder just opened, whatever its path holds meanwhile.
                    tar.extract(member, f"/proc/self/fd/{work_fd}", filter="data")
        except (tarfile.TarError, EOFError) as exc:
            remove_path(work)
            raise Unavailable(f"the tar stream of {item.name!r} broke: {exc}") from None
        except BaseException:
            remove_path(work)
            raise
        finally:
            client.close()
            os.close(work_fd)
        tree = work / item.name
        digest = ck.hash_directory(tree, algorithms) if tree.is_dir() else None
        if digest is None or digest.size != item.size or \
                not ck.compare(digest.checksums, item.checksums):
            remove_path(work)
            raise ChecksumMismatch(
                f"{item.name}: the received directory has "
                f"{'no tree' if digest is None else f'{digest.size} bytes, {digest.checksums}'}"
                f"; announced {item.size} bytes with {item.checksums}")
        return tree

    # ----- a verified pull for repair (catalogue/replicate.py) ----------------------------
    def pull_verified(self, peer: str, name: str, size: int, checksums: dict[str, str],
                      is_directory: bool, work: str) -> str:
        """Pull ``name`` from ``peer`` exactly as a transfer's pull does, and verify it against
        ``size`` and ``checksums``; the verified bytes end at the returned path (``work``
        itself for a file, a tree inside the folder ``work`` for a data set), for the caller
        to move into place and then remove ``work``. ``work`` must not exist; on any failure
        nothing is left there. Raises ChecksumMismatch, Unavailable, or the peer's refusal."""
        item = TransferItem(peer=peer, name=name, size=size, checksums=dict(checksums),
                            spec={"is_directory": is_directory}, transfer="repair", path="")
        algorithms = [ck.preferred_algorithm(checksums)]
        if is_directory:
            return str(self._pull_tree(item, Path(work), algorithms))
        part = Path(work)
        folder, _made = safefs.open_dir(str(part.parent), create=True)
        try:
            self._pull_file(item, part, folder, algorithms)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part.name, dir_fd=folder)
            raise
        finally:
            os.close(folder)
        return work

    def _commit(self, item: TransferItem) -> None:
        self.catalogue.register([file_spec(item, item.peer)], self.store, [item.path],
                                instance_events=self._received_events([item]))
        self._finish(item.id, TransferItemState.COMMITTED)
        log.info("transfer %s: %s from %s committed to %s:%s", item.transfer, item.name,
                 item.peer, self.store, item.path)

    # ----- batch pulls of small files -----------------------------------------------------
    def _run_batch(self, item_ids: list[int], clients: dict[str, PeerClient]) -> None:
        orphaned = False
        try:
            self._pull_batch(item_ids, clients)
        except _Stopped:
            pass
        except Exception:  # a pull must never take the pool down
            log.exception("transfer items %d..%d: unexpected failure", item_ids[0], item_ids[-1])
            try:
                with self.db.write() as s:
                    s.execute(update(TransferItem).where(
                        TransferItem.id.in_(item_ids), TransferItem.holder == self._holder,
                        TransferItem.state.in_(ACTIVE_TRANSFER_ITEM_STATES)).values(
                        state=TransferItemState.FAILED,
                        error="internal error (see the server log)",
                        updated_at=utcnow(), holder=None, lease_expires=None))
            except Exception as exc:  # the database away too: pulled again later
                orphaned = _unmarked(item_ids, exc)
            self._changed()
        finally:
            self._ran(item_ids, orphaned)

    def _ran(self, item_ids: list[int], orphaned: bool) -> None:
        """A pull of ``item_ids`` is over: those it could not mark failed (``orphaned``), and
        those dispatched again while it ran, go to ``_orphans``, for the keeper to pull again
        if they are still active (in the same step as they stop running: a sweep never finds
        one still running and drops it)."""
        with self._lock:
            self._running.difference_update(item_ids)
            for item_id in item_ids:
                self._held.pop(item_id, None)
            again = self._again.intersection(item_ids)
            self._again -= again
            self._orphans |= set(item_ids) if orphaned else again

    def _start_batch(self, item_ids: list[int]) -> list[ItemRow]:
        """Mark the items still active and still held by this receiver as receiving (one more
        attempt each); their rows (with the attributes of a TransferItem). Two statements,
        not an ORM object per item; a third (their leases renewed, those held no more left
        out) unless every lease was taken or renewed here less than half a lease ago."""
        with self.db.write() as s:
            if not all(self._surely_held(item_id) for item_id in item_ids):
                item_ids = self._renew_held(s, item_ids)
            return ItemRows(s).start(item_ids, utcnow(), self._parsed)

    def _pull_batch(self, item_ids: list[int], clients: dict[str, PeerClient]) -> None:
        """Pull the small items ``item_ids`` (of one peer) in batches until each is committed
        or failed; ``clients``: the drainer's clients by peer, reused across its batches."""
        root = self._store_root()
        pending, rounds = item_ids, 0
        while pending:
            if self._stop.is_set():
                raise _Stopped
            items = self._start_batch(pending)
            pending, rounds = [], rounds + 1
            alone: list[int] = []  # the single-file path: its final name is taken already
            wanted: dict[str, tuple[ItemRow, str]] = {}
            # Paths as strings, each folder confined once (not pathlib per file).
            folders: dict[str, str] = {}
            for item in items:
                folder, _, base = item.path.rpartition("/")
                try:
                    if folder not in folders:
                        folders[folder] = self._confine_folder(root, folder)
                    if base in ("", ".", ".."):
                        raise InvalidRequest(f"transfer path {item.path!r} names no file")
                except StagingError as exc:
                    self._finish(item.id, TransferItemState.FAILED, exc.message)
                    continue
                # No look at the final name first: the rename never replaces anything, and
                # one that finds the name taken sends the item down the single-file path.
                wanted[item.name] = (item, f"{folders[folder]}/{base}")
            retry: list[tuple[ItemRow, str]] = []
            broken = ""
            if wanted:
                incoming_fd, _made = safefs.open_dir(str(root / INCOMING_DIR), create=True)
                try:
                    # The incoming folder, opened before the batch's files are written:
                    # a quiet store's whole file system is synced through it once.
                    with self._syncer.batch(incoming_fd) as syncs:
                        received, broken = self._stream_batch(incoming_fd, wanted, syncs,
                                                              clients)
                        retry = self._commit_batch(str(root), incoming_fd, received, syncs,
                                                   alone)
                finally:
                    os.close(incoming_fd)
            # Members a broken stream did not deliver, and damaged ones: the next round.
            for item, _dest in wanted.values():
                if item.attempts >= self.max_attempts:
                    self._finish(item.id, TransferItemState.FAILED, broken or "no attempt left")
                else:
                    pending.append(item.id)
            for item, message in retry:
                if item.attempts >= self.max_attempts:
                    self._finish(item.id, TransferItemState.FAILED, message)
                else:
                    pending.append(item.id)
            if broken and pending:
                self._set_errors(pending, broken)
            for item_id in alone:
                self._pull(item_id)
            if broken and pending and self._stop.wait(
                    min(self.backoff_s * 2 ** (rounds - 1), 60.0)):
                raise _Stopped

    def _confine_folder(self, root: Path, folder: str) -> str:
        """The store's ``folder`` (relative) as an absolute path inside it (``confine``). A
        folder that is itself (no symlink on its way, as a receiver makes them) is confined
        once per receiver, not every batch (a ``realpath`` of each folder was 3-7% of a
        receiver's CPU): the renames open it below the store following no symlink
        (``make_final``), so one replaced by a link later is refused there all the same. One
        reached through a link is confined every batch: its link may change."""
        path = self._confined.get(folder)
        if path is None:
            path = str(confine(folder or ".", [root], what="transfer path"))
            if path == (f"{root}/{folder}" if folder else str(root)):
                if len(self._confined) >= _CONFINED_MAX:
                    self._confined.clear()
                self._confined[folder] = path
        return path

    def _stream_batch(self, incoming_fd: int, wanted: dict[str, tuple[ItemRow, str]],
                      syncs: SyncBatch, clients: dict[str, PeerClient]
                      ) -> tuple[list[_Member], str]:
        """Pull the members ``wanted`` names (removing each from it as it arrives), verify
        each and write the verified ones to their partial files in the open folder
        ``incoming_fd``, each handed to ``syncs`` as soon as it is written (unless the
        receiver does not sync); (per member that arrived: its ``_Member``; why the stream
        broke, or ""). The peer's client in ``clients`` is used and kept after a stream
        that ended as it should; after any other end it is closed and dropped (the next
        batch connects afresh, to the peer as configured then)."""
        received: list[_Member] = []
        first = next(iter(wanted.values()))[0]
        try:
            peer = self.registry.peer(first.peer)
        except StagingError as exc:  # no URL for the sender any more (configuration changed)
            for item, _dest in wanted.values():
                self._finish(item.id, TransferItemState.FAILED, exc.message)
            wanted.clear()
            return received, ""
        client = clients.pop(peer.name, None)
        if client is not None and client.peer != peer:  # its configuration changed
            client.close()
            client = None
        if client is None:
            client = PeerClient(peer, self.registry.site_name)
        kept = False
        try:
            for name, data, error in client.batch(list(wanted)):
                if self._stop.is_set():
                    raise _Stopped
                entry = wanted.get(name)
                if entry is None:
                    return received, f"the sender sent {name!r}, not asked for"
                item, dest = entry
                self._holding(item)
                del wanted[name]
                if error:
                    self._finish(item.id, TransferItemState.FAILED, f"the sender cannot serve it: "
                                 f"{error}")
                    continue
                received.append(self._write_member(incoming_fd, item, dest, data, syncs))
        except (Unavailable, OSError) as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.warning("batch pull of %d file(s) from %s: %s", len(wanted), first.peer, message)
            return received, message
        except StagingError as exc:  # refused at the sender (unauthorized, bad request)
            for item, _dest in wanted.values():
                self._finish(item.id, TransferItemState.FAILED, exc.message)
            wanted.clear()
            return received, ""
        else:
            kept = True
            clients[peer.name] = client
        finally:
            if not kept:
                client.close()
        if wanted:  # the stream ended without them
            return received, f"the sender's batch stream left out {len(wanted)} file(s)"
        return received, ""

    def _write_member(self, incoming_fd: int, item: ItemRow, dest: str,
                      data: bytes | memoryview, syncs: SyncBatch,
                      destinations: Destinations | None = None) -> _Member:
        """Verify one member of a batch (pulled or pushed) against its announced size and
        checksum and, only if it matches, write it to its partial file in the open folder
        ``incoming_fd`` or, given the batch's ``destinations``, nameless in its destination
        folder (``_write_nameless``; the partial file where that cannot be), handed to
        ``syncs`` as soon as it is written (unless the receiver does not sync); its
        ``_Member``, whose ``error`` says why it failed verification (nothing written then).
        OSError if the write fails."""
        flip = os.environ.get(FLIP_ONCE_ENV)
        if flip == item.name and item.name not in _flipped and data:
            _flipped.add(item.name)
            data = bytes([data[0] ^ 0xFF]) + bytes(data[1:])
        part = f"{item.id}.part"
        # Verified before anything is written: a damaged member costs no disk. One
        # digest of the fastest algorithm announced (no hasher objects per member).
        algorithm = ck.preferred_algorithm(item.checksums)
        digest = ck.hex_digest(data, algorithm)
        if len(data) != item.size or digest != item.checksums[algorithm]:
            message = (f"{item.name}: received {len(data)} bytes with checksums "
                       f"{ {algorithm: digest} }, announced {item.size} bytes with "
                       f"{item.checksums}")
            log.warning("transfer %s of %s from %s: %s", item.transfer, item.name,
                        item.peer, message)
            return _Member(item, part, dest, message)
        if destinations is not None and self._in_place:
            member = self._write_nameless(destinations, item, dest, data, syncs)
            if member is not None:
                return member
        # A pushed member's partial file is its own (a negative id: no item's), never one that
        # exists; a pulled one's may be left by an earlier attempt of its item: replaced.
        fd = _write_new(incoming_fd, part, data, exclusive=item.id < 0)
        if self.fsync:
            syncs.add(fd, part)
        else:
            os.close(fd)
        return _Member(item, part, dest, "")

    def _write_nameless(self, destinations: Destinations, item: ItemRow, dest: str,
                        data: bytes | memoryview, syncs: SyncBatch) -> _Member | None:
        """Write a verified member nameless (``O_TMPFILE``) in its destination folder (made
        as needed), its descriptor kept open until it is linked to its final name; its
        ``_Member``, or None where it cannot be and a partial file must do: a batch synced
        file by file or a folder on another file system than the store's (its one ``syncfs``
        would not cover it: ``durable.link_final``), no ``O_TMPFILE`` on the store's file
        system, or as many held as this process may (``FileSyncer.hold``). OSError if the
        write fails (nothing is left: the file has no name)."""
        if self.fsync and syncs.folder is None:
            return None
        folder, same = destinations.get(dest.rpartition("/")[0])
        if not same or not self._syncer.hold():
            return None
        fd = -1
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=folder)
            write_all(fd, data)
            key = str(item.id)  # (no name in any folder: its name among the syncs)
            if self.fsync:
                syncs.add(fd, key, keep=True)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            self._syncer.let_go()
            # EISDIR: a kernel without O_TMPFILE (it reads as O_DIRECTORY); EOPNOTSUPP: a
            # file system without it.
            if fd < 0 and isinstance(exc, OSError) and \
                    exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._in_place = False
                return None
            raise
        return _Member(item, key, dest, "", fd)

    def _commit_batch(self, root: str, incoming_fd: int, received: list[_Member],
                      syncs: SyncBatch, alone: list[int]) -> list[tuple[ItemRow, str]]:
        """Make the verified members final (``_make_final``), register them in one
        transaction and commit them with their events in one more; the members to pull
        again, with why. Members whose final name is taken go to ``alone``."""
        final, retry, taken = self._make_final(root, incoming_fd, received, syncs)
        alone += [m.item.id for m in taken]
        self._register_batch(final)
        return retry

    def _make_final(self, root: str, incoming_fd: int, received: list[_Member],
                    syncs: SyncBatch, destinations: Destinations | None = None
                    ) -> tuple[list[ItemRow], list[tuple[ItemRow, str]], list[_Member]]:
        """Put the verified members under their final names once their data is synced
        (``durable.make_final``: renames that never replace anything; ``durable.link_final``
        for those written nameless in ``destinations``: links that never replace anything;
        then the folders synced): (the items now final, to register; the members to receive
        again, with why; those whose final name is taken, or whose renames or links may not
        be on disk, for the single-file path, which registers what is there only if it is
        exactly what was announced)."""
        retry = [(m.item, m.error) for m in received if m.error]
        taken: list[_Member] = []
        if (pause := os.environ.get(PAUSE_BEFORE_SYNC_ENV)) and received and not _paused:
            _paused.append(True)
            Path(pause).write_text("whole" if syncs.folder is not None else "file-by-file")
            self._stop.wait(60)
        unsynced = syncs.wait()
        good: list[_Member] = []
        for member in received:
            if member.error:
                continue
            if member.item.id > 0 and not self._surely_held(member.item.id):
                # A pulled member's partial file is this receiver's until renamed, while its
                # lease surely lives (checked after the sync, however long that took): else
                # another receiver may have taken the item over, and the file is its now.
                retry.append((member.item, "its lease was not renewed in time"))
                continue
            error = unsynced.get(member.part)
            if error is None:
                good.append(member)
                continue
            # The disk failed or filled up: never renamed, received again.
            if member.fd < 0:
                with contextlib.suppress(OSError):
                    os.unlink(member.part, dir_fd=incoming_fd)
            retry.append((member.item, f"{type(error).__name__}: {error}"))
        final: list[ItemRow] = []
        if not good:
            return final, retry, taken
        syncer = self._syncer if self.fsync else None
        named = [m for m in good if m.fd < 0]
        nameless = [m for m in good if m.fd >= 0]
        try:
            errors = make_final(root, incoming_fd, [Rename(m.part, m.dest) for m in named],
                                syncer) if named else []
            if nameless:
                assert destinations is not None  # (only they write nameless files)
                errors += link_final(destinations, [Link(m.fd, m.dest) for m in nameless],
                                     syncer)
        except OSError as exc:  # the renames may not be on disk: the single path checks them
            log.warning("transfer batch: syncing the renames failed: %s", exc)
            return final, retry, good
        for member, error in zip(named + nameless, errors):
            if error is None:
                final.append(member.item)
                continue
            if member.fd < 0:
                with contextlib.suppress(OSError):
                    os.unlink(member.part, dir_fd=incoming_fd)
            if isinstance(error, FileExistsError):
                taken.append(member)
            else:
                retry.append((member.item, f"{type(error).__name__}: {error}"))
        return final, retry, taken

    def _register_batch(self, items: list[ItemRow]) -> None:
        if not items:
            return
        outcomes = self.catalogue.register_each(
            [file_spec(item, item.peer) for item in items], self.store,
            [item.path for item in items],
            instance_events=self._received_events(items))
        registered = []
        for item, outcome in zip(items, outcomes):
            if isinstance(outcome, StagingError):  # something registered meanwhile clashes
                self._remove_final(item.path)
                self._finish(item.id, TransferItemState.FAILED, outcome.message)
            else:
                registered.append(item)
        if not registered:
            return
        with self.db.write() as s:
            ItemRows(s).set_state([item.id for item in registered], TransferItemState.COMMITTED,
                                  "", utcnow())
        self._changed()
        log.info("transfer batch: %d file(s) from %s committed to %s", len(registered),
                 items[0].peer, self.store)

    # ----- pushes of small files (``POST push``) ------------------------------------------
    def push(self, peer: str, body: bytes) -> dict[str, Any]:
        """Receive a ``POST push`` (``protocol.py``) whole: its offers checked as an announce's
        and its framing against their sizes (InvalidRequest before anything is stored), then
        each file the receiver would pull verified on its own, written, synced, renamed into
        place, registered with its ``transfer-received`` event and recorded, once, as a
        committed item, the whole push as one batch; per file the answer."""
        head, data = split_push(body)
        transfer, offers, reply, refused = self._offered(peer, head)
        members: list[memoryview] = []
        at = 0
        for offer in offers:
            if offer.get("is_directory") or offer["size"] > PUSH_FILE_MAX:
                raise InvalidRequest(f"offer of {offer['name']!r}: a push carries flat files "
                                     f"of at most {PUSH_FILE_MAX} bytes")
            members.append(data[at:at + offer["size"]])
            at += offer["size"]
        if at != len(data):
            raise InvalidRequest(f"the push holds {len(data)} bytes after its announce, its "
                                 f"offers' sizes add up to {at}")
        if refused:
            return reply
        root = self._store_root()
        states: dict[str, str] = {}
        answers = self._answers(peer, offers, root, states)
        active = {name for name, state in states.items()
                  if answers[name][0] == SEND and state in ACTIVE_TRANSFER_ITEM_STATES}
        # A name pulled already for this peer (an earlier announce) keeps its pull, as an
        # announce of it would: never two writers of one file.
        pushed = [(o, m) for o, m in zip(offers, members)
                  if answers[o["name"]][0] == SEND and o["name"] not in active]
        taken = self._receive_pushed(peer, transfer, root, pushed, answers)
        pulled = [o for o in offers if o["name"] in active or o["name"] in taken]
        if pulled:
            self._dispatch(peer, self._record(peer, transfer, pulled, answers))
        reply["files"] = _replies(offers, answers)
        return reply

    def _receive_pushed(self, peer: str, transfer: str, root: Path,
                        pushed: list[tuple[dict[str, Any], memoryview]],
                        answers: dict[str, tuple[str, str]]) -> set[str]:
        """Write, sync, rename and register the files ``pushed`` (checked offers with their
        bytes), as a batch pull's members are, answering each in ``answers``; the names whose
        final path holds a file already (answered ``send``: the single-file path checks it)."""
        wanted: list[tuple[ItemRow, str, memoryview]] = []
        for offer, data in pushed:
            name = offer["name"]
            folder, _, base = offer["path"].rpartition("/")
            try:
                where = self._confine_folder(root, folder)
                if base in ("", ".", ".."):
                    raise InvalidRequest(f"transfer path {offer['path']!r} names no file")
            except StagingError as exc:
                answers[name] = (REFUSED, exc.message)
                continue
            # Its own partial file, whatever else receives the name (a negative id: no
            # item's), made final only by a rename that never replaces anything. Counted as
            # a pull counts its first attempt.
            item = ItemRow(next(self._push_ids), peer, name, transfer, offer["path"],
                           offer["size"], offer["checksums"], 1, spec_of(offer))
            wanted.append((item, f"{where}/{base}", data))
        if not wanted:
            return set()
        incoming_fd, _made = safefs.open_dir(str(root / INCOMING_DIR), create=True)
        received: list[_Member] = []
        try:
            with Destinations(str(root), incoming_fd) as destinations, \
                    self._syncer.batch(incoming_fd) as syncs:
                for item, dest, data in wanted:
                    try:
                        received.append(self._write_member(incoming_fd, item, dest, data,
                                                           syncs, destinations))
                    except OSError as exc:
                        answers[item.name] = (RETRY, f"writing it failed here: "
                                                     f"{type(exc).__name__}: {exc}")
                final, retry, taken = self._make_final(str(root), incoming_fd, received,
                                                       syncs, destinations)
        finally:
            # Nameless files not linked by now go with their descriptors (after ``syncs``
            # is through with them).
            for member in received:
                if member.fd >= 0:
                    os.close(member.fd)
                    self._syncer.let_go()
            os.close(incoming_fd)
        for item, message in retry:
            answers[item.name] = (RETRY, message)
        for member in taken:
            answers[member.item.name] = (SEND, "")
        self._register_pushed(final, answers)
        return {member.item.name for member in taken}

    def _register_pushed(self, items: list[ItemRow], answers: dict[str, tuple[str, str]]
                         ) -> None:
        """Register pushed files now under their final names (one ``register_each`` with
        their events) and record each as a committed item in the same transaction (a file is
        registered with its event and its committed row, or none of them: a restart between
        finds nothing half done); each answered in ``answers``."""
        if not items:
            return
        now = utcnow()
        outcomes = self.catalogue.register_each(
            [file_spec(item, item.peer) for item in items], self.store,
            [item.path for item in items],
            instance_events=self._received_events(items),
            also_write=lambda s, registered: ItemRows(s).put_committed(
                [items[i] for i in registered], now))
        registered = 0
        for item, outcome in zip(items, outcomes):
            if isinstance(outcome, StagingError):  # something registered meanwhile clashes
                self._remove_final(item.path)
                answers[item.name] = (CONFLICT, outcome.message)
            else:
                registered += 1
                answers[item.name] = (COMMITTED, "")
        if not registered:
            return
        self._changed()
        log.info("transfer push: %d file(s) from %s committed to %s", registered,
                 items[0].peer, self.store)

    def _remove_final(self, path: str) -> None:
        """Remove the file just renamed to ``path`` (relative to the store) whose registration
        clashed, through its folder opened below the store following no link (a folder
        swapped for a link meanwhile removes nothing elsewhere)."""
        folder, _, base = path.rpartition("/")
        root = str(self._store_root())
        with contextlib.suppress(OSError, StagingError), safefs.Folders([root]) as folders:
            os.unlink(base, dir_fd=folders.get(f"{root}/{folder}" if folder else root))

    def _received_events(self, items: Sequence[TransferItem | ItemRow]) -> list[InstanceEvent]:
        """The ``transfer-received`` event registered with each received file's instance, its
        payload's JSON text put together from its values' (``json.dumps``' own text of
        ``{"from", "transfer", "store", "path", "attempts"}``), the part the files of one
        peer's transfer share made once a batch."""
        heads: dict[tuple[str, str], str] = {}
        events: list[InstanceEvent] = []
        for item in items:
            head = heads.get((item.peer, item.transfer))
            if head is None:
                head = heads[item.peer, item.transfer] = (
                    f'{{"from": {json_string(item.peer)}, '
                    f'"transfer": {json_string(item.transfer)}, "store": {dumps(self.store)}, ')
            events.append(("transfer-received", f'{head}"path": {json_string(item.path)}, '
                                                f'"attempts": {int(item.attempts)}}}'))
        return events

    def _set_errors(self, item_ids: list[int], message: str) -> None:
        with self.db.write() as s:
            s.execute(update(TransferItem).where(TransferItem.id.in_(item_ids)).values(
                error=message, updated_at=utcnow()))

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._syncer.close()


def _unmarked(item_ids: list[int], exc: Exception) -> bool:
    """Log that the items of a failed pull could not be marked failed (they are pulled
    again: ``Receiver._ran``); True."""
    log.warning("transfer items %s: could not be marked failed (%s: %s); pulled again",
                item_ids[:10], type(exc).__name__, exc)
    return True


def _replies(offers: list[dict[str, Any]], answers: dict[str, tuple[str, str]]
             ) -> list[dict[str, str]]:
    """An announce's (or push's) ``files``: per offer its answer and message."""
    return [{"name": o["name"], "answer": answers[o["name"]][0],
             "message": answers[o["name"]][1]} for o in offers]


def _resume_offset(part: Path, size: int, folder: int | None = None) -> int:
    """Where a pull of a file of ``size`` bytes resumes, given its partial file ``part``: after
    the bytes it holds up to its first hole (parallel direct writes can finish out of order,
    so a pull that broke can leave a later block written and an earlier one not), from the
    last whole block (direct writes start on one; a partial block comes again); from zero if
    there is no partial file or it is longer than the file (or a symlink: never read through).
    ``folder``: the open folder of ``part``."""
    try:
        fd = os.open(part.name if folder is not None else part,
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except (FileNotFoundError, IsADirectoryError):
        return 0
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return 0
    try:
        held = os.fstat(fd).st_size
        if held > size:
            return 0
        with contextlib.suppress(OSError):  # a file system that cannot say: the size
            held = min(held, os.lseek(fd, 0, os.SEEK_HOLE))
    finally:
        os.close(fd)
    return held - held % directio.BLOCK


def _write_new(folder: int, name: str, data: bytes | memoryview, exclusive: bool = False) -> int:
    """Write ``data`` as the file ``name`` of the open ``folder`` (created or truncated; a
    symlink there is removed, never written through; with ``exclusive``, created only:
    FileExistsError if the name exists); its descriptor, still open (for its sync). A write
    that fails removes the file. Plain ``os`` calls: a batch writes thousands of small files,
    and a buffered file object costs more than the write."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | \
        (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(name, flags, 0o666, dir_fd=folder)
    except OSError as exc:
        if exc.errno != errno.ELOOP or exclusive:
            raise
        os.unlink(name, dir_fd=folder)
        fd = os.open(name, flags | os.O_EXCL, 0o666, dir_fd=folder)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):  # (a full disk: its space back at once)
            os.unlink(name, dir_fd=folder)
        raise
    return fd


class _Fd:
    """An open descriptor for ``contextlib.closing``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


class _ChunkReader(io.RawIOBase):
    """A read-only raw file over an iterator of byte chunks (what tarfile's stream mode reads
    from), stopping when the receiver stops."""

    def __init__(self, chunks: Iterator[memoryview], stop: threading.Event) -> None:
        super().__init__()
        self._chunks = chunks
        self._stop = stop
        #: What the last chunk holds beyond the last read (a view: taking from it copies nothing).
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._stop.is_set():
            raise _Stopped
        if not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(bytes(chunk))  # its buffer is reused for the next chunk
        with memoryview(buffer) as view:
            n = min(len(view), len(self._left))
            view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n
