"""When one ``syncfs`` makes a file system's new data durable, and the call itself.

A batch of many small files is made durable with one ``syncfs`` of the file system it was
written on (a staging commit, ``jobs.methods.commit``; a receiver's quiet batch,
``transfer.durable``) instead of an ``fsync`` a file, but only where that is as good:

- the kernel's ``syncfs`` reports a failed write-back (Linux 5.8 on; before, it returned 0
  regardless, and a lost page would be recorded as staged);
- the file system's ``syncfs`` asks it to persist the data (``SYNCFS_TYPES``: it implements the
  kernel's ``sync_fs``); a FUSE mount's hands the pages to its program without asking it to
  persist them, where ``fdatasync`` asks;
- and the descriptor given to it was opened before the batch's files were written: ``syncfs``
  reports the write-back failures since its descriptor was opened, and a failure another
  process saw first is reported to no descriptor opened after it.

Elsewhere the callers sync file by file.
"""

from __future__ import annotations

import ctypes
import os
import re

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
