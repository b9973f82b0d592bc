"""The worker trusts no path (issue 15, findings 1-4): a link planted or swapped in the tree a
job writes into or an upload reads from, at any moment, redirects nothing; and ``hardlink`` /
``symlink`` never hand a user an archive file they could write.

Each finding has a deterministic test (the swap made between the launch and the run, in this
process) and, for 2 and 3, a race test: a real worker process, slowed down by the test throttle
(``HERA_STAGE_TEST_CHUNK_DELAY``), while the folder is swapped for a symlink at several moments
of the job (before the first file, mid-way, before the markers), repeated until each moment has
been hit. Nothing may be written (or read) outside the allowed roots.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import File
from hera_stage_ext.errors import InvalidRequest
from hera_stage_ext.jobs import EngineConfig, create_stage_job, get_job, markers, run_pending
from hera_stage_ext.transfer.upload import create_upload_job
from hera_stage_ext.standard_kinds import standard_kinds

from .job_fixtures import (
    Site,
    give_stores_away,
    make_big_site,
    make_site,
    start_worker,
    stop_worker,
    tree,
    wait_for,
)

FAST = EngineConfig(kinds=standard_kinds(), streams=2, heartbeat_seconds=0.2, fsync=False)
FINISHED = ("succeeded", "failed", "cancelled")
PRECIOUS = b"a file of the user's that no job may touch\n"


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def site(db, tmp_path) -> Site:
    return make_site(db, tmp_path / "site", files_per_night=2, nights=2)


def stage(site: Site, dest: str, names=None, method: str = "copy"):
    return create_stage_job(site.db, "alice", site.names if names is None else names, dest,
                            method, site.roots, log_dir=site.logs)


def swap_for_symlink(folder: Path, target: Path) -> Path:
    """``mv folder folder.orig; ln -s target folder``; returns where the folder went."""
    moved = folder.with_name(folder.name + ".orig")
    folder.rename(moved)
    folder.symlink_to(target, target_is_directory=True)
    return moved


def everything_below(path: Path) -> list[str]:
    return tree(path) if path.exists() else []


# ----- finding 1: markers ----------------------------------------------------------------------
@pytest.mark.parametrize("result", ["errors", "succeeded"])
def test_marker_temporary_names_planted_as_symlinks_are_not_written_through(site, tmp_path,
                                                                            result):
    """``ln -s /any/file d/.STAGING-ERRORS.hera-tmp`` (or SUCCEEDED), then a job into ``d``:
    the result marker is written in ``d``, the file the link points at keeps its bytes, and a
    missing name's line breaks never become lines of the marker."""
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    dest = site.workspace / "d"
    dest.mkdir()
    for name in (markers.ERRORS, markers.SUCCEEDED):
        (dest / f".{name}.hera-tmp").symlink_to(victim)
    # A missing name holding a line break is refused at launch (it never reaches a marker);
    # one without is a line of the error marker.
    with pytest.raises(InvalidRequest, match="control characters"):
        stage(site, "d", site.names[:2] + ["zen.nothing.uvh5\n* * * * * root evil-command"])
    missing = "zen.nothing.uvh5"
    names = site.names[:2] + ([missing] if result == "errors" else [])
    job = stage(site, "d", names)
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == ("failed" if result == "errors"
                                                     else "succeeded")
    assert victim.read_bytes() == PRECIOUS, "the marker was written through the planted link"
    marker = dest / (markers.ERRORS if result == "errors" else markers.SUCCEEDED)
    assert marker.is_file() and not marker.is_symlink()
    if result == "errors":
        lines = marker.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zen.nothing.uvh5: "), lines
    assert not (dest / markers.IN_PROGRESS).exists()


