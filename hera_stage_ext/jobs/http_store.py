"""The job store of a user's worker in site mode: the site service's worker API over HTTP.

The worker holds no database URL. It sends the user's token (``Authorization: token ...``)
with every call, and the service decides from that token whose jobs it may claim (stage jobs
only, never transfers or uploads). Item results go in batches, as the engine commits them,
with the claim of the stream's next items (``exchange``: one round trip per hand-over), the
error-free ones as runs of item ids and with the job's log lines waiting to be shipped (after
the call's JSON as they are: ``joblog.LOG_TAIL_TYPE``), and the claimed items come in their
narrow form (``items.narrow_items``), each where the service says it takes that.

A service that cannot be reached (restarting, a network outage) is waited out: every call is
tried again with a capped exponential back-off and jitter for up to ``PATIENCE_S`` seconds,
each attempt said in the worker's log, so a run goes on where it was instead of releasing its
job.

The job's log is written locally as in any run (a spool file in the user's cache folder, so
the worker's copy helpers append to it as they do elsewhere) and shipped to the service, which
keeps job logs, as it grows: with the item calls (each takes what waits, up to ``LOG_CHUNK``)
and, by a call of its own, what piles up beyond two calls' worth or waits a second
(``LogShipper``; ``LOG_SOON`` bytes where the service takes no lines with item calls), so that
little is left when the run ends; the last lines go with the job's ``finish`` (one round trip,
and the service appends them before the job shows finished).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import requests
import urllib3

from ..catalogue.checksums import ALGORITHMS
from ..errors import ServiceError
from ..states import JobState
from .contract import JobKind
from .items import ClaimedItem, id_runs, narrow_items
from .joblog import LOG_TAIL_ACTIONS, LOG_TAIL_TYPE, JobLog
from .models import JobRow
from .store import Beat

if TYPE_CHECKING:
    from .contract import KindRun
    from .run import EngineConfig

log = logging.getLogger("hera_stage_ext.jobs.worker")
T = TypeVar("T")

#: Where the worker API lives under the site service's URL.
WORKER_API = "hera-stage/api/worker/"
#: Answers a call is tried again after (the service restarting, a proxy between).
RETRY_STATUSES = (502, 503, 504)
#: Back-off while the service cannot be reached: the first wait, doubled at each attempt up to
#: the cap, each one drawn between half and all of that (jitter: the workers of a site's users
#: do not all call again at the same instant when the service comes back).
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.5, 15.0
#: How long a call goes on trying before it gives up (then the run releases its job, and the
#: worker claims it again later): a service restart or a short outage is waited out.
PATIENCE_S = 300.0
#: Most results one call carries, and most items one claim takes (the service's limit,
#: ``site.worker_ops.MAX_BATCH``).
RESULTS_PER_CALL = 10_000
#: A run's first claim, per stream (``EngineConfig.first_claim_batch``): over HTTP a claim's
#: answer is built, sent and read whole (about 270 bytes an item) before its first file is
#: handed over, and the helpers have nothing to do meanwhile: the four streams' 4,096 first
#: items came 17-35 ms after the job's start, 1,024 in 6-8 ms (a stream's next claim, 1,024
#: items, then its usual 4,096, come while the helpers write).
FIRST_CLAIM_ITEMS = 256
#: Most bytes of log shipped in one call, and most bytes of failed results' JSON (each a
#: message, where a done one is a number in a run of ids) one item call carries: an item call
#: carries both, so with its other fields it stays within the service's 1 MiB body
#: (``api.base.MAX_BODY_BYTES``) whatever its results. (A small-file job writes about 2 MB of
#: lines; smaller chunks than these cost the streams' claims calls of the log's own.)
LOG_CHUNK = 512 << 10
RESULT_BYTES = 384 << 10
#: A run's log is shipped as soon as this much is waiting (checked every ``LOG_POLL_S``), not
#: only once a second: a small-file job writes megabytes of per-file lines a second, which
#: would otherwise all wait for the run's end (a round trip per ``LOG_CHUNK`` then).
LOG_SOON, LOG_POLL_S = 96 << 10, 0.1


_JSON_HEADERS = {"Content-Type": "application/json"}
_TAIL_HEADERS = {"Content-Type": LOG_TAIL_TYPE}


def default_spool_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "hera_stage" / "worker-logs"


class HttpJobStore:
    db = None  # no catalogue: kinds that need it never reach a user's worker

    def __init__(self, site_url: str, token: str, *, timeout: float = 30.0,
                 spool_dir: Path | None = None, patience: float = PATIENCE_S,
                 stop: threading.Event | None = None,
                 results_per_call: int = RESULTS_PER_CALL) -> None:
        self.base = site_url.rstrip("/") + "/" + WORKER_API
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        # What the environment says of the service's URL (its proxy, a CA bundle), read once:
        # requests would read the whole environment twice on every call (a third of its CPU
        # a call), and every call goes to this one URL. Nor is ``~/.netrc`` read: its entry
        # for the host would replace the token.
        environment = self.session.merge_environment_settings(self.base, {}, None, None, None)
        self.session.proxies.update(environment["proxies"])
        self.session.verify = environment["verify"]
        self.session.trust_env = False
        self.timeout = timeout
        self.patience = patience
        self.results_per_call = results_per_call  # at most the service's limit
        self.first_claim_items = FIRST_CLAIM_ITEMS  # a run's first claim, per stream
        # Set when the worker stops: a call waiting for the service gives up at once.
        self.stop = stop or threading.Event()
        self.spool_dir = spool_dir or default_spool_dir()
        self._shippers: dict[int, LogShipper] = {}
        self._lock = threading.Lock()
        # What the job's answer said, so the run does not ask again: its stores' roots, the
        # run's first heartbeat (the claim has just renewed the lease), and the jobs none of
        # whose files waits for a recall (a count that only goes down).
        self._roots: dict[int, dict[str, str]] = {}
        self._first_beat: dict[int, Beat] = {}
        # The folder each run took (``note_taken``), until its next heartbeat says it.
        self._taken: dict[int, dict[str, Any]] = {}
        self._none_waiting: set[int] = set()
        # The result lines the last ``unfinished`` answer carried (none left to do), for the
        # finish that follows; dropped by any call that changes the job's items.
        self._lines: dict[int, list[str]] = {}
        # Whether the service takes error-free results as id runs (its job answer says so).
        self._result_runs = False
        # Whether its item calls take the job's log lines along (the same answer says so).
        self._items_log = False
        # Whether a ``record`` may ask for the job's unfinished items too (the same answer),
        # and the answer the run's last ``record`` brought, for the ``unfinished_paths`` that
        # follows it (one round trip fewer at the end of a run); dropped by any item call.
        self._record_unfinished = False
        self._unfinished: dict[int, dict[str, Any]] = {}
        # Whether its item calls' log lines may follow their JSON as they are (the same).
        self._log_tail = False
        # The algorithm of the narrow form of claimed items, where the service takes asking
        # for that form (about 65 % of the bytes: ``items.narrow_items``) and this worker
        # knows the algorithm (the same answer names it); else None.
        self._narrow_items: str | None = None
        # Whether another job waited when the last one was claimed (the claim's answer).
        self._more = True
        # The jobs' details their claims carried (``GET jobs/<id>``'s answer), for the
        # ``load_job`` that follows each claim (one round trip fewer at every job's start).
        self._claimed: dict[int, dict[str, Any]] = {}

    # ----- HTTP -------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call of the worker API; its JSON answer. Tried again, with a capped exponential
        back-off and jitter (``backoff``), while the service cannot be reached or answers
        502-504, for up to ``patience`` seconds (every call is safe to repeat: results are
        recorded once; a repeated claim may leave items to the next claim after a release)."""
        deadline = time.monotonic() + self.patience
        attempt = 0
        data, headers = self._encode(path, body)
        while True:
            reply: requests.Response | None = None
            try:
                reply, content = self._attempt(method, path, data, headers)
            except requests.RequestException as exc:
                problem = f"cannot be reached: {exc}"
            else:
                if reply.status_code not in RETRY_STATUSES:
                    break
                problem = f"answered {reply.status_code} {reply.reason}"
            attempt += 1
            wait = backoff(attempt)
            if time.monotonic() + wait > deadline or self.stop.is_set():
                if reply is None:
                    raise ServiceError(f"the site service {problem} (gave up after "
                                       f"{attempt} attempt(s))")
                break
            log.warning("the site service %s (%s %s, attempt %d); trying again in %.1f s",
                        problem, method, path, attempt, wait)
            if self.stop.wait(wait):
                raise ServiceError(f"the site service {problem}; the worker is stopping")
        assert reply is not None
        if reply.status_code >= 400:
            try:
                message = json.loads(content).get("message") or reply.reason
            except (ValueError, AttributeError):
                message = content[:200].decode("utf-8", "replace") or reply.reason
            if reply.status_code == 400 and headers is _TAIL_HEADERS \
                    and "is not valid JSON" in str(message):
                # A replica older than log tails beside the one that announced them (a
                # rolling upgrade) reads the body as JSON and refuses it, before doing
                # anything: no more tails (until a job's answer announces them again), and
                # this call once more with the lines inside. (Any other 400 is the call's.)
                log.warning("the site service refused log lines after the JSON (%s %s); "
                            "sending them inside it", method, path)
                self._log_tail = False
                return self.call(method, path, body)
            raise ServiceError(f"the site service answered {reply.status_code} to {method} "
                               f"{path}: {message}", reply.status_code)
        return json.loads(content)

    def _encode(self, path: str, body: dict[str, Any] | None
                ) -> tuple[bytes | None, dict[str, str] | None]:
        """A call's body and its headers. JSON in UTF-8 as it is (not ``\\u`` escapes, as
        requests' ``json=`` writes: a log's non-ASCII names take their own bytes of the
        service's body limit, not six each); an item call's log lines, where the service takes
        that (``log_tail``), after the JSON as they are (``joblog.LOG_TAIL_TYPE``)."""
        if body is None:
            return None, None
        log_text = body.get("log")
        if not (self._log_tail and log_text and isinstance(log_text, str)
                and path.split("/", 2)[-1] in LOG_TAIL_ACTIONS):
            return json.dumps(body, ensure_ascii=False, allow_nan=False).encode(), _JSON_HEADERS
        head = {key: value for key, value in body.items() if key != "log"}
        return (json.dumps(head, ensure_ascii=False, allow_nan=False).encode() + b"\n"
                + log_text.encode("utf-8"), _TAIL_HEADERS)

    def _attempt(self, method: str, path: str, data: bytes | None,
                 headers: dict[str, str] | None) -> tuple[requests.Response, bytes]:
        """One try of a call: the answer and its body, read in one piece (``raw.read``: a
        claim's answer is about 1 MB, which ``Response.content`` reads 10 KiB at a time, a
        tenth of a microsecond of the worker's CPU an item more; the connection goes back to
        the pool once its body is read). A body cut off is a service that cannot be
        reached, as a refused connection is."""
        reply = self.session.request(method, self.base + path, data=data, timeout=self.timeout,
                                     headers=headers,
                                     stream=True)
        try:
            return reply, reply.raw.read(decode_content=True)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            reply.close()
            raise requests.ConnectionError(exc) from exc

    def _job(self, job_id: int, action: str, body: dict[str, Any] | None = None,
             method: str = "POST") -> Any:
        if action.startswith("items/"):
            self._lines.pop(job_id, None)
            self._unfinished.pop(job_id, None)
        return self.call(method, f"jobs/{job_id}/{action}", body)

    # ----- JobStore ---------------------------------------------------------------------------
    def reconcile(self) -> list[int]:
        return []  # the service takes over the jobs of dead workers (their leases run out)

    def claim_job(self, worker_id: str, lease_seconds: float,
                  skip: Collection[int] = ()) -> tuple[int, bool] | None:
        answer = self.call("POST", "claim", {"worker_id": worker_id,
                                             "lease_seconds": lease_seconds,
                                             "skip": list(skip)})
        if answer.get("job") is None:
            return None
        # (A service older than "more" says nothing: claim again, as before.)
        self._more = answer.get("more") is not False
        job_id = int(answer["job"])
        detail = answer.get("detail")
        with self._lock:
            # (A service older than "detail" sends none: ``load_job`` asks, as before.)
            if isinstance(detail, dict) and detail.get("id") == job_id:
                self._claimed[job_id] = detail
            else:
                self._claimed.pop(job_id, None)
        return job_id, bool(answer["resumed"])

    def tune(self, config: EngineConfig) -> None:
        """Set ``config`` for runs over this store. A run's results go with its streams' next
        claims (``exchange``: a stream claims every 1,024-4,096 items anyway), up to what one
        call carries, not in a ``record`` call of their own once 4,096 wait: that call stalls
        the stream making it (its next hand-over waits for the answer) and costs the service
        a request; a quiet second still commits (``flush_seconds``). A run's first claim is
        a smaller one (``FIRST_CLAIM_ITEMS``), so that the helpers start sooner."""
        config.commit_items = self.results_per_call
        config.first_claim_batch = self.first_claim_items

    def more_jobs(self) -> bool:
        """Whether the service said, with the job it gave last, that another job waits."""
        return self._more

    def load_job(self, job_id: int) -> JobRow:
        """The job, as its claim's answer carried it (else asked: ``GET jobs/<id>``); what
        comes with it is kept for the run's first asks (its stores' roots, its first
        heartbeat, whether any of its files waits for a recall) and the service's features."""
        with self._lock:
            data = self._claimed.pop(job_id, None)
        if data is None:
            data = self.call("GET", f"jobs/{job_id}")
        with self._lock:
            if isinstance(data.get("store_roots"), dict):
                self._roots[job_id] = dict(data["store_roots"])
            if isinstance(data.get("unavailable"), list):  # (a service older than it: asked)
                self._first_beat[job_id] = Beat(
                    "cancel" if data.get("cancel_requested") else "ok",
                    frozenset(data["unavailable"]))
            # A service that takes results as id runs says so (an older one would ignore them).
            self._result_runs = data.get("result_runs") is True
            self._items_log = data.get("items_log") is True
            self._record_unfinished = data.get("record_unfinished") is True
            narrow = data.get("narrow_items")
            self._narrow_items = (narrow if isinstance(narrow, str) and narrow in ALGORITHMS
                                  else None)
            self._log_tail = data.get("log_tail") is True
            self._unfinished.pop(job_id, None)
            if data.get("waiting") == 0:
                self._none_waiting.add(job_id)
            else:
                self._none_waiting.discard(job_id)
        # This worker confines every job's folder itself, whatever the service recorded.
        options = {**(data.get("options") or {}), "recorded": True}
        return JobRow(id=data["id"], owner=data["owner"], kind=data["kind"], state=data["state"],
                   destination=data["destination"], method=data["method"], options=options,
                   missing=list(data.get("missing") or []), log_path="",
                   cancel_requested=bool(data.get("cancel_requested")),
                   files_total=data.get("files_total", 0), bytes_total=data.get("bytes_total", 0),
                   worker_id=data.get("worker_id"))

    def is_active(self, job_id: int) -> bool:
        try:
            return bool(self._job(job_id, "active", method="GET")["active"])
        except ServiceError as exc:
            if exc.status == 404:  # not one of this user's jobs: its marker is no claim
                return False
            raise

    def store_roots(self, job_id: int) -> dict[str, str]:
        with self._lock:
            known = self._roots.pop(job_id, None)
        if known is not None:
            return known
        return dict(self._job(job_id, "stores", method="GET")["roots"])

    def claim_items(self, job_id: int, worker_id: str, n: int,
                    max_bytes: int | None = None) -> list[ClaimedItem]:
        answer = self._job(job_id, "items/claim", {"worker_id": worker_id,
                                                   "n": min(n, RESULTS_PER_CALL),
                                                   "max_bytes": max_bytes, **self._form()})
        return _claimed(answer)

    def _form(self) -> dict[str, Any]:
        """What an item claim asks of its answer's form: the narrow one with the algorithm the
        service named (``narrow_items``), where this worker knows it; an older service is
        asked nothing (it would refuse no field, but nor would it read one)."""
        return {"narrow": self._narrow_items} if self._narrow_items else {}

    def requeue(self, job_id: int, item_ids: Sequence[int]) -> None:
        if item_ids:
            self._job(job_id, "items/requeue", {"ids": list(item_ids)})

    def record(self, job_id: int, results: list[tuple[ClaimedItem, str, str]], *,
               last: bool = False) -> None:
        """Record ``results``. With ``last`` (the run's last record, before it asks whether any
        item is left), the last call asks the service for the job's unfinished items too,
        where it takes that, and keeps the answer for ``unfinished_paths``."""
        ask_left = last and self._record_unfinished
        if not results and not ask_left:
            return
        # (Asking, with no result left to record: the question alone, as ``unfinished``.)
        parts = self._parts(results)
        for i, part in enumerate(parts):
            body = self._results(part)
            ask = ask_left and i == len(parts) - 1
            answer = self._with_log(job_id, "items/record",
                                    {**body, "unfinished": True} if ask else body)
            if ask and isinstance(answer.get("paths"), list):
                self._unfinished[job_id] = answer

    def _parts(self, results: list[tuple[ClaimedItem, str, str]]
               ) -> list[list[tuple[ClaimedItem, str, str]]]:
        """``results`` cut into what one call carries: at most ``results_per_call``, their
        messages at most ``RESULT_BYTES`` of JSON (a job whose files all fail, each with a
        message naming its path, is recorded in several calls); always one part, perhaps
        empty."""
        parts: list[list[tuple[ClaimedItem, str, str]]] = []
        start, size = 0, 0
        for i, (_item, _state, error) in enumerate(results):
            n = len(json.dumps(error, ensure_ascii=False).encode()) + 32 if error else 0
            if i > start and (i - start >= self.results_per_call or size + n > RESULT_BYTES):
                parts.append(results[start:i])
                start, size = i, 0
            size += n
        parts.append(results[start:])
        return parts

    def _with_log(self, job_id: int, action: str, body: dict[str, Any]) -> Any:
        """An item call, carrying the job's log lines waiting to be shipped (where the
        service takes them: one call a hand-over, not one more for its lines)."""
        shipper = self._shippers.get(job_id) if self._items_log else None
        if shipper is None:
            return self._job(job_id, action, body)
        return shipper.ship_then(
            lambda text: self._job(job_id, action, {**body, "log": text} if text else body))

    def _results(self, results: list[tuple[ClaimedItem, str, str]]) -> dict[str, Any]:
        """``results`` as a call's body carries them: the error-free ones as runs of
        consecutive ids per state (``runs``: a hand-over's results are mostly one run of
        "done", a few numbers instead of a triple a file, for this worker to encode and the
        service to decode and check) where the service takes them, the others one by one."""
        if not self._result_runs:
            return {"results": [[item.id, state, error] for item, state, error in results]}
        plain: dict[str, list[int]] = {}
        others = []
        for item, state, error in results:
            if error or state not in ("done", "skipped"):
                others.append([item.id, state, error])
            else:
                plain.setdefault(state, []).append(item.id)
        return {"results": others,
                "runs": {state: [list(run) for run in id_runs(ids)]
                         for state, ids in plain.items()}}

    def exchange(self, job_id: int, worker_id: str, results: list[tuple[ClaimedItem, str, str]],
                 n: int, max_bytes: int | None = None) -> list[ClaimedItem]:
        """The results of the last hand-over and the next items, one round trip (more when
        the results are more than one call may carry: all but the last part recorded
        first)."""
        *first, last = self._parts(results)
        for part in first:
            self.record(job_id, part)
        answer = self._with_log(job_id, "items/exchange", {
            "worker_id": worker_id, "n": min(n, RESULTS_PER_CALL), "max_bytes": max_bytes,
            **self._form(), **self._results(last)})
        return _claimed(answer)

    def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float,
                  stores: Collection[str], moving: int = 0) -> Beat:
        with self._lock:
            first = self._first_beat.pop(job_id, None)
        if first is not None:
            return first
        self._send_taken(job_id)
        answer = self._job(job_id, "heartbeat", {"worker_id": worker_id,
                                                 "lease_seconds": lease_seconds,
                                                 "stores": list(stores), "moving": moving})
        unavailable = answer.get("unavailable")
        return Beat(answer["state"], None if unavailable is None else frozenset(unavailable))

    def unfinished_paths(self, job_id: int) -> list[str]:
        answer = self._unfinished.pop(job_id, None) or self._job(job_id, "unfinished",
                                                                  method="GET")
        if isinstance(answer.get("lines"), list):
            self._lines[job_id] = [str(line) for line in answer["lines"]]
        return list(answer["paths"])

    def note_taken(self, job_id: int, worker_id: str, pin: list[int], made: bool) -> None:
        """Said by the run's next heartbeat (its own request, from the heartbeat's thread;
        or by the release, if that comes first), not now: a run asks nothing between its
        claim and its first items (``load_job``), and only a later attempt needs the pin."""
        with self._lock:
            self._taken[job_id] = {"worker_id": worker_id, "pin": pin, "made": made}

    def _send_taken(self, job_id: int) -> None:
        with self._lock:
            taken = self._taken.pop(job_id, None)
        if taken is None:
            return
        try:
            self._job(job_id, "taken", taken)
        except ServiceError as exc:
            if exc.status >= 500:  # not reached: said with the next heartbeat
                with self._lock:
                    self._taken.setdefault(job_id, taken)
            # (Else refused: a service older than it, which keeps no pin, or a job this
            # worker no longer holds; the folder was checked against any pin kept.)

    def _drop_taken(self, job_id: int) -> None:
        """The run ended the job before its first heartbeat (its end said to the service):
        no later attempt needs its folder's pin (a retry takes the folder afresh). Dropped
        only once said: if the end fails, the release sends the pin."""
        with self._lock:
            self._taken.pop(job_id, None)

    def waiting(self, job_id: int) -> int:
        if job_id in self._none_waiting:
            return 0
        try:
            waiting = int(self._job(job_id, "waiting", method="GET")["waiting"])
            if not waiting:
                self._none_waiting.add(job_id)
            return waiting
        except ServiceError as exc:
            if exc.status == 400 and "no worker action" in str(exc):
                return 0  # a service older than recalls for users' workers: none waits
            raise

    def finish(self, job: JobRow, kind: JobKind, run: KindRun) -> str:
        state = self._finish(job, kind, run)
        self._drop_taken(job.id)
        return state

    def _finish(self, job: JobRow, kind: JobKind, run: KindRun) -> str:
        lines = self._lines.pop(job.id, None)
        if lines is None:
            lines = list(self._job(job.id, "results", method="GET")["lines"])
        kind.finish(run, job, lines)  # the result marker, in the user's folder
        body = {"worker_id": job.worker_id or "", "made": bool(job.options.get("made"))}
        shipper = self._shippers.get(job.id)
        if shipper is None:
            return str(self._job(job.id, "finish", body)["state"])
        def finish_with(text: str) -> Any:
            answer = self._job(job.id, "finish", {**body, "log": text})
            if text and "logged" not in answer:  # a service older than it: they go after
                self.call("POST", f"jobs/{job.id}/log", {"text": text})
            return answer

        # The log's last lines go with the finish (the service appends them first).
        return str(shipper.ship_then(finish_with)["state"])

    def finish_cancelled(self, job: JobRow, kind: JobKind) -> str:
        answer = self._job(job.id, "cancelled", {"worker_id": job.worker_id or ""})
        self._drop_taken(job.id)
        removed = kind.cancel_at_target(job, int(answer["left"]), list(answer["unfinished"]))
        shipper = self._shippers.get(job.id)
        if shipper is not None:
            shipper.log(f"job {job.id} cancelled: {answer['left']} file(s) not staged, "
                        f"{removed} temporary file(s) removed")
        return JobState.CANCELLED

    def fail(self, job: JobRow, worker_id: str, error: str) -> str:
        self._ship(job.id)
        state = str(self._job(job.id, "fail", {"worker_id": worker_id, "error": error})["state"])
        self._drop_taken(job.id)
        return state

    def release(self, job_id: int, worker_id: str, error: str | None = None) -> None:
        self._ship(job_id)
        self._send_taken(job_id)  # (a later attempt takes this folder or none)
        self._job(job_id, "release", {"worker_id": worker_id, "error": error})

    def log(self, job: JobRow) -> JobLog:
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.spool_dir / f"job-{job.id}-{uuid.uuid4().hex[:8]}.log"
        # Where the item calls carry the lines, this ships only what piles up beyond two
        # calls' worth (a small-file run's streams call every 50-100 ms, each taking what
        # waits: a call of its own for the lines would cost the service a request and hold
        # up the streams' item calls meanwhile), and a quiet run's lines once a second.
        shipper = LogShipper(self, job.id, JobLog(path),
                             soon=2 * LOG_CHUNK if self._items_log else LOG_SOON)
        with self._lock:
            old = self._shippers.pop(job.id, None)
            self._shippers[job.id] = shipper
        if old is not None:
            old.close()
        shipper.start()
        return shipper.joblog

    def close_log(self, job: JobRow, log: JobLog) -> None:
        with self._lock:
            shipper = self._shippers.get(job.id)
            if shipper is not None and shipper.joblog is log:
                del self._shippers[job.id]
            else:
                shipper = None
        if shipper is not None:
            shipper.close()

    def _ship(self, job_id: int) -> None:
        shipper = self._shippers.get(job_id)
        if shipper is not None:
            shipper.ship()

    def close(self) -> None:
        for shipper in list(self._shippers.values()):
            shipper.close()
        self.session.close()


