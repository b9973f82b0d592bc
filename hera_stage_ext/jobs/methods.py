"""How one item (a file or a directory data set) gets to its destination, verified.

Owns the local methods (``copy``, ``hardlink``, ``symlink``, ``reflink``; ``contents`` lives in
``contents.py``), the temporary-name-then-rename discipline (a killed worker never leaves a
partial file under a final name; a link of one file, made whole or not at all by the kernel,
goes straight under its final name once its source is verified, in its folder made for it
if need be: no temporary name, folder or rename), the
verification against the catalogue checksum (the fastest one it has: xxh3-128, MD5 only when
that is all) and the skip/conflict decision for something already at the final name.
Knows nothing of the database: the engine hands it an ``ItemSpec`` and records the ``Outcome``.
Every destination folder is reached without following a symlink and every file created,
renamed or removed relative to its folder's descriptor (``safefs``); a source file is opened
by its name below its folder's descriptor, that folder opened and checked to lie inside its
store once per mover, and anything opened by its path is checked after it is opened (where
the kernel says it is, not where its path pointed when checked): nothing outside a store is
read or linked; ``hardlink`` and ``symlink`` link only a store file the staging account
cannot write (``linkcheck``).

Two modes. Immediate (``Mover(deferred=False)``): each item is written, verified, fsynced and
renamed to its final name before ``move`` returns. Deferred (the engine's, for speed on many
small files): ``move`` writes and verifies the item under its temporary name and returns the
rename still to do (``Outcome.tmp``); ``commit`` then makes a whole batch final at once: one
``syncfs`` of the destination's file system for the data of every temporary file (instead of
one fsync, hence one journal commit, per file; through a descriptor opened before the files
were written, and only where that is as good: ``durability``, else file by file), the renames
(never over an existing name), an ``fsync`` of the folders they changed (up to the job's
destination) so the renames are on disk before the caller records the batch as done (hard
links, which hold no data of their own, skip the first ``syncfs``; a link already under its
final name is only in its folder's ``fsync``). Nothing partial ever sits under a final name,
even after a crash or a power cut; an item whose rename was not done when its worker died is
simply redone (its temporary file removed on resume).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from .. import safefs
from ..catalogue import checksums as ck
from ..durability import HAS_SYNCFS, Watch, sync_written
from ..paths import is_within
from ..states import ItemState
from . import bigcopy, linkcheck

METHODS = ("copy", "hardlink", "symlink", "reflink", "contents")  # contents: see contents.py
#: Methods that give the store's own inode or a link to it: nothing is copied.
_LINKS = frozenset({"hardlink", "symlink"})
#: A copy's note in the job log, per algorithm (built once, not per file).
_VERIFIED = {name: f"{name} verified" for name in ck.ALGORITHMS}
#: Methods whose temporary files hold no data of their own (a hard link is the store's inode,
#: on disk already): ``commit`` syncs only their folders' entries.
NO_DATA = frozenset({"hardlink"})
TMP_SUFFIX = ".hera-tmp"
#: ioctl number of FICLONE (linux/fs.h): share the source's extents (copy-on-write).
FICLONE = 0x40049409
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
               errno.EBADF, errno.EPERM}


class Cancelled(Exception):
    """Raised from the per-chunk check when the job is cancelled or the worker is stopping."""


class ItemFailed(Exception):
    """A per-item failure with a message for the job log and STAGING-ERRORS."""


class ItemSpec(NamedTuple):
    """One item to move (a tuple: cheap to build and to send to a helper process)."""

    source: str | Path
    final: str | Path
    size: int
    is_directory: bool
    checksums: dict[str, str]
    method: str
    read_only: bool = True
    # The root of the store the source is on: when given, nothing is read that does not
    # resolve inside it (an instance swapped for a symlink out of its store after ingest).
    source_root: str | None = None


class Outcome(NamedTuple):
    state: ItemState  # DONE or SKIPPED
    note: str = ""
    # Deferred mode: the verified temporary copy still to rename to its final name (``commit``).
    tmp: str | None = None
    final: str | None = None


def temp_path(final: str | os.PathLike[str]) -> str:
    """The temporary name an item is written under, next to its final name (same file system,
    so the closing rename is atomic)."""
    head, tail = os.path.split(os.fspath(final))
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


def remove_path(path: str | os.PathLike[str], folders: safefs.Folders | None = None) -> None:
    """Remove a file, symlink or (read-only) tree; absent is fine. Its folder is opened without
    following a symlink and the tree removed descriptor by descriptor (``safefs.remove``)."""
    safefs.remove_path(os.fspath(path), folders)


#: The open flags of a source (a store's instance) below its folder: never through a symlink
#: it is itself.
_SOURCE = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
#: The open flags of a source by its path (``open_inside``: checked once open).
_READ = os.O_RDONLY | os.O_CLOEXEC
#: Methods of a single file that ``Mover._move_file`` takes.
_FILE_METHODS = frozenset({"copy", "hardlink", "symlink", "reflink"})
#: The algorithm a verification prefers when the catalogue has it (``ck.preferred_algorithm``).
_XXH3 = ck.ALGORITHMS[0]
#: Source folders a mover keeps open (``Mover._source_folder``).
_SOURCE_FOLDERS = 64
#: An immediate mover's outcome of a link made (nothing left to rename).
_LINKED = Outcome(ItemState.DONE)
#: A refusal of a source that is not (or no longer) inside its store.
_OUTSIDE = "the instance on its store leads outside the store"


class Mover:
    """Moves items for one stream (thread): owns that stream's reused copy buffer and its open
    destination folders (``safefs.Folders``).

    Every destination folder is opened without following a symlink, below ``root`` (the job's
    destination, pinned when the job took it: another folder or a symlink found there refuses
    the item) or the ``roots`` it is given (a store), and every file is created, renamed or
    removed relative to its folder's descriptor: a link planted or swapped at any moment
    redirects nothing. ``made_dirs`` (may be shared by the streams of a job) remembers the
    destination folders known to exist; the folders' descriptors are cached (bounded) per mover,
    so that a folder of 200 files is opened (or made) once, not 200 times: with files of a few
    KiB, per-file Python work (not the copy) decides the speed.
    """

    def __init__(
        self,
        chunk_size: int = ck.CHUNK_SIZE,
        check: Callable[[int], None] = lambda n: None,
        log: Callable[[str], None] = lambda line: None,
        fsync: bool = True,
        *,
        deferred: bool = False,
        made_dirs: set[str] | None = None,
        temp_folders: bool = False,
        root: safefs.Pin | None = None,
        roots: Iterable[str] = (),
    ) -> None:
        self._buffer = bytearray(chunk_size)
        self._view = memoryview(self._buffer)
        # A file smaller than this is read whole in one call (``_small_file``).
        self._small = min(chunk_size, bigcopy.MIN_SIZE)
        self._check = check
        self._log = log
        # Deferred: no fsync here, ``commit`` syncs the whole batch (when it is asked to).
        self._fsync = fsync and not deferred
        self._deferred = deferred
        self._reflink_ok: bool | None = None
        # Large files: copied by ``bigcopy`` until it says it cannot copy between these file
        # systems.
        self._bigcopy_ok = True
        # Writing past the page cache, or starting writeback early, only helps when the data
        # is to be synced at all.
        self._durable = fsync
        self._made_dirs = made_dirs if made_dirs is not None else set()
        self._root = root
        self._roots = tuple(roots)
        self._folders = safefs.Folders([root] if root is not None else self._roots)
        self._identity = linkcheck.staging_identity()
        # Source folders by (path, store root), open (``O_PATH``), each checked once, when it
        # is opened, to lie inside its store's root: a source file is opened by its name below
        # its folder's descriptor (one path component a file, not the whole path; and always
        # in the folder that was checked, whatever is swapped on its path later). The check is
        # not repeated: a folder renamed out of the store after it was checked is still read
        # from until it is dropped (no escalation: renaming a store's folder takes write
        # permission on the store). Bounded: least recently used closed first; all closed
        # with ``close_sources``.
        self._source_dirs: OrderedDict[tuple[str, str | None], int] = OrderedDict()
        # Store roots as given -> resolved (once: the kernel's names of what was opened are
        # compared with these, ``check_inside``).
        self._real_roots: dict[str, str] = {}
        # Destination folders this mover created (so they held nothing before).
        self._fresh_dirs: set[str] = set()
        # Deferred, ``temp_folders``: a destination folder that does not exist is written as a
        # temporary folder beside it, its files under their final names, and ``commit`` renames
        # the folder into place whole (one rename per folder, not one per file). Final folder
        # -> its temporary folder, until ``close_temp_folders``. Not for a link of one file,
        # which needs none: whole or absent, it goes straight into its folder (made for it).
        self._temp_folders = temp_folders and deferred
        self._open_temps: dict[str, str] = {}
        self._used_temps: set[str] = set()  # those holding a written file (for a commit)

    def pin(self, root: safefs.Pin | None) -> None:
        """Write below ``root`` from now on (a helper's next hand-over may be another job's)."""
        if root != self._root:
            self._root = root
            self._folders.close()
            self._folders = safefs.Folders([root] if root is not None else self._roots)

    def watch(self) -> list[Watch]:
        """This mover's destination roots opened anew, for a ``commit`` of what it writes from
        now on (``durability.Watch``); the caller closes them. A root that cannot be opened is
        left out (its files are synced one by one, if any is written at all)."""
        watch = []
        for root in [self._root] if self._root is not None else self._roots:
            with contextlib.suppress(OSError):
                watch.append(Watch(self._folders.root_fd(root)))
        return watch

    def forget_folders(self) -> None:
        """Drop what this mover knows of destination folders (another batch, maybe of another
        job, follows: what was fresh for the last one is not for this one)."""
        self._made_dirs.clear()
        self._fresh_dirs.clear()
        self._folders.forget()
        self.close_temp_folders()
        self.close_sources()

    def close_sources(self) -> None:
        """Close the source folders this mover holds open (an idle mover must not keep a
        store busy: an open descriptor stops it being unmounted)."""
        for fd in self._source_dirs.values():
            os.close(fd)
        self._source_dirs.clear()
        self._real_roots.clear()

    def close_temp_folders(self) -> None:
        """The temporary folders written so far go to a ``commit``: items moved after this get
        new ones (a folder being renamed into place never receives a file still unverified)."""
        for folder in self._open_temps.values():
            self._folders.forget(folder)
        self._open_temps.clear()
        self._used_temps.clear()

    def close(self) -> None:
        self._folders.close()
        self.close_sources()

    # ----- entry point --------------------------------------------------------------------
    def move(self, spec: ItemSpec, source_fd: int | None = None) -> Outcome:
        """Move one item. ``source_fd``: the source already open (a file, or a data set's
        folder whose members are opened below it): read from it, never from its path."""
        if source_fd is None and not spec.is_directory:
            outcome = self._move_file(spec)
            if outcome is not None:
                return outcome
        algorithm = ck.preferred_algorithm(spec.checksums)
        final = os.fspath(spec.final)
        parent, name = _split(final) if final.startswith("/") else os.path.split(final)
        source = os.fspath(spec.source)
        if spec.source_root is not None and source_fd is None:
            self._confine_source(source, spec)
        folders = self._folders
        link = spec.method in _LINKS and not spec.is_directory
        # (A link of one file never needs one: it goes straight under its final name.)
        folder_tmp = None if link else self._open_temps.get(parent)
        if folder_tmp is None and self._temp_folders and not link \
                and parent not in self._made_dirs:
            try:
                folders.get(parent)
            except FileNotFoundError:
                folder_tmp = self._open_temps[parent] = _make_temp_folder(parent, folders)
        if folder_tmp is not None:
            return self._into_temp_folder(spec, source, source_fd, final, parent, folder_tmp,
                                          name, algorithm)
        tmp_name = f".{name}{TMP_SUFFIX}"
        if parent not in self._made_dirs:
            dir_fd, made = folders.open(parent, create=True)
            if made:
                # Made just now, by this mover: nothing can be in it but what it writes (and
                # a name appearing meanwhile is still never overwritten: see ``commit``).
                self._fresh_dirs.add(parent)
            self._made_dirs.add(parent)
        else:
            dir_fd = folders.get(parent, create=True)
        if link:
            return self._link_in_place(spec, source, source_fd, final, parent, dir_fd, name,
                                       algorithm)
        if parent not in self._fresh_dirs and safefs.lexists(dir_fd, name):
            _discard(dir_fd, tmp_name)  # a leftover of a killed worker
            return self._existing(spec, source, source_fd, dir_fd, name, algorithm)
        try:
            note = self._write(spec, source, source_fd, dir_fd, tmp_name, algorithm)
        except FileExistsError as exc:
            # A leftover of a killed worker under the temporary name: remove it, once.
            if exc.filename != tmp_name:
                raise
            safefs.remove(dir_fd, tmp_name)
            note = self._write(spec, source, source_fd, dir_fd, tmp_name, algorithm)
        except FileNotFoundError as exc:
            # The folder went away since it was made (removed by hand mid-job): make it again.
            if exc.filename != tmp_name:
                raise
            self._made_dirs.discard(parent)
            self._fresh_dirs.discard(parent)
            folders.forget(parent)
            dir_fd = folders.get(parent, create=True)
            self._made_dirs.add(parent)
            note = self._write(spec, source, source_fd, dir_fd, tmp_name, algorithm)
        tmp = os.path.join(parent, tmp_name)
        if self._deferred:
            return Outcome(ItemState.DONE, note, tmp, final)
        try:
            os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            safefs.remove(dir_fd, tmp_name)
            raise
        return Outcome(ItemState.DONE, note)

    def _move_file(self, spec: ItemSpec) -> Outcome | None:
        """``move`` of one file from a source folder this mover holds open (most files of a
        job after the first of their folder), the file opened below that folder: a copy into
        a temporary folder of this mover (a small one: ``_small_file``; else
        ``_into_temp_folder``), a link straight under its final name in a folder made or found
        for an earlier file (``_link_file``), without the general path's choices. None, having
        done nothing, for any other case or a source that does not open as a file: the
        general path takes it."""
        final, source = spec.final, spec.source
        if type(final) is not str or type(source) is not str:
            return None
        parent, _sep, name = final.rpartition("/")
        src_dir, _sep, src_name = source.rpartition("/")
        key = (src_dir, spec.source_root)
        src_fd = self._source_dirs.get(key)
        method = spec.method
        if src_fd is None or method not in _FILE_METHODS or not parent or not src_dir:
            return None
        dir_fd = -1
        if method in _LINKS:
            # A link is whole or absent: straight under its final name (``_link_in_place``),
            # in a folder made or found for an earlier file.
            if parent not in self._made_dirs:
                return None
            try:
                dir_fd = self._folders.get(parent)
            except OSError:
                return None  # (gone or swapped: the general path says what is wrong)
            folder_tmp = None
        else:
            folder_tmp = self._open_temps.get(parent)
            if folder_tmp is None:
                return None
        try:
            fin = os.open(src_name, _SOURCE, dir_fd=src_fd)
        except OSError:
            return None  # the general path opens it again, with its fallbacks and errors
        try:
            self._source_dirs.move_to_end(key)
            checksums = spec.checksums
            algorithm = _XXH3 if _XXH3 in checksums else ck.preferred_algorithm(checksums)
            if folder_tmp is None:
                return self._link_file(spec, source, fin, final, dir_fd, name, algorithm)
            if method != "reflink":
                st = os.fstat(fin)
                if st.st_size < self._small:
                    return self._small_file(spec, fin, st, final, parent, folder_tmp, name,
                                            algorithm)
            return self._into_temp_folder(spec, source, fin, final, parent, folder_tmp, name,
                                          algorithm)
        finally:
            os.close(fin)

    def _small_file(self, spec: ItemSpec, fin: int, st: os.stat_result, final: str,
                    parent: str, folder_tmp: str, name: str, algorithm: str) -> Outcome:
        """A small file (``st``: its ``fstat``, read whole in one call) copied under its final
        name ``name`` in this mover's temporary folder ``folder_tmp`` of ``parent``: the same
        steps, checks and clean-up as ``_into_temp_folder``, ``_write`` and ``_copy_file`` take
        for it, in one frame (per small file, the calls between them cost more than the
        checks). Nothing can be in that folder but what this mover wrote (no check of the
        final name); a failure leaves nothing there, and a temporary folder still empty
        goes."""
        made = False
        try:
            dir_fd = self._folders.get(folder_tmp)
            # Created with its final permissions where the umask keeps them (no chmod).
            mode = _final_mode(st, spec.read_only)
            fd = safefs.create(dir_fd, name, mode, os.O_RDWR)
            made = True
            try:
                size, got = self._pump(fin, fd, algorithm, st.st_size)
                self._seal(fd, mode, st)
            finally:
                os.close(fd)
            check_sum(spec, size, got, algorithm, "copy")
        except BaseException:
            # (The file is removed whatever failed.)
            if made:
                safefs.remove(dir_fd, name)
            if folder_tmp not in self._used_temps:
                self._drop_temp_folder(parent, folder_tmp)
            raise
        self._used_temps.add(folder_tmp)
        return Outcome(ItemState.DONE, _VERIFIED.get(algorithm) or f"{algorithm} verified",
                       f"{folder_tmp}/{name}", final)

    def _link_file(self, spec: ItemSpec, source: str, fin: int, final: str, dir_fd: int,
                   name: str, algorithm: str) -> Outcome | None:
        """A link of the source open as ``fin`` straight under its final name ``name`` in the
        folder ``dir_fd`` (``_link_in_place``'s steps, in one frame: per file, the calls
        between them cost more than the checks): checked (``linkcheck``: asked only where the
        owner or a write bit of group or others could say so) and verified as ``_link`` does,
        then linked; a name already there is judged by ``_existing``. None, nothing made, when
        the folder went away meanwhile: the general path makes it again."""
        st = os.fstat(fin)
        uid, _gids = self._identity
        if st.st_uid == uid or st.st_mode & 0o022:
            reason = self._exposure(fin, st)
            if reason is not None:
                raise ItemFailed(reason)
        # A small file is read whole in one call (``_hash_source``'s first step, here without
        # the call): a read shorter than asked for is the end of a regular file.
        data = os.pread(fin, st.st_size + 1, 0) if st.st_size < self._small else None
        if data is not None and len(data) <= st.st_size:
            size, got = len(data), ck.hex_digest(data, algorithm)
        else:  # large, or grown since the fstat
            size, got = self._hash_source(fin, os.fstat(fin), algorithm)
        if size != spec.size or got != spec.checksums[algorithm]:
            check_sum(spec, size, got, algorithm, "source")  # (raises, with the figures)
        try:
            if spec.method == "symlink":
                os.symlink(source, name, dir_fd=dir_fd)
            else:
                # The inode just checked and verified, not whatever the path holds now.
                _hardlink(fin, name, dir_fd)
        except FileExistsError:
            _discard(dir_fd, f".{name}{TMP_SUFFIX}")  # a leftover of a killed worker
            return self._existing(spec, source, fin, dir_fd, name, algorithm)
        except FileNotFoundError:
            return None
        return Outcome(ItemState.DONE, "", final, final) if self._deferred else _LINKED

    def _into_temp_folder(self, spec: ItemSpec, source: str, source_fd: int | None,
                          final: str, parent: str, folder_tmp: str, name: str,
                          algorithm: str) -> Outcome:
        """Write the item under its final name ``name`` in the temporary folder ``folder_tmp``
        of ``parent`` (nothing can be in it but what this mover writes: no check of the final
        name); a failure leaves nothing there, and a temporary folder still empty goes."""
        try:
            note = self._write(spec, source, source_fd, self._folders.get(folder_tmp), name,
                               algorithm)
        except BaseException:
            if folder_tmp not in self._used_temps:
                self._drop_temp_folder(parent, folder_tmp)
            raise
        self._used_temps.add(folder_tmp)
        # (``folder_tmp`` is a joined path that never ends in "/": no ``os.path.join``.)
        return Outcome(ItemState.DONE, note, f"{folder_tmp}/{name}", final)

    def _link_in_place(self, spec: ItemSpec, source: str, source_fd: int | None, final: str,
                       parent: str, dir_fd: int, name: str, algorithm: str) -> Outcome:
        """A link of one file is made whole or not at all (``linkat``, ``symlinkat``): it is
        made straight under its final name, after the source is checked and verified, with no
        temporary name and no rename. Something already there (EEXIST) is judged as
        ``_existing`` judges it (the same link: skipped). Deferred, the item is returned as
        its own "rename" (``tmp == final``): ``commit`` renames nothing and syncs its folder
        before the caller records it."""
        try:
            try:
                self._link(spec, source, source_fd, dir_fd, name, algorithm)
            except FileNotFoundError as exc:
                # The folder went away since it was made (removed by hand mid-job).
                if exc.filename2 != name:
                    raise
                self._made_dirs.discard(parent)
                self._fresh_dirs.discard(parent)
                self._folders.forget(parent)
                dir_fd, made = self._folders.open(parent, create=True)
                if made:  # (so a failure below takes it away again)
                    self._fresh_dirs.add(parent)
                self._made_dirs.add(parent)
                self._link(spec, source, source_fd, dir_fd, name, algorithm)
        except FileExistsError as exc:
            if exc.filename2 != name:
                self._drop_empty_folder(parent)
                raise
            _discard(dir_fd, f".{name}{TMP_SUFFIX}")  # a leftover of a killed worker
            return self._existing(spec, source, source_fd, dir_fd, name, algorithm)
        except BaseException:
            self._drop_empty_folder(parent)
            raise
        if self._deferred:
            return Outcome(ItemState.DONE, "", final, final)
        return Outcome(ItemState.DONE)

    def _drop_empty_folder(self, folder: str) -> None:
        """A link failed in a folder this mover made for it: the folder goes if it is still
        empty (as a temporary folder would: a failed item leaves nothing behind), and is
        made again for the next file."""
        if folder not in self._fresh_dirs:
            return
        self._fresh_dirs.discard(folder)
        self._made_dirs.discard(folder)
        self._folders.forget(folder)
        with contextlib.suppress(OSError):  # (not empty, or gone: it stays as it is)
            head, tail = _split(folder) if folder.startswith("/") else os.path.split(folder)
            os.rmdir(tail, dir_fd=self._folders.get(head))

    def _drop_temp_folder(self, parent: str, folder_tmp: str) -> None:
        """Cancelled, failed, or the folder removed by hand mid-job: a temporary folder left
        empty has no commit to rename it, so it goes now."""
        self._open_temps.pop(parent, None)
        self._folders.forget(folder_tmp)
        with contextlib.suppress(OSError):
            head, tail = os.path.split(folder_tmp)
            os.rmdir(tail, dir_fd=self._folders.get(head))

    def _confine_source(self, source: str, spec: ItemSpec) -> None:
        """Refuse early (before anything is made at the destination, or an item found there
        is judged) a source that leads outside its store: a file's folder is opened and
        checked (``_source_folder``, once per folder), a directory resolved. What confines
        the read is not this but the check of every source once it is open (below a checked
        folder, or ``open_inside``'s check of what was opened)."""
        root = spec.source_root
        assert root is not None
        if spec.is_directory:
            if not is_within(source, root):
                raise ItemFailed(_OUTSIDE)
        elif source.startswith("/"):
            folder = _split(source)[0]
            if self._source_folder(folder, root) is None and not is_within(folder, root):
                raise ItemFailed(_OUTSIDE)
        elif not is_within(os.path.dirname(source), root):
            raise ItemFailed(_OUTSIDE)

    def _source_folder(self, folder: str, root: str | None) -> int | None:
        """The open source folder ``folder`` (``O_PATH``), refused (ItemFailed) where it does
        not lie inside the store ``root`` (``check_inside``), so a file opened below it
        without following a symlink is inside; checked when it is opened, not again while it
        is cached. None when it cannot be opened (missing, not a folder): the caller goes by
        path (``open_inside``), which says what is wrong."""
        key = (folder, root)
        fd = self._source_dirs.get(key)
        if fd is not None:
            self._source_dirs.move_to_end(key)
            return fd
        try:
            fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if root is not None:
                check_inside(fd, root, self._real_roots)
        except BaseException:
            os.close(fd)
            raise
        if len(self._source_dirs) >= _SOURCE_FOLDERS:
            os.close(self._source_dirs.popitem(last=False)[1])
        self._source_dirs[key] = fd
        return fd

    def _open_file(self, source: str, root: str | None) -> int:
        """Open the source file ``source`` (absolute) by its name below its open folder
        (``_source_folder``), without following a symlink it is itself. The folder is the one
        checked when it was opened, even if it was renamed since (inside the store or out of
        it: see ``_source_dirs``). A file missing there drops the folder's descriptor (the
        folder may have been removed or replaced since) and opens and checks the folder again,
        once. Anything else (a source that is a symlink, a file missing twice, a folder that
        cannot be opened) goes by path (``open_inside``): what that opens is checked to lie
        inside the store, and its errors say what is wrong as they always did."""
        folder, name = _split(source)
        for again in (False, True):
            dir_fd = self._source_folder(folder, root)
            if dir_fd is None:
                break
            try:
                return os.open(name, _SOURCE, dir_fd=dir_fd)
            except FileNotFoundError:
                os.close(self._source_dirs.pop((folder, root)))
                if again:
                    break
            except OSError:
                break
        return open_inside(source, root, self._real_roots)

    def _write(self, spec: ItemSpec, source: str, source_fd: int | None, dir_fd: int,
               tmp: str, algorithm: str) -> str:
        """Write and verify the item under ``tmp`` in ``dir_fd``; on any failure nothing is left
        there (except a leftover of someone else that was already there: FileExistsError)."""
        note = ""
        try:
            if spec.method in _LINKS:
                self._link(spec, source, source_fd, dir_fd, tmp, algorithm)
            else:
                reflink = spec.method == "reflink"
                fin = source_fd if source_fd is not None else (
                    self._open_file(source, spec.source_root)
                    if not spec.is_directory and source.startswith("/")
                    else open_inside(source, spec.source_root, self._real_roots))
                try:
                    if spec.is_directory:
                        digest = self._copy_dir(fin, dir_fd, tmp, algorithm, spec.read_only,
                                                reflink)
                        size, got = digest.size, digest.checksums[algorithm]
                    else:
                        size, got = self._copy_file(fin, dir_fd, tmp, algorithm,
                                                    spec.read_only, reflink)
                finally:
                    if fin != source_fd:
                        os.close(fin)
                check_sum(spec, size, got, algorithm, "copy")
                note = _VERIFIED.get(algorithm) or f"{algorithm} verified"
        except FileExistsError as exc:
            if exc.filename != tmp:
                safefs.remove(dir_fd, tmp)
            raise
        except BaseException:
            safefs.remove(dir_fd, tmp)
            raise
        return note

    # ----- links: the store's own inode (only where the user cannot write it) --------------
    def _exposure(self, fd: int, st: os.stat_result) -> str | None:
        uid, gids = self._identity
        reason = linkcheck.link_exposure(st, uid, gids)
        if reason is not None and linkcheck.is_immutable(fd):
            return None
        return reason

    def _link(self, spec: ItemSpec, source: str, source_fd: int | None, dir_fd: int, tmp: str,
              algorithm: str) -> None:
        """Nothing is copied: the source (``source_fd``, or opened as ``_open_file`` or
        ``open_inside`` open it: inside its store) is checked (the user must not be able to
        write it: ``linkcheck``) and verified, then linked."""
        fin = source_fd if source_fd is not None else (
            self._open_file(source, spec.source_root)
            if not spec.is_directory and source.startswith("/")
            else open_inside(source, spec.source_root, self._real_roots))
        try:
            st = os.fstat(fin)
            reason = self._exposure(fin, st)
            if reason is None and spec.is_directory:
                reason = self._tree_exposure(fin)
            if reason is not None:
                raise ItemFailed(reason)
            check_sum(spec, *self._hash_source(fin, st, algorithm), algorithm, "source")
            if spec.method == "symlink":
                os.symlink(source, tmp, target_is_directory=spec.is_directory, dir_fd=dir_fd)
            elif spec.is_directory:
                self._link_tree(fin, dir_fd, tmp)
            else:
                # The inode just checked and verified, not whatever the path holds now.
                _hardlink(fin, tmp, dir_fd)
        finally:
            if fin != source_fd:
                os.close(fin)

    def _hash_source(self, fd: int, st: os.stat_result, algorithm: str) -> tuple[int, str]:
        """The size and ``algorithm`` checksum of the open source ``fd`` (``st``: its fstat).
        A small file is read whole in one call and hashed in one (per file, a hasher object,
        a fresh buffer or a ``Digest`` cost more than hashing it); a larger one through this
        mover's reused buffer; a folder as ``hash_at`` does."""
        if stat.S_ISDIR(st.st_mode):
            digest = ck.hash_at(fd, [algorithm])
            return digest.size, digest.checksums[algorithm]
        if st.st_size < len(self._buffer):
            # A read shorter than asked for is the end of a regular file.
            data = os.pread(fd, st.st_size + 1, 0)
            if len(data) <= st.st_size:
                return len(data), ck.hex_digest(data, algorithm)
        hasher = ck.StreamHasher([algorithm])
        offset = 0
        while n := os.preadv(fd, [self._buffer], offset):
            hasher.update(self._view[:n])
            offset += n
        digest = hasher.digest()
        return digest.size, digest.checksums[algorithm]

    def _tree_exposure(self, dir_fd: int) -> str | None:
        _folders, members = safefs.tree(dir_fd)
        for member in members:
            fd = open_member(dir_fd, member)
            try:
                reason = self._exposure(fd, os.fstat(fd))
            finally:
                os.close(fd)
            if reason is not None:
                return f"{member}: {reason}"
        return None

    # ----- what is already there ----------------------------------------------------------
    def _existing(self, spec: ItemSpec, source: str, source_fd: int | None, dir_fd: int,
                  name: str, algorithm: str) -> Outcome:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            if spec.method == "symlink" and os.readlink(name, dir_fd=dir_fd) == source:
                return Outcome(ItemState.SKIPPED, "already linked")
            raise ItemFailed("exists as a symbolic link; not overwritten")
        if spec.method == "hardlink" and not spec.is_directory:
            with contextlib.suppress(OSError):
                src = os.stat(source)
                if (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino):
                    return Outcome(ItemState.SKIPPED, "already linked")
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir != spec.is_directory:
            kind = "directory" if is_dir else "file"
            raise ItemFailed(f"exists as a {kind} of other content; not overwritten")
        if not spec.is_directory and st.st_size != spec.size:
            raise ItemFailed(
                f"exists with other content ({st.st_size} bytes, catalogue says {spec.size}); "
                f"not overwritten")
        fd = os.open(name, _SOURCE | (os.O_DIRECTORY if is_dir else 0), dir_fd=dir_fd)
        try:
            digest = ck.hash_at(fd, [algorithm])
        finally:
            os.close(fd)
        if digest.size == spec.size and digest.checksums[algorithm] == spec.checksums[algorithm]:
            return Outcome(ItemState.SKIPPED, f"identical file already there ({algorithm})")
        raise ItemFailed(f"exists with other content ({algorithm} differs); not overwritten")

    # ----- copying ------------------------------------------------------------------------
    def _copy_file(self, fin: int, dir_fd: int, dst: str, algorithm: str, read_only: bool,
                   reflink: bool = False) -> tuple[int, str]:
        """Copy the open file ``fin`` to a new file ``dst`` in ``dir_fd``: the size and the
        ``algorithm`` checksum of what was written."""
        st = os.fstat(fin)
        if reflink and self._reflink_ok is not False:
            digest = self._try_reflink(fin, dir_fd, dst, algorithm, st, read_only)
            if digest is not None:
                return digest.size, digest.checksums[algorithm]
        # Created with its final permissions where the umask keeps them (no chmod).
        mode = _final_mode(st, read_only)
        # Read-write: a large file's kernel copy is read back to be hashed (``bigcopy``).
        fd = safefs.create(dir_fd, dst, mode, os.O_RDWR)
        try:
            result = None
            if st.st_size >= bigcopy.MIN_SIZE and self._bigcopy_ok:
                # The pump's buffer is idle meanwhile: the hashing thread reads into it.
                digest = bigcopy.copy(fin, fd, algorithm, len(self._buffer), self._check,
                                      self._buffer, durable=self._durable)
                if digest is None:
                    self._bigcopy_ok = False
                else:
                    result = digest.size, digest.checksums[algorithm]
            if result is None:
                result = self._pump(fin, fd, algorithm, st.st_size)
            self._seal(fd, mode, st)
        finally:
            os.close(fd)
        return result

    def _seal(self, fd: int, mode: int, st: os.stat_result) -> None:
        """A copy's mode (where the umask took some of it) and times (the source's ``st``),
        through its open descriptor (no second path lookup), then its fsync when this mover
        syncs each file: one flush covers data and metadata."""
        if mode & _UMASK:
            os.chmod(fd, mode)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        if self._fsync:
            os.fsync(fd)

    def _pump(self, fin: int, fd: int, algorithm: str, size: int) -> tuple[int, str]:
        """Copy ``fin`` to ``fd``, hashing each chunk from the same buffer (one pass): the size
        and checksum of what was written."""
        data = b""
        if size < len(self._buffer):
            # A small file in one read: a read shorter than asked for is the end of a regular
            # file, so no second read is needed to find it.
            data = os.read(fin, size + 1)
            write_all(fd, data)
            self._check(len(data))
            if len(data) <= size:
                return len(data), ck.hex_digest(data, algorithm)
        hasher = ck.StreamHasher([algorithm])
        if data:
            hasher.update(data)
        buffer, view = self._buffer, self._view
        with open(fin, "rb", buffering=0, closefd=False) as reader:
            while n := reader.readinto(buffer):
                chunk = view[:n]
                hasher.update(chunk)
                write_all(fd, chunk)
                self._check(n)
        digest = hasher.digest()
        return digest.size, digest.checksums[algorithm]

    def _try_reflink(self, fin: int, dir_fd: int, dst: str, algorithm: str,
                     st: os.stat_result, read_only: bool) -> ck.Digest | None:
        fd = safefs.create(dir_fd, dst, 0o600, os.O_RDWR)
        try:
            try:
                fcntl.ioctl(fd, FICLONE, fin)
            except OSError as exc:
                os.close(fd)
                fd = -1
                os.unlink(dst, dir_fd=dir_fd)
                if exc.errno not in _NO_REFLINK:
                    raise
                if self._reflink_ok is None:
                    self._log(f"reflink not supported here ({exc.strerror}): "
                              f"falling back to a plain copy")
                self._reflink_ok = False
                return None
            self._reflink_ok = True
            # The clone shares the source's blocks: hashing it checks what the destination
            # holds.
            digest = ck.hash_fd(fd, [algorithm])
            _finish_metadata(fd, st, read_only)
            if self._fsync:
                os.fsync(fd)
            return digest
        finally:
            if fd >= 0:
                os.close(fd)

    def _copy_dir(self, src_fd: int, dir_fd: int, dst: str, algorithm: str,
                  read_only: bool, reflink: bool) -> ck.Digest:
        """Copy the data set open as ``src_fd`` to a new folder ``dst`` in ``dir_fd`` (its
        members opened below it: one that leads out of it is refused, ``open_member``)."""
        folders, members = safefs.tree(src_fd)
        # Directories stay writable (the user must be able to delete what was staged).
        os.mkdir(dst, 0o755, dir_fd=dir_fd)
        out = _Tree(dir_fd, dst)
        try:
            for folder in folders:
                out.make(folder)
            digests = []
            for member in members:
                fin = open_member(src_fd, member)
                try:
                    head, tail = os.path.split(member)
                    size, got = self._copy_file(fin, out.get(head), tail, algorithm, read_only,
                                                reflink)
                    digests.append((member, ck.Digest(size, {algorithm: got}, False)))
                finally:
                    os.close(fin)
            out.copy_mtimes(src_fd, folders)
        finally:
            out.close()
        return ck.manifest_digest(digests, [algorithm])

    def _link_tree(self, src_fd: int, dir_fd: int, dst: str) -> None:
        folders, members = safefs.tree(src_fd)
        os.mkdir(dst, 0o755, dir_fd=dir_fd)
        out = _Tree(dir_fd, dst)
        try:
            for folder in folders:
                out.make(folder)
            for member in members:
                fin = open_member(src_fd, member)
                try:
                    head, tail = os.path.split(member)
                    _hardlink(fin, tail, out.get(head))
                finally:
                    os.close(fin)
            out.copy_mtimes(src_fd, folders)
        finally:
            out.close()


def check_sum(spec: ItemSpec, size: int, got: str, algorithm: str, what: str) -> None:
    """Refuse (``ItemFailed``) a ``what`` ("copy", "source") whose size or ``algorithm``
    checksum ``got`` is not what the catalogue says of ``spec``."""
    expected = spec.checksums[algorithm]
    if size != spec.size or got != expected:
        raise ItemFailed(
            f"checksum mismatch: {algorithm} of the {what} is {got} ({size} bytes), "
            f"the catalogue says {expected} ({spec.size} bytes); the source is corrupt or "
            f"changed, the bad copy was removed")


def _hardlink(fin: int, name: str, dir_fd: int) -> None:
    """Hard-link the open file ``fin`` (the inode checked and verified, not whatever its path
    holds now) as ``name`` in ``dir_fd``."""
    try:
        safefs.link_open_file(fin, dir_fd, name)
    except PermissionError:
        # fs.protected_hardlinks: an account may link only files it owns or can write, which
        # is exactly what a safe store's files are not (``linkcheck``).
        raise ItemFailed(
            "the kernel refuses to hard-link a file this account neither owns nor can write "
            "(fs.protected_hardlinks = 1); stage with symlink, reflink or copy, or run the "
            "worker with CAP_FOWNER") from None


def check_inside(fd: int, root: str, real_roots: dict[str, str]) -> None:
    """Refuse (ItemFailed) the open ``fd`` unless it lies inside the store ``root``: what the
    descriptor holds, as the kernel names it (whatever path led to it, and whatever is swapped
    on that path since), against the root resolved once (``real_roots``: root as given ->
    resolved, the caller's cache); the kernel's answer is compared as it is, never resolved
    again."""
    real = real_roots.get(root)
    if real is None:
        real = real_roots[root] = os.path.realpath(root)
    where = os.readlink(f"/proc/self/fd/{fd}")
    try:
        inside = os.path.commonpath([where, real]) == real
    except ValueError:  # not a path of this file system tree (relative): not inside
        inside = False
    if not inside:
        raise ItemFailed(_OUTSIDE)


def open_inside(source: str | os.PathLike[str], root: str | None,
                real_roots: dict[str, str]) -> int:
    """Open ``source`` (a file or a directory) by its path, following symlinks, for reading.
    Under a store ``root`` it is first opened ``O_PATH`` (nothing read, no side effect of
    opening a device or a FIFO), refused unless what was opened lies inside the store
    (``check_inside``: a symlink staying inside is followed, one leading out, on the way or
    the last component, is not, whenever it was swapped in), then reopened for reading
    through that descriptor: exactly the inode checked. The one check of a source opened by
    its path, for every method (``Mover``, ``contents.ContentsMover``)."""
    if root is None:
        return os.open(source, _READ)
    path_fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
    try:
        check_inside(path_fd, root, real_roots)
        try:
            return os.open(f"/proc/self/fd/{path_fd}", _READ)
        except OSError as exc:
            exc.filename = os.fspath(source)
            raise
    finally:
        os.close(path_fd)


def open_member(dir_fd: int, member: str) -> int:
    """Open a data set's member below its folder: a symlink that stays inside is followed,
    one leading out of it is refused (its bytes are never read)."""
    try:
        return safefs.open_beneath(dir_fd, member, _SOURCE & ~os.O_NOFOLLOW, inner_links=True)
    except safefs.PathChanged:
        raise ItemFailed(f"a member is a symlink leading outside the directory (or it changed "
                         f"while being read): {member}; not read") from None


class _Tree:
    """The folders of a data set being written below a new folder, open by relative path."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self.fds = {"": os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=dir_fd)}

    def make(self, rel: str) -> None:
        head, tail = os.path.split(rel)
        parent = self.fds[head]
        os.mkdir(tail, 0o755, dir_fd=parent)
        self.fds[rel] = os.open(tail, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=parent)

    def get(self, rel: str) -> int:
        return self.fds[rel]

    def copy_mtimes(self, src_fd: int, folders: list[str]) -> None:
        # Deepest first, after every file is written (writing into a folder changes its mtime).
        for rel in [*sorted(folders, key=lambda f: -f.count("/")), ""]:
            if rel:
                fd = safefs.open_beneath(src_fd, rel, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
            else:
                st = os.fstat(src_fd)
            os.utime(self.fds[rel], ns=(st.st_atime_ns, st.st_mtime_ns))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def _discard(dir_fd: int, name: str) -> None:
    """``safefs.remove`` for the common cases in one system call: nothing there, or a file."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:  # a directory (a MIRIAD data set's leftover) or something unusual
        safefs.remove(dir_fd, name)


def _final_mode(st: os.stat_result, read_only: bool) -> int:
    mode = stat.S_IMODE(st.st_mode) | stat.S_IRUSR
    return mode & ~0o222 if read_only else mode | stat.S_IWUSR


def _finish_metadata(fd: int, st: os.stat_result, read_only: bool) -> None:
    os.chmod(fd, _final_mode(st, read_only))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


_temp_folder_count = itertools.count()


def _make_temp_folder(final: str, folders: safefs.Folders) -> str:
    """A new, empty temporary folder beside ``final`` (its parents made), named
    ``.<name>.<pid>-<n>.hera-tmp``: unique, so two hand-overs never share one, and found by
    ``temp_folders_of`` when a killed worker left it."""
    head, tail = os.path.split(final)
    name = f".{tail}.{os.getpid()}-{next(_temp_folder_count)}{TMP_SUFFIX}"
    os.mkdir(name, dir_fd=folders.get(head, create=True))
    return os.path.join(head, name)


def _is_temp_folder_of(name: str, tail: str) -> bool:
    prefix = f".{tail}."
    return (name.startswith(prefix) and name.endswith(TMP_SUFFIX)
            and name[len(prefix):-len(TMP_SUFFIX)].replace("-", "").isdigit())


def temp_folders_of(final: str | os.PathLike[str],
                    folders: safefs.Folders | None = None) -> list[str]:
    """The temporary folders (``_make_temp_folder``) of the destination folder ``final``."""
    head, tail = os.path.split(os.fspath(final))
    try:
        if folders is not None:
            names = os.listdir(folders.get(head))
        else:
            fd, _made = safefs.open_dir(head)
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(head, name) for name in names if _is_temp_folder_of(name, tail)]


