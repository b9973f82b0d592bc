"""How the receiver makes a batch of small files final (``transfer/durable.py``): its files
synced (with one ``syncfs`` on a quiet machine, each by the syncer's threads on a busy one) and
closed, renamed into place never over an existing file nor through a symlinked folder, and no
descriptor left open whatever happens to the batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hera_stage_ext.safefs import PathChanged
from hera_stage_ext import durability
from hera_stage_ext.transfer import durable
from hera_stage_ext.transfer.durable import FileSyncer, Rename, make_final


@pytest.fixture
def syncer():
    syncer = FileSyncer(threads=2, max_open=4)
    yield syncer
    syncer.close()


def _written(folder: Path, name: str, data: bytes) -> int:
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    return fd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_batch_lands_in_new_folders_and_never_over_an_existing_file(tmp_path, syncer):
    root, incoming = tmp_path / "store", tmp_path / "store" / "incoming"
    incoming.mkdir(parents=True)
    (root / "night" / "b").mkdir(parents=True)
    (root / "night" / "b" / "taken.uvh5").write_bytes(b"someone else's")
    fds = []
    with syncer.batch() as syncs:
        # More files than the syncer may hold open: adding waits for slots, never fails.
        for i in range(10):
            fd = _written(incoming, f"{i}.part", b"x" * i)
            fds.append(fd)
            syncs.add(fd, f"{i}.part")
        assert syncs.wait() == {}
    assert not any(_is_open(fd) for fd in fds)
    renames = [Rename(f"{i}.part", f"{root}/night/a/deep/{i}.uvh5") for i in range(9)]
    renames.append(Rename("9.part", f"{root}/night/b/taken.uvh5"))
    in_fd = os.open(incoming, os.O_RDONLY)
    try:
        errors = make_final(str(root), in_fd, renames, syncer)
    finally:
        os.close(in_fd)
    assert errors[:9] == [None] * 9
    assert isinstance(errors[9], FileExistsError)
    assert [(root / "night" / "a" / "deep" / f"{i}.uvh5").read_bytes() for i in range(9)] == \
        [b"x" * i for i in range(9)]
    assert (root / "night" / "b" / "taken.uvh5").read_bytes() == b"someone else's"
    assert sorted(os.listdir(incoming)) == ["9.part"]  # for the caller to pull alone


def test_a_symlinked_destination_folder_is_refused(tmp_path, syncer):
    root, incoming, elsewhere = tmp_path / "store", tmp_path / "store" / "in", tmp_path / "out"
    incoming.mkdir(parents=True)
    elsewhere.mkdir()
    (root / "night").symlink_to(elsewhere)
    (incoming / "1.part").write_bytes(b"data")
    in_fd = os.open(incoming, os.O_RDONLY)
    try:
        errors = make_final(str(root), in_fd, [Rename("1.part", f"{root}/night/f.uvh5")],
                            syncer)
    finally:
        os.close(in_fd)
    assert isinstance(errors[0], PathChanged)
    assert os.listdir(elsewhere) == []
    assert (incoming / "1.part").exists()


def test_a_failed_sync_is_reported_and_every_descriptor_closed(tmp_path, syncer):
    read_end, write_end = os.pipe()  # a pipe cannot be synced: EINVAL
    good = _written(tmp_path, "good.part", b"data")
    with syncer.batch() as syncs:
        syncs.add(read_end, "pipe")
        syncs.add(good, "good.part")
        failed = syncs.wait()
    assert list(failed) == ["pipe"] and isinstance(failed["pipe"], OSError)
    assert not _is_open(read_end) and not _is_open(good)
    os.close(write_end)


def test_an_abandoned_batch_still_closes_what_it_was_given(tmp_path, syncer):
    fds = []
    with pytest.raises(RuntimeError):
        with syncer.batch() as syncs:
            for i in range(3):
                fds.append(_written(tmp_path, f"{i}.part", b"data"))
                syncs.add(fds[-1], f"{i}.part")
            raise RuntimeError("the stream broke")
    assert not any(_is_open(fd) for fd in fds)


@pytest.fixture
def quiet(monkeypatch):
    """A machine with no unwritten data, where ``syncfs`` reports failed write-backs: a
    batch is synced with one ``syncfs``."""
    if not durability.SYNCFS_REPORTS_ERRORS:
        pytest.skip("syncfs reports write-back errors from Linux 5.8 on")
    monkeypatch.setattr(durable, "unwritten_bytes", lambda: 0)
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "ext4")


@pytest.fixture
def counted(monkeypatch, syncer):
    """The file-system syncs (the folder each was given) and the groups of files handed to the
    syncer's threads, counted as they happen (each still done)."""
    syncs: list[int] = []
    groups: list[int] = []
    sync_file_system, submit = durable.sync_file_system, syncer.submit

    def counted_sync(fd: int, what: str) -> None:
        syncs.append(fd)
        sync_file_system(fd, what)

    def counted_submit(group):
        groups.append(len(group))
        return submit(group)

    monkeypatch.setattr(durable, "sync_file_system", counted_sync)
    monkeypatch.setattr(syncer, "submit", counted_submit)
    return syncs, groups


