"""Starts the worker process for a Jupyter server, and starts it again when it has gone.

The worker runs in its own session, so it outlives the server: a restart or an idle-cull of the
server does not stop a copy in progress, and the next server start finds the job still running
(or, if the worker died too, resumes it). The worker exits by itself after a spell without work.
The database URL and the peers' secrets travel in the environment, never on the command line,
where ``ps`` shows them to everyone (a process's environment is readable by its user only).

A worker's configuration is fixed when it starts, so the launcher records the worker it started
(``worker-<owner>-<catalogue>.json`` beside the worker log: its pid and a digest of its
configuration). The next server's launcher on that catalogue adopts that worker when the digest
matches (one worker per user, not one per server start), and stops it (SIGTERM: it releases
its jobs, which the new worker resumes where they were) when the configuration changed, e.g. a
peer's URL or secret. Servers on other catalogues keep their own workers.

The server calls ``ensure_running`` after every launch: a worker already running is woken
(``worker.WAKE_SIGNAL``) and claims the new job at once, so it polls the database only every
``poll_seconds`` when idle (a site with hundreds of users' idle workers on one PostgreSQL).

In site mode (``site_url``) the worker talks to the site service, never the database:
``--site-url`` and the user's ``--allowed-root`` folders on its command line, the user's token
in its environment (``HERA_STAGE_SITE_TOKEN``), and no database URL or peer variable there even
when the server's own environment has one. The service says whose jobs it may claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..transfer.peers import PEERS_ENV
from .copy_pool import default_size
from .worker import DB_URL_ENV, SITE_TOKEN_ENV, WAKE_SIGNAL

#: What a site-mode worker's environment never holds: the site's secrets.
_SITE_SECRETS = (DB_URL_ENV, PEERS_ENV, SITE_TOKEN_ENV)


class WorkerLauncher:
    def __init__(self, db_url: str = "", *, streams: int, idle_exit_seconds: float,
                 log_file: Path, env: Mapping[str, str] | None = None,
                 copy_processes: int = 0, owner: str | None = None, jobs: int = 4,
                 nice: int = 0, fsync: bool = True, poll_seconds: float = 10.0,
                 kinds: Sequence[str] = (),
                 site_url: str = "", site_token: str = "",
                 allowed_roots: Sequence[str] = ()) -> None:
        if bool(db_url) == bool(site_url):
            raise ValueError("a worker needs either a database URL or a site service URL")
        self.db_url = db_url
        self.site_url = site_url
        self.site_token = site_token
        self.allowed_roots = list(allowed_roots)
        self.poll_seconds = poll_seconds
        self.jobs = jobs
        self.nice = nice
        self.fsync = fsync  # False: the worker's --no-fsync (copies not made durable)
        # More for the worker's environment (transfer jobs: the peers, secrets included).
        self.env = dict(env or {})
        self.owner = owner
        self.kinds = tuple(kinds)  # only jobs of these kinds (the site's own worker)
        self.streams = streams
        self.copy_processes = copy_processes or default_size()
        self.idle_exit_seconds = idle_exit_seconds
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None  # a worker an earlier server started, same config
        self._lock = threading.Lock()
        # One record per user and catalogue: servers on other catalogues keep their workers.
        catalogue = hashlib.sha256((site_url or db_url).encode()).hexdigest()[:16]
        self.record = log_file.parent / f"worker-{owner or 'any'}-{catalogue}.json"

    def _command(self) -> list[str]:
        if self.site_url:  # the service knows whose jobs this worker may take
            whose = ["--site-url", self.site_url]
        else:
            whose = ["--owner", self.owner] if self.owner else []
        return [sys.executable, "-m", "hera_stage_ext.jobs.worker",
                "--streams", str(self.streams), "--idle-exit", str(self.idle_exit_seconds),
                "--copy-processes", str(self.copy_processes), "--jobs", str(self.jobs),
                "--nice", str(self.nice), "--poll", str(self.poll_seconds), *whose,
                *(arg for root in self.allowed_roots for arg in ("--allowed-root", root)),
                *(["--kinds", ",".join(self.kinds)] if self.kinds else []),
                *([] if self.fsync else ["--no-fsync"])]

    def _environment(self) -> dict[str, str]:
        if self.site_url:
            inherited = {k: v for k, v in os.environ.items() if k not in _SITE_SECRETS}
            return {**inherited, **self.env, SITE_TOKEN_ENV: self.site_token}
        return {**os.environ, **self.env, DB_URL_ENV: self.db_url}

    def _digest(self) -> str:
        # Secrets are in it: only the digest is written down. A new token (the hub's, at each
        # server start) makes a new worker: the old one's may be revoked.
        config = [self._command()[1:], sorted(self.env.items()), self.db_url, self.site_token]
        return hashlib.sha256(json.dumps(config).encode()).hexdigest()

    def ensure_running(self) -> int:
        """Start a worker unless the one started last (by this server, or by an earlier one
        with the same configuration) is still alive, and wake it; return its pid."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return _wake(self._process.pid)
            if self._adopted is not None and _is_worker(self._adopted):
                return _wake(self._adopted)
            recorded = self._recorded()
            if recorded is not None:
                pid, digest = recorded
                if digest == self._digest():
                    self._adopted = pid
                    return _wake(pid)
                _stop(pid)  # configured differently: it releases its jobs to the new one
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as log:
                self._process = subprocess.Popen(
                    self._command(), env=self._environment(),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._adopted = None
            partial = self.record.with_name(f".{self.record.name}.{os.getpid()}")
            partial.write_text(json.dumps({"pid": self._process.pid, "config": self._digest()}))
            partial.replace(self.record)
            return self._process.pid

    def _recorded(self) -> tuple[int, str] | None:
        """The recorded worker, if it is still alive: (pid, configuration digest)."""
        try:
            data = json.loads(self.record.read_text())
            pid, digest = int(data["pid"]), str(data["config"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (pid, digest) if _is_worker(pid) else None

    @property
    def pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        return self._adopted


def _is_worker(pid: int) -> bool:
    """True when ``pid`` is a live worker process of this user (not a reused pid)."""
    try:
        for _ in range(40):
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    return False
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv != [b""]:
                break
            time.sleep(0.025)  # forked and not yet exec'd (a worker started a moment ago)
        return b"hera_stage_ext.jobs.worker" in argv and os.stat(
            f"/proc/{pid}").st_uid == os.getuid()
    except (OSError, IndexError):
        return False


def _wake(pid: int) -> int:
    """Make the idle worker ``pid`` claim now; returns ``pid``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, WAKE_SIGNAL)
    return pid


def _stop(pid: int) -> None:
    """Ask a worker to stop: it releases its jobs and exits (the new worker, started at once,
    claims them as they are released)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