def remove_temp_folders(finals: set[str], pid: int | None,
                        root: safefs.Pin | None = None) -> None:
    """Remove the temporary folders a dead process ``pid`` (None: any) left for these
    destination folders (below ``root``, the job's pinned destination)."""
    with safefs.Folders([root] if root is not None else []) as folders:
        for final in finals:
            for tmp in temp_folders_of(final, folders):
                if pid is None or os.path.basename(tmp).rsplit(".", 2)[-2].startswith(f"{pid}-"):
                    remove_path(tmp, folders)


def _read_umask() -> int:
    """The process's umask, read without changing it (threads may be creating files)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o777  # unknown: always chmod


_UMASK = _read_umask()


# ----- deferred mode: making a batch final --------------------------------------------------
def _sync_data(renames: list[tuple[str, str]], pairs: dict[tuple[str, str], list[int]],
               folders: safefs.Folders, watch: Iterable[Watch]) -> None:
    """Put the data of the temporary files of ``renames`` on disk: one ``syncfs`` a file system
    where one is as good (``durability``: through a ``Watch`` of ``watch`` on that file system,
    opened before the files were written and not spent), else an ``fdatasync`` of each file (a
    FUSE mount, a kernel whose ``syncfs`` hides failures, a folder on no watched file system);
    ``os.sync`` once where there is no ``syncfs``."""
    if not HAS_SYNCFS:
        os.sync()
        return
    watched: dict[int, Watch] = {}
    for watcher in watch:
        if not watcher.spent:
            watched.setdefault(os.fstat(watcher.fd).st_dev, watcher)  # the first: the oldest
    by_device: dict[int, list[int]] = {}
    for (tmp_dir, _final_dir), members in pairs.items():
        by_device.setdefault(os.fstat(folders.get(tmp_dir)).st_dev, []).extend(members)
    for device, members in by_device.items():
        first = watched.get(device)
        if first is not None and first.durable:
            first.sync(renames[members[0]][0].rpartition("/")[0])
            continue
        for i in members:
            tmp, final = renames[i]
            if tmp != final:  # (a link in place is the store's file, on disk already)
                dir_fd, name = folders.split(tmp)
                sync_written(dir_fd, name, tmp)


def rename_path_noreplace(tmp: str, final: str, folders: safefs.Folders | None = None) -> None:
    """Rename ``tmp`` to ``final``, failing with FileExistsError if ``final`` appeared since it
    was checked (never overwrites what someone else put there); both folders opened without
    following a symlink."""
    with contextlib.ExitStack() as stack:
        if folders is None:
            folders = stack.enter_context(safefs.Folders())
        src_fd, src = folders.split(tmp)
        dst_fd, dst = folders.split(final)
        safefs.rename_noreplace(src_fd, src, dst_fd, dst, final)


def commit(renames: list[tuple[str, str]], fsync: bool = True,
           roots: Iterable[safefs.Pin | str] = (), *, data: bool = True,
           watch: Iterable[Watch] = ()) -> list[OSError | None]:
    """Make a batch of deferred items final: with ``fsync``, the data of every temporary file
    goes to disk first (one ``syncfs``), then each is renamed to its final name, then the
    renames go to disk (``safefs.sync_folders``: an ``fsync`` of each folder they changed and
    of the folders above it up to its root in ``roots``; under none, of its parent) before
    this returns, so a caller that records the batch as
    done afterwards never records something a power cut could take back. ``data`` False: the
    temporary files hold no data of their own (hard links to the store's files, already on
    disk): no ``syncfs`` first, the folders' ``fsync`` makes their entries durable. ``watch``:
    the destination's file systems opened before the batch was written (``Mover.watch``):
    the ``syncfs`` goes through them, and where none is on a file system (or spent), or its
    ``syncfs`` is not as good (``durability``), each file is synced (``_sync_data``). An item
    with ``tmp == final`` is in place already (a link, ``Mover._link_in_place``): nothing is
    renamed, its folder is synced with the others. Items in a
    temporary folder (``temp_folders``) are made final by renaming their folder into place,
    once for all of them; where the folder exists by then (made meanwhile by another batch),
    file by file into it. Folders are opened below ``roots`` (a job's pinned destination)
    without following a symlink: one swapped since fails its items, nothing is renamed there.

    Returns, per item, None or the error that stopped it (its temporary file is removed; an
    existing final name is never overwritten). An error syncing the data (the disk failed or
    filled up) stops the whole batch before any rename: that error for every item. An error
    syncing the renames is raised: the files are under their final names but may not be on
    disk, so the caller must not record them (a later run finds and verifies them)."""
    if not renames:
        return []
    roots = list(roots)
    with safefs.Folders(roots) as folders:
        return _commit(renames, fsync, folders, data,
                       [r.path if isinstance(r, safefs.Pin) else r for r in roots], watch)


def _split(path: str) -> tuple[str, str]:
    """``os.path.split`` of an absolute, normalised path, in one string operation (it runs per
    file of every batch)."""
    head, _sep, tail = path.rpartition("/")
    return head or "/", tail


def _commit(renames: list[tuple[str, str]], fsync: bool, folders: safefs.Folders,
            data: bool = True, roots: list[str] | None = None, watch: Iterable[Watch] = ()
            ) -> list[OSError | None]:
    # The items by (temporary folder, final folder): one dictionary step per item, the rest
    # per pair (a batch of 1,024 small files has a handful of pairs).
    pairs: dict[tuple[str, str], list[int]] = {}
    for i, (tmp, final) in enumerate(renames):
        if tmp == final:  # a link in place: its folder, once
            folder = final.rpartition("/")[0] or "/"
            pair = (folder, folder)
        else:
            pair = (tmp.rpartition("/")[0] or "/", final.rpartition("/")[0] or "/")
        members = pairs.get(pair)
        if members is None:
            pairs[pair] = [i]
        else:
            members.append(i)
    # Items written in a temporary folder (under their final names) go with it.
    groups: dict[tuple[str, str], list[int]] = {}
    singles: list[int] = []
    for pair, members in pairs.items():
        if _is_temp_folder_pair(*pair):
            for i in members:
                tmp, final = renames[i]
                if tmp.rpartition("/")[2] == final.rpartition("/")[2]:
                    groups.setdefault(pair, []).append(i)
                else:
                    singles.append(i)
        else:
            singles.extend(members)
    errors: list[OSError | None] = [None] * len(renames)
    if fsync and data:
        try:
            _sync_data(renames, pairs, folders, watch)
        except OSError as exc:
            for tmp, final in renames:
                if tmp != final:  # (a link in place is the store's verified file: it stays)
                    with contextlib.suppress(OSError):
                        remove_path(tmp, folders)
            for tmp_dir, _final_dir in groups:
                with contextlib.suppress(OSError):
                    remove_path(tmp_dir, folders)
            return [exc] * len(renames)
    for i in singles:
        tmp, final = renames[i]
        if tmp != final:  # tmp == final: in place already (a link)
            errors[i] = _rename_one(tmp, final, folders)
    for (tmp_dir, final_dir), members in groups.items():
        try:
            rename_path_noreplace(tmp_dir, final_dir, folders)
            folders.forget(tmp_dir)
        except FileExistsError:
            for i in members:
                errors[i] = _rename_one(*renames[i], folders)
            with contextlib.suppress(OSError):
                remove_path(tmp_dir, folders)
        except OSError as exc:
            for i in members:
                errors[i] = exc
            with contextlib.suppress(OSError):
                remove_path(tmp_dir, folders)
    if fsync:
        done = {final_dir for (_tmp_dir, final_dir), members in pairs.items()
                if any(errors[i] is None for i in members)}
        if done:
            safefs.sync_folders(done, roots or (), folders)
    return errors


def _is_temp_folder_pair(tmp_dir: str, final_dir: str) -> bool:
    """True when ``tmp_dir`` is a temporary folder of ``_make_temp_folder`` for ``final_dir``
    (its files are made final by renaming the folder, not each file). Any other temporary name
    elsewhere (a receiver's ``.hera-stage-incoming/<id>.part``) is renamed on its own: its
    folder is shared."""
    return (tmp_dir != final_dir and tmp_dir.endswith(TMP_SUFFIX)
            and _split(tmp_dir)[0] == _split(final_dir)[0])


def _rename_one(tmp: str, final: str, folders: safefs.Folders) -> OSError | None:
    try:
        rename_path_noreplace(tmp, final, folders)
    except OSError as exc:
        with contextlib.suppress(OSError):
            remove_path(tmp, folders)
        return exc
    return None
