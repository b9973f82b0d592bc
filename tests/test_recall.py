"""Cold-store recall: files only on a cold (tape) store are recalled into its buffer store in
the order of its volume key, under the buffer's byte cap, staged, verified and reaped."""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.cold import NO_POSITION, check_stores, cold_settings
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.catalogue.models import Instance, Store
from hera_stage_ext.errors import InvalidRequest
from hera_stage_ext.jobs import (
    EngineConfig,
    cancel_job,
    create_stage_job,
    dry_run_stage,
    get_job,
    read_log,
    retry_job,
    run_pending,
)
from hera_stage_ext.jobs.models import JobItem, RecallCopy
from hera_stage_ext.jobs.recall import reap_after_cancel
from hera_stage_ext.standard_kinds import standard_kinds

from .job_fixtures import start_worker, stop_worker, wait_for
from .test_transfer import Sites, send, sites  # noqa: F401  (the two real sites)

FAST = EngineConfig(kinds=standard_kinds(),
                    streams=2, heartbeat_seconds=0.2, fsync=False, flush_seconds=0.05)
SIZE = 32 * 1024
VOLUMES = ("tapeA", "tapeB", "tapeC")
CAP = 3 * SIZE + SIZE // 2  # three files fit, a fourth waits
#: PostgreSQL where locking matters (the cap across jobs, volume order); SQLite elsewhere.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@dataclass
class ColdSite:
    db: Database
    root: Path
    cold: Path
    buffer: Path
    workspace: Path
    names: list[str]
    cold_rel: dict[str, str]  # name -> path in the cold store
    online: list[str]  # names that also have an online instance


