"""The stage kind: a job's items copied (or linked) into its destination folder.

``StageKind`` holds the destination (``targets``: a local folder or a contents-manager folder)
from launch until its result markers are written; ``StageRun`` is what one run of a stage job
keeps (the target, whether it was refused, which folders resolve inside it), and
``_StageStream`` one of its streams: it claims items in batches and moves them with a bounded
number of streams; small plain files go to the worker's copy helper processes in hand-overs
(``copy_pool``). Streams write and verify each item under its temporary name and report it to
the run, which commits (renames and records) the results in batches (``run.JobRun.commit``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..catalogue.db import Database
from ..errors import Conflict, Forbidden, InsufficientSpace, InvalidRequest, StagingError
from ..safefs import PathChanged
from ..states import ACTIVE_JOB_STATES, ItemState
from . import recall, targets
from .cold_kind import ColdFileKind
from .contract import JobRefused, KindRun
from .copy_pool import HandOver, HelperDied, Ticket, hand_overs
from .engine import job_is_active
from .items import ClaimedItem, unfinished_paths
from .methods import Cancelled, ItemFailed, ItemSpec, Mover, Outcome, remove_temp_folders
from .models import JobRow
from .plan import COPYING, free_bytes


@dataclass
class _HandedOver:
    """Items submitted to a copy helper (``_StageStream._hand_over``), their results to collect."""

    items: list[ClaimedItem]
    specs: list[ItemSpec]
    hand: HandOver
    generation: int  # the run's ``store_generation`` when they were sent
    ticket: Ticket | None = None
    died: HelperDied | None = None  # the helper was gone before it took them
    # Still in flight when its claim's other items were through (``_StageStream._carried``):
    # its items not started when it is collected go back to the queue then.
    carried: bool = False




class StageRun:
    """What one run of a stage job keeps (``run.state_for(StageRun, ...)``), shared by its
    streams."""

    def __init__(self, run: KindRun) -> None:
        job = run.job
        self.target = targets.for_job(job.destination, job.method, job.options)
        # Why nothing may be written for this run (the destination refused when it began).
        self.refused: str | None = None
        self.root = getattr(self.target, "pin", None)  # the pinned destination, if local
        self.read_only = bool(job.options.get("read_only", True))
        # Whether each (relative) folder resolves inside the destination, so that it is not
        # asked per file.
        self.inside: dict[str, bool] = {}
        # The run's first claim is made once for all its streams (one call and one
        # transaction, not one per stream queued behind each other at the store's one
        # writer, which over HTTP left the last stream idle for a tenth of a second): the
        # portions of it no stream has taken yet.
        self.first_portions: list[list[ClaimedItem]] = []
        self.first_claimed = False
        self.first_lock = threading.Lock()

    @staticmethod
    def of(run: KindRun) -> StageRun:
        return run.state_for(StageRun, lambda: StageRun(run))


class _StageStream:
    """One stream of a stage job's run."""

    def __init__(self, run: KindRun, stage: StageRun) -> None:
        self.run, self.stage = run, stage
        # This stream's first claim ahead is a small one too: the streams make theirs at
        # once, just after the run's first claim, and over HTTP large ones queued behind each
        # other at the service's one writer outlasted the first hand-overs.
        self._ramping = True
        # The last hand-over of this stream's last claim, still with a helper while the next
        # claim's first goes ahead of it (``_move_pooled``); collected there or at the end.
        self._carried: list[_HandedOver] = []

    def _spec(self, item: ClaimedItem) -> ItemSpec:
        return ItemSpec(item.source_path, os.path.join(self.run.job.destination, item.dest_path),
                        item.size, item.is_directory, item.checksums, self.run.job.method,
                        self.stage.read_only, self.run.store_roots.get(item.store))

    def run_stream(self) -> None:
        """Claim, move and report items until none is left (or the run stops)."""
        key = threading.get_ident()  # this stream's file being moved (``_one``)

        def check(n: int) -> None:
            self.run.inflight.add(key, n)
            self.run.check(n)

        mover = self.stage.target.mover(self.run.config, check, self.run.log, self.run.made_dirs)
        try:
            self._stream_with(mover)
        finally:
            mover.close()  # its open folders

    def _stream_with(self, mover: Mover) -> None:
        try:
            try:
                self._claim_and_move(mover)
            except BaseException:
                # A hand-over still in flight is collected (written whole, unless the run
                # stops meanwhile): none is given back to the queue while a helper may write it.
                for handed in self._carried:
                    with contextlib.suppress(Exception):
                        self._collect(handed, set(), mover)
                raise
            while self._carried:  # (the run stopped between two claims)
                self._collect(self._carried.pop(0), set(), mover)
        finally:
            self._give_back_first()

    def _claim_and_move(self, mover: Mover) -> None:
        batch = self._first_batch()
        while batch and not self.run.stopping():
            started: set[int] = set()
            # The next items, claimed while the helpers still write the last hand-over of
            # these (``_move_pooled``): this stream never waits for the claim's round trip.
            claimed: list[ClaimedItem] | None = None
            try:
                pooled = self._pooled_of(batch)
                rest = len(pooled) < len(batch)
                if pooled or self._carried:
                    claimed = self._move_pooled(
                        hand_overs(pooled, _size, self.run.config.pool_batch_items,
                                   self.run.config.pool_batch_bytes, _folder), started, mover,
                        prefetch=not rest)
                for item in batch if rest else ():  # (all pooled: nothing left to move here)
                    if item.id in started or self._pooled(item):
                        continue
                    if self.run.stopping():
                        break
                    started.add(item.id)
                    self._one(mover, item, self._spec(item))
                    if self.run.commit_due():
                        self.run.commit(wait=False)
            except BaseException:
                if claimed:  # claimed ahead and never started: back to the queue too
                    self.run.store.requeue(self.run.job.id, [c.id for c in claimed])
                raise
            finally:
                # Items not started go back to the queue; those through are committed by
                # whichever stream commits next (or at the end of the run).
                self.run.store.requeue(self.run.job.id,
                                       [c.id for c in batch if c.id not in started])
            if self.run.stopping():
                if claimed:
                    self.run.store.requeue(self.run.job.id, [c.id for c in claimed])
                return
            batch = claimed if claimed is not None else self._next_batch(first=False)
        if batch:  # claimed, and the run stopped before any of it started: back to the queue
            self.run.store.requeue(self.run.job.id, [c.id for c in batch])

    def _first_batch(self) -> list[ClaimedItem]:
        """This stream's first items: its portion of the run's first claim, which the first
        stream to ask makes for all of them (``streams`` first claims in one); a stream that
        finds no portion left claims its own."""
        stage, streams = self.stage, max(1, self.run.config.streams)
        with stage.first_lock:
            if stage.first_claimed:
                if stage.first_portions:
                    return stage.first_portions.pop(0)
            else:
                stage.first_claimed = True
                claimed = self._next_batch(first=True, streams=streams)
                # Near-equal runs of consecutive items, one per stream (fewer for a small job).
                stage.first_portions = [
                    part for part in (claimed[i * len(claimed) // streams:
                                              (i + 1) * len(claimed) // streams]
                                      for i in range(streams)) if part]
                return stage.first_portions.pop(0) if stage.first_portions else []
        return self._next_batch(first=True)

    def _give_back_first(self) -> None:
        """When the run stops: the portions of its first claim no stream took, back to the
        queue, as any item claimed and not started. (Not otherwise: a stream yet to start
        takes its own; one given back would come again as a second attempt.)"""
        if not self.run.stopping():
            return
        with self.stage.first_lock:
            left, self.stage.first_portions = self.stage.first_portions, []
        ids = [c.id for part in left for c in part]
        if ids:
            self.run.store.requeue(self.run.job.id, ids)

    def _next_batch(self, first: bool, streams: int = 1) -> list[ClaimedItem]:
        """This stream's next items (with ``streams``: the first items of that many). The
        results waiting to be recorded go with the claim, in one transaction (one round trip
        over HTTP), unless another stream is committing: then, in-process, the claim goes
        alone and that stream records them; over HTTP it waits for that commit and takes
        what waits after it (``JobRun.commit``). A stream's first claim is a small one, so
        that the helpers start writing sooner (``first_claim_batch`` where set), and so is
        its next (``_ramping``)."""
        small = first or self._ramping
        if not first:
            self._ramping = False
        config = self.run.config
        n = (config.first_claim_batch if first and config.first_claim_batch is not None
             else config.pool_claim_batch if self.run.pool is not None and not small
             else config.claim_batch) * streams
        max_bytes = self.run.config.claim_bytes * streams
        claimed = self.run.commit(wait=False, claim=(n, max_bytes))
        if claimed is None:
            claimed = self.run.store.claim_items(self.run.job.id, self.run.worker_id, n, max_bytes)
        return claimed

    def _pooled_of(self, batch: list[ClaimedItem]) -> list[ClaimedItem]:
        """Those of ``batch`` that go to the helper processes (when the worker has them):
        small plain files, whose cost is Python per file, not bytes; large files and data
        sets stay in the stream, where a cancel is seen between chunks."""
        if self.run.pool is None or not self.stage.target.poolable:
            return []
        most = self.run.config.pool_max_bytes
        return [c for c in batch if not c.is_directory and c.size <= most]

    def _pooled(self, item: ClaimedItem) -> bool:
        return bool(self._pooled_of([item]))

    def _move_pooled(self, parts: list[list[ClaimedItem]], started: set[int], mover: Mover,
                     prefetch: bool = False) -> list[ClaimedItem] | None:
        """Hand ``parts`` over to the helpers in order (each copies, verifies, logs and makes
        final its files: ``copy_pool``); here only their results are queued for the next
        commit. Each part is sent ahead while the one before it is in flight, where a helper
        has room (``CopyPool.submit_ahead``): a helper then writes it while it syncs and
        renames the one before, instead of idling until this stream has that reply and
        sends the next. Results are recorded (when due) as each part comes back.

        With ``prefetch``, while a helper writes the last part, this stream records what is
        through and claims its next items (``_next_batch``: one transaction, one round trip
        over HTTP), and returns them (None: not claimed here). When it claimed some, the last
        part is left in flight (``_carried``): the next claim's first part goes ahead of it,
        as the parts of one claim do, instead of the helper waiting for this stream's
        turnaround at every claim's end.
        The part carried from the last claim (``_carried``) is the first in flight here."""
        claimed: list[ClaimedItem] | None = None
        # Sent, in order, not collected (at most two).
        flight, self._carried = self._carried, []
        try:
            for k, part in enumerate(parts):
                if self.run.stopping():
                    break
                handed = self._hand_over(part, started, ahead=bool(flight))
                if handed is None:
                    continue
                if handed.ticket is None and handed.died is None:
                    # No room ahead: this part goes when the one in flight is back (not if
                    # the run stops meanwhile: its items, none started, go back to the queue).
                    self._collect(flight.pop(0), started, mover)
                    if self.run.stopping():
                        break
                    self._submit(handed, ahead=False)
                flight.append(handed)
                if prefetch and k == len(parts) - 1 and handed.ticket is not None:
                    claimed = self._next_batch(first=False)
                while len(flight) > 1:
                    self._collect(flight.pop(0), started, mover)
                    self._record_due(claimed)
            while len(flight) > (1 if claimed else 0):
                self._collect(flight.pop(0), started, mover)
                self._record_due(claimed)
            if flight:  # carried into the next claim's parts: not given back with this batch
                flight[0].carried = True
                started.update([item.id for item in flight[0].items])
                self._carried = flight
        except BaseException:
            # The parts still with a helper are collected (written whole, unless the run
            # stops meanwhile): none is given back to the queue while a helper may still
            # write it.
            for handed in flight:
                with contextlib.suppress(Exception):
                    self._collect(handed, started, mover)
            if claimed:  # claimed ahead, never started: back to the queue
                self.run.store.requeue(self.run.job.id, [c.id for c in claimed])
            raise
        return claimed

    def _record_due(self, claimed: list[ClaimedItem] | None) -> None:
        """After a hand-over's results came back: record what is through when a commit is
        due and this stream did not just claim (its claim recorded it). Once its claim took
        nothing (the queue is empty), at once: while the other streams' last hand-overs are
        still being written, instead of all in the run's last commit after them, which the
        job's end waits for."""
        if claimed == [] or (claimed is None and self.run.commit_due()):
            self.run.commit(wait=False)

    def _hand_over(self, items: list[ClaimedItem], started: set[int], ahead: bool = False
                   ) -> _HandedOver | None:
        """Check ``items`` (those refused are settled here) and submit the rest to a helper
        (``ahead``: ``CopyPool.submit_ahead``; its ``ticket`` is None, nothing sent, when no
        helper has room for it). None: every item was refused."""
        assert self.run.pool is not None
        specs: list[ItemSpec] = []
        ready: list[ClaimedItem] = []
        rels: list[str] = []
        # ``_spec`` and ``_precheck`` of each item, their lookups made once per hand-over
        # (this loop runs for every small file: 1,024 items alone 0.45 us an item against 0.94
        # when it asked the same questions per item; benchmarks/README.md, session 16).
        job, stage = self.run.job, self.stage
        destination, method, read_only = job.destination, job.method, stage.read_only
        roots, unavailable, inside = self.run.store_roots, self.run.unavailable, stage.inside
        known = inside.get
        unrefused = stage.refused is None
        join = os.path.join
        # ``os.path.join`` of the destination and a relative path, as one concatenation.
        prefix = destination if destination.endswith("/") else destination + "/"
        # An ``ItemSpec`` made as the tuple of its fields in order (all given): the named
        # tuple's own ``__new__`` is a Python call per item.
        new = tuple.__new__
        for item in items:
            rel, store = item.dest_path, item.store
            absolute = rel[:1] == "/"
            spec = new(ItemSpec, (item.source_path, join(destination, rel) if absolute
                                  else prefix + rel, item.size, item.is_directory,
                                  item.checksums, method, read_only, roots.get(store)))
            # (The folder's key as ``_precheck`` writes it, ``os.path.dirname``, for a relative
            # path with no trailing or doubled "/"; any other path only misses the cache, and
            # an absolute one, whose key "" would be a relative top-level file's, is always
            # checked.)
            if not (unrefused and not absolute and known(rel.rpartition("/")[0]) is True
                    and store not in unavailable):
                try:
                    self._precheck(item, spec)
                except ItemFailed as exc:
                    started.add(item.id)
                    self._settle(item, None, exc, None)
                    continue
            specs.append(spec)
            ready.append(item)
            rels.append(rel)
        if not ready:
            return None
        hand = HandOver(self.run.run_key, str(self.run.log.path), self.run.config.fsync, specs,
                        rels, self.stage.root)
        handed = _HandedOver(ready, specs, hand, self.run.store_generation)
        self._submit(handed, ahead)
        return handed

    def _submit(self, handed: _HandedOver, ahead: bool) -> None:
        assert self.run.pool is not None
        try:
            if ahead:
                handed.ticket = self.run.pool.submit_ahead(handed.hand)
            else:
                handed.ticket = self.run.pool.submit(handed.hand)
        except HelperDied as exc:
            handed.died = exc

    def _collect(self, handed: _HandedOver, started: set[int], mover: Mover) -> None:
        """Wait for a hand-over's results and queue them for the next commit. Of a carried
        one (``_move_pooled``), its items not started go back to the queue (its batch's
        ``started`` counted them all)."""
        if handed.carried:
            own: set[int] = set()
            try:
                self._collect_one(handed, own, mover)
            finally:
                started.update(own)
                left = [item.id for item in handed.items if item.id not in own]
                if left:
                    self.run.store.requeue(self.run.job.id, left)
            return
        self._collect_one(handed, started, mover)

    def _collect_one(self, handed: _HandedOver, started: set[int], mover: Mover) -> None:
        assert self.run.pool is not None
        ready, specs = handed.items, handed.specs

        def interrupt() -> bool:
            # A store that became unavailable stops the hand-over too: the items it had not
            # reached come back to the queue and fail there, with the store's name.
            return self.run.abort.is_set() or self.run.store_generation != handed.generation

        key = ("pool", id(handed))
        try:
            if handed.ticket is None:
                assert handed.died is not None
                raise handed.died
            moved = self.run.pool.collect(handed.ticket, interrupt,
                                      lambda n: self.run.inflight.set(key, n))
        except HelperDied as exc:
            # What it made final is found verified (not copied again); the rest is copied here,
            # not handed over again, so a file that kills helpers cannot stall the job.
            self.run.log(f"{exc}: its {len(ready)} file(s) are moved by the worker itself")
            if exc.pid is not None:  # (None: no helper was started, none left any)
                with contextlib.suppress(OSError):  # (a destination swapped: none removed)
                    remove_temp_folders({os.path.dirname(spec.final) for spec in specs},
                                        exc.pid, self.stage.root)
            for item, spec in zip(ready, specs):
                if self.run.stopping():
                    break
                started.add(item.id)
                if exc.pid is not None:  # a second attempt: a file found there is its own
                    item.attempts += 1
                self._one(mover, item, spec)
            return
        finally:
            self.run.inflight.drop(key)
        if len(moved) == len(ready) and moved.count(None) == len(moved):
            # (The common case: every item made final by the helper.)
            started.update([item.id for item in ready])
            final = ready
        else:
            final = []
            for item, result in zip(ready, moved):
                started.add(item.id)
                if result is None:
                    final.append(item)
                elif isinstance(result, BaseException):
                    self._settle(item, None, result, None)
                else:
                    self._settle(item, result, None, None)
        if final:
            self.run.count_copied(sum(item.size for item in final))
            self.run.report_final(final)

    def _precheck(self, item: ClaimedItem, spec: ItemSpec) -> None:
        if self.stage.refused is not None:
            raise ItemFailed(self.stage.refused)
        folder = os.path.dirname(item.dest_path)
        inside = self.stage.inside.get(folder)
        if inside is None:
            inside = self.stage.inside[folder] = self.stage.target.inside(
                os.path.dirname(spec.final))
        if not inside:
            raise ItemFailed("destination sub-directory leads outside the destination")
        if item.store in self.run.unavailable:
            raise ItemFailed(f"store {item.store!r} is unavailable (marked so in the "
                             f"catalogue); retry the job when it is back")

    def _one(self, mover: Mover, item: ClaimedItem, spec: ItemSpec) -> None:
        started = time.monotonic()
        try:
            self._precheck(item, spec)
            # The mover never reads an instance swapped for a symlink out of its store.
            outcome = mover.move(spec)
        except Cancelled:
            raise
        except (ItemFailed, OSError, StagingError) as exc:
            return self._settle(item, None, exc, started)
        finally:
            # Its bytes moving so far: counted again below as through, when it is.
            self.run.inflight.drop(threading.get_ident())
        return self._settle(item, outcome, None, started)

    def _settle(self, item: ClaimedItem, outcome: Outcome | None, error: BaseException | None,
                started: float | None) -> None:
        """Log an item's result and queue it for the next commit. ``started`` (when the item
        was moved alone) gives its rate in the log."""
        if outcome is None:
            message = (self.run.explain(item, error) if isinstance(error, OSError)
                       else str(error))
            self.run.log.note(f"FAILED {item.dest_path}: {message}")
            return self.run.report(item, ItemState.FAILED, message, None)
        state = outcome.state
        if state == ItemState.SKIPPED and item.attempts > 1:
            # An earlier attempt of this job finished it (before its worker or helper died):
            # it is ours.
            state = ItemState.DONE
            self.run.log.note(f"verified {item.dest_path} (finished by an earlier attempt; "
                          f"not copied again)")
        elif state == ItemState.SKIPPED:
            self.run.log.note(f"skipped {item.dest_path}: {outcome.note}")
        else:
            self.run.count_copied(item.size)
            rate = ""
            if started is not None:
                seconds = max(time.monotonic() - started, 1e-9)
                rate = f", {item.size / seconds / 1e6:.1f} MB/s"
            self.run.log.note(f"{self.run.job.method} {item.dest_path} ({item.size} bytes{rate}"
                          f"{', ' + outcome.note if outcome.note else ''})")
        return self.run.report(item, state, "", outcome)


class StageKind(ColdFileKind):
    """Staging: items copied (or linked) into the job's destination (``targets``: a local folder
    or a contents-manager folder), which the job holds with the Librarian's markers from launch
    until its result markers are written.

    A job a site service recorded (``recorded.record_stage_job``: options ``recorded``) was
    launched without touching the folder: the user's worker confines it against its own
    allowed roots and takes it when it begins, and the service side (cancel with no worker,
    retry) leaves the folder alone."""

    name = "stage"

    def __init__(self) -> None:
        # Jobs whose destination this process refused when their run began (job id -> why):
        # their result markers are not written there either.
        self._refused: dict[int, str] = {}

    def begin(self, run: KindRun, resumed: bool) -> None:
        self._refused.pop(run.job.id, None)
        stage = StageRun.of(run)
        # The items' renames stay below the destination as pinned at launch (a recorded job's:
        # when this worker takes it, below).
        run.rename_root = stage.root
        try:
            if run.job.options.get("recorded"):
                self._take(run, stage.target)
                # Pinned now, as this worker took it: the items are written and renamed below
                # it, and their commits sync through it (``methods.commit``'s watch).
                stage.root = getattr(stage.target, "pin", None)
                run.rename_root = stage.root
            else:
                if run.config.allowed_roots and isinstance(stage.target, targets.LocalTarget):
                    # The worker's own roots, not only the server's check at launch.
                    stage.target.recheck(run.config.allowed_roots)
                stage.target.ensure_in_progress(run.job.id, run.job.owner)
            if resumed:
                n = stage.target.remove_temps(run.store.unfinished_paths(run.job.id))
                if n:
                    run.log(f"removed {n} temporary file(s) left by the previous worker")
        except (PathChanged, Forbidden, InvalidRequest) as exc:
            # Nothing is written: every item fails with the reason (no marker either).
            stage.refused = f"not written: {exc}"
            self._refused[run.job.id] = stage.refused
            run.log(f"the destination is refused: {exc}")

    @staticmethod
    def _take(run: KindRun, target: targets.Target) -> None:
        """The user's worker takes a recorded job's folder: inside its allowed roots, itself
        (no symlink on the way), and not held by another unfinished job."""
        destination = run.job.destination
        try:
            target.confine_recorded(run.config.allowed_roots)
            target.acquire(run.job.id, run.job.owner, run.store.is_active)
            run.job.options = {**run.job.options, **target.options()}
            pin = getattr(target, "pin", None)
            if pin is not None:
                # Kept with the job (by the store, not in anything of the folder's): a later
                # attempt's worker takes this folder or none (``LocalTarget.acquire``).
                run.store.note_taken(run.job.id, run.worker_id, [pin.dev, pin.ino],
                                     bool(getattr(target, "made", False)))
        except StagingError as exc:
            raise JobRefused(f"{exc.message} (checked by the worker of "
                             f"{run.job.owner})") from exc
        except OSError as exc:
            raise JobRefused(f"cannot take the destination {destination}: "
                             f"{exc.strerror or exc}") from exc

    def stream(self, run: KindRun) -> None:
        streamer = _StageStream(run, StageRun.of(run))
        if run.db is None or run.job.options.get("recorded"):
            # A site's job: the site's recall job recalls its cold files; this worker stages
            # each once it is in the queue.
            recall.await_recall(run, streamer.run_stream)
        else:
            recall.with_recall(run, streamer.run_stream)

    def finish(self, run: KindRun, job: JobRow, lines: list[str]) -> None:
        refused = self._refused.pop(job.id, None)
        if refused is not None:
            lines.append(f"result marker {refused}")
            return
        try:
            _target(job).finish(job.id, lines)
        except PathChanged as exc:  # the job fails with it; nothing is written there
            lines.append(f"result marker not written: {exc}")

    def cancelled(self, db: Database, job: JobRow, left: int) -> int:
        if job.options.get("recorded"):
            return 0  # the folder is the user's: their worker cleans it (``cancel_at_target``)
        return self.cancel_at_target(job, left, unfinished_paths(db, job.id))

    def cancel_at_target(self, job: JobRow, left: int, unfinished: list[str]) -> int:
        """Remove a cancelled job's temporary files and write its result marker."""
        target = _target(job)
        try:
            removed = target.remove_temps(unfinished)
            target.finish(job.id, [f"job {job.id} cancelled: {left} file(s) not staged"])
        except PathChanged:
            return 0  # the folder is not the job's any more: nothing is written there
        return removed

    def retake(self, s: Session, job: JobRow, *, left_bytes: int, force: bool,
               allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        recorded = job.options.get("recorded")  # the user's worker takes the folder again
        # A retry takes the folder that is there now, checked again (as its first attempt
        # did): the pin of the last attempt is dropped (a recorded job's worker pins it anew).
        options = {key: value for key, value in job.options.items() if key != "pin"}
        target = targets.for_job(job.destination, job.method, options)
        if recorded and "pin" in job.options:
            job.options = options
        if not recorded:
            target.recheck(allowed_roots)
            needed = left_bytes if job.method in COPYING else 0
            free = free_bytes(target.local) if target.local is not None else None
            if free is not None and needed > free and not force:
                raise InsufficientSpace(
                    f"the destination has {free} bytes free and the retry needs {needed}",
                    needed=needed, free=free)
        busy = s.scalar(select(JobRow.id).where(JobRow.destination == job.destination,
                                                JobRow.id != job.id,
                                                JobRow.state.in_(ACTIVE_JOB_STATES)))
        if busy is not None:
            raise Conflict(f"job {busy} is already staging into {job.destination}", job_id=busy)
        if not recorded:
            target.acquire(job.id, job.owner, lambda other: job_is_active(s, other))
            # Checked against the roots just now: the folder there is the job's from now on.
            job.options = {**job.options, **target.options()}

    def release(self, job: JobRow) -> None:
        if not job.options.get("recorded"):
            _target(job).release(job.id)



def _size(item: ClaimedItem) -> int:
    return item.size


def _folder(item: ClaimedItem) -> str:
    return item.dest_path.rpartition("/")[0]


def _target(job: JobRow) -> targets.Target:
    return targets.for_job(job.destination, job.method, job.options)


STAGE = StageKind()
