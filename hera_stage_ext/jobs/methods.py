"""How one item (a file or a directory data set) gets to its destination, verified.

Owns the local methods (``copy``, ``hardlink``, ``symlink``, ``reflink``; ``contents`` lives in
``contents.py``), the temporary-name-then-rename discipline (a killed worker never leaves a
partial file under a final name), the
verification against the catalogue checksum (the fastest one it has: xxh3-128, MD5 only when
that is all) and the skip/conflict decision for something already at the final name.
Knows nothing of the database: the engine hands it an ``ItemSpec`` and records the ``Outcome``.

Two modes. Immediate (``Mover(deferred=False)``): each item is written, verified, fsynced and
renamed to its final name before ``move`` returns. Deferred (the engine's, for speed on many
small files): ``move`` writes and verifies the item under its temporary name and returns the
rename still to do (``Outcome.tmp``); ``commit`` then makes a whole batch final at once: one
``syncfs`` of the destination's file system for the data of every temporary file (instead of
one fsync, hence one journal commit, per file), the renames (never over an existing name), one
more ``syncfs`` so the renames are on disk before the caller records the batch as done. Nothing
partial ever sits under a final name, even after a crash or a power cut; an item whose rename
was not done when its worker died is simply redone (its temporary file removed on resume).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..catalogue import checksums as ck
from ..paths import is_within
from . import bigcopy

METHODS = ("copy", "hardlink", "symlink", "reflink", "contents")  # contents: see contents.py
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
    state: str  # "done" | "skipped"
    note: str = ""
    # Deferred mode: the verified temporary copy still to rename to its final name (``commit``).
    tmp: str | None = None
    final: str | None = None


def temp_path(final: str | os.PathLike[str]) -> str:
    """The temporary name an item is written under, next to its final name (same file system,
    so the closing rename is atomic)."""
    head, tail = os.path.split(os.fspath(final))
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, symlink or (read-only) tree; absent is fine."""
    path = os.fspath(path)
    if os.path.islink(path) or not os.path.exists(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    if os.path.isdir(path):
        # Copies may be read-only already: make them writable so rmtree can unlink them.
        def _retry(func, p, _exc):  # type: ignore[no-untyped-def]
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        shutil.rmtree(path, onerror=_retry)
    else:
        os.unlink(path)


class Mover:
    """Moves items for one stream (thread): owns that stream's reused copy buffer.

    ``made_dirs`` (may be shared by the streams of a job) remembers the destination folders
    known to exist, so that a folder of 200 files is created (or looked up) once, not 200 times.
    Paths are handled as strings and checks are cached per folder: with files of a few KiB,
    per-file Python work (not the copy) decides the speed.
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
    ) -> None:
        self._buffer = bytearray(chunk_size)
        self._view = memoryview(self._buffer)
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
        # Source folders (resolved) known to lie inside their store's root.
        self._source_dirs: set[tuple[str, str]] = set()
        # Destination folders this mover created (so they held nothing before).
        self._fresh_dirs: set[str] = set()
        # Deferred, ``temp_folders``: a destination folder that does not exist is written as a
        # temporary folder beside it, its files under their final names, and ``commit`` renames
        # the folder into place whole (one rename per folder, not one per file). Final folder
        # -> its temporary folder, until ``close_temp_folders``.
        self._temp_folders = temp_folders and deferred
        self._open_temps: dict[str, str] = {}
        self._used_temps: set[str] = set()  # those holding a written file (for a commit)

    def forget_folders(self) -> None:
        """Drop what this mover knows of destination folders (another batch, maybe of another
        job, follows: what was fresh for the last one is not for this one)."""
        self._made_dirs.clear()
        self._fresh_dirs.clear()
        self.close_temp_folders()

    def close_temp_folders(self) -> None:
        """The temporary folders written so far go to a ``commit``: items moved after this get
        new ones (a folder being renamed into place never receives a file still unverified)."""
        self._open_temps.clear()
        self._used_temps.clear()

    # ----- entry point --------------------------------------------------------------------
    def move(self, spec: ItemSpec) -> Outcome:
        algorithm = ck.preferred_algorithm(spec.checksums)
        final = os.fspath(spec.final)
        tmp = temp_path(final)
        source = os.fspath(spec.source)
        if spec.source_root is not None:
            self._confine_source(source, spec)
        parent = os.path.dirname(final)
        folder_tmp = self._open_temps.get(parent)
        if (folder_tmp is None and self._temp_folders and parent not in self._made_dirs
                and not os.path.lexists(parent)):
            folder_tmp = self._open_temps[parent] = _make_temp_folder(parent)
        if folder_tmp is not None:
            # Nothing can be in it but what this mover writes: no check of the final name.
            tmp = os.path.join(folder_tmp, os.path.basename(final))
            try:
                note = self._write(spec, source, tmp, algorithm)
            except BaseException:
                # Cancelled, failed, or the folder removed by hand mid-job: a temporary folder
                # left empty has no commit to rename it, so it goes now.
                if folder_tmp not in self._used_temps:
                    self._open_temps.pop(parent, None)
                    with contextlib.suppress(OSError):
                        os.rmdir(folder_tmp)
                raise
            self._used_temps.add(folder_tmp)
            return Outcome("done", note, tmp, final)
        if parent not in self._made_dirs:
            if _make_folder(parent):
                # Made just now, by this mover: nothing can be in it but what it writes (and
                # a name appearing meanwhile is still never overwritten: see ``commit``).
                self._fresh_dirs.add(parent)
            self._made_dirs.add(parent)
        if parent not in self._fresh_dirs and os.path.lexists(final):
            _discard(tmp)  # a leftover of a killed worker
            return self._existing(spec, source, final, algorithm)
        try:
            note = self._write(spec, source, tmp, algorithm)
        except FileExistsError as exc:
            # A leftover of a killed worker under the temporary name: remove it, once.
            if tmp not in (exc.filename, exc.filename2):
                raise
            remove_path(tmp)
            note = self._write(spec, source, tmp, algorithm)
        except FileNotFoundError as exc:
            # The folder went away since it was made (removed by hand mid-job): make it again.
            if tmp not in (exc.filename, exc.filename2):
                raise
            self._made_dirs.discard(parent)
            self._fresh_dirs.discard(parent)
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
            note = self._write(spec, source, tmp, algorithm)
        if self._deferred:
            return Outcome("done", note, tmp, final)
        try:
            os.replace(tmp, final)
        except BaseException:
            remove_path(tmp)
            raise
        return Outcome("done", note)

    def _confine_source(self, source: str, spec: ItemSpec) -> None:
        """Refuse a source that resolves outside its store. Only a file's folder is resolved
        (once per folder): a copy opens the file itself without following a symlink
        (``_open_source``), and a link is made only to a file that is not one; a directory is
        resolved whole."""
        root = spec.source_root
        assert root is not None
        if spec.is_directory:
            inside = is_within(source, root)
        else:
            key = (os.path.dirname(source), root)
            inside = key in self._source_dirs or is_within(key[0], root)
            if inside:
                self._source_dirs.add(key)
            if inside and spec.method not in ("copy", "reflink") and os.path.islink(source):
                # A link to a link: resolve it whole (a copy opens with O_NOFOLLOW instead).
                inside = is_within(source, root)
        if not inside:
            raise ItemFailed("the instance on its store leads outside the store")

    @staticmethod
    def _open_source(source: str, root: str | None) -> int:
        try:
            return os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        # A symlink: follow it only where it stays inside the store.
        if root is not None and not is_within(source, root):
            raise ItemFailed("the instance on its store leads outside the store")
        return os.open(source, os.O_RDONLY | os.O_CLOEXEC)

    def _write(self, spec: ItemSpec, source: str, tmp: str, algorithm: str) -> str:
        """Write and verify the item under ``tmp``; on any failure nothing is left there
        (except a leftover of someone else that was already there: FileExistsError)."""
        note = ""
        try:
            if spec.method in ("hardlink", "symlink"):
                # Nothing is copied: verify the source itself, then link to it.
                self._verify(spec, ck.hash_path(source, [algorithm]), algorithm, "source")
                if spec.method == "symlink":
                    os.symlink(source, tmp, target_is_directory=spec.is_directory)
                elif spec.is_directory:
                    self._link_tree(source, tmp)
                else:
                    os.link(source, tmp)
            else:
                reflink = spec.method == "reflink"
                if spec.is_directory:
                    digest = self._copy_dir(source, tmp, algorithm, spec.read_only, reflink)
                else:
                    digest = self._copy_file(source, tmp, algorithm, spec.read_only, reflink,
                                             spec)
                self._verify(spec, digest, algorithm, "copy")
                note = f"{algorithm} verified"
        except FileExistsError as exc:
            if tmp not in (exc.filename, exc.filename2):
                remove_path(tmp)
            raise
        except BaseException:
            remove_path(tmp)
            raise
        return note

    # ----- what is already there ----------------------------------------------------------
    def _existing(self, spec: ItemSpec, source: str, final: str, algorithm: str) -> Outcome:
        if os.path.islink(final):
            if spec.method == "symlink" and os.readlink(final) == source:
                return Outcome("skipped", "already linked")
            raise ItemFailed("exists as a symbolic link; not overwritten")
        if spec.method == "hardlink" and not spec.is_directory:
            with contextlib.suppress(OSError):
                if os.path.samefile(final, source):
                    return Outcome("skipped", "already linked")
        is_dir = os.path.isdir(final)
        if is_dir != spec.is_directory:
            kind = "directory" if is_dir else "file"
            raise ItemFailed(f"exists as a {kind} of other content; not overwritten")
        if not spec.is_directory and (size := os.stat(final).st_size) != spec.size:
            raise ItemFailed(
                f"exists with other content ({size} bytes, catalogue says {spec.size}); "
                f"not overwritten")
        digest = ck.hash_path(final, [algorithm])
        if digest.size == spec.size and digest.checksums[algorithm] == spec.checksums[algorithm]:
            return Outcome("skipped", f"identical file already there ({algorithm})")
        raise ItemFailed(f"exists with other content ({algorithm} differs); not overwritten")

    @staticmethod
    def _verify(spec: ItemSpec, digest: ck.Digest, algorithm: str, what: str) -> None:
        expected = spec.checksums[algorithm]
        got = digest.checksums[algorithm]
        if digest.size != spec.size or got != expected:
            raise ItemFailed(
                f"checksum mismatch: {algorithm} of the {what} is {got} ({digest.size} bytes), "
                f"the catalogue says {expected} ({spec.size} bytes); the source is corrupt or "
                f"changed, the bad copy was removed")

    # ----- copying ------------------------------------------------------------------------
    def _copy_file(self, src: str, dst: str, algorithm: str, read_only: bool,
                   reflink: bool = False, spec: ItemSpec | None = None) -> ck.Digest:
        fin = self._open_source(src, spec.source_root if spec is not None else None)
        try:
            st = os.fstat(fin)
            if reflink and self._reflink_ok is not False:
                digest = self._try_reflink(fin, dst, algorithm)
                if digest is not None:
                    _finish_metadata(dst, st, read_only)
                    return digest
            # Created with its final permissions where the umask keeps them (no chmod).
            mode = _final_mode(st, read_only)
            # Read-write: a large file's kernel copy is read back to be hashed (``bigcopy``).
            fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                digest = None
                if st.st_size >= bigcopy.MIN_SIZE and self._bigcopy_ok:
                    # The pump's buffer is idle meanwhile: the hashing thread reads into it.
                    digest = bigcopy.copy(fin, fd, algorithm, len(self._buffer), self._check,
                                          self._buffer, durable=self._durable)
                    if digest is None:
                        self._bigcopy_ok = False
                if digest is None:
                    digest = self._pump(fin, fd, algorithm, st.st_size)
                # Metadata through the open descriptor (no second path lookup), before the
                # fsync so that one flush covers data and metadata.
                if mode & _UMASK:
                    os.chmod(fd, mode)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(fin)
        return digest

    def _pump(self, fin: int, fd: int, algorithm: str, size: int) -> ck.Digest:
        """Copy ``fin`` to ``fd``, hashing each chunk from the same buffer (one pass)."""
        hasher = ck.StreamHasher([algorithm])
        if size < len(self._buffer):
            # A small file in one read: a read shorter than asked for is the end of a regular
            # file, so no second read is needed to find it.
            data = os.read(fin, size + 1)
            _write_all(fd, data)
            self._check(len(data))
            if len(data) <= size:
                return ck.hash_bytes(data, [algorithm])
            hasher.update(data)
        buffer, view = self._buffer, self._view
        with open(fin, "rb", buffering=0, closefd=False) as reader:
            while n := reader.readinto(buffer):
                chunk = view[:n]
                hasher.update(chunk)
                _write_all(fd, chunk)
                self._check(n)
        return hasher.digest()

    def _try_reflink(self, fin: int, dst: str, algorithm: str) -> ck.Digest | None:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, fin)
            if self._fsync:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            os.unlink(dst)
            if exc.errno not in _NO_REFLINK:
                raise
            if self._reflink_ok is None:
                self._log(f"reflink not supported here ({exc.strerror}): "
                          f"falling back to a plain copy")
            self._reflink_ok = False
            return None
        os.close(fd)
        self._reflink_ok = True
        # The clone shares the source's blocks: hashing it checks what the destination holds.
        return ck.hash_file(dst, [algorithm])

    def _copy_dir(self, src: str, dst: str, algorithm: str, read_only: bool,
                  reflink: bool) -> ck.Digest:
        _make_dirs_like(src, dst)
        digests = []
        for member in ck.contained_members(Path(src)):
            digests.append((member, self._copy_file(os.path.join(src, member),
                                                    os.path.join(dst, member), algorithm,
                                                    read_only, reflink)))
        _copy_dir_mtimes(src, dst)
        return ck.manifest_digest(digests, [algorithm])

    def _link_tree(self, src: str, dst: str) -> None:
        _make_dirs_like(src, dst)
        for member in ck.contained_members(Path(src)):
            os.link(os.path.join(src, member), os.path.join(dst, member))
        _copy_dir_mtimes(src, dst)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def _discard(path: str) -> None:
    """``remove_path`` for the common cases in one system call: nothing there, or a file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:  # a directory (a MIRIAD data set's leftover) or something unusual
        remove_path(path)


def _final_mode(st: os.stat_result, read_only: bool) -> int:
    mode = stat.S_IMODE(st.st_mode) | stat.S_IRUSR
    return mode & ~0o222 if read_only else mode | stat.S_IWUSR


def _finish_metadata(path: str | int, st: os.stat_result, read_only: bool) -> None:
    os.chmod(path, _final_mode(st, read_only))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _make_folder(path: str) -> bool:
    """Make ``path`` (and its parents); True when it did not exist before."""
    try:
        os.mkdir(path)
        return True
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _make_folder(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False


_temp_folder_count = itertools.count()


def _make_temp_folder(final: str) -> str:
    """A new, empty temporary folder beside ``final`` (made with its parents), named
    ``.<name>.<pid>-<n>.hera-tmp``: unique, so two hand-overs never share one, and found by
    ``temp_folders_of`` when a killed worker left it."""
    head, tail = os.path.split(final)
    path = os.path.join(head, f".{tail}.{os.getpid()}-{next(_temp_folder_count)}{TMP_SUFFIX}")
    try:
        os.mkdir(path)
    except FileNotFoundError:
        os.makedirs(head, exist_ok=True)
        os.mkdir(path)
    return path


def temp_folders_of(final: str | os.PathLike[str]) -> list[str]:
    """The temporary folders (``_make_temp_folder``) of the destination folder ``final``."""
    head, tail = os.path.split(os.fspath(final))
    prefix = f".{tail}."
    try:
        names = os.listdir(head or ".")
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(head, name) for name in names
            if name.startswith(prefix) and name.endswith(TMP_SUFFIX)
            and name[len(prefix):-len(TMP_SUFFIX)].replace("-", "").isdigit()]


def remove_temp_folders(finals: set[str], pid: int | None) -> None:
    """Remove the temporary folders a dead process ``pid`` (None: any) left for these
    destination folders."""
    for final in finals:
        for tmp in temp_folders_of(final):
            if pid is None or os.path.basename(tmp).rsplit(".", 2)[-2].startswith(f"{pid}-"):
                remove_path(tmp)


def _read_umask() -> int:
    """The process's umask, read without changing it (threads may be creating files)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o777  # unknown: always chmod


_UMASK = _read_umask()


def _make_dirs_like(src: str, dst: str) -> None:
    # Directories stay writable (the user must be able to delete what was staged).
    os.mkdir(dst, 0o755)
    for root, dirs, _files in os.walk(src):
        rel = os.path.relpath(root, src)
        for name in dirs:
            os.makedirs(os.path.join(dst, rel, name), 0o755, exist_ok=True)


def _copy_dir_mtimes(src: str, dst: str) -> None:
    # Bottom-up, after every file is written (writing into a directory changes its mtime).
    for root, _dirs, _files in os.walk(src, topdown=False):
        rel = os.path.relpath(root, src)
        st = os.stat(root)
        os.utime(os.path.join(dst, rel), ns=(st.st_atime_ns, st.st_mtime_ns))


# ----- deferred mode: making a batch final --------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
_renameat2 = getattr(_libc, "renameat2", None)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_noreplace_ok = _renameat2 is not None


def _sync_file_systems(directories: set[str]) -> None:
    """Flush every dirty page and the journal of the file systems holding ``directories``: one
    ``syncfs`` per file system (``os.sync`` where there is no ``syncfs``)."""
    if _syncfs is None:
        os.sync()
        return
    seen: set[int] = set()
    for directory in directories:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            dev = os.fstat(fd).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs failed: {os.strerror(err)}", directory)
        finally:
            os.close(fd)


def _rename_noreplace(tmp: str, final: str) -> None:
    """Rename ``tmp`` to ``final``, failing with FileExistsError if ``final`` appeared since it
    was checked (never overwrites what someone else put there)."""
    global _noreplace_ok
    if _noreplace_ok:
        if _renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(final),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), tmp, None, final)
        # This file system cannot: check, then rename (the job's marker keeps others out).
        _noreplace_ok = False
    if os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), tmp, None, final)
    os.replace(tmp, final)


def commit(renames: list[tuple[str, str]], fsync: bool = True) -> list[OSError | None]:
    """Make a batch of deferred items final: with ``fsync``, the data of every temporary file
    goes to disk first (one ``syncfs``), then each is renamed to its final name, then the
    renames go to disk (``syncfs`` again) before this returns, so a caller that records the
    batch as done afterwards never records something a power cut could take back. Items in a
    temporary folder (``temp_folders``) are made final by renaming their folder into place,
    once for all of them; where the folder exists by then (made meanwhile by another batch),
    file by file into it.

    Returns, per item, None or the error that stopped it (its temporary file is removed; an
    existing final name is never overwritten). An error syncing the data (the disk failed or
    filled up) stops the whole batch before any rename: that error for every item. An error
    syncing the renames is raised: the files are under their final names but may not be on
    disk, so the caller must not record them (a later run finds and verifies them)."""
    if not renames:
        return []
    folders: dict[tuple[str, str], list[int]] = {}
    for i, (tmp, final) in enumerate(renames):
        if _in_temp_folder(tmp, final):
            folders.setdefault((os.path.dirname(tmp), os.path.dirname(final)), []).append(i)
    if fsync:
        try:
            _sync_file_systems({os.path.dirname(tmp) for tmp, _final in renames})
        except OSError as exc:
            for tmp, _final in renames:
                with contextlib.suppress(OSError):
                    remove_path(tmp)
            for tmp_dir, _final_dir in folders:
                with contextlib.suppress(OSError):
                    remove_path(tmp_dir)
            return [exc] * len(renames)
    errors: list[OSError | None] = [None] * len(renames)
    in_folders = {i for members in folders.values() for i in members}
    for i, (tmp, final) in enumerate(renames):
        if i not in in_folders:
            errors[i] = _rename_one(tmp, final)
    for (tmp_dir, final_dir), members in folders.items():
        try:
            _rename_noreplace(tmp_dir, final_dir)
        except FileExistsError:
            for i in members:
                errors[i] = _rename_one(*renames[i])
            with contextlib.suppress(OSError):
                remove_path(tmp_dir)
        except OSError as exc:
            for i in members:
                errors[i] = exc
            with contextlib.suppress(OSError):
                remove_path(tmp_dir)
    if fsync:
        done = {os.path.dirname(final) for (_tmp, final), error in zip(renames, errors)
                if error is None}
        if done:
            _sync_file_systems(done)
    return errors


def _in_temp_folder(tmp: str, final: str) -> bool:
    """True when ``tmp`` is ``final``'s file in a temporary folder of ``_make_temp_folder``
    (the folder is renamed, not the file). Any other temporary name elsewhere (a receiver's
    ``.hera-stage-incoming/<id>.part``) is renamed on its own: its folder is shared."""
    tmp_dir, final_dir = os.path.dirname(tmp), os.path.dirname(final)
    return (tmp_dir != final_dir and tmp_dir.endswith(TMP_SUFFIX)
            and os.path.dirname(tmp_dir) == os.path.dirname(final_dir)
            and os.path.basename(tmp) == os.path.basename(final))


def _rename_one(tmp: str, final: str) -> OSError | None:
    try:
        _rename_noreplace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            remove_path(tmp)
        return exc
    return None
