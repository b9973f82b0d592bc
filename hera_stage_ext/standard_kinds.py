"""The job kinds this package ships, in one list for the composition roots that run jobs: the
server (``app.py``, also the site service), the worker process (``jobs/worker.py``'s ``main``)
and ``Core`` (a cancel or a retry of a job no worker holds).

The engine (``jobs/``) knows no kind; a new kind is registered here (or by a root of its own).
"""

from __future__ import annotations

from .jobs.kinds import KindRegistry
from .jobs.recall import RECALL
from .jobs.stage_kind import STAGE
from .transfer.transfer_kind import TRANSFER
from .transfer.upload import UPLOAD


def standard_kinds() -> KindRegistry:
    """A registry of the stage, transfer, upload and recall kinds."""
    return KindRegistry([STAGE, TRANSFER, UPLOAD, RECALL])
