"""The server's worker launcher with real worker processes: one worker per user across server
starts, replaced when its configuration (here: a peer's secret) changed, so no worker sends with
peers it was given before."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.jobs import create_stage_job, get_job
from hera_stage_ext.jobs.launcher import WorkerLauncher
from hera_stage_ext.jobs.launcher import _is_worker as _alive  # a zombie is not alive
from hera_stage_ext.jobs.worker import WAKE_SIGNAL
from hera_stage_ext.transfer.peer_config import peers_env

from .job_fixtures import make_site, wait_for


@pytest.fixture
def launchers(tmp_path: Path) -> Iterator[list[WorkerLauncher]]:
    """Launchers made by the test (one per "server start"); their workers are stopped after."""
    made: list[WorkerLauncher] = []
    yield made
    for launcher in made:
        if launcher.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launcher.pid, signal.SIGTERM)
        if launcher._process is not None:
            launcher._process.wait(10)


def test_servers_share_their_users_worker_until_its_configuration_changes(
        tmp_path: Path, launchers: list[WorkerLauncher]) -> None:
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    database.dispose()

    def server_start(secret: str, url: str = database.url) -> WorkerLauncher:
        launcher = WorkerLauncher(
            url, streams=1, idle_exit_seconds=120, copy_processes=1, owner="alice",
            log_file=tmp_path / "logs" / "worker.log",
            env=peers_env("site-a", {"b": {"url": "http://127.0.0.1:9/", "secret": secret}}))
        launchers.append(launcher)
        return launcher

    first = server_start("s" * 40)
    pid = first.ensure_running()
    assert first.ensure_running() == pid
    # The next server start (the first one crashed or was culled), same configuration: it
    # adopts the running worker instead of starting a second one.
    assert server_start("s" * 40).ensure_running() == pid
    [record] = (tmp_path / "logs").glob("worker-alice-*.json")
    recorded = json.loads(record.read_text())
    assert recorded["pid"] == pid
    assert "s" * 40 not in json.dumps(recorded), "the secret is never written down"

    log = tmp_path / "logs" / "worker.log"
    wait_for(lambda: " started" in log.read_text())  # its signal handlers are set
    # A server started after the peer's secret changed: the old worker is stopped (it exits
    # cleanly, releasing its jobs) and a new one, with the new configuration, takes over.
    changed = server_start("t" * 40)
    new_pid = changed.ensure_running()
    assert new_pid != pid
    assert first._process is not None and first._process.wait(10) == 0
    assert _alive(new_pid)
    assert json.loads(record.read_text())["pid"] == new_pid
    # A worker that died is not adopted: the next start replaces it.
    os.kill(new_pid, signal.SIGKILL)
    assert changed._process is not None
    changed._process.wait(10)
    again = server_start("t" * 40).ensure_running()
    assert again not in (pid, new_pid)
    wait_for(lambda: _alive(again))
    # A server of the same user on another catalogue has a worker of its own, alongside.
    other = Database(f"sqlite:///{tmp_path / 'other.sqlite'}")
    other.upgrade()
    other.dispose()
    elsewhere = server_start("u" * 40, other.url).ensure_running()
    assert elsewhere != again
    wait_for(lambda: " started" in log.read_text().split(str(elsewhere))[-1])
    assert _alive(again) and _alive(elsewhere)


def nice_of(pid: int) -> int:
    """A process's nice value (field 19 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_worker_yields_the_cpu_to_the_server(
        tmp_path: Path, launchers: list[WorkerLauncher]) -> None:
    """The server's worker (and its copy helpers) run at a lower CPU priority, so a big stage
    does not make the user's server and kernels sluggish when the CPU is short."""
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    site = make_site(database, tmp_path / "archive", files_per_night=1, nights=1)
    # The helpers start with the first files a job hands them (a stage's), and stay.
    job = create_stage_job(database, "alice", site.names, "nice", "copy", site.roots,
                           log_dir=site.logs)
    launcher = WorkerLauncher(database.url, streams=1, idle_exit_seconds=120, copy_processes=1,
                              owner="alice", log_file=tmp_path / "logs" / "worker.log", nice=10)
    launchers.append(launcher)
    pid = launcher.ensure_running()
    assert wait_for(lambda: get_job(database, job["id"])["state"] == "succeeded", timeout=60)
    database.dispose()
    # Started by one of its threads: listed under that thread's task.
    helpers = wait_for(lambda: [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                                for child in (task / "children").read_text().split()])
    base = os.nice(0)
    assert nice_of(pid) == min(base + 10, 19)
    assert all(nice_of(helper) == nice_of(pid) for helper in helpers)


