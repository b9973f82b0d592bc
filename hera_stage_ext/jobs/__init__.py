"""The job engine: durable, verified, resumable jobs that move a list of items with a method.

One engine for every kind of job (``kinds``: ``stage``, ``transfer``, ``upload``).
``models`` owns the tables, ``engine`` the job life cycle (create, claim, run, resume, cancel,
logs), ``methods`` how one item is moved and verified, ``contents`` the same through Jupyter's
contents manager, ``targets`` the destination side (a local folder or a contents folder),
``markers`` the Librarian's marker files, ``recall`` how a stage or transfer job first recalls
its files that are only on a cold store, ``worker`` the process that runs jobs outside the
Jupyter server.
"""

from __future__ import annotations

from .engine import (
    active_job_ids,
    EngineConfig,
    cancel_job,
    forget_job,
    create_stage_job,
    dry_run_stage,
    get_job,
    job_json,
    list_jobs,
    read_log,
    reconcile,
    retry_job,
    run_pending,
)
from .methods import METHODS

__all__ = [
    "active_job_ids",
    "EngineConfig",
    "METHODS",
    "cancel_job",
    "forget_job",
    "create_stage_job",
    "dry_run_stage",
    "get_job",
    "job_json",
    "list_jobs",
    "read_log",
    "reconcile",
    "retry_job",
    "run_pending",
]
