"""Job kinds: what a job's ``kind`` column means to the one engine.

The engine owns everything every kind shares: creating the job and its items
(``engine.create_job``), claiming jobs under a lease (``engine``), the heartbeat (cancel, lease),
claiming items in batches (``items``), recording each item's result (``run.JobRun._add`` then
``_commit``: counters, per-file log lines), resume after a crash, cancel, retry, forget
(``engine``), logs (``joblog``). A kind says only how its claimed items are moved and what
starting and finishing a job means for it:

``begin(run, resumed)``      before the streams start (stage: take the STAGING-IN-PROGRESS
                             marker again, remove a dead worker's temporary files); raise
                             ``JobRefused`` to end the job as failed without running it.
``stream(run)``              one of the job's streams: claim items (``items.claim_items``),
                             move them, report each through ``run._add(item, state, error,
                             outcome)`` and ``run._commit``; items claimed and not reported go
                             back to the queue (``items.requeue_items``); raise ``methods.Cancelled``
                             or return when ``run.abort``/``run.stop`` is set.
``streams(run)``             how many streams (default: the worker's ``--streams``).
``finish(job, lines)``       after the items are through, before the final state is written
                             (stage: the result markers). ``lines``: one per failed or missing
                             file.
``cancelled(db, job, left)`` on cancel; returns how many temporary files it removed.
``retake(s, job, ...)`` / ``release(job)``  a retry takes the job's target again (stage: the
                             destination marker) / gives it back when the retry fails.

Kinds are found by name in ``KINDS`` (``"module:attribute"``, imported on first use, so the
engine does not import transfer code and a new kind is one line here).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..catalogue.db import Database
    from .models import Job
    from .run import JobRun

#: kind name -> "module:attribute" of its JobKind instance.
KINDS: dict[str, str] = {
    "stage": "hera_stage_ext.jobs.engine:STAGE",
    "transfer": "hera_stage_ext.transfer.jobs:TRANSFER",
    "upload": "hera_stage_ext.transfer.upload:UPLOAD",
    "recall": "hera_stage_ext.jobs.recall:RECALL",
}


class JobRefused(Exception):
    """Raised by ``begin`` when the job must not run at all (its run ends it as failed with
    this message), e.g. a recorded stage job whose destination the user's worker refuses."""


class JobKind:
    """The hooks the engine calls; the defaults do nothing (a kind with no target to hold)."""

    name = ""

    def begin(self, run: JobRun, resumed: bool) -> None:
        """Before the streams start."""

    def stream(self, run: JobRun) -> None:
        raise NotImplementedError

    def streams(self, run: JobRun) -> int:
        return max(1, run.config.streams)

    def recorded(self, run: JobRun) -> None:
        """A batch of results was recorded (one commit at a time)."""

    def finish(self, job: Job, lines: list[str]) -> None:
        """All items are through; ``lines`` lists what failed or was missing."""

    def cancelled(self, db: Database, job: Job, left: int) -> int:
        return 0

    def retake(self, s: Session, job: Job, *, left_bytes: int, force: bool,
               allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        """A retry about to queue the job again (inside its write transaction)."""

    def release(self, job: Job) -> None:
        """A retry that took the target failed: give it back."""


_loaded: dict[str, JobKind] = {}


def kind(name: str) -> JobKind:
    """The JobKind of ``name``; KeyError for a kind no code handles."""
    found = _loaded.get(name)
    if found is None:
        module, _, attribute = KINDS[name].partition(":")
        found = _loaded[name] = getattr(importlib.import_module(module), attribute)
    return found