def test_a_launched_job_wakes_the_idle_worker(
        tmp_path: Path, launchers: list[WorkerLauncher]) -> None:
    """The server's worker polls the database only every ``poll_seconds`` when idle (hundreds of
    users' idle workers share one PostgreSQL), yet a job launched meanwhile starts at once: the
    launch wakes it."""
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    site = make_site(database, tmp_path / "archive", files_per_night=1, nights=1)
    launcher = WorkerLauncher(database.url, streams=1, idle_exit_seconds=120, copy_processes=1,
                              owner="alice", log_file=tmp_path / "logs" / "worker.log",
                              poll_seconds=600)
    launchers.append(launcher)
    launcher.ensure_running()
    log = tmp_path / "logs" / "worker.log"
    wait_for(lambda: " started" in log.read_text())
    time.sleep(1)  # past its first claim: idle, next poll in ten minutes
    job = create_stage_job(database, "alice", site.names, "woken", "copy", site.roots,
                           log_dir=site.logs)
    launcher.ensure_running()  # as the server does after every launch
    done = wait_for(lambda: get_job(database, job["id"])["state"] == "succeeded", timeout=60)
    assert done, get_job(database, job["id"])


def test_a_worker_flooded_with_wake_ups_keeps_working_and_stops(
        tmp_path: Path, launchers: list[WorkerLauncher]) -> None:
    """The wake-up arrives as a signal, handled in the worker's main thread whatever it is
    doing: thousands of them (a server's every launch, every second a job is queued) must
    neither hang the worker nor stop it from claiming and from exiting on SIGTERM."""
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    site = make_site(database, tmp_path / "archive", files_per_night=1, nights=1)
    launcher = WorkerLauncher(database.url, streams=1, idle_exit_seconds=120, copy_processes=1,
                              owner="alice", log_file=tmp_path / "logs" / "worker.log",
                              poll_seconds=0.001)  # its wait entered and left all the time
    launchers.append(launcher)
    pid = launcher.ensure_running()
    wait_for(lambda: " started" in (tmp_path / "logs" / "worker.log").read_text())
    for _ in range(20_000):
        os.kill(pid, WAKE_SIGNAL)
    job = create_stage_job(database, "alice", site.names, "flooded", "copy", site.roots,
                           log_dir=site.logs)
    launcher.ensure_running()
    wait_for(lambda: get_job(database, job["id"])["state"] == "succeeded", timeout=60)
    os.kill(pid, signal.SIGTERM)
    assert launcher._process is not None and launcher._process.wait(30) == 0


def test_a_worker_asked_not_to_sync_is_a_new_worker_that_still_stages_every_file(
        tmp_path: Path, launchers: list[WorkerLauncher]) -> None:
    """``worker_fsync = False`` (copies not made durable, as ``cp``): the server's next start
    replaces the user's durable worker with one started ``--no-fsync`` (what ``ps`` shows the
    admin), and its stage jobs still copy every file whole."""
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    site = make_site(database, tmp_path / "archive", files_per_night=2, nights=1)

    def server_start(fsync: bool) -> WorkerLauncher:
        launcher = WorkerLauncher(database.url, streams=1, idle_exit_seconds=120,
                                  copy_processes=1, owner="alice", fsync=fsync,
                                  log_file=tmp_path / "logs" / "worker.log")
        launchers.append(launcher)
        return launcher

    def command(pid: int) -> list[str]:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")

    durable = server_start(True).ensure_running()
    assert "--no-fsync" not in command(durable)
    unsynced = server_start(False).ensure_running()
    assert unsynced != durable and "--no-fsync" in command(unsynced)
    job = create_stage_job(database, "alice", site.names, "scratch", "copy", site.roots,
                           base=site.workspace, log_dir=site.logs)
    assert wait_for(lambda: get_job(database, job["id"])["state"] == "succeeded", timeout=60)
    assert get_job(database, job["id"])["files_done"] == len(site.names)
    database.dispose()
    for name in site.names:  # (a MIRIAD data set among them: a directory)
        assert ck.hash_path(site.workspace / "scratch" / site.rel[name]) == \
            ck.hash_path(site.sources[name])
