"""The staging job engine: methods, verification, skips and conflicts, markers, destination
safety, dry run, cancel, and resume after a SIGKILLed worker process (SQLite and PostgreSQL)."""

from __future__ import annotations

import errno
import pickle
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.demo import MIRIAD_NAME
from hera_stage_ext.errors import Conflict, Forbidden, InsufficientSpace, InvalidRequest, NotFound
from hera_stage_ext.jobs import (
    EngineConfig,
    bigcopy,
    cancel_job,
    create_stage_job,
    dry_run_stage,
    get_job,
    markers,
    read_log,
    run_pending,
)
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.jobs.items import ClaimedItem
from hera_stage_ext.jobs.methods import commit
from hera_stage_ext.jobs.models import JobRow, JobItem
from hera_stage_ext.jobs.kinds import KindRegistry
from hera_stage_ext.jobs.recall import RECALL
from hera_stage_ext.jobs.store import DbJobStore
from hera_stage_ext.jobs.worker import Worker
from hera_stage_ext.standard_kinds import standard_kinds

from .job_fixtures import (
    Site,
    give_stores_away,
    make_big_site,
    make_site,
    stop_worker,
    temp_files,
    tree,
    wait_for,
)

FAST = EngineConfig(kinds=standard_kinds(), streams=3, heartbeat_seconds=0.2, fsync=False)


@pytest.fixture
def site(database, tmp_path) -> Site:
    return make_site(database, tmp_path / "site")


def stage(site: Site, dest: str, names=None, method: str = "copy", **kw):
    return create_stage_job(site.db, "alice", site.names if names is None else names, dest,
                            method, site.roots, log_dir=site.logs, **kw)


def job_count(site: Site) -> int:
    with site.db.read() as s:
        return s.scalar(select(func.count()).select_from(JobRow)) or 0


def test_copy_keeps_layout_content_mtime_and_read_only(site: Site) -> None:
    job = stage(site, "run1")
    assert job["state"] == "queued" and job["files_total"] == len(site.names)
    dest = site.workspace / "run1"
    assert markers.marker_job(dest) == job["id"]
    assert run_pending(site.db, FAST) == [job["id"]]
    done = get_job(site.db, job["id"])
    assert done["state"] == "succeeded", done
    assert done["files_done"] == len(site.names) and done["files_failed"] == 0
    assert done["bytes_done"] == done["bytes_total"] > 0
    for name in site.names:
        src, out = site.sources[name], dest / site.rel[name]
        assert os.stat(out).st_mtime_ns == os.stat(src).st_mtime_ns
        if name == MIRIAD_NAME:
            assert out.is_dir()
            assert ck.hash_path(out) == ck.hash_path(src)
            for member in out.iterdir():
                assert member.read_bytes() == (src / member.name).read_bytes()
                assert not os.stat(member).st_mode & 0o222
        else:
            assert out.read_bytes() == src.read_bytes()
            assert not os.stat(out).st_mode & 0o222  # read-only by default
            assert os.stat(out).st_ino != os.stat(src).st_ino
    assert (dest / markers.SUCCEEDED).exists()
    assert not (dest / markers.IN_PROGRESS).exists() and not (dest / markers.ERRORS).exists()
    assert temp_files(dest) == []
    text, offset = read_log(done)
    assert "created by alice" in text and "succeeded" in text and "MB/s" in text
    assert offset == os.path.getsize(done["log_path"])
    assert read_log(done, offset) == ("", offset)
    more, _ = read_log(done, 10)
    assert text.endswith(more)


def test_writable_when_configured(site: Site) -> None:
    name = site.names[0]
    job = stage(site, "rw", [name], read_only=False)
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    assert os.stat(site.workspace / "rw" / site.rel[name]).st_mode & stat.S_IWUSR


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_link_methods(site: Site, method: str) -> None:
    give_stores_away(site.archive.stores)
    job = stage(site, method, method=method)
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    dest = site.workspace / method
    for name in site.names:
        src, out = site.sources[name], dest / site.rel[name]
        if method == "symlink":
            assert out.is_symlink() and os.readlink(out) == str(src)
        elif name != MIRIAD_NAME:
            assert os.path.samefile(out, src)
        else:
            for member in src.iterdir():
                assert os.path.samefile(out / member.name, member)
    assert temp_files(dest) == []
    # Staging again into the same place finds everything already there.
    again = stage(site, method, method=method)
    run_pending(site.db, FAST)
    assert get_job(site.db, again["id"])["files_skipped"] == len(site.names)


def _chattr(path: Path, flag: str) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_link_staging_refused_where_the_user_could_write_the_store_file(site: Site) -> None:
    """``hardlink`` and ``symlink`` hand the user the store's inode: refused at launch, with
    the reason and the methods that copy, while the staging account could write it (owns it,
    or holds a write bit through its group or as other), unless it is immutable."""
    flat = next(n for n in site.names if n != MIRIAD_NAME)
    for method in ("hardlink", "symlink"):
        for names in ([flat], [MIRIAD_NAME], site.names):
            with pytest.raises(InvalidRequest) as info:
                stage(site, f"mine-{method}", names, method=method)
            message = info.value.message
            assert info.value.status == 400
            assert "owned by the staging account" in message, message
            assert "'reflink' or 'copy'" in message and method in message
            assert info.value.details["refused"][0] in names
    assert job_count(site) == 0 and tree(site.workspace) == []
    # Given to another account, without a write bit for this one: linked.
    give_stores_away(site.archive.stores)
    source = site.sources[flat]
    stage(site, "theirs", [flat], method="hardlink")
    run_pending(site.db, FAST)
    assert os.path.samefile(site.workspace / "theirs" / site.rel[flat], source)
    # A write bit the user holds through a group, or as any account: refused again.
    os.chown(source, -1, os.getegid())
    for bits, words in ((0o464, "writable by its group"), (0o446, "writable by every account")):
        os.chmod(source, bits)
        with pytest.raises(InvalidRequest, match=words):
            stage(site, "writable", [flat], method="symlink")
    # Owned by the staging account but immutable (chattr +i): nobody can write it.
    os.chown(source, os.geteuid(), -1)
    os.chmod(source, 0o644)
    if not _chattr(source, "+i"):
        pytest.skip("this file system takes no immutable attribute (chattr +i)")
    try:
        job = stage(site, "immutable", [flat], method="symlink")
        run_pending(site.db, FAST)
        assert get_job(site.db, job["id"])["state"] == "succeeded"
    finally:
        _chattr(source, "-i")


def test_reflink_copies_or_falls_back(site: Site) -> None:
    names = [n for n in site.names if n != MIRIAD_NAME][:3]
    job = stage(site, "cow", names, method="reflink")
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    for name in names:
        assert (site.workspace / "cow" / site.rel[name]).read_bytes() == \
            site.sources[name].read_bytes()
    text, _ = read_log(get_job(site.db, job["id"]))
    assert "reflink" in text


def test_identical_file_skipped_different_file_conflicts(site: Site) -> None:
    same, other, fine = [n for n in site.names if n.endswith(".uvh5")][:3]
    dest = site.workspace / "pre"
    for name in (same, other):
        (dest / site.rel[name]).parent.mkdir(parents=True, exist_ok=True)
    (dest / site.rel[same]).write_bytes(site.sources[same].read_bytes())
    (dest / site.rel[other]).write_bytes(b"somebody else's data")
    job = stage(site, "pre", [same, other, fine])
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed"
    assert (out["files_done"], out["files_skipped"], out["files_failed"]) == (2, 1, 1)
    assert (dest / site.rel[other]).read_bytes() == b"somebody else's data"
    assert (dest / site.rel[fine]).read_bytes() == site.sources[fine].read_bytes()
    errors = (dest / markers.ERRORS).read_text().splitlines()
    assert len(errors) == 1 and errors[0].startswith(site.rel[other] + ":")
    assert "not overwritten" in errors[0]


