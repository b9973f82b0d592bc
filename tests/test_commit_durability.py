"""A staging commit puts its files' data on disk the way that is durable where they are.

One ``syncfs`` of the destination's file system through a descriptor opened before the files
were written (it then reports every write-back failure since); an ``fdatasync`` of each file
where that ``syncfs`` would not persist the data (a FUSE mount) or there is no such descriptor
(``hera_stage_ext.durability``).
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext import durability, safefs
from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.durability import Watch
from hera_stage_ext.jobs import copy_pool, create_stage_job
from hera_stage_ext.jobs.copy_pool import HandOver
from hera_stage_ext.jobs.methods import ItemSpec, Mover, Outcome, commit
from hera_stage_ext.jobs.recorded import record_stage_job
from hera_stage_ext.jobs.run import EngineConfig, run_pending
from hera_stage_ext.standard_kinds import standard_kinds

from .job_fixtures import make_site


def _sources(tmp_path: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """A store with two files and a data set (a folder of two files and a folder of one),
    and where each goes."""
    store = tmp_path / "store"
    (store / "set.uvh5" / "sub").mkdir(parents=True, exist_ok=True)
    (store / "a.dat").write_bytes(b"a" * 5000)
    (store / "b.dat").write_bytes(b"b" * 300)
    (store / "set.uvh5" / "header").write_bytes(b"h" * 70)
    (store / "set.uvh5" / "data").write_bytes(b"d" * 9000)
    (store / "set.uvh5" / "sub" / "flags").write_bytes(b"f" * 10)
    return store, [(store / "a.dat", "night/a.dat"), (store / "b.dat", "b.dat"),
                   (store / "set.uvh5", "night/set.uvh5")]


def _write(tmp_path: Path, mover: Mover) -> list[tuple[str, str]]:
    store, items = _sources(tmp_path)
    renames = []
    for source, rel in items:
        digest = ck.hash_path(source)
        outcome = mover.move(ItemSpec(source, tmp_path / "dest" / rel, digest.size,
                                      source.is_dir(), digest.checksums, "copy"))
        assert outcome.state == "done" and outcome.tmp and outcome.final
        renames.append((outcome.tmp, outcome.final))
    return renames


def _staged(tmp_path: Path) -> dict[str, bytes]:
    dest = tmp_path / "dest"
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*"))
            if p.is_file()}


EXPECTED = {"b.dat": b"b" * 300, "night/a.dat": b"a" * 5000,
            "night/set.uvh5/data": b"d" * 9000, "night/set.uvh5/header": b"h" * 70,
            "night/set.uvh5/sub/flags": b"f" * 10}


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """What the commit asked the kernel: the folders ``syncfs`` was given (by what their
    descriptors name) and the descriptors themselves, the files ``fdatasync`` was given. The
    kernel's ``syncfs`` taken as reporting failed write-backs (Linux 5.8 on)."""
    seen: dict[str, list[Any]] = {"syncfs": [], "syncfs_fds": [], "fdatasync": []}
    real_syncfs, real_fdatasync = durability.sync_file_system, os.fdatasync
    monkeypatch.setattr(durability, "SYNCFS_REPORTS_ERRORS", True)

    def syncfs(fd: int, what: str) -> None:
        seen["syncfs"].append(os.readlink(f"/proc/self/fd/{fd}"))
        seen["syncfs_fds"].append(fd)
        real_syncfs(fd, what)

    def fdatasync(fd: int) -> None:
        seen["fdatasync"].append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    monkeypatch.setattr(durability, "sync_file_system", syncfs)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return seen


def _commit_all(renames: list[tuple[str, str]], root: safefs.Pin, watch: list[Watch]) -> None:
    """Commit ``renames`` (each made final), then close ``watch``."""
    try:
        assert commit(renames, True, [root], watch=watch) == [None] * len(renames)
    finally:
        for watcher in watch:
            watcher.close()


def _pinned(tmp_path: Path) -> safefs.Pin:
    (tmp_path / "dest").mkdir()
    st = os.stat(tmp_path / "dest")
    return safefs.Pin(str(tmp_path / "dest"), st.st_dev, st.st_ino)


