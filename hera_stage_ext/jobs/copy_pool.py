"""Helper processes that move hand-overs of small items with the same ``Mover`` and make them
final themselves, so that the per-file work of a job of many small files runs on every core
instead of queueing behind one interpreter lock.

With files of a few KiB the copy itself is a handful of system calls; what limits a worker is
the Python around them, and threads cannot share that across cores. So everything done per file
happens in a helper: the copy and its verification under the temporary name, the job-log line,
and the rename. A hand-over is made final as the engine's own commits are (``methods.commit``:
one ``syncfs`` for the data, the renames, an ``fsync`` of the folders they changed), so its files are on disk under
their final names when the helper replies, and the worker only records the results (in bulk, at
its next commit). A worker killed at any point leaves what an engine commit would: temporary
files (removed on resume) and final files not yet recorded (found verified on resume, not
copied again).

Each helper pipelines: its main thread writes hand-over k+1 while a second thread syncs and
renames hand-over k and those before it (the waits for the disk release the interpreter lock),
so both cores keep copying; the worker keeps up to ``DEPTH`` hand-overs in flight per helper, and one reader thread
per helper routes the replies to the waiting streams. A third thread of the helper receives the
hand-overs as they are sent (``_Inbox``), so that a stream's send never waits for the writer.
A stream sends its next hand-over while its last is in flight (``submit_ahead``), so that the
helpers have the next ones to write while they sync; a helper writes those after every other
it holds, so they never hold up another job's.

The worker starts the helpers from one long-lived thread of the pool (``PR_SET_PDEATHSIG`` ties
a child to the thread that started it): a SIGKILLed worker leaves no helper writing behind it,
and a helper that dies (killed, out of memory) is replaced; the hand-over it had is reported as
lost (``HelperDied``) for the engine to redo. The helpers start with the first hand-over; one
that cannot be started (a process limit) fails that hand-over the same way, and a later one
tries again (where some started: once they have no room).

A hand-over is stopped (a cancel, a lost lease, a store gone) through shared memory: each
hand-over in flight has a slot of its helper's (``_Helper.stops``), which the stream stopping it
sets to its request id; the helper checks its slot before every file and between chunks, so a
cancel is seen within one file, and it stops that hand-over only (a mark "every request up to
N" stopped a hand-over sent ahead, written after later ones, when another job stopped).
While it writes a hand-over, a helper reports the bytes written so far about every
``PROGRESS_SECONDS`` (the job's progress between commits: ``progress.InFlight``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import datetime as dt
import gc
import itertools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..durability import Watch
from ..errors import StagingError
from ..safefs import Pin
from .joblog import log_bytes
from .methods import NO_DATA, Cancelled, ItemFailed, ItemSpec, Mover, Outcome, commit

_PR_SET_PDEATHSIG = 1
#: Hand-overs in flight per helper: one being written, the others being synced and renamed.
DEPTH = 4
#: A helper reports a hand-over's bytes written about this often.
PROGRESS_SECONDS = 0.25

#: What became of one item of a hand-over: None (copied, verified and final under its name),
#: an Outcome (skipped: already there) or the error that failed it.
Moved = Outcome | BaseException | None


class HandOver(NamedTuple):
    """What a helper gets: items of one run of a job, and where their log lines go."""

    run: str  # one worker's run of one job (a resumed job is another run)
    log_path: str
    fsync: bool
    specs: list[ItemSpec]
    rels: list[str]  # each item's destination path as the log names it
    # The job's destination and its identity when the job took it: the helper opens it itself
    # (no symlink followed) and refuses it when it is another folder now (``safefs.Pin``).
    root: Pin | None = None
    # Sent by a stream ahead of its hand-over in flight (``CopyPool.submit_ahead``): a
    # helper writes every other hand-over it holds first, so another job's (or stream's) never
    # waits behind it.
    ahead: bool = False

    def __reduce__(self) -> tuple[Callable[..., HandOver], tuple[Any, ...]]:
        # Sent by columns (one tuple per field of the specs, transposed in C): half the
        # worker's time per item of pickling each spec as a named tuple of its own. The
        # paths (sources, finals, ``rels``) go as one string a column (``_joined``): pickle
        # remembers every object it writes, and a hand-over's thousands of path strings grew
        # that table past what the cache holds (a worker's run: 0.69 -> 0.52 us an item to
        # pickle; 1,024 items alone 0.26-0.89 -> 0.17-0.23; benchmarks/README.md, session 16).
        columns = tuple(zip(*self.specs))
        return _hand_over, (self.run, self.log_path, self.fsync, _joined(self.rels), self.root,
                            tuple(_joined(column) if k in _PATH_COLUMNS else column
                                  for k, column in enumerate(columns)), self.ahead)


#: The columns of ``ItemSpec`` sent joined (``_joined``): source and final.
_PATH_COLUMNS = (0, 1)


def _joined(column: Sequence[Any]) -> str | Sequence[Any]:
    """``column`` as one string, its values joined by NUL, when they are strings and none
    holds a NUL (a path cannot); otherwise as it is (``_split`` tells the two apart: a
    column is never a string)."""
    try:
        text = "\0".join(column)
    except TypeError:  # (a ``Path``, not a string)
        return column
    return text if text.count("\0") == len(column) - 1 else column


def _split(column: str | Sequence[Any]) -> Sequence[Any]:
    return column.split("\0") if type(column) is str else column


def _hand_over(run: str, log_path: str, fsync: bool, rels: str | list[str], root: Pin | None,
               columns: tuple[str | tuple[Any, ...], ...], ahead: bool = False) -> HandOver:
    specs = list(map(tuple.__new__, itertools.repeat(ItemSpec), zip(*map(_split, columns))))
    return HandOver(run, log_path, fsync, specs, list(_split(rels)), root, ahead)


class HelperDied(RuntimeError):
    """The helper died with the hand-over in hand: none of its results are known (its
    temporary folders, named with its ``pid``, are the caller's to remove)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def _die_with_parent(parent: int) -> None:
    """Be killed when the worker dies; exit now if it already has. A helper starts (imports)
    for a while: a worker killed meanwhile sent no signal to it, and the hand-overs it had
    sent still wait in the pipe. Written after its death, they would land beside the next
    worker's resume (its temporary folders after it removed those it found)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _append(log_path: str, text: str) -> None:
    """Append to a job's log in one write (O_APPEND: whole lines, whoever else writes), its
    control characters escaped as every log's are (``joblog.log_bytes``)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        data = memoryview(log_bytes(text))
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _finish(conn: Connection, jobs: queue.Queue[Any], send_lock: threading.Lock) -> None:
    """The committing thread of a helper: log, sync, rename, sync, reply, in order. It
    commits the written hand-overs as soon as it is free, all those waiting together; the
    streams keep the writing thread busy meanwhile (each sends its next hand-over ahead,
    ``CopyPool.submit_ahead``). (It used to hold a commit back while the next hand-over was
    being written, to sync less often: with the streams one hand-over at a time, that left the
    writing thread idle during each sync; benchmarks/README.md, session 17.)"""
    while True:
        batch = [jobs.get()]
        with contextlib.suppress(queue.Empty):
            while batch[-1] is not None:
                batch.append(jobs.get_nowait())
        last = batch[-1] is None
        batch = [job for job in batch if job is not None]
        if batch:
            try:
                _make_final(batch)
            except Exception as exc:  # noqa: BLE001 - the folders' sync failed, or a folder
                # was swapped: none of the batch's items may be recorded (those renamed into
                # place are found and verified by a later run), and each stream is answered.
                for _request, _hand, results, renames, _watch in batch:
                    for i, *_rest in renames:
                        results[i] = exc if isinstance(exc, OSError) else \
                            ItemFailed(f"internal error: {exc!r}")
            finally:
                for *_rest, watchers in batch:
                    for watcher in watchers:
                        watcher.close()
        for request, _hand, results, *_rest in batch:
            with send_lock:
                conn.send((request, results))
        if last:
            return


def _make_final(batch: list[tuple[int, HandOver, list[Moved], list[tuple[int, str, str, str]],
                                 list[Watch]]]) -> None:
    """Make the written hand-overs of ``batch`` final together (``methods.commit``, through
    each hand-over's ``Mover.watch``), their lines in the job's log first; an item the commit
    failed gets its error in its results."""
    # The lines first: a copy under its final name always has its line in the log (a link
    # of one file is made under its final name at once: after a kill before its line, the
    # retried job finds it there and skips it as the same link).
    # (The engine's log lines' form; not catalogue.models.utcnow: no SQLAlchemy in here.)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    stamp = f"{now.isoformat(timespec='milliseconds')}Z  "
    for _request, hand, _results, renames, _watch in batch:
        if renames:
            rels, specs = hand.rels, hand.specs
            head = f"{stamp}{specs[0].method} "
            lines = [f"{head}{rels[i]} ({specs[i].size} bytes{', ' + note if note else ''})\n"
                     for i, _tmp, _final, note in renames]
            with contextlib.suppress(OSError):  # a log that cannot be written stops no copy
                _append(hand.log_path, "".join(lines))
    fsync = any(hand.fsync for _request, hand, *_rest in batch)
    roots = {hand.root for _request, hand, *_rest in batch if hand.root}
    # Hard links wrote no data: only their folders' entries are to sync.
    data = any(hand.specs[0].method not in NO_DATA for _request, hand, _results, renames, _watch
               in batch if renames)
    errors = commit([(tmp, final) for _request, _hand, _results, renames, _watch in batch
                     for _i, tmp, final, _note in renames], fsync, roots, data=data,
                    watch=[watcher for *_rest, watchers in batch for watcher in watchers])
    if not any(errors):  # (the common case: every item final; looked at per item otherwise)
        return
    failed = iter(errors)
    for _request, _hand, results, renames, _watch in batch:
        for i, *_rest in renames:
            exc = next(failed)
            if exc is not None:
                results[i] = (ItemFailed("appeared at the destination while it was being "
                                         "staged; not overwritten")
                              if isinstance(exc, FileExistsError) else exc)


def _write_items(mover: Mover, specs: list[ItemSpec], stop: Any, current: int
                 ) -> tuple[list[Moved], list[tuple[int, str, str, str]]]:
    """Write and verify the items ``specs`` of hand-over ``current`` one after the other
    (``Mover.move``, deferred), until they are done or the hand-over is stopped (its slot
    ``stop`` holds ``current``; looked at before every file). Returns one ``Moved`` per item
    started, and the renames still to do: (index, temporary name, final name, note for the
    log)."""
    results: list[Moved] = []
    renames: list[tuple[int, str, str, str]] = []
    # (Bound once: this loop runs for every small file.)
    move, result, rename = mover.move, results.append, renames.append
    for i, spec in enumerate(specs):
        if stop.value == current:
            break
        try:
            outcome = move(spec)
        except Cancelled:
            break
        except (ItemFailed, OSError, StagingError) as exc:
            result(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a bug fails its item, not the helper
            result(ItemFailed(f"internal error: {exc!r}"))
            continue
        tmp = outcome.tmp
        if tmp is not None:
            rename((i, tmp, outcome.final or "", outcome.note))
            result(None)
        else:
            result(outcome)
    return results, renames


def _serve(conn: Connection, stops: Any, chunk_size: int, chunk_delay: float,
           parent: int) -> None:
    """A helper process: bound to the worker, then ``_write_hand_overs`` until the pool
    closes."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when helpers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # What the helper holds from now on is long-lived: out of the cyclic collector's passes,
    # which the many small objects of each hand-over trigger (as the worker does, ``run``).
    gc.freeze()
    _write_hand_overs(conn, stops, chunk_size, chunk_delay)


def _write_hand_overs(conn: Connection, stops: Any, chunk_size: int, chunk_delay: float
                      ) -> None:
    """Receive hand-overs, write and verify each item under its temporary name, then pass
    the hand-over to the committing thread (``_finish``) and take the next one. ``stops``:
    the slots by which hand-overs are stopped (``_Helper.stops``); a hand-over comes with its
    slot's number."""
    current = 0
    # Each slot seen as a value of its own (looked at per file and per chunk: as cheap as one
    # shared value).
    slots = [ctypes.c_longlong.from_buffer(stops, k * ctypes.sizeof(ctypes.c_longlong))
             for k in range(len(stops))]
    stop = slots[0]  # the slot of hand-over ``current``
    send_lock = threading.Lock()  # the replies (committing thread) and the progress (here)
    written, reported = 0, 0.0  # this hand-over's bytes written; when last reported

    def check(n: int) -> None:
        nonlocal written, reported
        if stop.value == current:
            raise Cancelled()
        written += n
        if time.monotonic() - reported >= PROGRESS_SECONDS:
            reported = time.monotonic()
            with send_lock:
                conn.send((current, written))
        if chunk_delay:
            time.sleep(chunk_delay)

    mover = Mover(chunk_size, check, lambda _line: None, deferred=True, temp_folders=True)
    inbox = _Inbox(conn)
    jobs: queue.Queue[Any] = queue.Queue()
    committer = threading.Thread(target=_finish, args=(conn, jobs, send_lock), daemon=True)
    committer.start()
    last_run = None
    # Hand-overs received and not yet written, in the order sent; those sent ``ahead`` are
    # written after every other one held (``_next``).
    held: collections.deque[tuple[int, int, HandOver]] = collections.deque()
    closing = False
    while True:
        if not held and not closing and not inbox.poll():
            # Idle (its run ended, or the next hand-over is not sent yet): keep no store
            # folder open meanwhile, which would stop that store being unmounted.
            mover.close_sources()
        try:
            message = _next(inbox, held, closing)
        except (EOFError, OSError):
            break
        if message is None:
            if held:  # (sent before the pool closed: written, and answered, first)
                closing = True
                continue
            break
        current, slot, hand = message
        stop = slots[slot]
        written = 0
        if hand.run != last_run:
            # Another run's folders: what was fresh (made by this helper) is not for it, even
            # for the same job resumed (its files from before are in them).
            mover.forget_folders()
            last_run = hand.run
        # This hand-over's new folders are renamed into place by its own commit, which runs
        # while the next one is written: that one gets temporary folders of its own.
        mover.close_temp_folders()
        mover.pin(hand.root)
        # Opened before this hand-over's files are written, for its commit's ``syncfs``.
        watch = mover.watch() if hand.fsync else []
        results, renames = _write_items(mover, hand.specs, stop, current)
        jobs.put((current, hand, results, renames, watch))
    jobs.put(None)
    committer.join()


class _Inbox:
    """What the worker sends a helper, received by a thread of the helper's own as it comes
    (``poll`` and ``recv`` as a ``Connection``'s). A hand-over of 1,024 small files is about
    300 KiB pickled, more than a socket's default buffer (208 KiB): read only when the writing
    thread took its next one, its send blocked the worker's stream until then, and the rest of
    it then waited for that stream to be scheduled again (the worker's other streams hold
    its interpreter lock in their claims) while the helper's writer had nothing to write
    (benchmarks/README.md, session 20)."""

    def __init__(self, conn: Connection) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._receive, args=(conn,), name="hera-stage-copy-inbox",
                         daemon=True).start()

    def _receive(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:  # the worker is gone: raised by ``recv``
                self._queue.put(exc)
                return
            self._queue.put(message)
            if message is None:  # the pool closing: nothing comes after it
                return

    def poll(self) -> bool:
        return not self._queue.empty()

    def recv(self) -> Any:
        message = self._queue.get()
        if isinstance(message, (EOFError, OSError)):
            self._queue.put(message)  # (and to any later call)
            raise message
        return message


def _next(conn: Connection | _Inbox, held: collections.deque[tuple[int, int, HandOver]],
          closing: bool) -> tuple[int, int, HandOver] | None:
    """The hand-over to write next: every one sent so far is taken from ``conn`` into
    ``held`` (waiting for one when none is), and the oldest not sent ``ahead`` is written
    first, else the oldest. A stream's hand-over sent ahead of the one it has in flight thus
    never delays another's (another job's first hand-over is written before it). None: the
    pool is closing (``held`` may still hold hand-overs to write first)."""
    while not closing and (not held or conn.poll()):
        message: tuple[int, int, HandOver] | None = conn.recv()
        if message is None:
            return None
        held.append(message)
    if not held:
        return None
    for k, (_request, _slot, hand) in enumerate(held):
        if not hand.ahead:
            if k:
                message = held[k]
                del held[k]
                return message
            break
    return held.popleft()


@dataclass
class _Waiting:
    done: threading.Event = field(default_factory=threading.Event)
    results: list[Moved] | None = None
    error: BaseException | None = None
    written: int = 0  # bytes the helper reported written so far
    ahead: bool = False  # sent ahead (``CopyPool.submit_ahead``)
    slot: int = 0  # its slot of ``_Helper.stops`` while it is in flight


class _Helper:
    def __init__(self, context: Any, chunk_size: int, chunk_delay: float,
                 replied: Callable[[], None]) -> None:
        self.replied = replied  # told after each reply (the pool's streams wait for room)
        self.conn, child = context.Pipe()
        # One slot per hand-over in flight (``_pick`` gives each a free one): the request id
        # of the hand-over to stop. A slot is given again only once its last hand-over is
        # answered, and ids only grow, so a stop never lands on another hand-over; written
        # only here (``stop``), read by the helper.
        self.stops = context.RawArray(ctypes.c_longlong, DEPTH)
        self._stop_lock = threading.Lock()
        self.process = context.Process(target=_serve, name="hera-stage-copy",
                                       args=(child, self.stops, chunk_size, chunk_delay,
                                             os.getpid()),
                                       daemon=True)
        self.process.start()
        child.close()
        self.waiting: dict[int, _Waiting] = {}
        self.send_lock = threading.Lock()
        self.dead = False
        self.replaced = False  # dead, and a new helper is taking its place
        self.reader = threading.Thread(target=self._read, name="hera-stage-copy-reader",
                                       daemon=True)
        self.reader.start()

    def ask_to_end(self) -> None:
        """Ask the helper to end once it has answered what it holds."""
        with contextlib.suppress(OSError, ValueError), self.send_lock:
            self.conn.send(None)

    def close(self) -> None:
        """Wait for the helper asked to end (killed after 5 s) and its reader."""
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.reader.join(timeout=5)
        self.conn.close()

    def stop(self, request: int, slot: int) -> None:
        """Stop hand-over ``request`` before its next file. (Never a later one that has its
        slot since: a slot only ever takes a higher id, under the lock.)"""
        with self._stop_lock:
            if self.stops[slot] < request:
                self.stops[slot] = request

    def first(self) -> int:
        """How many of its hand-overs in flight were not sent ahead (written first)."""
        return sum(not waiting.ahead for waiting in list(self.waiting.values()))

    def _read(self) -> None:
        """Route each reply (or progress report) to the stream waiting for it; on the helper's
        death, fail them."""
        while True:
            try:
                request, results = self.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(results, int):  # bytes written so far
                waiting = self.waiting.get(request)
                if waiting is not None:
                    waiting.written = results
                continue
            waiting = self.waiting.pop(request, None)
            if waiting is not None:
                waiting.results = results
                waiting.done.set()
            self.replied()
        self.dead = True
        self.process.join(timeout=5)
        code = self.process.exitcode
        for request in list(self.waiting):
            waiting = self.waiting.pop(request)
            waiting.error = HelperDied(f"a copy helper process died (exit code {code})",
                                       self.process.pid)
            waiting.done.set()
        self.replied()


class Ticket(NamedTuple):
    """A hand-over submitted to a helper (``CopyPool.submit``), to ``collect``."""

    request: int
    helper: _Helper
    waiting: _Waiting


class CopyPool:
    """``size`` helper processes shared by every job of a worker."""

    def __init__(self, size: int, chunk_size: int, chunk_delay: float = 0.0) -> None:
        # Spawned (not forked): the worker has threads and database connections that a fork
        # would copy in an unknown state.
        self._context = mp.get_context("spawn")
        self.size = size
        self._chunk = (chunk_size, chunk_delay)
        self._requests = itertools.count(1)
        self._cond = threading.Condition()
        self._closed = False
        # Helpers are started (and replaced) by this one thread, which lives as long as the
        # pool: a child started by a thread that exits would be killed with it.
        self._spawns: queue.Queue[tuple[int, threading.Event, list[Exception]] | None] = \
            queue.Queue()
        self._helpers: list[_Helper] = []
        self._spawner = threading.Thread(target=self._spawn_loop, name="hera-stage-spawner",
                                         daemon=True)
        self._spawner.start()
        # The helpers are spawned for the first hand-over, not here: a worker whose jobs hand
        # none over (a transfer, a link) never pays their start, which cost a worker's first
        # transfer of 10,000 small files more CPU than the transfer itself (their imports).
        self._started = False
        self._adding = 0  # helpers being started to make up the pool's ``size``

    def _start(self) -> None:
        """Spawn the helpers, once (the first caller waits for them; later ones find them
        in ``_pick``'s loop as they come). Raises HelperDied when none could be spawned
        (and a later hand-over tries again)."""
        with self._cond:
            if self._started or self._closed:
                return
            self._started = True
            self._adding += self.size
        failed: HelperDied | None = None
        for _ in range(self.size):
            try:
                self._spawn(self.size)  # (appended)
            except HelperDied as exc:
                failed = exc
            finally:
                with self._cond:
                    self._adding -= 1
        if failed is not None:
            with self._cond:
                if not self._helpers:
                    self._started = False
                    raise failed

    def _spawn_loop(self) -> None:
        while (order := self._spawns.get()) is not None:
            index, done, error = order
            try:
                # Not after ``close``: it has taken the list of helpers to stop already.
                if self._closed:
                    raise RuntimeError("the copy pool is closed")
                helper = _Helper(self._context, *self._chunk, self._replied)
            except Exception as exc:  # a process limit, no memory: the stream moves its files
                error.append(exc)
                done.set()
                continue
            with self._cond:
                closed = self._closed
                if not closed:
                    if index < len(self._helpers):
                        self._helpers[index] = helper
                    else:
                        self._helpers.append(helper)
                    self._cond.notify_all()
            if closed:  # closed while it started: ``close`` did not see it
                helper.ask_to_end()
                helper.close()
                error.append(RuntimeError("the copy pool is closed"))
            done.set()

    def _spawn(self, index: int) -> None:
        """Have the spawner start helper ``index`` (the place of a dead one; past the end: a
        new one, appended); HelperDied when it could not (the caller's stream then moves its
        files itself), or when the pool is closed."""
        done, error = threading.Event(), list[Exception]()
        self._spawns.put((index, done, error))
        while not done.wait(1.0):
            if not self._spawner.is_alive() and not done.is_set():  # closed before this order
                error.append(RuntimeError("the copy pool is closed"))
                break
        if error:
            raise HelperDied(f"a copy helper could not be started ({error[0]})", None)

    def _pick(self, request: int, waiting: _Waiting, ahead: bool = False) -> _Helper | None:
        """The live helper with the fewest hand-overs in flight, once one has room; the
        hand-over is registered with it before this returns. ``ahead``: only a helper with
        room for two (the last place is kept for a hand-over not sent ahead), and None at
        once when there is none."""
        depth = DEPTH - 1 if ahead else DEPTH
        self._start()
        with self._cond:
            while True:
                if self._closed:
                    raise HelperDied("the copy pool is closed", None)
                live = [h for h in self._helpers if not h.dead and len(h.waiting) < depth]
                if live:
                    # A hand-over not sent ahead is written after those of its helper not sent
                    # ahead either (``_next``): it goes where they are fewest.
                    helper = min(live, key=(lambda h: len(h.waiting)) if ahead else
                                 (lambda h: (h.first(), len(h.waiting))))
                    taken = {w.slot for w in list(helper.waiting.values())}
                    waiting.slot = min(set(range(DEPTH)) - taken)
                    helper.waiting[request] = waiting
                    return helper
                if ahead:
                    return None
                if not self._started:  # another stream's start found none: try again
                    self._cond.release()
                    try:
                        self._start()
                    finally:
                        self._cond.acquire()
                    continue
                if len(self._helpers) + self._adding < self.size:
                    # One that could not be started (at the start, or as a replacement that
                    # found none before): tried again, appended by the spawner.
                    self._adding += 1
                    self._cond.release()
                    try:
                        self._spawn(self.size)
                    finally:
                        self._cond.acquire()
                        self._adding -= 1
                    continue
                dead = [i for i, h in enumerate(self._helpers) if h.dead and not h.replaced]
                if dead:
                    replaced = self._helpers[dead[0]]
                    replaced.replaced = True
                    self._cond.release()
                    try:
                        self._spawn(dead[0])  # replace a helper that died
                    except HelperDied:
                        replaced.replaced = False  # the next hand-over tries again
                        raise
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(0.1)

    def move(self, hand: HandOver, interrupt: Callable[[], bool],
             progress: Callable[[int], None] | None = None) -> list[Moved]:
        """Move and make final the items of ``hand`` in a helper (``submit``, ``collect``)."""
        return self.collect(self.submit(hand), interrupt, progress)

    def submit(self, hand: HandOver) -> Ticket:
        """Send ``hand`` to the live helper with the fewest hand-overs in flight (waiting for
        room); ``collect`` its results. Raises HelperDied when the helper is gone."""
        ticket = self._submit(hand._replace(ahead=False) if hand.ahead else hand, False)
        assert ticket is not None
        return ticket

    def submit_ahead(self, hand: HandOver) -> Ticket | None:
        """``submit`` a stream's next hand-over while its last one is in flight, so that a
        helper has it to write while it syncs and renames the last (a stream that waited for
        each reply left its helper idle during each commit). Sent only to a helper with room
        for two (the last place is kept for a hand-over not sent ahead); None, nothing sent,
        when there is none (the stream submits it when its last one is back). A helper
        writes it after every other hand-over it holds (``_next``): another job's or
        stream's hand-over never waits behind it."""
        return self._submit(hand if hand.ahead else hand._replace(ahead=True), True)

    def _submit(self, hand: HandOver, ahead: bool) -> Ticket | None:
        request = next(self._requests)
        waiting = _Waiting(ahead=ahead)
        helper = self._pick(request, waiting, ahead)
        if helper is None:
            return None
        try:
            with helper.send_lock:
                helper.conn.send((request, waiting.slot, hand))
        except (OSError, ValueError) as exc:
            with self._cond:
                helper.waiting.pop(request, None)
            raise HelperDied(f"a copy helper process is gone ({exc})",
                             helper.process.pid) from exc
        if helper.dead and helper.waiting.pop(request, None) is not None:
            raise HelperDied("a copy helper process died", helper.process.pid)
        return Ticket(request, helper, waiting)

    def collect(self, ticket: Ticket, interrupt: Callable[[], bool],
                progress: Callable[[int], None] | None = None) -> list[Moved]:
        """The results of a submitted hand-over: one ``Moved`` per item started, in order (the
        rest were not: the caller puts them back in the queue). ``interrupt`` is asked while
        waiting: when it says so (a cancel, a lost lease, a store gone), the helper stops
        before its next file and makes final what it has written. ``progress`` is told the
        bytes written so far as the helper reports them. Raises HelperDied when the helper
        died with the hand-over."""
        request, helper, waiting = ticket
        shown = 0
        while not waiting.done.wait(0.1):
            if progress is not None and waiting.written != shown:
                shown = waiting.written
                progress(shown)
            if interrupt():
                helper.stop(request, waiting.slot)  # this hand-over only
        if waiting.error is not None:
            raise waiting.error
        assert waiting.results is not None
        return waiting.results

    def _replied(self) -> None:
        """A helper has room again: wake a stream waiting to submit (``_pick``)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            helpers = list(self._helpers)
        for helper in helpers:
            helper.ask_to_end()
        for helper in helpers:
            helper.close()
        self._spawns.put(None)
        self._spawner.join(timeout=5)

    def pids(self) -> list[int]:
        with self._cond:
            return [h.process.pid for h in self._helpers if h.process.pid is not None]


def default_size() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def hand_overs(items: Sequence[Any], size_of: Callable[[Any], int], max_items: int,
               max_bytes: int, folder_of: Callable[[Any], str] | None = None
               ) -> list[list[Any]]:
    """``items`` cut into hand-overs of at most ``max_items`` items and ``max_bytes`` bytes
    (always at least one item). With ``folder_of`` (an item's destination folder), a full
    hand-over ends where its last folder starts, when that is past its first half: a folder
    split over two hand-overs costs its second part a rename a file (the first part's
    temporary folder is in place, or goes there first, ``methods.commit``), a folder whole in
    one goes into place with one rename."""
    parts: list[list[Any]] = []
    part: list[Any] = []
    size = 0
    start, folder = 0, None  # where the part's last folder starts, and that folder
    for item in items:
        n = size_of(item)
        # (Again after a carry: the last folder's items with this one may still be too many.)
        while part and (len(part) >= max_items or size + n > max_bytes):
            if folder_of is not None and start > len(part) // 2:
                # The last folder's items open the next hand-over instead.
                parts.append(part[:start])
                part = part[start:]
                size = sum(map(size_of, part))
                start = 0
            else:
                parts.append(part)
                part, size, start = [], 0, 0
        if folder_of is not None:
            here = folder_of(item)
            if here != folder:
                start, folder = len(part), here
        part.append(item)
        size += n
    if part:
        parts.append(part)
    return parts
