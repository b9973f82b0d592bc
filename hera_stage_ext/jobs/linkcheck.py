"""The one rule for when ``hardlink`` and ``symlink`` staging may hand a user an archive file.

Both methods give the user the store's own inode, not a copy: whoever can write that inode
changes the archive's file (and the archive then serves the edited bytes). So a store file is
linked only when the staging user cannot write it: owned by another account and with no write
bit the user holds through a group or as "other", or immutable (``chattr +i``). Otherwise the
item is refused with the reason and a method that copies (``reflink`` or ``copy``).

Used at launch (``plan``) and again at move time (``methods``, on the descriptor the link is made
from, so a file changed since the launch is judged as it is).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import stat
from collections.abc import Collection

#: ioctl FS_IOC_GETFLAGS (linux/fs.h) and its immutable flag FS_IMMUTABLE_FL.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x00000010

_SUGGESTION = "stage it with method 'reflink' or 'copy' instead"


def link_exposure(st: os.stat_result, uid: int, gids: Collection[int], *,
                  immutable: bool = False) -> str | None:
    """Why linking the store file ``st`` would let the account ``uid`` (in groups ``gids``)
    change the archive's copy, or None when it cannot. ``immutable``: the file carries the
    immutable attribute (``is_immutable``), which no ownership or mode can undo."""
    if immutable:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        reason = f"the store file is owned by the staging account (uid {uid}), which can write it"
    elif mode & stat.S_IWGRP and st.st_gid in gids:
        reason = f"the store file is writable by its group (gid {st.st_gid}), one of the user's"
    elif mode & stat.S_IWOTH:
        reason = "the store file is writable by every account"
    else:
        return None
    return (f"not linked: {reason}; a link would let the staged file change the archive; "
            f"{_SUGGESTION}")


def is_immutable(fd: int) -> bool:
    """True when the open file carries the immutable attribute (False where the file system
    cannot say)."""
    flags = array.array("i", [0])
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        return bool(flags[0] & _FS_IMMUTABLE_FL)
    return False


def staging_identity() -> tuple[int, frozenset[int]]:
    """The account this process stages as: its effective uid and every group it holds."""
    return os.geteuid(), frozenset((os.getegid(), *os.getgroups()))
