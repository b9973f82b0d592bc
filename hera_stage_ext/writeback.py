"""Streaming writes of large files: disk writes started as the data comes, the page cache let go.

Written data sits dirty in the page cache until the kernel gets to it; a multi-gigabyte stage or
transfer left that way fills memory with dirty pages, makes the closing ``fsync`` wait for all of
them, and pushes everything else (the user's notebooks, the catalogue's database) out of the
cache, the kernel reclaiming pages in the middle of the writer's own allocations. So as a file
is written, every ``STEP`` bytes have their disk write started at once
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``), and the step before that one, by then mostly on
disk, is waited for and dropped from the cache (``POSIX_FADV_DONTNEED``). At most two steps of
each file are in memory; the closing ``fsync`` (or a batch's ``syncfs``) waits for the tail only,
and is still what guarantees durability. A write error seen while waiting is raised at once:
the kernel reports it to one waiter only, so the closing ``fsync`` would not see it again.

Linux only; elsewhere nothing is started early and the closing sync does it all.
"""

from __future__ import annotations

import ctypes
import os

#: Writes are started, and the cache let go, in steps of this many bytes.
STEP = 16 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


class WriteBehind:
    """Follows one file's writing: call ``advance`` with how many bytes (from ``start``) are
    written so far; it starts their disk writes a step at a time and drops older steps."""

    def __init__(self, fd: int, start: int = 0, step: int = STEP) -> None:
        self._fd = fd
        self._step = step
        self._started = start  # writes started up to here
        self._dropped = start  # on disk and out of the cache up to here

    def advance(self, written: int) -> None:
        if _sync_file_range is None or written - self._started < self._step:
            return
        _call(self._fd, self._started, written - self._started, _WRITE)
        if self._started > self._dropped:
            # The previous step: its writes were started a step ago, so this rarely waits long.
            length = self._started - self._dropped
            _call(self._fd, self._dropped, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
            if _DONTNEED is not None:
                os.posix_fadvise(self._fd, self._dropped, length, _DONTNEED)
            self._dropped = self._started
        self._started = written

    def finish(self, written: int) -> None:
        """The file is complete at ``written`` bytes: start the disk writes of the rest at
        once, without waiting (its closing sync, often a batch's, then finds them under way;
        a file smaller than a step gets its writes started here only)."""
        if _sync_file_range is not None and written > self._started:
            _call(self._fd, self._started, written - self._started, _WRITE)
            self._started = written


def _call(fd: int, offset: int, length: int, flags: int) -> None:
    if _sync_file_range(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"writing to disk failed: {os.strerror(err)}")