def make_cold_site(db: Database, root: Path, n: int = 12) -> ColdSite:
    """``n`` files on three tapes, interleaved in name order (file k on tape k % 3), a
    directory data set on the second tape, two more files on an online store."""
    rng = random.Random(11)
    cold, buffer, onsite = root / "tape", root / "buffer", root / "onsite"
    workspace = root / "workspace"
    for d in (buffer, workspace, onsite / "2457700"):
        d.mkdir(parents=True)
    cold_rel = {}
    for k in range(n):
        name = f"zen.2457700.{10000 + k * 10:05d}.xx.HH.uvh5"
        rel = f"{VOLUMES[k % 3]}/2457700/{name}"
        (cold / rel).parent.mkdir(parents=True, exist_ok=True)
        (cold / rel).write_bytes(rng.randbytes(SIZE))
        cold_rel[name] = rel
    miriad = "zen.2457700.10005.xx.HH.uv"
    cold_rel[miriad] = f"tapeB/2457700/{miriad}"
    (cold / cold_rel[miriad]).mkdir()
    for member in ("visdata", "header"):
        (cold / cold_rel[miriad] / member).write_bytes(rng.randbytes(SIZE // 4))
    online = []
    for k in range(2):
        name = f"zen.2457700.{20000 + k * 10:05d}.xx.HH.uvh5"
        (onsite / "2457700" / name).write_bytes(rng.randbytes(SIZE))
        online.append(name)
    stores = {
        "tape": {"path": str(cold), "kind": "cold", "buffer": "buffer", "buffer_bytes": CAP,
                 "volume_key": r"^([^/]+)/"},
        "buffer": {"path": str(buffer)},
        "onsite": {"path": str(onsite)},
    }
    catalogue = Catalogue(db)
    catalogue.sync_stores(stores)
    ingester = Ingester(catalogue, source="test")
    assert not ingester.ingest("tape", ["*/*/*"]).errors
    assert not ingester.ingest("onsite", ["*/*"]).errors
    return ColdSite(db, root, cold, buffer, workspace, sorted(cold_rel) + online, cold_rel,
                    online)


@pytest.fixture
def site(database, tmp_path) -> ColdSite:
    return make_cold_site(database, tmp_path.resolve())


def stage(site: ColdSite, dest: str, method: str = "copy"):
    return create_stage_job(site.db, "alice", site.names, dest, method, [site.workspace],
                            log_dir=site.root / "logs")


def buffer_bytes(path: Path) -> int:
    """Bytes of every file in the buffer now (temporary copies included)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # reaped meanwhile
                pass
    return total


def check_result(site: ColdSite, job: dict, dest: Path) -> str:
    """What every recall test asserts once the job is over; returns the job's log."""
    done = get_job(site.db, job["id"])
    assert done["state"] == "succeeded", done
    assert done["files_done"] == len(site.names) and done["missing"] == []
    for name, rel in site.cold_rel.items():  # every staged file is the cold one, verified
        out = dest / rel
        assert ck.hash_path(out) == ck.hash_path(site.cold / rel), name
    log, _ = read_log(done)
    # Reaped: the buffer holds no file and the catalogue no instance on it; the tape is intact.
    assert buffer_bytes(site.buffer) == 0
    with site.db.read() as s:
        on_buffer = s.scalars(select(Instance.path).join(Instance.store).where(Store.name == "buffer"))
        assert list(on_buffer) == []
        on_tape = s.scalars(select(Instance.path).join(Instance.store).where(Store.name == "tape"))
        assert sorted(on_tape) == sorted(site.cold_rel.values())
        copies = s.execute(select(RecallCopy.name, RecallCopy.state, RecallCopy.volume)
                           .where(RecallCopy.job_id == job["id"])).all()
    # One recall per file (or none, where the job used another job's recalled copy).
    names = [c.name for c in copies]
    assert len(set(names)) == len(names) and set(names) <= set(site.cold_rel)
    assert {c.state for c in copies} <= {"reaped"}
    return log


def check_log(site: ColdSite, log: str) -> None:
    """Recall order follows the volume key; the cap holds; every recalled file is reaped."""
    volumes = re.findall(r"recall volume '(\w+)' of cold store 'tape': (\d+) file", log)
    assert [v for v, _ in volumes] == list(VOLUMES)
    recalled = re.findall(r"recalled (\S+) from 'tape' volume '(\w+)'.*buffer holds (\d+) of "
                          r"(\d+) bytes", log)
    assert sorted(name for name, *_ in recalled) == sorted(site.cold_rel)
    order = [volume for _, volume, _, _ in recalled]
    # Files of one tape together, tapes in order (interleaved names notwithstanding).
    assert order == sorted(order)
    for name, volume, _, _ in recalled:
        assert site.cold_rel[name].split("/")[0] == volume
    assert max(int(held) for _, _, held, _ in recalled) <= CAP
    assert {int(cap) for *_, cap in recalled} == {CAP}
    assert "buffer full: waiting" in log
    reaped = re.findall(r"reaped (\S+) from buffer 'buffer'", log)
    assert sorted(reaped) == sorted(site.cold_rel)
    # A file is reaped only after it was recalled.
    for name in site.cold_rel:
        assert log.index(f"reaped {name} ") > log.index(f"recalled {name} ")
    assert "MISSING" not in log


def test_cold_files_are_recalled_in_volume_order_under_the_cap(site: ColdSite) -> None:
    plan = dry_run_stage(site.db, site.names, "run1", "copy", [site.workspace])
    assert plan["missing"] == [] and plan["files"] == len(site.names)
    job = stage(site, "run1")
    assert job["missing"] == [] and job["files_total"] == len(site.names)
    assert run_pending(site.db, FAST) == [job["id"]]
    log = check_result(site, job, site.workspace / "run1")
    check_log(site, log)
    with site.db.read() as s:
        assert len(s.scalars(select(RecallCopy.id)).all()) == len(site.cold_rel)
    assert Catalogue(site.db).store("tape")["options"] == {
        "buffer": "buffer", "buffer_bytes": CAP, "volume_key": r"^([^/]+)/"}
    for name in site.online:  # online files are staged as ever
        assert (site.workspace / "run1" / "2457700" / name).exists()


def test_a_buffer_copy_that_cannot_be_removed_is_left_for_a_later_reap(site: ColdSite) -> None:
    """On a shared buffer a worker may meet a copy it may not remove (another user's folder);
    the job goes on and the copy is reaped later by one that can."""
    job = stage(site, "run-stuck")
    assert run_pending(site.db, FAST) == [job["id"]]
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    # One copy recalled again and still to be reaped, made undeletable even for root.
    name, rel = min(site.cold_rel.items())
    copy = site.buffer / rel
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes((site.cold / rel).read_bytes())
    with site.db.write() as s:
        row = s.scalars(select(RecallCopy).where(RecallCopy.name == name)).first()
        row.state = "recalled"
    if subprocess.run(["chattr", "+i", str(copy)], capture_output=True, check=False).returncode:
        pytest.skip("cannot make a file immutable here (chattr needs root and ext4)")
    lines: list[str] = []
    try:
        for _ in range(3):  # said once, however often a waiting job reaps
            assert reap_after_cancel(site.db, job["id"], lines.append) == 0
        assert copy.exists() and lines == [
            (f"could not reap {name} from buffer 'buffer' (Operation not permitted); "
             f"left for a later reap (its {row.size} bytes still count in the buffer)")]
        with site.db.read() as s:
            assert s.scalar(select(RecallCopy.state).where(RecallCopy.id == row.id)) == "reaping"
    finally:
        subprocess.run(["chattr", "-i", str(copy)], check=True)
    # The next reap (any worker's, any job's) finishes it.
    assert reap_after_cancel(site.db, job["id"], lines.append) == 1
    assert not copy.exists() and lines[-1].startswith(f"reaped {name} from buffer 'buffer'")
    with site.db.read() as s:
        assert s.scalar(select(RecallCopy.state).where(RecallCopy.id == row.id)) == "reaped"


@SQLITE_ONLY
def test_real_worker_never_holds_more_than_the_cap(site: ColdSite) -> None:
    """A real worker process; the test samples the buffer directory itself all along."""
    job = stage(site, "run2")
    high = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            high[0] = max(high[0], buffer_bytes(site.buffer))

    sampler = threading.Thread(target=sample)
    sampler.start()
    worker = start_worker(site.db.url, 0.002)
    try:
        wait_for(lambda: get_job(site.db, job["id"])["state"] in ("succeeded", "failed"), 60)
    finally:
        stop.set()
        sampler.join()
        output = stop_worker(worker)
    log = check_result(site, job, site.workspace / "run2")
    check_log(site, log)
    assert 0 < high[0] <= CAP, (high[0], output)


@SQLITE_ONLY
def test_a_worker_killed_mid_recall_is_taken_over(site: ColdSite) -> None:
    """SIGKILL while files are being recalled: the next worker recalls what was not
    registered yet, uses what was, and the buffer ends empty with every file verified."""
    job = stage(site, "run5")
    log_path = Path(job["log_path"])
    first = start_worker(site.db.url, 0.03)
    try:
        wait_for(lambda: log_path.exists() and log_path.read_text().count("Z  recalled zen") >= 2)
    finally:
        first.kill()  # no cleanup, no release
        first.wait(10)
    assert get_job(site.db, job["id"])["state"] == "running"
    assert buffer_bytes(site.buffer) > 0  # recalled copies (and maybe a partial one) left
    second = start_worker(site.db.url)
    try:
        wait_for(lambda: get_job(site.db, job["id"])["state"] not in ("queued", "running"), 60)
    finally:
        stop_worker(second)
    log = check_result(site, job, site.workspace / "run5")
    assert "resumes job" in log


@SQLITE_ONLY
def test_a_cancelled_job_leaves_nothing_in_the_buffer(site: ColdSite) -> None:
    job = stage(site, "run6")
    log_path = Path(job["log_path"])
    worker = start_worker(site.db.url, 0.05)
    try:
        wait_for(lambda: log_path.exists() and "Z  recalled zen" in log_path.read_text())
        cancel_job(site.db, job["id"], standard_kinds())
        wait_for(lambda: get_job(site.db, job["id"])["state"] == "cancelled")
    finally:
        stop_worker(worker)
    log = log_path.read_text()
    assert "reaped " in log
    assert buffer_bytes(site.buffer) == 0
    with site.db.read() as s:
        assert list(s.scalars(select(Instance.id).join(Instance.store).where(Store.name == "buffer"))) \
            == []
        states = set(s.scalars(select(RecallCopy.state)))
    assert states <= {"reaped"}

    # Retried, it stages everything, cold files not yet recalled at the cancel included.
    with site.db.read() as s:
        waiting = s.scalar(select(func.count()).where(JobItem.job_id == job["id"],
                                                        JobItem.state == "waiting"))
    assert waiting, "the cancel came before every cold file was recalled"
    retried = retry_job(site.db, job["id"], standard_kinds(), allowed_roots=[site.workspace])
    assert retried["state"] == "queued"
    assert run_pending(site.db, FAST) == [job["id"]]
    done = get_job(site.db, job["id"])
    assert done["state"] == "succeeded" and done["files_done"] == len(site.names)
    for rel in site.cold_rel.values():  # recalled again where the cancel had reaped them
        assert ck.hash_path(site.workspace / "run6" / rel) == ck.hash_path(site.cold / rel)
    assert buffer_bytes(site.buffer) == 0
    with site.db.read() as s:
        assert set(s.scalars(select(RecallCopy.state))) == {"reaped"}


def test_two_jobs_share_the_buffer_and_its_cap(site: ColdSite) -> None:
    """Two jobs over the same cold files, run at once by two workers: the cap holds for the
    buffer as a whole, a copy one job still needs is never reaped under it, and the buffer is
    empty at the end."""
    jobs = [stage(site, "a"), stage(site, "b")]
    threads = [threading.Thread(target=run_pending, args=(site.db, FAST),
                                kwargs={"worker_id": f"w{k}"}) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    held: list[int] = []
    for job, dest in zip(jobs, ("a", "b")):
        log = check_result(site, job, site.workspace / dest)
        # A job that found every copy already recalled by the other logs no buffer line.
        held += [int(h) for h in re.findall(r"buffer holds (\d+) of", log)]
        assert "FAILED" not in log
    assert held and max(held) <= CAP


@SQLITE_ONLY
def test_a_corrupt_tape_copy_fails_that_file_only(site: ColdSite) -> None:
    victim = sorted(site.cold_rel)[4]
    path = site.cold / site.cold_rel[victim]
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    job = stage(site, "run3")
    run_pending(site.db, FAST)
    done = get_job(site.db, job["id"])
    assert done["state"] == "failed" and done["files_failed"] == 1
    assert done["files_done"] == len(site.names) - 1
    log, _ = read_log(done)
    assert re.search(rf"FAILED \S*{re.escape(victim)}: recall failed: checksum mismatch", log)
    assert not (site.workspace / "run3" / site.cold_rel[victim]).exists()
    assert buffer_bytes(site.buffer) == 0  # the bad copy was removed, the good ones reaped
    with site.db.read() as s:
        state = s.scalar(select(RecallCopy.state).where(RecallCopy.name == victim))
    assert state == "failed"

    # The tape is repaired: a retry recalls that file again (never reads it from the tape
    # directly) and stages it.
    data[100] ^= 1
    path.write_bytes(bytes(data))
    retry_job(site.db, job["id"], standard_kinds(), allowed_roots=[site.workspace])
    run_pending(site.db, FAST)
    done = get_job(site.db, job["id"])
    assert done["state"] == "succeeded" and done["files_done"] == len(site.names)
    log, _ = read_log(done)
    assert re.search(rf"recalled {re.escape(victim)} from 'tape'", log)
    assert (site.workspace / "run3" / site.cold_rel[victim]).read_bytes() == path.read_bytes()
    assert buffer_bytes(site.buffer) == 0


@SQLITE_ONLY
def test_files_of_a_volume_are_recalled_by_their_position_on_it(database: Database,
                                                                  tmp_path: Path) -> None:
    """A volume key with a second group (here the tape file number) orders a tape's files by
    it, as a number: 9, 10, 100 (their paths sort 10, 100, 9)."""
    root = tmp_path.resolve()
    cold, workspace = root / "tape", root / "workspace"
    (root / "buffer").mkdir()
    workspace.mkdir()
    placed = {"zen.2457700.10000.xx.HH.uvh5": "t1/100", "zen.2457700.10010.xx.HH.uvh5": "t1/9",
              "zen.2457700.10020.xx.HH.uvh5": "t1/10", "zen.2457700.10030.xx.HH.uvh5": "t0/2",
              "zen.2457700.10040.xx.HH.uvh5": "t1/nearline"}
    for name, folder in placed.items():
        (cold / folder).mkdir(parents=True, exist_ok=True)
        (cold / folder / name).write_bytes(os.urandom(1024))
    catalogue = Catalogue(database)
    catalogue.sync_stores({
        "tape": {"path": str(cold), "kind": "cold", "buffer": "buffer",
                 "volume_key": r"^([^/]+)/(\w+)/"},
        "buffer": {"path": str(root / "buffer")}})
    assert not Ingester(catalogue, source="test").ingest("tape", ["*/*/*"]).errors
    job = create_stage_job(database, "alice", list(placed), "run", "copy", [workspace],
                           log_dir=root / "logs")
    assert run_pending(database, FAST) == [job["id"]]
    assert get_job(database, job["id"])["state"] == "succeeded"
    log, _ = read_log(get_job(database, job["id"]))
    recalled = re.findall(r"recalled (\S+) from 'tape' volume '(\w+)'", log)
    assert [(placed[name], volume) for name, volume in recalled] == [
        ("t0/2", "t0"), ("t1/9", "t1"), ("t1/10", "t1"), ("t1/100", "t1"),
        ("t1/nearline", "t1")]


@SQLITE_ONLY
def test_symlinks_to_cold_files_are_refused(site: ColdSite) -> None:
    with pytest.raises(InvalidRequest, match="cold store"):
        stage(site, "run4", method="symlink")
    assert not (site.workspace / "run4").exists()


def test_volume_key_places_files_on_their_volume() -> None:
    keyed = cold_settings("t", {"buffer": "b", "volume_key": r"^([^/]+)/([^/]+)/"})
    order = ["t1/x/f", "t1/10/f", "t0/5/f", "t1/9/f", "t1/²/f", "t1/0010/f", "nowhere"]
    assert sorted(order, key=lambda p: (*keyed.place(p), p)) == [
        "nowhere", "t0/5/f", "t1/9/f", "t1/0010/f", "t1/10/f", "t1/x/f", "t1/²/f"]
    optional = cold_settings("t", {"buffer": "b", "volume_key": r"^(t\d)?/?(\d+)?"})
    assert sorted(["t1/x", "t1/1", "t1/0", "/3"], key=lambda p: (*optional.place(p), p)) == [
        "/3", "t1/0", "t1/1", "t1/x"]  # no volume: ""; no position: after the numbers
    plain = cold_settings("t", {"buffer": "b"})  # the default: a volume, no position
    assert plain.place("t1/10/f") == plain.place("t1/9/f") == ("t1", NO_POSITION)


def test_cold_store_settings_are_checked() -> None:
    good = {"t": {"path": "/t", "kind": "cold", "buffer": "b"}, "b": {"path": "/b"}}
    check_stores(good)
    for bad, message in [
        ({"t": {"path": "/t", "kind": "cold"}}, "needs a 'buffer'"),
        ({"t": {"path": "/t", "kind": "cold", "buffer": "x"}}, "must be an online store"),
        ({**good, "t": {**good["t"], "buffer_bytes": 0}}, "positive integer"),
        ({**good, "t": {**good["t"], "volume_key": "("}}, "not a regular expression"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_stores(bad)



def test_a_transfer_recalls_cold_files_first(sites: Sites) -> None:  # noqa: F811
    """Site A sends files only on its tape to site B: recalled by volume into A's buffer,
    pulled by B from there, verified, and reaped once B has committed them."""
    rng = random.Random(3)
    tape, buffer = sites.tmp / "a" / "tape", sites.tmp / "a" / "buffer"
    buffer.mkdir(parents=True)
    names = [f"zen.2457709.{10000 + 10 * k:05d}.xx.HH.uvh5" for k in range(4)]
    rels = [f"{('vol1', 'vol2')[k % 2]}/2457709/{name}" for k, name in enumerate(names)]
    specs = []
    for name, rel in zip(names, rels):
        (tape / rel).parent.mkdir(parents=True, exist_ok=True)
        (tape / rel).write_bytes(rng.randbytes(SIZE))
        digest = ck.hash_file(tape / rel)
        specs.append(FileSpec(name=name, size=digest.size, checksums=digest.checksums))
    catalogue = sites.a_core.catalogue
    catalogue.sync_stores({
        "a-store": {"path": str(sites.a_store)}, "buffer": {"path": str(buffer)},
        "tape": {"path": str(tape), "kind": "cold", "buffer": "buffer",
                 "buffer_bytes": 2 * SIZE}})
    catalogue.register(specs, "tape", rels)
    report = send(sites, names)
    assert report["counts"] == {"done": len(names)}, report
    for name, rel in zip(names, rels):
        assert (sites.b_store / rel).read_bytes() == (tape / rel).read_bytes()
        assert sites.b_file(name).json()["checksums"] == specs[names.index(name)].checksums
    log, _ = read_log(report["job"])
    assert re.findall(r"recall volume '(\w+)'", log) == ["vol1", "vol2"]
    assert sorted(re.findall(r"reaped (\S+) from buffer", log)) == names
    assert buffer_bytes(buffer) == 0
    assert [i["store"] for i in catalogue.file_detail(names[0])["instances"]] == ["tape"]
