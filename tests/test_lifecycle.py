"""Staged data's life cycle: expiry, ``clean`` (only what is still the staged data, never a
user's file, never through a symbolic link, read-only data removable by its owner), the
per-user view and the staging quota. Jobs run in-process on a real archive; the REST tests run
against a real Jupyter server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.api.staged import clean_with
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.demo import MIRIAD_NAME
from hera_stage_ext.jobs import EngineConfig, create_stage_job, get_job, run_pending
from hera_stage_ext.jobs import lifecycle
from hera_stage_ext.jobs.cleaner import listing
from hera_stage_ext.standard_kinds import standard_kinds

from .api_fixtures import *  # noqa: F403
from .job_fixtures import Site, make_site, unprivileged_prefix
from .test_cli import cli  # noqa: F401  (fixture)
from .test_stage_api import THREE, wait_for

FAST = EngineConfig(kinds=standard_kinds(), streams=2, heartbeat_seconds=0.2, fsync=False)


@pytest.fixture
def site(tmp_path) -> Site:
    db = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    db.upgrade()
    yield make_site(db, tmp_path / "site", files_per_night=2, nights=3)
    db.dispose()


def staged(site: Site, dest: str, names: list[str] | None = None, **options: Any) -> int:
    job = create_stage_job(site.db, "alice", names or site.names, dest, "copy", site.roots,
                           log_dir=site.logs, options=options or None)
    assert run_pending(site.db, FAST) == [job["id"]]
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    return job["id"]


def records(site: Site) -> list[dict[str, Any]]:
    return lifecycle.staged_records(site.db, "alice")


def clean(site: Site, *, expired: bool = False, folders: list[str] = (),
          dry_run: bool = False) -> dict[str, Any]:
    """What ``POST staged/clean`` does in the user's server."""
    report, cleaned = clean_with(records(site), {"expired": expired, "folders": list(folders),
                                                 "dry_run": dry_run},
                                 [str(site.workspace)], str(site.workspace))
    lifecycle.mark_cleaned(site.db, "alice", cleaned)
    return report


def everything(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def past(seconds: float = 1.0) -> dict[str, str]:
    """An expiry that has passed by the time the job is done."""
    return lifecycle.expiry_options(expires_in=seconds)


def test_expired_folder_is_removed_and_a_user_file_beside_it_is_not(site: Site) -> None:
    staged(site, "old", **past(0.5))
    staged(site, "mine", **past(0.5))
    staged(site, "kept", **lifecycle.expiry_options(expires_in="7d"))
    mine = site.workspace / "mine"
    night = sorted(p for p in mine.iterdir() if p.is_dir())[0]
    (night / "notes.txt").write_text("my own notes, next to the staged files")
    (mine / "analysis.py").write_text("print('mine')")
    time.sleep(0.6)

    listing = {Path(r["destination"]).name: r for r in records(site)}
    assert listing["old"]["expired"] and listing["mine"]["expired"]
    assert not listing["kept"]["expired"]

    before = {name: everything(site.workspace / name) for name in ("old", "mine", "kept")}
    preview = clean(site, expired=True, dry_run=True)
    assert {Path(f["destination"]).name for f in preview["folders"]} == {"old", "mine"}
    assert all(f["would_remove_files"] == len(site.names) for f in preview["folders"])
    assert {n: everything(site.workspace / n) for n in before} == before  # nothing gone

    report = clean(site, expired=True)
    by_name = {Path(f["destination"]).name: f for f in report["folders"]}
    assert by_name["old"]["folder_removed"] and not (site.workspace / "old").exists()
    assert by_name["mine"]["removed_files"] == len(site.names)
    assert not by_name["mine"]["folder_removed"]
    assert sorted(by_name["mine"]["foreign"]) == [f"{night.name}/notes.txt", "analysis.py"]
    # The user's files and the folders on their way stay; every staged file and marker went.
    assert everything(mine) == sorted(["analysis.py", night.name, f"{night.name}/notes.txt"])
    assert everything(site.workspace / "kept") == before["kept"]
    # Cleaned folders are no longer listed, nor counted.
    assert [Path(r["destination"]).name for r in records(site)] == ["kept"]


def test_a_folder_swapped_for_a_symlink_is_not_followed(site: Site, tmp_path: Path) -> None:
    staged(site, "run")
    run = site.workspace / "run"
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run, elsewhere, symlinks=True)  # the same files, byte for byte
    os.rename(run, site.workspace / "run.moved")
    run.symlink_to(elsewhere)
    report = clean(site, folders=["run"])
    assert report["folders"][0]["state"] == "moved"
    assert report["removed_files"] == 0 and report["cleaned_jobs"] == []
    assert everything(elsewhere) == everything(site.workspace / "run.moved")
    assert run.is_symlink()

    # A staged data set's folder swapped for a link to a copy of it: the link is not entered.
    run.unlink()
    os.rename(site.workspace / "run.moved", run)
    night = site.rel[MIRIAD_NAME].split("/")[0]
    dataset = run / site.rel[MIRIAD_NAME]
    os.chmod(dataset.parent, 0o755)
    shutil.rmtree(elsewhere)
    shutil.copytree(dataset, elsewhere)
    os.chmod(dataset, 0o755)
    shutil.rmtree(dataset)
    dataset.symlink_to(elsewhere, target_is_directory=True)
    inside = everything(elsewhere)
    report = clean(site, folders=["run"])
    folder = report["folders"][0]
    assert folder["state"] == "changed"
    assert folder["changed"] == [{"path": site.rel[MIRIAD_NAME],
                                  "reason": "a symbolic link now (not followed)"}]
    assert folder["removed_files"] == len(site.names) - 1
    assert everything(elsewhere) == inside
    assert everything(run) == sorted([night, site.rel[MIRIAD_NAME], "STAGING-SUCCEEDED"])