def test_an_in_progress_marker_that_is_a_symlink_is_not_read_or_followed(site, tmp_path):
    """A symlink under STAGING-IN-PROGRESS naming a live job's marker elsewhere takes
    nothing: it is not read as the marker (O_NOFOLLOW) and is replaced by the job's own."""
    other = stage(site, "other", site.names[:1])
    dest = site.workspace / "planted"
    dest.mkdir()
    (dest / markers.IN_PROGRESS).symlink_to(site.workspace / "other" / markers.IN_PROGRESS)
    job = stage(site, "planted", site.names[:1])  # not refused as "job <other> is staging"
    assert markers.marker_job(dest) == job["id"] != other["id"]
    assert not (dest / markers.IN_PROGRESS).is_symlink()
    assert markers.marker_job(site.workspace / "other") == other["id"]


# ----- finding 2: a destination swapped after the launch ---------------------------------------
@pytest.mark.parametrize("swap", ["symlink", "another folder"])
def test_a_destination_swapped_after_the_launch_is_not_written(site, tmp_path, swap):
    """``mv tt1 tt1.orig; ln -s /outside tt1`` right after the 202 (or a new folder made in its
    place): the job writes nothing, anywhere, and fails saying why."""
    outside = tmp_path / "outside"
    outside.mkdir()
    job = stage(site, "tt1")
    dest = site.workspace / "tt1"
    if swap == "symlink":
        moved = swap_for_symlink(dest, outside)
    else:
        moved = dest.with_name("tt1.orig")
        dest.rename(moved)
        dest.mkdir()
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert everything_below(outside) == []
    assert out["state"] == "failed" and out["files_done"] == 0, out
    assert "replaced" in out["error"] or "symbolic link" in out["error"], out["error"]
    if swap == "another folder":
        assert everything_below(dest) == []  # not the job's folder: not written either
    assert everything_below(moved) == [markers.IN_PROGRESS]  # taken at launch, nothing more


def test_the_worker_checks_the_destination_against_its_own_roots(site, tmp_path):
    """A worker told its roots (``--allowed-root``) refuses a job whose destination is outside
    them, whatever the server accepted."""
    job = stage(site, "elsewhere", site.names[:1])
    config = EngineConfig(kinds=standard_kinds(), streams=1, heartbeat_seconds=0.2, fsync=False,
                          allowed_roots=(str(tmp_path / "another-root"),))
    run_pending(site.db, config)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_done"] == 0, out
    assert "outside the allowed roots" in out["error"], out["error"]
    assert everything_below(site.workspace / "elsewhere") == [markers.IN_PROGRESS]


def _race(attempt: Callable[[int, str], bool], windows: tuple[str, ...],
          tries: int = 6) -> dict[str, int]:
    """Run ``attempt(k, window)`` until each window was hit once (it returns whether the swap
    landed while the job was still running), at most ``tries`` times each."""
    hits = {window: 0 for window in windows}
    k = 0
    for window in windows:
        for _ in range(tries):
            k += 1
            if attempt(k, window):
                hits[window] += 1
                break
    return hits


@pytest.fixture
def big(db, tmp_path) -> Site:
    return make_big_site(db, tmp_path / "big", n_files=24, size=128 * 1024)


