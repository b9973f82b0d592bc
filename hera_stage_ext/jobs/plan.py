"""Planning a staging job: the names to stage resolved to the instances they are staged from
(``resolve_names``: online stores first, then cold stores through ``recall``), the destination
checked (``targets.plan_target``) and its free space compared with what the method writes
(``plan_stage``, ``ResolvedStage``); ``hardlink`` and ``symlink`` only from store files the
staging account cannot write (``check_links``); ``dry_run_stage`` reports the plan, what the
job would find at the destination (``preview``) and an unfinished job already staging there
(``busy_job``). Reads only, writes nothing: ``engine.create_stage_job`` writes the job from a
plan. ``unique_names`` and ``resolve_names`` also serve the transfer kind."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..catalogue.db import Database, driver_mark, driver_rows, loads_json_texts
from ..catalogue.inlist import bound_values, one_of_sql
from .models import JobRow
from ..catalogue.naming import shown, validate_name
from ..errors import InvalidRequest
from ..states import ACTIVE_JOB_STATES, ItemState
from . import linkcheck, preview, recall, targets
from .methods import METHODS

#: Methods that write every byte again at the destination (so free space is checked for them).
COPYING = ("copy", "reflink", "contents")
#: Methods that hand the user the store's own inode (``linkcheck``).
LINKING = ("hardlink", "symlink")
#: Refused files named in a refusal's details (the message names the first).
_REFUSED_SHOWN = 20
#: The instances ``resolve_names`` picks from, for the database driver (a launch resolves
#: thousands of names at once: ORM rows, with a JSON result processor each, cost the server
#: more than the query did): available, on an available store of the kind asked, the first
#: of each file by store name, then instance (the one ``Catalogue.locate`` picks).
_RESOLVE_SQL = (
    "SELECT f.name, f.size, f.is_directory, f.checksums, i.path, s.name, s.path FROM file f "
    "JOIN instance i ON i.file_id = f.id JOIN store s ON i.store_id = s.id "
    "WHERE {condition} AND i.available AND s.available AND s.kind = {kind} "
    "ORDER BY s.name, i.id")


@dataclass
class ResolvedStage:
    """A staging request resolved and checked, nothing written yet: its target, the items
    (names resolved to instances), the names missing, and the bytes it needs against the
    destination's free space. (``client.StagePlan`` is the dry run's reply as a notebook
    sees it.)"""

    target: targets.Target
    method: str
    items: list[dict[str, Any]]
    missing: list[str]
    bytes_total: int
    bytes_needed: int
    free_bytes: int | None  # None: not a local file system (free space unknown)

    def summary(self) -> dict[str, Any]:
        return {
            "destination": self.target.key, "method": self.method,
            "files": len(self.items), "bytes": self.bytes_total, "missing": self.missing,
            "bytes_needed": self.bytes_needed, "free_bytes": self.free_bytes,
            "fits": self.free_bytes is None or self.bytes_needed <= self.free_bytes,
        }


def unique_names(names_or_rows: Iterable[str | Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for entry in names_or_rows:
        name = entry.get("name") if isinstance(entry, Mapping) else entry
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a file to stage must be a name or a row with a name: "
                                 f"{repr(entry)[:80]}")
        # Checked like any name, held or not: a missing one goes into the job's log, the
        # error marker and replies, where a line break would start a line of its own.
        validate_name(name)
        if name not in seen:  # a name asked twice is staged (and counted) once
            seen.add(name)
            names.append(name)
    if not names:
        raise InvalidRequest("nothing to stage: no file names given (did the search match any?)")
    return names


def check_links(method: str, items: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a ``hardlink`` or ``symlink`` launch (InvalidRequest naming the first file, the
    reason and the methods that copy) when the staging account could write any chosen store
    file (``linkcheck.link_exposure``): a link hands it that inode, and an edit of the staged
    file would change the archive's. A data set is judged by every file in it, and for a
    symbolic link by its folders too (the link hands over the folder itself). Items waiting for
    a recall have no file yet (their buffer copy is checked when it is staged); a file gone
    from its store is left to the worker, which reports it."""
    uid, gids = linkcheck.staging_identity()
    refused: list[str] = []
    first = ""
    for item in items:
        if item.get("state") == ItemState.WAITING:
            continue
        reason = _exposure(item["source_path"], bool(item["is_directory"]), method, uid, gids)
        if reason:
            refused.append(item["name"])
            first = first or f"{shown(item['name'])} ({item['store']}:{item['dest_path']}): " \
                f"{reason}"
    if refused:
        raise InvalidRequest(
            f"cannot stage {len(refused)} file(s) by {method}: {first}", method=method,
            refused=refused[:_REFUSED_SHOWN])


