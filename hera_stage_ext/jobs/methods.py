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
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..catalogue import checksums as ck

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


@dataclass(frozen=True)
class ItemSpec:
    source: Path
    final: Path
    size: int
    is_directory: bool
    checksums: dict[str, str]
    method: str
    read_only: bool = True


@dataclass(frozen=True)
class Outcome:
    state: str  # "done" | "skipped"
    note: str = ""
    # Deferred mode: the verified temporary copy still to rename to its final name (``commit``).
    tmp: str | None = None
    final: str | None = None


def temp_path(final: Path) -> Path:
    """The temporary name an item is written under, next to its final name (same file system,
    so the closing ``os.replace`` is atomic)."""
    return final.with_name(f".{final.name}{TMP_SUFFIX}")


def remove_path(path: Path) -> None:
    """Remove a file, symlink or (read-only) tree; absent is fine."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if path.is_dir():
        # Copies may be read-only already: make them writable so rmtree can unlink them.
        def _retry(func, p, _exc):  # type: ignore[no-untyped-def]
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        shutil.rmtree(path, onerror=_retry)
    else:
        path.unlink()


class Mover:
    """Moves items for one stream (thread): owns that stream's reused copy buffer.

    ``made_dirs`` (may be shared by the streams of a job) remembers the destination folders
    known to exist, so that a folder of 200 files is created (or looked up) once, not 200 times.
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
    ) -> None:
        self._buffer = bytearray(chunk_size)
        self._view = memoryview(self._buffer)
        self._check = check
        self._log = log
        # Deferred: no fsync here, ``commit`` syncs the whole batch (when it is asked to).
        self._fsync = fsync and not deferred
        self._deferred = deferred
        self._reflink_ok: bool | None = None
        self._made_dirs = made_dirs if made_dirs is not None else set()

    # ----- entry point --------------------------------------------------------------------
    def move(self, spec: ItemSpec) -> Outcome:
        algorithm = ck.preferred_algorithm(spec.checksums)
        final, tmp = spec.final, temp_path(spec.final)
        if os.path.lexists(final):
            _discard(tmp)  # a leftover of a killed worker
            return self._existing(spec, algorithm)
        parent = os.path.dirname(final)
        if parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        try:
            note = self._write(spec, tmp, algorithm)
        except FileExistsError as exc:
            # A leftover of a killed worker under the temporary name: remove it, once.
            if str(tmp) not in (str(exc.filename), str(exc.filename2)):
                raise
            remove_path(tmp)
            note = self._write(spec, tmp, algorithm)
        except FileNotFoundError as exc:
            # The folder went away since it was made (removed by hand mid-job): make it again.
            if str(exc.filename) != str(tmp) and str(exc.filename2) != str(tmp):
                raise
            self._made_dirs.discard(parent)
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
            note = self._write(spec, tmp, algorithm)
        if self._deferred:
            return Outcome("done", note, str(tmp), str(final))
        try:
            os.replace(tmp, final)
        except BaseException:
            remove_path(tmp)
            raise
        return Outcome("done", note)

    def _write(self, spec: ItemSpec, tmp: Path, algorithm: str) -> str:
        """Write and verify the item under ``tmp``; on any failure nothing is left there
        (except a leftover of someone else that was already there: FileExistsError)."""
        note = ""
        try:
            if spec.method in ("hardlink", "symlink"):
                # Nothing is copied: verify the source itself, then link to it.
                self._verify(spec, ck.hash_path(spec.source, [algorithm]), algorithm, "source")
                if spec.method == "symlink":
                    os.symlink(spec.source, tmp, target_is_directory=spec.is_directory)
                else:
                    self._link_tree(spec.source, tmp) if spec.is_directory else os.link(
                        spec.source, tmp)
            else:
                reflink = spec.method == "reflink"
                if spec.is_directory:
                    digest = self._copy_dir(spec.source, tmp, algorithm, spec.read_only, reflink)
                else:
                    digest = self._copy_file(spec.source, tmp, algorithm, spec.read_only, reflink)
                self._verify(spec, digest, algorithm, "copy")
                note = f"{algorithm} verified"
        except FileExistsError as exc:
            if str(tmp) not in (str(exc.filename), str(exc.filename2)):
                remove_path(tmp)
            raise
        except BaseException:
            remove_path(tmp)
            raise
        return note

    # ----- what is already there ----------------------------------------------------------
    def _existing(self, spec: ItemSpec, algorithm: str) -> Outcome:
        final = spec.final
        if final.is_symlink():
            if spec.method == "symlink" and os.readlink(final) == str(spec.source):
                return Outcome("skipped", "already linked")
            raise ItemFailed("exists as a symbolic link; not overwritten")
        if spec.method == "hardlink" and not spec.is_directory:
            with contextlib.suppress(OSError):
                if os.path.samefile(final, spec.source):
                    return Outcome("skipped", "already linked")
        if final.is_dir() != spec.is_directory:
            kind = "directory" if final.is_dir() else "file"
            raise ItemFailed(f"exists as a {kind} of other content; not overwritten")
        if not spec.is_directory and final.stat().st_size != spec.size:
            raise ItemFailed(
                f"exists with other content ({final.stat().st_size} bytes, catalogue says "
                f"{spec.size}); not overwritten")
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
    def _copy_file(self, src: Path, dst: Path, algorithm: str, read_only: bool,
                   reflink: bool = False) -> ck.Digest:
        if reflink and self._reflink_ok is not False:
            st = os.stat(src)
            digest = self._try_reflink(src, dst, algorithm)
            if digest is not None:
                _finish_metadata(dst, st, read_only)
                return digest
        hasher = ck.StreamHasher([algorithm])
        buffer, view = self._buffer, self._view
        with open(src, "rb", buffering=0) as fin:
            st = os.fstat(fin.fileno())
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                # One pass: each chunk is hashed and written from the same reused buffer.
                while n := fin.readinto(buffer):
                    chunk = view[:n]
                    hasher.update(chunk)
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
                    self._check(n)
                # Metadata through the open descriptor (no second path lookup), before the
                # fsync so that one flush covers data and metadata.
                _finish_metadata(fd, st, read_only)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return hasher.digest()

    def _try_reflink(self, src: Path, dst: Path, algorithm: str) -> ck.Digest | None:
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(fd, FICLONE, fin.fileno())
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

    def _copy_dir(self, src: Path, dst: Path, algorithm: str, read_only: bool,
                  reflink: bool) -> ck.Digest:
        _make_dirs_like(src, dst)
        digests = []
        for member in ck.contained_members(src):
            digests.append((member, self._copy_file(src / member, dst / member, algorithm,
                                                    read_only, reflink)))
        _copy_dir_mtimes(src, dst)
        return ck.manifest_digest(digests, [algorithm])

    def _link_tree(self, src: Path, dst: Path) -> None:
        _make_dirs_like(src, dst)
        for member in ck.contained_members(src):
            os.link(src / member, dst / member)
        _copy_dir_mtimes(src, dst)


