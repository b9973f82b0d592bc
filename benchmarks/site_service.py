"""Site mode for the benchmarks: a site service without a hub (``hera-stage site``), a user's
site token, and that user's worker over HTTP, as a site runs them.

``site_service`` writes the service's config file (the catalogue, the stores; no worker of its
own: the users' jobs are their workers'), issues the user's token (``site-token issue``, stored
hashed in the catalogue), starts ``hera-stage site`` on a loopback port and waits until it
answers. ``user_worker`` starts the user's worker the way a user's server in site mode does
(``WorkerLauncher`` with ``site_url``: ``--site-url``, the token in its environment, the
server's default worker settings), so its figures are the production command's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hera_stage_ext.app import StagingApp  # noqa: E402
from hera_stage_ext.catalogue.db import Database  # noqa: E402
from hera_stage_ext.jobs.launcher import WorkerLauncher  # noqa: E402
from hera_stage_ext.site import tokens  # noqa: E402

#: Scopes of the benchmark's user: searching, staging, and registering its files.
SCOPES = ("read", "stage", "ingest")
#: Variables that would point the service (or the worker) at something else.
_FOREIGN_ENV = ("JPY_PARENT_PID", "HERA_STAGE_URL", "HERA_STAGE_TOKEN", "JUPYTERHUB_API_TOKEN",
                "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_SERVICE_PREFIX", "HERA_STAGE_DB_URL",
                "HERA_STAGE_SITE_TOKEN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SiteService:
    """The running service: its process, base URL (ending in '/'), the user's token, the folder
    relative destinations are taken from (``root_dir``: the benchmark's workspace), its log."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    root_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 30) -> requests.Response:
        return requests.request(method, self.url + path, json=body, timeout=timeout,
                                headers={"Authorization": f"token {self.token}"})

    def api(self, path: str, body: Any = None) -> Any:
        reply = self.request("GET" if body is None else "POST", f"hera-stage/api/{path}", body)
        reply.raise_for_status()
        return reply.json()


@contextlib.contextmanager
def site_service(workdir: Path, db_url: str, stores: dict[str, Any], workspace: Path,
                 user: str = "bench") -> Iterator[SiteService]:
    """A ``hera-stage site`` process on ``db_url`` and ``stores`` until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "site_config.py"
    config.write_text(f"c.StagingApp.db_url = {db_url!r}\n"
                      f"c.StagingApp.stores = {stores!r}\n"
                      f"c.StagingApp.job_log_dir = {str(workdir / 'logs')!r}\n"
                      "c.StagingApp.start_worker = False\n"
                      # no background fixity audit during timed runs (as stage_bench's server)
                      "c.StagingApp.fixity_bytes_per_hour = 0\n")
    config.chmod(0o600)
    db = Database(db_url)
    db.upgrade()
    token = tokens.issue(db, user, SCOPES, "benchmark")[0]
    db.dispose()
    port = _free_port()
    command = [sys.executable, "-m", "hera_stage_ext.cli", "site", "--config", str(config),
               "--port", str(port), "--root-dir", str(workspace)]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(JUPYTER_CONFIG_DIR=str(workdir / "config"),
               JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
               JUPYTER_DATA_DIR=str(workdir / "data"))
    log_path = workdir / "service.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir, start_new_session=True)
    service = SiteService(process, f"http://127.0.0.1:{port}/", token, workspace, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError("the site service exited:\n" + log_path.read_text()[-3000:])
            with contextlib.suppress(requests.RequestException):
                if service.request("GET", "hera-stage/api/status", timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the site service did not answer within 120 s:\n"
                                   + log_path.read_text()[-3000:])
            time.sleep(0.25)
        yield service
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _default(name: str) -> Any:
    return StagingApp.class_traits()[name].default_value


@contextlib.contextmanager
def user_worker(service: SiteService, roots: Sequence[Path], log_file: Path,
                idle_exit_seconds: float = 3600.0, poll_seconds: float = 1.0) -> Iterator[int]:
    """The user's worker (over the service's worker API, the user's token), started as a
    user's server in site mode starts it, with the server's default settings; its pid. Stopped
    (SIGTERM: it releases its jobs) when the block ends. It looks for jobs every
    ``poll_seconds`` (a user's server wakes its worker at each launch; a job launched straight
    at the service, as the benchmarks' CLI does, waits for the next look: it does not count in
    a job's own time, which starts when the worker claims it)."""
    launcher = WorkerLauncher(
        site_url=service.url, site_token=service.token,
        allowed_roots=[os.path.realpath(r) for r in roots],
        streams=_default("worker_streams"), copy_processes=_default("worker_copy_processes"),
        jobs=_default("worker_jobs"), nice=_default("worker_nice"),
        idle_exit_seconds=idle_exit_seconds, log_file=log_file, poll_seconds=poll_seconds)
    pid = launcher.ensure_running()
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
