"""The job-kind contract: what a kind may use of the run it works in (``KindRun``) and what the
engine calls on a kind (``JobKind``).

The engine (``run.JobRun``) owns everything every kind shares: the lease and heartbeat (cancel,
lost lease, stores going away), the streams' threads, committing and recording results in
batches (counters, per-file log lines), resume after a crash, and the job's final state. A kind
says only how its claimed items are moved and what starting and finishing a job means for it.
A kind reaches the run only through ``KindRun``: no private member of the run is part of it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..catalogue.db import Database
    from ..safefs import Pin
    from .copy_pool import CopyPool
    from .items import ClaimedItem
    from .joblog import JobLog
    from .methods import Outcome
    from .models import JobRow
    from .progress import InFlight
    from .run import EngineConfig
    from .store import JobStore

T = TypeVar("T")


class JobRefused(Exception):
    """Raised by ``begin`` when the job must not run at all (its run ends it as failed with
    this message), e.g. a recorded stage job whose destination the user's worker refuses."""


class KindRun(Protocol):
    """One worker's run of one claimed job, as a kind sees it."""

    job: JobRow
    #: The catalogue, for kinds that read it while they run (None over HTTP: ``store``).
    db: Database | None
    store: JobStore
    worker_id: str
    config: EngineConfig
    log: JobLog
    dest: Path  # the job's destination (a folder, or ``peer:<name>`` for a transfer)
    run_key: str  # tells this run from any other (temporary names, copy helpers)
    #: Set on cancel, lost lease or worker stop (``stopping`` also sees the worker stopping
    #: before the heartbeat has passed it on).
    abort: threading.Event
    lost: bool  # the lease went to another worker: nothing more is committed
    inflight: InFlight  # bytes moved and not committed yet, published with each heartbeat
    #: The job's stores (name -> root; a kind may add the roots its items come from) and those
    #: the catalogue says are unavailable now (refreshed with every heartbeat).
    store_roots: dict[str, str]
    unavailable: frozenset[str]
    store_generation: int  # bumped whenever ``unavailable`` changes
    made_dirs: set[str]  # destination folders known to exist (shared by the streams)
    pool: CopyPool | None  # the worker's copy helper processes, if it has them
    #: The folder the reported items' renames are confined below (the kind sets it in
    #: ``begin``: a stage job's pinned destination); None: not confined.
    rename_root: Pin | str | None

    def stopping(self) -> bool:
        """The run is to stop: cancelled, its lease lost, or the worker stopping."""

    def wait_stopping(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True (at once) when the run is stopping."""

    def check(self, n: int) -> None:
        """A mover's progress callback (``n`` bytes more): raises ``methods.Cancelled`` when
        the run is stopping."""

    def report(self, item: ClaimedItem, state: str, error: str = "",
               outcome: Outcome | None = None) -> None:
        """Queue an item's result for the next commit (``outcome``: a rename still to do)."""

    def report_final(self, items: list[ClaimedItem]) -> None:
        """Queue the results of items already made final (a copy helper copied, verified,
        logged, renamed and synced them) as done."""

    def commit_due(self) -> bool:
        """Enough results wait (or long enough) that a stream should commit now."""

    def commit(self, wait: bool = True, claim: tuple[int, int] | None = None
               ) -> list[ClaimedItem] | None:
        """Make every item reported so far final and record the results in one transaction;
        with ``claim`` (items, bytes), also claim the next items (returned). Without ``wait``,
        None at once when another stream is committing (but for a claim over HTTP, which
        waits for that commit: none at all, ``[]``, once the run is stopping)."""

    def count_copied(self, nbytes: int) -> None:
        """Count ``nbytes`` copied (the rate in the job's log)."""

    def explain(self, item: ClaimedItem, exc: OSError) -> str:
        """What an OSError while moving ``item`` means for the user."""

    def state_for(self, key: object, factory: Callable[[], T]) -> T:
        """The kind's state for this run under ``key``, made by ``factory`` on first use (once,
        whichever stream asks first); gone with the run."""


class JobKind(Protocol):
    """The hooks the engine calls on a kind. ``stream`` is required; the other hooks default
    to nothing (a kind with no target to hold), so a kind subclasses this to inherit them."""

    name: str

    def begin(self, run: KindRun, resumed: bool) -> None:
        """Before the streams start (stage: take the STAGING-IN-PROGRESS marker again, remove
        a dead worker's temporary files); raise ``JobRefused`` to end the job as failed
        without running it."""
        return None

    def stream(self, run: KindRun) -> None:
        """One of the job's streams: claim items, move them, ``run.report`` each and
        ``run.commit`` now and then; items claimed and not reported go back to the queue.
        Raise ``methods.Cancelled`` or return when ``run.stopping()``."""
        raise NotImplementedError

    def streams(self, run: KindRun) -> int:
        """How many streams (default: the worker's ``--streams``)."""
        return max(1, run.config.streams)

    def recorded(self, run: KindRun) -> None:
        """A batch of results was recorded (one commit at a time)."""
        return None

    def finish(self, run: KindRun, job: JobRow, lines: list[str]) -> None:
        """All items are through, before the final state is written (stage: the result
        markers); ``job`` as recorded now, ``lines`` lists what failed or was missing."""
        return None

    def cancelled(self, db: Database, job: JobRow, left: int) -> int:
        """On cancel; returns how many temporary files it removed."""
        return 0

    def after_cancel(self, db: Database, job: JobRow) -> None:
        """After ``cancelled``: what the job held in the catalogue it gives back (stage and
        transfer: the recalled copies it no longer reads are reaped from the buffer)."""
        return None

    def cancel_at_target(self, job: JobRow, left: int, unfinished: list[str]) -> int:
        """On cancel, in the worker that holds the target (a user's worker in site mode, told
        by the service which items were ``unfinished``); returns how many temporary files it
        removed."""
        return 0

    def retake(self, s: Session, job: JobRow, *, left_bytes: int, force: bool,
               allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        """A retry about to queue the job again takes its target again (inside its write
        transaction; stage: the destination marker)."""
        return None

    def release(self, job: JobRow) -> None:
        """A retry that took the target failed: give it back."""
        return None

    def before_retry(self, db: Database, job: JobRow) -> None:
        """A retry is about to count what it queues again, before its write transaction
        (stage and transfer: items whose recalled copy was reaped since wait for their recall
        again, on their cold instance)."""
        return None

    def requeued(self, s: Session, job: JobRow) -> None:
        """Inside the retry's write transaction, once the job's failed and unfinished items are
        queued again (stage and transfer: those on a cold store wait for their recall again,
        never read from tape)."""
        return None
