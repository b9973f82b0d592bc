"""Where a job writes: the destination-side operations of the engine, behind one small seam.

A staging job's destination is either a local folder (``LocalTarget``: the ``copy``,
``hardlink``, ``symlink`` and ``reflink`` methods) or a folder of the Jupyter contents manager
(``contents.ContentsTarget``: the ``contents`` method, for deployments whose files need not be on
a local file system). The engine asks its target, never the file system directly, to take the
folder (its STAGING-IN-PROGRESS marker), to write the result marker, to remove what a killed
worker left under temporary names, for the mover that writes items, and whether a folder an item
goes to still leads inside the destination. ``plan_target`` checks a requested destination and
``for_job`` rebuilds the target of a stored job (from its destination and options).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .. import safefs
from ..errors import Forbidden, InvalidRequest
from ..paths import confine, is_within
from . import markers
from .methods import TMP_SUFFIX, Mover, remove_path, temp_folders_of


class Target(Protocol):
    # Read-only to the engine (so a target whose folder is always local may say ``Path``).
    @property
    def key(self) -> str:
        """The job's ``destination`` (the busy check compares it)."""

    @property
    def local(self) -> Path | None:
        """The local folder behind it, if any (free space is checked there)."""

    @property
    def poolable(self) -> bool:
        """Whether the worker's helper processes may write its small files."""

    def options(self) -> dict[str, Any]: ...
    def acquire(self, job_id: int, owner: str, is_active: Callable[[int], bool]) -> None: ...
    def release(self, job_id: int) -> None: ...
    def ensure_in_progress(self, job_id: int, owner: str) -> None: ...
    def finish(self, job_id: int, lines: Iterable[str]) -> None: ...
    def remove_temps(self, rel_paths: Iterable[str]) -> int: ...
    def inside(self, folder: str | os.PathLike[str]) -> bool: ...
    def recheck(self, allowed_roots: Sequence[str | os.PathLike[str]]) -> None: ...
    def confine_recorded(self, allowed_roots: Sequence[str | os.PathLike[str]]) -> None: ...
    def mover(self, config: Any, check: Callable[[int], None], log: Callable[[str], None],
              made_dirs: set[str]) -> Any: ...


