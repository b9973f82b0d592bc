"""Streaming writes of large files: disk writes started as the data comes, the page cache let go.

Written data sits dirty in the page cache until the kernel gets to it; a multi-gigabyte stage or
transfer left that way fills memory with dirty pages, makes the closing ``fsync`` wait for all of
them, and pushes everything else (the user's notebooks, the catalogue's database) out of the
cache, the kernel reclaiming pages in the middle of the writer's own allocations. So as a file
is written, every ``STEP`` bytes have their disk write started at once
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``), and the step ``DEPTH`` steps back, by then mostly
on disk, is waited for and dropped from the cache (``POSIX_FADV_DONTNEED``). So at most
``DEPTH`` steps of each file are in memory, and as many are in flight to the disk: with a
depth of one, a 2 GiB stage here took 1.2-2.4 s against 1.0-1.1 s with eight (a disk keeps
busier with many writes queued). The closing ``fsync`` (or a batch's ``syncfs``) waits for the
tail only, and is still what guarantees durability.

A write error seen while waiting is raised at once: the kernel reports it to one waiter only, so
the closing ``fsync`` would not see it again. A file that does not take ``sync_file_range`` (a
pipe, a file system without it) is just left to its closing sync.

Linux only; elsewhere nothing is started early and the closing sync does it all.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections import deque

#: Writes are started, and the cache let go, in steps of this many bytes.
STEP = 16 << 20
#: Steps of a file under way to the disk (and in memory) at once.
DEPTH = 8

_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)
#: Errors that mean the data did not reach the disk (anything else, such as a file system that
#: does not take the call, only means this file is left to its closing sync).
_WRITE_FAILED = {errno.EIO, errno.ENOSPC, errno.EDQUOT}


class WriteBehind:
    """Follows one file's writing: call ``advance`` with how many bytes (from ``start``) are
    written so far; it starts their disk writes a step at a time and drops older steps."""

    def __init__(self, fd: int, start: int = 0, step: int = STEP, depth: int = DEPTH) -> None:
        self._fd = fd
        self._step = step
        self._depth = depth
        self._started = start  # writes started up to here
        self._in_flight: deque[tuple[int, int]] = deque()  # (offset, length), oldest first
        self._works = _sync_file_range is not None

    def advance(self, written: int) -> None:
        if not self._works or written - self._started < self._step:
            return
        self._start(written)
        while self._works and len(self._in_flight) > self._depth:
            offset, length = self._in_flight.popleft()
            # Started ``depth`` steps ago: by now mostly on disk, so this rarely waits long.
            if self._call(offset, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER) \
                    and _DONTNEED is not None:
                os.posix_fadvise(self._fd, offset, length, _DONTNEED)

    def _start(self, written: int) -> None:
        if self._call(self._started, written - self._started, _WRITE):
            self._in_flight.append((self._started, written - self._started))
        self._started = written

    def _call(self, offset: int, length: int, flags: int) -> bool:
        """``sync_file_range``; False (and no more calls for this file) where the file system
        does not take it; raises when the data did not reach the disk."""
        if _sync_file_range is None:  # (``_works`` is False then: never called)
            return False
        if _sync_file_range(self._fd, offset, length, flags) == 0:
            return True
        err = ctypes.get_errno()
        if err in _WRITE_FAILED:
            raise OSError(err, f"writing to disk failed: {os.strerror(err)}")
        self._works = False
        return False

    def finish(self, written: int) -> None:
        """The file is complete at ``written`` bytes: start the disk writes of the rest at
        once, without waiting (its closing sync, often a batch's, then finds them under way;
        a file smaller than a step gets its writes started here only)."""
        if self._works and written > self._started:
            self._start(written)
