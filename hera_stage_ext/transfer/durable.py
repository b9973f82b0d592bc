"""Making a receiver's batch of small files durable, and final.

Two ways to get a batch's data on disk before its files take their final names, chosen per
batch (``FileSyncer.batch``). On a quiet machine, one ``syncfs`` of the file system the batch
was written on, as a staging commit does (``durability``: where that is as good): each file is
closed as soon as it is written and nothing else is asked of the kernel per file, and the
inode-table and folder blocks the batch's files share, and the disk's cache, are written once
for the batch instead of once a file. ``syncfs`` writes back every dirty page of the file
system, so where other writers hold much unwritten data a batch would wait for theirs too:
then (and where ``syncfs`` would not report a failed write-back: Linux before 5.8, or no
``syncfs``) each file is synced by itself (``fdatasync``) by a small pool of threads as soon
as it is written (``SyncBatch.add``), overlapping the rest of the batch's stream, whatever
else the file system holds (``benchmarks/README.md``, issue 19). Either way, once a batch's
files are synced they are renamed into place, never over an existing name (``make_final``), and
the folders that changed are synced (``fsync`` of each destination folder, of every folder
between it and the store, which may have been created just now: ``safefs.sync_folders``, the
rule staging commits use too; and of the incoming folder), so the renames are on disk before
the caller records anything.

In a batch synced whole, a pushed file is written nameless instead (``O_TMPFILE``) in its
destination folder (``Destinations``) and, once the batch's ``syncfs`` is through, linked to
its final name, never over anything, and the file system synced once more (``link_final``):
no partial name, no rename, no incoming folder, and nothing left by a kill at any point (a
nameless file goes with its last descriptor). The second ``syncfs``, not the folders' own
``fsync``, makes the links durable: a nameless file's inode went to the disk with no link,
and on a file system without a journal (ext2, ext4 without one) a folder's ``fsync`` writes
its entries but not the inodes they now name. Each descriptor stays open until its link
(``SyncBatch.add``'s ``keep``): ``FileSyncer.hold`` bounds how many are held at once, below
the process's descriptor limit. A batch synced file by file takes partial files as before
(each file's ``fdatasync`` writes its inode with its link).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from .. import safefs
from ..durability import sync_file_system, sync_written, syncfs_is_durable

#: Threads syncing files: the journal commits what they wait for together, so more threads
#: mean fewer commits per file (measured on ext4: 8 threads about as fast as 16 or 64).
SYNC_THREADS = 8
#: Files one thread syncs in a row: a task per file cost 25-40 us of Python a file (futures,
#: wake-ups), a task per 16 a few.
GROUP = 16
#: Descriptors waiting for their sync at most (a stream waits for a slot beyond that): well
#: under the 1,024 a server process is often allowed.
MAX_OPEN = 256
#: Nameless files (``O_TMPFILE``) held open until linked, at most, across a server's pushes
#: (8 held of 500 files each), and at most a quarter of the process's descriptor limit; a
#: member beyond that takes a partial file in the incoming folder (``FileSyncer.hold``).
HELD_MAX = 4096
#: A batch is synced with one ``syncfs`` only while the machine holds at most this much data
#: waiting for its disks (``unwritten_bytes``: every file system's, so a bound on what that
#: ``syncfs`` may write besides the batch). Measured on this project's VM (``benchmarks/README.md``,
#: sessions 10, 14 and 16): 1,000 x 4 KiB files in 100 folders took 0.09-0.28 s of ``syncfs``
#: with up to 113 MB dirty against 0.38-0.46 s of per-file syncs, and ``syncfs`` 0.03-0.95 s
#: with 100-430 MB dirty.
QUIET_BYTES = 64 << 20
#: After a failed ``syncfs`` batches are synced file by file for this many seconds: its error
#: may be another writer's on the same file system (it reports every failed write-back since
#: the folder was opened), and each round of a batch failed whole costs every member of it an
#: attempt, where file by file only the files that failed are pulled again.
WHOLE_PAUSE_S = 300.0


#: Test-only: the number ``unwritten_bytes`` reports instead of the machine's (a fault test
#: kills a receiver in a batch synced each way; either way is durable).
UNWRITTEN_ENV = "HERA_STAGE_TEST_UNWRITTEN_BYTES"


def unwritten_bytes() -> int:
    """Bytes the machine holds waiting to be written to its disks (``Dirty`` and ``Writeback``
    of ``/proc/meminfo``); the largest integer where that cannot be read."""
    if (forced := os.environ.get(UNWRITTEN_ENV, "")).isascii() and forced.isdigit():
        return int(forced)
    total = 0
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith((b"Dirty:", b"Writeback:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return sys.maxsize
    return total


class FileSyncer:
    """Syncs and closes descriptors handed to it, in threads of its own; at most ``MAX_OPEN``
    of them open at once. Each batch of files collects its own (``batch``)."""

    def __init__(self, threads: int = SYNC_THREADS, max_open: int = MAX_OPEN) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hera-sync")
        self._slots = threading.BoundedSemaphore(max_open)
        # When a batch's ``syncfs`` last failed (``WHOLE_PAUSE_S``); None: never.
        self.whole_failed_at: float | None = None
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        #: Places left for nameless files held open (``hold``): a count under a lock, taken
        #: and given back once a pushed file (a semaphore's pair of calls cost 0.8 us a file
        #: against 0.3).
        self._places = self._places_max = \
            HELD_MAX if limit == resource.RLIM_INFINITY else max(1, min(HELD_MAX, limit // 4))
        self._places_lock = threading.Lock()

    def batch(self, folder: int | None = None) -> SyncBatch:
        """A new batch. ``folder``: an open folder of the file system every file of the batch
        is written on, opened before any of them (``syncfs`` reports the write-back failures
        since its descriptor was opened): the batch is synced with one ``syncfs`` of it where
        that is as good (``durability.syncfs_is_durable``) and the machine is quiet
        (``QUIET_BYTES``), else file by file (and for a while after a failed ``syncfs``:
        ``WHOLE_PAUSE_S``)."""
        failed_at = self.whole_failed_at
        quiet = folder is not None and \
            (failed_at is None or time.monotonic() - failed_at >= WHOLE_PAUSE_S) and \
            unwritten_bytes() <= QUIET_BYTES and syncfs_is_durable(folder)
        return SyncBatch(self, folder if quiet else None)

    def reserve(self, wait: bool = True) -> bool:
        """Take a slot for one more open descriptor (with ``wait``, waits while all are
        taken); whether one was taken."""
        return self._slots.acquire(blocking=wait)

    def hold(self) -> bool:
        """Take a place for one more nameless file held open until it is linked (never
        waits); whether one was taken (give it back with ``let_go``)."""
        with self._places_lock:
            if self._places <= 0:
                return False
            self._places -= 1
            return True

    def let_go(self) -> None:
        with self._places_lock:
            if self._places >= self._places_max:  # (a place given back twice: never more)
                raise ValueError("FileSyncer.let_go: no place is held")
            self._places += 1

    def submit(self, group: list[tuple[int, str]]) -> Future[dict[str, OSError]]:
        """Sync and close each descriptor of ``group`` ((descriptor, name) each, a slot
        reserved for each), in one thread; the future gives the names whose sync failed."""
        try:
            return self._pool.submit(self._sync_and_close, group)
        except RuntimeError:  # shut down (the server stops): synced here instead
            done: Future[dict[str, OSError]] = Future()
            done.set_result(self._sync_and_close(group))
            return done

    def _sync_and_close(self, group: list[tuple[int, str]]) -> dict[str, OSError]:
        failed: dict[str, OSError] = {}
        for fd, name in group:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                failed[name] = exc
            finally:
                os.close(fd)
                self._slots.release()
        return failed

    def sync_folders(self, fds: Sequence[int]) -> None:
        """``fsync`` each open folder of ``fds``, in the pool (one task per thread, not per
        folder: a batch changes a hundred, and a future each cost more than its sync); raises
        the first error."""
        groups = [fds[i::self.threads] for i in range(min(self.threads, len(fds)))]
        try:
            futures = [self._pool.submit(_fsync_each, group) for group in groups]
        except RuntimeError:  # shut down
            _fsync_each(fds)
            return
        for future in futures:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _fsync_each(fds: Sequence[int]) -> None:
    for fd in fds:
        os.fsync(fd)


class SyncBatch:
    """The files of one batch being synced: ``add`` each as soon as it is written, ``wait``
    once all are. Used as a context manager, so that no descriptor stays open whatever
    happens on the way."""

    def __init__(self, syncer: FileSyncer, folder: int | None = None) -> None:
        self._syncer = syncer
        #: The open folder whose file system ``wait`` syncs whole; None: file by file.
        self.folder = folder
        self._group: list[tuple[int, str]] = []
        self._futures: list[Future[dict[str, OSError]]] = []
        #: Files closed, waiting for the ``syncfs`` (or whose close failed: the error).
        self._closed: dict[str, OSError | None] = {}

    def add(self, fd: int, name: str, keep: bool = False) -> None:
        """Sync the data of the open file ``fd`` (known as ``name``) and close it, whatever
        happens (synced file by file: waits while ``MAX_OPEN`` files are waiting for their
        sync; synced whole: closed now, synced at ``wait``). With ``keep`` (a batch synced
        whole only) it is left open, synced at ``wait``: a nameless file its caller links,
        then closes."""
        if self.folder is not None:
            if keep:
                self._closed[name] = None
                return
            try:
                os.close(fd)
            except OSError as exc:  # a file system that writes at close (NFS) and failed
                self._closed[name] = exc
            else:
                self._closed[name] = None
            return
        try:
            if not self._syncer.reserve(wait=False):
                # Every slot taken: this batch's own files go first, so the wait ends.
                self._flush()
                self._syncer.reserve()
        except BaseException:
            os.close(fd)
            raise
        self._group.append((fd, name))
        if len(self._group) >= GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._group:
            self._futures.append(self._syncer.submit(self._group))
            self._group = []

    def __enter__(self) -> SyncBatch:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:  # abandoned: none of its files will be made final
            self._closed.clear()
        self.wait()

    def wait(self) -> dict[str, OSError]:
        """Wait until every file added is synced and closed; the names whose sync failed,
        with the error (a failed ``syncfs``: every file added since the last ``wait``)."""
        if self.folder is not None:
            closed, self._closed = self._closed, {}
            failed = {name: error for name, error in closed.items() if error is not None}
            if len(failed) < len(closed):
                try:
                    sync_file_system(self.folder, "the receive store's file system")
                except OSError as exc:
                    self._syncer.whole_failed_at = time.monotonic()
                    return dict.fromkeys(closed, exc)
            return failed
        self._flush()
        failed = {}
        for future in self._futures:
            failed.update(future.result())
        self._futures = []
        return failed


class Rename(NamedTuple):
    """One verified, synced file to make final: ``part`` in the incoming folder to the
    absolute path ``dest`` (below the store's ``root``)."""

    part: str
    dest: str


def make_final(root: str, incoming: int, renames: Sequence[Rename],
               syncer: FileSyncer | None) -> list[OSError | None]:
    """Rename each file of ``renames`` from the open folder ``incoming`` to its destination
    (folders made as needed, none followed through a symlink), never over an existing name;
    then, with a ``syncer``, sync every folder that changed. Per rename None or the error that
    stopped it (FileExistsError: the name is taken; the partial file stays for the caller). An
    error syncing the folders is raised: the files are under their final names but may not be
    on disk, so the caller must not record them."""
    errors: list[OSError | None] = [None] * len(renames)
    with safefs.Folders([root]) as folders:
        changed: set[str] = set()
        for i, (part, dest) in enumerate(renames):
            parent, _, base = dest.rpartition("/")
            try:
                safefs.rename_noreplace(incoming, part, folders.get(parent, create=True), base,
                                        dest)
            except OSError as exc:
                errors[i] = exc
                continue
            changed.add(parent)
        if syncer is None or not changed:
            return errors
        # Every folder between a destination and the store too: one may have been created just
        # now (here, or by another batch that has not synced it yet).
        safefs.sync_folders(changed, [root], folders, syncer.sync_folders)
    os.fsync(incoming)
    return errors


class Destinations:
    """The destination folders of a push whose files are written in place (nameless, in the
    folder they are linked into): each opened once below the store's ``root`` following no
    link, made as needed (``safefs.Folders``), and whether it lies on the file system of the
    open folder ``synced``, through which the batch's ``syncfs`` goes (it covers only that
    one; a folder on another is written to as a batch pull's are). The root is opened first
    (``syncfs`` reports the write-back failures since its descriptor was opened). Used as a
    context manager: the folders are closed after."""

    def __init__(self, root: str, synced: int) -> None:
        self.root = root
        self.folders = safefs.Folders([root])
        self.folders.root_fd(root)  # (opened first: see above)
        self._synced_dev = os.fstat(synced).st_dev
        self._same: dict[str, bool] = {}

    def get(self, path: str) -> tuple[int, bool]:
        """(the open folder ``path``, made as needed; whether it is on the file system the
        batch's ``syncfs`` covers)."""
        fd = self.folders.get(path, create=True)
        same = self._same.get(path)
        if same is None:
            same = self._same[path] = os.fstat(fd).st_dev == self._synced_dev
        return fd, same

    def __enter__(self) -> Destinations:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.folders.close()


class Link(NamedTuple):
    """One verified, synced nameless file to make final: the open ``fd`` linked as the
    absolute path ``dest`` (below the store's root)."""

    fd: int
    dest: str


def link_final(destinations: Destinations, links: Sequence[Link],
               syncer: FileSyncer | None) -> list[OSError | None]:
    """Link each open nameless file of ``links`` (its data synced) to its destination (its
    folder opened below the store following no link), never over an existing name; then, with
    a ``syncer``, sync the store's file system (the links, the inodes they name, folders made
    on the way). Per link None or the error that stopped it (FileExistsError: the name is
    taken). An error syncing is raised: the files are under their final names but may not be
    on disk, so the caller must not record them."""
    errors: list[OSError | None] = [None] * len(links)
    folders = destinations.folders
    for i, (fd, dest) in enumerate(links):
        parent, _, base = dest.rpartition("/")
        try:
            safefs.link_open_file(fd, folders.get(parent, create=True), base)
        except OSError as exc:
            errors[i] = exc
    if syncer is not None and errors.count(None):
        try:
            sync_file_system(folders.root_fd(destinations.root),
                             "the receive store's file system")
        except OSError:
            syncer.whole_failed_at = time.monotonic()
            raise
    return errors


def sync_tree(path: str) -> None:
    """The received file ``path``, or every file and folder of the tree ``path`` (a data set
    unpacked from a tar stream), on disk (``durability.sync_written``), its folder opened
    without following a symlink."""
    folder, name = os.path.split(path)
    fd = safefs.open_dir(folder)[0]
    try:
        sync_written(fd, name, path)
    finally:
        os.close(fd)
