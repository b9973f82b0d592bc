"""Faults a user meets while staging, produced for real (a full file system, a folder the
worker may not write, a store that goes away mid-job, a SIGKILLed worker), and what the user
then sees: the job's errors and STAGING-ERRORS, files staged before intact and verified, no
temporary file left, and retry / forget putting things right (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.models import Store
from hera_stage_ext.errors import Conflict, InsufficientSpace, InvalidRequest, NotFound
from hera_stage_ext.jobs import (
    EngineConfig,
    cancel_job,
    create_stage_job,
    get_job,
    markers,
    read_log,
    run_pending,
)
from hera_stage_ext.jobs.engine import forget_job, retry_job
from hera_stage_ext.jobs.models import JobRow, JobItem
from hera_stage_ext.standard_kinds import standard_kinds

from .job_fixtures import (
    Site,
    grow_filesystem,
    make_big_site,
    make_site,
    small_filesystem,
    start_worker,
    stop_worker,
    temp_files,
    tree,
    unprivileged_prefix,
    wait_for,
)

FAST = EngineConfig(kinds=standard_kinds(), streams=3, heartbeat_seconds=0.2, fsync=False)


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def site(database, tmp_path) -> Site:
    return make_site(database, tmp_path / "site")


@pytest.fixture
def big(database, tmp_path) -> Site:
    return make_big_site(database, tmp_path / "big")


def stage(site: Site, dest: str, names=None, **kw):
    return create_stage_job(site.db, "alice", site.names if names is None else names, dest,
                            "copy", site.roots, log_dir=site.logs, **kw)


def items(site: Site, job_id: int) -> dict[str, JobItem]:
    with site.db.read() as s:
        rows = list(s.scalars(select(JobItem).where(JobItem.job_id == job_id)))
        for row in rows:
            s.expunge(row)
    return {row.dest_path: row for row in rows}


def finished(site: Site, job_id: int) -> dict:
    return wait_for(lambda: (j := get_job(site.db, job_id))["state"] in FINISHED and j,
                    timeout=30)


def assert_staged_intact(site: Site, dest: Path, paths) -> dict[str, int]:
    """Each path is there, verified against its source; returns their inodes."""
    by_rel = {rel: name for name, rel in site.rel.items()}
    inodes = {}
    for path in paths:
        assert ck.hash_path(dest / path) == ck.hash_path(site.sources[by_rel[path]]), path
        inodes[path] = os.stat(dest / path).st_ino
    return inodes


def errors_marker(dest: Path) -> list[str]:
    return (dest / markers.ERRORS).read_text().splitlines()


def assert_failed_job(site: Site, job: dict, dest: Path, words: str) -> tuple[list, list]:
    """The job failed (not hung), every failed item says ``words`` in the job, its items and
    STAGING-ERRORS; what was staged is there and verified; nothing temporary is left."""
    assert job["state"] == "failed", job
    rows = items(site, job["id"])
    done = [p for p, r in rows.items() if r.state == "done"]
    failed = [p for p, r in rows.items() if r.state == "failed"]
    assert len(done) + len(failed) == job["files_total"] == len(rows)
    assert (job["files_done"], job["files_failed"]) == (len(done), len(failed))
    assert done and failed, (done, failed)
    assert words in job["error"]
    for path in failed:
        assert words in rows[path].error, rows[path].error
        assert not os.path.lexists(dest / path)
    lines = errors_marker(dest)
    assert sorted(line.split(": ", 1)[0] for line in lines) == sorted(failed)
    assert all(words in line for line in lines)
    assert not (dest / markers.IN_PROGRESS).exists() and not (dest / markers.SUCCEEDED).exists()
    assert temp_files(dest) == []
    assert_staged_intact(site, dest, done)
    log, _ = read_log(job)
    assert all(f"FAILED {path}: " in log for path in failed) and words in log
    return done, failed


def assert_retry_completes(site: Site, job_id: int, dest: Path, done_before: list[str],
                           config: EngineConfig = FAST) -> dict:
    """Retry, run: the job succeeds, and what was staged before (``done_before``: present at
    the destination) was not copied again."""
    inodes = assert_staged_intact(site, dest, done_before)
    recorded = [p for p, r in items(site, job_id).items() if r.state in ("done", "skipped")]
    assert set(recorded) <= set(done_before)
    again = retry_job(site.db, job_id, standard_kinds())
    assert again["state"] == "queued" and again["error"] == ""
    assert again["files_done"] == len(recorded) and again["files_failed"] == 0
    assert markers.marker_job(dest) == job_id and not (dest / markers.ERRORS).exists()
    assert run_pending(site.db, config) == [job_id]
    out = get_job(site.db, job_id)
    assert out["state"] == "succeeded", out
    assert out["files_done"] == out["files_total"] and out["bytes_done"] == out["bytes_total"]
    assert (dest / markers.SUCCEEDED).exists() and temp_files(dest) == []
    assert_staged_intact(site, dest, list(items(site, job_id)))
    for path, inode in inodes.items():
        assert os.stat(dest / path).st_ino == inode, f"{path} was copied again"
    log, _ = read_log(out)
    assert "retried" in log
    for path in done_before:
        assert log.count(f"copy {path} (") == 1, path
    return out


# ----- a destination that fills up ------------------------------------------------------------
def test_destination_fills_up(big: Site) -> None:
    dest = big.workspace / "small"
    with small_filesystem(dest, size_mib=2) as kind:
        free = shutil.disk_usage(dest).free
        assert free <= 2 << 20
        # Without force: refused before anything is written, with the real free space.
        with pytest.raises(InsufficientSpace) as info:
            stage(big, "small")
        assert info.value.status == 507 and info.value.details["free"] == free
        assert info.value.details["needed"] > free and "bytes free" in info.value.message
        assert tree(dest) == [] and not big.logs.exists()

        # Forced: stages what fits, the rest fails with the device's own words.
        job = stage(big, "small", force=True)
        assert run_pending(big.db, FAST) == [job["id"]]
        out = get_job(big.db, job["id"])
        done, failed = assert_failed_job(big, out, dest, "No space left on device")
        assert len(done) >= 4, "about 2 MiB of 256 KiB files fit"

        # Retrying on a disk still full is refused up front, with the numbers.
        with pytest.raises(InsufficientSpace) as again:
            retry_job(big.db, job["id"], standard_kinds())
        assert again.value.details["needed"] == sum(items(big, job["id"])[p].size
                                                     for p in failed)
        assert get_job(big.db, job["id"])["state"] == "failed"

        # The user gets more room: the retry stages the rest and copies nothing twice.
        if kind == "tmpfs" and grow_filesystem(dest, 16):
            assert_retry_completes(big, job["id"], dest, done)


# ----- permission denied ----------------------------------------------------------------------
def test_permission_denied_in_a_destination_folder(site: Site) -> None:
    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("no way to run a worker that obeys permission bits here (root, no setpriv)")
    night = sorted({rel.split("/")[0] for rel in site.rel.values()})[0]
    dest = site.workspace / "perm"
    (dest / night).mkdir(parents=True)
    os.chmod(dest / night, 0o555)  # the user's own folder, made read-only
    job = stage(site, "perm")
    # A real worker process that, even as root, is held to permission bits (as a user is).
    worker = start_worker(site.db.url, prefix=prefix, extra=["--exit-when-idle"])
    try:
        worker.wait(60)
    finally:
        output = stop_worker(worker)
    out = get_job(site.db, job["id"])
    done, failed = assert_failed_job(site, out, dest, "Permission denied")
    assert sorted(failed) == sorted(rel for rel in site.rel.values() if rel.startswith(night + "/")), \
        output
    assert all(f"cannot write into '{night}'" in line for line in errors_marker(dest))
    assert all(not p.startswith(night + "/") for p in done)

    os.chmod(dest / night, 0o755)
    assert_retry_completes(site, job["id"], dest, done)


# ----- a store that goes away mid-job ---------------------------------------------------------
@pytest.mark.parametrize("how", ["marked", "moved"])
def test_store_goes_unavailable_mid_job(big: Site, how: str) -> None:
    job = stage(big, "gone")
    dest = big.workspace / "gone"
    wanted = set(big.rel.values())
    store_root = Path(big.archive.stores["onsite"]["path"])
    away = store_root.with_name("onsite-unmounted")
    worker = start_worker(big.db.url, delay=0.02)
    try:
        wait_for(lambda: len([p for p in tree(dest) if p in wanted]) >= 5, step=0.005)
        if how == "marked":  # an operator marks the store unavailable in the catalogue
            with big.db.write() as s:
                s.execute(update(Store).where(Store.name == "onsite").values(available=False))
            words = "store 'onsite' is unavailable (marked so in the catalogue)"
        else:  # the disk goes away under the running worker
            store_root.rename(away)
            words = "store 'onsite' is unavailable: its directory"
        out = finished(big, job["id"])  # ends, does not hang
    finally:
        output = stop_worker(worker)
        if away.exists():  # the disk is back (the checks below read the sources)
            away.rename(store_root)
    done, _failed = assert_failed_job(big, out, dest, words)
    assert len(done) >= 5, output
    assert "retry the job when" in errors_marker(dest)[0]
    if how == "marked":
        assert "store 'onsite' became unavailable" in read_log(out)[0]
        # Still marked unavailable: the retry fails the same files again, clearly.
        assert retry_job(big.db, job["id"], standard_kinds())["state"] == "queued"
        run_pending(big.db, FAST)
        assert_failed_job(big, get_job(big.db, job["id"]), dest, words)
        with big.db.write() as s:
            s.execute(update(Store).where(Store.name == "onsite").values(available=True))

    # The store is back: a retry completes the job, copying nothing twice.
    assert_retry_completes(big, job["id"], dest, done)


# ----- retry and forget -------------------------------------------------------------------------
def test_retry_and_forget_after_a_sigkilled_worker(big: Site) -> None:
    job = stage(big, "killed")
    dest = big.workspace / "killed"
    wanted = set(big.rel.values())
    worker = start_worker(big.db.url, delay=0.03)
    try:
        # Its helpers (and multiprocessing's resource tracker) start with the worker.
        helpers = wait_for(lambda: len(found := child_pids(worker.pid)) >= 2 and found)
        # Some of its files recorded (a run's first claim takes the items of all its streams:
        # until a result is recorded, every item is in hand), others still being written.
        wait_for(lambda: len([p for p in tree(dest) if p in wanted]) >= 6 and temp_files(dest)
                 and get_job(big.db, job["id"])["files_done"] > 0, step=0.005)
    finally:
        worker.kill()  # SIGKILL: no cleanup, the job stays "running" under a dead worker
        worker.wait(10)
    # Its copy helpers die with it: nothing goes on writing into the destination.
    assert helpers, "the worker runs its small files in helper processes"
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and not _zombie(pid)
                             for pid in helpers), timeout=10)
    assert get_job(big.db, job["id"])["state"] == "running" and temp_files(dest)

    # Still active: neither retried nor forgotten (it would resume with the next worker).
    with pytest.raises(Conflict) as busy:
        retry_job(big.db, job["id"], standard_kinds())
    assert busy.value.status == 409 and "cancel it first" in busy.value.message
    with pytest.raises(Conflict):
        forget_job(big.db, job["id"])

    # Cancelled (the dead worker cannot act: done at once), temporary files removed.
    assert cancel_job(big.db, job["id"], standard_kinds())["state"] == "cancelled"
    assert temp_files(dest) == []
    done = [p for p in tree(dest) if p in wanted]  # finished before the kill (some unrecorded)
    assert 6 <= len(done) < len(wanted)

    # While another job holds the folder, the retry cannot take it back.
    other = stage(big, "killed", big.names[:1])
    with pytest.raises(Conflict) as held:
        retry_job(big.db, job["id"], standard_kinds())
    assert held.value.details["job_id"] == other["id"]
    assert markers.marker_job(dest) == other["id"]
    cancel_job(big.db, other["id"], standard_kinds())

    out = assert_retry_completes(big, job["id"], dest, done)
    rows = items(big, job["id"])
    assert max(r.attempts for r in rows.values()) == 2  # the items in hand at the kill
    assert min(r.attempts for r in rows.values()) == 1
    with pytest.raises(InvalidRequest, match="nothing to retry"):
        retry_job(big.db, job["id"], standard_kinds())

    # Forget: the record, its items and its log go; what it staged stays.
    staged = tree(dest)
    assert forget_job(big.db, job["id"]) == {"deleted": job["id"]}
    with pytest.raises(NotFound):
        get_job(big.db, job["id"])
    with pytest.raises(NotFound):
        forget_job(big.db, job["id"])
    assert not os.path.exists(out["log_path"]) and items(big, job["id"]) == {}
    assert tree(dest) == staged and (dest / markers.SUCCEEDED).exists()
    assert_staged_intact(big, dest, wanted)
    with big.db.read() as s:
        assert s.get(JobRow, other["id"]) is not None  # other jobs are untouched
    # The folder is free for a new job, which finds everything there already.
    fresh = stage(big, "killed")
    run_pending(big.db, FAST)
    assert get_job(big.db, fresh["id"])["files_skipped"] == len(wanted)


def test_retry_picks_up_files_missing_at_launch(site: Site) -> None:
    with site.db.write() as s:  # onsite (the only store with the last night) is down
        s.execute(update(Store).where(Store.name == "onsite").values(available=False))
    job = stage(site, "partial")
    assert job["missing"] and job["files_total"] + len(job["missing"]) == len(site.names)
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_failed"] == 0
    with pytest.raises(InvalidRequest) as info:  # still down: nothing to retry yet
        retry_job(site.db, job["id"], standard_kinds())
    assert info.value.details["missing"] == job["missing"]

    with site.db.write() as s:
        s.execute(update(Store).where(Store.name == "onsite").values(available=True))
    again = retry_job(site.db, job["id"], standard_kinds())
    assert again["missing"] == [] and again["files_total"] == len(site.names)
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "succeeded" and out["files_done"] == len(site.names)
    dest = site.workspace / "partial"
    assert_staged_intact(site, dest, [site.rel[n] for n in site.names if n in job["missing"]])


def test_forget_a_queued_job_is_refused(site: Site) -> None:
    job = stage(site, "q", site.names[:2])
    with pytest.raises(Conflict):
        forget_job(site.db, job["id"])
    with pytest.raises(Conflict):
        retry_job(site.db, job["id"], standard_kinds())
    assert get_job(site.db, job["id"])["state"] == "queued"


# ----- the worker itself ------------------------------------------------------------------------
def test_a_job_the_worker_cannot_run_is_released_not_fatal(site: Site) -> None:
    """A job whose log cannot be written (here: a folder stands where the file goes) does not
    take its worker down: the job is released, says why, is tried again after a back-off (not
    in a tight loop), and completes once it can."""
    job = stage(site, "unlogged")
    log_path = Path(job["log_path"])
    log_path.unlink()
    log_path.mkdir()
    worker = start_worker(site.db.url)
    try:
        # One read (claimed, then released): a predicate over two reads could see the job
        # unclaimed in the first and claimed, not yet released, in the second.
        held = wait_for(lambda: (j := get_job(site.db, job["id"]))["worker_id"] is None
                        and j["started_at"] and worker.poll() is None and j, timeout=30)
        assert held["state"] == "running" and "could not run it" in held["error"], held
        assert "tries again in 5 s" in held["error"]
        time.sleep(2)  # within the first back-off (5 s): not claimed again
        log_path.rmdir()  # the cause goes away: the next claim runs it through
        out = finished(site, job["id"])
        assert worker.poll() is None, "the worker is still alive"
    finally:
        output = stop_worker(worker)
    assert out["state"] == "succeeded" and out["error"] == "", output
    assert output.count("could not run it; released") == 1, output


def test_a_long_job_does_not_hold_up_the_next(big: Site) -> None:
    """One worker runs several jobs at once: a small job launched behind a long one finishes
    while the long one is still running."""
    long_job = stage(big, "long")
    worker = start_worker(big.db.url, delay=0.05)
    try:
        wait_for(lambda: get_job(big.db, long_job["id"])["state"] == "running", timeout=30)
        short = stage(big, "short", big.names[:2])
        done = wait_for(lambda: (j := get_job(big.db, short["id"]))["state"] in FINISHED and j,
                        timeout=60)
        assert done["state"] == "succeeded"
        assert get_job(big.db, long_job["id"])["state"] == "running"
        cancel_job(big.db, long_job["id"], standard_kinds())
        finished(big, long_job["id"])
    finally:
        stop_worker(worker)
