"""Staging through REST and the CLI, run by the worker process the server starts itself."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .api_fixtures import *  # noqa: F403
from .job_fixtures import give_stores_away
from .test_cli import cli  # noqa: F401  (fixture)

THREE = ["zen.2457645.10000.xx.HH.uvh5", "zen.2457645.10000.yy.HH.uvh5",
         "zen.2457645.10745.xx.HH.uvh5"]


@pytest.fixture
def staging_config(tmp_path) -> dict[str, Any]:
    return {"job_log_dir": str(tmp_path / "job-logs"), "worker_idle_exit_seconds": 5.0}


async def wait_for(api, job_id: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, job = await api("GET", f"jobs/{job_id}")
        assert code == 200, job
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
        await asyncio.sleep(0.2)


async def test_stage_three_files_by_name(api, ingested, jp_root_dir, archive, jp_auth_header):
    code, job = await api("POST", "stage", {"names": THREE, "destination": "night2"})
    assert code == 202, job
    assert job["state"] == "queued" and job["files_total"] == 3 and job["missing"] == []
    dest = Path(jp_root_dir) / "night2"
    assert (dest / "STAGING-IN-PROGRESS").exists()  # taken at launch, as the Librarian did
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded", job
    assert (job["files_done"], job["bytes_done"]) == (3, job["bytes_total"])
    assert (dest / "STAGING-SUCCEEDED").exists() and not (dest / "STAGING-IN-PROGRESS").exists()
    store = Path(archive.stores["offsite"]["path"])  # the first online store by name
    for name in THREE:
        staged = dest / "2457645" / name  # the store's sub-directory layout is kept
        assert staged.read_bytes() == (store / "2457645" / name).read_bytes()
        assert not staged.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    code, log = await api("GET", f"jobs/{job['id']}/log")
    assert code == 200 and log["text"].count("\n") >= 4
    code, tail = await api("GET", f"jobs/{job['id']}/log?offset={log['next_offset']}")
    assert tail == {"text": "", "next_offset": log["next_offset"]}
    # An unknown parameter is refused, as on every route (the fuzzer's find: it was ignored).
    code, error = await api("GET", f"jobs/{job['id']}/log?offset=0&ofset=5")
    assert code == 400 and "ofset" in error["message"]
    # Jupyter's own ?token= (a log link a browser opens) is authentication, not a parameter.
    token = jp_auth_header["Authorization"].split()[1]
    code, again = await api("GET", f"jobs/{job['id']}/log?offset=0&token={token}")
    assert code == 200 and again == log
    # Nor is JupyterLab's cache buster (a bare number with no value), which the panel sends.
    code, again = await api("GET", f"jobs/{job['id']}/log?offset=0&1765087200123")
    assert code == 200 and again == log
    code, jobs = await api("GET", "jobs")
    assert [j["id"] for j in jobs["jobs"]] == [job["id"]]


async def test_stage_from_query_with_dry_run(api, ingested, jp_root_dir, archive):
    give_stores_away(archive.stores)  # hardlink links only files the user cannot write
    code, plan = await api("POST", "stage", {"query": "session:2457646", "destination": "n3",
                                             "dry_run": True})
    assert code == 200, plan
    assert plan["files"] == 10 and plan["missing"] == [] and plan["fits"] is True
    assert not (Path(jp_root_dir) / "n3").exists()  # a dry run writes nothing
    code, job = await api("POST", "stage", {"query": "session:2457646", "destination": "n3",
                                            "method": "hardlink"})
    assert code == 202
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded" and job["files_done"] == 10
    staged = Path(jp_root_dir) / "n3" / "2457646" / "zen.2457646.10000.xx.HH.uvh5"
    assert staged.stat().st_nlink == 2


async def test_the_dry_run_says_what_is_already_there_and_which_job_holds_the_folder(
        api, ingested, jp_root_dir, monkeypatch):
    """The preview tells what the job would do before it is confirmed (issue 17, point 8):
    files already there (skipped), names holding something else (failed), and an unfinished
    job writing into the folder (a launch is refused); outside the roots, which roots."""
    code, job = await api("POST", "stage", {"names": THREE[:2], "destination": "again"})
    assert code == 202
    assert (await wait_for(api, job["id"]))["state"] == "succeeded"
    night = Path(jp_root_dir) / "again" / "2457645"
    first = night / THREE[0]
    size = first.stat().st_size
    first.chmod(0o644)
    first.write_bytes(b"x" * size)  # the same size, other bytes: only its checksum tells
    code, plan = await api("POST", "stage", {"names": THREE, "destination": "again",
                                             "dry_run": True})
    assert code == 200, plan
    sizes = {name: (night / name).stat().st_size for name in THREE[1:2]}
    assert (plan["already_there"], plan["already_there_bytes"], plan["conflicts"],
            plan["not_checked"], plan["busy_job"]) == (1, sizes[THREE[1]], 1, 0, None), plan
    code, plan = await api("POST", "stage", {"names": THREE, "destination": "new-folder",
                                             "dry_run": True})
    assert (plan["already_there"], plan["conflicts"], plan["not_checked"]) == (0, 0, 0), plan
    assert not (Path(jp_root_dir) / "new-folder").exists()
    # Bounded: past its hashing budget, a name of the right size is left to the job.
    monkeypatch.setattr("hera_stage_ext.jobs.preview.CHECK_BYTES", 1)
    code, plan = await api("POST", "stage", {"names": THREE, "destination": "again",
                                             "dry_run": True})
    assert (plan["already_there"], plan["conflicts"], plan["not_checked"]) == (0, 0, 2), plan
    monkeypatch.undo()

    monkeypatch.setenv("HERA_STAGE_TEST_CHUNK_DELAY", "0.5")  # the worker started now is slow
    code, running = await api("POST", "stage", {"query": "zen.*", "destination": "held"})
    assert code == 202
    code, plan = await api("POST", "stage", {"names": THREE, "destination": "held",
                                             "dry_run": True})
    assert code == 200 and plan["busy_job"] == running["id"], plan
    await api("POST", f"jobs/{running['id']}/cancel")
    await wait_for(api, running["id"])
    code, plan = await api("POST", "stage", {"names": THREE, "destination": "held",
                                             "dry_run": True})
    assert plan["busy_job"] is None, plan

    code, refused = await api("POST", "stage", {"names": THREE, "destination": "/tmp/else",
                                                "dry_run": True})
    root = os.path.realpath(jp_root_dir)
    assert code == 403 and root in refused["message"], refused
    assert [os.path.realpath(r) for r in refused["allowed_roots"]] == [root]


async def test_second_job_into_the_same_folder_conflicts(api, ingested):
    code, first = await api("POST", "stage", {"query": "zen.*", "destination": "busy"})
    assert code == 202
    code, second = await api("POST", "stage", {"names": THREE[:1], "destination": "busy"})
    if second.get("job_id") is None:  # the first may already have finished: then it is free
        assert code == 202
    else:
        assert code == 409 and second["job_id"] == first["id"]
    await wait_for(api, first["id"])


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"names": THREE, "destination": "../../etc"}, 403, "outside the allowed roots"),
        ({"names": THREE, "destination": "/tmp/elsewhere"}, 403, "outside the allowed roots"),
        ({"names": THREE, "destination": "x", "method": "teleport"}, 400, "unknown staging method"),
        ({"query": "nothing-matches-this", "destination": "x"}, 400, "matches no file"),
        ({"names": [], "destination": "x"}, 400, "non-empty list"),
        ({"names": THREE}, 400, "destination"),
        ({"names": THREE, "query": "zen.*", "destination": "x"}, 400, "exactly one of"),
        ({"names": ["no-such-file"], "destination": "x"}, 404, "available instance"),
        ({"search": {"bogus": 1}, "destination": "x"}, 400, "bogus"),
        # A name the catalogue lacks, holding a line break: refused before any log or marker.
        ({"names": [THREE[0], "zen.nope\nINJECTED"], "destination": "x"}, 400,
         "must not contain control characters: 'zen.nope\\nINJECTED'"),
        ({"names": [THREE[0], "z" * 300], "destination": "x"}, 400, "at most 256 characters"),
    ],
)
async def test_bad_stage_requests_write_nothing(api, ingested, jp_root_dir, body, code, words):
    before = sorted(os.listdir(jp_root_dir))
    got, reply = await api("POST", "stage", body)
    assert got == code, reply
    assert words in reply["message"]
    assert sorted(os.listdir(jp_root_dir)) == before
    assert not Path("/tmp/elsewhere").exists()
    _, jobs = await api("GET", "jobs")
    assert jobs["jobs"] == []


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
async def test_links_to_the_users_own_store_files_are_refused_at_launch(api, ingested,
                                                                         jp_root_dir, method):
    """The demo stores are this account's: a link would hand it the archive's own inodes."""
    code, reply = await api("POST", "stage", {"query": "session:2457646", "destination": "ln",
                                              "method": method, "dry_run": True})
    assert code == 400 and "owned by the staging account" in reply["message"], reply
    assert "'reflink' or 'copy'" in reply["message"] and reply["refused"], reply
    code, reply = await api("POST", "stage", {"query": "session:2457646", "destination": "ln",
                                              "method": method})
    assert code == 400 and "'reflink' or 'copy'" in reply["message"], reply
    assert not (Path(jp_root_dir) / "ln").exists()
    _, jobs = await api("GET", "jobs")
    assert jobs["jobs"] == []


async def test_symlink_inside_the_root_pointing_out_is_refused(api, ingested, jp_root_dir,
                                                               tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (Path(jp_root_dir) / "sneaky").symlink_to(outside)
    code, reply = await api("POST", "stage", {"names": THREE, "destination": "sneaky/x"})
    assert code == 403
    assert list(outside.iterdir()) == []


async def test_unknown_and_others_jobs(api, ingested):
    for path in ("jobs/999", "jobs/999/log"):
        code, reply = await api("GET", path)
        assert code == 404 and "no job 999" in reply["message"]
    code, reply = await api("GET", "jobs/abc")
    assert code == 400 and "number" in reply["message"]
    code, reply = await api("POST", "jobs/999/cancel", {})
    assert code == 404


async def test_cli_stage_wait_and_jobs(cli, api, ingested, jp_root_dir):
    code, out, err = await cli("stage", "cli-dest", "zen.2457644.1*", "--wait")
    assert code == 0, err
    assert "succeeded: 9 file(s) staged" in err
    assert len(list((Path(jp_root_dir) / "cli-dest" / "2457644").iterdir())) == 9
    code, out, _ = await cli("jobs")
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "FILES"] and row.split()[1:3] == ["succeeded",
                                                                                   "9/9"]
    code, out, err = await cli("stage", "cli-dest2", "zen.2457644.1*", "--dry-run")
    assert code == 0 and out.startswith("9 file(s)")
    code, out, err = await cli("stage", "cli-dest", "zen.2457644.1*", "--dry-run")
    assert code == 0 and "9 already there" in out and ": skipped" in out, out
    code, out, err = await cli("stage", "../escape", "zen.*")
    assert code == 1 and "outside the allowed roots" in err
    code, out, _ = await cli("jobs")
    job_id = int(out.splitlines()[1].split()[0])  # the newest, under the header
    code, out, err = await cli("retry", str(job_id))
    assert code == 1 and "nothing to retry" in err
    code, out, _ = await cli("forget", str(job_id))
    assert code == 0 and f"job {job_id} forgotten" in out
    code, out, err = await cli("forget", str(job_id))
    assert code == 1 and f"no job {job_id}" in err


async def test_every_request_is_audited_and_logged(api, ingested, jp_serverapp, staging_config):
    from sqlalchemy import select

    from hera_stage_ext.jobs.models import AuditEntry

    await api("POST", "stage", {"names": THREE, "destination": "../../etc"})
    await api("POST", "stage", {"names": THREE, "destination": "ok", "dry_run": True})
    code, job = await api("POST", "stage", {"names": THREE, "destination": "ok"})
    core = jp_serverapp.web_app.settings["hera_stage"]
    with core.catalogue.db.read() as s:
        rows = [(a.action, a.outcome, a.destination, a.job_id, a.reason, a.request)
                for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert rows[0][:4] == ("stage", "refused", "../../etc", None)
    assert "outside the allowed roots" in rows[0][4]
    assert rows[1][:2] == ("dry-run", "accepted")
    assert rows[2][:4] == ("stage", "accepted", "ok", job["id"])
    assert rows[2][5] == {"names": THREE, "count": 3}
    service_log = (Path(staging_config["job_log_dir"]) / "service.log").read_text()
    assert "refused" in service_log and f"job {job['id']}" in service_log
    await wait_for(api, job["id"])


async def test_progress_is_pushed_on_the_event_bus(api, ingested, started):
    from hera_stage_ext.api.events import JOB_PROGRESS_SCHEMA_ID

    events: list[dict[str, Any]] = []

    async def listener(logger, schema_id: str, data: dict[str, Any]) -> None:
        events.append(data)

    started.event_logger.add_listener(schema_id=JOB_PROGRESS_SCHEMA_ID, listener=listener)
    code, job = await api("POST", "stage", {"query": "zen.*", "destination": "pushed"})
    assert code == 202
    await wait_for(api, job["id"])
    deadline = time.monotonic() + 10
    while not any(e["state"] == "succeeded" for e in events):
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.2)
    mine = [e for e in events if e["id"] == job["id"]]
    done = [e["files_done"] for e in mine]
    assert done == sorted(done) and done[-1] == job["files_total"] == 28
    assert mine[-1]["bytes_done"] == mine[-1]["bytes_total"]


async def test_unfinished_jobs_resume_when_the_server_starts(api, ingested, jp_serverapp,
                                                             jp_asyncio_loop, jp_root_dir):
    from hera_stage_ext import jobs

    core = jp_serverapp.web_app.settings["hera_stage"]
    # A job accepted while no worker ran (say, the server was culled right after): nothing
    # moves it until the extension starts and resumes it.
    job = jobs.create_stage_job(core.catalogue.db, core.owner, THREE, "resumed",
                                allowed_roots=core.allowed_roots, base=core.root_dir,
                                log_dir=core.job_log_dir)
    await asyncio.sleep(1)
    assert (await api("GET", f"jobs/{job['id']}"))[1]["state"] == "queued"
    await jp_serverapp.extension_manager.start_all_extensions()
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded"
    assert len(list((Path(jp_root_dir) / "resumed" / "2457645").iterdir())) == 3


async def test_a_cancel_shows_in_the_next_poll_at_once(api, ingested, jp_serverapp):
    from hera_stage_ext import jobs

    core = jp_serverapp.web_app.settings["hera_stage"]
    # Queued, with no worker to take it (the extension's timers are not started here).
    job = jobs.create_stage_job(core.catalogue.db, core.owner, THREE, "cancelled",
                                allowed_roots=core.allowed_roots, base=core.root_dir,
                                log_dir=core.job_log_dir)
    for _ in range(3):  # polls within the status cache's reuse time share one read
        code, polled = await api("GET", f"jobs/{job['id']}")
        assert (code, polled["state"]) == (200, "queued")
    code, cancelled = await api("POST", f"jobs/{job['id']}/cancel", {})
    assert code == 200 and cancelled["state"] == "cancelled", cancelled
    code, polled = await api("GET", f"jobs/{job['id']}")
    assert (code, polled["state"]) == (200, "cancelled")


async def test_retry_and_forget_through_rest(api, ingested, jp_root_dir, staging_config):
    dest = Path(jp_root_dir) / "again"
    night = dest / "2457645"
    night.mkdir(parents=True)
    (night / THREE[0]).write_bytes(b"not the catalogue's bytes")  # a per-file conflict
    code, job = await api("POST", "stage", {"names": THREE, "destination": "again"})
    assert code == 202
    code, reply = await api("DELETE", f"jobs/{job['id']}")
    if code == 409:  # still active: refused, nothing deleted
        assert reply["job_id"] == job["id"]
    job = await wait_for(api, job["id"])
    assert job["state"] == "failed" and job["files_failed"] == 1
    staged = night / THREE[1]
    inode = staged.stat().st_ino

    (night / THREE[0]).unlink()  # the user clears the conflict
    code, again = await api("POST", f"jobs/{job['id']}/retry", {})
    assert code == 202 and again["state"] in ("queued", "running", "succeeded"), again
    _, doc = await api("GET", "openapi.json")
    check = lambda value, schema: jsonschema.validate(  # noqa: E731
        value, {**doc, **schema}, cls=jsonschema.Draft202012Validator)
    check(again, doc["paths"]["/jobs/{job_id}/retry"]["post"]["responses"]["202"]["content"]
          ["application/json"]["schema"])
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded" and job["files_done"] == 3
    assert staged.stat().st_ino == inode  # staged before: not copied again
    code, reply = await api("POST", f"jobs/{job['id']}/retry")
    assert code == 400 and "nothing to retry" in reply["message"]

    log_path = job["log_path"]
    assert os.path.exists(log_path)
    code, reply = await api("DELETE", f"jobs/{job['id']}")
    assert (code, reply) == (200, {"deleted": job["id"]})
    check(reply, doc["paths"]["/jobs/{job_id}"]["delete"]["responses"]["200"]["content"]
          ["application/json"]["schema"])
    assert not os.path.exists(log_path) and (night / THREE[0]).exists()
    for method, path in (("GET", f"jobs/{job['id']}"), ("DELETE", f"jobs/{job['id']}"),
                         ("POST", f"jobs/{job['id']}/retry")):
        code, reply = await api(method, path)
        assert code == 404, (method, path, reply)
    code, reply = await api("POST", "jobs/x/retry")
    assert code == 400
    code, jobs = await api("GET", "jobs")
    assert jobs["jobs"] == []
