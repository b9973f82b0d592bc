"""A link of one file is made straight under its final name (no temporary name, no rename), and
what that changes for a batch's commit; ``safefs.sync_folders``, the one folder-sync rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hera_stage_ext import safefs
from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.jobs.methods import ItemFailed, ItemSpec, Mover, commit
from hera_stage_ext.states import ItemState

from .job_fixtures import ARCHIVE_GID, ARCHIVE_UID


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two read-only files of another account (a site's archive: they may be linked)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: handing the store's files to another account (chown)")
    root = tmp_path / "store"
    (root / "night").mkdir(parents=True)
    for name, data in (("a.uvh5", b"first file" * 50), ("b.uvh5", b"second file" * 70)):
        path = root / "night" / name
        path.write_bytes(data)
        path.chmod(0o444)
        os.chown(path, ARCHIVE_UID, ARCHIVE_GID)
    return root


def spec(store: Path, dest: Path, name: str, method: str) -> ItemSpec:
    source = store / "night" / name
    digest = ck.hash_path(source)
    return ItemSpec(str(source), str(dest / "night" / name), digest.size, False,
                    digest.checksums, method, True, str(store))


def entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_a_link_goes_straight_under_its_final_name(store: Path, tmp_path: Path,
                                                   method: str) -> None:
    """Into an existing folder: the link is under its final name when ``move`` returns (no
    temporary name ever), the commit renames nothing and succeeds; moved again (a resumed
    job), the same link is skipped, not made twice."""
    dest = tmp_path / "dest"
    (dest / "night").mkdir(parents=True)
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    pin = safefs.pin_of(str(dest), fd)
    os.close(fd)
    mover = Mover(deferred=True, temp_folders=True, root=pin)
    item = spec(store, dest, "a.uvh5", method)
    outcome = mover.move(item)
    assert outcome.state == ItemState.DONE and outcome.tmp == outcome.final == item.final
    assert entries(dest / "night") == ["a.uvh5"]  # no temporary name beside it
    assert commit([(outcome.tmp, outcome.final)], True, [pin], data=method != "hardlink") \
        == [None]
    final = Path(item.final)
    if method == "hardlink":
        assert os.path.samefile(final, item.source)
    else:
        assert os.readlink(final) == item.source
    again = Mover(deferred=True, root=pin).move(item)
    assert again.state == ItemState.SKIPPED and again.note == "already linked"
    assert entries(dest / "night") == ["a.uvh5"]


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_a_link_never_replaces_what_is_at_its_final_name(store: Path, tmp_path: Path,
                                                         method: str) -> None:
    """Another file under the final name: the item fails, the file keeps its bytes."""
    dest = tmp_path / "dest"
    (dest / "night").mkdir(parents=True)
    (dest / "night" / "a.uvh5").write_bytes(b"somebody else's")
    item = spec(store, dest, "a.uvh5", method)
    with pytest.raises(ItemFailed, match="not overwritten"):
        Mover(deferred=True).move(item)
    assert (dest / "night" / "a.uvh5").read_bytes() == b"somebody else's"
    assert entries(dest / "night") == ["a.uvh5"]


def test_a_corrupt_source_is_never_linked(store: Path, tmp_path: Path) -> None:
    """Verified before it is linked: a source whose bytes differ from the catalogue's leaves
    nothing under the final name."""
    dest = tmp_path / "dest"
    (dest / "night").mkdir(parents=True)
    item = spec(store, dest, "a.uvh5", "hardlink")._replace(
        checksums={ck.XXH3_128: "0" * 32})
    with pytest.raises(ItemFailed, match="checksum mismatch"):
        Mover(deferred=True).move(item)
    assert entries(dest / "night") == []


def test_sync_folders_refuses_a_folder_swapped_for_a_symlink(tmp_path: Path) -> None:
    """The folders to sync are opened below the root without following a symlink: one swapped
    for a link leading out is refused (PathChanged), nothing outside is opened."""
    root = tmp_path / "dest"
    (root / "night").mkdir(parents=True)
    safefs.sync_folders([str(root / "night")], [str(root)])  # the normal case
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "night").rmdir()
    (root / "night").symlink_to(outside)
    with pytest.raises(safefs.PathChanged):
        safefs.sync_folders([str(root / "night")], [str(root)])


def _two_files_and_an_outside_copy(store: Path, tmp_path: Path, method: str
                                   ) -> tuple[list[ItemSpec], Path]:
    """The specs of ``night/a.uvh5`` and ``night/b.uvh5`` into a fresh destination, and a folder
    outside the store holding the same bytes as ``b.uvh5`` (owned as the store's files are)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.uvh5").write_bytes((store / "night" / "b.uvh5").read_bytes())
    (outside / "b.uvh5").chmod(0o444)
    os.chown(outside / "b.uvh5", ARCHIVE_UID, ARCHIVE_GID)
    return [spec(store, dest, name, method) for name in ("a.uvh5", "b.uvh5")], outside


@pytest.mark.parametrize("method", ["copy", "hardlink", "symlink"])
def test_a_store_folder_swapped_for_a_link_out_of_the_store_is_not_read(
        store: Path, tmp_path: Path, method: str) -> None:
    """A source is opened below its folder, opened and checked once: when the store's folder
    is replaced after a first file by a symlink to a folder outside the store holding the
    same bytes, the next file is refused (the folder is checked again), never read or linked
    through the link."""
    items, outside = _two_files_and_an_outside_copy(store, tmp_path, method)
    mover = Mover(deferred=True, temp_folders=True)
    assert mover.move(items[0]).state == ItemState.DONE
    safefs.remove_path(str(store / "night"))
    (store / "night").symlink_to(outside)
    with pytest.raises(ItemFailed, match="leads outside the store"):
        mover.move(items[1])
    mover.close()


@pytest.mark.parametrize("method", ["copy", "hardlink", "symlink"])
def test_a_checked_folder_moved_aside_and_a_link_out_in_its_place_is_not_read(
        store: Path, tmp_path: Path, method: str) -> None:
    """The folder checked after a first file is renamed (it stays inside the store), its next
    file is made a symlink and the folder's old name a symlink to a folder outside the store
    holding that file's bytes: the file is refused (what was opened, not its path, is checked),
    nothing outside is read or linked, nothing is left under a final or temporary name."""
    items, outside = _two_files_and_an_outside_copy(store, tmp_path, method)
    mover = Mover(deferred=True, temp_folders=True)
    first = mover.move(items[0])
    assert first.state == ItemState.DONE
    (store / "night").rename(store / "night.old")
    (store / "night.old" / "b.uvh5").unlink()
    (store / "night.old" / "b.uvh5").symlink_to("a.uvh5")
    (store / "night").symlink_to(outside)
    with pytest.raises(ItemFailed, match="leads outside the store"):
        mover.move(items[1])
    mover.close()
    assert first.tmp is not None
    assert sorted(os.listdir(Path(first.tmp).parent)) == ["a.uvh5"]
    if method == "copy":  # in its temporary folder, not committed: no final folder yet
        assert not (tmp_path / "dest" / "night").exists()
    else:  # a link is whole: straight under its final name, alone (nothing of the refused)
        assert first.tmp == first.final
        assert entries(tmp_path / "dest" / "night") == ["a.uvh5"]


@pytest.mark.parametrize("method", ["copy", "hardlink", "symlink"])
@pytest.mark.parametrize("absolute", [False, True])
def test_a_source_that_is_a_symlink_inside_its_store_is_staged(
        store: Path, tmp_path: Path, method: str, absolute: bool) -> None:
    """A catalogued instance that is itself a symlink to another file of its store (relative
    or absolute) is followed: first of its folder and after a first file."""
    dest = tmp_path / "dest"
    dest.mkdir()
    target = store / "night" / "b.uvh5"
    (store / "night" / "c.uvh5").symlink_to(target if absolute else "b.uvh5")
    assert Path(spec(store, dest, "c.uvh5", method).source).resolve() == target
    mover = Mover(deferred=True, temp_folders=True)
    for k, name in enumerate(("c.uvh5", "a.uvh5", "c.uvh5")):
        item = spec(store, dest, name, method)
        if name == "c.uvh5":
            mover.close_temp_folders()  # a new temporary folder: no clash with the first c
        outcome = mover.move(item)
        if k == 2 and method != "copy":  # a link is made in place: the second c finds it
            assert outcome.state == ItemState.SKIPPED and outcome.note == "already linked"
            outcome = outcome._replace(tmp=item.final)
        else:
            assert outcome.state == ItemState.DONE and outcome.tmp is not None
        made, real = Path(outcome.tmp), Path(item.source).resolve()
        if method == "symlink":
            assert os.readlink(made) == item.source
        elif method == "hardlink":
            assert os.path.samefile(made, real)
        else:
            assert made.read_bytes() == real.read_bytes()
    mover.close()


@pytest.mark.parametrize(("method", "fault"), [
    ("hardlink", "writable"), ("symlink", "writable"),
    ("copy", "corrupt"), ("hardlink", "corrupt"), ("symlink", "corrupt")])
def test_a_second_file_of_a_folder_fails_as_a_first_one_would(
        store: Path, tmp_path: Path, method: str, fault: str) -> None:
    """A file moved after another of its folder (opened below the folder held open since)
    is refused (a store file the staging account could write: not linked) or caught (bytes
    other than the catalogue's) with the same error as when it is the first of its folder;
    nothing of it is left under any name, the first file's commit is unharmed."""
    dest = tmp_path / "dest"
    dest.mkdir()
    good, bad = (spec(store, dest, name, method) for name in ("a.uvh5", "b.uvh5"))
    if fault == "writable":
        os.chown(bad.source, os.geteuid(), os.getegid())
    else:
        bad = bad._replace(checksums={ck.XXH3_128: "0" * 32})
    alone = Mover(deferred=True, temp_folders=True)
    with pytest.raises(ItemFailed) as first_of_folder:
        alone.move(bad)
    alone.close()
    assert entries(dest) == []  # its temporary folder went with it
    mover = Mover(deferred=True, temp_folders=True)
    first = mover.move(good)
    with pytest.raises(ItemFailed) as second_of_folder:
        mover.move(bad)
    mover.close()
    assert str(second_of_folder.value) == str(first_of_folder.value)
    assert first.tmp is not None and first.final is not None
    assert entries(Path(first.tmp).parent) == ["a.uvh5"]
    assert commit([(first.tmp, first.final)], True) == [None]
    assert entries(dest) == ["night"] and entries(dest / "night") == ["a.uvh5"]


@pytest.mark.parametrize("empty_path", ["allowed", "refused"])
def test_a_hard_link_is_the_verified_inode_whichever_way_the_kernel_links_it(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_path: str) -> None:
    """A hard link is made from the source's open descriptor: by ``linkat(AT_EMPTY_PATH)``
    where the kernel allows it, else (an older kernel without the privilege refuses it) through
    ``/proc/self/fd``, after which the first way is not tried again. Either way each link is
    the store's own inode, in place once committed, and a name already there is never
    replaced (FileExistsError, as ``os.link`` says it)."""
    calls: list[str] = []
    real = safefs._linkat
    assert real is not None, "no linkat in this C library"

    def linkat(fd: int, path: bytes, dir_fd: int, name: bytes, flags: int) -> int:
        calls.append(name.decode())
        return -1 if empty_path == "refused" else real(fd, path, dir_fd, name, flags)

    monkeypatch.setattr(safefs, "_linkat", linkat)
    monkeypatch.setattr(safefs, "_empty_path_ok", True)
    dest = tmp_path / "dest"
    dest.mkdir()
    mover = Mover(deferred=True, temp_folders=True)
    moved = [mover.move(spec(store, dest, name, "hardlink")) for name in ("a.uvh5", "b.uvh5")]
    assert all(o.tmp is not None and o.final is not None for o in moved)
    assert commit([(o.tmp, o.final) for o in moved if o.tmp and o.final], True) == [None, None]
    for name in ("a.uvh5", "b.uvh5"):
        staged, source = (dest / "night" / name).stat(), (store / "night" / name).stat()
        assert (staged.st_dev, staged.st_ino) == (source.st_dev, source.st_ino)
    # Refused: tried once, then the other way only.
    assert calls == (["a.uvh5", "b.uvh5"] if empty_path == "allowed" else ["a.uvh5"])
    assert safefs._empty_path_ok is (empty_path == "allowed")
    folder = os.open(dest / "night", os.O_RDONLY | os.O_DIRECTORY)
    source = os.open(store / "night" / "a.uvh5", os.O_RDONLY)
    try:
        monkeypatch.setattr(safefs, "_empty_path_ok", True)
        with pytest.raises(FileExistsError):
            safefs.link_open_file(source, folder, "a.uvh5")
    finally:
        os.close(source)
        os.close(folder)
    mover.close()


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_links_into_a_folder_an_earlier_hand_over_made_go_in_place(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A link of one file needs no temporary folder, even in a folder that does not exist
    yet: the first file of a folder (the general path, ``_link_in_place``) makes the folder
    and goes straight under its final name; the others, in this hand-over and the next, go
    the same way from the source folder held open (``_move_file``), with the general path's
    checks and answers: a store file the account could write is refused and bytes other than
    the catalogue's are caught (the same errors as for a first file, nothing left under any
    name), the same link already there is skipped and another file there is never
    replaced."""
    night = store / "night"
    for name in ("c", "d", "e", "f", "g"):
        (night / f"{name}.uvh5").write_bytes(name.encode() * 300)
        (night / f"{name}.uvh5").chmod(0o444)
        os.chown(night / f"{name}.uvh5", ARCHIVE_UID, ARCHIVE_GID)
    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    pin = safefs.pin_of(str(dest), fd)
    os.close(fd)
    general: list[str] = []
    real = Mover._link_in_place

    def spy(self: Mover, item: ItemSpec, *args: object) -> object:
        general.append(os.path.basename(item.final))
        return real(self, item, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Mover, "_link_in_place", spy)
    mover = Mover(deferred=True, temp_folders=True, root=pin)
    first = mover.move(spec(store, dest, "a.uvh5", method))
    assert first.tmp == first.final  # in place, in the folder made for it
    assert entries(dest) == ["night"]  # (no temporary folder)
    assert commit([(first.tmp, first.final)], True, [pin], data=method != "hardlink") == [None]
    mover.close_temp_folders()  # the next hand-over
    (dest / "night" / "g.uvh5").write_bytes(b"somebody else's")
    good = [spec(store, dest, name, method) for name in ("b.uvh5", "c.uvh5", "e.uvh5")]
    moved = [mover.move(item) for item in good]
    assert all(o.state == ItemState.DONE and o.tmp == o.final == item.final
               for o, item in zip(moved, good))
    writable = spec(store, dest, "d.uvh5", method)
    os.chown(writable.source, os.geteuid(), os.getegid())
    with pytest.raises(ItemFailed, match="not linked: the store file is owned by the staging"):
        mover.move(writable)
    with pytest.raises(ItemFailed, match="checksum mismatch"):
        mover.move(spec(store, dest, "f.uvh5", method)._replace(
            checksums={ck.XXH3_128: "0" * 32}))
    with pytest.raises(ItemFailed, match="not overwritten"):
        mover.move(spec(store, dest, "g.uvh5", method))
    again = mover.move(good[1])
    assert again.state == ItemState.SKIPPED and again.note == "already linked"
    assert general == ["a.uvh5"]  # the first of the folder only
    assert commit([(o.tmp, o.final) for o in moved if o.tmp and o.final], True, [pin],
                  data=method != "hardlink") == [None, None, None]
    mover.close()
    assert (dest / "night" / "g.uvh5").read_bytes() == b"somebody else's"
    assert entries(dest / "night") == ["a.uvh5", "b.uvh5", "c.uvh5", "e.uvh5", "g.uvh5"]
    for item in [spec(store, dest, "a.uvh5", method), *good]:
        if method == "hardlink":
            assert os.path.samefile(item.final, item.source)
        else:
            assert os.readlink(item.final) == item.source
