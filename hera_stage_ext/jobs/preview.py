"""What a staging job would find at its destination, for the dry run (``POST stage`` with
``dry_run``): how many of its files are already there (and would be skipped), and how many
names hold something else (and would fail, never overwritten).

The rule is the job's own (``methods.Mover._existing``): a file is already there when its final
name holds a file (or data set) of the same size whose checksum matches the catalogue's (a
``symlink`` to the same instance, or a ``hardlink`` to the same inode, without hashing).
Folders are opened below the destination without following a symlink, as the job opens them.

The work is bounded, so a preview of a large selection stays quick: each name is looked at
with one ``lstat`` (at most ``CHECK_FILES`` of them), and only a name whose size matches is
hashed, up to ``CHECK_BYTES`` in all; the names left (``not_checked``) are still found by the job
itself, which skips or refuses each as it comes.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from typing import Any

from .. import safefs
from ..catalogue import checksums as ck
from ..errors import StagingError

#: Most final names one preview looks at...
CHECK_FILES = 10_000
#: ...and most bytes it hashes (a name whose size matches, until this is spent).
CHECK_BYTES = 256 << 20
#: What ``check_destination`` reads of an item.
ITEM_KEYS = ("dest_path", "size", "is_directory", "checksums", "source_path")
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def nothing_checked(files: int) -> dict[str, Any]:
    """The preview's fields when the destination cannot be looked at from here."""
    return {"already_there": None, "already_there_bytes": None, "conflicts": None,
            "not_checked": files}


def check_destination(destination: str | os.PathLike[str], items: Iterable[Mapping[str, Any]],
                      method: str, files: int) -> dict[str, Any]:
    """Look at the final names of ``items`` (``dest_path``, ``size``, ``is_directory``,
    ``checksums``, ``source_path``) below ``destination``; ``files``: how many the job has
    (those not given, or past the limits, count as ``not_checked``)."""
    root = os.fspath(destination)
    there = there_bytes = conflicts = looked = 0
    budget = CHECK_BYTES
    with safefs.Folders([root]) as folders:
        try:
            folders.root_fd(root)
        except (OSError, StagingError):  # no folder yet: nothing can be there
            return {"already_there": 0, "already_there_bytes": 0, "conflicts": 0,
                    "not_checked": 0}
        for item in items:
            if looked >= CHECK_FILES:
                break
            looked += 1
            head, name = os.path.split(os.path.join(root, item["dest_path"]))
            try:
                found = _found(folders.get(head), name, item, method, budget)
            except (OSError, StagingError):
                found = "conflict"  # a folder on the way is a symlink, or unreadable
            if found == "absent":
                continue
            if isinstance(found, int):  # hashed, identical
                budget -= found
                found = "there"
            if found == "there":
                there += 1
                there_bytes += int(item["size"])
            elif found == "conflict":
                conflicts += 1
            elif found == "unchecked":
                looked -= 1
    return {"already_there": there, "already_there_bytes": there_bytes,
            "conflicts": conflicts, "not_checked": files - looked}


def _found(dir_fd: int, name: str, item: Mapping[str, Any], method: str,
           budget: int) -> str | int:
    """"absent", "there", "conflict", "unchecked" (the size matches, the hash budget is spent)
    or, when hashed and identical, the bytes hashed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    source = str(item.get("source_path") or "")
    if stat.S_ISLNK(st.st_mode):
        same = method == "symlink" and os.readlink(name, dir_fd=dir_fd) == source
        return "there" if same else "conflict"
    is_directory = bool(item["is_directory"])
    if method == "hardlink" and not is_directory and source:
        with contextlib.suppress(OSError):
            src = os.stat(source)
            if (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino):
                return "there"
    if stat.S_ISDIR(st.st_mode) != is_directory:
        return "conflict"
    size = int(item["size"])
    if not is_directory and st.st_size != size:
        return "conflict"
    if size > budget:
        return "unchecked"
    checksums = dict(item.get("checksums") or {})
    algorithm = next((a for a in ck.ALGORITHMS if a in checksums), None)
    if algorithm is None:  # nothing to compare with (the job refuses it)
        return "unchecked"
    fd = os.open(name, _OPEN | (os.O_DIRECTORY if is_directory else 0), dir_fd=dir_fd)
    try:
        digest = ck.hash_at(fd, [algorithm])
    finally:
        os.close(fd)
    if digest.size == size and digest.checksums[algorithm] == checksums[algorithm]:
        return max(digest.size, 1)
    return "conflict"
