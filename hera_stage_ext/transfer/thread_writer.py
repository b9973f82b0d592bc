"""Writing a large pulled file in a thread of its own, where the store takes no direct writes.

The receiver writes a large file straight to the disk (``directio.DirectWriter``) where the
store's file system allows it; where it refuses, a ``ThreadWriter`` writes the file's chunks in
a thread of its own, so the disk write of one chunk overlaps the network read (and hash) of the
next, starting disk writes as it goes and letting the page cache go (``writeback.WriteBehind``,
which it uses: that class follows a file's writing, this one does the writing). Both take the
same calls (``ChunkWriter``).
"""

from __future__ import annotations

import mmap
import threading
from queue import Queue
from typing import Protocol

from .. import directio
from ..writeback import WriteBehind
from .protocol import CHUNK

#: Chunks (of ``protocol.CHUNK``) waiting for the disk while the next ones arrive.
QUEUED = 1


class ChunkWriter(Protocol):
    """Writes one file sequentially: take a buffer (``buffer``), fill it, hand it back with
    ``write`` (or ``give_back`` unwritten); ``close`` at the end raises the first write error,
    ``abort`` on the way out whatever happened."""

    @property
    def failed(self) -> bool: ...

    def buffer(self) -> mmap.mmap: ...

    def give_back(self, buffer: mmap.mmap) -> None: ...

    def write(self, buffer: mmap.mmap, length: int) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class ThreadWriter:
    """Writes a file's chunks from ``offset`` on in a thread of its own. A write error stops
    the writing, is raised by ``close``, and the rest is drained unwritten so the reader never
    blocks on a dead writer."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._written = offset
        self._behind = WriteBehind(fd, offset)
        # One being filled, ``QUEUED`` queued, one being written: each buffer is free again by
        # the time it comes round. Anonymous maps, as ``DirectWriter``'s buffers.
        self._pool = [mmap.mmap(-1, CHUNK) for _ in range(QUEUED + 2)]
        self._turn = 0
        self._queue: Queue[memoryview | None] = Queue(maxsize=QUEUED)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="write-behind")
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                directio.pwrite_all(self._fd, chunk, self._written)
                self._written += len(chunk)
                self._behind.advance(self._written)
            except BaseException as exc:  # noqa: BLE001 (raised in the reader's thread)
                self.error = exc

    def buffer(self) -> mmap.mmap:
        self._turn = (self._turn + 1) % len(self._pool)
        return self._pool[self._turn]

    def give_back(self, buffer: mmap.mmap) -> None:
        pass  # the pool turns regardless

    def write(self, buffer: mmap.mmap, length: int) -> None:
        self._queue.put(memoryview(buffer)[:length])

    def abort(self) -> None:
        """Let the thread end once the chunks queued so far are written (or dropped)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Wait for every queued chunk to be written; raise a write error."""
        self.abort()
        if self.error is not None:
            raise self.error
