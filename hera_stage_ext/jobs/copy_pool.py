"""Helper processes that move batches of small items with the same ``Mover``, so that the
per-file Python work of a job of many small files runs on every core instead of queueing
behind one interpreter lock.

With files of a few KiB the copy itself is a handful of system calls; what limits a worker is
the Python around them, and threads cannot share that across cores. A worker therefore starts
``size`` helper processes once (from its main thread, so that ``PR_SET_PDEATHSIG`` ties each to
the worker's life: a SIGKILLed worker leaves no helper writing behind it), and a job's streams
check one out per batch of small items: the helper runs ``Mover.move`` (deferred: written and
verified under the temporary name) for each and sends back the outcomes; the stream records
them and its commit renames them, exactly as for items moved in the stream itself.

A stop flag per helper, set by the stream when its job is cancelled or loses its lease, is
checked between chunks like the in-thread check, so a cancel is seen within one file.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from ..errors import StagingError
from .methods import Cancelled, ItemFailed, ItemSpec, Mover, Outcome

_PR_SET_PDEATHSIG = 1


#: What became of one item in a helper: its outcome, or the error that failed it.
Moved = Outcome | BaseException


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _serve(conn: Connection, stop: Event, chunk_size: int, chunk_delay: float) -> None:
    """A helper's loop: receive a batch of specs, move them, send back one ``Moved`` each
    (fewer when stopped: the rest were not started)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when helpers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def check(_n: int) -> None:
        if stop.is_set():
            raise Cancelled()
        if chunk_delay:
            time.sleep(chunk_delay)

    mover = Mover(chunk_size, check, lambda _line: None, deferred=True)
    while True:
        try:
            specs: list[ItemSpec] | None = conn.recv()
        except (EOFError, OSError):
            return
        if specs is None:
            return
        mover.forget_folders()  # maybe another job's folders: look them up again
        results: list[Moved] = []
        for spec in specs:
            if stop.is_set():
                break
            try:
                results.append(mover.move(spec))
            except Cancelled:
                break
            except (ItemFailed, OSError, StagingError) as exc:
                results.append(exc)
            except Exception as exc:  # noqa: BLE001 - a bug fails its item, not the helper
                results.append(ItemFailed(f"internal error: {exc!r}"))
        conn.send(results)


class _Helper:
    def __init__(self, context: mp.context.BaseContext, chunk_size: int,
                 chunk_delay: float) -> None:
        self.conn, child = context.Pipe()
        self.stop = context.Event()
        self.process = context.Process(target=_serve, name="hera-stage-copy",
                                       args=(child, self.stop, chunk_size, chunk_delay),
                                       daemon=True)
        self.process.start()
        child.close()


class CopyPool:
    """``size`` helper processes, checked out one per batch by a job's streams."""

    def __init__(self, size: int, chunk_size: int, chunk_delay: float = 0.0) -> None:
        # Spawned (not forked): the worker has threads and database connections that a fork
        # would copy in an unknown state.
        context = mp.get_context("spawn")
        self.size = size
        self._all = [_Helper(context, chunk_size, chunk_delay) for _ in range(size)]
        self._free: queue.Queue[_Helper] = queue.Queue()
        for helper in self._all:
            self._free.put(helper)

    @contextlib.contextmanager
    def helper(self) -> Iterator[_Helper]:
        helper = self._free.get()
        helper.stop.clear()
        try:
            yield helper
        finally:
            self._free.put(helper)

    def move(self, specs: Sequence[ItemSpec], interrupt: Callable[[], bool]) -> list[Moved]:
        """Move ``specs`` in a helper; returns one ``Moved`` per item started (the rest were
        not: the caller puts them back in the queue). ``interrupt`` is asked while waiting:
        when it says so (a cancel, a lost lease, a store gone), the helper stops after the file
        in hand."""
        with self.helper() as helper:
            helper.conn.send(list(specs))
            while not helper.conn.poll(0.1):
                if interrupt():
                    helper.stop.set()
                if not helper.process.is_alive():
                    raise RuntimeError("a copy helper process died")
            return helper.conn.recv()

    def close(self) -> None:
        for helper in self._all:
            with contextlib.suppress(OSError, BrokenPipeError):
                helper.conn.send(None)
        for helper in self._all:
            helper.process.join(timeout=5)
            if helper.process.is_alive():
                helper.process.kill()
            helper.conn.close()


def default_size() -> int:
    return max(1, len(os.sched_getaffinity(0)))