def _discard(path: Path) -> None:
    """``remove_path`` for the common cases in one system call: nothing there, or a file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:  # a directory (a MIRIAD data set's leftover) or something unusual
        remove_path(path)


def _finish_metadata(path: Path | int, st: os.stat_result, read_only: bool) -> None:
    mode = stat.S_IMODE(st.st_mode) | stat.S_IRUSR
    mode = mode & ~0o222 if read_only else mode | stat.S_IWUSR
    os.chmod(path, mode)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _make_dirs_like(src: Path, dst: Path) -> None:
    # Directories stay writable (the user must be able to delete what was staged).
    os.mkdir(dst, 0o755)
    for root, dirs, _files in os.walk(src):
        rel = os.path.relpath(root, src)
        for name in dirs:
            os.makedirs(dst / rel / name, 0o755, exist_ok=True)


def _copy_dir_mtimes(src: Path, dst: Path) -> None:
    # Bottom-up, after every file is written (writing into a directory changes its mtime).
    for root, _dirs, _files in os.walk(src, topdown=False):
        rel = os.path.relpath(root, src)
        st = os.stat(root)
        os.utime(dst / rel, ns=(st.st_atime_ns, st.st_mtime_ns))


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
    batch as done afterwards never records something a power cut could take back.

    Returns, per item, None or the error that stopped it (its temporary file is removed; an
    existing final name is never overwritten). An error syncing the data (the disk failed or
    filled up) stops the whole batch before any rename: that error for every item. An error
    syncing the renames is raised: the files are under their final names but may not be on
    disk, so the caller must not record them (a later run finds and verifies them)."""
    if not renames:
        return []
    parents = {os.path.dirname(final) for _tmp, final in renames}
    if fsync:
        try:
            _sync_file_systems(parents)
        except OSError as exc:
            for tmp, _final in renames:
                with contextlib.suppress(OSError):
                    remove_path(Path(tmp))
            return [exc] * len(renames)
    errors: list[OSError | None] = []
    for tmp, final in renames:
        try:
            _rename_noreplace(tmp, final)
            errors.append(None)
        except OSError as exc:
            with contextlib.suppress(OSError):
                remove_path(Path(tmp))
            errors.append(exc)
    if fsync:
        _sync_file_systems(parents)
    return errors
