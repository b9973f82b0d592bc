"""The worker process: ``python -m hera_stage_ext.jobs.worker --db-url URL`` (over the
catalogue database) or ``--site-url URL`` (a user's worker in site mode: over the site
service's worker API, with the user's token in ``$HERA_STAGE_SITE_TOKEN``).

Runs jobs outside the Jupyter server, so a restart or an idle-cull of the server loses nothing.
Loops: reconcile (take over the jobs of dead workers), claim jobs and run each in a thread of
its own (several at once); exits cleanly on SIGTERM/SIGINT, releasing its jobs so the next
worker resumes them. Several workers may share a database: claims are atomic and leased.
Everything it asks of the job store goes through ``store.JobStore``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalogue.db import Database
from ..standard_kinds import standard_kinds  # the process's composition root: its kinds
from .copy_pool import CopyPool, default_size
from .engine import new_worker_id
from .run import EngineConfig, run_job
from .store import DbJobStore, JobStore

if TYPE_CHECKING:
    from .http_store import HttpJobStore

log = logging.getLogger("hera_stage_ext.jobs.worker")

#: Back-off after a job failed to run: the first wait, doubled each time, up to the last.
HOLD_FIRST_SECONDS, HOLD_MAX_SECONDS = 5.0, 300.0

#: Environment variable carrying the database URL to a worker started by the server.
DB_URL_ENV = "HERA_STAGE_DB_URL"
#: Environment variable carrying the user's token to a worker in site mode (--site-url).
SITE_TOKEN_ENV = "HERA_STAGE_SITE_TOKEN"
#: The signal that makes an idle worker claim at once (its server sends it when a job is
#: launched). SIGURG because its default action is to be ignored: a worker not yet listening
#: (just started, or of an older version) is not harmed by it.
WAKE_SIGNAL = signal.SIGURG


class Worker:
    """Claims and runs jobs until ``stop`` is set: up to ``max_jobs`` at once, each in a thread
    of its own, so that one job waiting (a transfer outside its peer's hours, a peer that is
    down) or one very large job does not hold up the others."""

    def __init__(self, store: JobStore | Database, config: EngineConfig | None = None,
                 worker_id: str | None = None, pool: CopyPool | None = None,
                 owner: str | None = None, max_jobs: int = 4) -> None:
        # ``owner``: only this user's jobs (None: anyone's), for a store given as a database.
        self.store: JobStore = DbJobStore(store, owner) if isinstance(store, Database) else store
        self.config = config or EngineConfig()
        self.worker_id = worker_id or new_worker_id()
        self.stop = threading.Event()
        # Claim now: a job was launched (the wake signal), a job ended (a slot is free) or stop
        # is set. A SimpleQueue, not an Event: its ``put`` is safe in a signal handler, which
        # runs in the main thread, maybe while that thread holds an Event's lock in ``wait``.
        self.wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.pool = pool
        self.max_jobs = max(1, max_jobs)
        # Jobs that failed to run (the database away, a bug): job id -> (failures, monotonic
        # time before which this worker does not claim it again). Without it such a job is
        # claimed again at once, in a loop as fast as the worker can claim.
        self._held: dict[int, tuple[int, float]] = {}
        self._held_lock = threading.Lock()

    def run(self, poll_seconds: float = 1.0, reconcile_seconds: float = 10.0,
            exit_when_idle: bool = False, idle_exit_seconds: float | None = None) -> None:
        """Work until stopped; with ``exit_when_idle`` return as soon as no job is left, with
        ``idle_exit_seconds`` once none has been left for that long."""
        last_reconcile = 0.0
        idle_since = time.monotonic()
        running: dict[int, threading.Thread] = {}
        try:
            while not self.stop.is_set():
                for job_id in [j for j, t in running.items() if not t.is_alive()]:
                    running.pop(job_id).join()
                    idle_since = time.monotonic()
                claimed = None
                try:
                    if time.monotonic() - last_reconcile >= reconcile_seconds:
                        taken = self.store.reconcile()
                        if taken:
                            log.info("jobs of dead workers to resume: %s", taken)
                        last_reconcile = time.monotonic()
                    if len(running) < self.max_jobs:
                        claimed = self.store.claim_job(self.worker_id,
                                                       self.config.lease_seconds,
                                                       skip=[*running, *self._holding()])
                except Exception:  # the database away for a moment: try again next poll
                    log.exception("cannot claim jobs now; trying again")
                if claimed is not None:
                    job_id, resumed = claimed
                    running[job_id] = threading.Thread(
                        target=self._run_one, args=(job_id, resumed), name=f"job-{job_id}",
                        daemon=True)
                    running[job_id].start()
                    if self.store.more_jobs():
                        continue  # room for more: claim again at once
                    # (None waits, the store says: the next poll or wake-up claims again.)
                if not running:
                    idle = time.monotonic() - idle_since
                    if exit_when_idle or (idle_exit_seconds is not None
                                          and idle >= idle_exit_seconds):
                        return
                with contextlib.suppress(queue.Empty):
                    self.wake.get(timeout=poll_seconds)
                    while True:  # one claim round answers every wake-up so far
                        self.wake.get_nowait()
        finally:
            for thread in running.values():  # on stop: each releases its job
                thread.join()

    def _holding(self) -> list[int]:
        now = time.monotonic()
        with self._held_lock:
            return [job_id for job_id, (_, until) in self._held.items() if until > now]

    def _run_one(self, job_id: int, resumed: bool) -> None:
        try:
            self._run_job(job_id, resumed)
        finally:
            self.wake.put(None)  # a slot is free: claim the next job now

    def _run_job(self, job_id: int, resumed: bool) -> None:
        log.info("running job %s%s", job_id, " (resumed)" if resumed else "")
        try:
            state = run_job(self.store, job_id, self.worker_id, self.config, self.stop,
                            resumed, self.pool)
        except Exception as exc:  # one job's trouble must not end the worker
            # E.g. its log cannot be written, or the database went away mid-finish: the job
            # goes back to the queue, resumed where it was by the next claim after a back-off.
            with self._held_lock:
                failures = self._held.get(job_id, (0, 0.0))[0] + 1
                hold = min(HOLD_MAX_SECONDS, HOLD_FIRST_SECONDS * 2 ** (failures - 1))
                self._held[job_id] = (failures, time.monotonic() + hold)
            log.exception("job %s: the worker could not run it; released, tried again in "
                          "%.0f s", job_id, hold)
            with contextlib.suppress(Exception):
                self.store.release(job_id, self.worker_id, error=(
                    f"the worker could not run it ({type(exc).__name__}: {exc}); it tries "
                    f"again in {hold:.0f} s"))
            return
        with self._held_lock:
            self._held.pop(job_id, None)
        log.info("job %s: %s", job_id, state)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hera_stage_ext.jobs.worker",
                                     description=__doc__.splitlines()[0])
    defaults = EngineConfig()
    parser.add_argument("--db-url", default=os.environ.get(DB_URL_ENV),
                        help=f"SQLAlchemy URL of the catalogue (default: ${DB_URL_ENV}, which "
                        "keeps a password out of the process list)")
    parser.add_argument("--site-url", default=None,
                        help="the site service's URL (site mode: a user's worker, which runs "
                        "that user's stage jobs through the service's worker API, never the "
                        f"database); the user's token in ${SITE_TOKEN_ENV}")
    parser.add_argument("--allowed-root", action="append", default=None, metavar="DIR",
                        help="a folder staging may write into (repeat for several); a job's "
                        "destination outside them is refused before anything is written "
                        "(default: with --site-url your home directory, else only the "
                        "server's check at launch)")
    parser.add_argument("--kinds", default=None,
                        help="run only jobs of these kinds, comma-separated (the site's own "
                        "worker: transfer,upload)")
    parser.add_argument("--streams", type=int, default=defaults.streams,
                        help="parallel item streams per job")
    parser.add_argument("--lease", type=float, default=defaults.lease_seconds,
                        help="seconds without a heartbeat after which a worker counts as dead")
    parser.add_argument("--heartbeat", type=float, default=defaults.heartbeat_seconds,
                        help="seconds between lease renewals and cancel checks")
    parser.add_argument("--chunk-size", type=int, default=defaults.chunk_size,
                        help="copy buffer per stream, bytes")
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync of copies")
    parser.add_argument("--copy-processes", type=int, default=default_size(),
                        help="helper processes that move small files (default: one per "
                        "core; 0 moves everything in the worker's own threads)")
    parser.add_argument("--commit-seconds", type=float, default=defaults.flush_seconds,
                        help="seconds between commits (renames of the verified copies to their "
                        "final names, and their results recorded)")
    parser.add_argument("--jobs", type=int, default=4,
                        help="jobs run at once (each with its --streams)")
    parser.add_argument("--owner", default=None,
                        help="run only this user's jobs (what a server passes for its user's "
                        "worker); default: every user's, for a site's service workers")
    parser.add_argument("--poll", type=float, default=1.0,
                        help=f"seconds between claims when idle (SIG{WAKE_SIGNAL.name[3:]} "
                        "makes it claim at once)")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit when no job is left instead of waiting for more")
    parser.add_argument("--idle-exit", type=float, default=None,
                        help="exit after this many seconds without a job")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower this worker's CPU priority by this much (0-19): the "
                        "server and the user's kernels go first when the CPU is short")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.site_url and (args.db_url or args.owner or args.kinds):
        # A user's worker learns who it works for from the service, never from the database.
        parser.error("--site-url goes without --db-url (and $HERA_STAGE_DB_URL), --owner "
                     "and --kinds")
    if not args.site_url and not args.db_url:
        parser.error(f"--db-url, ${DB_URL_ENV} or --site-url is required")
    token = os.environ.get(SITE_TOKEN_ENV, "")
    if args.site_url and not token:
        parser.error(f"--site-url needs the user's token in ${SITE_TOKEN_ENV}")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before any thread or helper starts: they inherit it.
    lower_priority(args.nice)
    default_roots = [os.path.expanduser("~")] if args.site_url else []
    roots = tuple(os.path.realpath(r) for r in (args.allowed_root or default_roots))
    config = EngineConfig(streams=args.streams, lease_seconds=args.lease,
                          heartbeat_seconds=args.heartbeat, chunk_size=args.chunk_size,
                          fsync=not args.no_fsync, flush_seconds=args.commit_seconds,
                          allowed_roots=roots, kinds=standard_kinds())
    store: JobStore
    service: HttpJobStore | None = None  # a worker in site mode: over the site service
    if args.site_url:
        from .http_store import HttpJobStore  # requests: only for a worker in site mode

        store = service = HttpJobStore(args.site_url, token)
        service.tune(config)
        os.environ.pop(SITE_TOKEN_ENV, None)  # not inherited by the copy helpers
    else:
        kinds = [k for k in (args.kinds or "").split(",") if k] or None
        store = DbJobStore(Database(args.db_url), args.owner, kinds)
    # Made here, from the main thread, so each helper dies with this process (its spawner
    # thread, started now, starts them all; they start with the first hand-over: a worker
    # that only transfers never pays for them).
    pool = (CopyPool(args.copy_processes, config.chunk_size, config.chunk_delay)
            if args.copy_processes > 0 else None)
    worker = Worker(store, config, pool=pool, max_jobs=args.jobs)
    quiet_garbage_collector()
    if service is not None:
        service.stop = worker.stop  # stop waiting for the service when the worker stops

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signum)
        worker.stop.set()
        worker.wake.put(None)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(WAKE_SIGNAL, lambda _signum, _frame: worker.wake.put(None))
    log.info("worker %s started", worker.worker_id)
    try:
        worker.run(poll_seconds=args.poll, exit_when_idle=args.exit_when_idle,
                   idle_exit_seconds=args.idle_exit)
    finally:
        if pool is not None:
            pool.close()
        store.close()
    log.info("worker %s stopped", worker.worker_id)
    return 0


def quiet_garbage_collector() -> None:
    """Keep the cyclic garbage collector off what lives as long as the worker (modules,
    SQLAlchemy's tables and compiled statements: ``gc.freeze``) and let it run less often: a
    job of many small files allocates a few objects per file, almost none in cycles, and each
    collection walked every object the worker holds (a tenth of its time per small file)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def lower_priority(increment: int) -> None:
    """Yield the CPU to other work when it is short. ``nice`` ranks this process's threads
    against others in its scheduling group only, and where the kernel groups processes by
    session (autogroup) the worker, started in a session of its own, is alone in its group:
    so the group's own nice value is raised too (allowed without privileges)."""
    if increment <= 0:
        return
    os.nice(increment)
    with contextlib.suppress(OSError):  # no autogroup here, or already lower
        Path("/proc/self/autogroup").write_text(str(min(increment, 19)))


if __name__ == "__main__":
    sys.exit(main())
