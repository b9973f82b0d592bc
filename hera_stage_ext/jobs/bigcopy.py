"""Large files: copied with one core's worth of work or less, and every byte checked.

Two ways, the first wherever it works:

- **Written past the page cache** (``O_DIRECT``), when the copy is to be durable: the stream
  reads the source into one of a few reused, page-aligned buffers, hashes the buffer, and hands
  it to a writing thread that sends it to the disk straight from the buffer (the disk's DMA
  moves the bytes; no copy into the page cache, no dirty pages to write back, sync or drop
  later). The next buffer is read and hashed while earlier ones are written. The checksum covers
  exactly the bytes handed to the disk. Measured here on a 2 GiB file: as fast as the kernel
  copy below, with half its CPU (0.7 against 1.5 s), which is what a busy server sharing the
  machine with the worker notices. The last partial block (``O_DIRECT`` takes whole blocks
  only) is written the ordinary way at the end.
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
import fcntl
import mmap
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
#: ``O_DIRECT`` transfers whole blocks, from memory aligned to them (a page is aligned to any
#: block size a disk has).
_BLOCK = 4096
#: Bytes per direct write, buffers a copy may have in hand (one being read and hashed, the
#: others being written) and buffers the whole worker keeps. Measured on a 2 GiB file, one
#: stream and four: 4 to 16 MiB in two to four buffers all ran at the disk's speed (1.4-1.9
#: GB/s here), 4 MiB a little slower; the pool caps the memory at 32 MiB whatever the number
#: of streams (a stream waits for a buffer: the disk is the limit anyway).
DIRECT_CHUNK = 8 << 20
_DIRECT_DEPTH = 3
_DIRECT_BUFFERS = 4
_O_DIRECT = getattr(os, "O_DIRECT", 0)

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
                threading.Thread(target=self._serve, name="hera-stage-bigcopy", daemon=True).start()
        self._calls.put(call)

    def _serve(self) -> None:
        while True:
            self._calls.get()()
            with self._lock:
                self._idle += 1


#: The hashing threads of kernel copies and the writing threads of direct ones.
_threads = _Threads()


class _Buffers:
    """The page-aligned buffers of direct writes, mapped on first need (up to ``count``) and
    kept for the worker's life: memory freshly mapped is slow to touch on these machines, and
    the next large file needs them again."""

    def __init__(self, size: int, count: int) -> None:
        self._size = size
        self._count = count
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._made = 0

    def get(self) -> mmap.mmap:
        with self._lock:
            if self._free.empty() and self._made < self._count:
                self._made += 1
                return mmap.mmap(-1, self._size)
        return self._free.get()  # all in use: one comes back as soon as its write ends

    def put(self, buffer: mmap.mmap) -> None:
        self._free.put(buffer)


_buffers = _Buffers(DIRECT_CHUNK, _DIRECT_BUFFERS)


class _DirectWriter:
    """Writes one file's buffers in the pool's threads, at most ``_DIRECT_DEPTH`` at a time;
    the first error stops the rest and is kept for the copier."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._slots = threading.Semaphore(_DIRECT_DEPTH)
        self._idle = threading.Condition()
        self._pending = 0
        self.wrote = False  # a direct write went through
        self.error: OSError | None = None

    def buffer(self) -> mmap.mmap:
        self._slots.acquire()
        return _buffers.get()

    def release(self, buffer: mmap.mmap) -> None:
        _buffers.put(buffer)
        self._slots.release()

    def write(self, buffer: mmap.mmap, length: int, offset: int) -> None:
        with self._idle:
            self._pending += 1
        _threads.submit(lambda: self._write(buffer, length, offset))

    def _write(self, buffer: mmap.mmap, length: int, offset: int) -> None:
        try:
            if self.error is None:
                with memoryview(buffer) as whole:
                    view = whole[:length]
                    while view:
                        n = os.pwrite(self._fd, view, offset)
                        view, offset = view[n:], offset + n
                        self.wrote = True
        except OSError as exc:
            self.error = self.error or exc
        finally:
            self.release(buffer)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def wait(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)


def _read_full(fd: int, buffer: mmap.mmap, offset: int) -> int:
    """Fill ``buffer`` from ``offset`` (fewer bytes only at the end of the file): every direct
    write but the file's last must start on a block boundary."""
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
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:  # EINVAL: this file system has no direct I/O
        return None
    hasher = ck.StreamHasher([algorithm])
    writer = _DirectWriter(fd)
    offset = 0
    tail = b""  # the last partial block, written once the direct writes are done
    try:
        while True:
            buffer = writer.buffer()
            n = _read_full(fin, buffer, offset)
            with memoryview(buffer) as view:
                hasher.update(view[:n])
                whole = n - n % _BLOCK
                tail = bytes(view[whole:n])
            if whole:
                writer.write(buffer, whole, offset)
            else:
                writer.release(buffer)
            offset += n
            check(n)
            if n < len(buffer) or writer.error is not None:
                break
    finally:
        writer.wait()
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    if writer.error is not None:
        if writer.error.errno == errno.EINVAL and not writer.wrote:
            # Direct writes refused outright (an alignment this disk does not take).
            os.ftruncate(fd, 0)
            return None
        raise writer.error
    if tail:
        os.pwrite(fd, tail, offset - len(tail))
    return hasher.digest()


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
        _threads.submit(self._run)

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
         buffer: bytearray, durable: bool = True) -> ck.Digest | None:
    """Copy ``fin`` (from its start) to ``fd`` (empty, opened read-write), directly to the disk
    when the copy is to be ``durable`` and the file system takes it, else in the kernel with
    the destination hashed in a second thread; the digest of what was written. None when
    neither way works (nothing was written). ``check`` is called after every chunk copied (it
    raises to stop; the other threads are stopped too)."""
    if durable and _O_DIRECT:
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
