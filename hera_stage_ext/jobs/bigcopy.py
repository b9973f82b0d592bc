"""Large files: the kernel copies the bytes while a second thread checks the copy.

One stream copying one big file through user space (read, hash, write) keeps one core busy
and runs at about half the speed of ``cp``. Here the bytes go source to destination with
``os.copy_file_range`` (in the kernel, no trip through user space), piece by piece, and a
hashing thread (one of a pool, reused) follows right behind, reading each copied piece back
*from the destination* (the page cache: it was just written) into the stream's copy buffer
(idle meanwhile, so no memory is added) and feeding the checksum. So the check still covers
every byte of the copy (not of the source), and runs on the other core while the kernel
copies; ``xxhash`` and ``os.preadv`` release the GIL. Once a piece is hashed, its disk write
is started and older pieces leave the page cache (``writeback.WriteBehind``): the closing
``fsync`` (or the batch's ``syncfs``) then waits for the tail only, and a big stage does not
fill memory with dirty pages.

Where the kernel cannot copy between the two (another file system on an old kernel, a file
system without the call), ``copy`` returns None before writing anything and the caller uses
its ordinary pump.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable

from ..catalogue import checksums as ck
from ..writeback import WriteBehind

#: Files at least this big take this path (below it, handing the hashing to another thread
#: costs more than the second core gains).
MIN_SIZE = 8 << 20
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF,
                   errno.EPERM}

class _Threads:
    """Daemon threads that run the calls given to them, started as needed and kept for reuse:
    starting a thread for each file cost a scheduling round trip every time (``Thread.start``
    waits until the new thread runs; milliseconds when the machine is busy). Daemon threads, as
    the hashing threads were before, so a worker that exits mid-copy is never held up by them.
    A copier never waits for a hashing thread to start, only for its own hashing to end."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._serve, name="hera-stage-hash", daemon=True).start()
        self._calls.put(call)

    def _serve(self) -> None:
        while True:
            self._calls.get()()
            with self._lock:
                self._idle += 1


_hashing_threads = _Threads()


class _Hasher:
    """Hashes the destination up to what the copier has reported copied."""

    def __init__(self, fd: int, algorithm: str, buffer: bytearray, writeback: bool) -> None:
        self._fd = fd
        self._hasher = ck.StreamHasher([algorithm])
        self._buffer = buffer
        self._writeback = writeback
        self._cond = threading.Condition()
        self._copied = 0
        self._finished = False
        self._ended = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        _hashing_threads.submit(self._run)

    def join(self) -> None:
        self._ended.wait()

    def advance(self, copied: int, finished: bool = False) -> None:
        with self._cond:
            self._copied = copied
            self._finished = self._finished or finished
            self._cond.notify()

    def _run(self) -> None:
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
            if behind is not None:
                behind.finish(hashed)
        except BaseException as exc:  # noqa: BLE001 (raised in the copier's thread by digest)
            self.error = exc  # a read error, or a disk write's
        finally:
            self._ended.set()

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