def test_checksum_mismatch_fails_item_removes_copy(site: Site) -> None:
    bad, *good = [n for n in site.names if n.endswith(".uvh5")][:4]
    data = bytearray(site.sources[bad].read_bytes())
    data[100] ^= 0xFF  # same size, other bytes: corrupted after ingest
    site.sources[bad].write_bytes(bytes(data))
    job = stage(site, "verify", [bad, *good])
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_failed"] == 1 and out["files_done"] == 3
    dest = site.workspace / "verify"
    assert not os.path.lexists(dest / site.rel[bad]) and temp_files(dest) == []
    for name in good:
        assert (dest / site.rel[name]).read_bytes() == site.sources[name].read_bytes()
    errors = (dest / markers.ERRORS).read_text().splitlines()
    assert len(errors) == 1 and errors[0].startswith(site.rel[bad] + ": checksum mismatch")
    assert not (dest / markers.IN_PROGRESS).exists()
    with site.db.read() as s:
        item = s.scalar(select(JobItem).where(JobItem.name == bad))
        assert item.state == "failed" and "xxh3-128" in item.error


@pytest.mark.parametrize("fsync", [True, False], ids=["direct", "kernel-copy"])
def test_corrupted_large_source_fails_that_file_only(database, tmp_path, fsync: bool) -> None:
    # Files this big are written straight to the disk from a hashed buffer when the copy is
    # to be durable, else copied by the kernel and hashed back from the copy in a second
    # thread (jobs/bigcopy.py); a flipped byte near the end must fail that file only, either way.
    site = make_big_site(database, tmp_path / "large", n_files=3, size=bigcopy.MIN_SIZE + 4096)
    bad, *good = [n for n in site.names if n.endswith(".uvh5")]
    with open(site.sources[bad], "r+b") as f:
        f.seek(bigcopy.MIN_SIZE + 100)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0xFF]))  # same size, other bytes: corrupted after ingest
    job = stage(site, "large", [bad, *good])
    run_pending(site.db, EngineConfig(kinds=standard_kinds(),
                                      streams=2, heartbeat_seconds=0.2, fsync=fsync))
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_failed"] == 1 and out["files_done"] == 2
    dest = site.workspace / "large"
    assert not os.path.lexists(dest / site.rel[bad]) and temp_files(dest) == []
    for name in good:
        assert (dest / site.rel[name]).read_bytes() == site.sources[name].read_bytes()
    errors = (dest / markers.ERRORS).read_text().splitlines()
    assert len(errors) == 1 and errors[0].startswith(site.rel[bad] + ": checksum mismatch")
    assert "xxh3-128" in errors[0]