def _exposure(path: str, is_directory: bool, method: str, uid: int, gids: frozenset[int]
              ) -> str | None:
    """Why linking the store file (or data set) at ``path`` would expose it, or None. The file
    a link would hand over: the instance's own path through a symlink (a link to a file is
    made to its target); in a data set every member, a symlink member left out (the worker
    refuses one that leads out of the data set, and one that stays in leads to a member
    judged here)."""
    # A hard-linked tree gets folders of its own: only its files are the store's.
    paths = [path] if not is_directory or method == "symlink" else []
    if is_directory:
        for folder, dirs, files in os.walk(path):
            paths += [os.path.join(folder, f) for f in files]
            if method == "symlink":
                paths += [os.path.join(folder, d) for d in dirs]
    for one in paths:
        try:
            st = os.stat(one) if one == path else os.lstat(one)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        reason = linkcheck.link_exposure(st, uid, gids)
        if reason is not None and not _immutable(one):
            return reason if one == path else f"{os.path.relpath(one, path)} in it: {reason}"
    return None


def _immutable(path: str) -> bool:
    """The immutable attribute of the file at ``path`` (asked only of files a link would
    otherwise expose: most stores need no open per file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return linkcheck.is_immutable(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def plan_stage(
    db: Database, names_or_rows: Iterable[str | Mapping[str, Any]], destination: str,
    method: str, allowed_roots: Sequence[str | os.PathLike[str]], *,
    base: str | os.PathLike[str] | None = None, contents: Mapping[str, Any] | None = None,
) -> ResolvedStage:
    """Resolve and check everything a staging job needs; reads only, writes nothing.
    ``contents``: the contents manager's description (``contents.describe_manager``), for the
    ``contents`` method."""
    if method not in METHODS:
        raise InvalidRequest(f"unknown staging method {method!r}; use one of {', '.join(METHODS)}")
    target = targets.plan_target(destination, method, allowed_roots, base, contents)
    items, missing, total = resolve_names(db, unique_names(names_or_rows))
    recall.check_method(method, items)
    if method in LINKING:
        check_links(method, items)
    needed = total if method in COPYING else 0
    free = free_bytes(target.local) if target.local is not None else None
    return ResolvedStage(target, method, items, missing, total, needed, free)


def resolve_names(db: Database, names: Sequence[str], kind: str = "online",
             ) -> tuple[list[dict[str, Any]], list[str], int]:
    """The instance each name is staged from (the first available one on an online store, by
    store name): ``(items, missing names, total bytes)``. Names with none, but one on a cold
    store, become items that wait for their recall (``recall.resolve_cold``)."""
    chosen: dict[str, Any] = {}
    with db.read() as s:
        connection = s.connection()
        backend = connection.dialect.name
        rows = driver_rows(connection, _RESOLVE_SQL.format(
            condition=one_of_sql(backend, "f.name"), kind=driver_mark(connection)),
            (bound_values(backend, names), kind))
    if backend != "postgresql":  # SQLite's JSON texts decoded in one call, not one a row
        decoded = loads_json_texts(row[3] for row in rows)
    else:
        decoded = [row[3] for row in rows]
    for row, checksums in zip(rows, decoded):
        chosen.setdefault(row[0], (*row[:3], checksums, *row[4:]))
    items: list[dict[str, Any]] = []
    missing: list[str] = []
    total = 0
    for name in names:
        found = chosen.get(name)
        if found is None:
            missing.append(name)
            continue
        _, size, is_dir, sums, inst_path, store, store_path = found
        rel = os.path.normpath(inst_path)
        if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
            raise InvalidRequest(f"instance path {inst_path!r} of {name!r} leaves its store")
        items.append({"name": name, "store": store, "size": size, "is_directory": bool(is_dir),
                      "checksums": dict(sums or {}), "dest_path": rel,
                      "source_path": os.path.join(store_path, inst_path)})
        total += size
    if missing and kind == "online":
        cold, missing, cold_bytes = recall.resolve_cold(db, missing, resolve_names)
        items += cold
        total += cold_bytes
    return items, missing, total


def dry_run_stage(
    db: Database, names_or_rows: Iterable[str | Mapping[str, Any]], destination: str,
    method: str = "copy", allowed_roots: Sequence[str | os.PathLike[str]] = (), *,
    base: str | os.PathLike[str] | None = None, contents: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a staging job would do: files, de-duplicated bytes, missing names, free space, the
    files already there (skipped) or in the way (failed), and an unfinished job already
    staging into the folder (``busy_job``: a launch would be refused)."""
    plan = plan_stage(db, names_or_rows, destination, method, allowed_roots, base=base,
                      contents=contents)
    local = plan.target.local
    found = (preview.check_destination(local, plan.items, method, len(plan.items))
             if local is not None else preview.nothing_checked(len(plan.items)))
    return {**plan.summary(), **found, "busy_job": busy_job(db, plan.target.key)}


def busy_job(db: Database, destination: str) -> int | None:
    """The unfinished job already staging into ``destination`` (a launch there is refused)."""
    with db.read() as s:
        return s.scalar(select(JobRow.id).where(JobRow.destination == destination,
                                             JobRow.state.in_(ACTIVE_JOB_STATES)).limit(1))