def test_a_batch_on_a_quiet_machine_is_synced_once_whole(tmp_path, syncer, counted, quiet):
    syncs, groups = counted
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        with syncer.batch(folder) as batch:
            for i in range(12):  # more than the syncer holds open file by file (4)
                fd = _written(tmp_path, f"{i}.part", b"x" * i)
                batch.add(fd, f"{i}.part")
                assert not _is_open(fd)  # closed at once: nothing held until the sync
            assert syncs == []
            assert batch.wait() == {}
            assert syncs == [folder]  # one sync of the file system for the twelve files
        assert syncs == [folder] and groups == []  # none synced file by file
    finally:
        os.close(folder)


def test_a_batch_on_a_busy_machine_is_synced_file_by_file(tmp_path, syncer, counted,
                                                          monkeypatch):
    """Where much unwritten data waits (other writers'), a ``syncfs`` would write it too."""
    monkeypatch.setattr(durable, "unwritten_bytes", lambda: durable.QUIET_BYTES + 1)
    syncs, groups = counted
    folder = os.open(tmp_path, os.O_RDONLY)
    fds = []
    try:
        with syncer.batch(folder) as batch:
            for i in range(12):
                fds.append(_written(tmp_path, f"{i}.part", b"x" * i))
                batch.add(fds[-1], f"{i}.part")
            assert batch.wait() == {}
    finally:
        os.close(folder)
    assert syncs == [] and sum(groups) == 12
    assert not any(_is_open(fd) for fd in fds)


def test_a_failed_file_system_sync_fails_every_file_of_its_batch(tmp_path, syncer, quiet,
                                                                 monkeypatch):
    """...and the batches after it are synced file by file for a while (the error may be
    another writer's: a batch failed whole again would cost each of its files an attempt)."""
    def failing(fd: int, what: str) -> None:
        raise OSError(5, "Input/output error", what)

    monkeypatch.setattr(durable, "sync_file_system", failing)
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        with syncer.batch(folder) as batch:
            for i in range(3):
                batch.add(_written(tmp_path, f"{i}.part", b"data"), f"{i}.part")
            failed = batch.wait()
        with syncer.batch(folder) as after:
            assert after.folder is None  # file by file
            after.add(_written(tmp_path, "again.part", b"data"), "again.part")
            assert after.wait() == {}
        syncer.whole_failed_at -= durable.WHOLE_PAUSE_S
        assert syncer.batch(folder).folder == folder  # whole again, once the pause is over
    finally:
        os.close(folder)
    assert sorted(failed) == ["0.part", "1.part", "2.part"]
    assert all(isinstance(error, OSError) and error.errno == 5 for error in failed.values())


