"""Race-free file operations: folders reached without following a symbolic link, and every
file created, renamed, linked or removed relative to its folder's open descriptor.

A path is checked (``paths.confine``) when a request arrives; a user can change the tree any
moment after. So the code that writes where a user can (staging destinations, the folder an
upload reads, the stores) never hands the kernel a whole path: it opens folders one component at
a time with ``O_NOFOLLOW`` (or in one ``openat2`` call with ``RESOLVE_NO_SYMLINKS`` where the
kernel has it), and does everything else with ``*at`` calls on those descriptors. A folder
swapped for a symlink at any moment is then refused (``PathChanged``), never written through.
Stored paths are resolved when they are checked, so a symlink anywhere on the way means the
tree changed since.

Owns: ``open_dir`` (from ``/``) and ``open_beneath`` (below an open folder), ``Folders`` (a
bounded cache of open folders below pinned roots, one per mover: per-file cost stays one
dictionary lookup), ``Pin`` (a folder's identity, recorded when a job takes it), file creation
(``create``), ``rename_noreplace``, ``remove`` (a tree, never following a link), ``tree``
(what lies below an open folder) and ``sync_folders`` (new entries on disk: the folders that
changed and those above them up to their root).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PASS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # search permission only
_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_RENAME_NOREPLACE = 1
_noreplace_ok = _renameat2 is not None
_linkat = getattr(_libc, "linkat", None)
if _linkat is not None:
    _linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_AT_EMPTY_PATH = 0x1000
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
#: Whether ``linkat(fd, "", ..., AT_EMPTY_PATH)`` links a file this process opened (Linux 6.10
#: and later for any process that opened it; before, only with CAP_DAC_READ_SEARCH): it saves
#: the kernel the walk of ``/proc/self/fd/N`` (2-3 us of a hard link's ~20 on ext4).
_empty_path_ok = _linkat is not None

# openat2(2): one call resolves a whole path without following any symlink.
_SYS_OPENAT2 = 437  # the same number on every Linux architecture (a "common" syscall)
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_openat2_ok = True


class PathChanged(OSError):
    """A folder on a stored path is a symbolic link now, or another folder than the one pinned:
    the tree changed since the path was checked, and nothing is done through it."""

    def __init__(self, message: str, path: str, err: int = errno.ELOOP) -> None:
        super().__init__(err, message, path)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[PathChanged], tuple[str, str, int]]:
        """Pickled as built (copy helpers send it back); ``__init__`` set the path and the
        errno, which OSError only types as optional."""
        return PathChanged, (self.message, str(self.filename), self.errno or errno.ELOOP)


class Pin(NamedTuple):
    """A folder and its identity (device, inode) when it was taken: a later open that finds
    another folder (or a symlink) at ``path`` is refused."""

    path: str
    dev: int
    ino: int


def _changed(path: str, what: str = "a folder on the way") -> PathChanged:
    return PathChanged(f"{path}: {what} is a symbolic link or not a folder now (the tree changed "
                       f"since it was checked); nothing is read or written through it", path)


def _openat2(dir_fd: int, rel: str, flags: int, mode: int, resolve: int) -> int:
    """openat2, or -1 when the kernel does not have it (the caller walks instead)."""
    global _openat2_ok
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, resolve)
    path = os.fsencode(rel)
    for _ in range(8):
        fd = _syscall(_SYS_OPENAT2, ctypes.c_int(dir_fd), ctypes.c_char_p(path),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.ENOSYS:  # an older kernel (or a filter that hides the call)
            _openat2_ok = False
            return -1
        if err != errno.EAGAIN:  # EAGAIN: a rename raced the lookup; try again
            raise OSError(err, os.strerror(err), rel)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), rel)


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise PathChanged(f"{rel}: '..' is not followed", rel, errno.EXDEV)
    return parts


def _walk(dir_fd: int, parts: list[str], create: bool, mode: int, shown: str) -> tuple[int, bool]:
    """Open the folder ``parts`` below ``dir_fd`` one component at a time (O_NOFOLLOW), making
    missing ones with ``create``; returns (descriptor, whether the last one was made here)."""
    fd = os.dup(dir_fd) if not parts else -1
    made = False
    current = dir_fd
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            made = False
            while True:
                try:
                    fd = os.open(name, _DIR if last else _PASS, dir_fd=current)
                    break
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, mode, dir_fd=current)
                        made = True
                    except FileExistsError:
                        pass
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _changed(shown) from None
                    raise
            if current != dir_fd:
                os.close(current)
            current = fd
        return fd, made
    except BaseException:
        if current != dir_fd:
            os.close(current)
        raise


def open_beneath(dir_fd: int, rel: str, flags: int = _DIR, mode: int = 0o644, *,
                 inner_links: bool = False, shown: str | None = None) -> int:
    """Open ``rel`` below the folder ``dir_fd``, never leaving it and following no symlink
    (``inner_links``: symlinks that stay below it are followed, where the kernel can check
    that; elsewhere they are refused). ``flags`` are ``os.open``'s."""
    shown = shown or rel
    if _openat2_ok:
        resolve = _RESOLVE_BENEATH | (0 if inner_links else _RESOLVE_NO_SYMLINKS)
        try:
            fd = _openat2(dir_fd, rel, flags | (0 if inner_links else os.O_NOFOLLOW), mode,
                          resolve)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV):
                raise _changed(shown, "a component") from None
            if exc.errno == errno.ENOTDIR and flags & os.O_DIRECTORY:
                raise _changed(shown) from None
            exc.filename = shown
            raise
        if fd >= 0:
            return fd
    parts = _parts(rel)
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    parent, _made = _walk(dir_fd, parts[:-1], False, 0, shown) if parts[:-1] else (
        os.dup(dir_fd), False)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and flags & os.O_DIRECTORY):
            raise _changed(shown, "a component") from None
        exc.filename = shown
        raise
    finally:
        os.close(parent)