def test_a_changed_staged_file_is_kept(site: Site) -> None:
    staged(site, "run")
    run = site.workspace / "run"
    name = next(n for n in site.names if n != MIRIAD_NAME)
    path = run / site.rel[name]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # same size, other content: only the checksum tells
    path.write_bytes(bytes(data))
    # The listing checks names, kinds and sizes (quick): the same size passes there.
    quick = listing(records(site), [str(site.workspace)], {})
    assert quick["folders"][0]["state"] == "intact"
    report = clean(site, folders=["run"])
    folder = report["folders"][0]
    assert folder["changed"][0]["path"] == site.rel[name]
    assert "content changed" in folder["changed"][0]["reason"]
    assert folder["removed_files"] == len(site.names) - 1
    assert not folder["folder_removed"]
    assert path.read_bytes() == bytes(data)
    # Staged data stays, so its marker stays too, saying what was staged there.
    assert (run / "STAGING-SUCCEEDED").exists()


def test_a_folder_that_existed_before_the_job_is_never_removed(site: Site) -> None:
    (site.workspace / "existing").mkdir()
    staged(site, "existing")
    report = clean(site, folders=["existing"])
    assert report["folders"][0]["removed_files"] == len(site.names)
    assert (site.workspace / "existing").is_dir()
    assert everything(site.workspace / "existing") != []  # the night folders: not the engine's


def test_read_only_staged_files_are_removed_by_their_owner(site: Site, tmp_path: Path) -> None:
    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("as root, this host cannot drop the capabilities that ignore permissions")
    staged(site, "ro")
    run = site.workspace / "ro"
    files = [p for p in run.rglob("*") if p.is_file() and not p.name.startswith("STAGING")]
    assert files and not any(os.stat(p).st_mode & 0o222 for p in files)  # staged read-only
    # And the user locked the whole folder since (chmod -R a-w): still theirs to clean.
    for path in [run, *run.rglob("*")]:
        os.chmod(path, os.stat(path).st_mode & ~0o222)
    # The clean runs in its own process, under which permission bits apply (as a user's
    # server does); the records come from the database as the service would give them.
    script = (
        "import json, sys\n"
        "from hera_stage_ext.api.staged import clean_with\n"
        "records, root = json.load(sys.stdin)\n"
        "report, cleaned = clean_with(records, {'expired': False, 'folders': ['ro'],"
        " 'dry_run': False}, [root], root)\n"
        "print(json.dumps(report))\n")
    done = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True,
                          text=True, input=json.dumps([records(site), str(site.workspace)]),
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["folders"][0]
    assert report["errors"] == [] and report["removed_files"] == len(site.names)
    assert report["folder_removed"] and not run.exists()


