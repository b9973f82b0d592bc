"""The contract hooks of a job kind whose items may wait for a cold store's recall.

Stage and transfer jobs read files that may be on tape: their items wait in ``recall`` until a
copy is in the buffer. Both kinds share these hooks, so the engine names neither the kinds nor
the recall module (``tests/test_architecture.py``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..catalogue.db import Database
from . import recall
from .contract import JobKind
from .models import JobRow
from .plan import resolve_names


class ColdFileKind(JobKind):
    """A cancel reaps the job's recalled copies; a retry recalls again what was reaped since,
    and what failed to be recalled."""

    def after_cancel(self, db: Database, job: JobRow) -> None:
        recall.reap_after_cancelled_job(db, job)

    def before_retry(self, db: Database, job: JobRow) -> None:
        recall.rewind_reaped(db, job.id, resolve_names)

    def requeued(self, s: Session, job: JobRow) -> None:
        recall.wait_for_recall_again(s, job.id)
