"""Cold-store recall through the site service: a stage job of files only on a cold store is
recorded by the service, the service's own site worker recalls them into the buffer (tape
order, under the buffer's cap, verified, reaped), and the user's worker stages each from the
buffer once it is there.

A real ``hera-stage site`` process (SQLite, its own site worker started by itself), users as
site tokens, the user's worker over HTTP (``--site-url``), as in ``test_site_service.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import Instance, Store
from hera_stage_ext.jobs.models import JobItem, RecallCopy
from hera_stage_ext.site import tokens

from .test_site_service import Site, serve_site

SIZE = 32 * 1024
VOLUMES = ("tapeA", "tapeB")
CAP = 2 * SIZE + SIZE // 2  # two recalled files fit in the buffer, the third waits
COLD = [f"zen.2457800.{10000 + k * 10:05d}.xx.HH.uvh5" for k in range(6)]
ONLINE = ["zen.2457800.20000.xx.HH.uvh5"]


@pytest.fixture(scope="module")
def cold_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site service whose archive has six files on two tapes of a cold store (file k on
    tape k % 2, so name order is not tape order) and one on an online store; its own worker
    runs the site's jobs (recalls among them)."""
    work = tmp_path_factory.mktemp("site-recall")
    rng = random.Random(5)
    tape, buffer, online = work / "tape", work / "buffer", work / "onsite"
    for folder in (buffer, online / "2457800"):
        folder.mkdir(parents=True)
    for k, name in enumerate(COLD):
        path = tape / VOLUMES[k % 2] / "2457800" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(SIZE))
    for name in ONLINE:
        (online / "2457800" / name).write_bytes(rng.randbytes(SIZE))
    stores = {"tape": {"path": str(tape), "kind": "cold", "buffer": "buffer",
                       "buffer_bytes": CAP, "volume_key": r"^([^/]+)/"},
              "buffer": {"path": str(buffer)}, "onsite": {"path": str(online)}}
    db_url = f"sqlite:///{work / 'catalogue.sqlite'}"
    config = work / "site_config.py"
    config.write_text(f"c.StagingApp.db_url = {db_url!r}\n"
                      f"c.StagingApp.stores = {stores!r}\n"
                      f"c.StagingApp.job_log_dir = {str(work / 'logs')!r}\n"
                      "c.StagingApp.start_worker = True\n"
                      "c.StagingApp.worker_idle_exit_seconds = 5\n"
                      "c.StagingApp.worker_copy_processes = 1\n")
    config.chmod(0o600)
    db = Database(db_url)
    db.upgrade()
    users = {"alice": tokens.issue(db, "alice", ["read", "stage"])[0],
             "bob": tokens.issue(db, "bob", ["read", "stage"])[0],
             "boss": tokens.issue(db, "boss", ["admin"])[0]}
    db.dispose()
    with serve_site(work, db_url, config, users) as site:
        for store, globs in (("tape", ["*/*/*"]), ("onsite", ["*/*"])):
            reply = site.api("boss", "POST", "ingest", {"store": store, "globs": globs})
            assert reply.ok and not reply.json()["errors"], reply.text
        yield site


@contextlib.contextmanager
def catalogue(site: Site) -> Iterator[Database]:
    db = Database(site.db_url)
    try:
        yield db
    finally:
        db.dispose()


def recall_jobs(site: Site, stage_id: int) -> list[dict[str, Any]]:
    """The site's recall jobs of a stage job, as the admin sees them."""
    return [job for job in site.api("boss", "GET", "jobs").json()["jobs"]
            if job["kind"] == "recall" and job["destination"] == f"job:{stage_id}"]


