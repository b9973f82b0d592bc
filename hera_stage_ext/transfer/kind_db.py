"""The catalogue's database as the transfer and upload kinds see it (``catalogue_db``).

These kinds read and write the catalogue while they run (remote instances, registrations, the
manifest), so they run only where the worker holds the database (a single-user server, the
site service's own worker), never over the site service's HTTP job store, where a run has no
database (``KindRun.db`` is None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StagingError

if TYPE_CHECKING:
    from ..catalogue.db import Database
    from ..jobs.contract import KindRun


def catalogue_db(run: KindRun) -> Database:
    """``run``'s database; StagingError when the run has none (a worker over HTTP)."""
    if run.db is None:
        raise StagingError(f"a {run.job.kind} job runs only in a worker that holds the "
                           "catalogue's database, not over the site service's job store")
    return run.db
