"""Bulk upload through REST and the CLI, run by the worker process the server starts itself:
a directory tree's files (by glob) copied into a store, verified, registered, with a manifest;
an upload killed half-way and run again; bad requests that write nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import event

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.standard_kinds import standard_kinds

from .api_fixtures import *  # noqa: F403
from .test_cli import cli  # noqa: F401  (fixture)
from .test_stage_api import wait_for

N_FILES = 72  # matched by the glob, in three sub-folders; one is a directory data set
DATA_SET = 5  # its index
GLOB = "**/*.uvh5"
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def staging_config(tmp_path) -> dict[str, Any]:
    return {"job_log_dir": str(tmp_path / "job-logs"), "worker_idle_exit_seconds": 5.0}


@pytest.fixture
def tree(jp_root_dir) -> Path:
    """``run42/`` in the server's root: N_FILES small .uvh5 files in sub-folders, and files the
    glob must leave out."""
    root = Path(jp_root_dir) / "run42"
    for k in range(N_FILES):
        folder = root / f"part{k % 3}" / ("deep" if k % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"zen.2459100.{10000 + k * 37:05d}.xx.HH.uvh5"
        if k == DATA_SET:  # a MIRIAD-style directory: one file of the catalogue
            (path / "sub").mkdir(parents=True)
            (path / "header").write_bytes(os.urandom(300))
            (path / "sub" / "visdata").write_bytes(os.urandom(5000))
        else:
            path.write_bytes(os.urandom(100 + 97 * k))
    (root / "notes.txt").write_text("not matched")
    (root / "part0" / "readme.md").write_text("not matched")
    return root


def sources(tree: Path, glob: str = GLOB) -> dict[str, Path]:
    return {p.name: p for p in tree.glob(glob)}


def read_manifest(path: Path) -> dict[str, Any]:
    manifest = json.loads(path.read_text())  # valid JSON, whole (written atomically)
    names = [f["name"] for f in manifest["files"]]
    assert len(names) == len(set(names)), "a file listed twice"
    return manifest


def contents(path: Path) -> dict[str, bytes]:
    """A file's bytes, or every member's of a directory."""
    if not path.is_dir():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


async def check_uploaded(api, tree: Path, store_root: Path, glob: str = GLOB) -> None:
    """Every matched file is in the store under run42/<its path> with its bytes, and registered
    with the right checksum and an instance there."""
    for name, src in sources(tree, glob).items():
        rel = src.relative_to(tree.parent)
        assert contents(store_root / rel) == contents(src)
        code, info = await api("GET", f"files/{name}")
        assert code == 200, info
        digest = ck.hash_path(src)
        assert info["checksums"] == digest.checksums and info["size"] == digest.size
        assert info["is_directory"] == src.is_dir()
        assert [(i["store"], i["path"]) for i in info["instances"]] == [("onsite", str(rel))]
    assert not list(store_root.rglob("*.hera-tmp")), "a temporary file was left behind"


async def upload_and_kill_worker(api, core, body: dict[str, Any], monkeypatch,
                                 manifest: Path) -> dict[str, Any]:
    """Launch ``body``'s upload with a worker slowed down (it sleeps after every chunk: one
    per small file) and SIGKILL that worker once a quarter of the files are recorded done and
    the manifest shows the job's progress (it is rewritten while the job runs)."""
    monkeypatch.setenv("HERA_STAGE_TEST_CHUNK_DELAY", "0.15")
    code, job = await api("POST", "upload", body)
    assert code == 202, job
    deadline = time.monotonic() + 60
    while (await api("GET", f"jobs/{job['id']}"))[1]["files_done"] < N_FILES // 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    while True:
        progress = read_manifest(manifest)
        if progress["job_state"] == "running" and "done" in {f["state"] for f in
                                                             progress["files"]}:
            break
        assert time.monotonic() < deadline, "the running job's manifest shows no progress"
        await asyncio.sleep(0.1)
    os.kill(core.launcher.pid, signal.SIGKILL)
    core.launcher._process.wait()
    monkeypatch.delenv("HERA_STAGE_TEST_CHUNK_DELAY")
    return job


