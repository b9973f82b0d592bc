"""Cold-store recall inside a job: files whose only instance is on a cold store are recalled
to the store's buffer (an online store), in volume order and under the buffer's byte cap, used
by the job like any online file, then reaped from the buffer.

At creation (``resolve_cold``, called by ``plan.resolve_names`` for names with no online
instance) such a file becomes an item of the job like any other, in the state ``waiting``, with
its cold instance as source: no stream claims it (streams claim ``queued`` items). While the
job runs, one recaller thread per job (``with_recall`` wraps each of the kind's streams; the
first starts it):

1. takes the job's waiting items grouped by the cold store's volume key (``catalogue/cold.py``;
   log ``recall volume V of cold store S: n file(s)``), volumes in sorted order, a volume's
   files by their position on it (the key's second group, when it has one) then path, so one
   tape is read once, front to back;
2. for each, reserves its bytes in the buffer (a ``recall_copy`` row, ``recalling``) under the
   cap shared by every job (``buffer full: waiting`` while the buffer holds too much that is
   recalled and not yet used), copies it with the engine's ``Mover`` into the buffer store at
   the same relative path, verified against the catalogue checksum, and in one transaction
   registers the buffer instance, marks the row ``recalled`` and puts the item in the queue with
   the buffer copy as its source (``recalled X``): the job's streams stage (or send) it then;
3. reaps (``reaped X``) every recalled copy no unfinished item of an active job still reads:
   its instance is removed from the catalogue, then the copy from the buffer. It reaps while
   waiting for room, and after the last recall until the job's streams have used every copy.

The streams keep running while items wait: when the queue is empty they commit what they have
(so it can be reaped) and wait for the next recall. A worker that dies mid-recall leaves the
item ``waiting``; the next run forgets the dead reservation and recalls it again (a copy already
complete in the buffer is verified, not copied again). A cancel reaps the job's recalled copies;
retrying the job puts the items that read them back to ``waiting`` on their cold instance
(``rewind_reaped``), so they are recalled again, as are those whose recall failed
(``wait_for_recall_again``): the stage and transfer kinds call these from their contract hooks
(``after_cancel``, ``before_retry``, ``requeued``), the engine never names this module.

Site mode: a user's worker cannot write the site's buffer, so a recorded stage job's recall is a
job of its own, kind ``recall`` (``RecallKind``), run by the site's worker: the same recaller,
for the stage job's items, with its reservations under the recall job's lease and its lines in
the stage job's log; the user's worker stages what it puts in the queue (``await_recall``).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from ..catalogue.catalogue import Catalogue
from ..catalogue.cold import NO_POSITION, ColdSettings, cold_settings
from ..catalogue.db import Database
from ..catalogue.models import File, Instance, Store, utcnow
from ..errors import InvalidRequest, StagingError
from ..paths import is_within
from ..states import (ACTIVE_JOB_STATES, HELD_RECALL_STATES, RETRIED_ITEM_STATES, ItemState,
                      JobState, RecallState)
from .items import record_results
from .joblog import JobLog
from .contract import JobKind
from .methods import Cancelled, ItemFailed, ItemSpec, Mover, remove_path
from .models import JobRow, JobItem, RecallCopy, item_state_is

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .items import ClaimedItem
    from .contract import KindRun

#: Item states in which an item may still read its source.
UNFINISHED = (ItemState.QUEUED, ItemState.RUNNING, ItemState.WAITING)
#: Names per ``IN (...)`` list (well under the databases' limits on bound parameters).
_NAMES_PER_QUERY = 5_000


# ----- creation -----------------------------------------------------------------------------
def resolve_cold(
    db: Database, names: Sequence[str],
    resolve: Callable[..., tuple[list[dict[str, Any]], list[str], int]],
) -> tuple[list[dict[str, Any]], list[str], int]:
    """Items (``waiting``) for the ``names`` that have an available instance on a cold store
    with a buffer; ``(items, names still missing, their bytes)``. ``resolve`` is
    ``plan.resolve_names`` (one way to turn names into items)."""
    items, missing, _ = resolve(db, names, kind="cold")
    settings = cold_stores(db)
    kept, total = [], 0
    for item in items:
        if item["store"] in settings:
            kept.append({**item, "state": ItemState.WAITING})
            total += item["size"]
        else:  # a cold store with no buffer configured: nothing can read it
            missing.append(item["name"])
    return kept, missing, total


def rewind_reaped(
    db: Database, job_id: int,
    resolve: Callable[..., tuple[list[dict[str, Any]], list[str], int]],
) -> int:
    """Before a retry: the job's items to run again that read a recalled copy reaped since (a
    cancel reaps them) wait again, with their cold instance as source, so the retry recalls
    them again; returns how many. ``resolve`` is ``plan.resolve_names``."""
    stores = _Stores.load(db)
    if not stores.buffers:
        return 0
    with db.read() as s:
        items = s.execute(select(JobItem.id, JobItem.name, JobItem.store, JobItem.source_path)
                          .where(JobItem.job_id == job_id, JobItem.state.in_(RETRIED_ITEM_STATES),
                                 JobItem.store.in_(stores.buffers))).all()
        # The buffer copies of these files only (not every copy the buffers hold).
        names = sorted({item.name for item in items})
        held: set[tuple[str, str]] = set()
        for start in range(0, len(names), _NAMES_PER_QUERY):
            held.update(s.execute(
                select(Store.name, Instance.path).select_from(Instance)
                .join(Instance.store).join(Instance.file)
                .where(Store.name.in_(stores.buffers), Instance.available,
                       File.name.in_(names[start:start + _NAMES_PER_QUERY]))).all())
    gone = [item for item in items if (item.store, os.path.relpath(
        item.source_path, stores.roots.get(item.store, "/"))) not in held]
    if not gone:
        return 0
    cold, _, _ = resolve_cold(db, [item.name for item in gone], resolve)
    by_name = {c["name"]: c for c in cold}
    with db.write() as s:
        for item in gone:
            if item.name in by_name:  # else: no cold copy any more, it fails again, saying so
                c = by_name[item.name]
                s.execute(update(JobItem).where(JobItem.id == item.id).values(
                    store=c["store"], source_path=c["source_path"], state=ItemState.WAITING,
                    error=""))
    return len(by_name)


def check_method(method: str, items: Sequence[Mapping[str, Any]]) -> None:
    """A symbolic link to a buffer copy would dangle once the copy is reaped."""
    if method == "symlink" and any(item.get("state") == ItemState.WAITING for item in items):
        raise InvalidRequest("files only on a cold store cannot be staged as symbolic links "
                             "(their recalled copy is removed once staged); use copy")


def wait_for_recall_again(s: Session, job_id: int) -> None:
    """In a retry's write transaction, once its items are queued again: those whose source is
    a cold store (a recall that failed) wait for their recall again, never read from tape."""
    cold = sorted(_cold_stores(s))
    if cold:
        s.execute(update(JobItem).where(
            JobItem.job_id == job_id, item_state_is(ItemState.QUEUED),
            JobItem.store.in_(cold)).values(state=ItemState.WAITING))


def cold_stores(db: Database) -> dict[str, ColdSettings]:
    """Every available cold store with valid settings, by name."""
    with db.read() as s:
        return _cold_stores(s)


def _cold_stores(s: Session) -> dict[str, ColdSettings]:
    rows = s.execute(select(Store.name, Store.options).where(
        Store.kind == "cold", Store.available)).all()
    out = {}
    for name, options in rows:
        try:
            out[name] = cold_settings(name, options or {})
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class _Stores:
    """The cold stores, their buffers, and the root and id of each of them."""

    cold: dict[str, ColdSettings]
    buffers: frozenset[str]
    roots: dict[str, str]
    ids: dict[str, int]

    @classmethod
    def load(cls, db: Database) -> _Stores:
        cold = cold_stores(db)
        buffers = frozenset(settings.buffer for settings in cold.values())
        with db.read() as s:
            rows = s.execute(select(Store.name, Store.path, Store.id).where(
                Store.name.in_(set(cold) | buffers))).all()
        return cls(cold, buffers, {n: p for n, p, _ in rows}, {n: i for n, _, i in rows})


# ----- running: the streams' side -----------------------------------------------------------
#: The run's state key of its recaller (None: nothing cold in the job).
_RECALLER = "recall.recaller"


def with_recall(run: KindRun, stream: Callable[[], None]) -> None:
    """Run one of the job's streams (``stream`` returns when nothing is queued) so that it also
    takes the items recalled meanwhile, until the recall is through."""
    recall = run.state_for(_RECALLER, lambda: _Recall.start(run))
    if recall is None:  # nothing cold in this job: the kind's stream as it is
        return stream()
    try:
        while not (run.stopping()):
            recalled_all = recall.recalled_all.is_set()
            seen = recall.recalled
            stream()
            if recalled_all:
                break
            # Make what this stream used final, so that it can be reaped and the buffer frees.
            run.commit(wait=True)
            recall.wait_for_more(seen)
        if not run.abort.is_set():  # (a lost lease: the engine commits nothing more)
            run.commit(wait=True)
    finally:
        recall.thread.join()
    if recall.error is not None:
        raise recall.error


def await_recall(run: KindRun, stream: Callable[[], None], poll: float = 0.5) -> None:
    """Run one of a recorded job's streams (site mode) so that it also takes the items the
    site's recall job puts in the queue, until none of the job's items waits any more. The
    count is read before each pass: what was recalled by then is in the queue the pass
    empties, so no item is left behind when the count reaches zero."""
    while True:
        waiting = run.store.waiting(run.job.id)
        stream()
        if not waiting or run.stopping():
            return
        # Make what this stream used final, so that its buffer copies can be reaped.
        run.commit(wait=True)
        if run.abort.wait(poll):
            return


# ----- running: the recaller ----------------------------------------------------------------
class _Recall:
    """The recaller of one job's run (one thread) and what its streams wait on."""

    def __init__(self, run: KindRun, stores: _Stores, for_job: int | None = None,
                 log: JobLog | None = None) -> None:
        assert run.db is not None
        self.run, self.db = run, run.db
        self.stores, self.buffers, self.roots = stores.cold, stores.buffers, stores.roots
        self.store_ids, self.all_stores = stores.ids, stores
        # The job whose reservations these are (its lease says whether they are alive), and
        # the job whose items are recalled: the same job, except for a site's recall job,
        # which recalls for a user's stage job (``for_job``) and writes into its log.
        self.job_id = run.job.id
        self.items_job = for_job if for_job is not None else run.job.id
        self.remote = for_job is not None
        self.log = log if log is not None else run.log
        # A site's recall job waits for another process (the user's worker) to use the copies:
        # it looks again less often than a recaller beside the job's own streams.
        self.poll = 0.5 if self.remote else 0.05
        # The engine's per-item check then confines a recalled item's source to its buffer.
        run.store_roots.update({b: self.roots[b] for b in self.buffers if b in self.roots})
        if self.remote:  # (and the heartbeat sees a cold store going away)
            run.store_roots.update({c: self.roots[c] for c in self.stores if c in self.roots})
        # Buffers are written below their resolved roots, no symlink followed on the way.
        self.real_roots = {b: os.path.realpath(self.roots[b]) for b in self.buffers
                           if b in self.roots}
        self.mover = Mover(run.config.chunk_size, run.check, self.log, run.config.fsync,
                           roots=self.real_roots.values())
        self.recalled_all = threading.Event()
        self.recalled = 0  # items put in the queue so far (the streams wait for it to grow)
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"job{run.job.id}-recall")

    @classmethod
    def start(cls, run: KindRun, for_job: int | None = None,
              log: JobLog | None = None) -> _Recall | None:
        """The recaller of ``run``'s job (or, for a site's recall job, of ``for_job``),
        started; None when none of that job's files is on a cold store."""
        assert run.db is not None
        job_id = for_job if for_job is not None else run.job.id
        stores = _Stores.load(run.db)
        if not stores.cold:
            return None
        with run.db.read() as s:
            cold = s.scalar(select(func.count()).select_from(JobItem).where(
                JobItem.job_id == job_id, JobItem.state.in_(UNFINISHED),
                JobItem.store.in_(set(stores.cold) | stores.buffers)))
        if not cold:
            return None
        with run.db.write() as s:
            # Failed recalls that a retry queued again wait for their recall again (never
            # read from the cold store by the kind's streams).
            s.execute(update(JobItem).where(
                JobItem.job_id == job_id, item_state_is(ItemState.QUEUED),
                JobItem.store.in_(list(stores.cold))).values(state=ItemState.WAITING))
        recall = cls(run, stores, for_job, log)
        recall.thread.start()
        return recall

    # ----- what the streams see -----------------------------------------------------------
    def wait_for_more(self, seen: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.recalled != seen or self.recalled_all.is_set()
                                  or self.run.abort.is_set(), timeout=0.5)

    def _announce(self, n: int) -> None:
        with self.changed:
            self.recalled += n
            self.changed.notify_all()

    def _sleep(self, seconds: float) -> None:
        if self.run.wait_stopping(seconds):
            raise Cancelled()

    # ----- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._forget_own_reservations()
            self.reap()
            for (store, volume), group in itertools.groupby(self._waiting(),
                                                            key=lambda w: w[:2]):
                batch = list(group)
                self.log(f"recall volume {volume!r} of cold store {store!r}: "
                         f"{len(batch)} file(s), {sum(w[3].size for w in batch)} bytes")
                for _store, _volume, rel, item in batch:
                    self._recall(store, volume, rel, item)
            self.recalled_all.set()
            self._announce(0)
            # Reap what the streams use, until nothing of this job reads a buffer copy.
            while self._job_reads_buffer():
                self.reap()
                self._sleep(max(0.1, self.poll))
            self.reap()
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001  (a bug or the database gone: released)
            self.error = exc
            self.run.abort.set()
        finally:
            self.mover.close()
            self.recalled_all.set()
            self._announce(0)

    def _forget_own_reservations(self) -> None:
        """Reservations of this job's earlier run (its worker died mid-recall) hold no bytes
        any more: their items are waiting and are recalled again."""
        with self.db.write() as s:
            s.execute(delete(RecallCopy).where(RecallCopy.job_id == self.job_id,
                                               RecallCopy.state == RecallState.RECALLING))

    def _waiting(self) -> list[tuple[str, str, str, ClaimedItem]]:
        """The job's waiting items as (store, volume, relative path, item), in recall order:
        by store, volume, position on the volume, path."""
        from .items import ClaimedItem

        with self.db.read() as s:
            rows = s.execute(select(
                JobItem.id, JobItem.name, JobItem.source_path, JobItem.dest_path, JobItem.size,
                JobItem.is_directory, JobItem.checksums, JobItem.attempts, JobItem.store,
            ).where(JobItem.job_id == self.items_job, item_state_is(ItemState.WAITING))).all()
        placed = []
        for row in rows:
            item = ClaimedItem(*row[:8], row[8])
            root = self.roots.get(item.store, "")
            rel = os.path.relpath(item.source_path, root) if root else item.dest_path
            settings = self.stores.get(item.store)
            volume, position = settings.place(rel) if settings else ("", NO_POSITION)
            placed.append(((item.store, volume, position, rel), item))
        placed.sort(key=lambda p: p[0])
        return [(store, volume, rel, item) for (store, volume, _pos, rel), item in placed]

    def _recall(self, store: str, volume: str, rel: str, item: ClaimedItem) -> None:
        run = self.run
        settings = self.stores.get(store)
        try:
            if settings is None or settings.buffer not in self.roots:
                raise ItemFailed(f"cold store {store!r} is not available or has no buffer "
                                 f"store (c.StagingApp.stores)")
            if store in run.unavailable:
                raise ItemFailed(f"cold store {store!r} is unavailable (marked so in the "
                                 f"catalogue); retry the job when it is back")
            if not is_within(item.source_path, self.roots[store]):
                raise ItemFailed(f"the instance on cold store {store!r} leads outside the store")
        except ItemFailed as exc:
            return self._failed(item, str(exc))
        buffer = settings.buffer
        reserved = self._reserve(item, store, volume, buffer, rel, settings)
        if reserved is None:
            return
        reservation, held = reserved
        target = Path(self.real_roots[buffer]) / rel
        try:
            outcome = self.mover.move(ItemSpec(Path(item.source_path), target, item.size,
                                               item.is_directory, item.checksums, "copy"))
            self._register(item, buffer, rel, reservation, store, volume)
        except Cancelled:
            self._drop(reservation)
            raise
        except (ItemFailed, OSError, StagingError) as exc:
            return self._failed(item, str(exc), reservation)
        note = ("verified, already in the buffer" if outcome.state == ItemState.SKIPPED
                else outcome.note)
        self.log(f"recalled {item.name} from {store!r} volume {volume!r} into {buffer!r} "
                 f"({item.size} bytes, {note}; buffer holds {held} of {settings.buffer_bytes} "
                 f"bytes)")
        self._announce(1)

    def _reserve(self, item: ClaimedItem, store: str, volume: str, buffer: str, rel: str,
                 settings: ColdSettings) -> tuple[int, int] | None:
        """Reserve the item's bytes in the buffer, waiting (and reaping) while it is full;
        returns the reservation's id and the bytes the buffer holds with it. None when
        another job's copy of the file is in the buffer: the item was queued to read it."""
        said = ""
        while True:
            with self.db.write() as s:
                # The buffer's row, locked: the reservations of every job in this buffer take
                # turns, so two jobs never recall one file at once nor pass the cap together.
                s.execute(select(Store.id).where(Store.name == buffer).with_for_update())
                self._forget_dead_reservations(s, buffer)
                other = s.execute(select(RecallCopy.state, RecallCopy.job_id).where(
                    RecallCopy.buffer == buffer, RecallCopy.path == rel,
                    RecallCopy.state.in_(HELD_RECALL_STATES))).first()
                if other is not None and other.state == RecallState.RECALLED:
                    self._queue(s, item, buffer, rel)
                    break
                held = int(s.scalar(select(func.coalesce(func.sum(RecallCopy.size), 0)).where(
                    RecallCopy.buffer == buffer,
                    RecallCopy.state.in_(HELD_RECALL_STATES))) or 0)
                if other is None and (held == 0 or held + item.size <= settings.buffer_bytes):
                    copy = RecallCopy(job_id=self.job_id, name=item.name, cold_store=store,
                                      volume=volume, buffer=buffer, path=rel, size=item.size,
                                      state=RecallState.RECALLING, error="")
                    s.add(copy)
                    s.flush()
                    if said.startswith("buffer full"):
                        self.log(f"buffer {buffer!r} has room again")
                    return copy.id, held + item.size
            waiting = (f"waiting for job {other.job_id}, which is recalling {item.name}"
                       if other is not None and other.state == RecallState.RECALLING else
                       f"waiting: an earlier copy of {item.name} is being reaped"
                       if other is not None else
                       f"buffer full: waiting ({buffer!r} holds {held} of "
                       f"{settings.buffer_bytes} bytes recalled and not yet used; "
                       f"{item.name} needs {item.size})")
            if waiting.partition(" (")[0] != said:
                self.log(waiting)
                said = waiting.partition(" (")[0]
            self.run.commit(wait=False)  # what the streams used becomes reapable
            self.reap()
            self._sleep(self.poll)
        self.log(f"recalled {item.name}: already in buffer {buffer!r} (recalled by job "
                 f"{other.job_id}), not recalled again")
        self._announce(1)
        return None

    def _forget_dead_reservations(self, s: Any, buffer: str) -> None:
        """Reservations whose job is not running under a live lease (its worker died before
        the copy was registered) hold no bytes: that job recalls the file again when it
        resumes."""
        now = utcnow()
        alive = select(JobRow.id).where(JobRow.state == JobState.RUNNING,
                                        JobRow.lease_expires > now)
        s.execute(delete(RecallCopy).where(
            RecallCopy.buffer == buffer, RecallCopy.state == RecallState.RECALLING,
            RecallCopy.job_id.not_in(alive)).execution_options(synchronize_session=False))

    def _drop(self, reservation: int) -> None:
        with self.db.write() as s:
            s.execute(delete(RecallCopy).where(RecallCopy.id == reservation))

    def _failed(self, item: ClaimedItem, message: str, reservation: int | None = None) -> None:
        message = f"recall failed: {message}"
        if reservation is not None:  # kept as history; it holds no bytes any more
            with self.db.write() as s:
                s.execute(update(RecallCopy).where(RecallCopy.id == reservation).values(
                    state=RecallState.FAILED, error=message))
        if self.remote:  # the stage job's item, recorded here (its worker is elsewhere)
            self.log(f"FAILED {item.dest_path}: {message}")
            record_results(self.db, self.items_job, [(item, ItemState.FAILED, message)])
        else:
            self.run.log.note(f"FAILED {item.dest_path}: {message}")
            # Through the engine like a staged item: counted, logged, listed in the errors.
            self.run.report(item, ItemState.FAILED, message)
        self._announce(0)

    def _queue(self, s: Any, item: ClaimedItem, buffer: str, rel: str) -> None:
        s.execute(update(JobItem)
                  .where(JobItem.id == item.id, JobItem.state == ItemState.WAITING)
                  .values(state=ItemState.QUEUED, store=buffer,
                          source_path=os.path.join(self.roots[buffer], rel)))

    def _register(self, item: ClaimedItem, buffer: str, rel: str, reservation: int, store: str,
                  volume: str) -> None:
        """In one transaction: the buffer instance, the recall recorded, the item queued."""
        with self.db.write() as s:
            file_id = s.scalar(select(File.id).where(File.name == item.name))
            if file_id is None:  # removed from the catalogue while it was being recalled
                raise ItemFailed(f"{item.name} is no longer in the catalogue")
            store_id = self.store_ids[buffer]
            present = s.scalar(select(Instance.file_id).where(
                Instance.store_id == store_id, Instance.path == rel))
            catalogue = Catalogue(self.db)
            if present is None:
                catalogue.add_instance(file_id, store_id, rel, deletion_policy="allowed",
                                       within=s)
            elif present != file_id:
                raise ItemFailed(f"buffer {buffer!r} already holds another file at {rel}")
            s.execute(update(RecallCopy).where(RecallCopy.id == reservation).values(
                state=RecallState.RECALLED, recalled_at=utcnow()))
            catalogue.add_events([(file_id, "recalled", {
                "cold_store": store, "volume": volume, "buffer": buffer, "path": rel,
                "job": self.items_job})], within=s)
            self._queue(s, item, buffer, rel)

    # ----- reaping ------------------------------------------------------------------------
    def _job_reads_buffer(self) -> bool:
        """Whether the job, still active, has items to stage from a buffer copy."""
        with self.db.read() as s:
            return bool(s.scalar(select(func.count()).select_from(JobItem).join(
                JobRow, JobRow.id == JobItem.job_id).where(
                JobItem.job_id == self.items_job, JobItem.state.in_(UNFINISHED),
                JobItem.store.in_(self.buffers), JobRow.state.in_(ACTIVE_JOB_STATES))))

    def reap(self) -> int:
        return reap(self.db, self.all_stores, self.log, self.items_job)


