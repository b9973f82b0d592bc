"""The ``contents`` staging method: items written through Jupyter's ContentsManager, in chunks.

For deployments whose users' files do not live on a file system the worker can write (a
database- or object-store-backed contents manager). Owns the description of the server's
manager stored with a job, the destination (``ContentsTarget``: markers, leftovers, confinement)
and the writer (``ContentsMover``).

Design:

- Jobs run in a worker process, which has no contents manager. At launch the server describes
  its own (``describe_manager``): the class's import path, its ``root_dir``, whether it is
  file-based, and the configuration sections of the class and its bases, as JSON. That goes into
  the job's options and the worker builds the same class with the same configuration
  (``open_manager``). Job options are stored in the database, so a setting whose name looks like
  a secret (password, token, key, credential...) or that holds a URL with a password is
  refused: give such a manager its secret through the environment, which the server-started
  worker inherits.
- Writing: a file is read from its store one chunk (the engine's ``chunk_size``) at a time and
  saved as base64 models with ``chunk`` 1, 2, ... and -1 for the last (the protocol of
  jupyter_server's LargeFileManager and of JupyterLab's uploads), so memory is one chunk whatever
  the size; a file of one chunk is one plain save. Each chunk is hashed as it is sent, and the
  digest compared with the catalogue's (xxh3-128; MD5 only when it is all there is), as the
  ``copy`` method hashes the bytes it writes; the size the manager reports after the last chunk
  must be the catalogue's too, which catches a manager that dropped or repeated chunks. A
  directory (MIRIAD data set) is written member by member and checked with the Librarian's
  directory digest.
- Reading: the source is opened as the other methods open one by its path
  (``methods.open_inside``: what was opened is checked to lie inside its store, then read from
  that descriptor), a data set's members below its folder's descriptor (``open_member``): a
  store folder swapped for a symlink out of the store is never read through, whenever it is
  swapped (before the open: refused; after it: the folder opened is read).
- Crash safety: an item is written under ``<name>.hera-tmp`` (not a dot name: file-based managers
  refuse hidden names by default) and renamed with ``ContentsManager.rename`` (which never
  overwrites) once verified, before ``move`` returns: the engine's batched renames are local
  ``rename(2)`` calls, so this method does not use them. A killed worker's leftovers are deleted
  on resume and on cancel; an item renamed but not yet recorded is found identical on resume and
  not written again.
- Already there: an identical file (size and checksum) is skipped, anything else is a conflict,
  never overwritten. Checking reads the file: from its local path with a file-based manager,
  else through ``get``, which holds that one file in memory (managers have no chunked read).
- Markers (STAGING-IN-PROGRESS, STAGING-SUCCEEDED, STAGING-ERRORS) go through the manager as
  well, so they show in the user's file browser. A manager has no exclusive create: two jobs into
  one folder are kept apart by the database (one active job per destination).
- Destination: a contents path, relative to the manager's root. With a file-based manager
  (FileContentsManager and its subclasses) it resolves to a local folder under that root, which
  ``paths.confine`` checks against the allowed roots; the job's destination is that folder, so a
  ``copy`` and a ``contents`` job into one folder exclude each other. Otherwise it must be a clean
  relative path (no ``..``, no leading ``/``, no NUL) and the job's destination reads
  ``contents:<path>``.
- Not done: staged files are neither read-only nor given the source's mtime (the contents API
  has no way to), and free space is checked only where the manager is file-based.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_server.services.contents.fileio import FileManagerMixin
from jupyter_server.services.contents.manager import ContentsManager
from tornado import web
from traitlets.config import Config

from ..catalogue import checksums as ck
from ..errors import Conflict, ContentsError, Forbidden, InvalidRequest, StagingError, Unavailable
from ..paths import check_text, confine, is_within
from ..states import ItemState
from . import markers
from .. import safefs
from .methods import (TMP_SUFFIX, ItemFailed, ItemSpec, Outcome, check_sum, open_inside,
                      open_member)

#: Prefix of a job destination held by a manager that is not file-based.
SCHEME = "contents:"
_SECRET = re.compile(r"passw|passphrase|secret|token|credential|private|api[_-]?key|"
                     r"access[_-]?key|auth", re.IGNORECASE)
#: A URL with a password in it (``postgresql://user:password@host/db``).
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]*@")


# ----- the manager: described by the server, rebuilt by the worker ---------------------------
def _plain(value: Any, where: str) -> Any:
    """A configuration value as plain JSON; refused when it holds a secret-looking key or a
    URL with a password, or is not JSON (a job's options are stored in the database)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if _SECRET.search(str(key)):
                raise _secret(f"{where}.{key}")
            out[str(key)] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, str) and _URL_PASSWORD.search(value):
        raise _secret(where)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise Unavailable(f"contents staging is not available: the contents manager's setting "
                          f"{where} ({type(value).__name__}) cannot be passed to the worker") \
            from None
    return value