def wait(what: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def buffer_files(site: Site) -> list[Path]:
    return [p for p in (site.work / "buffer").rglob("*") if p.is_file()]


def check_reaped(site: Site, stage_id: int) -> None:
    """Once the site's recall job is over: the buffer is empty, the catalogue holds no copy
    on it, and each recall is recorded as reaped."""
    wait(lambda: all(j["state"] not in ("queued", "running") for j in recall_jobs(site, stage_id)))
    assert buffer_files(site) == []
    with catalogue(site) as db, db.read() as s:
        assert not list(s.scalars(select(Instance.path).join(Instance.store).where(Store.name == "buffer")))
        states = set(s.scalars(select(RecallCopy.state)))
    assert states <= {"reaped"}


def test_the_site_recalls_and_the_users_worker_stages(cold_site: Site) -> None:
    site = cold_site
    destination = site.home("alice") / "from-tape"
    job = site.stage("alice", destination, names=[*COLD, *ONLINE])
    number = job["id"]
    assert job["state"] == "queued" and job["files_total"] == len(COLD) + len(ONLINE)
    # The user sees her stage job, not the site's recall job; the admin sees both.
    assert [j["kind"] for j in site.api("alice", "GET", "jobs").json()["jobs"]
            if j["id"] >= number] == ["stage"]
    recall = wait(lambda: recall_jobs(site, number))[0]
    assert recall["owner"] == "alice" and site.api("alice", "POST",
                                                   f"jobs/{recall['id']}/cancel").status_code == 403
    # Bob's worker takes nothing of it; alice's worker waits for the recall and stages.
    assert site.worker("bob", site.home("bob")).returncode == 0
    run = site.worker("alice", site.home("alice"), timeout=180)
    assert run.returncode == 0, run.stderr
    done = site.api("alice", "GET", f"jobs/{number}").json()
    assert done["state"] == "succeeded" and done["files_done"] == len(COLD) + len(ONLINE), done
    for path in (site.work / "tape").rglob("*.uvh5"):  # every staged file is the tape's
        staged = destination / path.relative_to(site.work / "tape")
        assert ck.hash_path(staged) == ck.hash_path(path), path
    assert (destination / "STAGING-SUCCEEDED").exists()
    assert staged.stat().st_uid == os.getuid()
    log = site.api("alice", "GET", f"jobs/{number}/log").json()["text"]
    # The site's worker recalled, in tape order, one tape at a time, into her job's log.
    assert re.findall(r"recall volume '(\w+)' of cold store 'tape'", log) == list(VOLUMES)
    order = [re.search(r"recalled (\S+) from 'tape' volume '(\w+)'", line).group(2)
             for line in log.splitlines() if " from 'tape' volume " in line]
    assert order == sorted(order) and len(order) == len(COLD)
    assert "buffer full: waiting" in log  # six files through a buffer of two and a half
    for name in [*COLD, *ONLINE]:  # each staged once, by her worker
        assert len(re.findall(rf"copy \S*{re.escape(name)} \(", log)) == 1, (name, log)
    site_log = (site.work / "logs" / "worker.log").read_text()
    assert f"running job {recall['id']}" in site_log
    check_reaped(site, number)


def test_cancel_stops_the_recall_and_a_retry_recalls_again(cold_site: Site) -> None:
    site = cold_site
    destination = site.home("alice") / "cancelled-tape"
    number = site.stage("alice", destination, names=COLD[:3])["id"]
    recall = wait(lambda: recall_jobs(site, number))[0]
    # No worker of hers runs: the site's worker recalls until the buffer is full.
    wait(lambda: (site.api("boss", "GET", f"jobs/{recall['id']}").json()["state"] == "running"
                  and buffer_files(site)))
    cancelled = site.api("alice", "POST", f"jobs/{number}/cancel").json()
    assert cancelled["state"] == "cancelled", cancelled
    recall = wait(lambda: (j := site.api("boss", "GET", f"jobs/{recall['id']}").json())[
        "state"] in ("cancelled", "succeeded") and j)
    check_reaped(site, number)
    assert not destination.exists()  # neither the service nor the site's worker touched it
    # A retry recalls what is still to stage, with a new recall job.
    retried = site.api("alice", "POST", f"jobs/{number}/retry")
    assert retried.status_code == 202, retried.text
    again = wait(lambda: [j for j in recall_jobs(site, number) if j["id"] != recall["id"]])
    with catalogue(site) as db, db.read() as s:  # her worker never reads the tape
        stores = set(s.scalars(select(JobItem.store).where(JobItem.job_id == number,
                                                           JobItem.state == "queued")))
        assert "tape" not in stores
    run = site.worker("alice", site.home("alice"), timeout=180)
    assert run.returncode == 0, run.stderr
    done = site.api("alice", "GET", f"jobs/{number}").json()
    assert done["state"] == "succeeded" and done["files_done"] == 3, done
    assert sorted(p.name for p in destination.rglob("*.uvh5")) == sorted(COLD[:3])
    assert again[0]["owner"] == "alice"
    check_reaped(site, number)
    # Forgetting the stage job forgets its recall jobs too.
    assert site.api("alice", "DELETE", f"jobs/{number}").ok
    assert recall_jobs(site, number) == []