# ----- site mode: the site's recall job -----------------------------------------------------
class RecallKind(JobKind):
    """A site service's recall job (kind ``recall``, ``options["stage_job"]``): the site's own
    worker recalls the cold files of one user's recorded stage job into the buffer, as the
    recaller of a single-user run does (same order, cap, verification and reaping, its lines
    in the stage job's log), while the user's worker stages each file once it is queued
    (``await_recall``). It ends when the stage job reads no buffer copy any more."""

    name = "recall"

    def streams(self, run: KindRun) -> int:
        return 1

    def stream(self, run: KindRun) -> None:
        if run.db is None:
            raise StagingError("a recall job runs in the site's own worker, over the catalogue")
        stage_id = int(run.job.options.get("stage_job", 0))
        with run.db.read() as s:
            log_path = s.scalar(select(JobRow.log_path).where(JobRow.id == stage_id))
        if log_path is None:  # the stage job was forgotten: nothing to recall for it
            return
        recall = _Recall.start(run, for_job=stage_id, log=JobLog(log_path))
        if recall is None:
            return
        recall.thread.join()
        if recall.error is not None:
            raise recall.error

    def cancelled(self, db: Database, job: JobRow, left: int) -> int:
        """A recall job cancelled while its stage job goes on (an admin's cancel): the files
        still waiting fail, so the user's worker does not wait for them for ever. (Cancelling
        the stage job cancels its recall job too; its waiting files then wait for a retry.)"""
        stage_id = int(job.options.get("stage_job", 0))
        with db.write() as s:
            stage = s.execute(select(JobRow.state, JobRow.cancel_requested).where(
                JobRow.id == stage_id)).first()
            if stage is None or stage.state not in ACTIVE_JOB_STATES or stage.cancel_requested:
                return 0
            failed = s.scalars(update(JobItem).where(
                JobItem.job_id == stage_id, item_state_is(ItemState.WAITING)).values(
                state=ItemState.FAILED, error=f"recall failed: recall job {job.id} was cancelled")
                .returning(JobItem.id)).all()
            s.execute(update(JobRow).where(JobRow.id == stage_id).values(
                files_failed=JobRow.files_failed + len(failed)))
        return 0

    def after_cancel(self, db: Database, job: JobRow) -> None:
        reap_after_cancelled_job(db, job)


