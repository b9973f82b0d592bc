"""Large files written straight to the disk (``O_DIRECT``) from reused, page-aligned buffers.

Written the ordinary way, every byte of a large file is first copied into the page cache, then
written back by the kernel, then (``writeback.WriteBehind``) dropped again; that copy alone was
over a third of the worker's CPU while staging, and the cache management is more. Written
directly, the disk's DMA reads the bytes from the writer's own buffer: on a 2 GiB file here,
as fast as the copy through the cache (the disk is the limit), with half the CPU (0.7 against
1.5 s). So a file written by a ``DirectWriter`` never enters the page cache, has nothing left
for the closing ``fsync`` to write but its last partial block and its metadata, and pushes no
one else's files out of memory.

The writer takes the buffers to fill from a small pool (``BUFFERS`` of ``CHUNK`` bytes for the
whole process, mapped on first need and kept: memory freshly mapped is slow to touch on these
machines) and writes each handed-back buffer in a thread of its own, at most ``DEPTH`` per file
at once, while the caller fills the next: reading and writing overlap. ``O_DIRECT`` transfers
whole blocks only, so every buffer but a file's last must be full; the last partial block is
written the ordinary way at the end. The descriptor's flags are restored when the writer ends.

Used by staging's large-file copy (``jobs/bigcopy.py``) and the transfer receiver's pull of a
large file (``transfer/receiver.py``). Linux (and other systems with ``O_DIRECT``); elsewhere,
and on file systems that refuse it, ``Unsupported`` sends the caller to its ordinary path.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Callable

#: ``O_DIRECT`` transfers whole blocks, from memory aligned to them (a page is aligned to any
#: block size a disk has).
BLOCK = 4096
#: Bytes per buffer (and per direct write), buffers one file may have in hand (one being
#: filled, the others being written) and buffers the whole process keeps. Measured on a 2 GiB
#: file, one stream and four: 4 to 16 MiB in two to four buffers all ran at the disk's speed
#: (1.4-1.9 GB/s here), 4 MiB a little slower; the pool caps the memory at 32 MiB whatever the
#: number of streams (a stream waits for a buffer: the disk is the limit anyway).
CHUNK = 8 << 20
DEPTH = 3
BUFFERS = 4
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Unsupported(Exception):
    """The file system takes no direct writes; nothing was written."""


class _Threads:
    """Daemon threads that run the calls given to them, started as needed and kept for reuse:
    starting a thread for each file cost a scheduling round trip every time (``Thread.start``
    waits until the new thread runs; milliseconds when the machine is busy). Daemon threads, so
    a process that exits mid-write is never held up by them."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._serve, name="hera-stage-io", daemon=True).start()
        self._calls.put(call)

    def _serve(self) -> None:
        while True:
            self._calls.get()()
            with self._lock:
                self._idle += 1


#: Threads for work that follows a large file's stream: direct writes, and the hashing
#: threads of ``bigcopy``'s kernel copies.
threads = _Threads()


class _Buffers:
    """The page-aligned buffers of direct writes, mapped on first need (up to ``count``)."""

    def __init__(self, size: int, count: int) -> None:
        self._size = size
        self._count = count
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._made = 0

    def get(self) -> mmap.mmap:
        with self._lock:
            make = self._free.empty() and self._made < self._count
            self._made += make
        if not make:
            return self._free.get()  # all in use: one comes back as soon as its write ends
        try:
            return mmap.mmap(-1, self._size)
        except BaseException:
            with self._lock:
                self._made -= 1
            raise

    def put(self, buffer: mmap.mmap) -> None:
        self._free.put(buffer)


_buffers = _Buffers(CHUNK, BUFFERS)


class DirectWriter:
    """Writes one file sequentially from ``start`` (a multiple of ``BLOCK``): take a buffer
    (``buffer``), fill it, hand it back with ``write``; ``close`` at the end (it raises the
    first write error), ``abort`` on the way out whatever happened (it waits for the writes
    under way and restores the descriptor). Raises ``Unsupported`` when the file system takes
    no direct writes."""

    def __init__(self, fd: int, start: int = 0) -> None:
        if start % BLOCK or not _O_DIRECT:
            raise Unsupported
        self._fd = fd
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | _O_DIRECT)
        except OSError:  # EINVAL: this file system has no direct I/O
            raise Unsupported from None
        self._offset = start
        self._tail = b""  # the last partial block, written the ordinary way by ``close``
        self._slots = threading.Semaphore(DEPTH)
        self._idle = threading.Condition()
        self._pending = 0
        self._restored = False
        self._wrote = False  # a direct write went through
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def buffer(self) -> mmap.mmap:
        """A buffer to fill (waits while ``DEPTH`` of this file's are being written)."""
        self._slots.acquire()
        try:
            return _buffers.get()
        except BaseException:
            self._slots.release()
            raise

    def write(self, buffer: mmap.mmap, length: int) -> None:
        """Write ``buffer[:length]`` next (in a writing thread). Only a file's last write may
        be shorter than the buffer; the buffer is the writer's again."""
        if self._tail:
            raise ValueError("a write after the file's last, partial block")
        whole = length - length % BLOCK
        if whole < length:
            with memoryview(buffer) as view:
                self._tail = bytes(view[whole:length])
        if whole and self.error is None:
            with self._idle:
                self._pending += 1
            offset = self._offset
            try:
                threads.submit(lambda: self._write(buffer, whole, offset))
            except BaseException:  # no thread to write it (the process is out of them)
                self._done(buffer)
                raise
        else:
            self.give_back(buffer)
        self._offset += length

    def give_back(self, buffer: mmap.mmap) -> None:
        """Return a buffer taken and not written (the stream feeding it broke)."""
        _buffers.put(buffer)
        self._slots.release()

    def _write(self, buffer: mmap.mmap, length: int, offset: int) -> None:
        try:
            if self.error is None:
                with memoryview(buffer) as whole:
                    pwrite_all(self._fd, whole[:length], offset)
                self._wrote = True
        except BaseException as exc:  # noqa: BLE001 (raised in the caller's thread by close)
            # Any error, not only the disk's: a write that did not happen must never pass for
            # one that did (the checksum, taken from the buffer, would still match).
            self.error = self.error or exc
        finally:
            self._done(buffer)

    def _done(self, buffer: mmap.mmap) -> None:
        self.give_back(buffer)
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def settle(self) -> None:
        """Wait for the writes under way."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def abort(self) -> None:
        """Wait for the writes under way and give the descriptor its flags back."""
        self.settle()
        if not self._restored:
            self._restored = True
            fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)

    def close(self) -> None:
        """Finish the file: wait for its writes, write the last partial block. Raises the
        first write error; ``Unsupported`` if the very first direct write was refused (an
        alignment this disk does not take: the caller starts again the ordinary way)."""
        self.abort()
        if self.error is not None:
            if isinstance(self.error, OSError) and self.error.errno == errno.EINVAL \
                    and not self._wrote:
                raise Unsupported from self.error
            raise self.error
        if self._tail:
            pwrite_all(self._fd, self._tail, self._offset - len(self._tail))