async def test_upload_into_a_store_and_run_again(api, archive, tree):
    store_root = Path(archive.stores["onsite"]["path"])
    code, job = await api("POST", "upload", {"directory": "run42", "glob": GLOB,
                                             "store": "onsite", "batch": 8, "parallel": 3})
    assert code == 202, job
    assert (job["kind"], job["state"], job["files_total"]) == ("upload", "queued", N_FILES)
    _, doc = await api("GET", "openapi.json")
    jsonschema.validate(job, {**doc, **doc["paths"]["/upload"]["post"]["responses"]["202"]
                              ["content"]["application/json"]["schema"]},
                        cls=jsonschema.Draft202012Validator)
    manifest_path = tree / "upload-manifest.json"
    assert {f["state"] for f in read_manifest(manifest_path)["files"]} == {"queued"}
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded", job
    assert (job["files_done"], job["files_skipped"], job["bytes_done"]) == (
        N_FILES, 0, job["bytes_total"])
    await check_uploaded(api, tree, store_root)
    manifest = read_manifest(manifest_path)
    assert manifest["job"] == job["id"] and len(manifest["files"]) == N_FILES
    assert (manifest["job_state"], manifest["store"], manifest["glob"]) == (
        "succeeded", "onsite", GLOB)
    by_name = sources(tree)
    for entry in manifest["files"]:
        digest = ck.hash_path(by_name[entry["name"]])
        assert entry["state"] == "done" and entry["error"] is None
        assert (entry["size"], entry["checksum"]) == (digest.size, digest.checksums)
        assert entry["destination"] == f"onsite:run42/{entry['path']}"
    code, log = await api("GET", f"jobs/{job['id']}/log")
    assert log["text"].count("uploaded ") == N_FILES and "manifest written" in log["text"]

    # A re-run copies nothing: every file is registered there with the same checksum.
    mtimes = {p: p.stat().st_mtime_ns for p in store_root.rglob("*.uvh5")}
    code, again = await api("POST", "upload", {"directory": "run42", "glob": GLOB,
                                               "store": "onsite"})
    assert code == 202, again
    again = await wait_for(api, again["id"])
    assert again["state"] == "succeeded" and again["files_skipped"] == N_FILES, again
    assert {p: p.stat().st_mtime_ns for p in store_root.rglob("*.uvh5")} == mtimes
    assert {f["state"] for f in read_manifest(manifest_path)["files"]} == {"skipped"}


async def test_upload_killed_half_way_and_run_again(api, archive, tree, jp_serverapp,
                                                    monkeypatch):
    store_root = Path(archive.stores["onsite"]["path"])
    core = jp_serverapp.web_app.settings["hera_stage"]
    body = {"directory": str(tree), "glob": GLOB, "store": "onsite", "batch": 4,
            "parallel": 2}
    job = await upload_and_kill_worker(api, core, body, monkeypatch,
                                       tree / "upload-manifest.json")

    # The user gives up on the interrupted job (its worker is gone: cancelled at once).
    code, cancelled = await api("POST", f"jobs/{job['id']}/cancel")
    assert code == 200 and cancelled["state"] == "cancelled", cancelled
    done_before = cancelled["files_done"]
    assert N_FILES // 4 <= done_before < N_FILES
    first = read_manifest(tree / "upload-manifest.json")
    assert first["job"] == job["id"] and first["job_state"] == "cancelled"
    states = [f["state"] for f in first["files"]]
    assert len(states) == N_FILES and states.count("done") == done_before
    assert set(states) <= {"done", "queued"}
    assert not list(store_root.rglob("*.hera-tmp")), "the cancel left temporary files"

    # Run again: what the first job did (recorded or not when it was killed) is skipped.
    code, again = await api("POST", "upload", body)
    assert code == 202, again
    again = await wait_for(api, again["id"])
    assert again["state"] == "succeeded", again
    assert again["files_done"] == N_FILES and again["files_skipped"] >= done_before
    await check_uploaded(api, tree, store_root)
    manifest = read_manifest(tree / "upload-manifest.json")
    assert manifest["job"] == again["id"] and len(manifest["files"]) == N_FILES
    assert {f["state"] for f in manifest["files"]} <= {"done", "skipped"}
    assert sum(f["state"] == "skipped" for f in manifest["files"]) == again["files_skipped"]
    assert sorted(f["name"] for f in manifest["files"]) == sorted(sources(tree))


