"""Large files: the kernel copies the bytes while a second thread checks the copy.

One stream copying one big file through user space (read, hash, write) keeps one core busy
and runs at about half the speed of ``cp``. Here the bytes go source to destination with
``os.copy_file_range`` (in the kernel, no trip through user space), piece by piece, and a
hashing thread follows right behind, reading each copied piece back *from the destination*
(the page cache: it was just written) into the stream's copy buffer (idle meanwhile, so no
memory is added) and feeding the checksum. So the
check still covers every byte of the copy (not of the source), and runs on the other core
while the kernel copies; ``xxhash`` and ``os.preadv`` release the GIL. Once a piece is hashed,
its disk write is started and older pieces leave the page cache (``writeback.WriteBehind``): the
closing ``fsync`` (or the batch's ``syncfs``) then waits for the tail only, and a big stage does
not fill memory with dirty pages.

Where the kernel cannot copy between the two (another file system on an old kernel, a file
system without the call), ``copy`` returns None before writing anything and the caller uses
its ordinary pump.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from ..catalogue import checksums as ck
from ..writeback import WriteBehind

#: Files at least this big take this path (below it, a thread per file costs more than the
#: second core gains).
MIN_SIZE = 8 << 20
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF,
                   errno.EPERM}

class _Hasher(threading.Thread):
    """Hashes the destination up to what the copier has reported copied."""

    def __init__(self, fd: int, algorithm: str, buffer: bytearray, writeback: bool) -> None:
        super().__init__(name="hera-stage-hash", daemon=True)
        self._fd = fd
        self._hasher = ck.StreamHasher([algorithm])
        self._buffer = buffer
        self._writeback = writeback
        self._cond = threading.Condition()
        self._copied = 0
        self._finished = False
        self.error: BaseException | None = None

    def advance(self, copied: int, finished: bool = False) -> None:
        with self._cond:
            self._copied = copied
            self._finished = self._finished or finished
            self._cond.notify()

    def run(self) -> None:
        hashed = 0
        behind = WriteBehind(self._fd) if self._writeback else None
        view = memoryview(self._buffer)
        try:
            while True:
                with self._cond:
                    while self._copied == hashed and not self._finished:
                        self._cond.wait()
                    copied, finished = self._copied, self._finished
                if copied == hashed and finished:
                    break
                while hashed < copied:
                    want = min(len(view), copied - hashed)
                    n = os.preadv(self._fd, [view[:want]], hashed)
                    if n == 0:  # shorter than copied: truncated under us; the size shows it
                        return
                    self._hasher.update(view[:n])
                    hashed += n
                    if behind is not None:
                        behind.advance(hashed)
                if finished and hashed >= copied:
                    break
        except OSError as exc:  # a read or disk-write error: re-raised in the copier's thread
            self.error = exc

    def digest(self) -> ck.Digest:
        self.join()
        if self.error is not None:
            raise self.error
        return self._hasher.digest()


def copy(fin: int, fd: int, algorithm: str, chunk_size: int, check: Callable[[int], None],
         buffer: bytearray, writeback: bool = True) -> ck.Digest | None:
    """Copy ``fin`` (from its start) to ``fd`` (empty, opened read-write) in the kernel,
    hashing the destination in a second thread; the digest of what ``fd`` holds. None when the
    kernel cannot copy between them (nothing was written). ``check`` is called after every
    ``chunk_size`` bytes (it raises to stop; the hashing thread is stopped too)."""
    offset = 0
    hasher: _Hasher | None = None
    try:
        while True:
            try:
                n = os.copy_file_range(fin, fd, chunk_size, offset, offset)
            except OSError as exc:
                if offset == 0 and exc.errno in _NO_KERNEL_COPY:
                    return None
                raise
            if n == 0:
                break
            offset += n
            if hasher is None:
                hasher = _Hasher(fd, algorithm, buffer, writeback)
                hasher.start()
            hasher.advance(offset)
            if hasher.error is not None:
                break  # raised by ``digest`` below
            check(n)
    finally:
        if hasher is not None:
            hasher.advance(offset, finished=True)
            hasher.join()
    if hasher is None:  # an empty file
        return ck.hash_bytes(b"", [algorithm])
    return hasher.digest()