def _secret(where: str) -> Unavailable:
    return Unavailable(
        f"contents staging is not available: the contents manager's setting {where} looks "
        f"like (or holds) a secret, and staging jobs keep the manager's settings in the "
        f"database; give the manager that secret through the environment instead (the "
        f"staging worker inherits the server's)")


def describe_manager(manager: Any) -> dict[str, Any]:
    """What a worker needs to build the same contents manager (see the module docstring)."""
    if not isinstance(manager, ContentsManager):
        raise Unavailable("contents staging is not available: this server has no contents "
                          "manager the worker can rebuild")
    cls = type(manager)
    sections = {klass.__name__: _plain(manager.config[klass.__name__], klass.__name__)
                for klass in cls.__mro__ if klass.__name__ in manager.config}
    root = getattr(manager, "root_dir", None)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": sections,
            "root_dir": str(root) if root is not None else None,
            "file_based": isinstance(manager, FileManagerMixin) and root is not None}


#: Most bytes of a description (as JSON) a site service stores with a job.
MAX_DESCRIPTION_BYTES = 64 << 10
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def check_description(spec: object) -> dict[str, Any]:
    """A description (``describe_manager``'s, with the destination's ``path``) that came in a
    request to the site service, checked as data only: plain JSON of bounded size, the keys
    and types a worker reads, no secret-looking setting, a clean contents path. Nothing is
    imported or built from it here (the user's worker does that); InvalidRequest else."""
    if not isinstance(spec, Mapping):
        raise InvalidRequest("'contents' must be the JSON object describing your server's "
                             "contents manager (your Jupyter server adds it)")
    try:
        size = len(json.dumps(spec, allow_nan=False).encode())
    except (TypeError, ValueError):
        raise InvalidRequest("'contents' is not plain JSON") from None
    if size > MAX_DESCRIPTION_BYTES:
        raise InvalidRequest(f"'contents' is larger than {MAX_DESCRIPTION_BYTES} bytes")
    cls, config, root, file_based, path = (spec.get(k) for k in (
        "class", "config", "root_dir", "file_based", "path"))
    if not isinstance(cls, str) or not _CLASS_PATH.fullmatch(cls):
        raise InvalidRequest("'contents.class' must be 'module:ClassName'")
    if not isinstance(config, Mapping):
        raise InvalidRequest("'contents.config' must be an object")
    if root is not None and (not isinstance(root, str) or not os.path.isabs(root)):
        raise InvalidRequest("'contents.root_dir' must be an absolute path or null")
    if not isinstance(file_based, bool) or (file_based and root is None):
        raise InvalidRequest("'contents.file_based' must be true (with a root_dir) or false")
    if not isinstance(path, str) or clean_api_path(path or ".") != path:
        raise InvalidRequest("'contents.path' must be a clean path relative to the contents "
                             "root")
    try:
        config = _plain(config, "config")
    except Unavailable as exc:  # a secret in it: never stored
        raise InvalidRequest(exc.message) from None
    return {"class": cls, "config": config, "root_dir": root, "file_based": file_based,
            "path": path}