@sqlite_only
async def test_upload_killed_half_way_resumes_with_the_next_worker(api, archive, tree,
                                                                   jp_serverapp, monkeypatch):
    """The same job, taken over by the next worker: nothing done is copied again, what the
    killed worker had in hand is found (identical in the store, or registered) and counted."""
    store_root = Path(archive.stores["onsite"]["path"])
    core = jp_serverapp.web_app.settings["hera_stage"]
    job = await upload_and_kill_worker(api, core, {
        "directory": "run42", "glob": GLOB, "store": "onsite", "batch": 4, "parallel": 2},
        monkeypatch, tree / "upload-manifest.json")
    mtimes = {p: p.stat().st_mtime_ns for p in store_root.rglob("*.uvh5")}
    core.launcher.ensure_running()  # as the next server start, or the next job, does
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded", job
    assert (job["files_done"], job["files_skipped"]) == (N_FILES, 0)
    for path, mtime in mtimes.items():  # what the killed worker finished stays as it was
        assert path.stat().st_mtime_ns == mtime
    await check_uploaded(api, tree, store_root)
    manifest = read_manifest(tree / "upload-manifest.json")
    assert len(manifest["files"]) == N_FILES and {f["state"] for f in manifest["files"]} == {
        "done"}
    code, log = await api("GET", f"jobs/{job['id']}/log")
    assert code == 200 and "resumes job" in log["text"]


@sqlite_only
@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"directory": "/etc", "glob": "*", "store": "onsite"}, 403, "outside the allowed"),
        ({"directory": "run42/../..", "glob": "*", "store": "onsite"}, 403, "outside"),
        ({"directory": "run42", "glob": "../*", "store": "onsite"}, 400, "'..'"),
        ({"directory": "run42", "glob": GLOB, "store": "nowhere"}, 404, "no store named"),
        ({"directory": "run42", "glob": GLOB, "peer": "nowhere"}, 404, "no peer named"),
        ({"directory": "run42", "glob": "*.fits", "store": "onsite"}, 400, "matches nothing"),
        ({"directory": "run42", "glob": GLOB}, 400, "exactly one of 'store' or 'peer'"),
        ({"directory": "run42", "glob": GLOB, "store": "onsite", "batch": 0}, 400, "'batch'"),
        ({"directory": "missing", "glob": GLOB, "store": "onsite"}, 400, "not a directory"),
    ],
)
async def test_bad_upload_requests_write_nothing(api, archive, tree, body, code, words):
    store_root = Path(archive.stores["onsite"]["path"])
    before = sorted(store_root.rglob("*"))
    got, reply = await api("POST", "upload", body)
    assert got == code and words in reply["message"], reply
    assert (await api("GET", "jobs"))[1]["jobs"] == []
    assert not (tree / "upload-manifest.json").exists()
    assert sorted(store_root.rglob("*")) == before