def test_a_commit_syncs_through_the_destination_opened_before_the_writes(
        tmp_path: Path, synced: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "ext4")
    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    watch = mover.watch()
    assert [os.readlink(f"/proc/self/fd/{w.fd}") for w in watch] == [root.path]
    renames = _write(tmp_path, mover)
    mover.close_temp_folders()
    fds = [w.fd for w in watch]
    _commit_all(renames, root, watch)
    assert _staged(tmp_path) == EXPECTED
    # One syncfs, through the descriptor opened before anything was written; no file alone.
    assert synced == {"syncfs": [root.path], "syncfs_fds": fds, "fdatasync": []}


def test_each_watch_is_an_open_file_description_of_its_own(tmp_path: Path) -> None:
    """``syncfs`` reports a failed write-back once per open file description: two batches'
    watches sharing one (a ``dup``) would let the second batch's files take their names after
    the first's ``syncfs`` had reported, and spent, the failure of the second's data."""
    mover = Mover(deferred=True, temp_folders=True, root=_pinned(tmp_path))
    first, second = mover.watch(), mover.watch()
    try:
        flags = fcntl.fcntl(first[0].fd, fcntl.F_GETFL)
        fcntl.fcntl(first[0].fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        assert not fcntl.fcntl(second[0].fd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        for watcher in first + second:
            watcher.close()


def test_after_a_failed_syncfs_its_watch_syncs_each_file(
        tmp_path: Path, synced: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's watch whose ``syncfs`` reported a failure reports it no more: the batch that
    failed names nothing, and the next batch is synced file by file."""
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "ext4")

    def failing(fd: int, what: str) -> None:
        raise OSError(5, "Input/output error", what)

    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    [watcher] = mover.watch()
    try:
        monkeypatch.setattr(durability, "sync_file_system", failing)
        renames = _write(tmp_path, mover)
        mover.close_temp_folders()
        errors = commit(renames, True, [root], watch=[watcher])
        assert [getattr(e, "errno", None) for e in errors] == [5, 5, 5] and watcher.spent
        assert _staged(tmp_path) == {}
        mover.forget_folders()
        renames = _write(tmp_path, mover)
        mover.close_temp_folders()
        assert commit(renames, True, [root], watch=[watcher]) == [None] * 3
    finally:
        watcher.close()
    assert _staged(tmp_path) == EXPECTED
    assert len(synced["fdatasync"]) == 5


def test_a_fifo_in_a_files_place_does_not_hold_the_commit(tmp_path: Path) -> None:
    """The destination's owner may put a FIFO where a written file was: syncing it file by
    file neither waits on it nor fails."""
    os.mkfifo(tmp_path / "f")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    done = threading.Event()

    def sync() -> None:
        durability.sync_written(fd, "f", str(tmp_path / "f"))
        done.set()

    try:
        threading.Thread(target=sync, daemon=True).start()
        assert done.wait(10)
    finally:
        os.close(fd)


@pytest.mark.parametrize("recorded", [False, True], ids=["launched", "recorded by a site"])
def test_an_engine_run_syncs_through_its_destination_opened_before_it_wrote(
        tmp_path: Path, database: Any, synced: dict[str, list[Any]],
        monkeypatch: pytest.MonkeyPatch, recorded: bool) -> None:
    """A job's items moved by the worker itself (no copy helpers) are made durable through the
    destination as the run opened it before its first file was written; a site's job too,
    whose folder the worker takes (and pins) only when its run begins."""
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "ext4")
    site = make_site(database, tmp_path / "site")
    dest = site.workspace / "work"
    watches: list[tuple[int, list[Path]]] = []  # (descriptor, staged files when opened)
    real_init = Watch.__init__

    def opened(self: Watch, folder_fd: int) -> None:
        real_init(self, folder_fd)
        watches.append((self.fd, [p for p in dest.rglob("*")
                                  if p.is_file() and not p.name.startswith("STAGING-")]))

    monkeypatch.setattr(Watch, "__init__", opened)
    if recorded:
        job = record_stage_job(site.db, "alice", site.names, str(dest), "copy",
                               log_dir=site.logs)
    else:
        job = create_stage_job(site.db, "alice", site.names, "work", "copy", site.roots,
                               log_dir=site.logs)
    config = EngineConfig(kinds=standard_kinds(), streams=2, heartbeat_seconds=0.2,
                          allowed_roots=(str(site.workspace),))
    assert run_pending(site.db, config) == [job["id"]]
    assert len(watches) == 1 and watches[0][1] == []
    assert synced["syncfs_fds"] and set(synced["syncfs_fds"]) == {watches[0][0]}
    assert len([p for p in dest.rglob("*") if p.is_file()]) >= len(site.names)


@pytest.mark.parametrize("case", ["fuse", "no descriptor from before"])
def test_a_commit_syncs_each_file_where_one_syncfs_would_not_do(
        tmp_path: Path, synced: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    """On a FUSE mount ``syncfs`` does not ask the file system's program to persist anything;
    with no descriptor opened before the writes, it may miss a failed write-back. Then every
    file written (those of a data set too) is synced by itself before any takes its name."""
    monkeypatch.setattr(durability, "file_system_type",
                        lambda fd: "fuse.sshfs" if case == "fuse" else "ext4")
    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    watch = mover.watch() if case == "fuse" else []
    renames = _write(tmp_path, mover)
    mover.close_temp_folders()
    written = sorted(p for tmp, _final in renames
                     for p in ([tmp] if os.path.isfile(tmp) else
                               [str(f) for f in Path(tmp).rglob("*") if f.is_file()]))
    _commit_all(renames, root, watch)
    assert _staged(tmp_path) == EXPECTED
    assert synced["syncfs"] == []
    assert sorted(synced["fdatasync"]) == written and len(written) == 5


def test_a_failed_file_sync_fails_the_batch_and_names_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose data cannot be put on disk stops the whole batch before any rename, as a
    failed ``syncfs`` does: nothing takes a final name, no temporary file is left."""
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "fuse.sshfs")

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    renames = _write(tmp_path, mover)
    mover.close_temp_folders()
    monkeypatch.setattr(os, "fdatasync", failing)
    errors = commit(renames, True, [root])
    assert [getattr(e, "errno", None) for e in errors] == [5, 5, 5]
    assert _staged(tmp_path) == {}
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == []


def test_a_symlink_is_not_followed_when_synced_alone(tmp_path: Path,
                                                     synced: dict[str, list[Any]]) -> None:
    """A written symlink (the ``symlink`` method's) holds no data to sync: the file it points
    to, maybe another user's, is not opened."""
    (tmp_path / "target").write_bytes(b"not ours to open")
    os.symlink(tmp_path / "target", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        durability.sync_written(fd, "link", str(tmp_path / "link"))
    finally:
        os.close(fd)
    assert synced["fdatasync"] == []


def test_a_data_set_folder_that_cannot_be_opened_fails_the_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synced file by file, a data set whose folder (or one below it) cannot be opened (out of
    descriptors, no permission) is not renamed into place with part of it unsynced: the
    batch fails, nothing takes a final name."""
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "fuse.sshfs")
    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    renames = _write(tmp_path, mover)
    mover.close_temp_folders()
    real_open = os.open
    refused: list[Any] = []

    def refusing(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if path in ("sub", b"sub") and not refused:  # once: the clean-up opens it again
            refused.append(path)
            raise OSError(24, "Too many open files")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing)
    errors = commit(renames, True, [root])
    monkeypatch.setattr(os, "open", real_open)
    assert refused and [getattr(e, "errno", None) for e in errors] == [24, 24, 24]
    assert _staged(tmp_path) == {}


class _Replies:
    """A helper's end of its pipe, as ``copy_pool._finish`` uses it: what it sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), RuntimeError("bug")],
                         ids=["disk", "bug"])
def test_a_helper_whose_commit_raises_answers_its_streams(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    """A commit that raises (the folders' sync after the renames failed, a bug) still answers
    each hand-over once, every renamed item with the error (so none is recorded done), the
    others as they were; its watches are closed."""
    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    watch = mover.watch()
    renames = _write(tmp_path, mover)
    mover.close_temp_folders()

    def raising(*_args: Any, **_kw: Any) -> list[Any]:
        raise failure

    monkeypatch.setattr(copy_pool, "commit", raising)
    specs = [ItemSpec("s", final, 1, False, {}, "copy") for _tmp, final in renames]
    hand = HandOver("run", str(tmp_path / "log"), True, specs, ["a", "b", "c"], root)
    skipped = Outcome("skipped", "same file", renames[2][1], renames[2][1])
    results: list[Any] = [None, None, skipped]
    jobs: queue.Queue[Any] = queue.Queue()
    jobs.put((7, hand, results, [(0, *renames[0], ""), (1, *renames[1], "")], watch))
    jobs.put(None)
    replies = _Replies()
    copy_pool._finish(replies, jobs, threading.Lock())  # type: ignore[arg-type]
    [(request, answered)] = replies.sent
    assert request == 7 and answered[2] is skipped
    if isinstance(failure, OSError):
        assert answered[0] is failure and answered[1] is failure
    else:
        assert all("internal error" in str(r) for r in answered[:2])
    with pytest.raises(OSError):
        os.fstat(watch[0].fd)  # closed


@pytest.mark.parametrize("exists", [False, True], ids=["made by the job", "there already"])
def test_a_destination_the_job_made_has_its_entry_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool) -> None:
    """The commits sync the folders below a job's destination, not the folder holding it: a
    destination the job made has its own entry put on disk when the job takes it (else a
    power cut could take the folder, and every file recorded staged in it, back)."""
    from hera_stage_ext.jobs.targets import LocalTarget

    dest = tmp_path / "parent" / "dest"
    dest.parent.mkdir()
    if exists:
        dest.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = LocalTarget(dest)
    target.acquire(1, "alice", lambda job_id: False)
    assert target.made is not exists and dest.is_dir()
    assert (str(dest.parent) in synced) is not exists, synced


@pytest.mark.parametrize("fails", [False, True], ids=["synced", "syncfs failed"])
def test_a_helper_syncs_each_hand_over_through_a_watch_opened_before_its_first_file(
        tmp_path: Path, synced: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch,
        fails: bool) -> None:
    """A copy helper (its loop run here in a thread, over a pipe as the pool's) makes each
    hand-over durable with one ``syncfs`` through the destination opened before the
    hand-over's first file was written. A failed ``syncfs`` spends that watch and fails every
    item of the hand-over with the error (none takes its final name, so none is recorded)."""
    import ctypes
    import multiprocessing as mp

    monkeypatch.setattr(durability, "file_system_type", lambda fd: "ext4")
    dest = tmp_path / "dest"
    watches: list[tuple[Watch, list[Path]]] = []  # each watch, and the files there then
    real_init = Watch.__init__

    def opened(self: Watch, folder_fd: int) -> None:
        real_init(self, folder_fd)
        watches.append((self, [p for p in dest.rglob("*") if p.is_file()]))

    monkeypatch.setattr(Watch, "__init__", opened)
    if fails:
        def failing(fd: int, what: str) -> None:
            synced["syncfs_fds"].append(fd)
            raise OSError(5, "Input/output error", what)

        monkeypatch.setattr(durability, "sync_file_system", failing)
    root = _pinned(tmp_path)
    _store, items = _sources(tmp_path)
    specs = []
    for source, rel in items:
        digest = ck.hash_path(source)
        specs.append(ItemSpec(str(source), str(dest / rel), digest.size, source.is_dir(),
                              digest.checksums, "copy"))
    hand = HandOver("run", str(tmp_path / "log"), True, specs, [rel for _s, rel in items], root)
    ours, theirs = mp.Pipe()
    stops = (ctypes.c_longlong * copy_pool.DEPTH)()
    helper = threading.Thread(target=copy_pool._write_hand_overs,
                              args=(theirs, stops, 1 << 20, 0.0), daemon=True)
    helper.start()
    try:
        ours.send((1, 0, hand))
        while True:
            assert ours.poll(30), "the helper did not answer"
            request, results = ours.recv()
            if not isinstance(results, int):  # (else bytes written so far)
                break
    finally:
        ours.send(None)
        helper.join(30)
        ours.close()
        theirs.close()
    assert request == 1 and not helper.is_alive()
    [(watch, there)] = watches
    assert there == []  # opened before the hand-over's first file
    assert synced["syncfs_fds"] == [watch.fd] and synced["fdatasync"] == []
    if fails:
        assert watch.spent
        assert [getattr(r, "errno", None) for r in results] == [5, 5, 5], results
        assert _staged(tmp_path) == {}
    else:
        assert results == [None, None, None] and not watch.spent
        assert _staged(tmp_path) == EXPECTED