# ----- REST, on a real server -----------------------------------------------------------------
@pytest.fixture
def staging_config(tmp_path) -> dict[str, Any]:
    return {"job_log_dir": str(tmp_path / "job-logs"), "worker_idle_exit_seconds": 5.0,
            "staging_quota_bytes": QUOTA}


QUOTA = 50_000  # the first of THREE fits (20,344 bytes); the three again (47,158) do not


async def test_quota_refuses_a_launch_and_clean_frees_it(api, ingested, jp_root_dir) -> None:
    code, job = await api("POST", "stage", {"names": THREE[:1], "destination": "first",
                                            "expires_in": "2d"})
    assert code == 202, job
    size = job["bytes_total"]
    assert job["options"]["expires_at"] > job["created_at"]
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded"
    code, view = await api("GET", "staged")
    assert code == 200 and view["unexpired_bytes"] == size
    assert view["quota_bytes"] == QUOTA
    assert [(f["state"], f["bytes"]) for f in view["folders"]] == [("intact", size)]

    code, error = await api("POST", "stage", {"names": THREE, "destination": "second"})
    assert code == 403, error
    assert error["error"] == "QuotaExceeded"
    asked = error["requested_bytes"]
    assert (error["quota_bytes"], error["used_bytes"]) == (QUOTA, size)
    assert size + asked > QUOTA >= asked > size
    assert f"quota is {QUOTA} bytes" in error["message"]
    assert f"holds {size} bytes" in error["message"] and f"needs {asked}" in error["message"]
    assert not (Path(jp_root_dir) / "second").exists()  # refused before the folder is taken

    code, refused = await api("DELETE", f"jobs/{job['id']}")
    assert code == 409 and "hera-stage clean" in refused["message"]
    code, report = await api("POST", "staged/clean", {"folders": ["first"]})
    assert code == 200, report
    assert report["removed_bytes"] == size and report["folders"][0]["folder_removed"]
    code, view = await api("GET", "staged")
    assert view["folders"] == [] and view["unexpired_bytes"] == 0
    code, job = await api("POST", "stage", {"names": THREE, "destination": "second"})
    assert code == 202, job


async def test_bad_expiry_and_clean_requests_answer_400(api, ingested) -> None:
    for body in ({"expires_in": "soon"}, {"expires_in": -5}, {"expires_at": "yesterday"},
                 {"expires_at": "2001-01-01T00:00:00Z"},
                 # Before year 1 once in UTC (the fuzzer's find: a 500 before).
                 {"expires_at": "0001-01-01T00:01:00.0+05:06"},
                 {"expires_in": 60, "expires_at": "2099-01-01"}):
        code, error = await api("POST", "stage", {"names": THREE[:1], "destination": "x",
                                                  **body})
        assert code == 400, (body, error)
        assert "expires" in error["message"]
    for body in ({}, {"folders": "run"}, {"expired": "yes"}, {"expire": True}):
        code, error = await api("POST", "staged/clean", body)
        assert code == 400, (body, error)
    code, error = await api("POST", "staged/clean", {"folders": ["never-staged"]})
    assert code == 404 and "not one of your staged folders" in error["message"]


async def test_cli_stage_with_expiry_staged_and_clean(cli, ingested, jp_root_dir) -> None:
    code, out, err = await cli("stage", "night", "zen.2457645.10000.xx.HH.uvh5",
                               "--expires-in", "1", "--wait")
    assert code == 0, err
    await asyncio.sleep(1.1)
    code, out, err = await cli("staged", "-v")
    assert code == 0, err
    assert "INTACT" in out and "(expired)" in out and out.rstrip().endswith(
        f"under {Path(jp_root_dir).resolve()}")
    code, out, err = await cli("clean", "--expired", "--dry-run")
    assert code == 0 and "would remove 1 file(s)" in out, (out, err)
    assert (Path(jp_root_dir) / "night").is_dir()
    code, out, err = await cli("clean", "--expired")
    assert code == 0 and "removed 1 file(s)" in out and "folder removed" in out, (out, err)
    assert not (Path(jp_root_dir) / "night").exists()
    code, out, err = await cli("clean")
    assert code == 2 and "--expired" in err
    code, out, err = await cli("stage", "x", "zen.2457645.10000.xx.HH.uvh5",
                               "--expires-in", "soon")
    assert code == 1 and "'expires_in' 'soon' is not a duration" in err
