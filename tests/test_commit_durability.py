"""A staging commit puts its files' data on disk the way that is durable where they are.

One ``syncfs`` of the destination's file system through a descriptor opened before the files
were written (it then reports every write-back failure since); an ``fdatasync`` of each file
where that ``syncfs`` would not persist the data (a FUSE mount) or there is no such descriptor
(``hera_stage_ext.durability``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hera_stage_ext import durability, safefs
from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.jobs import methods
from hera_stage_ext.jobs.methods import ItemSpec, Mover, commit


def _sources(tmp_path: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """A store with two files and a data set (a folder of two files), and where each goes."""
    store = tmp_path / "store"
    (store / "set.uvh5").mkdir(parents=True)
    (store / "a.dat").write_bytes(b"a" * 5000)
    (store / "b.dat").write_bytes(b"b" * 300)
    (store / "set.uvh5" / "header").write_bytes(b"h" * 70)
    (store / "set.uvh5" / "data").write_bytes(b"d" * 9000)
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
            "night/set.uvh5/data": b"d" * 9000, "night/set.uvh5/header": b"h" * 70}


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """What the commit asked the kernel: the folders ``syncfs`` was given, the files
    ``fdatasync`` was given (by what their descriptors name)."""
    seen: dict[str, list[str]] = {"syncfs": [], "fdatasync": []}
    real_syncfs, real_fdatasync = methods.sync_file_system, os.fdatasync

    def syncfs(fd: int, what: str) -> None:
        seen["syncfs"].append(os.readlink(f"/proc/self/fd/{fd}"))
        real_syncfs(fd, what)

    def fdatasync(fd: int) -> None:
        seen["fdatasync"].append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    monkeypatch.setattr(methods, "sync_file_system", syncfs)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return seen


def _commit_all(renames: list[tuple[str, str]], root: safefs.Pin, watch: list[int]) -> None:
    """Commit ``renames`` (each made final), then close ``watch``."""
    try:
        assert commit(renames, True, [root], watch=watch) == [None] * len(renames)
    finally:
        for fd in watch:
            os.close(fd)


def _pinned(tmp_path: Path) -> safefs.Pin:
    (tmp_path / "dest").mkdir()
    st = os.stat(tmp_path / "dest")
    return safefs.Pin(str(tmp_path / "dest"), st.st_dev, st.st_ino)


def test_a_commit_syncs_through_the_destination_opened_before_the_writes(
        tmp_path: Path, synced: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durability, "file_system_type", lambda fd: "ext4")
    root = _pinned(tmp_path)
    mover = Mover(deferred=True, temp_folders=True, root=root)
    watch = mover.watch()
    assert [os.readlink(f"/proc/self/fd/{fd}") for fd in watch] == [root.path]
    renames = _write(tmp_path, mover)
    mover.close_temp_folders()
    _commit_all(renames, root, watch)
    assert _staged(tmp_path) == EXPECTED
    # One syncfs, through the descriptor opened before anything was written; no file alone.
    assert synced == {"syncfs": [root.path], "fdatasync": []}


@pytest.mark.parametrize("case", ["fuse", "no descriptor from before"])
def test_a_commit_syncs_each_file_where_one_syncfs_would_not_do(
        tmp_path: Path, synced: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch,
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
    assert sorted(synced["fdatasync"]) == written and len(written) == 4


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
                                                     synced: dict[str, list[str]]) -> None:
    """A written symlink (the ``symlink`` method's) holds no data to sync: the file it points
    to, maybe another user's, is not opened."""
    (tmp_path / "target").write_bytes(b"not ours to open")
    os.symlink(tmp_path / "target", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        methods._sync_written(fd, "link", str(tmp_path / "link"))
    finally:
        os.close(fd)
    assert synced["fdatasync"] == []
