"""Starts the worker process for a Jupyter server, and starts it again when it has gone.

The worker runs in its own session, so it outlives the server: a restart or an idle-cull of the
server does not stop a copy in progress, and the next server start finds the job still running
(or, if the worker died too, resumes it). The worker exits by itself after a spell without work.
The database URL and the peers' secrets travel in the environment, never on the command line,
where ``ps`` shows them to everyone (a process's environment is readable by its user only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from .copy_pool import default_size
from .worker import DB_URL_ENV


class WorkerLauncher:
    def __init__(self, db_url: str, *, streams: int, idle_exit_seconds: float,
                 log_file: Path, env: Mapping[str, str] | None = None,
                 copy_processes: int = 0, owner: str | None = None, jobs: int = 4) -> None:
        self.db_url = db_url
        self.jobs = jobs
        # More for the worker's environment (transfer jobs: the peers, secrets included).
        self.env = dict(env or {})
        self.owner = owner
        self.streams = streams
        self.copy_processes = copy_processes or default_size()
        self.idle_exit_seconds = idle_exit_seconds
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> int:
        """Start a worker unless the one started last is still alive; return its pid."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return self._process.pid
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as log:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "hera_stage_ext.jobs.worker",
                     "--streams", str(self.streams), "--idle-exit", str(self.idle_exit_seconds),
                     "--copy-processes", str(self.copy_processes), "--jobs", str(self.jobs),
                     *(["--owner", self.owner] if self.owner else [])],
                    env={**os.environ, **self.env, DB_URL_ENV: self.db_url},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            return self._process.pid

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None
