"""Transfer jobs end to end between two real sites: REST, the CLI, the sending site's worker
process (killed and restarted), directory data sets, refusals, a peer that is down, allowed hours.

Site A is the demo archive (hera_stage_ext/demo.py, MIRIAD data set included) behind a real
``jupyter server`` whose own worker process runs the jobs (the peers reach it in its
environment); site B is an empty store behind another server. Each is the other's peer; A knows B
under several names (throttled, closed hours, wrong secret, down) to exercise the limits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import Event, File, Instance
from hera_stage_ext.cli import main as cli_main
from hera_stage_ext.demo import MIRIAD_NAME, ingest_demo_archive, make_demo_archive
from hera_stage_ext.jobs.worker import DB_URL_ENV
from hera_stage_ext.transfer.models import RemoteInstance, TransferItem
from hera_stage_ext.transfer.peer_config import peers_env
from hera_stage_ext.transfer.peers import hash_secret

from .jupyter_process import JupyterProcess, free_port, jupyter_process

pytestmark = pytest.mark.timeout(180)

SECRET_AB = "job-a-to-b-" + "k" * 40
SECRET_BA = "job-b-to-a-" + "q" * 40
SENT_NIGHTS = "zen.2457644.* OR zen.2457645.* OR zen.2457646.* OR zen.2457647.*"
CLI_NIGHT = "zen.2457648.*"


def _hours(open_now: bool) -> str:
    """A two-hour window of local time that holds now, or one that starts in ten hours."""
    start = (dt.datetime.now().hour + (23 if open_now else 10)) % 24
    return f"{start:02d}-{(start + 2) % 24:02d}"


@dataclass
class Sites:
    tmp: Path
    a_root: Path
    a_db_url: str
    a_config: dict[str, Any]
    a_port: int
    b: JupyterProcess
    b_store: Path
    b_db: Database
    a: JupyterProcess | None = None
    a_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_a(self, workdir: str, **peer_changes: dict[str, Any]) -> None:
        peers = self.a_config["StagingApp"]["peers"]
        for name, change in peer_changes.items():
            peers[name] = {**peers[name], **change}
        self.a = self.a_stack.enter_context(jupyter_process(
            self.tmp / workdir, root_dir=self.a_root, config=self.a_config,
            port=self.a_port))  # the same URL after a restart: B pulls from it

    def a_db(self) -> Database:
        return Database(self.a_db_url)

    def names(self, query: str) -> list[str]:
        return [f["name"] for f in self.a.api("search", {"query": query, "limit": 10_000})
                ["results"]]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.a.api(f"jobs/{job_id}")

    def log(self, job_id: int) -> str:
        return self.a.api(f"jobs/{job_id}/log")["text"]

    def start_worker(self) -> subprocess.Popen[bytes]:
        """A worker for site A as the server starts one (peers in its environment)."""
        env = {**os.environ, DB_URL_ENV: self.a_db_url,
               **peers_env("site-a", self.a_config["StagingApp"]["peers"])}
        with open(self.tmp / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--idle-exit", "3"],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.workers.append(worker)
        return worker


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _log_with(sites: Sites, job_id: int, text: str) -> str | None:
    log = sites.log(job_id)
    return log if text in log else None


def _worker_pid(job: dict[str, Any]) -> int:
    return int(job["worker_id"].split(":")[1])


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[Sites]:
    tmp = tmp_path_factory.mktemp("transfer-jobs")
    archive = make_demo_archive(tmp / "a", files_per_night=33)
    ingest_demo_archive(archive)
    b_store = tmp / "b" / "store"
    b_store.mkdir(parents=True)
    b_port = free_port()
    b_url = f"http://127.0.0.1:{b_port}/"
    common = {"start_worker": True, "worker_idle_exit_seconds": 3.0, "service_log_file": ""}
    a_config = {"StagingApp": {
        **common, "db_url": archive.db_url, "site_name": "site-a", "stores": archive.stores,
        "job_log_dir": str(tmp / "a-logs"),
        "peers": {
            # ~3 s for the 200 files: time to kill the worker half-way.
            "site-b": {"url": b_url, "secret": SECRET_AB, "max_bytes_per_s": 1 << 20},
            "site-b-wrong": {"url": b_url, "secret": "not-the-secret-" + "x" * 40},
            "site-b-night": {"url": b_url, "secret": SECRET_AB, "hours": _hours(False)},
            "site-b-down": {"url": f"http://127.0.0.1:{free_port()}/", "secret": SECRET_AB,
                            "retry_max_s": 1},
        },
        "peer_secrets": {"site-b": hash_secret(SECRET_BA)},
    }}
    stack = contextlib.ExitStack()
    site = Sites(tmp, archive.workspace, archive.db_url, a_config, free_port(),
                 None,  # type: ignore
                 b_store, Database(f"sqlite:///{tmp / 'b' / 'catalogue.sqlite'}"))
    try:
        site.start_a("a-server")
        b_config = {"StagingApp": {
            **common, "db_url": str(site.b_db.engine.url), "site_name": "site-b",
            "stores": {"b-store": {"path": str(b_store)}}, "receive_store": "b-store",
            "receive_streams": 4,
            "peers": {"site-a": {"url": site.a.url, "secret": SECRET_BA}},
            "peer_secrets": {"site-a": hash_secret(SECRET_AB)},
        }}
        site.b = stack.enter_context(jupyter_process(tmp / "b-server", root_dir=tmp / "b",
                                                     config=b_config, port=b_port))
        yield site
    finally:
        for worker in site.workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(20)
        site.a_stack.close()
        stack.close()
        site.b_db.dispose()


def _jobs_count(sites: Sites) -> int:
    return len(sites.a.api("jobs")["jobs"])


def test_unknown_peer_and_wrong_secret_are_refused_and_write_nothing(sites: Sites) -> None:
    before = _jobs_count(sites)
    reply = sites.a.request("POST", "hera-stage/api/transfers",
                            {"names": [MIRIAD_NAME], "peer": "nowhere"})
    assert reply.status_code == 404, reply.text
    assert "no peer named 'nowhere'" in reply.json()["message"]
    reply = sites.a.request("POST", "hera-stage/api/transfers",
                            {"names": [MIRIAD_NAME], "peer": "site-b-wrong"})
    assert reply.status_code == 502, reply.text
    message = reply.json()["message"]
    assert "401" in message and "wrong secret for peer 'site-a'" in message
    assert "not-the-secret" not in message
    reply = sites.a.request("POST", "hera-stage/api/transfers", {"names": [MIRIAD_NAME]})
    assert reply.status_code == 400 and "'peer'" in reply.json()["message"]
    assert _jobs_count(sites) == before
    with sites.b_db.read() as s:
        assert s.scalar(select(func.count()).select_from(File)) == 0
    assert not any(p for p in sites.b_store.rglob("*") if p.is_file())


def test_200_files_and_a_data_set_arrive_verified_through_a_killed_worker(sites: Sites) -> None:
    names = sites.names(SENT_NIGHTS)
    assert len(names) == 201 and MIRIAD_NAME in names
    job = sites.a.api("transfers", {"query": SENT_NIGHTS, "peer": "site-b"})
    assert job["kind"] == "transfer" and job["destination"] == "peer:site-b"
    assert job["files_total"] == 201 and job["missing"] == []
    # Kill the sending site's worker once B has accepted the files (B pulls them in
    # batches from A's server, throttled: ~3 s), before A has seen any through; restart it
    # once B holds them: the new worker announces them again and sends nothing twice.

    def b_count(table: Any) -> int:
        with sites.b_db.read() as s:
            return s.scalar(select(func.count()).select_from(table)) or 0

    _wait_for("B to accept the files", lambda: b_count(TransferItem) >= 20)
    running = sites.job(job["id"])
    assert running["state"] == "running" and running["files_done"] < 201, running
    os.kill(_worker_pid(running), signal.SIGKILL)
    _wait_for("B to receive a first few files", lambda: b_count(Instance) >= 20)
    sites.start_worker()
    done = _wait_for("the job to finish",
                     lambda: (j := sites.job(job["id"]))["finished_at"] and j, timeout=90)
    log = sites.log(job["id"])
    assert done["state"] == "succeeded", (done, log)
    assert done["files_done"] == 201 and done["files_failed"] == 0
    assert done["bytes_done"] == done["bytes_total"] > 0
    assert "resumes job" in log and "not sent again" in log

    a_db = sites.a_db()
    try:
        a_catalogue = Catalogue(a_db)
        with a_db.read() as s:
            remote = s.execute(select(File.name, func.count()).join(
                RemoteInstance, RemoteInstance.file_id == File.id).where(
                RemoteInstance.site == "site-b").group_by(File.name)).all()
            sent_events = dict(s.execute(select(File.name, func.count()).join(
                Event, Event.file_id == File.id).where(Event.type == "transfer-sent")
                .group_by(File.name)).all())
        assert sorted(remote) == sorted((n, 1) for n in names)
        assert sent_events == {n: 1 for n in names}
        b_catalogue = Catalogue(sites.b_db)
        for name in names:
            a_detail = a_catalogue.file_detail(name)
            b_detail = b_catalogue.file_detail(name)
            assert b_detail["checksums"] == a_detail["checksums"]
            assert b_detail["size"] == a_detail["size"]
            assert b_detail["is_directory"] == (name == MIRIAD_NAME)
            [b_instance] = b_detail["instances"]
            [a_path] = {i["path"] for i in a_detail["instances"]}
            assert b_instance["path"] == a_path
            # Both copies hashed again now: what each catalogue says is what each disk holds.
            for root, path in ((sites.a_root.parent / "stores" / "onsite", a_path),
                               (sites.b_store, a_path)):
                digest = ck.hash_path(root / path)
                assert ck.compare(digest.checksums, a_detail["checksums"]), (name, root)
            types = [e["type"] for e in b_detail["events"]]
            assert types.count("transfer-received") == 1, (name, types)
        miriad = sites.b_store / "2457646" / MIRIAD_NAME
        assert sorted(p.name for p in miriad.iterdir()) == ["flags", "header", "vartable",
                                                            "visdata"]
    finally:
        a_db.dispose()
    assert not list((sites.b_store / ".hera-stage-incoming").iterdir())


def test_cli_transfer_waits_with_the_staging_progress_and_exit_codes(sites: Sites,
                                                                      capsys) -> None:
    args = ["--url", sites.a.url, "--token", sites.a.token]
    assert cli_main([*args, "transfer", "site-b", CLI_NIGHT, "--wait"]) == 0
    err = capsys.readouterr().err
    assert "sending 50 file(s)" in err and "succeeded: 50 file(s) sent" in err
    assert cli_main([*args, "transfer", "site-b", CLI_NIGHT, "--wait"]) == 0
    assert "50 already there" in capsys.readouterr().err
    assert cli_main([*args, "transfer", "nowhere", CLI_NIGHT]) == 1
    assert "hera-stage: error: no peer named 'nowhere'" in capsys.readouterr().err


def test_a_peer_that_is_down_keeps_the_job_running_and_retrying(sites: Sites) -> None:
    job = sites.a.api("transfers", {"names": ["zen.2457648.10000.xx.HH.uvh5"],
                                    "peer": "site-b-down"})
    assert job["state"] == "queued"
    log = _wait_for("two failed attempts in the log",
                    lambda: _log_with(sites, job["id"], "attempt 2 failed"), timeout=60)
    assert "cannot be reached now" in log and "unreachable" in log
    assert sites.job(job["id"])["state"] == "running"
    sites.a.api(f"jobs/{job['id']}/cancel", {})
    _wait_for("the cancel", lambda: sites.job(job["id"])["state"] == "cancelled")


def test_allowed_hours_hold_the_job_until_they_are_changed(sites: Sites) -> None:
    # Workers started by earlier tests keep the peers they started with (closed hours): only
    # the server's own workers may take this job up.
    for worker in sites.workers:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)
    names = sites.names("observing-log.txt OR antenna-positions.csv")
    assert len(names) == 2
    job = sites.a.api("transfers", {"names": names, "peer": "site-b-night"})
    log = _wait_for("the wait in the log", lambda: _log_with(
        sites, job["id"], "waiting: peer 'site-b-night' takes transfers only at hours"),
        timeout=60)
    time.sleep(1.5)
    held = sites.job(job["id"])
    assert held["state"] == "running" and held["files_done"] == 0, (held, log)
    # The operator opens the window: a new configuration, the server restarted, its old worker
    # stopped (it keeps the configuration it started with).
    os.kill(_worker_pid(held), signal.SIGTERM)
    _wait_for("the job released", lambda: sites.job(job["id"])["worker_id"] is None)
    sites.a_stack.close()
    sites.a_stack = contextlib.ExitStack()
    sites.start_a("a-server-2", **{"site-b-night": {"hours": _hours(True)}})
    done = _wait_for("the job to finish",
                     lambda: (j := sites.job(job["id"]))["finished_at"] and j, timeout=120)
    assert done["state"] == "succeeded" and done["files_done"] == 2, sites.log(job["id"])
    with sites.b_db.read() as s:
        assert s.scalar(select(func.count()).select_from(File).where(
            File.name.in_(names))) == 2
