"""Staged folders on the user's side: what each still holds of what was staged into it, and the
removal of what is still the staged data (``hera-stage clean``, ``POST staged/clean``).

Runs as the user, in the user's own server (never in a site service, which must not touch
users' folders), from the records ``lifecycle.staged_records`` gives. Nothing is removed but
what a job staged and the folder still holds unchanged, and the engine's marker files:

- the folder must still resolve to itself inside the allowed roots (no symbolic link on the
  way) and be the folder the job took (its pin: device and inode); else nothing is touched;
- it is walked descriptor by descriptor (``safefs``), never following a symbolic link: a
  staged folder swapped for a link is not entered, a link is only ever removed as itself
  when it is a ``symlink`` job's own link to its store file;
- each staged entry is checked against the record: a file by kind and size, then by its
  checksum (read once; the same open file is then unlinked only if the name still holds that
  inode), a data set's folder by its directory digest, a ``symlink`` job's link by its target;
- anything else (a file the user placed beside the staged ones, a staged file they changed)
  stays, and so does every folder on its way. The engine's own folders (the destination when
  a job made it, and the folders on the way to staged entries inside it) are removed once
  empty; a folder that existed before the job is never removed.

Read-only staged data is removable by its owner: staged files are read-only, their folders
writable; a folder of the engine's that was made read-only since (``chmod -R a-w``) is made
writable for its owner when something in it is removed (``_writable``; inside a data set,
``safefs.remove``). A file's own mode is never changed (a ``hardlink`` job's file is the
store's inode), nor a folder of the user's.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import safefs
from ..catalogue import checksums as ck
from ..errors import InvalidRequest, NotFound, StagingError
from ..paths import confine
from ..states import FolderState
from . import markers

MARKERS = (markers.IN_PROGRESS, markers.SUCCEEDED, markers.ERRORS)
#: Most paths a report lists of each kind (the counts are whole).
SHOWN = 50
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
T = TypeVar("T")


@dataclass
class _Survey:
    """What one walk of a staged folder found (and, cleaning, did)."""

    verify: bool
    remove: bool
    present: int = 0
    present_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[dict[str, str]] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    removed: int = 0
    removed_bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def change(self, path: str, reason: str) -> None:
        self.changed.append({"path": path, "reason": reason})

    def error(self, path: str, exc: OSError) -> None:
        self.errors.append({"path": path, "reason": exc.strerror or str(exc)})


def _layout(entries: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, dict[str, Any]]],
                                                         dict[str, set[str]]]:
    """(folder -> name -> staged entry, folder -> names of folders on the way below it)."""
    wanted: dict[str, dict[str, dict[str, Any]]] = {}
    below: dict[str, set[str]] = {}
    for entry in entries:
        parts = [p for p in entry["path"].split("/") if p]
        if not parts or ".." in parts or "." in parts:
            continue  # never a job's path; nothing is done with it
        for depth in range(len(parts) - 1):
            below.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
        wanted.setdefault("/".join(parts[:-1]), {})[parts[-1]] = entry
    return wanted, below


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _check(fd: int, name: str, st: os.stat_result, entry: dict[str, Any],
           verify: bool) -> tuple[str | None, tuple[int, int] | None]:
    """(why the entry is not the staged one any more, or None; the verified file's identity)."""
    mode = st.st_mode
    if entry.get("link"):
        if not stat.S_ISLNK(mode):
            return "not the staged link any more", None
        if os.readlink(name, dir_fd=fd) != entry["link"]:
            return "a link to something else now", None
        return None, None
    if stat.S_ISLNK(mode):
        return "a symbolic link now (not followed)", None
    if entry["directory"]:
        if not stat.S_ISDIR(mode):
            return "not a folder any more", None
        if not verify:
            return None, None
        dfd = safefs.open_beneath(fd, name)
        try:
            digest = ck.hash_at(dfd, [entry["algorithm"]])
        finally:
            os.close(dfd)
    else:
        if not stat.S_ISREG(mode):
            return "not a plain file any more", None
        if st.st_size != entry["size"]:
            return f"{st.st_size} bytes now, {entry['size']} staged", None
        if not verify:
            return None, None
        ffd = os.open(name, _FILE, dir_fd=fd)
        try:
            fst = os.fstat(ffd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                return "replaced while it was checked", None
            digest = ck.hash_fd(ffd, [entry["algorithm"]])
        finally:
            os.close(ffd)
    if digest.checksums[entry["algorithm"]] != entry["checksum"] or (
            digest.size != entry["size"]):
        return f"its content changed ({entry['algorithm']} differs from what was staged)", None
    return None, (st.st_dev, st.st_ino)


def _remove_entry(fd: int, name: str, entry: dict[str, Any],
                  identity: tuple[int, int] | None) -> bool:
    """Remove a verified entry; False when the name holds something else by now."""
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if entry.get("link"):
        if not stat.S_ISLNK(st.st_mode) or os.readlink(name, dir_fd=fd) != entry["link"]:
            return False
        os.unlink(name, dir_fd=fd)
    elif entry["directory"]:
        if not stat.S_ISDIR(st.st_mode) or (
                identity is not None and (st.st_dev, st.st_ino) != identity):
            return False
        safefs.remove(fd, name)
    else:
        if identity is None or (st.st_dev, st.st_ino) != identity:
            return False
        os.unlink(name, dir_fd=fd)
    return True


def _walk(fd: int, folder: str, wanted: dict[str, dict[str, dict[str, Any]]],
          below: dict[str, set[str]], survey: _Survey, engine_folders: bool) -> bool:
    """Survey (and clean) the open folder ``folder`` of a staged folder; True when it is
    empty afterwards (nothing but what was removed was in it)."""
    entries = wanted.get(folder, {})
    on_way = below.get(folder, set())
    left = 0
    seen: set[str] = set()
    found_markers: list[str] = []
    names = sorted(os.listdir(fd))
    for name in names:
        path = _join(folder, name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not folder and name in MARKERS and stat.S_ISREG(st.st_mode):
            found_markers.append(name)  # last: they go only if no staged data stays
            continue
        entry = entries.get(name)
        if entry is not None:
            seen.add(name)
            try:
                reason, identity = _check(fd, name, st, entry, survey.verify)
            except OSError as exc:
                reason, identity = f"cannot be read: {exc.strerror or exc}", None
            if reason is not None:
                survey.change(path, reason)
                left += 1
                continue
            survey.present += 1
            survey.present_bytes += entry["size"]
            if not survey.remove:
                left += 1
                continue
            try:
                if _writable(fd, engine_folders, _remove_entry, fd, name, entry, identity):
                    survey.removed += 1
                    survey.removed_bytes += entry["size"]
                else:
                    survey.change(path, "replaced while it was checked")
                    left += 1
            except OSError as exc:
                survey.error(path, exc)
                left += 1
            continue
        if name in on_way and stat.S_ISDIR(st.st_mode):
            try:
                sub = safefs.open_beneath(fd, name)
            except OSError as exc:  # swapped for a link since the stat: not entered
                survey.foreign.append(path)
                survey.error(path, exc)
                left += 1
                continue
            try:
                empty = _walk(sub, path, wanted, below, survey, engine_folders)
            finally:
                os.close(sub)
            if empty and survey.remove and engine_folders:
                try:
                    _writable(fd, True, os.rmdir, name, dir_fd=fd)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        survey.error(path, exc)
            left += 1
            continue
        # Anything else stays: a user's file, a link (never followed), a folder of theirs.
        survey.foreign.append(path + ("/" if stat.S_ISDIR(st.st_mode) else ""))
        left += 1
    for name in sorted(set(entries) - seen):
        survey.missing.append(_join(folder, name))
    for name in sorted(on_way - set(names)):
        _all_missing(_join(folder, name), wanted, below, survey)
    for name in found_markers:
        if survey.remove and not _staged_left(survey):
            _unlink(fd, name, name, survey, engine_folders)
        else:
            left += 1
    return left == 0


def _writable(fd: int, engine_folder: bool, action: Callable[..., T], *args: Any,
              **kwargs: Any) -> T:
    """``action(*args)``, removing something in the open folder ``fd``; when the folder is
    read-only and the engine's own (made by a job, inside a folder it made), it is made
    writable for its owner and the action tried again (a folder of the user's never is)."""
    try:
        return action(*args, **kwargs)
    except PermissionError:
        if not engine_folder:
            raise
        os.chmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRWXU)
        return action(*args, **kwargs)


def _staged_left(survey: _Survey) -> bool:
    """Whether staged data stays in the folder (changed entries, or ones not removed): then
    its markers stay too, saying what was staged."""
    return bool(survey.changed or survey.errors)


def _all_missing(folder: str, wanted: dict[str, dict[str, dict[str, Any]]],
                 below: dict[str, set[str]], survey: _Survey) -> None:
    survey.missing.extend(_join(folder, name) for name in sorted(wanted.get(folder, {})))
    for name in sorted(below.get(folder, ())):
        _all_missing(_join(folder, name), wanted, below, survey)


def _unlink(fd: int, name: str, path: str, survey: _Survey, engine_folder: bool) -> None:
    try:
        _writable(fd, engine_folder, os.unlink, name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        survey.error(path, exc)


def _shown(values: list[Any]) -> list[Any]:
    return values[:SHOWN]


def examine(record: dict[str, Any], allowed_roots: Sequence[str], *, verify: bool = False,
            remove: bool = False) -> dict[str, Any]:
    """A staged folder's report: ``state`` (``intact``, ``changed``, ``gone``, ``moved``,
    ``busy``), what it holds of what was staged, what else; with ``remove``, after removing
    what is still the staged data (``verify``: by checksum, not only name and size)."""
    out = {key: record[key] for key in ("destination", "jobs", "files", "bytes", "expires_at",
                                        "expired", "created_at", "finished_at", "made")}
    destination = record["destination"]
    if record["active"]:
        return {**out, "state": FolderState.BUSY,
                "reason": "a job is still staging into it; cancel or wait for it first"}
    survey = _Survey(verify=verify, remove=remove)
    try:
        if str(confine(destination, allowed_roots, what="staged folder")) != destination:
            return {**out, "state": FolderState.MOVED, "reason": "the path leads elsewhere now (a "
                    "symbolic link on the way); nothing is read or removed through it"}
        fd, _made = safefs.open_dir(destination)
    except FileNotFoundError:
        return {**out, "state": FolderState.GONE, "reason": "the folder is not there any more"}
    except StagingError as exc:  # outside the allowed roots (the roots changed since)
        return {**out, "state": FolderState.MOVED, "reason": exc.message}
    except OSError as exc:  # safefs.PathChanged: a link or not a folder now
        return {**out, "state": FolderState.MOVED, "reason": str(exc)}
    try:
        pin = record.get("pin")
        st = os.fstat(fd)
        if pin and (st.st_dev, st.st_ino) != (pin[0], pin[1]):
            return {**out, "state": FolderState.MOVED,
                    "reason": "another folder is at this path now (the one staged into was "
                    "moved or replaced); nothing is removed"}
        wanted, below = _layout(record["entries"] or ())
        empty = _walk(fd, "", wanted, below, survey, engine_folders=bool(record["made"]))
    finally:
        os.close(fd)
    folder_removed = False
    if remove and empty and record["made"] and not survey.errors:
        folder_removed = _remove_folder(destination, st, survey)
    intact = not (survey.missing or survey.changed or survey.foreign)
    report = {
        **out, "state": FolderState.INTACT if intact else FolderState.CHANGED,
        "present_files": survey.present, "present_bytes": survey.present_bytes,
        "missing": _shown(survey.missing), "missing_count": len(survey.missing),
        "changed": _shown(survey.changed), "changed_count": len(survey.changed),
        "foreign": _shown(survey.foreign), "foreign_count": len(survey.foreign),
        "verified": verify,
    }
    if remove:
        report.update(removed_files=survey.removed, removed_bytes=survey.removed_bytes,
                      folder_removed=folder_removed, errors=_shown(survey.errors))
    return report


def _remove_folder(destination: str, st: os.stat_result, survey: _Survey) -> bool:
    """Remove the (empty) destination the engine made, if the name still holds it."""
    head, tail = os.path.split(destination)
    try:
        parent, _made = safefs.open_dir(head)
    except OSError as exc:
        survey.error(destination, exc)
        return False
    try:
        now = os.stat(tail, dir_fd=parent, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.rmdir(tail, dir_fd=parent)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            survey.error(destination, exc)
        return False
    finally:
        os.close(parent)


# ----- the faces' operations -------------------------------------------------------------------
def _root_of(destination: str, allowed_roots: Sequence[str]) -> str:
    for root in sorted(allowed_roots, key=len, reverse=True):
        if destination == root or destination.startswith(root.rstrip("/") + "/"):
            return root
    return ""


def listing(records: list[dict[str, Any]], allowed_roots: Sequence[str],
            use: dict[str, Any]) -> dict[str, Any]:
    """``GET staged``: every staged folder (checked by name, kind and size: quick), the bytes
    held in all, where (by allowed root), expired, and the quota's view (``use``)."""
    folders = [examine(record, allowed_roots) for record in records]
    by_root: dict[str, int] = {}
    for folder in folders:
        root = _root_of(folder["destination"], allowed_roots)
        by_root[root] = by_root.get(root, 0) + folder["bytes"]
    return {"folders": folders, "total_bytes": sum(f["bytes"] for f in folders),
            "expired_bytes": sum(f["bytes"] for f in folders if f["expired"]),
            "by_root": by_root, **use}


def select_folders(records: list[dict[str, Any]], *, expired: bool, folders: Sequence[str],
                   root_dir: str) -> list[dict[str, Any]]:
    """The records a clean request names: the expired ones, and/or the chosen folders (paths
    relative to ``root_dir``, or absolute). NotFound for a chosen folder that is not one of
    the user's staged folders (nothing is done then)."""
    if not expired and not folders:
        raise InvalidRequest("say what to clean: 'expired': true, and/or 'folders' (a list of "
                             "staged folders)")
    by_path = {r["destination"]: r for r in records}
    chosen: dict[str, dict[str, Any]] = {}
    for folder in folders:
        if not isinstance(folder, str) or not folder:
            raise InvalidRequest("'folders' must be a list of folder paths")
        path = os.path.normpath(os.path.join(root_dir, folder))
        if path not in by_path:
            real = os.path.realpath(path)
            if real not in by_path:
                raise NotFound(f"{folder!r} is not one of your staged folders (GET staged, or "
                               f"`hera-stage staged`, lists them)")
            path = real
        chosen[path] = by_path[path]
    if expired:
        for record in records:
            if record["expired"]:
                chosen.setdefault(record["destination"], record)
    return list(chosen.values())


def clean(records: list[dict[str, Any]], allowed_roots: Sequence[str], *,
          dry_run: bool) -> tuple[dict[str, Any], list[int]]:
    """Remove what the chosen folders still hold of their staged data (``dry_run``: only say
    what would go). Returns the report and the jobs whose folders are clean now (to record)."""
    reports = []
    cleaned: list[int] = []
    for record in records:
        report = examine(record, allowed_roots, verify=True, remove=not dry_run)
        reports.append(report)
        if dry_run:
            continue
        if report["state"] == FolderState.GONE or (
                report["state"] in (FolderState.INTACT, FolderState.CHANGED)
                and not report["errors"]):
            cleaned.extend(record["jobs"])
    if dry_run:
        for report in reports:  # what a clean would remove: what is verified present now
            report["would_remove_files"] = report.get("present_files", 0)
            report["would_remove_bytes"] = report.get("present_bytes", 0)
    return {"dry_run": dry_run, "folders": reports,
            "removed_files": sum(r.get("removed_files", 0) for r in reports),
            "removed_bytes": sum(r.get("removed_bytes", 0) for r in reports),
            "cleaned_jobs": sorted(cleaned)}, cleaned