@sqlite_only
async def test_cli_upload_wait_manifest_and_errors(cli, api, archive, tree, tmp_path,
                                                   monkeypatch):
    outside = tmp_path / "manifest.json"  # not inside the server's allowed roots
    code, out, err = await cli("upload", str(tree), "--glob", GLOB, "--store", "onsite",
                               "--manifest", str(outside))
    assert out == "" and code == 1 and "manifest" in err and "outside the allowed roots" in err, err
    manifest = tree.parent / "manifests" / "run42.json"
    manifest.parent.mkdir()
    monkeypatch.chdir(tree.parent)  # relative paths are the shell's, not the server's
    code, _, err = await cli("upload", "run42", "--glob", "part1/**/*.uvh5", "--store",
                             "onsite", "--batch", "5", "--parallel", "2", "--wait",
                             "--manifest", "manifests/run42.json")
    assert code == 0, err
    assert "succeeded: 24 file(s) uploaded" in err
    entries = read_manifest(manifest)["files"]
    assert len(entries) == 24 and {e["state"] for e in entries} == {"done"}
    assert all(e["path"].startswith("part1/") for e in entries)
    await check_uploaded(api, tree, Path(archive.stores["onsite"]["path"]), "part1/**/*.uvh5")
    assert not (tree / "upload-manifest.json").exists()

    evil = tree.parent / "evil"
    evil.mkdir()
    (evil / "zen.2459100.99999.xx.HH.uvh5").symlink_to("/etc/hostname")
    for args, words in [
        (("upload", str(evil), "--glob", "*", "--store", "onsite"), "resolves outside"),
        (("upload", str(tree), "--glob", GLOB, "--store", "nowhere"), "no store named"),
        (("upload", "/etc", "--glob", "*", "--store", "onsite"), "outside the allowed roots"),
        (("upload", str(tree), "--glob", "*.fits", "--store", "onsite"), "matches nothing"),
        (("upload", str(tree), "--glob", GLOB, "--peer", "nowhere"), "no peer named"),
    ]:
        code, _, err = await cli(*args)
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith("hera-stage: error: ") and words in err


@sqlite_only
async def test_one_unfinished_upload_per_manifest(api, cli, archive, tree,  # noqa: F811
                                                  monkeypatch):
    """While an upload runs, a second one writing its manifest (the same folder into another
    store, another folder naming it, a symlink to it) or uploading into its folder is refused
    with 409 naming it, writes nothing, and the first runs to the end with its own manifest;
    once it has finished, a re-run takes the manifest over."""
    manifest = tree / "upload-manifest.json"
    offsite = Path(archive.stores["offsite"]["path"])
    other = tree.parent / "run43"
    other.mkdir()
    (other / "zen.2459101.10000.xx.HH.uvh5").write_bytes(os.urandom(100))
    (tree.parent / "alias").symlink_to(tree)
    part0 = {"directory": "run42", "glob": "part0/*.uvh5", "store": "onsite"}  # 12 files
    monkeypatch.setenv("HERA_STAGE_TEST_CHUNK_DELAY", "0.25")  # a file every 0.25 s at most
    code, first = await api("POST", "upload", {**part0, "batch": 1, "parallel": 1})
    assert code == 202, first
    before = sorted(offsite.rglob("*"))
    for body, words in [
        (part0, "already uploading into"),
        ({"directory": "run42", "glob": "part1/*.uvh5", "store": "offsite"}, "manifest"),
        ({"directory": "run43", "glob": "*.uvh5", "store": "offsite",
          "manifest": "run42/upload-manifest.json"}, "manifest"),
        ({"directory": "run43", "glob": "*.uvh5", "store": "offsite",
          "manifest": "alias/upload-manifest.json"}, "manifest"),
    ]:
        code, reply = await api("POST", "upload", body)
        assert code == 409 and reply["job_id"] == first["id"], reply
        assert reply["message"].startswith(f"job {first['id']} ") and words in reply["message"]
    assert os.path.realpath(manifest) in reply["message"]
    code, out, err = await cli("upload", str(other), "--glob", "*.uvh5", "--store", "offsite",
                               "--manifest", str(tree.parent / "alias" / "upload-manifest.json"))
    assert (code, out, err.count("\n")) == (1, "", 1), err
    assert err.startswith(f"hera-stage: error: job {first['id']} ") and "manifest" in err
    assert sorted(offsite.rglob("*")) == before
    assert [j["id"] for j in (await api("GET", "jobs"))[1]["jobs"]] == [first["id"]]
    assert (await api("GET", f"jobs/{first['id']}"))[1]["state"] in ("queued", "running")
    assert read_manifest(manifest)["job"] == first["id"]

    first = await wait_for(api, first["id"])
    assert (first["state"], first["files_done"]) == ("succeeded", 12), first
    written = read_manifest(manifest)
    assert written["job"] == first["id"] and len(written["files"]) == 12
    assert {f["state"] for f in written["files"]} == {"done"}
    monkeypatch.delenv("HERA_STAGE_TEST_CHUNK_DELAY")
    code, again = await api("POST", "upload", part0)
    assert code == 202, again
    again = await wait_for(api, again["id"])
    assert (again["state"], again["files_skipped"]) == ("succeeded", 12), again
    written = read_manifest(manifest)
    assert written["job"] == again["id"] and {f["state"] for f in written["files"]} == {
        "skipped"}


