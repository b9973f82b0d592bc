"""The service side of the worker API: what a user's worker may do to that user's stage jobs.

Every operation is for one authenticated user (``owner``, from the request's token, never from
the request's body): a job that is not theirs, or not a stage job, does not exist here (404), so
a user's worker never claims, sees or reports on another user's job, nor on a transfer or an
upload (those are the site worker's). Operations on a claimed job also need the worker that
holds it (``worker_id``). Item results are checked against the database: only items of the job
still running are recorded, with the sizes the database holds, so a result sent twice (a retry
after a lost answer) counts once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import select

from ..catalogue.db import Database, driver_mark, driver_rows
from ..errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from ..jobs import engine, items, lifecycle, recall
from ..jobs.joblog import JobLog
from ..jobs.models import JobItem, JobRow
from ..jobs.store import DbJobStore
from ..jsonbody import load_json
from ..states import ACTIVE_JOB_STATES

log = logging.getLogger("hera_stage_ext.site.worker_ops")

#: The only kind a user's worker runs.
USER_KINDS = ("stage",)
#: Most items one claim may take, and most results one report may carry.
MAX_BATCH = 10_000
#: Most bytes of log one call may append.
MAX_LOG_BYTES = 1 << 20


class _JobFacts(Protocol):
    """What the checks of a call read of its job (a ``JobRow`` or a row of those columns)."""

    @property
    def owner(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def worker_id(self) -> str | None: ...
    @property
    def log_path(self) -> str: ...
    @property
    def state(self) -> str: ...


_Job = TypeVar("_Job", bound=_JobFacts)


class _Facts(NamedTuple):
    """What ``_mine`` reads of a job."""

    owner: str
    kind: str
    worker_id: str | None
    log_path: str
    state: str


#: ``_mine``'s statement in the driver's SQL ({m}: its placeholder), run on the driver's cursor:
#: a fifth of a prebuilt Core statement's CPU, paid on every item call and heartbeat.
_JOB_FACTS_SQL = "SELECT owner, kind, worker_id, log_path, state FROM job WHERE id = {m}"


#: What an item call's answer in the narrow form says of it: the algorithm of its items' lone
#: checksums (``items.narrow_items``).
_NARROW_SAYS = '"narrow":%s,' % json.dumps(items.NARROW_ALGORITHM)


def _claimed(narrow: bool) -> str:
    """What an item call's answer says of its items' form: ``"narrow": "<algorithm>"`` where
    they are in the narrow form, which a worker asks for only once the job's answer announced
    it (``narrow_items``, that algorithm's name); a worker reads each answer by what it says,
    so an older service's answer (which says nothing) is read in the wide form."""
    return _NARROW_SAYS if narrow else ""


class JsonText(str):
    """An answer already encoded as JSON (a claim's items, built from the database's rows),
    sent as it is."""


def _int(value: Any, what: str, low: int = 0, high: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{what}' must be an integer from {low} to {high}")
    return value


def _text(value: Any, what: str, most: int) -> str:
    if not isinstance(value, str) or not value or len(value) > most:
        raise InvalidRequest(f"'{what}' must be a non-empty string of at most {most} "
                             f"characters")
    return value


def _log_text(text: Any, what: str = "log") -> str:
    """Lines for a job's log, checked (at most ``MAX_LOG_BYTES``), ending with a newline."""
    if not isinstance(text, str) or len(text.encode("utf-8", "replace")) > MAX_LOG_BYTES:
        raise InvalidRequest(f"'{what}' must be a string of at most {MAX_LOG_BYTES} bytes")
    return text + "\n" if text and not text.endswith("\n") else text


def body_with_log(data: bytes, max_bytes: int) -> dict[str, Any]:
    """An item call's body in ``joblog.LOG_TAIL_TYPE``'s form (at most ``max_bytes``): its JSON
    object, with the log lines that follow it as its ``log`` (checked as any call's lines
    are, by the operation)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    head, _, tail = data.partition(b"\n")
    # UTF-8 only, as the lines are (``load_json`` alone would read UTF-16 or -32 too).
    if json.detect_encoding(head) != "utf-8":
        raise InvalidRequest("the JSON before the log lines is not UTF-8")
    body = load_json(head)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must start with a JSON object")
    if "log" in body:
        raise InvalidRequest("'log' must not be in the JSON when the log lines follow it")
    try:
        body["log"] = tail.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the log lines after the JSON are not UTF-8") from None
    return body


def worker_id_of(body: dict[str, Any]) -> str:
    worker_id = _text(body.get("worker_id"), "worker_id", 128)
    if worker_id == engine.CANCELLING_HOLDER:  # a cancel's own hold, never a worker's
        raise InvalidRequest(f"'worker_id' may not be {worker_id!r}")
    return worker_id


def lease_of(body: dict[str, Any]) -> float:
    lease = body.get("lease_seconds", 30.0)
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 1 <= lease <= 3600:
        raise InvalidRequest("'lease_seconds' must be a number from 1 to 3600")
    return float(lease)


class WorkerOps:
    """The worker API's operations for the user ``owner``."""

    def __init__(self, db: Database, owner: str) -> None:
        self.db = db
        self.owner = owner
        self.store = DbJobStore(db, owner, USER_KINDS)

    def _visible(self, job_id: int, job: _Job | None) -> _Job:
        """``job`` (read by ``job_id``), after the one check that it is this user's to see: a
        job of another user, or not a stage job, does not exist here."""
        if job is None or job.owner != self.owner or job.kind not in USER_KINDS:
            raise NotFound(f"no job {job_id}")
        return job

    @staticmethod
    def _holder(job_id: int, job: _JobFacts, body: dict[str, Any]) -> None:
        """The check that the worker the body names holds ``job``."""
        worker_id = worker_id_of(body)
        if job.worker_id != worker_id:
            raise Conflict(f"job {job_id} is not held by worker {worker_id}", job_id=job_id)

    def _job(self, job_id: int) -> JobRow:
        return self._visible(job_id, engine.load_job(self.db, job_id) if job_id > 0 else None)

    def _held(self, job_id: int, body: dict[str, Any]) -> JobRow:
        """The job, held by the worker the body names."""
        job = self._job(job_id)
        self._holder(job_id, job, body)
        return job

    def _mine(self, job_id: int, body: dict[str, Any] | None = None) -> _JobFacts:
        """``_job`` (and with ``body``, ``_held``) for the calls made many times a run (items,
        log, heartbeats, ``active``), which need little of the job: a few columns read (owner,
        kind, worker_id, log_path, state) on a bare connection, no ORM session or object."""
        row = None
        if job_id > 0:
            with self.db.read_connection() as connection:
                mark = driver_mark(connection)
                rows = driver_rows(connection, _JOB_FACTS_SQL.format(m=mark), (job_id,))
            row = _Facts(*rows[0]) if rows else None
        job: _JobFacts = self._visible(job_id, row)
        if body is not None:
            self._holder(job_id, job, body)
        return job

    # ----- jobs -----------------------------------------------------------------------------
    def claim(self, body: dict[str, Any]) -> dict[str, Any]:
        skip = body.get("skip", [])
        if not isinstance(skip, list) or len(skip) > MAX_BATCH:
            raise InvalidRequest("'skip' must be a list of job ids")
        skip = [_int(j, "skip") for j in skip]
        claimed = self.store.claim_job(worker_id_of(body), lease_of(body), skip)
        if claimed is None:
            return {"job": None, "resumed": False}
        answer: dict[str, Any] = {"job": claimed[0], "resumed": claimed[1]}
        # The job is claimed (committed) now, and what follows only spares the worker calls:
        # its failure must not make the claim an error answer (the job would stay leased to
        # a worker that never heard of it). Without them the worker asks as it would an
        # older service.
        try:
            # Whether another of this user's jobs waits: the worker claims again at once
            # only then (not with a call that finds nothing, beside its new job's first
            # calls).
            answer["more"] = engine.more_claimable(self.db, self.owner, [*skip, claimed[0]],
                                                   USER_KINDS)
            # The job as ``job`` answers it (``detail``): what its run asks first, so that
            # the run's first call is its first item claim (a worker older than it asks
            # ``job``).
            answer["detail"] = self.job(claimed[0])
        except Exception:  # the database away for a moment, the job forgotten meanwhile
            log.exception("job %s claimed; answered without what follows the claim",
                          claimed[0])
        return answer

    def job(self, job_id: int) -> dict[str, Any]:
        """The job, with what its run asks first (its stores' roots and which of them are
        unavailable, how many of its files wait for their recall): one round trip where the
        run would make four (none with the job's claim, which carries it: ``claim``)."""
        roots = self.store.store_roots(job_id)
        return {**engine.job_json(self._job(job_id)), "store_roots": roots,
                "unavailable": sorted(self.store.unavailable(roots)),
                "waiting": self.store.waiting(job_id),
                # What the item calls take besides results one by one: results as id runs
                # (``_runs``) and the log's lines (``_append_log``); and a record may ask
                # for the job's unfinished items too (``record``).
                "result_runs": True, "items_log": True, "record_unfinished": True,
                # and claimed items in the narrow form, where asked (``_claimed``); and the
                # item calls' log lines after their JSON (``body_with_log``).
                # (``narrow_items``: the algorithm of the narrow form's lone checksums).
                "narrow_items": items.NARROW_ALGORITHM, "log_tail": True}

    def active(self, job_id: int) -> dict[str, Any]:
        return {"active": self._mine(job_id).state in ACTIVE_JOB_STATES}

    def stores(self, job_id: int) -> dict[str, Any]:
        self._job(job_id)
        return {"roots": self.store.store_roots(job_id)}

    def heartbeat(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        self._mine(job_id)  # (the lease is renewed only for the worker holding it)
        stores = body.get("stores", [])
        if not isinstance(stores, list) or not all(isinstance(s, str) for s in stores):
            raise InvalidRequest("'stores' must be a list of store names")
        moving = _int(body.get("moving", 0), "moving")  # bytes moved, not yet committed
        beat = self.store.heartbeat(job_id, worker_id_of(body), lease_of(body), stores[:1000],
                                    moving)
        return {"state": beat.state,
                "unavailable": None if beat.unavailable is None else sorted(beat.unavailable)}

    def unfinished(self, job_id: int) -> dict[str, Any]:
        """The items still to do; when none is, the job's result lines too (``results``:
        what a run asks next, before its finish; one round trip fewer)."""
        job = self._job(job_id)
        paths = self.store.unfinished_paths(job_id)
        if paths:
            return {"paths": paths}
        return {"paths": paths, "lines": engine.result_lines(self.db, job)}

    def waiting(self, job_id: int) -> dict[str, Any]:
        """How many of the job's files wait for their recall (the site's recall job)."""
        self._job(job_id)
        return {"waiting": self.store.waiting(job_id)}

    def results(self, job_id: int) -> dict[str, Any]:
        return {"lines": engine.result_lines(self.db, self._job(job_id))}

    def finish(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """The job's end; ``log`` (optional): the last lines of its log, appended before the
        job shows finished (one round trip fewer at the end of every run)."""
        text = _log_text(body.get("log", ""))
        job = self._held(job_id, body)

        def through() -> None:  # none of its files left: the last lines, then finished
            if text:
                JobLog(job.log_path).append_lines(text)

        # The lines from the database (not from the worker), read once none of the job's
        # files is left, in the transaction that counts them (one pass at the end of a job,
        # and no result recorded between the count and the lines): the job's state is ours.
        state = engine.record_finish(self.db, job, None, through)
        if body.get("made") is True:  # the worker made the folder (``hera-stage clean``)
            lifecycle.note_made(self.db, job_id)
        return {"state": state, "logged": len(text)}

    def taken(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """The folder the worker took for the job (``lifecycle.note_taken``): kept with the
        job, so that the worker of a later attempt takes that folder or none."""
        job = self._held(job_id, body)
        pin = lifecycle.check_pin(body.get("pin"))
        lifecycle.note_taken(self.db, job.id, job.worker_id or "", pin, body.get("made") is True)
        return {"pin": pin}

    def cancelled(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        job = self._held(job_id, body)
        if not job.cancel_requested:
            raise Conflict(f"job {job_id} was not cancelled", job_id=job_id)
        left = engine.record_cancelled(self.db, job)
        # Recalled copies this job was to stage are not needed any more (the site's recall
        # job, cancelled with it, may have stopped already).
        recall.reap_after_cancelled_job(self.db, job)
        return {"left": left, "unfinished": self.store.unfinished_paths(job_id)}

    def fail(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        job = self._held(job_id, body)
        error = _text(body.get("error"), "error", 4096)
        return {"state": engine.fail_job(self.db, job.id, job.worker_id or "", error)}

    def release(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        job = self._held(job_id, body)
        error = body.get("error")
        if error is not None:
            error = _text(error, "error", 4096)
        engine.release_job(self.db, job_id, job.worker_id or "", error)
        return {"released": job_id}

    def log(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        job = self._mine(job_id)
        text = _log_text(body.get("text"), "text")
        if text:
            JobLog(job.log_path).append_lines(text)
        return {"appended": len(text)}

    # ----- items ----------------------------------------------------------------------------
    def claim_items(self, job_id: int, body: dict[str, Any]) -> JsonText:
        """Up to ``n`` queued items (and, past the first, no more than ``max_bytes``): the
        answer's text, ``{"items": [[id, name, source_path, dest_path, size, is_directory,
        checksums, attempts, store], ...]}`` (``items.exchange_json``), or in the narrow form
        where the body asks for it (``_claimed``)."""
        self._mine(job_id, body)
        n = _int(body.get("n", 1024), "n", 1, MAX_BATCH)
        max_bytes = body.get("max_bytes")
        if max_bytes is not None:
            max_bytes = _int(max_bytes, "max_bytes", 1)
        narrow = self._narrow(body)
        return JsonText('{%s"items":%s}' % (_claimed(narrow), items.exchange_json(
            self.db, job_id, [], n, max_bytes, narrow=narrow)[1]))

    @staticmethod
    def _narrow(body: dict[str, Any]) -> bool:
        """Whether an item call's items go in the narrow form: where it asks for that form
        with the algorithm the job's answer named (``"narrow": "xxh3-128"``); a worker that
        names another, or asks with ``true`` (a worker of a version before the algorithm was
        named), because a service of another version beside this one announced it, gets the
        wide form, whose answer says nothing of the form."""
        narrow = body.get("narrow", False)
        if not isinstance(narrow, (bool, str)):
            raise InvalidRequest("'narrow' must be true, false or a checksum algorithm's name")
        return narrow == items.NARROW_ALGORITHM

    def _running(self, job_id: int, ids: Sequence[int]) -> dict[int, int]:
        """Of ``ids``, those that are running items of the job: id -> size."""
        found: dict[int, int] = {}
        with self.db.read() as s:
            for term in items.id_terms(ids):
                found.update(s.execute(select(JobItem.id, JobItem.size).where(
                    JobItem.job_id == job_id, JobItem.state == "running", term)).all())
        return found

    def requeue(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        self._mine(job_id)
        ids = body.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_BATCH:
            raise InvalidRequest(f"'ids' must be a list of at most {MAX_BATCH} item ids")
        mine = list(self._running(job_id, [_int(i, "ids") for i in ids]))
        self.store.requeue(job_id, mine)
        return {"requeued": len(mine)}

    def record(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Record a report's results; with ``"unfinished": true`` (a run's last record), the
        answer carries ``unfinished``'s too, read after they are recorded (what the run asks
        next: one round trip fewer at the end of every run)."""
        job = self._mine(job_id)
        rows = self._results(body.get("results", [] if "runs" in body else None))
        runs = self._runs(body.get("runs"), len(rows))
        ask = body.get("unfinished", False)
        if not isinstance(ask, bool):
            raise InvalidRequest("'unfinished' must be true or false")
        lines = _log_text(body.get("log", ""))
        recorded, _ = items.exchange(self.db, job_id, rows, 0, running_only=True, runs=runs)
        self._append_log(job, lines)
        if ask:
            return {"recorded": recorded, **self.unfinished(job_id)}
        return {"recorded": recorded}

    @staticmethod
    def _append_log(job: _JobFacts, lines: str) -> None:
        """An item call's ``log`` (optional, checked before anything is written): lines of the
        job's log that came with it (one call fewer per hand-over's lines), appended once its
        results are recorded: a call the database refused appends nothing, and the worker
        sends the same lines again with its next call."""
        if lines:
            JobLog(job.log_path).append_lines(lines)

    def exchange(self, job_id: int, body: dict[str, Any]) -> JsonText:
        """``record`` and ``claim_items`` in one call and one transaction: a stream hands in
        what it moved and takes its next items (one round trip per hand-over, not two). The
        answer's text: ``{"recorded": n, "items": [...]}`` as ``claim_items``'."""
        job = self._mine(job_id, body)
        rows = self._results(body.get("results", []))
        runs = self._runs(body.get("runs"), len(rows))
        n = _int(body.get("n", 1024), "n", 0, MAX_BATCH)
        max_bytes = body.get("max_bytes")
        if max_bytes is not None:
            max_bytes = _int(max_bytes, "max_bytes", 1)
        narrow = self._narrow(body)
        lines = _log_text(body.get("log", ""))
        recorded, claimed = items.exchange_json(self.db, job_id, rows, n, max_bytes, runs,
                                                narrow)
        self._append_log(job, lines)
        return JsonText('{"recorded":%d,%s"items":%s}' % (recorded, _claimed(narrow), claimed))

    @staticmethod
    def _results(results: Any) -> list[items.IdResult]:
        """A report's results, checked for form. Only those for running items of the job are
        recorded, with the sizes the database holds (``items.exchange``, ``running_only``): a
        result sent twice counts once."""
        if not isinstance(results, list) or len(results) > MAX_BATCH:
            raise InvalidRequest(f"'results' must be a list of at most {MAX_BATCH} "
                                 f"[item id, state, error]")
        checked = []
        for entry in results:
            if (not isinstance(entry, list) or len(entry) != 3
                    or entry[1] not in items.RESULT_STATES or not isinstance(entry[2], str)):
                raise InvalidRequest("each result must be [item id, 'done' | 'skipped' | "
                                     "'failed', error text]")
            checked.append((_int(entry[0], "item id"), entry[1], entry[2][:4096]))
        return checked

    @staticmethod
    def _runs(runs: Any, results: int) -> items.RunResults:
        """A report's error-free results by id runs (``{"done": [[first, last], ...],
        "skipped": [...]}``, optional), checked for form: together with ``results`` at most
        ``MAX_BATCH`` items. As ``_results``', only running items of the job are recorded."""
        if runs is None:
            return {}
        problem = InvalidRequest(f"'runs' must map 'done' and 'skipped' to lists of [first "
                                 f"item id, last item id], at most {MAX_BATCH} items with "
                                 f"'results'")
        if not isinstance(runs, dict) or not set(runs) <= {"done", "skipped"}:
            raise problem
        checked: dict[str, list[tuple[int, int]]] = {}
        total = results
        for state, pairs in runs.items():
            if not isinstance(pairs, list):
                raise problem
            out = checked[state] = []
            for pair in pairs:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise problem
                first, last = _int(pair[0], "item id"), _int(pair[1], "item id")
                total += last - first + 1
                if last < first or total > MAX_BATCH:
                    raise problem
                out.append((first, last))
        return checked