def test_a_destination_swapped_while_the_worker_runs_leads_nowhere(big, tmp_path):
    """A real worker (with its copy helpers), slowed down; the destination swapped for a
    symlink to a folder outside the roots before the first file, mid-way, and once every file
    is final (before the markers): nothing is ever written outside."""
    worker = start_worker(big.db.url, delay=0.01)
    total = len([n for n in big.names if n.endswith(".uvh5")])

    def attempt(k: int, window: str) -> bool:
        outside = tmp_path / f"outside{k}"
        outside.mkdir()
        dest = big.workspace / f"race{k}"
        job = stage(big, dest.name)
        final = lambda: [p for p in everything_below(dest)  # noqa: E731
                         if p.endswith(".uvh5") and ".hera-tmp" not in p]
        if window == "mid-way":
            wait_for(lambda: len(final()) >= total // 3, timeout=30, step=0.002)
        elif window == "before the markers":
            wait_for(lambda: len(final()) >= total, timeout=30, step=0.001)
        moved = swap_for_symlink(dest, outside)
        out = wait_for(lambda: (j := get_job(big.db, job["id"]))["state"] in FINISHED and j,
                       timeout=60)
        assert everything_below(outside) == [], (window, everything_below(outside))
        finished_before = any((moved / m).exists() for m in (markers.SUCCEEDED, markers.ERRORS))
        if not finished_before:
            assert out["state"] == "failed", (window, out)
        return not finished_before

    try:
        hits = _race(attempt, ("before the first file", "mid-way", "before the markers"))
    finally:
        log = stop_worker(worker)
    assert all(hits.values()), (hits, log[-2000:])


# ----- finding 3: an upload folder swapped after the launch ------------------------------------
@pytest.fixture
def upload_site(db, tmp_path):
    """A store, a home (the only allowed root) and a secret folder outside it."""
    home, store, secret = tmp_path / "home", tmp_path / "store", tmp_path / "secret"
    for folder in (home, store, secret):
        folder.mkdir()
    Catalogue(db).sync_stores({"one": {"path": str(store), "kind": "online"}})

    def launch(directory: Path) -> dict:
        return create_upload_job(db, "tester", str(directory), "*.uvh5", [str(home)],
                                 store="one", manifest=str(home / f"{directory.name}.json"),
                                 log_dir=tmp_path / "logs")

    return home, store, secret, launch


def fill(folder: Path, n: int, content: Callable[[int], bytes], night: int = 2459300) -> None:
    """``n`` files of a night (catalogue names are unique: one night per folder)."""
    folder.mkdir(exist_ok=True)
    for k in range(n):
        (folder / f"zen.{night}.{10000 + k:05d}.xx.HH.uvh5").write_bytes(content(k))


def secret_bytes(k: int) -> bytes:
    return b"SECRET" + bytes([k]) * (64 * 1024)


def assert_nothing_secret(db: Database, store: Path, secret: Path) -> None:
    """No store file holds the secret folder's bytes, none is catalogued with its checksum,
    and the secret folder is as it was (only its files)."""
    sums = {ck.hash_path(p).checksums["md5"] for p in secret.iterdir()}
    for path in store.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"SECRET"), path
    with db.read() as s:
        known = {sums_.get("md5") for sums_ in s.scalars(select(File.checksums))}
    assert not sums & known, "a file from outside the roots was catalogued"
    assert all(p.read_bytes().startswith(b"SECRET") for p in secret.iterdir())


def test_an_upload_folder_swapped_after_the_launch_reads_nothing_outside(db, upload_site):
    home, store, secret, launch = upload_site
    fill(home / "run7", 4, lambda k: b"mine" + bytes([k]) * 100, night=2459400)
    fill(secret, 4, secret_bytes, night=2459400)  # the same names, outside the roots
    job = launch(home / "run7")
    swap_for_symlink(home / "run7", secret)
    run_pending(db, FAST)
    out = get_job(db, job["id"])
    assert out["state"] == "failed" and out["files_done"] == 0, out
    assert "symbolic link" in out["error"] or "replaced" in out["error"], out["error"]
    assert_nothing_secret(db, store, secret)


def test_an_upload_folder_swapped_while_the_worker_runs_reads_nothing_outside(db, upload_site):
    home, store, secret, launch = upload_site
    worker = start_worker(db.url, delay=0.01)

    def attempt(k: int, window: str) -> bool:
        run = home / f"run{k}"
        fill(run, 16, lambda i: bytes([k, i]) * (64 * 1024), night=2459300 + k)
        outside = secret / f"run{k}"  # the same names, outside the roots
        fill(outside, 16, secret_bytes, night=2459300 + k)
        job = launch(run)
        folder = store / run.name
        final = lambda: [p for p in everything_below(folder)  # noqa: E731
                         if ".hera-tmp" not in p]
        if window == "mid-way":
            wait_for(lambda: len(final()) >= 4, timeout=30, step=0.002)
        elif window == "before the markers":
            wait_for(lambda: len(final()) >= 15, timeout=30, step=0.001)
        swap_for_symlink(run, outside)
        hit = get_job(db, job["id"])["state"] not in FINISHED
        wait_for(lambda: get_job(db, job["id"])["state"] in FINISHED, timeout=60)
        assert_nothing_secret(db, store, outside)
        return hit

    try:
        hits = _race(attempt, ("before the first file", "mid-way", "before the markers"))
    finally:
        log = stop_worker(worker)
    assert all(hits.values()), (hits, log[-2000:])


