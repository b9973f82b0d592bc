"""Running a claimed job, whatever its kind: one worker's run of it (``JobRun``, which a kind
sees as ``contract.KindRun``), ``run_job`` and ``run_pending`` (claim and run in this process),
and how a worker runs jobs (``EngineConfig``).

A run starts the job's kind (``begin``) and runs its streams (``stream``, a bounded number of
threads; the stage kind's: ``stage_kind``). The streams report each item's result; about once a
second (or sooner when much is waiting) one of them commits what all have reported: one sync of
the file system, the renames to the final names, an fsync of the folders they changed, then the results in one
transaction and the per-file log lines in one write. So a file is never recorded as done before
it is on disk under its final name, and an item a dead worker had not committed is simply
redone. A heartbeat renews the lease, sees a cancel and notices stores going away. At the end
the job is finished (``engine.finish_job``), cancelled, or released for another worker.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from ..catalogue.db import Database
from ..durability import Watch
from ..safefs import Folders, Pin
from ..states import ARRIVED_ITEM_STATES, ItemState
from .contract import JobRefused
from .copy_pool import CopyPool
from .engine import new_worker_id
from .kinds import KindRegistry
from .items import ClaimedItem
from .methods import NO_DATA, Cancelled, Outcome, commit
from .models import JobRow
from .progress import InFlight
from .store import JobStore, as_store

T = TypeVar("T")

#: How often a claim waiting for another stream's commit looks whether the run is stopping.
_STOP_CHECK_S = 0.25


@dataclass
class EngineConfig:
    """How a worker runs jobs (what a job *is* is decided at launch and stored on the job)."""

    streams: int = 4  # parallel item streams per job
    lease_seconds: float = 30.0  # a worker silent this long is dead; its jobs are taken over
    heartbeat_seconds: float = 1.0  # lease renewal and cancel check interval
    chunk_size: int = 1 << 20  # reused copy buffer per stream
    fsync: bool = True
    # Items up to this size go to the worker's copy helper processes, when it has them, in
    # hand-overs of at most so many items and bytes (the results are committed between them,
    # so progress shows and a store going away is seen soon).
    pool_max_bytes: int = 1 << 20
    pool_batch_items: int = 1024
    pool_batch_bytes: int = 4 << 20
    claim_batch: int = 1024  # items claimed per transaction (at most)...
    # ...by a stage job's stream when the worker has helpers: it hands a claim's small files
    # over in several hand-overs at once, so that each helper has the next one to write...
    pool_claim_batch: int = 4096
    claim_bytes: int = 64 << 20  # ...and no more bytes than this (but always one item)
    # A run's first claim, per stream, when not ``claim_batch`` (None): a user's worker in
    # site mode claims fewer first (``http_store.FIRST_CLAIM_ITEMS``), so that its helpers
    # start before a large answer is built, sent and read.
    first_claim_batch: int | None = None
    flush_seconds: float = 1.0  # written items are committed and recorded this often...
    commit_items: int = 4096  # ...or as soon as this many wait...
    commit_bytes: int = 256 << 20  # ...or this many bytes
    # Test-only throttle: seconds slept after every chunk copied, so a test can kill mid-job.
    chunk_delay: float = field(
        default_factory=lambda: float(os.environ.get("HERA_STAGE_TEST_CHUNK_DELAY", "0") or 0))
    # Transfer jobs: the peers (a transfer.peers.PeerRegistry); None: the worker's environment.
    peers: Any = None
    # Folders this worker writes staged files into (resolved); a job's destination outside them
    # is refused before anything is written (a site's user worker also takes a recorded job's
    # folder only inside them). Empty: only the launch's check.
    allowed_roots: tuple[str, ...] = ()
    # The kinds this worker runs (its composition root fills it: ``standard_kinds``); a job of
    # another kind fails to run (``UnknownKind``) and goes back to the queue.
    kinds: KindRegistry = field(default_factory=KindRegistry)


class JobRun:
    """One worker's run of one claimed job: its kind's streams, heartbeat, commits, finalisation."""

    def __init__(self, store: JobStore, job: JobRow, worker_id: str, config: EngineConfig,
                 stop: threading.Event, pool: CopyPool | None = None) -> None:
        self.store, self.job, self.worker_id, self.config, self.stop = (
            store, job, worker_id, config, stop)
        # The catalogue, for kinds that read it while they run (None over HTTP: ``store``).
        self.db: Database | None = store.db
        self.dest = Path(job.destination)
        self.kind = config.kinds.get(job.kind)  # how the items of this job are moved
        # The folder the reported items' renames are confined below (set by the kind: a stage
        # job's pinned destination).
        self.rename_root: Pin | str | None = None
        # ``rename_root`` opened before any item is written (``durability.Watch``), for the
        # commits' ``syncfs`` (``methods.commit``'s ``watch``).
        self._watch: list[Watch] = []
        self.pool = pool  # the worker's copy helper processes, for kinds that use them
        self.run_key = uuid.uuid4().hex  # tells the copy helpers one run from another
        self.log = store.log(job)
        self.abort = threading.Event()  # set on cancel, lost lease or worker stop
        self.cancel_requested = job.cancel_requested
        self.lost = False
        self.copied_bytes = 0
        self._lock = threading.Lock()
        # The kinds' per-run state (``state_for``): key -> value.
        self._kind_state: dict[object, Any] = {}
        self._state_lock = threading.Lock()
        # The job's stores (name -> root) and those the catalogue says are unavailable now,
        # refreshed with every heartbeat: a store taken offline mid-job fails the items still
        # to come with a clear error instead of reading from it.
        self.store_roots: dict[str, str] = {}
        self.unavailable: frozenset[str] = frozenset()
        self.store_generation = 0  # bumped whenever ``unavailable`` changes
        # Shared by the streams: destination folders known to exist (not asked per file).
        self.made_dirs: set[str] = set()
        # Items through (written and verified, or skipped, or failed) and not yet committed:
        # (item, state, error, outcome); the outcome carries the rename still to do.
        self._pending: list[tuple[ClaimedItem, str, str, Outcome | None]] = []
        # Items a copy helper made final already (copied, verified, logged, renamed, synced):
        # only their results are still to record.
        self._final: list[ClaimedItem] = []
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._last_commit = time.monotonic()
        # Bytes moved and not committed yet, published with each heartbeat. A heartbeat and
        # the recording of a commit never overlap: a count taken before a commit and written
        # after it would count that commit's bytes twice (done and moving).
        self.inflight = InFlight()
        self._beat_lock = threading.Lock()

    def _beat(self) -> None:
        """Renew the lease; see a cancel, a lost lease and stores going away."""
        with self._beat_lock:
            beat = self.store.heartbeat(self.job.id, self.worker_id, self.config.lease_seconds,
                                        list(self.store_roots), self.inflight.total())
        if beat.state == "lost":
            self.lost = True
            self.abort.set()
        elif beat.state == "cancel":
            self.cancel_requested = True
            self.abort.set()
        elif beat.unavailable is not None:  # None: keep the last answer on a hiccup
            was = self.unavailable
            self.unavailable = beat.unavailable
            if self.unavailable != was:
                self.store_generation += 1
            for store in sorted(self.unavailable - was):
                self.log(f"store {store!r} became unavailable: its files still to stage "
                         f"fail")

    def count_copied(self, nbytes: int) -> None:
        """Count ``nbytes`` copied (the rate in the job's log)."""
        with self._lock:
            self.copied_bytes += nbytes

    def state_for(self, key: object, factory: Callable[[], T]) -> T:
        """A kind's state for this run under ``key``, made by ``factory`` on first use (once,
        whichever stream asks first); gone with the run."""
        with self._state_lock:
            if key not in self._kind_state:
                self._kind_state[key] = factory()
            return cast(T, self._kind_state[key])

    def explain(self, item: ClaimedItem, exc: OSError) -> str:
        """What an OSError means for the user: which side failed and why."""
        source = item.source_path
        on_source = isinstance(exc.filename, str) and (
            exc.filename == source or exc.filename.startswith(source.rstrip("/") + "/"))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"No space left on device: the file system holding {self.dest} is full "
                    f"({exc.strerror}); the partial copy was removed")
        if on_source and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EIO, errno.ESTALE,
                                       errno.ENODEV, errno.ENXIO):
            root = self.store_roots.get(item.store)
            if root is not None and not os.path.isdir(root):
                return (f"store {item.store!r} is unavailable: its directory {root} cannot be "
                        f"read ({exc.strerror}); retry the job when the store is back")
            return (f"the instance {source} on store {item.store!r} cannot be read "
                    f"({exc.strerror})")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            if on_source:
                return f"cannot read the instance {source}: {exc.strerror}"
            where = os.path.dirname(item.dest_path) or "."
            return (f"{exc.strerror}: cannot write into {where!r} of the destination "
                    f"{self.dest}")
        return str(exc)

    def stopping(self) -> bool:
        """The run is to stop: cancelled, its lease lost, or the worker stopping."""
        return self.abort.is_set() or self.stop.is_set()

    def wait_stopping(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True (at once) when the run is stopping."""
        return self.abort.wait(seconds) or self.stop.is_set()

    def check(self, n: int) -> None:
        """A mover's progress callback: raises ``Cancelled`` when the run is stopping (and
        sleeps the test-only chunk delay)."""
        if self.stopping():
            raise Cancelled()
        if self.config.chunk_delay:
            time.sleep(self.config.chunk_delay)

    def _heartbeat(self) -> None:
        while not self.abort.wait(self.config.heartbeat_seconds):
            if self.stop.is_set():
                self.abort.set()
                return
            try:
                self._beat()
            except Exception as exc:  # a database (or service) hiccup: try again next beat
                self.log(f"heartbeat failed: {exc}")

    # ----- commits: renames and results of a batch at once --------------------------------
    def report(self, item: ClaimedItem, state: str, error: str = "",
               outcome: Outcome | None = None) -> None:
        """Queue an item's result for the next commit (``outcome``: a rename still to do)."""
        with self._pending_lock:
            self._pending.append((item, state, error, outcome))
            self._pending_bytes += item.size
        if state in ARRIVED_ITEM_STATES:
            self.inflight.through(item.size)

    def report_final(self, items: list[ClaimedItem]) -> None:
        """Queue the results of items already made final (a copy helper copied, verified,
        logged, renamed and synced them): only their results are still to record."""
        nbytes = sum(item.size for item in items)
        with self._pending_lock:
            self._final.extend(items)
            self._pending_bytes += nbytes
        self.inflight.through(nbytes)

    def commit_due(self) -> bool:
        """Enough results wait (or long enough) that a stream should commit now."""
        return (len(self._pending) + len(self._final) >= self.config.commit_items
                or self._pending_bytes >= self.config.commit_bytes
                or time.monotonic() - self._last_commit >= self.config.flush_seconds)

    def commit(self, wait: bool = True, claim: tuple[int, int] | None = None,
               last: bool = False) -> list[ClaimedItem] | None:
        """Make every item through so far final (``methods.commit``: sync, renames, sync),
        then record the results in one transaction. With ``wait`` False, returns None at once
        when another stream is committing (it goes on copying meanwhile).

        With ``claim`` (items, bytes): a stream's claim of its next items, made in the same
        transaction and returned. Then items still to rename wait for a commit that is due
        (a sync per claim would cost more than it saves); items already final (a copy
        helper's) and those with nothing to rename (failed, skipped) are recorded at once.
        ``last``: the run's last commit, before it asks whether any item is left (the store
        may ask that with the results: ``JobStore.record``).

        Over HTTP (a store without the database) a claim waits for another stream's commit
        instead of returning None: that commit is one round trip (the renames wait for a
        commit that is due), which a claim going alone would wait for at the service's one
        writer anyway, and then this one records what waits with its claim (one call, not
        a claim now and a record later), but not past the run's stop: a stopping run's claim
        takes nothing (its streams end; the run's own last commit records what they did)."""
        if claim is None or wait or self.db is not None:
            if not self._commit_lock.acquire(blocking=wait):
                return None
        else:
            while not self._commit_lock.acquire(timeout=_STOP_CHECK_S):
                if self.stopping():
                    return []
            if self.stopping():
                self._commit_lock.release()
                return []
        try:
            batch, final = self._take_pending(renames=claim is None or self.commit_due())
            if not batch and not final:
                return self._record([], 0, claim, last)
            # The per-file lines first: a copy under its final name always has its line
            # (a link of one file is final at once: see ``copy_pool._make_final``).
            self.log.flush()
            renames = [(o.tmp, o.final) for _, _, _, o in batch
                       if o is not None and o.tmp and o.final]
            errors = iter(commit(renames, self.config.fsync,
                                 [self.rename_root] if self.rename_root is not None else (),
                                 data=self.job.method not in NO_DATA, watch=self._watch))
            results: list[tuple[ClaimedItem, str, str]] = [
                (item, ItemState.DONE, "") for item in final]
            through = sum(item.size for item in final) + sum(
                item.size for item, state, _, _ in batch if state in ARRIVED_ITEM_STATES)
            for item, state, error, outcome in batch:
                if outcome is not None and outcome.tmp and outcome.final:
                    exc = next(errors)
                    if exc is not None:
                        error = ("appeared at the destination while it was being staged; "
                                 "not overwritten" if isinstance(exc, FileExistsError)
                                 else self.explain(item, exc))
                        state = ItemState.FAILED
                        self.log.note(f"FAILED {item.dest_path}: {error}")
                        self.count_copied(-item.size)
                results.append((item, state, error))
            claimed = self._record(results, through, claim, last)
            self.log.flush()
            self.kind.recorded(self)
            return claimed
        finally:
            self._commit_lock.release()

    def _take_pending(self, renames: bool
                      ) -> tuple[list[tuple[ClaimedItem, str, str, Outcome | None]], list[ClaimedItem]]:
        """What waits to be committed: (items moved here, items a copy helper made final).
        Without ``renames``, items still under a temporary name stay for a later commit."""
        with self._pending_lock:
            final, self._final = self._final, []
            if renames:
                batch, self._pending = self._pending, []
                self._last_commit = time.monotonic()
            else:
                batch = [p for p in self._pending if p[3] is None or not p[3].tmp]
                self._pending = [p for p in self._pending if p[3] is not None and p[3].tmp]
            self._pending_bytes = sum(p[0].size for p in self._pending)
        return batch, final

    def _record(self, results: list[tuple[ClaimedItem, str, str]], through: int,
                claim: tuple[int, int] | None, last: bool = False) -> list[ClaimedItem]:
        """Record ``results`` (and claim, with ``claim``) in one transaction."""
        with self._beat_lock:
            if claim is None:
                self.store.record(self.job.id, results, last=last)
                claimed: list[ClaimedItem] = []
            else:
                claimed = self.store.exchange(self.job.id, self.worker_id, results, *claim)
            self.inflight.committed(through)
        return claimed

    def run(self, resumed: bool) -> str:
        job = self.job
        self.log(f"worker {self.worker_id} {'resumes' if resumed else 'starts'} job {job.id} "
                 f"({self.config.streams} stream(s))")
        self.store_roots = self.store.store_roots(job.id)
        self._beat()
        try:
            self.kind.begin(self, resumed)
        except JobRefused as exc:
            self.log(f"job {job.id} refused by the worker: {exc}")
            state = self.store.fail(job, self.worker_id, str(exc))
            self.store.close_log(job, self.log)
            return state
        self._watch = self._open_watch()
        try:
            return self._run_streams()
        finally:
            for watcher in self._watch:
                watcher.close()
            self._watch = []

    def _open_watch(self) -> list[Watch]:
        """``rename_root`` opened now, before the streams write (none when nothing is synced, or
        it cannot be opened: then each file is synced by itself)."""
        root = self.rename_root
        if root is None or not self.config.fsync:
            return []
        try:
            with Folders([root]) as folders:
                return [Watch(folders.root_fd(root))]
        except OSError:
            return []

    def _run_streams(self) -> str:
        job = self.job
        started = time.monotonic()
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
        heartbeat.start()
        errors: list[BaseException] = []

        def stream() -> None:
            try:
                self.kind.stream(self)
            except Cancelled:
                pass
            except BaseException as exc:  # a bug or the database gone: stop the job's run
                errors.append(exc)
                self.abort.set()

        threads = [threading.Thread(target=stream, name=f"job{job.id}-stream{i}")
                   for i in range(self.kind.streams(self))]
        if not self.cancel_requested:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.abort.set()
        heartbeat.join()
        if not self.lost:
            # What the streams wrote and verified becomes final (on cancel and stop too).
            try:
                # Where the run goes on to ask whether any item is left (``_end``), the store
                # may ask it with the last results.
                self.commit(wait=True, last=not (errors or self.cancel_requested
                                                 or self.stop.is_set()))
            except Exception as exc:  # the database or the disk gone: released below
                errors.append(exc)
        self.log.flush()
        try:
            return self._end(errors, time.monotonic() - started)
        finally:
            self.store.close_log(job, self.log)

    def _end(self, errors: list[BaseException], seconds: float) -> str:
        job = self.job
        if self.lost:
            self.log("lease lost to another worker; stopping (its uncommitted items are "
                     "redone by the worker that took the job)")
            return "lost"
        if errors and not self.cancel_requested:
            self.log(f"worker error: {errors[0]!r}; job released for another attempt")
            raise errors[0]  # the worker releases the job and takes it again after a back-off
        if self.cancel_requested:
            return self.store.finish_cancelled(job, self.kind)
        if self.stop.is_set():
            self._release()
            self.log("worker stopping: job released, it resumes with the next worker")
            return "released"
        if self.store.unfinished_paths(job.id):  # another worker still holds some items
            self._release()
            return "released"
        self.log(f"copied {self.copied_bytes} bytes in {seconds:.1f} s "
                 f"({self.copied_bytes / max(seconds, 1e-9) / 1e6:.1f} MB/s)")
        self.log.flush()
        return self.store.finish(job, self.kind, self)

    def _release(self) -> None:
        self.store.release(self.job.id, self.worker_id)


def run_job(db: Database | JobStore, job_id: int, worker_id: str,
            config: EngineConfig | None = None, stop: threading.Event | None = None,
            resumed: bool = False, pool: CopyPool | None = None) -> str:
    """Run a job this worker has claimed until it is finished, cancelled or released."""
    store = as_store(db)
    job = store.load_job(job_id)
    return JobRun(store, job, worker_id, config or EngineConfig(), stop or threading.Event(),
                   pool).run(resumed)


def run_pending(db: Database | JobStore, config: EngineConfig | None = None, *,
                worker_id: str | None = None, stop: threading.Event | None = None,
                pool: CopyPool | None = None) -> list[int]:
    """Claim and run jobs in this process until none is left; returns the ids run."""
    config = config or EngineConfig()
    worker_id = worker_id or new_worker_id()
    db = as_store(db)
    ran = []
    while not (stop and stop.is_set()):
        claimed = db.claim_job(worker_id, config.lease_seconds)
        if claimed is None:
            break
        run_job(db, claimed[0], worker_id, config, stop, resumed=claimed[1], pool=pool)
        ran.append(claimed[0])
    return ran
