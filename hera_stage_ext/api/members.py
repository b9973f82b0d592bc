"""``GET files/<name>/members``: what a directory data set (a MIRIAD ``.uv`` folder) holds, for
the data set's page in JupyterLab: each member's path inside it, its size and whether it is a
folder, read from one available instance on an online store (confined to its store's root).

Only names and sizes are read, with ``lstat`` (a symbolic link inside the data set is listed as
a link, never followed), and at most ``MAX_MEMBERS`` are listed.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..core import Core
from ..errors import InvalidRequest
from .base import BaseHandler
from .content import online_instance_path

#: Most members listed; the reply says when there are more.
MAX_MEMBERS = 10_000


def list_members(core: Core, name: str) -> dict[str, Any]:
    """The members of data set ``name``: ``{"name", "members": [{"path", "size", "type"}],
    "truncated"}``; InvalidRequest when ``name`` is a flat file."""
    root = online_instance_path(core, name)
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise InvalidRequest(f"{name!r} is a file, not a data set folder: it has no members")
    members: list[dict[str, Any]] = []
    truncated = False
    for folder, dirs, files in os.walk(root):  # never follows symbolic links to folders
        dirs.sort()
        for entry in sorted(dirs) + sorted(files):
            if len(members) >= MAX_MEMBERS:
                truncated = True
                break
            path = os.path.join(folder, entry)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue  # removed while we looked
            kind = ("folder" if stat.S_ISDIR(info.st_mode)
                    else "link" if stat.S_ISLNK(info.st_mode) else "file")
            members.append({"path": os.path.relpath(path, root),
                            "size": info.st_size if kind == "file" else None, "type": kind})
        if truncated:
            break
    return {"name": name, "members": members, "truncated": truncated}


class FileMembersHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply(await self.call(list_members, self.core, name))