# ----- finding 4: links hand out the archive's inode -------------------------------------------
@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_links_to_store_files_the_user_could_write_are_refused(site, method):
    """The store's files belong to the staging account (as the worker's uid): linking them
    would let the user edit the archive through the staged file. Refused, saying why and what
    to use instead; the archive's bytes are as they were."""
    name = [n for n in site.names if n.endswith(".uvh5")][0]
    before = site.sources[name].read_bytes()
    with pytest.raises(InvalidRequest, match="owned by the staging account"):
        stage(site, f"l-{method}", [name], method=method)  # refused at launch already
    # Given away for the launch, the staging account's again by the time it is moved.
    give_stores_away(site.archive.stores)
    job = stage(site, f"l-{method}", [name], method=method)
    os.chown(site.sources[name], os.geteuid(), os.getegid())
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and out["files_failed"] == 1, out
    assert "reflink" in out["error"] and "copy" in out["error"] and "owned by" in out["error"]
    staged = site.workspace / f"l-{method}" / site.rel[name]
    assert not os.path.lexists(staged)
    assert site.sources[name].read_bytes() == before


@pytest.mark.parametrize("bits, reason", [(0o666, "every account"), (0o664, "its group")])
def test_links_to_store_files_others_may_write_are_refused(site, bits, reason):
    give_stores_away(site.archive.stores)
    name = [n for n in site.names if n.endswith(".uvh5")][0]
    job = stage(site, "grp", [name], method="symlink")  # made writable after the launch
    os.chmod(site.sources[name], bits)
    if reason == "its group":
        os.chown(site.sources[name], 65534, os.getegid())
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and reason in out["error"], out


def test_links_to_another_accounts_read_only_files_are_made(site):
    give_stores_away(site.archive.stores)
    name = [n for n in site.names if n.endswith(".uvh5")][0]
    job = stage(site, "ok", [name], method="hardlink")
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    assert os.path.samefile(site.workspace / "ok" / site.rel[name], site.sources[name])


def test_an_immutable_store_file_may_be_symlinked(site):
    """chattr +i: no ownership or mode lets anyone write it, so a symlink to it is safe."""
    name = [n for n in site.names if n.endswith(".uvh5")][0]
    path = site.sources[name]
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a file system with it)")
    try:
        job = stage(site, "imm", [name], method="symlink")
        run_pending(site.db, FAST)
        assert get_job(site.db, job["id"])["state"] == "succeeded"
        assert os.readlink(site.workspace / "imm" / site.rel[name]) == str(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_the_link_rule() -> None:
    """``link_exposure`` by itself (what the launch check uses too)."""
    from hera_stage_ext.jobs.linkcheck import link_exposure

    def st(uid: int, gid: int, mode: int) -> os.stat_result:
        return os.stat_result((0o100000 | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    assert link_exposure(st(1000, 1000, 0o444), 1000, {1000}) is not None  # owner can chmod
    assert link_exposure(st(0, 1000, 0o664), 1000, {1000}) is not None
    assert link_exposure(st(0, 50, 0o664), 1000, {1000}) is None  # a group the user lacks
    assert link_exposure(st(0, 0, 0o646), 1000, {1000}) is not None
    assert link_exposure(st(0, 0, 0o644), 1000, {1000}) is None
    assert link_exposure(st(1000, 1000, 0o666), 1000, {1000}, immutable=True) is None