def open_manager(spec: Mapping[str, Any]) -> ContentsManager:
    """A contents manager built from ``describe_manager``'s description."""
    module, _, qualname = spec["class"].partition(":")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, ContentsManager)):
        raise Unavailable(f"{spec['class']} is not a Jupyter contents manager")
    kwargs: dict[str, Any] = {}
    if spec.get("root_dir") is not None and cls.class_traits().get("root_dir") is not None:
        kwargs["root_dir"] = spec["root_dir"]
    if cls.class_traits().get("delete_to_trash") is not None:
        # What this method deletes is its own temporary or bad copies: not for the user's trash.
        kwargs["delete_to_trash"] = False
    return cls(config=Config(spec.get("config") or {}), **kwargs)


class Manager:
    """One contents manager, called the same way whether its methods are plain or coroutines;
    whatever it raises becomes a ContentsError naming the operation and the path."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.cm = open_manager(spec)

    def _call(self, what: str, path: str, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(self.cm, name)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            return result
        except web.HTTPError as exc:
            error = ContentsError(f"the contents manager could not {what} {path!r}: "
                                  f"{exc.log_message or exc.reason or exc.status_code}")
            if 400 <= exc.status_code < 500:
                error.status = exc.status_code
            raise error from exc
        except Exception as exc:  # a third-party manager raises what it likes: fail the item
            raise ContentsError(f"the contents manager could not {what} {path!r}: "
                                f"{exc!r}") from exc

    def exists(self, path: str) -> bool:
        return bool(self._call("look up", path, "exists", path))

    def is_dir(self, path: str) -> bool:
        return bool(self._call("look up", path, "dir_exists", path))

    def model(self, path: str, content: bool = False, **kwargs: Any) -> dict[str, Any]:
        return self._call("read", path, "get", path, content=content, **kwargs)

    def save(self, model: dict[str, Any], path: str) -> dict[str, Any]:
        return self._call("write", path, "save", model, path)

    # rename_file and delete_file, not rename and delete: those also move or delete the
    # checkpoints, which a file-based manager lists by creating .ipynb_checkpoints folders in
    # every folder staged into; this method's files never have any.
    def rename(self, old: str, new: str) -> None:
        self._call("rename to " + repr(new), old, "rename_file", old, new)

    def read_text(self, path: str) -> str | None:
        if not self._call("look up", path, "file_exists", path):
            return None
        return self.model(path, content=True, type="file", format="text")["content"]

    def write_text(self, path: str, text: str) -> None:
        self.save({"type": "file", "format": "text", "content": text}, path)

    def make_dirs(self, path: str) -> None:
        """``path`` and its parents as directories (the root always exists)."""
        parts = [p for p in path.split("/") if p]
        for n in range(1, len(parts) + 1):
            sub = "/".join(parts[:n])
            if not self.is_dir(sub):
                try:
                    self.save({"type": "directory"}, sub)
                except ContentsError:
                    if not self.is_dir(sub):  # else another stream made it meanwhile
                        raise

    def delete_tree(self, path: str) -> None:
        """Delete a file, or a directory with everything in it (managers refuse to delete a
        directory that is not empty)."""
        if self.is_dir(path):
            for child in self.model(path, content=True, type="directory")["content"]:
                self.delete_tree(child["path"])
        self._call("delete", path, "delete_file", path)

    def delete_quietly(self, path: str) -> None:
        """Remove what may be left under ``path``; a failure here must not hide the error
        being handled."""
        try:
            if self.exists(path):
                self.delete_tree(path)
        except ContentsError:
            pass


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def temp_name(path: str) -> str:
    return path + TMP_SUFFIX


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def clean_api_path(destination: str) -> str:
    """A contents path as given by a user: relative, no ``..``; returns it normalised."""
    check_text(destination, "destination")
    if destination.startswith("/"):
        raise InvalidRequest(f"destination {destination!r} must be relative to the contents "
                             f"root (no leading '/')")
    parts = [p for p in destination.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Forbidden(f"destination {destination!r} leads outside the contents root")
    return "/".join(parts)


# ----- the destination ------------------------------------------------------------------------
class ContentsTarget:
    """A folder of the contents manager: the engine's target for the ``contents`` method."""

    poolable = False  # the worker's helper processes write local files only

    def __init__(self, key: str, spec: Mapping[str, Any]) -> None:
        self.key = key
        self.spec = dict(spec)
        self.path: str = self.spec["path"]
        self.local = Path(key) if self.spec.get("file_based") else None
        self._threads = threading.local()

    @classmethod
    def plan(cls, destination: str, contents: Mapping[str, Any] | None,
             allowed_roots: Sequence[str | os.PathLike[str]]) -> ContentsTarget:
        """The checked target of a request (see the module docstring); writes nothing."""
        if contents is None:
            raise Unavailable("contents staging is not available: no contents manager given")
        if contents.get("file_based"):
            root = Path(os.path.realpath(contents["root_dir"]))
            local = confine(destination, allowed_roots, base=root, what="destination",
                           name_roots=True)
            if not is_within(local, root):
                raise Forbidden(f"destination {destination!r} is outside the contents "
                                f"manager's root directory")
            target = cls(str(local), {**contents, "path": local.relative_to(root).as_posix()
                                      if local != root else ""})
        else:
            api = clean_api_path(destination)
            target = cls(SCHEME + api, {**contents, "path": api})
        manager = target.manager
        if target.path and manager.exists(target.path) and not manager.is_dir(target.path):
            raise InvalidRequest(f"destination {destination!r} exists and is not a directory")
        return target

    @property
    def manager(self) -> Manager:
        """This thread's own instance (managers are not promised to be thread-safe; an async
        one's coroutines run to completion in the calling thread)."""
        manager = getattr(self._threads, "manager", None)
        if manager is None:
            manager = self._threads.manager = Manager(self.spec)
        return manager

    def api(self, final: str | os.PathLike[str]) -> str:
        """The contents path of a final path the engine built (``destination / dest_path``)."""
        text = str(final)
        if not text.startswith(self.key.rstrip("/") + "/"):
            raise ItemFailed(f"{text!r} is not inside the destination")
        return _join(self.path, text[len(self.key.rstrip("/")) + 1:])

    def options(self) -> dict[str, Any]:
        return {"contents": self.spec}

    def acquire(self, job_id: int, owner: str, is_active: Callable[[int], bool]) -> None:
        manager, marker = self.manager, _join(self.path, markers.IN_PROGRESS)
        manager.make_dirs(self.path)
        text = manager.read_text(marker)
        holder = markers.holder(text) if text is not None else None
        if holder is not None and holder != job_id and is_active(holder):
            raise Conflict(f"job {holder} is already staging into {self.key}", job_id=holder)
        if holder != job_id:  # absent, or a dead job's: (re)take the folder
            manager.write_text(marker, markers.in_progress_text(job_id, owner))
        for name in (markers.SUCCEEDED, markers.ERRORS):
            manager.delete_quietly(_join(self.path, name))

    def release(self, job_id: int) -> None:
        marker = _join(self.path, markers.IN_PROGRESS)
        text = self.manager.read_text(marker)
        if text is not None and markers.holder(text) == job_id:
            self.manager.delete_tree(marker)

    def ensure_in_progress(self, job_id: int, owner: str) -> None:
        marker = _join(self.path, markers.IN_PROGRESS)
        self.manager.make_dirs(self.path)
        text = self.manager.read_text(marker)
        if text is None or markers.holder(text) != job_id:
            self.manager.write_text(marker, markers.in_progress_text(job_id, owner))

    def finish(self, job_id: int, lines: Iterable[str]) -> None:
        name, text = markers.result_marker(lines)
        for other in (markers.SUCCEEDED, markers.ERRORS):
            if other != name:
                self.manager.delete_quietly(_join(self.path, other))
        self.manager.write_text(_join(self.path, name), text)
        self.release(job_id)

    def remove_temps(self, rel_paths: Iterable[str]) -> int:
        removed = 0
        for rel in rel_paths:
            tmp = temp_name(_join(self.path, rel))
            if self.manager.exists(tmp):
                self.manager.delete_tree(tmp)
                removed += 1
        return removed

    def inside(self, folder: str | os.PathLike[str]) -> bool:
        # Item paths are normalised store-relative paths (never absolute, never ``..``); only a
        # local folder can lead elsewhere, through a symlink.
        return self.local is None or is_within(folder, self.local)

    def recheck(self, allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        if self.local is not None and allowed_roots and confine(
                self.key, allowed_roots, what="destination") != self.local:
            raise InvalidRequest(f"the destination {self.local} no longer resolves to itself")

    def confine_recorded(self, allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        """A site's recorded job, in the user's worker before it takes the folder: the manager
        the description builds decides whether it writes local files (whatever the
        description says); if it does, the destination is its root and path, resolved,
        inside the worker's allowed roots; else the job's destination is the contents path."""
        try:
            cm = self.manager.cm
        except StagingError:
            raise
        except Exception as exc:  # (an ImportError, a manager refusing its configuration)
            raise Unavailable(f"the contents manager {self.spec.get('class')} cannot be "
                              f"built here: {exc!r}") from exc
        root = getattr(cm, "root_dir", None)
        if isinstance(cm, FileManagerMixin) and root is not None:
            local = Path(os.path.realpath(root)) / self.path if self.path else Path(
                os.path.realpath(root))
            if self.local is None or local != self.local or confine(
                    self.key, allowed_roots, what="destination") != self.local:
                raise Forbidden(f"the destination {self.key} is not the folder {local} of "
                                f"the contents manager, inside the allowed roots")
        elif self.key != SCHEME + clean_api_path(self.path or "."):
            raise Forbidden(f"the destination {self.key} is not the contents path "
                            f"{self.path!r}")

    def mover(self, config: Any, check: Callable[[int], None], log: Callable[[str], None],
              made_dirs: set[str]) -> ContentsMover:
        return ContentsMover(self, config.chunk_size, check, made_dirs)


# ----- the writer ----------------------------------------------------------------------------
class ContentsMover:
    """Moves items for one stream through the contents manager (that stream's own instance)."""

    def __init__(self, target: ContentsTarget, chunk_size: int, check: Callable[[int], None],
                 made_dirs: set[str]) -> None:
        self.target = target
        self.manager = target.manager
        self.chunk_size = max(1, chunk_size)
        self._check = check
        self._made_dirs = made_dirs  # contents folders known to exist (shared by the streams)
        self._real_roots: dict[str, str] = {}  # store roots resolved once (``open_inside``)

    def close(self) -> None:
        """Nothing to let go (the engine closes every stream's mover)."""

    def move(self, spec: ItemSpec) -> Outcome:
        algorithm = ck.preferred_algorithm(spec.checksums)
        final = self.target.api(spec.final)
        tmp = temp_name(final)
        manager = self.manager
        source = os.fspath(spec.source)
        if spec.source_root is not None and not is_within(source, spec.source_root):
            # Refused early, before anything is judged or made at the destination. What
            # confines the read is not this but the check of the source once it is open
            # (``open_inside``): a folder swapped for a symlink out of the store after this
            # check is refused then, never read through.
            raise ItemFailed("the instance on its store leads outside the store")
        if manager.exists(final):
            manager.delete_quietly(tmp)  # a leftover of a killed worker
            return self._existing(spec, final, algorithm)
        parent = final.rpartition("/")[0]
        if parent not in self._made_dirs:
            manager.make_dirs(parent)
            self._made_dirs.add(parent)
        if manager.exists(tmp):  # a leftover of a killed worker
            manager.delete_tree(tmp)
        try:
            fin = open_inside(source, spec.source_root, self._real_roots)
            try:
                if spec.is_directory:
                    digest = self._send_dir(fin, tmp, algorithm)
                else:
                    digest = self._send_file(fin, tmp, algorithm)
            finally:
                os.close(fin)
            check_sum(spec, digest.size, digest.checksums[algorithm], algorithm, "copy")
            if manager.exists(final):
                raise ItemFailed("appeared at the destination while it was being staged; "
                                 "not overwritten")
            manager.rename(tmp, final)
        except BaseException:
            manager.delete_quietly(tmp)
            raise
        return Outcome(ItemState.DONE, f"{algorithm} verified, through the contents manager")

    def _send_file(self, fin: int, path: str, algorithm: str) -> ck.Digest:
        """Send the open file ``fin`` (read from its descriptor, never by a path)."""
        hasher = ck.StreamHasher([algorithm])
        with open(fin, "rb", buffering=0, closefd=False) as f:
            data = f.read(self.chunk_size)
            ahead = f.read(self.chunk_size) if data else b""
            number = 1
            model: dict[str, Any] = {}
            while True:
                hasher.update(data)
                last = not ahead
                chunk: dict[str, Any] = {} if number == 1 and last else {
                    "chunk": -1 if last else number}
                model = self.manager.save({"type": "file", "format": "base64", **chunk,
                                           "content": base64.b64encode(data).decode("ascii")},
                                          path)
                self._check(len(data))
                if last:
                    break
                data, ahead = ahead, f.read(self.chunk_size)
                number += 1
        digest = hasher.digest()
        held = (model or {}).get("size")
        if held is not None and held != digest.size:
            raise ItemFailed(f"the contents manager holds {held} bytes of {path!r} after "
                             f"{digest.size} were sent; the copy was removed")
        return digest

    def _send_dir(self, src_fd: int, path: str, algorithm: str) -> ck.Digest:
        """Send the data set open as ``src_fd``: its tree listed and its members opened below
        that descriptor (``safefs.tree``, ``open_member``: one leading out of it is refused),
        as the ``copy`` method reads one, never by a path."""
        folders, members = safefs.tree(src_fd)
        self.manager.save({"type": "directory"}, path)
        for folder in folders:  # parents first
            self.manager.save({"type": "directory"}, _join(path, folder))
        digests = []
        for member in members:
            fin = open_member(src_fd, member)
            try:
                digests.append((member, self._send_file(fin, _join(path, member), algorithm)))
            finally:
                os.close(fin)
        return ck.manifest_digest(digests, [algorithm])

    # ----- what is already there ----------------------------------------------------------
    def _existing(self, spec: ItemSpec, final: str, algorithm: str) -> Outcome:
        is_dir = self.manager.is_dir(final)
        if is_dir != spec.is_directory:
            kind = "directory" if is_dir else "file"
            raise ItemFailed(f"exists as a {kind} of other content; not overwritten")
        if not is_dir:
            held = self.manager.model(final).get("size")
            if held is not None and held != spec.size:
                raise ItemFailed(f"exists with other content ({held} bytes, catalogue says "
                                 f"{spec.size}); not overwritten")
        digest = self._hash(final, is_dir, algorithm)
        if digest.size == spec.size and digest.checksums[algorithm] == spec.checksums[algorithm]:
            return Outcome(ItemState.SKIPPED, f"identical file already there ({algorithm})")
        raise ItemFailed(f"exists with other content ({algorithm} differs); not overwritten")

    def _hash(self, path: str, is_dir: bool, algorithm: str) -> ck.Digest:
        local = self.target.local
        if local is not None:
            return ck.hash_path(Path(self.target.spec["root_dir"]) / path, [algorithm])
        if not is_dir:
            model = self.manager.model(path, content=True, type="file", format="base64")
            hasher = ck.StreamHasher([algorithm])
            hasher.update(base64.b64decode(model["content"]))
            return hasher.digest()
        members = sorted(self._files_below(path, ""),
                         key=lambda m: m.encode("utf-8", "surrogateescape"))
        return ck.manifest_digest(
            [(m, self._hash(_join(path, m), False, algorithm)) for m in members], [algorithm])

    def _files_below(self, path: str, prefix: str) -> list[str]:
        out = []
        for child in self.manager.model(path, content=True, type="directory")["content"]:
            rel = _join(prefix, child["name"])
            if child["type"] == "directory":
                out += self._files_below(child["path"], rel)
            else:
                out.append(rel)
        return out