def test_two_launches_at_once_with_one_manifest(db_url, tmp_path):
    """Two servers (each its own engine and connections on one database) launching uploads of
    two folders into two stores with one manifest at the same moment: exactly one is accepted,
    the other refused naming it, and the manifest is the accepted job's. A retry of a finished
    job whose manifest another unfinished job writes now is refused the same way."""
    from hera_stage_ext.catalogue.catalogue import Catalogue
    from hera_stage_ext.catalogue.db import Database
    from hera_stage_ext.errors import Conflict
    from hera_stage_ext.jobs import active_job_ids, cancel_job, retry_job
    from hera_stage_ext.transfer.upload import create_upload_job

    rounds, stores = 2, ("one", "two")
    setup, servers = Database(db_url), [Database(db_url), Database(db_url)]
    setup.upgrade()
    for server in servers:  # each commit waits a while: both launches' checks are done by then
        event.listen(server.engine, "commit", lambda _connection: time.sleep(0.3))
    Catalogue(setup).sync_stores({s: {"path": str(tmp_path / s)} for s in stores})
    for store in stores:
        (tmp_path / store).mkdir()

    def folder(label: str) -> Path:
        path = tmp_path / label
        path.mkdir()
        for k in range(3):
            (path / f"zen.{label}.{k:03d}.uvh5").write_bytes(b"x")
        return path

    def launch(db: Database, directory: Path, store: str, manifest: Path) -> dict[str, Any]:
        return create_upload_job(db, "tester", str(directory), "*.uvh5", [str(tmp_path)],
                                 store=store, manifest=str(manifest), log_dir=tmp_path / "logs")

    def race(folders: list[Path], manifest: Path) -> list[dict[str, Any] | Conflict]:
        barrier = threading.Barrier(2)

        def go(i: int) -> dict[str, Any] | Conflict:
            barrier.wait()
            try:
                return launch(servers[i], folders[i], stores[i], manifest)
            except Conflict as exc:
                return exc

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(go, range(2)))

    try:
        for r in range(rounds):
            manifest = tmp_path / f"m{r}.json"
            results = race([folder(f"a{r}"), folder(f"b{r}")], manifest)
            accepted = [x for x in results if isinstance(x, dict)]
            refused = [x for x in results if isinstance(x, Conflict)]
            assert (len(accepted), len(refused)) == (1, 1), results
            assert refused[0].details["job_id"] == accepted[0]["id"]
            assert json.loads(manifest.read_text())["job"] == accepted[0]["id"]
        assert len(active_job_ids(setup)) == rounds  # a refused launch leaves no job behind

        # queued, no worker: cancelled at once
        cancel_job(setup, accepted[0]["id"], standard_kinds())
        later = launch(setup, folder("c"), "one", manifest)
        with pytest.raises(Conflict) as refusal:
            retry_job(setup, accepted[0]["id"], standard_kinds())
        assert refusal.value.details["job_id"] == later["id"]
        assert json.loads(manifest.read_text())["job"] == later["id"]
    finally:
        for db in (setup, *servers):
            db.dispose()


def _upload_site(db_url: str, tmp_path: Path, stores: tuple[str, ...] = ("one",)):
    """A catalogue with ``stores`` (folders under ``tmp_path``) and a launcher of uploads."""
    from hera_stage_ext.catalogue.catalogue import Catalogue
    from hera_stage_ext.catalogue.db import Database
    from hera_stage_ext.transfer.upload import create_upload_job

    db = Database(db_url)
    db.upgrade()
    for store in stores:
        (tmp_path / store).mkdir()
    Catalogue(db).sync_stores({s: {"path": str(tmp_path / s)} for s in stores})

    def launch(directory: Path, store: str, manifest: Path | None = None) -> dict[str, Any]:
        return create_upload_job(db, "tester", str(directory), "*", [str(tmp_path)],
                                 store=store, manifest=None if manifest is None else str(manifest),
                                 log_dir=tmp_path / "logs")

    return db, launch


