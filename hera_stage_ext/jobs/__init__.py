"""The job engine: durable, verified, resumable jobs that move a list of items with a method.

One engine for every kind of job; it knows no kind: the composition roots register theirs
(``kinds.KindRegistry``, filled by ``hera_stage_ext.standard_kinds``; the contract is
``contract``). ``models`` owns the tables, ``engine`` the job life cycle (create, claim,
release, finish, cancel, retry, forget), ``stage_kind`` the stage kind, ``plan`` what a stage
job would do (names resolved to instances, destination and free space checked), ``items`` a
job's item queue, ``run`` a worker's run of one job (streams, commits, heartbeat), ``joblog``
the jobs' logs, ``methods`` how one item is moved and verified, ``contents`` the same through
Jupyter's contents manager, ``targets`` the destination side (a local folder or a contents
folder), ``markers`` the Librarian's marker files, ``recall`` how a stage or transfer job first
recalls its files that are only on a cold store, ``worker`` the process that runs jobs outside
the Jupyter server.
"""

from __future__ import annotations

import importlib
from typing import Any

#: What ``from hera_stage_ext.jobs import X`` offers, and the module it comes from. Loaded on
#: first use: a copy helper process imports ``jobs.methods`` and must not pay for the engine
#: (SQLAlchemy) or the contents method (jupyter_server) it never uses.
_EXPORTS = {
    "METHODS": "methods",
    "EngineConfig": "run",
    "active_job_ids": "engine",
    "cancel_job": "engine",
    "create_stage_job": "engine",
    "dry_run_stage": "plan",
    "forget_job": "engine",
    "get_job": "engine",
    "job_json": "engine",
    "list_jobs": "engine",
    "read_log": "joblog",
    "reconcile": "engine",
    "retry_job": "engine",
    "run_pending": "run",
}

__all__ = [
    "METHODS", "EngineConfig", "active_job_ids", "cancel_job", "create_stage_job",
    "dry_run_stage", "forget_job", "get_job", "job_json", "list_jobs", "read_log", "reconcile",
    "retry_job", "run_pending",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