RECALL = RecallKind()


def reap_after_cancel(db: Database, job_id: int, log: Callable[[str], None]) -> int:
    """A cancelled job's recalled copies are no longer needed by it: reap them now (those
    another active job still reads stay)."""
    stores = _Stores.load(db)
    return reap(db, stores, log, job_id) if stores.buffers else 0


def reap_after_cancelled_job(db: Database, job: JobRow) -> int:
    """``reap_after_cancel`` for ``job``, saying what it reaps in the job's log (the
    ``after_cancel`` hook of the kinds whose items may be recalled)."""
    return reap_after_cancel(db, job.id, JobLog(job.log_path))


#: Recalled copies this process could not remove (said once in a job's log, not at every reap).
_unreapable: set[int] = set()


def reap(db: Database, stores: _Stores, log: Callable[[str], None], job_id: int) -> int:
    """Remove every recalled copy (in the buffers of ``stores``) that no unfinished item of an
    active job reads: its instance first (the copy ``reaping``: its bytes still count and
    nobody recalls that path meanwhile), then its bytes, then it is ``reaped``. Copies a
    dead worker left ``reaping`` are finished too."""
    with db.write() as s:
        # The buffers' rows, locked as ``_reserve`` does: a copy a job is being pointed at
        # is never reaped under it.
        s.execute(select(Store.id).where(Store.name.in_(sorted(stores.buffers)))
                  .order_by(Store.name).with_for_update())
        copies = s.scalars(select(RecallCopy).where(
            RecallCopy.buffer.in_(stores.buffers),
            RecallCopy.state.in_((RecallState.RECALLED, RecallState.REAPING)),
        ).with_for_update()).all()
        if not copies:
            return 0
        sources = {os.path.join(stores.roots.get(c.buffer, ""), c.path): c for c in copies
                   if c.state == RecallState.RECALLED}
        needed = set(s.scalars(select(JobItem.source_path).join(
            JobRow, JobRow.id == JobItem.job_id).where(
            JobRow.state.in_(ACTIVE_JOB_STATES), JobItem.state.in_(UNFINISHED),
            JobItem.source_path.in_(list(sources)))))
        gone = [c for c in copies if c.state == RecallState.REAPING]
        for source, copy in sources.items():
            if source in needed:
                continue
            store_id = stores.ids[copy.buffer]
            instance_id = s.scalar(select(Instance.id).where(
                Instance.store_id == store_id, Instance.path == copy.path))
            if instance_id is not None:
                Catalogue(db).remove_instance(instance_id, ("reaped", {
                    "buffer": copy.buffer, "path": copy.path, "job": job_id}), within=s)
            copy.state = RecallState.REAPING
            gone.append(copy)
    removed = []
    for copy in gone:
        try:
            # Below the buffer's resolved root: nothing outside it is removed through a link.
            remove_path(os.path.join(os.path.realpath(stores.roots[copy.buffer]), copy.path))
        except FileNotFoundError:  # (a crashed reaper's, half gone)
            pass
        except OSError as exc:
            # Not this worker's to remove (another user's folder in a shared buffer, say):
            # left ``reaping`` for the next reap, by this worker or another; the job goes on.
            # Said once per copy: a job waiting for room in the buffer reaps many times a second.
            if copy.id not in _unreapable:
                _unreapable.add(copy.id)
                log(f"could not reap {copy.name} from buffer {copy.buffer!r} ({exc.strerror}); "
                    f"left for a later reap (its {copy.size} bytes still count in the buffer)")
            continue
        _unreapable.discard(copy.id)
        removed.append(copy)
    if removed:
        with db.write() as s:
            s.execute(update(RecallCopy).where(
                RecallCopy.id.in_([c.id for c in removed]), RecallCopy.state == RecallState.REAPING,
            ).values(state=RecallState.REAPED, reaped_at=utcnow()))
    for copy in removed:
        log(f"reaped {copy.name} from buffer {copy.buffer!r} ({copy.size} bytes)")
    return len(removed)