_root_fd: int | None = None


def _slash() -> int:
    global _root_fd
    if _root_fd is None:
        _root_fd = os.open("/", _PASS & ~os.O_NOFOLLOW)
    return _root_fd


def open_dir(path: str, *, create: bool = False, mode: int = 0o755,
             below: int | None = None, shown: str | None = None) -> tuple[int, bool]:
    """Open the folder ``path`` (absolute; or relative to the open folder ``below``) without
    following any symlink on the way; ``create`` makes what is missing (``mode``). Returns the
    descriptor (read-only, for listing and ``syncfs``) and whether the folder was made here.
    Raises PathChanged when a component is a symlink or not a folder."""
    start = _slash() if below is None else below
    rel = path.lstrip("/") if below is None else path
    shown = shown or path
    if not rel or rel == ".":
        return os.open(".", _DIR & ~os.O_NOFOLLOW, dir_fd=start), False
    if _openat2_ok:
        try:
            fd = _openat2(start, rel, _DIR, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
            if fd >= 0:
                return fd, False
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise _changed(shown) from None
            exc.filename = shown
            raise
    return _walk(start, _parts(rel), create, mode, shown)


def check_pin(fd: int, pin: Pin) -> None:
    """Refuse (PathChanged) when the open folder ``fd`` is not the one ``pin`` recorded."""
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (pin.dev, pin.ino):
        raise PathChanged(f"{pin.path} is not the folder it was when the job took it (it was "
                          f"replaced since); nothing is written into it", pin.path, errno.ESTALE)


def pin_of(path: str, fd: int) -> Pin:
    st = os.fstat(fd)
    return Pin(path, st.st_dev, st.st_ino)


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` ('' for the root itself), or None when not below it."""
    if path == root:
        return ""
    if root == "/":
        return path[1:] if path.startswith("/") else None
    if path.startswith(root) and path[len(root)] == "/":
        return path[len(root) + 1:]
    return None


class Folders:
    """Open folders by path, below pinned roots, cached (at most ``size``, least recently used
    closed first): a mover opens each destination folder once, not once per file. A path
    under no root is opened from ``/`` (no symlink followed either way).

    Descriptors returned are the cache's: do not close them; valid until the next ``get``
    that may evict them (at least the last ``size - 1`` stay). One per thread."""

    def __init__(self, roots: Iterable[Pin | str] = (), size: int = 256) -> None:
        # Longest roots first, so a path goes to the deepest root it is under.
        self._roots: list[Pin | str] = sorted(
            roots, key=lambda r: -len(r.path if isinstance(r, Pin) else r))
        self._root_fds: dict[str, int] = {}
        self._open: OrderedDict[str, int] = OrderedDict()
        self.size = max(2, size)

    def root_fd(self, root: Pin | str, create: bool = False) -> int:
        """The open root (a pinned one must exist and be itself; another is made with
        ``create``)."""
        return self._open_root(root, create)[0]

    def _open_root(self, root: Pin | str, create: bool) -> tuple[int, bool]:
        path = root.path if isinstance(root, Pin) else root
        fd = self._root_fds.get(path)
        if fd is not None:
            return fd, False
        fd, made = open_dir(path, create=create and not isinstance(root, Pin))
        try:
            if isinstance(root, Pin):
                check_pin(fd, root)
        except BaseException:
            os.close(fd)
            raise
        self._root_fds[path] = fd
        return fd, made

    def get(self, path: str, create: bool = False) -> int:
        """The open folder ``path`` (made, with its parents, when missing and ``create``)."""
        fd = self._open.get(path)
        if fd is not None:
            self._open.move_to_end(path)
            return fd
        return self.open(path, create)[0]

    def open(self, path: str, create: bool = False) -> tuple[int, bool]:
        """``get``, also saying whether the folder was made just now (never from the cache)."""
        fd = self._open.get(path)
        if fd is not None:
            self._open.move_to_end(path)
            return fd, False
        for root in self._roots:
            rel = _under(path, root.path if isinstance(root, Pin) else root)
            if rel is not None:
                start, made = self._open_root(root, create)
                if not rel:
                    return start, made
                fd, made = open_dir(rel, create=create, below=start, shown=path)
                break
        else:
            fd, made = open_dir(path, create=create)
        self._open[path] = fd
        if len(self._open) > self.size:
            _old, old_fd = self._open.popitem(last=False)
            os.close(old_fd)
        return fd, made

    def split(self, path: str, create: bool = False) -> tuple[int, str]:
        """(the open folder holding ``path``, its last component)."""
        head, tail = os.path.split(path)
        return self.get(head, create), tail

    def forget(self, path: str | None = None) -> None:
        """Close the folder ``path`` and those below it (removed or renamed), or every one."""
        for key in [k for k in self._open
                    if path is None or k == path or k.startswith(path.rstrip("/") + "/")]:
            os.close(self._open.pop(key))
        if path is None:
            for fd in self._root_fds.values():
                os.close(fd)
            self._root_fds.clear()

    def close(self) -> None:
        self.forget()

    def __enter__(self) -> Folders:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def sync_folders(changed: Iterable[str], roots: Iterable[Pin | str] = (),
                 folders: Folders | None = None,
                 sync: Callable[[Sequence[int]], None] | None = None) -> None:
    """``fsync`` each folder of ``changed`` (absolute paths) and every folder above it up to the
    deepest of ``roots`` it is under (one under no root: itself and its parent), deepest first,
    each once: new names in them (and a folder made or renamed into place, an entry of its
    parent) are on disk when this returns, without waiting for the rest of the file system as
    ``syncfs`` would. Folders are opened through ``folders`` (the caller's cache, below its
    pinned roots) or a cache of its own below ``roots``; ``sync`` (default: ``os.fsync`` of
    each in turn) is given their descriptors in groups (a pool may sync a group at once)."""
    root_paths = sorted((r.path if isinstance(r, Pin) else r for r in roots), key=len,
                        reverse=True)
    todo: set[str] = set()
    for folder in changed:
        root = next((r for r in root_paths if _under(folder, r) is not None), None)
        while folder not in todo:
            todo.add(folder)
            if root is None:
                todo.add(os.path.dirname(folder))
                break
            if folder == root or folder == "/":
                break
            folder = os.path.dirname(folder)
    order = sorted(todo, key=len, reverse=True)
    with contextlib.ExitStack() as stack:
        if folders is None:
            folders = stack.enter_context(Folders(roots))
        # In groups smaller than the cache: every descriptor of a group stays open meanwhile.
        step = max(1, folders.size // 2)
        for start in range(0, len(order), step):
            fds = [folders.get(path) for path in order[start:start + step]]
            if sync is None:
                for fd in fds:
                    os.fsync(fd)
            else:
                sync(fds)


# ----- operations on (folder descriptor, name) ---------------------------------------------
def create(dir_fd: int, name: str, mode: int = 0o644, flags: int = os.O_WRONLY) -> int:
    """A new file ``name`` in ``dir_fd``: O_EXCL (FileExistsError when anything is there, a
    symlink included: nothing is ever written through one)."""
    return os.open(name, flags | _NEW, mode, dir_fd=dir_fd)


def lexists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def link_open_file(fd: int, dir_fd: int, name: str) -> None:
    """Hard-link the open file ``fd`` (the inode itself, not whatever its path holds now) as
    ``name`` in ``dir_fd``: ``linkat`` with ``AT_EMPTY_PATH`` where the kernel lets this process
    do it, else through ``/proc/self/fd``, which also says what is wrong (``os.link``'s errors,
    whichever way a link fails)."""
    global _empty_path_ok
    if _empty_path_ok and _linkat is not None:
        # (``os.fsencode`` on Linux, without its Python call: this runs per file.)
        if _linkat(fd, b"", dir_fd, name.encode(_FS_ENCODING, _FS_ERRORS),
                   _AT_EMPTY_PATH) == 0:
            return
        # Refused (an older kernel without the privilege says ENOENT) or failed for a reason
        # of its own: the other way either makes the link, and AT_EMPTY_PATH is not tried
        # again, or raises the error.
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        _empty_path_ok = False
        return
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str,
                     shown: str | None = None) -> None:
    """Rename ``src`` (in ``src_fd``) to ``dst`` (in ``dst_fd``), never over an existing name
    (FileExistsError). Where the file system cannot refuse atomically: check, then rename."""
    global _noreplace_ok
    if _noreplace_ok and _renameat2 is not None:
        if _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), shown or src, None, shown or dst)
        _noreplace_ok = False
    if lexists(dst_fd, dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), shown or src, None,
                              shown or dst)
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd``: a file, a symlink (itself, never what it points at) or a
    whole tree (descriptor by descriptor, never following a link); absent is fine."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: unlink of a directory on some file systems
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        _empty(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dir_fd)


def _empty(fd: int) -> None:
    with os.scandir(fd) as entries:
        children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in children:
        if is_dir:
            try:
                sub = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                continue
            try:
                _empty(sub)
            finally:
                os.close(sub)
            try:
                os.rmdir(name, dir_fd=fd)
            except PermissionError:
                os.chmod(fd, 0o700)  # a read-only folder of a copy: writable to empty it
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
        else:
            try:
                os.unlink(name, dir_fd=fd)
            except PermissionError:
                os.chmod(fd, 0o700)
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass


def remove_path(path: str, folders: Folders | None = None) -> None:
    """``remove`` by path: its folder opened without following a symlink."""
    head, tail = os.path.split(path.rstrip("/"))
    if folders is not None:
        remove(folders.get(head), tail)
        folders.forget(path)
        return
    try:
        fd, _made = open_dir(head)
    except FileNotFoundError:
        return
    try:
        remove(fd, tail)
    finally:
        os.close(fd)


def tree(dir_fd: int) -> tuple[list[str], list[str]]:
    """What lies below the open folder ``dir_fd``, as ``os.walk`` sees it without following
    links, but descriptor by descriptor: (its folders, parents first; every other entry, as
    ``checksums.directory_members`` orders them), as relative paths. A symlink to a folder is
    neither (``os.walk`` lists it and does not enter it); a symlink to anything else is a
    member (opened later with ``open_beneath``, which keeps it inside)."""
    folders: list[str] = []
    members: list[str] = []

    def walk(fd: int, prefix: str) -> None:
        with os.scandir(fd) as entries:
            children = sorted((e.name, e.is_dir(), e.is_symlink()) for e in entries)
        for name, is_dir, is_link in children:
            if is_dir and is_link:
                continue
            if not is_dir:
                members.append(f"{prefix}{name}")
                continue
            folders.append(f"{prefix}{name}")
            sub = os.open(name, _DIR, dir_fd=fd)
            try:
                walk(sub, f"{prefix}{name}/")
            finally:
                os.close(sub)

    walk(dir_fd, "")
    members.sort(key=lambda m: m.encode("utf-8", "surrogateescape"))
    return folders, members