def test_a_cancelled_upload_leaves_a_manifest_taken_over_alone(db_url, tmp_path, monkeypatch):
    """A cancel counts the job finished before its last manifest is written: an upload launched
    in between takes the manifest over, and the cancelled job does not write over it."""
    from hera_stage_ext.jobs import cancel_job, get_job
    from hera_stage_ext.transfer import upload

    db, launch = _upload_site(db_url, tmp_path, ("one", "two"))
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / f"zen.{label}.uvh5").write_bytes(b"x")
    manifest = tmp_path / "m.json"
    first = launch(tmp_path / "a", "one", manifest)
    later: dict[str, Any] = {}
    hook = upload.UPLOAD.cancelled

    def launch_meanwhile(db_, job, left):
        later.update(launch(tmp_path / "b", "two", manifest))
        return hook(db_, job, left)

    monkeypatch.setattr(upload.UPLOAD, "cancelled", launch_meanwhile)
    try:
        cancel_job(db, first["id"], standard_kinds())  # queued, no worker: cancelled at once
        assert get_job(db, first["id"])["state"] == "cancelled"
        assert get_job(db, later["id"])["state"] == "queued"
        assert json.loads(manifest.read_text())["job"] == later["id"]
    finally:
        db.dispose()


def test_a_default_manifest_that_is_a_symlink_is_not_uploaded(tmp_path):
    """``DIR/upload-manifest.json`` may be a symlink to where the manifests of all runs are
    kept: the manifest is written there, and the symlink is not uploaded as a file."""
    db, launch = _upload_site(f"sqlite:///{tmp_path / 'c.sqlite'}", tmp_path)
    run = tmp_path / "run42"
    run.mkdir()
    (run / "zen.2459042.10000.xx.HH.uvh5").write_bytes(b"x")
    (tmp_path / "manifests").mkdir()
    kept = tmp_path / "manifests" / "run42.json"
    kept.write_text("{}")  # left by an earlier run
    (run / "upload-manifest.json").symlink_to(kept)
    try:
        job = launch(run, "one")
        assert job["files_total"] == 1, job
        written = json.loads(kept.read_text())
        assert [f["path"] for f in written["files"]] == ["zen.2459042.10000.xx.HH.uvh5"]
        assert (run / "upload-manifest.json").is_symlink()
    finally:
        db.dispose()


def test_a_retry_checks_the_upload_paths_again(tmp_path):
    """A folder swapped for a symlink since the launch is not followed by a retry."""
    from hera_stage_ext.errors import InvalidRequest
    from hera_stage_ext.jobs import cancel_job, get_job, retry_job

    db, launch = _upload_site(f"sqlite:///{tmp_path / 'c.sqlite'}", tmp_path)
    run, elsewhere = tmp_path / "run7", tmp_path / "elsewhere"
    for folder in (run, elsewhere):
        folder.mkdir()
        (folder / "zen.2459007.10000.xx.HH.uvh5").write_bytes(folder.name.encode())
    try:
        job = launch(run, "one")
        cancel_job(db, job["id"], standard_kinds())
        run.rename(tmp_path / "run7-moved")
        run.symlink_to(elsewhere)
        with pytest.raises(InvalidRequest, match="directory .* no longer resolves to itself"):
            retry_job(db, job["id"], standard_kinds(), allowed_roots=[str(tmp_path)])
        assert get_job(db, job["id"])["state"] == "cancelled"
    finally:
        db.dispose()


