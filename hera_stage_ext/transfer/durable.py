"""Making a receiver's batch of small files durable without flushing the whole file system.

A staging batch is made durable with ``syncfs`` (``jobs.methods.commit``), which writes back
every dirty page of the file system: on a store shared with other writers a batch of the
receiver paid for their data too, and most of the receiving server's CPU was the kernel's inside
it (``benchmarks/README.md``, issue 19). Here each file of a batch is synced by itself
(``fdatasync``) by a small pool of threads as soon as it is written (``FileSyncer.sync_and_close``),
so the syncs overlap the rest of the batch's stream and the file system's journal commits many
of them together; once a batch's files are synced they are renamed into place, never over an
existing name (``make_final``), and the folders that changed are synced (``fsync`` of each
destination folder, of every folder between it and the store, which may have been created just
now, and of the incoming folder), so the renames are on disk before the caller records
anything. What a batch syncs is its own files and folders, whatever else the file system holds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from .. import safefs

#: Threads syncing files: the journal commits what they wait for together, so more threads
#: mean fewer commits per file (measured on ext4: 8 threads about as fast as 16 or 64).
SYNC_THREADS = 8
#: Descriptors waiting for their sync at most (a stream waits for a slot beyond that): well
#: under the 1,024 a server process is often allowed.
MAX_OPEN = 128


class FileSyncer:
    """Syncs and closes descriptors handed to it, in threads of its own."""

    def __init__(self, threads: int = SYNC_THREADS, max_open: int = MAX_OPEN) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hera-sync")
        self._slots = threading.BoundedSemaphore(max_open)

    def sync_and_close(self, fd: int) -> Future[None]:
        """Sync the data of the open file ``fd`` and close it (whatever happens); the future
        raises the sync's error."""
        self._slots.acquire()
        try:
            return self._pool.submit(self._sync_and_close, fd)
        except RuntimeError:  # shut down (the server stops): synced here instead
            done: Future[None] = Future()
            try:
                self._sync_and_close(fd)
                done.set_result(None)
            except OSError as exc:
                done.set_exception(exc)
            return done

    def _sync_and_close(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
            self._slots.release()

    def sync_folders(self, fds: Iterable[int]) -> None:
        """``fsync`` each open folder of ``fds``, in the pool; raises the first error."""
        try:
            futures = [self._pool.submit(os.fsync, fd) for fd in fds]
        except RuntimeError:  # shut down
            for fd in fds:
                os.fsync(fd)
            return
        for future in futures:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


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
    with contextlib.ExitStack() as stack:
        folders: dict[str, int] = {}

        def folder(path: str, create: bool) -> int:
            if path not in folders:
                fd, _made = safefs.open_dir(path, create=create)
                stack.callback(os.close, fd)
                folders[path] = fd
            return folders[path]

        changed: set[str] = set()
        for i, (part, dest) in enumerate(renames):
            parent, _, base = dest.rpartition("/")
            try:
                safefs.rename_noreplace(incoming, part, folder(parent, True), base, dest)
            except OSError as exc:
                errors[i] = exc
                continue
            changed.add(parent)
        if syncer is None or not changed:
            return errors
        changed.update(ancestor for parent in list(changed)
                       for ancestor in _ancestors(root, parent))
        syncer.sync_folders([incoming] + [folder(path, False) for path in sorted(changed)])
    return errors


def sync_up_to(root: str, folder: int, path: str) -> None:
    """``fsync`` the open ``folder`` (at ``path``, below ``root``) and every folder between
    it and ``root``: a new name in it on disk, and the folder itself."""
    os.fsync(folder)
    for ancestor in _ancestors(root, path):
        fd, _made = safefs.open_dir(ancestor)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _ancestors(root: str, path: str) -> list[str]:
    """The folders from ``path``'s parent up to ``root`` (none when ``path`` is ``root``). A
    destination folder may have been created just now (here, or by another batch that has
    not synced it yet): its entry in its parent must reach the disk too."""
    out = []
    while path != root and path.startswith(root + "/"):
        path = os.path.dirname(path)
        out.append(path)
    return out


def sync_tree(path: str) -> None:
    """``fsync`` the file ``path``, or every file and folder of the tree ``path`` (a data set
    unpacked from a tar stream, a few files), never following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if not os.path.isdir(path) or os.path.islink(path):
        return
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            child = os.path.join(folder, name)
            if not os.path.islink(child):
                fd = os.open(child, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
