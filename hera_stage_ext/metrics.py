"""Operators' metrics, on the Jupyter server's own ``/metrics`` (Prometheus text format).

Jupyter Server serves ``prometheus_client``'s default registry at ``<base_url>/metrics``
(authenticated unless ``c.ServerApp.authenticate_prometheus = False``). One collector is
registered there per process; at each scrape it reads, for every server core it watches, a few
aggregate queries: jobs by kind and state, bytes and files moved, items waiting (queue depths),
failed items (errors), incoming transfers and their lag per peer, and fixity: copies by state
and what the audit has read. Every sample carries the ``site`` label.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .catalogue.models import Instance, utcnow
from .jobs.models import JobRow, JobItem, item_state_is
from .states import ACTIVE_JOB_STATES, ACTIVE_TRANSFER_ITEM_STATES, ItemState
from .transfer.models import TransferItem

log = logging.getLogger("hera_stage_ext")

_watched: list[Any] = []
_lock = threading.RLock()
_registered = False


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class _ArchiveCollector(Collector):
    def describe(self) -> list[Any]:
        """Nothing up front: registering must not run the queries (no server is watched yet)."""
        return []

    def collect(self) -> Iterator[Any]:
        with _lock:
            cores = list(_watched)
        jobs = _gauge("hera_stage_jobs", "Jobs by kind and state", ["site", "kind", "state"])
        moved_bytes = _gauge("hera_stage_moved_bytes",
                             "Bytes staged, sent or uploaded by the jobs on record",
                             ["site", "kind"])
        moved_files = _gauge("hera_stage_moved_files",
                             "Files staged, sent or uploaded by the jobs on record",
                             ["site", "kind"])
        queue = _gauge("hera_stage_queue_items", "Items of unfinished jobs waiting or running",
                       ["site", "kind", "state"])
        errors = _gauge("hera_stage_failed_items", "Items of jobs that failed", ["site", "kind"])
        incoming = _gauge("hera_stage_incoming_transfer_items",
                          "Files peers sent here, by state", ["site", "peer", "state"])
        lag = _gauge("hera_stage_incoming_transfer_lag_seconds",
                     "Age of the oldest file a peer announced that is not in yet",
                     ["site", "peer"])
        fixity = _gauge("hera_stage_instances_by_fixity",
                        "Copies by what their last fixity check found", ["site", "state"])
        audit_bytes = CounterMetricFamily("hera_stage_fixity_audit_read_bytes",
                                          "Bytes the periodic fixity audit has re-hashed",
                                          labels=["site"])
        audit_checked = CounterMetricFamily("hera_stage_fixity_audit_checked_instances",
                                            "Copies the periodic fixity audit has checked",
                                            labels=["site"])
        for core in cores:
            try:
                self._collect_core(core, jobs, moved_bytes, moved_files, queue, errors,
                                   incoming, lag, fixity)
            except Exception:  # a scrape must not fail on one database's hiccup
                log.exception("metrics of %s", core.site_name)
            auditor = getattr(core.stewardship, "auditor", None)
            if auditor is not None:
                audit_bytes.add_metric([core.site_name], auditor.bytes_read)
                audit_checked.add_metric([core.site_name], auditor.instances_checked)
        yield from (jobs, moved_bytes, moved_files, queue, errors, incoming, lag, fixity,
                    audit_bytes, audit_checked)

    @staticmethod
    def _collect_core(core: Any, jobs: Any, moved_bytes: Any, moved_files: Any, queue: Any,
                      errors: Any, incoming: Any, lag: Any, fixity: Any) -> None:
        site = core.site_name
        now = utcnow()
        with core.catalogue.db.read() as s:
            for kind, state, n in s.execute(
                    select(JobRow.kind, JobRow.state, func.count())
                    .group_by(JobRow.kind, JobRow.state)):
                jobs.add_metric([site, kind, state], n)
            for kind, nbytes, nfiles in s.execute(
                    select(JobRow.kind, func.sum(JobRow.bytes_done), func.sum(JobRow.files_done))
                    .group_by(JobRow.kind)):
                moved_bytes.add_metric([site, kind], nbytes or 0)
                moved_files.add_metric([site, kind], nfiles or 0)
            # By state, each its own query: queued items are read from their own index, running
            # ones from the unfinished jobs' rows (no index holds them: ``JOB_ITEM_INDEXES``).
            for state in (ItemState.QUEUED, ItemState.RUNNING):
                for kind, n in s.execute(
                        select(JobRow.kind, func.count()).select_from(JobRow)
                        .join(JobItem, JobItem.job_id == JobRow.id)
                        .where(JobRow.state.in_(ACTIVE_JOB_STATES), item_state_is(state))
                        .group_by(JobRow.kind)):
                    queue.add_metric([site, kind, state], n)
            for kind, n in s.execute(
                    select(JobRow.kind, func.count()).select_from(JobItem)
                    .join(JobRow, JobItem.job_id == JobRow.id)
                    .where(item_state_is(ItemState.FAILED)).group_by(JobRow.kind)):
                errors.add_metric([site, kind], n)
            waiting_since: dict[str, Any] = {}
            for peer, state, n, oldest in s.execute(
                    select(TransferItem.peer, TransferItem.state, func.count(),
                           func.min(TransferItem.created_at))
                    .group_by(TransferItem.peer, TransferItem.state)):
                incoming.add_metric([site, peer, state], n)
                if state in ACTIVE_TRANSFER_ITEM_STATES and oldest is not None:
                    waiting_since[peer] = min(oldest, waiting_since.get(peer, oldest))
            for peer, oldest in waiting_since.items():
                lag.add_metric([site, peer], max(0.0, (now - oldest).total_seconds()))
            for state, n in s.execute(
                    select(Instance.fixity, func.count()).group_by(Instance.fixity)):
                fixity.add_metric([site, state], n)


def watch(core: Any) -> None:
    """Report ``core``'s archive on ``/metrics`` (the collector is registered once)."""
    global _registered
    with _lock:
        _watched.append(core)
        if not _registered:
            REGISTRY.register(_ArchiveCollector())
            _registered = True


def unwatch(core: Any) -> None:
    with _lock:
        if core in _watched:
            _watched.remove(core)