@pytest.mark.parametrize("method", ["copy", "hardlink"])
def test_data_set_member_swapped_for_a_symlink_out_is_not_read(site: Site, tmp_path,
                                                              method: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not archive data")
    give_stores_away(site.archive.stores)
    member = site.sources[MIRIAD_NAME] / "visdata"
    member.unlink()
    member.symlink_to(secret)  # after ingest: the catalogue still has the real digest
    job = stage(site, f"swapped-{method}", [MIRIAD_NAME], method=method)
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_failed"] == 1
    dest = site.workspace / f"swapped-{method}"
    assert not os.path.lexists(dest / site.rel[MIRIAD_NAME]) and temp_files(dest) == []
    assert "outside the directory" in (dest / markers.ERRORS).read_text()
    assert all(b"not archive data" not in p.read_bytes()
               for p in dest.rglob("*") if p.is_file() and not p.is_symlink())


def test_instance_swapped_for_a_symlink_out_of_its_store_is_not_read(site: Site,
                                                                    tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not archive data")
    bad, good = [n for n in site.names if n.endswith(".uvh5")][:2]
    site.sources[bad].unlink()
    site.sources[bad].symlink_to(secret)  # after ingest
    job = stage(site, "swapped-file", [bad, good])
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert (out["state"], out["files_failed"], out["files_done"]) == ("failed", 1, 1)
    dest = site.workspace / "swapped-file"
    assert not os.path.lexists(dest / site.rel[bad]) and temp_files(dest) == []
    assert "leads outside the store" in (dest / markers.ERRORS).read_text()


def test_symlink_method_verifies_source(site: Site) -> None:
    bad = [n for n in site.names if n.endswith(".uvh5")][0]
    site.sources[bad].write_bytes(b"x" * site.sources[bad].stat().st_size)
    give_stores_away(site.archive.stores)
    job = stage(site, "links", [bad], method="symlink")
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["files_failed"] == 1
    assert not os.path.lexists(site.workspace / "links" / site.rel[bad])


def test_markers_lifecycle_and_busy_directory(site: Site) -> None:
    dest = site.workspace / "busy"
    dest.mkdir()
    (dest / markers.SUCCEEDED).write_text("")
    (dest / markers.ERRORS).write_text("old\n")
    first = stage(site, "busy", site.names[:2])
    assert markers.marker_job(dest) == first["id"]
    assert not (dest / markers.SUCCEEDED).exists() and not (dest / markers.ERRORS).exists()
    with pytest.raises(Conflict) as info:
        stage(site, "busy", site.names[2:4])
    assert info.value.status == 409 and info.value.details["job_id"] == first["id"]
    assert str(first["id"]) in info.value.message
    # Also through a different spelling of the same directory.
    with pytest.raises(Conflict):
        stage(site, "./busy/../busy", site.names[2:4])
    run_pending(site.db, FAST)
    assert (dest / markers.SUCCEEDED).exists() and not (dest / markers.IN_PROGRESS).exists()
    # The directory is free again.
    second = stage(site, "busy", site.names[2:4])
    assert not (dest / markers.SUCCEEDED).exists()
    run_pending(site.db, FAST)
    assert get_job(site.db, second["id"])["state"] == "succeeded"


def test_stale_marker_is_recovered(site: Site) -> None:
    dest = site.workspace / "stale"
    dest.mkdir()
    (dest / markers.IN_PROGRESS).write_text("job 999999\n")  # a job the database never had
    job = stage(site, "stale", site.names[:1])
    assert markers.marker_job(dest) == job["id"]
    run_pending(site.db, FAST)
    # A marker left behind by a job that is finished (a crash between marker and database).
    (dest / markers.IN_PROGRESS).write_text(f"job {job['id']}\n")
    again = stage(site, "stale", site.names[:1])
    assert markers.marker_job(dest) == again["id"]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-out"])
def test_destination_outside_roots_is_forbidden(site: Site, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "dotdot":
        dest = "../../etc"
    elif kind == "absolute":
        dest = str(outside / "here")
    else:
        (site.workspace / "escape").symlink_to(outside)
        dest = "escape/sub"
    before_ws, before_out = tree(site.workspace), tree(outside)
    with pytest.raises(Forbidden) as info:
        stage(site, dest)
    assert info.value.status == 403
    with pytest.raises(Forbidden):
        dry_run_stage(site.db, site.names, dest, "copy", site.roots)
    assert tree(site.workspace) == before_ws and tree(outside) == before_out
    assert job_count(site) == 0 and not site.logs.exists()


def test_bad_requests_write_nothing(site: Site) -> None:
    with pytest.raises(InvalidRequest) as info:
        stage(site, "x", method="teleport")
    assert info.value.status == 400 and "teleport" in info.value.message
    with pytest.raises(InvalidRequest):
        stage(site, "x", names=[])
    with pytest.raises(InvalidRequest):
        stage(site, "x", names=[{"size": 3}])
    with pytest.raises(NotFound) as missing:
        stage(site, "x", names=["zen.nope.uvh5"])
    assert missing.value.details["missing"] == ["zen.nope.uvh5"]
    assert not (site.workspace / "x").exists() and job_count(site) == 0


def test_missing_files_are_listed_not_dropped(site: Site) -> None:
    rows = [{"name": site.names[0]}, {"name": "zen.2457999.11111.xx.HH.uvh5"}, site.names[0]]
    job = stage(site, "some", rows)
    assert job["files_total"] == 1 and job["missing"] == ["zen.2457999.11111.xx.HH.uvh5"]
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_done"] == 1
    errors = (site.workspace / "some" / markers.ERRORS).read_text()
    assert "zen.2457999.11111.xx.HH.uvh5: no available instance" in errors
    assert "MISSING zen.2457999.11111.xx.HH.uvh5" in read_log(out)[0]


@pytest.mark.parametrize("missing", [
    "zen.nope\n* * * * * root touch /tmp/pwned\nzen.more",  # a line of its own (cron)
    "zen.nope\r\nINJECTED", "zen.nope\u2028INJECTED", "zen.nope\x85INJECTED",
    "zen.nope\udcffINJECTED", "zen." + "n" * 300,
])
def test_a_missing_name_cannot_inject_a_line(site: Site, missing: str) -> None:
    """A name the catalogue does not hold is checked like any name at launch: one holding a
    line break (or a lone surrogate, or too long) is refused with the reason, and no job, log
    line or marker is written."""
    with pytest.raises(InvalidRequest) as info:
        stage(site, "inj", [site.names[0], missing])
    assert info.value.status == 400
    assert "\n" not in info.value.message and "\r" not in info.value.message
    assert "file name" in info.value.message
    with pytest.raises(InvalidRequest):
        dry_run_stage(site.db, [missing], "inj", "copy", site.roots)
    assert job_count(site) == 0 and not (site.workspace / "inj").exists()
    assert not site.logs.exists() or not any(
        "INJECTED" in p.read_text() or "pwned" in p.read_text() for p in site.logs.iterdir())


def test_dry_run_counts_and_writes_nothing(site: Site, monkeypatch) -> None:
    names = site.names + site.names[:2] + ["zen.2457999.11111.xx.HH.uvh5"]
    plan = dry_run_stage(site.db, names, "dry/run", "copy", site.roots)
    total = sum(ck.hash_path(site.sources[n]).size for n in site.names)
    assert plan["files"] == len(site.names) and plan["bytes"] == total
    assert plan["missing"] == ["zen.2457999.11111.xx.HH.uvh5"]
    assert plan["free_bytes"] > 0 and plan["fits"]
    with pytest.raises(InvalidRequest, match="reflink"):  # the stores are this account's
        dry_run_stage(site.db, names, "dry/run", "symlink", site.roots)
    if os.geteuid() == 0:  # given away, they may be linked
        give_stores_away(site.archive.stores)
        assert dry_run_stage(site.db, names, "dry/run", "symlink",
                             site.roots)["bytes_needed"] == 0
    assert not (site.workspace / "dry").exists() and job_count(site) == 0
    # Free space: refused with a clear message unless forced.
    monkeypatch.setattr("hera_stage_ext.jobs.plan.free_bytes", lambda path: 10)
    with pytest.raises(InsufficientSpace) as info:
        stage(site, "full")
    assert info.value.status == 507 and info.value.details["free"] == 10
    assert not (site.workspace / "full").exists() and job_count(site) == 0
    assert stage(site, "full", force=True)["state"] == "queued"


def test_migration_matches_models(database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from hera_stage_ext.catalogue.models import Base

    with database.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []  # every table: catalogue, jobs, recall copies, transfers


# ----- long-running jobs: cancel and resume -----------------------------------------------------
@pytest.fixture
def big(database, tmp_path) -> Site:
    return make_big_site(database, tmp_path / "big")


def test_a_worker_without_the_jobs_kind_gives_it_back(site: Site) -> None:
    """The engine knows only the kinds its process registered: a worker that runs recalls
    only gives a stage job back at once, saying why, and a worker with the standard kinds
    stages it."""
    job = stage(site, "k")
    only_recalls = Worker(site.db, EngineConfig(kinds=KindRegistry([RECALL]), fsync=False))
    only_recalls.run(poll_seconds=0.05, exit_when_idle=True)
    shown = get_job(site.db, job["id"])
    assert shown["state"] in ("queued", "running") and shown["worker_id"] is None
    assert "no job kind 'stage' is registered here (known: recall)" in shown["error"]
    assert [p.name for p in (site.workspace / "k").iterdir()] == [markers.IN_PROGRESS]
    assert run_pending(site.db, FAST) == [job["id"]]
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    with pytest.raises(ValueError, match="registered already"):
        KindRegistry([RECALL, RECALL])


def test_cancel_queued_job(big: Site) -> None:
    job = stage(big, "q")
    out = cancel_job(big.db, job["id"], standard_kinds())
    assert out["state"] == "cancelled"
    dest = big.workspace / "q"
    assert not (dest / markers.IN_PROGRESS).exists()
    assert "cancelled" in (dest / markers.ERRORS).read_text()
    assert run_pending(big.db, FAST) == []


def test_cancel_running_job_stops_within_seconds(big: Site) -> None:
    job = stage(big, "c")
    dest = big.workspace / "c"
    slow = EngineConfig(kinds=standard_kinds(),
                        streams=2, heartbeat_seconds=0.2, chunk_size=64 * 1024,
                        chunk_delay=0.05, fsync=False)
    runner = threading.Thread(target=run_pending, args=(big.db, slow))
    runner.start()
    try:
        wait_for(lambda: temp_files(dest))
        asked = time.monotonic()
        assert cancel_job(big.db, job["id"], standard_kinds())["cancel_requested"]
        wait_for(lambda: get_job(big.db, job["id"])["state"] == "cancelled", timeout=5)
        assert time.monotonic() - asked < 5
    finally:
        runner.join(10)
    out = get_job(big.db, job["id"])
    assert out["files_done"] < out["files_total"]
    assert temp_files(dest) == []
    assert not (dest / markers.IN_PROGRESS).exists()
    assert "cancelled" in (dest / markers.ERRORS).read_text()
    assert "cancelled" in read_log(out)[0]


def start_worker(db_url: str, delay: float) -> subprocess.Popen:
    env = {**os.environ, "HERA_STAGE_TEST_CHUNK_DELAY": str(delay)}
    return subprocess.Popen(
        [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--db-url", db_url,
         "--streams", "2", "--chunk-size", str(64 * 1024), "--heartbeat", "0.2",
         "--lease", "60", "--poll", "0.1", "--no-fsync"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_resume_after_sigkill(big: Site) -> None:
    job = stage(big, "resume")
    dest = big.workspace / "resume"
    wanted = {big.rel[n] for n in big.names}
    finals = lambda: [p for p in tree(dest) if p in wanted]  # noqa: E731
    first = start_worker(big.db.url, delay=0.03)

    def frozen_mid_job() -> bool:
        """Stop the worker and its helpers where they are (so no rename slips in between the
        look and the kill) and look: some files final and a partial copy under its temporary
        name; if not, let them go on."""
        if not (len(finals()) >= 8 and temp_files(dest)):
            return False
        group = [first.pid, *_copy_helpers(first.pid)]
        for pid in group:
            os.kill(pid, signal.SIGSTOP)
        if len(finals()) >= 8 and temp_files(dest):
            for pid in group[1:]:
                os.kill(pid, signal.SIGKILL)
            return True
        for pid in group:
            os.kill(pid, signal.SIGCONT)
        return False

    try:
        wait_for(frozen_mid_job, timeout=30, step=0.005)
    finally:
        first.kill()  # SIGKILL: no cleanup, no release of the lease
        first.wait(10)
    before = {p: os.stat(dest / p).st_ino for p in finals()}
    assert 8 <= len(before) < len(wanted), "the kill must land mid-job"
    assert temp_files(dest), "a partial copy under its temporary name"
    assert get_job(big.db, job["id"])["state"] == "running"
    assert markers.marker_job(dest) == job["id"]

    second = start_worker(big.db.url, delay=0)
    try:
        wait_for(lambda: get_job(big.db, job["id"])["state"] not in ("queued", "running"))
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        if second.poll() is None:
            second.kill()
    out = get_job(big.db, job["id"])
    assert out["state"] == "succeeded", out
    assert out["files_done"] == out["files_total"] == len(wanted) and out["files_failed"] == 0
    assert out["files_skipped"] == 0
    assert tree(dest) == sorted(
        wanted | {"2457700", markers.SUCCEEDED, f"{big.rel[MIRIAD_NAME]}/visdata"})
    assert temp_files(dest) == []
    for name in big.names:
        assert ck.hash_path(dest / big.rel[name]) == ck.hash_path(big.sources[name])
    for path, inode in before.items():  # verified before the kill: not copied again
        assert os.stat(dest / path).st_ino == inode
    log, _ = read_log(out)
    assert "resumes job" in log and "temporary file(s) left by the previous worker" in log
    for path in before:
        assert log.count(f"copy {path} (") == 1
    with big.db.read() as s:
        states = set(s.scalars(select(JobItem.state).where(JobItem.job_id == job["id"])))
    assert states == {"done"}


def _temp_folders(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*.hera-tmp") if p.is_dir()]


def test_sigkill_mid_folder_copy_then_resume(big: Site) -> None:
    """A folder the job creates is written as a temporary folder (files under their final
    names) and renamed into place once verified and synced. SIGKILLed while one is being
    written: nothing is under a final name unverified; on resume the temporary folder is
    removed, only files not recorded are copied again, each file is there once, verified."""
    job = stage(big, "folder-kill")
    dest = big.workspace / "folder-kill"
    wanted = {big.rel[n] for n in big.names}
    finals = lambda: [p for p in tree(dest) if p in wanted]
    first = start_worker(big.db.url, delay=0.03)
    try:
        # A temporary folder holding copied files, their final folder not there yet.
        wait_for(lambda: any(len(os.listdir(t)) >= 2 for t in _temp_folders(dest)),
                 timeout=30, step=0.005)
    finally:
        first.kill()  # SIGKILL: no cleanup, no release of the lease
        first.wait(10)
    left = _temp_folders(dest)
    assert left, "the kill lands while a temporary folder is being written"
    before = {p: os.stat(dest / p).st_ino for p in finals()}
    assert len(before) < len(wanted), "the kill must land mid-job"
    by_rel = {big.rel[n]: n for n in big.names}
    for path in before:  # under a final name: complete and verified
        assert ck.hash_path(dest / path) == ck.hash_path(big.sources[by_rel[path]])

    second = start_worker(big.db.url, delay=0)
    try:
        out = wait_for(lambda: (j := get_job(big.db, job["id"]))["state"] not in (
            "queued", "running") and j, timeout=60)
    finally:
        stop_worker(second)
    assert out["state"] == "succeeded", out
    assert out["files_done"] == out["files_total"] == len(wanted) and out["files_failed"] == 0
    assert tree(dest) == sorted(
        wanted | {"2457700", markers.SUCCEEDED, f"{big.rel[MIRIAD_NAME]}/visdata"})
    assert _temp_folders(dest) == [] and temp_files(dest) == []
    for name in big.names:
        assert ck.hash_path(dest / big.rel[name]) == ck.hash_path(big.sources[name])
    for path, inode in before.items():  # recorded or verified before the kill: not copied
        assert os.stat(dest / path).st_ino == inode
    log, _ = read_log(out)
    assert "temporary file(s) left by the previous worker" in log


def _copy_helpers(worker_pid: int) -> list[int]:
    """The worker's copy helper processes (its spawned children, not the resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rpartition(b")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == worker_pid and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


class _StopAfterClaimAhead(DbJobStore):
    """The database store, with a stop set the moment a stream claims ahead (a stream's
    second claim: its first batch's last hand-over is still with a helper), and the job's
    item states noted when the run releases the job (before the release puts back whatever
    is still running)."""

    def __init__(self, db: Database, stop: threading.Event) -> None:
        super().__init__(db)
        self.stop = stop
        self.claims: dict[int, int] = {}  # thread -> claims made
        self.claimed_ahead: list[int] = []
        self.at_release: dict[int, str] | None = None

    def _claimed(self, claimed: list[ClaimedItem]) -> list[ClaimedItem]:
        me = threading.get_ident()
        self.claims[me] = self.claims.get(me, 0) + 1
        if claimed and self.claims[me] == 2 and not self.stop.is_set():
            self.claimed_ahead = [c.id for c in claimed]
            self.stop.set()
        return claimed

    def claim_items(self, job_id, worker_id, n, max_bytes=None):  # type: ignore[override]
        return self._claimed(super().claim_items(job_id, worker_id, n, max_bytes))

    def exchange(self, job_id, worker_id, results, n, max_bytes=None):  # type: ignore[override]
        return self._claimed(super().exchange(job_id, worker_id, results, n, max_bytes))

    def release(self, job_id: int, worker_id: str, error: str | None = None) -> None:
        with self.db.read() as s:
            self.at_release = dict(s.execute(select(JobItem.id, JobItem.state).where(
                JobItem.job_id == job_id)).all())
        super().release(job_id, worker_id, error)


def test_a_stop_mid_job_puts_the_items_claimed_ahead_back(big: Site) -> None:
    """A stream claims its next items while a helper writes its last hand-over. A worker
    stopping right then puts those items back itself (none is left running for the release
    to sweep up, nor handed over), releases the job with every item either done (its file
    final and verified, counted once) or queued, and the next run stages the rest, each file
    copied exactly once over both runs."""
    from hera_stage_ext.jobs.copy_pool import CopyPool

    job = stage(big, "ahead")
    dest = big.workspace / "ahead"
    config = EngineConfig(kinds=standard_kinds(), streams=2, heartbeat_seconds=0.2, fsync=False,
                          claim_batch=6, pool_claim_batch=6, pool_batch_items=3,
                          flush_seconds=0.05)
    stop = threading.Event()
    store = _StopAfterClaimAhead(big.db, stop)
    pool = CopyPool(1, 64 * 1024, chunk_delay=0.02)
    try:
        assert run_pending(store, config, stop=stop, pool=pool) == [job["id"]]
        assert store.claimed_ahead, "a stream must claim ahead before the stop"
        assert store.at_release is not None, "the stopped run releases the job"
        assert "running" not in store.at_release.values(), (
            "claimed and never started, yet still running at the release",
            {i: st for i, st in store.at_release.items() if st == "running"})
        for item_id in store.claimed_ahead:  # never handed over: queued again, not done
            assert store.at_release[item_id] == "queued"
        with big.db.read() as s:
            states = dict(s.execute(select(JobItem.dest_path, JobItem.state).where(
                JobItem.job_id == job["id"])).all())
        assert "running" not in states.values(), states
        assert "queued" in states.values(), "the stop must land mid-job"
        out = get_job(big.db, job["id"])
        assert out["worker_id"] is None and out["files_done"] == sum(
            1 for state in states.values() if state == "done")
        for path, state in states.items():
            assert (dest / path).exists() == (state == "done"), path
        assert run_pending(big.db, config, pool=pool) == [job["id"]]
    finally:
        pool.close()
    out = get_job(big.db, job["id"])
    assert out["state"] == "succeeded", out
    assert out["files_done"] == out["files_total"] and out["files_failed"] == 0
    assert temp_files(dest) == []
    log, _ = read_log(out)
    for name in big.names:
        assert ck.hash_path(dest / big.rel[name]) == ck.hash_path(big.sources[name])
        if big.rel[name].endswith(".uvh5"):  # each file copied once over both runs
            assert log.count(f"copy {big.rel[name]} (") == 1, big.rel[name]


class _NoRoomAheadPool:
    """A copy pool whose helpers never have room for a hand-over sent ahead, and whose worker
    is told to stop while the first hand-over is out: its helper, stopped before its first
    file, hands every item back (as a real one does)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.sent: list[list[str]] = []  # each hand-over submitted: its items' paths

    def submit(self, hand):
        self.sent.append(list(hand.rels))
        return len(self.sent)

    def submit_ahead(self, hand):
        return None

    def collect(self, ticket, interrupt, progress=None):
        self.stop.set()
        return []


def test_a_stopped_stream_sends_no_more_hand_overs(site: Site) -> None:
    """A stream whose next hand-over found no room ahead sends it once the one in flight is
    back, unless its run stopped meanwhile: then nothing more goes to the helpers (a helper
    would write it after the stop), and its items go back to the queue, none written."""
    job = stage(site, "stopped")
    stop = threading.Event()
    pool = _NoRoomAheadPool(stop)
    config = EngineConfig(kinds=standard_kinds(), streams=1, heartbeat_seconds=0.2,
                          fsync=False, pool_batch_items=1)
    assert run_pending(site.db, config, stop=stop, pool=pool) == [job["id"]]
    assert len(pool.sent) == 1, pool.sent
    with site.db.read() as s:
        states = set(s.scalars(select(JobItem.state).where(JobItem.job_id == job["id"])))
    assert states == {"queued"}
    assert get_job(site.db, job["id"])["files_done"] == 0


def _held_in(pids: list[int], folders: list[str]) -> list[str]:
    """What the processes ``pids`` hold open inside any of ``folders``."""
    held = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if any(target == f or target.startswith(f + "/") for f in folders):
                held.append(target)
    return held


def test_an_idle_copy_helper_keeps_no_store_folder_open(site: Site) -> None:
    """Once a run is over, the copy helpers that staged its files hold nothing open inside a
    store (an open folder would stop the store being unmounted)."""
    from hera_stage_ext.jobs.copy_pool import CopyPool

    stores = [os.path.realpath(s["path"]) for s in site.archive.stores.values()]
    job = stage(site, "idle")
    pool = CopyPool(1, 64 * 1024)
    try:
        assert run_pending(site.db, FAST, pool=pool) == [job["id"]]
        out = get_job(site.db, job["id"])
        assert out["state"] == "succeeded" and out["files_done"] == out["files_total"]
        assert "copy " in read_log(out)[0]
        assert pool.pids()  # the helper that staged them (else the check below says nothing)
        deadline = time.monotonic() + 5
        while _held_in(pool.pids(), stores) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _held_in(pool.pids(), stores) == []
    finally:
        pool.close()


def test_copy_helpers_start_with_the_first_hand_over(site: Site) -> None:
    """A worker's copy helpers start when a job first hands files over to them, not with the
    worker: one whose jobs hand nothing over (a transfer; here a data set, staged whole by its
    stream) starts none (their start cost a worker's first transfer more CPU than the
    transfer itself)."""
    from hera_stage_ext.jobs.copy_pool import CopyPool

    pool = CopyPool(1, 64 * 1024)
    try:
        whole = stage(site, "whole", [MIRIAD_NAME])
        assert run_pending(site.db, FAST, pool=pool) == [whole["id"]]
        assert get_job(site.db, whole["id"])["state"] == "succeeded"
        assert pool.pids() == []
        job = stage(site, "handed")
        assert run_pending(site.db, FAST, pool=pool) == [job["id"]]
        out = get_job(site.db, job["id"])
        assert out["state"] == "succeeded" and out["files_done"] == out["files_total"]
        assert len(pool.pids()) == 1
    finally:
        pool.close()


def test_a_job_whose_copy_helpers_cannot_start_moves_its_files_itself(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy helper that cannot be started at the first hand-over (a process limit on a
    shared login node: fork fails) strands no job: each stream moves its files itself, the
    job succeeds, and a later hand-over tries to start a helper again."""
    from hera_stage_ext.jobs import copy_pool

    started = []

    class CannotStart(copy_pool._Helper):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(1)
            raise BlockingIOError(errno.EAGAIN, "fork: Resource temporarily unavailable")

    from hera_stage_ext.jobs import stage_kind

    removed: list[int | None] = []  # whose temporary folders were removed: none's
    monkeypatch.setattr(stage_kind, "remove_temp_folders",
                        lambda finals, pid, root=None: removed.append(pid))
    monkeypatch.setattr(copy_pool, "_Helper", CannotStart)
    pool = copy_pool.CopyPool(1, 64 * 1024)
    try:
        for name in ("nostart", "again"):
            job = stage(site, name)
            done: list[list[int]] = []
            run = threading.Thread(target=lambda: done.append(run_pending(site.db, FAST,
                                                                         pool=pool)))
            run.start()
            run.join(60)
            assert done == [[job["id"]]], "the run never ended"
            out = get_job(site.db, job["id"])
            assert out["state"] == "succeeded" and out["files_done"] == out["files_total"]
            assert "could not be started" in read_log(out)[0]
            for n in site.names:
                if site.sources[n].is_file():
                    assert (site.workspace / name / site.rel[n]).read_bytes() == \
                        site.sources[n].read_bytes()
        assert len(started) >= 2 and pool.pids() == [] and removed == []
    finally:
        pool.close()


def test_a_copy_helper_that_could_not_start_is_started_when_the_others_are_full(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """One of a pool's helpers that could not be started (a passing process limit) is started
    again once the others have no room, not left missing for the worker's life."""
    from hera_stage_ext.jobs import copy_pool

    failures = [BlockingIOError(errno.EAGAIN, "fork: Resource temporarily unavailable")]

    class FailsOnce(copy_pool._Helper):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if failures:
                raise failures.pop()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(copy_pool, "_Helper", FailsOnce)
    pool = copy_pool.CopyPool(2, 64 * 1024)
    try:
        job = stage(site, "helpers")
        assert run_pending(site.db, FAST, pool=pool) == [job["id"]]
        assert get_job(site.db, job["id"])["state"] == "succeeded" and failures == []
        if len(pool.pids()) == 1:  # the job's streams did not fill the one: filled here
            (only,) = pool._helpers
            full = {-n: copy_pool._Waiting(slot=n) for n in range(copy_pool.DEPTH)}
            only.waiting.update(full)
            picked: list[object] = []
            pick = threading.Thread(
                target=lambda: picked.append(pool._pick(10**9, copy_pool._Waiting())),
                daemon=True)
            pick.start()
            pick.join(20)
            for request in full:
                only.waiting.pop(request)
            assert picked and picked[0] is not only, "no helper was started for it"
        assert len(pool.pids()) == 2
    finally:
        pool.close()


def test_a_pool_closed_while_its_helpers_start_leaves_none_running(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pool closed while its first hand-over starts the helpers: the hand-over is refused
    (its stream moves the files itself) rather than waiting forever, and no helper started
    then is left running."""
    from hera_stage_ext.jobs import copy_pool

    made: list[copy_pool._Helper] = []

    class SlowStart(copy_pool._Helper):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(0.5)  # a slow start on a loaded machine
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(copy_pool, "_Helper", SlowStart)
    pool = copy_pool.CopyPool(2, 64 * 1024)
    hand = copy_pool.HandOver("run", str(tmp_path / "log"), False, [], [])
    out: list[object] = []

    def submit() -> None:
        try:
            out.append(pool.submit(hand))
        except copy_pool.HelperDied as exc:
            out.append(exc)

    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    time.sleep(0.1)
    pool.close()
    thread.join(10)
    assert len(out) == 1 and isinstance(out[0], copy_pool.HelperDied)
    for helper in made:
        helper.process.join(10)
        assert not helper.process.is_alive()


def test_a_hand_over_reaches_its_helper_whole() -> None:
    """What a helper gets is the hand-over the stream sent, item for item: its paths travel
    joined into one string a column, and a column that cannot be (a ``Path``, a name holding a
    NUL) travels as it is, so no item takes another's path or log name."""
    from hera_stage_ext.jobs.copy_pool import HandOver
    from hera_stage_ext.jobs.methods import ItemSpec

    def spec(source: str | Path, final: str, sums: dict[str, str]) -> ItemSpec:
        return ItemSpec(source, final, 4096, False, sums, "copy", True, "/store")

    specs = [spec(f"/store/n/{i}.uvh5", f"/dest/n/{i}.uvh5", {"md5": f"{i:032x}"})
             for i in range(1500)] + [spec("/store/n/e", "/dest/n/e", {})]
    rels = [f"n/{i}.uvh5" for i in range(1500)] + ["n/e"]
    odd = [spec(Path("/store/p"), "/dest/p", {}), spec("/store/q", "/dest/q", {})]
    for hand in (HandOver("run", "/log", True, specs, rels, None),
                 HandOver("run", "/log", False, specs[:1], rels[:1], None),
                 HandOver("run", "/log", True, [], [], None),
                 HandOver("run", "/log", True, odd, ["p\0q", "q"], None),
                 HandOver("run", "/log", True, specs[:2], rels[:2], None, ahead=True)):
        got = pickle.loads(pickle.dumps(hand))
        assert got == hand
        assert all(type(s) is ItemSpec for s in got.specs) and type(got.rels) is list


def test_a_helper_writes_a_hand_over_sent_ahead_after_the_others_it_holds() -> None:
    """A stream sends its next hand-over while its last one is in flight. A helper holding
    it and another stream's (or job's) hand-over sent later writes that one first, so a job
    started behind a long one never waits behind the long one's hand-overs sent ahead; with
    only hand-overs sent ahead (or none) it keeps the order they came in."""
    import multiprocessing as mp
    from collections import deque

    from hera_stage_ext.jobs.copy_pool import HandOver, _next

    def hand(run: str, ahead: bool) -> HandOver:
        return HandOver(run, "/log", True, [], [], None, ahead=ahead)

    sender, receiver = mp.Pipe()
    try:
        for message in ((1, 0, hand("long", False)), (2, 1, hand("long", True)),
                        (3, 2, hand("long", True)), (4, 3, hand("short", False))):
            sender.send(message)
        held: deque = deque()
        order = [_next(receiver, held, False)[0] for _ in range(4)]
        assert order == [1, 4, 2, 3]
        sender.send((5, 0, hand("long", True)))
        sender.send(None)  # the pool closing: what was sent before it is still written
        assert _next(receiver, held, False) is None  # closing...
        assert _next(receiver, held, True)[0] == 5  # ...after the one sent before
        assert _next(receiver, held, True) is None and not held
    finally:
        sender.close()
        receiver.close()


def test_a_helper_takes_a_hand_over_larger_than_the_socket_buffer_while_it_writes() -> None:
    """A hand-over of 1,024 small files is larger than a socket's buffer: the helper takes it
    as it is sent (``_Inbox``), so the stream's send never waits for the helper's writer to
    finish the hand-over before; and when the worker is gone, every later receive says so."""
    import multiprocessing as mp
    import threading
    from collections import deque

    from hera_stage_ext.jobs.copy_pool import HandOver, _Inbox, _next

    paths = [f"/archive/store/2459002/zen.2459002.{n:05d}.xx.HH.uvh5" for n in range(8192)]
    big = HandOver("run", "/log", True, [], paths, None)  # (about 430 KB pickled)
    sender, receiver = mp.Pipe()
    try:
        inbox = _Inbox(receiver)  # the writer busy meanwhile: nothing calls ``recv`` yet
        sent = threading.Event()
        threading.Thread(target=lambda: (sender.send((1, 0, big)), sent.set()),
                         daemon=True).start()
        assert sent.wait(30), "the send waited for the helper's writer"
        message = _next(inbox, deque(), False)
        assert message is not None and message[0] == 1 and message[2].rels == paths
        sender.close()
        for _ in range(2):
            with pytest.raises(EOFError):
                inbox.recv()
    finally:
        receiver.close()


def test_a_stop_of_one_job_leaves_another_jobs_hand_over_sent_ahead_alone(tmp_path) -> None:
    """A helper writes a hand-over sent ahead after every other it holds, so it may still
    hold job A's when job B, whose hand-over was sent later, is stopped. The stop is B's
    alone: A's hand-overs, the one being written and the one sent ahead, are written whole
    and made final (not handed back to be redone); B's stops before its next file."""
    from hera_stage_ext.jobs.copy_pool import CopyPool, HandOver
    from hera_stage_ext.jobs.methods import ItemSpec

    store = tmp_path / "store"
    store.mkdir()

    def hand(run: str, names: list[str]) -> tuple[HandOver, list[Path]]:
        specs, finals = [], []
        for name in names:
            source = store / name
            source.write_bytes(name.encode() * 512)
            digest = ck.hash_path(source)
            finals.append(tmp_path / run / name)
            specs.append(ItemSpec(str(source), str(finals[-1]), digest.size, False,
                                  digest.checksums, "copy", True, str(store)))
        return HandOver(run, str(tmp_path / f"{run}.log"), False, specs, names), finals

    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    a1, a1_files = hand("A", [f"a1-{i}" for i in range(6)])
    a2, a2_files = hand("A", [f"a2-{i}" for i in range(4)])
    b1, b1_files = hand("B", [f"b1-{i}" for i in range(40)])
    # One helper, each file slowed (a chunk's pause): it writes A's first hand-over while
    # A's next (sent ahead) and B's wait in it; B is stopped meanwhile.
    pool = CopyPool(1, 64 * 1024, chunk_delay=0.05)
    try:
        first = pool.submit(a1)
        ahead = pool.submit_ahead(a2)
        assert ahead is not None and ahead.request < (b := pool.submit(b1)).request
        b_moved = pool.collect(b, lambda: True)
        a_moved = pool.collect(first, lambda: False) + pool.collect(ahead, lambda: False)
    finally:
        pool.close()
    assert a_moved == [None] * 10, a_moved
    for path in a1_files + a2_files:
        assert path.read_bytes() == path.name.encode() * 512
    assert len(b_moved) < len(b1_files) and b_moved.count(None) == len(b_moved)
    assert sorted(p.name for p in (tmp_path / "B").iterdir()) == sorted(
        p.name for p in b1_files[:len(b_moved)])


def test_hand_overs_keep_a_destination_folder_whole_where_they_can() -> None:
    """Small files go to the copy helpers in hand-overs that end where a folder starts (a
    folder split over two is made final a file at a time), within the same limits, every item
    once and in order; a folder larger than a hand-over is cut as before."""
    from hera_stage_ext.jobs.copy_pool import hand_overs

    def folder(item: tuple[str, int, int]) -> str:
        return item[0]

    def size(item: tuple[str, int, int]) -> int:
        return item[1]

    items = [(name, 1, i) for name in "abc" for i in range(5)]
    parts = hand_overs(items, size, 8, 100, folder)
    assert [{folder(i) for i in part} for part in parts] == [{"a"}, {"b"}, {"c"}]
    assert [i for part in parts for i in part] == items
    assert [len(p) for p in hand_overs(items, size, 8, 100)] == [8, 7]  # no folders given
    one = [("a", 1, i) for i in range(20)]
    assert [len(p) for p in hand_overs(one, size, 8, 100, folder)] == [8, 8, 4]
    # The bytes limit holds for a hand-over that the last folder's items open.
    sized = [("a", 10, 0), ("a", 10, 1), ("a", 10, 2), ("b", 30, 3), ("b", 30, 4),
             ("c", 50, 5)]
    parts = hand_overs(sized, size, 100, 100, folder)
    assert [i for part in parts for i in part] == sized
    assert all(sum(map(size, part)) <= 100 for part in parts)
    assert [[i[2] for i in part] for part in parts] == [[0, 1, 2], [3, 4], [5]]


def test_copy_helper_killed_mid_hand_over(big: Site) -> None:
    """A copy helper SIGKILLed with files in hand: the worker goes on with the job (what the
    helper made final is verified, not copied again; the rest is copied by the worker), the
    job succeeds with every file present once and verified, and the next job has helpers
    again."""
    job = stage(big, "helper-killed")
    dest = big.workspace / "helper-killed"
    wanted = {big.rel[n] for n in big.names}

    def finals() -> list[str]:
        return [p for p in tree(dest) if p in wanted]

    worker = start_worker(big.db.url, delay=0.02)
    try:
        wait_for(lambda: len(finals()) >= 4 and temp_files(dest), timeout=30, step=0.005)
        helpers = _copy_helpers(worker.pid)
        assert helpers, "the worker has copy helpers"
        for pid in helpers:
            os.kill(pid, signal.SIGKILL)
        before = {p: os.stat(dest / p).st_ino for p in finals()}
        assert len(before) < len(wanted), "the kill must land mid-job"
        out = wait_for(lambda: (j := get_job(big.db, job["id"]))["state"] not in (
            "queued", "running") and j, timeout=60)
        assert worker.poll() is None, "the worker survives its helpers"
        assert out["state"] == "succeeded", out
        assert out["files_done"] == out["files_total"] and out["files_failed"] == 0
        assert temp_files(dest) == []
        for name in big.names:
            assert ck.hash_path(dest / big.rel[name]) == ck.hash_path(big.sources[name])
        for path, inode in before.items():  # final before the kill: not copied again
            assert os.stat(dest / path).st_ino == inode
        log, _ = read_log(out)
        assert "a copy helper process died" in log
        for path in wanted - {big.rel[MIRIAD_NAME]}:
            assert log.count(f"copy {path} (") <= 1, path
        # The helpers were replaced: the next job's small files go through new ones.
        again = stage(big, "after-helper-killed")
        wait_for(lambda: get_job(big.db, again["id"])["state"] == "succeeded", timeout=60)
        replaced = _copy_helpers(worker.pid)
        assert replaced and not set(replaced) & set(helpers)
    finally:
        stop_worker(worker)


def test_sigterm_releases_job_for_the_next_worker(big: Site) -> None:
    job = stage(big, "term")
    dest = big.workspace / "term"
    worker = start_worker(big.db.url, delay=0.03)
    try:
        wait_for(lambda: temp_files(dest), timeout=30, step=0.005)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    with big.db.read() as s:
        row = s.get(JobRow, job["id"])
        assert (row.state, row.worker_id) == ("running", None)
        assert "running" not in set(s.scalars(select(JobItem.state)
                                              .where(JobItem.job_id == job["id"])))
    assert temp_files(dest) == [] and markers.marker_job(dest) == job["id"]
    assert run_pending(big.db, FAST) == [job["id"]]
    assert get_job(big.db, job["id"])["state"] == "succeeded"


# ----- deferred commits: written and verified first, renamed and recorded in batches ----------
def test_sigkill_between_write_and_commit_leaves_no_final_name(big: Site) -> None:
    """A worker that has written and verified copies but not yet committed them (renamed to
    their final names, recorded as done) dies: nothing sits under a final name, nothing is
    recorded, and the next worker removes the temporary files and redoes those items."""
    job = stage(big, "uncommitted")
    dest = big.workspace / "uncommitted"
    wanted = {big.rel[n] for n in big.names}
    finals = lambda: [p for p in tree(dest) if p in wanted]
    env = {**os.environ, "HERA_STAGE_TEST_CHUNK_DELAY": "0.02"}
    first = subprocess.Popen(
        [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--db-url", big.db.url,
         "--streams", "2", "--chunk-size", str(64 * 1024), "--heartbeat", "0.2", "--lease", "60",
         "--poll", "0.1", "--commit-seconds", "3600"],  # fsync on: the production path
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Copies under temporary names, or in a temporary folder (a new folder) under final ones.
    written = lambda: [p for p in tree(dest)
                       if ".hera-tmp" in p and not (dest / p).is_dir()]
    try:
        wait_for(lambda: len(written()) >= 6, timeout=30, step=0.005)
    finally:
        first.kill()
        first.wait(10)
    left = temp_files(dest)  # temporary files and folders
    lost = written()
    assert len(lost) >= 6 and finals() == [], "written, verified, not committed"
    out = get_job(big.db, job["id"])
    assert out["state"] == "running" and out["files_done"] == 0
    with big.db.read() as s:
        assert set(s.scalars(select(JobItem.state).where(JobItem.job_id == job["id"]))) <= \
            {"queued", "running"}

    second = start_worker(big.db.url, delay=0)
    try:
        wait_for(lambda: get_job(big.db, job["id"])["state"] not in ("queued", "running"))
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    out = get_job(big.db, job["id"])
    assert out["state"] == "succeeded", out
    assert out["files_done"] == out["files_total"] == len(wanted) and out["files_skipped"] == 0
    assert temp_files(dest) == []
    for name in big.names:
        assert ck.hash_path(dest / big.rel[name]) == ck.hash_path(big.sources[name])
    log, _ = read_log(out)
    assert f"removed {len(left)} temporary file(s) left by the previous worker" in log
    with big.db.read() as s:
        attempts = dict(s.execute(select(JobItem.dest_path, JobItem.attempts)
                                  .where(JobItem.job_id == job["id"])).all())
    for tmp in lost:  # the items whose copies were lost with the worker were done again
        head, name = os.path.split(tmp)
        if name.endswith(".hera-tmp"):  # under its temporary name
            final = os.path.join(head, name[1:-len(".hera-tmp")])
        else:  # under its final name in its folder's temporary folder
            up, folder = os.path.split(head)
            final = os.path.join(up, folder[1:].rsplit(".", 2)[0], name)
        assert attempts[final] == 2


def test_commit_never_overwrites_a_name_that_appeared(tmp_path: Path) -> None:
    from hera_stage_ext.jobs.methods import ItemSpec, Mover, commit

    src = tmp_path / "src.dat"
    src.write_bytes(b"staged data" * 100)
    digest = ck.hash_path(src)
    dest = tmp_path / "dest"
    spec = ItemSpec(src, dest / "sub" / "src.dat", digest.size, False, digest.checksums, "copy")
    mover = Mover(deferred=True)
    outcome = mover.move(spec)
    assert outcome.state == "done" and outcome.tmp and outcome.final == str(spec.final)
    assert os.path.exists(outcome.tmp) and not os.path.lexists(spec.final)
    spec.final.write_bytes(b"somebody else's")  # appears between the write and the commit
    [error] = commit([(outcome.tmp, outcome.final)], fsync=True)
    assert isinstance(error, FileExistsError)
    assert spec.final.read_bytes() == b"somebody else's" and temp_files(dest) == []
    # The normal case: renamed, read-only, mtime kept.
    spec.final.unlink()
    outcome = mover.move(spec)
    assert commit([(outcome.tmp, outcome.final)], fsync=True) == [None]
    assert spec.final.read_bytes() == src.read_bytes() and temp_files(dest) == []
    assert os.stat(spec.final).st_mtime_ns == os.stat(src).st_mtime_ns
    assert not os.stat(spec.final).st_mode & 0o222


def test_commit_renames_a_file_out_of_a_shared_folder_alone(tmp_path: Path) -> None:
    """Only a job's own temporary folder is renamed into place as a whole: a temporary file in
    a folder others share (a receiver's incoming folder) is renamed on its own, and the folder
    and the other files in it are left as they are."""
    incoming = tmp_path / ".hera-stage-incoming"
    incoming.mkdir()
    (incoming / "1.part").write_bytes(b"one")
    (incoming / "2.part").write_bytes(b"another pull, still running")
    (incoming / "3.part").write_bytes(b"three")
    (tmp_path / "night").mkdir()
    assert commit([(str(incoming / "1.part"), str(tmp_path / "night" / "a.uvh5"))]) == [None]
    assert (tmp_path / "night" / "a.uvh5").read_bytes() == b"one"
    [error] = commit([(str(incoming / "3.part"), str(tmp_path / "absent" / "c.uvh5"))])
    assert isinstance(error, FileNotFoundError)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hera-stage-incoming", "night"]
    assert (incoming / "2.part").read_bytes() == b"another pull, still running"


class _StopAtSecondClaim(DbJobStore):
    """The database store, with the worker told to stop at the run's second claim of items
    (the run then gives those back and releases the job: a later attempt resumes it)."""

    def __init__(self, db: Database, stop: threading.Event) -> None:
        super().__init__(db)
        self.stop = stop
        self.claims = 0

    def _claiming(self) -> None:
        self.claims += 1
        if self.claims == 2:
            self.stop.set()

    def claim_items(self, job_id, worker_id, n, max_bytes=None):  # type: ignore[override]
        self._claiming()
        return super().claim_items(job_id, worker_id, n, max_bytes)

    def exchange(self, job_id, worker_id, results, n, max_bytes=None):  # type: ignore[override]
        self._claiming()
        return super().exchange(job_id, worker_id, results, n, max_bytes)


def test_a_recorded_jobs_folder_replaced_between_attempts_is_refused(site: Site) -> None:
    """A site's recorded job takes its folder when its first run begins (the user's worker
    pins it, the site keeps the pin with the job). The folder moved aside and another made
    in its place before the job resumes: the next attempt refuses the new folder (nothing
    written in it, no marker) and the job fails saying why, as a launched job's does; the
    files already staged stay where they are. A retry takes the folder there now, afresh."""
    from hera_stage_ext.jobs import retry_job
    from hera_stage_ext.jobs.recorded import record_stage_job

    dest = site.workspace / "taken"
    job = record_stage_job(site.db, "alice", site.names, str(dest), "copy", log_dir=site.logs)
    config = EngineConfig(kinds=standard_kinds(), streams=1, heartbeat_seconds=0.2,
                          fsync=False, claim_batch=2, allowed_roots=(str(site.workspace),))
    stop = threading.Event()
    assert run_pending(_StopAtSecondClaim(site.db, stop), config, stop=stop) == [job["id"]]
    taken = get_job(site.db, job["id"])
    assert taken["worker_id"] is None and 0 < taken["files_done"] < taken["files_total"]
    st = os.stat(dest)
    assert taken["options"]["pin"] == [st.st_dev, st.st_ino] and taken["options"]["made"]
    before = tree(dest)
    dest.rename(site.workspace / "aside")
    dest.mkdir()
    assert run_pending(site.db, config) == [job["id"]]
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and "not the folder it was when the job took it" in \
        out["error"], out
    assert list(dest.iterdir()) == []
    assert tree(site.workspace / "aside") == before
    retry_job(site.db, job["id"], standard_kinds())
    assert run_pending(site.db, config) == [job["id"]]
    out = get_job(site.db, job["id"])
    assert out["state"] == "succeeded" and out["files_done"] == out["files_total"], out
    st = os.stat(dest)
    assert out["options"]["pin"] == [st.st_dev, st.st_ino]


def test_the_site_keeps_the_folder_a_recorded_job_took(site: Site) -> None:
    """The worker API keeps the first folder a recorded job's worker took: the same again is
    taken, another refused (Conflict), a malformed pin a 400, and only the job's holder may
    say which it took."""
    from hera_stage_ext.jobs.recorded import record_stage_job
    from hera_stage_ext.site.worker_ops import WorkerOps

    dest = site.workspace / "kept"
    job = record_stage_job(site.db, "alice", site.names, str(dest), "copy", log_dir=site.logs)
    ops = WorkerOps(site.db, "alice")
    assert ops.claim({"worker_id": "w1", "lease_seconds": 30})["job"] == job["id"]
    body = {"worker_id": "w1", "pin": [5, 42], "made": True}
    assert ops.taken(job["id"], body) == {"pin": [5, 42]}
    assert ops.taken(job["id"], body) == {"pin": [5, 42]}
    with pytest.raises(Conflict):
        ops.taken(job["id"], {**body, "pin": [5, 43]})
    with pytest.raises(Conflict):
        ops.taken(job["id"], {**body, "worker_id": "w2"})
    for bad in ([5], [5, -1], ["5", 42], [5, 2**64], None, [5.0, 42], [True, 1]):
        with pytest.raises(InvalidRequest):
            ops.taken(job["id"], {**body, "pin": bad})
    with pytest.raises(NotFound):  # another user's worker, even with the holder's id
        WorkerOps(site.db, "bob").taken(job["id"], {**body, "pin": [5, 43]})
    options = get_job(site.db, job["id"])["options"]
    assert options["pin"] == [5, 42] and options["made"] is True