def _claimed(answer: dict[str, Any]) -> list[ClaimedItem]:
    """An item call's claimed items, in the form its answer says (``"narrow": "<algorithm>"``:
    the narrow form, its lone checksums of that algorithm, ``items.narrow_items``; else the
    wide one, ``ClaimedItem``'s fields)."""
    narrow = answer.get("narrow")
    if isinstance(narrow, str):
        return narrow_items(answer["items"], narrow)
    return [ClaimedItem(*row) for row in answer["items"]]


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, capped, with jitter."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


class LogShipper:
    """Sends the whole lines appended to a run's local log to the service: as soon as
    ``soon`` bytes wait (looked at every ``poll`` seconds), at least every ``interval``
    seconds, and on ``close`` (which removes the local file once all of it is sent)."""

    def __init__(self, store: HttpJobStore, job_id: int, joblog: JobLog,
                 interval: float = 1.0, soon: int = LOG_SOON, poll: float = LOG_POLL_S) -> None:
        self.store, self.job_id, self.joblog, self.interval = store, job_id, joblog, interval
        self.soon, self.poll = soon, poll
        self.offset = 0
        self._sent = time.monotonic()  # when lines last went (by any call)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"job{job_id}-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def log(self, message: str) -> None:
        self.joblog(message)
        self.ship()

    def _waiting(self) -> int:
        """Bytes written to the local log (by the copy helpers too) and not shipped yet."""
        try:
            return os.stat(self.joblog.path).st_size - self.offset
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            if self._waiting() < self.soon and time.monotonic() - self._sent < self.interval:
                continue
            self._sent = time.monotonic()
            try:
                self.ship()
            except Exception as exc:  # the service away for a moment: the lines wait
                log.warning("job %s: log not shipped yet: %s", self.job_id, exc)

    def ship(self) -> None:
        """Send the whole lines not sent yet."""
        self._send(None)

    def ship_then(self, last: Callable[[str], T]) -> T:
        """``ship``, but the last part (up to ``LOG_CHUNK``, perhaps empty) goes by
        ``last(text)`` (the job's finish, carrying them), whose answer is returned."""
        return cast(T, self._send(last))

    def _send(self, last: Callable[[str], Any] | None) -> Any:
        self.joblog.flush()
        with self._lock:
            try:
                f = open(self.joblog.path, "rb")
            except FileNotFoundError:
                return None if last is None else last("")
            with f:
                f.seek(self.offset)
                data = f.read(LOG_CHUNK)
                while True:
                    end = data.rfind(b"\n") + 1
                    text = data[:end].decode("utf-8", "replace")
                    # The last part: the file ended within it (or a line longer than a call
                    # may carry, left where it is).
                    if last is not None and (len(data) < LOG_CHUNK or end == 0):
                        answer = last(text)
                        self.offset += end
                        if end:
                            self._sent = time.monotonic()
                        return answer
                    if end == 0:
                        return None
                    self.store.call("POST", f"jobs/{self.job_id}/log", {"text": text})
                    self.offset += end
                    f.seek(self.offset)
                    data = f.read(LOG_CHUNK)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self.ship()
        except Exception as exc:
            log.warning("job %s: the end of its log could not be sent (%s); it stays in %s",
                        self.job_id, exc, self.joblog.path)
            return
        try:
            os.unlink(self.joblog.path)
        except FileNotFoundError:
            pass
