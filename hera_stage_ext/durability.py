"""When one ``syncfs`` makes a file system's new data durable, and the call itself.

A batch of many small files is made durable with one ``syncfs`` of the file system it was
written on (a staging commit, ``jobs.methods.commit``; a receiver's quiet batch,
``transfer.durable``) instead of an ``fsync`` a file, but only where that is as good:

- the kernel's ``syncfs`` reports a failed write-back (Linux 5.8 on; before, it returned 0
  regardless, and a lost page would be recorded as staged);
- the file system's ``syncfs`` asks it to persist the data (``SYNCFS_TYPES``: it implements the
  kernel's ``sync_fs``); a FUSE mount's hands the pages to its program without asking it to
  persist them, where ``fdatasync`` asks;
- and the descriptor given to it was opened before the batch's files were written (a
  ``Watch``): ``syncfs`` reports the write-back failures since its open file description was
  opened, once; a failure another process saw first is reported to no description opened
  after it, and one reported already is reported no more through the same description.

Elsewhere the callers sync file by file (``sync_written``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import stat

_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
#: Whether ``sync_file_system`` is one file system's ``syncfs`` (Linux), not ``os.sync``.
HAS_SYNCFS = _syncfs is not None


def sync_file_system(fd: int, what: str) -> None:
    """Flush every dirty page and the journal of the file system holding the open ``fd``
    (``what`` names it in the error): ``syncfs``, or ``os.sync`` where there is none."""
    if _syncfs is None:
        os.sync()
    elif _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}", what)


def _syncfs_reports_errors() -> bool:
    """Whether ``syncfs`` says when a write-back of its file system failed (Linux 5.8 on: any
    failure since the descriptor it is given was opened); before, it returned 0 regardless."""
    version = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return HAS_SYNCFS and version is not None and \
        (int(version[1]), int(version[2])) >= (5, 8)


SYNCFS_REPORTS_ERRORS = _syncfs_reports_errors()

#: File systems whose ``syncfs`` makes the data of their files durable (they implement the
#: kernel's ``sync_fs``). Any other, a FUSE mount above all, is synced file by file.
SYNCFS_TYPES = frozenset({"ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "overlay", "nfs",
                          "nfs4", "lustre", "gpfs", "tmpfs"})


def file_system_type(fd: int) -> str:
    """The type of the file system holding the open ``fd``, as ``/proc/self/mountinfo`` names
    it for the fd's device; "" where that cannot be told."""
    dev = os.fstat(fd).st_dev
    device = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if fields[2] == device:  # (then the optional fields, "-", the type)
                    return fields[fields.index("-", 6) + 1]
    except (OSError, ValueError, IndexError):
        pass
    return ""


def syncfs_is_durable(fd: int) -> bool:
    """Whether one ``sync_file_system(fd)`` makes the data written on ``fd``'s file system
    since ``fd`` was opened durable, and says when it is not (the first two conditions of the
    module's docstring; the third is the caller's)."""
    return SYNCFS_REPORTS_ERRORS and file_system_type(fd) in SYNCFS_TYPES


class Watch:
    """A folder of a destination's file system opened (a new open file description) before a
    batch's files are written there, for the ``syncfs`` that makes them durable. Spent once a
    ``syncfs`` through it failed: the failure is not reported through it again, and the
    files of a later batch written meanwhile are synced one by one instead."""

    def __init__(self, folder_fd: int) -> None:
        # ``open(".")`` below the folder, not ``dup``: a dup shares the description, and with
        # it the failures already reported.
        self.fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder_fd)
        self.spent = False

    @functools.cached_property
    def durable(self) -> bool:
        """``syncfs_is_durable`` of its file system, asked once (a run's watch serves each of
        its commits; the mount table need not be read again for each)."""
        return syncfs_is_durable(self.fd)

    def sync(self, what: str) -> None:
        """``sync_file_system`` through this watch; spent when it fails."""
        try:
            sync_file_system(self.fd, what)
        except OSError:
            self.spent = True
            raise

    def close(self) -> None:
        os.close(self.fd)


def sync_written(dir_fd: int, name: str, shown: str) -> None:
    """``fdatasync`` the file ``name`` in ``dir_fd``, or each file of the folder ``name`` (a data
    set) and the folders themselves, never following a symlink, never waiting on what the
    folder's owner may have put in a file's place (a FIFO: opened without blocking, and only
    regular files and folders are synced; a symlink holds no data of its own, its folder's
    ``fsync`` puts it on disk). Any folder or file that cannot be opened raises: nothing of a
    batch is renamed into place with part of it unsynced."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a socket (or a driverless
            return  # device): no data of ours
        exc.filename = shown
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.fdatasync(fd)
        elif stat.S_ISDIR(mode):
            with os.scandir(fd) as entries:
                names = [entry.name for entry in entries]
            for child in names:
                sync_written(fd, child, f"{shown}/{child}")
            os.fsync(fd)
    finally:
        os.close(fd)
