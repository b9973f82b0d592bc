"""Large files: copied with one core's worth of work or less, and every byte checked.

Two ways, the first wherever it works:

- **Written straight to the disk** (``directio``), when the copy is to be durable: the stream
  reads the source into one of the writer's page-aligned buffers, hashes the buffer and hands
  it to the writer, which sends it to the disk from that buffer while the next one is read;
  so the checksum covers exactly the bytes handed to the disk, and no copy of the file goes
  through the page cache (half the CPU of the kernel copy below, at the same speed).
- **Copied in the kernel, hashed back**: the bytes go source to destination with
  ``os.copy_file_range`` (no trip through user space), piece by piece, and a hashing thread (one
  of a pool, reused) follows right behind, reading each copied piece back *from the
  destination* (the page cache: it was just written) into the stream's copy buffer (idle
  meanwhile) and feeding the checksum, on the other core while the kernel copies; ``xxhash``
  and ``os.preadv`` release the GIL. When the copy is to be durable, once a piece is hashed
  its disk write is started and older pieces leave the page cache (``writeback.WriteBehind``):
  the closing ``fsync`` (or the batch's ``syncfs``) then waits for the tail only.

Where neither works (no ``O_DIRECT``, and no kernel copy between the two file systems on an
old kernel), ``copy`` returns None before writing anything and the caller uses its ordinary
pump.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable

from .. import directio
from ..catalogue import checksums as ck
from ..writeback import WriteBehind

#: Files at least this big take this path (below it, handing the hashing to another thread
#: costs more than the second core gains).
MIN_SIZE = 8 << 20
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF,
                   errno.EPERM}


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
        directio.threads.submit(self._run)

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


def _read_full(fd: int, buffer: mmap.mmap, offset: int) -> int:
    """Fill ``buffer`` from ``offset`` (fewer bytes only at the end of the file): every direct
    write but the file's last must be whole."""
    got = 0
    with memoryview(buffer) as view:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
    return got


def _copy_direct(fin: int, fd: int, algorithm: str,
                 check: Callable[[int], None]) -> ck.Digest | None:
    """The direct copy (see the module's docstring); None, with ``fd`` left empty, where the
    file system does not take direct writes."""
    hasher = ck.StreamHasher([algorithm])
    try:
        writer = directio.DirectWriter(fd)
    except directio.Unsupported:
        return None
    offset = 0
    try:
        while True:
            buffer = writer.buffer()
            try:
                n = _read_full(fin, buffer, offset)
                with memoryview(buffer) as view:
                    hasher.update(view[:n])
            except BaseException:  # a read error: the buffer goes back to the pool
                writer.give_back(buffer)
                raise
            writer.write(buffer, n)
            if not offset:
                # The first write says whether the disk takes direct writes at all: settled
                # before progress counts it (a refusal starts the copy again the other way).
                writer.settle()
            offset += n
            if writer.failed:
                break
            check(n)
            if n < len(buffer):
                break
        writer.close()
    except directio.Unsupported:
        os.ftruncate(fd, 0)
        return None
    finally:
        writer.abort()
    return hasher.digest()


def copy(fin: int, fd: int, algorithm: str, chunk_size: int, check: Callable[[int], None],
         buffer: bytearray, durable: bool = True) -> ck.Digest | None:
    """Copy ``fin`` (from its start) to ``fd`` (empty, opened read-write), directly to the disk
    when the copy is to be ``durable`` and the file system takes it, else in the kernel with
    the destination hashed in a second thread; the digest of what was written. None when
    neither way works (nothing was written). ``check`` is called after every chunk copied (it
    raises to stop; the other threads are stopped too)."""
    if durable:
        digest = _copy_direct(fin, fd, algorithm, check)
        if digest is not None:
            return digest
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
                hasher = _Hasher(fd, algorithm, buffer, durable)
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