def test_upload_to_a_peer_through_the_upload_store(tmp_path):
    """Two real sites: A uploads a directory to B (catalogued in A's upload store, then sent by
    a transfer job); a re-run finds every file at B and sends nothing. A's jobs run in this
    process (the worker's code), as in test_transfer.py; B pulls the bytes from A's server."""
    from hera_stage_ext.catalogue.db import Database
    from hera_stage_ext.jobs import EngineConfig, get_job, run_pending
    from hera_stage_ext.transfer.peer_config import parse_peers
    from hera_stage_ext.transfer.peers import PeerRegistry, hash_secret
    from hera_stage_ext.transfer.upload import create_upload_job

    from .jupyter_process import jupyter_process

    secret_ab, secret_ba = "a-to-b-" + "k" * 40, "b-to-a-" + "q" * 40
    a_store, b_store, upload = tmp_path / "a" / "store", tmp_path / "b" / "store", \
        tmp_path / "a" / "scratch" / "run7"
    for path in (a_store, b_store, upload):
        path.mkdir(parents=True)
    src = {}
    for k in range(12):
        src[f"zen.2459200.{10000 + k:05d}.xx.HH.uvh5"] = os.urandom(1000 + k)
        (upload / f"zen.2459200.{10000 + k:05d}.xx.HH.uvh5").write_bytes(
            src[f"zen.2459200.{10000 + k:05d}.xx.HH.uvh5"])
    a_db_url = f"sqlite:///{tmp_path / 'a' / 'catalogue.sqlite'}"
    common = {"start_worker": False, "service_log_file": ""}
    a_config = {"StagingApp": {**common, "db_url": a_db_url, "site_name": "site-a",
                               "stores": {"a-store": {"path": str(a_store)}},
                               "upload_store": "a-store",
                               "peer_secrets": {"site-b": hash_secret(secret_ba)}}}
    with jupyter_process(tmp_path / "a-server", root_dir=tmp_path / "a", config=a_config) as a, \
            jupyter_process(tmp_path / "b-server", root_dir=tmp_path / "b", config={
                "StagingApp": {**common, "db_url": f"sqlite:///{tmp_path / 'b' / 'c.sqlite'}",
                               "site_name": "site-b", "receive_store": "b-store",
                               "stores": {"b-store": {"path": str(b_store)}},
                               "peers": {"site-a": {"url": a.url, "secret": secret_ba}},
                               "peer_secrets": {"site-a": hash_secret(secret_ab)}}}) as b:
        registry = PeerRegistry("site-a", parse_peers(
            {"site-b": {"url": b.url, "secret": secret_ab}}))
        db = Database(a_db_url)
        try:
            def upload_and_run() -> tuple[dict[str, Any], dict[str, Any]]:
                job = create_upload_job(db, "tester", str(upload), "*.uvh5",
                                        [str(tmp_path / "a")], peer="site-b", registry=registry,
                                        upload_store="a-store", batch=5,
                                        log_dir=tmp_path / "logs")
                run_pending(db, EngineConfig(kinds=standard_kinds(), peers=registry, fsync=False,
                                             heartbeat_seconds=0.2))
                return get_job(db, job["id"]), read_manifest(upload / "upload-manifest.json")

            job, manifest = upload_and_run()
            assert job["state"] == "succeeded" and job["files_done"] == 12, job
            transfer = get_job(db, manifest["transfer_job"])
            assert (transfer["kind"], transfer["state"], transfer["files_done"]) == (
                "transfer", "succeeded", 12)
            assert len(manifest["files"]) == 12
            for entry in manifest["files"]:
                assert (entry["state"], entry["destination"]) == ("done", "peer:site-b")
                assert entry["local"] == f"a-store:run7/{entry['name']}"
                detail = b.request("GET", f"hera-stage/api/files/{entry['name']}").json()
                assert detail["checksums"] == entry["checksum"]
                assert (b_store / "run7" / entry["name"]).read_bytes() == src[entry["name"]]

            job, manifest = upload_and_run()  # again: everything is at B already
            assert job["state"] == "succeeded" and job["files_skipped"] == 12, job
            assert manifest["transfer_job"] is None
            assert {e["state"] for e in manifest["files"]} == {"skipped"}
        finally:
            db.dispose()