def test_an_abandoned_quiet_batch_closes_its_files_and_syncs_nothing(tmp_path, syncer, counted,
                                                                     quiet):
    syncs, _groups = counted
    fds = []
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(RuntimeError):
            with syncer.batch(folder) as batch:
                for i in range(3):
                    fds.append(_written(tmp_path, f"{i}.part", b"data"))
                    batch.add(fds[-1], f"{i}.part")
                raise RuntimeError("the stream broke")
    finally:
        os.close(folder)
    assert not any(_is_open(fd) for fd in fds) and syncs == []


def test_the_machines_unwritten_bytes_are_read() -> None:
    """``/proc/meminfo``'s Dirty and Writeback, read as bytes (a number, not the fallback)."""
    assert 0 <= durable.unwritten_bytes() < 1 << 50


def test_a_batch_on_a_fuse_store_is_synced_file_by_file(tmp_path, syncer, quiet, monkeypatch):
    """A FUSE mount's ``syncfs`` does not ask its program to persist the data: file by file
    there, even on a quiet machine."""
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "fuse.sshfs")
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        assert syncer.batch(folder).folder is None
    finally:
        os.close(folder)


def test_the_file_system_type_is_read() -> None:
    """The type of a folder's file system, as the mount table names it."""
    folder = os.open("/proc", os.O_RDONLY)
    try:
        assert durability.file_system_type(folder) == "proc"
    finally:
        os.close(folder)


def test_a_folder_confined_once_then_swapped_for_a_link_is_never_followed(tmp_path):
    """A receiver confines each destination folder that is itself once (not every batch):
    one swapped for a link out of the store afterwards is refused by the renames, which
    follow no link, so nothing lands outside; one reached through a link is confined each
    time (its link may change), and one leading out is refused at once."""
    from hera_stage_ext.catalogue.catalogue import Catalogue
    from hera_stage_ext.catalogue.db import Database
    from hera_stage_ext.errors import Forbidden
    from hera_stage_ext.transfer.peers import PeerRegistry
    from hera_stage_ext.transfer.receiver import Receiver

    store, outside = tmp_path / "store", tmp_path / "outside"
    (store / "in").mkdir(parents=True)
    (store / "a").mkdir()
    outside.mkdir()
    db = Database(f"sqlite:///{tmp_path / 'b.sqlite'}")
    db.upgrade()
    receiver = Receiver(Catalogue(db), PeerRegistry("site-b"), "s")
    try:
        receiver.catalogue.sync_stores({"s": {"path": str(store)}})
        root = receiver._store_root()
        assert receiver._confine_folder(root, "night/1") == f"{root}/night/1"
        # A link inside the store: resolved, and looked at again next time.
        (store / "link").symlink_to(store / "a")
        assert receiver._confine_folder(root, "link") == f"{root}/a"
        (store / "b").mkdir()
        (store / "link").unlink()
        (store / "link").symlink_to(store / "b")
        assert receiver._confine_folder(root, "link") == f"{root}/b"
        (store / "out").symlink_to(outside)
        with pytest.raises(Forbidden):
            receiver._confine_folder(root, "out")
        # The folder confined first is swapped for a link out of the store: the path
        # remembered is refused where the file is renamed, never followed.
        (store / "night").mkdir()
        (store / "night" / "1").symlink_to(outside)
        dest = receiver._confine_folder(root, "night/1")
        (store / "in" / "1.part").write_bytes(b"data")
        in_fd = os.open(store / "in", os.O_RDONLY)
        try:
            errors = make_final(str(root), in_fd, [Rename("1.part", f"{dest}/f.uvh5")], None)
        finally:
            os.close(in_fd)
        assert isinstance(errors[0], PathChanged)
        assert os.listdir(outside) == []
    finally:
        receiver.close()
        db.dispose()