class LocalTarget:
    """A folder on a file system this process can reach.

    Pinned when a job takes it (``acquire``: its device and inode go into the job's options);
    every later use opens it again without following a symlink (``safefs``) and refuses it
    (``safefs.PathChanged``) when another folder, or a symlink, is there now. Whether the job
    made the folder is kept too (``made``): ``hera-stage clean`` removes only folders the
    engine made."""

    poolable = True

    def __init__(self, path: Path, pin: Sequence[int] | None = None, made: bool = False) -> None:
        self.local = path
        self.key = str(path)
        self.pin = safefs.Pin(self.key, int(pin[0]), int(pin[1])) if pin else None
        self.made = made

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pin": [self.pin.dev, self.pin.ino]} if self.pin else {}
        if self.made:  # never False: a retry takes the folder the job made, and it stays so
            out["made"] = True
        return out

    @contextlib.contextmanager
    def _open(self, create: bool = False) -> Iterator[int]:
        fd, _made = safefs.open_dir(self.key, create=create)
        try:
            if self.pin is not None:
                safefs.check_pin(fd, self.pin)
            yield fd
        finally:
            os.close(fd)

    def acquire(self, job_id: int, owner: str, is_active: Callable[[int], bool]) -> None:
        """Take the folder (made if missing) and pin it: from now on it is this folder. A
        target pinned already (a later attempt of a site's recorded job: the pin its first
        attempt took) takes only that folder: another there now, or none, is refused
        (``safefs.PathChanged``), before anything is written or made."""
        fd, made = safefs.open_dir(self.key, create=self.pin is None)
        try:
            if self.pin is not None:
                safefs.check_pin(fd, self.pin)
            markers.acquire(fd, job_id, owner, is_active, self.key, made=made)
            # A worker resuming a job that made the folder finds it made (its marker says so).
            self.made = self.made or made or markers.made_by(fd, job_id)
            self.pin = safefs.pin_of(self.key, fd)
            if made:  # its entry on disk too: the commits sync only the folders below it
                safefs.sync_folders([self.key])
        finally:
            os.close(fd)

    def release(self, job_id: int) -> None:
        with contextlib.suppress(OSError), self._open() as fd:
            markers.release(fd, job_id)

    def ensure_in_progress(self, job_id: int, owner: str) -> None:
        # Made again if it was removed, unless it is pinned: then it is not the job's folder.
        with self._open(create=self.pin is None) as fd:
            markers.ensure_in_progress(fd, job_id, owner)

    def finish(self, job_id: int, lines: Iterable[str]) -> None:
        with self._open() as fd:
            markers.finish(fd, job_id, lines)

    def remove_temps(self, rel_paths: Iterable[str]) -> int:
        """Remove the temporary files of these items and the temporary folders of their
        folders (``Mover(temp_folders=True)``: only unrecorded files are ever in one)."""
        removed = 0
        folders = set()
        with safefs.Folders([self.pin or self.key]) as open_folders:
            for rel in rel_paths:
                folders.add(os.path.dirname(rel))
                head, tail = os.path.split(os.path.join(self.key, rel))
                try:
                    dir_fd = open_folders.get(head)
                except FileNotFoundError:
                    continue
                tmp = f".{tail}{TMP_SUFFIX}"
                if safefs.lexists(dir_fd, tmp):
                    safefs.remove(dir_fd, tmp)
                    removed += 1
            for folder in folders:
                if folder:
                    for tmp in temp_folders_of(os.path.join(self.key, folder), open_folders):
                        remove_path(tmp, open_folders)
                        removed += 1
        return removed

    def inside(self, folder: str | os.PathLike[str]) -> bool:
        return is_within(folder, self.local)

    def recheck(self, allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        """Still inside the roots, and still itself (not a folder swapped for a symlink)."""
        if allowed_roots and confine(self.key, allowed_roots, what="destination") != self.local:
            raise InvalidRequest(f"the destination {self.local} no longer resolves to itself")

    def confine_recorded(self, allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        """A site's recorded job, before the user's worker takes the folder: inside the
        worker's own roots, and itself (no symlink on the way); Forbidden else."""
        if confine(self.key, allowed_roots, what="destination") != self.local:
            raise Forbidden(f"the destination {self.key} does not resolve to itself "
                            f"(a symbolic link on the way)")

    def mover(self, config: Any, check: Callable[[int], None], log: Callable[[str], None],
              made_dirs: set[str]) -> Mover:
        return Mover(config.chunk_size, check, log, config.fsync, deferred=True,
                     made_dirs=made_dirs, root=self.pin, roots=[self.key])


def plan_target(destination: str, method: str, allowed_roots: Sequence[str | os.PathLike[str]],
                base: str | os.PathLike[str] | None,
                contents: Mapping[str, Any] | None = None) -> Target:
    """The checked target of a request (nothing is written): Forbidden outside the roots,
    InvalidRequest when it exists and is not a folder."""
    if method == "contents":
        from .contents import ContentsTarget  # jupyter_server: only for this method

        return ContentsTarget.plan(destination, contents, allowed_roots)
    dest = confine(destination, allowed_roots, base=base, what="destination",
                   name_roots=True)
    if dest.exists() and not dest.is_dir():
        raise InvalidRequest(f"destination {destination!r} exists and is not a directory")
    return LocalTarget(dest)


def for_job(destination: str, method: str, options: Mapping[str, Any] | None) -> Target:
    """The target of a stored job."""
    if method == "contents":
        from .contents import ContentsTarget

        return ContentsTarget(destination, (options or {})["contents"])
    options = options or {}
    return LocalTarget(Path(destination), options.get("pin"), bool(options.get("made")))
