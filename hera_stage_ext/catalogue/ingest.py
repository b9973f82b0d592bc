"""Ingest: register what lies on a store, found by glob, idempotently.

``plan`` lists what a set of globs matches on a store and which of those paths the catalogue
does not know yet (a known path with the same size is left alone: a re-run touches nothing).
``ingest_paths`` checksums the given paths in parallel (streaming, constant memory per file) and
registers them in batches, one short transaction each (a batch hashed while the one before it is
registered: ``Catalogue.register_batches``). A directory (a MIRIAD data set) is one
file with the Librarian's directory digest; what lies inside a matched directory is not
registered again on its own.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, StagingError
from ..paths import MAX_PATH_BYTES, check_text, confine
from .catalogue import Catalogue, FileSpec, Registration
from .checksums import hash_path

#: Files registered per database transaction: a transaction's fixed cost (its round trips,
#: statements and commit) is a few files' worth of rows; at 200 a batch it was a third of
#: PostgreSQL's time (``benchmarks/register_bench.py``).
BATCH_SIZE = 1000


@dataclass
class IngestReport:
    matched: int = 0
    unchanged: int = 0
    registered: int = 0
    instances_added: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "unchanged": self.unchanged,
            "registered": self.registered,
            "instances_added": self.instances_added,
            "errors": self.errors,
        }


@dataclass
class IngestPlan:
    store: str
    todo: list[str]  # store-relative paths to checksum and register
    unchanged: int
    errors: list[dict[str, str]]


def check_glob(pattern: object) -> str:
    """``pattern`` if it is a glob relative to a store that cannot leave it, else 400."""
    check_text(pattern, "glob")
    assert isinstance(pattern, str)
    if os.path.isabs(pattern) or ".." in Path(pattern).parts:
        raise InvalidRequest(f"glob {pattern!r} must be relative to the store and not use '..'")
    if any("**" in part and part != "**" for part in Path(pattern).parts):
        raise InvalidRequest(f"glob {pattern!r}: '**' (any depth of folders) must be a whole "
                             "path component, e.g. '**/*.uvh5'")
    if not Path(pattern).parts:  # "", ".", "./": the store itself (pathlib cannot glob them)
        raise InvalidRequest(f"glob {pattern!r} matches no file: name files or folders in the "
                             "store, e.g. '*' or '2457644/*.uvh5'")
    return pattern


class _Confiner:
    """``paths.confine`` of many paths below one store root, each folder resolved once (a
    realpath costs an lstat per component, and was most of an ingest's time): a path whose last
    component is a plain file or folder lies where its resolved folder does; anything else
    (a symlink, a top-level name, ``..``, a path too long) is confined the whole way."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = root
        self.what = what
        self._folders: dict[str, Path] = {}

    def __call__(self, rel: str) -> Path:
        check_text(rel, self.what)
        folder, name = os.path.split(rel)
        if not folder or name in ("", ".", ".."):
            return confine(rel, [self.root], what=self.what)
        parent = self._folders.get(folder)
        if parent is None:
            parent = self._folders[folder] = confine(folder, [self.root], what=self.what)
        full = parent / name
        try:
            plain = not stat.S_ISLNK(os.lstat(full).st_mode)
        except OSError:
            plain = False
        if not plain or len(os.fsencode(full)) > MAX_PATH_BYTES:
            return confine(rel, [self.root], what=self.what)
        return full


class Ingester:
    def __init__(self, catalogue: Catalogue, workers: int = 4, source: str = "ingest") -> None:
        self.catalogue = catalogue
        self.workers = workers
        self.source = source

    def _store_root(self, store: str) -> Path:
        info = self.catalogue.store(store)
        if not info["available"]:
            raise StagingError(f"store {store!r} is not available")
        root = Path(os.path.realpath(info["path"]))
        if not root.is_dir():
            raise InvalidRequest(f"store {store!r}: {info['path']} is not a directory")
        return root

    def plan(self, store: str, globs: Sequence[str]) -> IngestPlan:
        if not isinstance(globs, (list, tuple)) or not globs:
            raise InvalidRequest("globs must be a non-empty list of patterns")
        patterns = [check_glob(g) for g in globs]
        root = self._store_root(store)
        matches: set[str] = set()
        errors: list[dict[str, str]] = []
        confined = _Confiner(root, "matched path")
        for pattern in patterns:
            for found in root.glob(pattern):
                rel = os.path.relpath(found, root)
                try:
                    confined(rel)
                except StagingError as exc:
                    errors.append({"path": rel, "message": exc.message})
                    continue
                if rel != "." and (found.is_file() or found.is_dir()):
                    matches.add(rel)
        # A data set directory is the unit: drop whatever lies inside another match.
        ordered = sorted(matches)
        kept: list[str] = []
        for rel in ordered:
            if kept and rel.startswith(kept[-1] + "/"):
                continue
            kept.append(rel)
        known = self.catalogue.known_instances(store, kept)
        todo = []
        unchanged = 0
        for rel in kept:
            if rel in known and (root / rel).is_file() and (root / rel).stat().st_size == known[rel]:
                unchanged += 1
            elif rel in known and (root / rel).is_dir():
                unchanged += 1  # sizing a directory costs a walk; its digest is checked on use
            else:
                todo.append(rel)
        return IngestPlan(store, todo, unchanged, errors)

    def ingest_paths(
        self, store: str, paths: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> IngestReport:
        """Checksum and register store-relative ``paths``; per-path failures are reported,
        never fatal to the rest."""
        root = self._store_root(store)
        report = IngestReport(matched=len(paths))
        resolved: list[tuple[str, Path]] = []
        confined = _Confiner(root, "store path")
        for rel in paths:
            try:
                resolved.append((rel, confined(rel)))
            except StagingError as exc:
                report.errors.append({"path": str(rel), "message": exc.message})
        # Per batch hashed and handed to the catalogue, in order: its specs, paths, the errors
        # of its hashing (reported before its registration's, as when batches took turns)
        # and its size.
        handed: deque[tuple[list[FileSpec], list[str], list[dict[str, str]], int]] = deque()

        def hashed(pool: ThreadPoolExecutor) -> Iterator[tuple[list[FileSpec], list[str]]]:
            for start in range(0, len(resolved), BATCH_SIZE):
                batch = resolved[start : start + BATCH_SIZE]
                digests = list(pool.map(lambda item: _digest(item[1]), batch))
                specs, rels, errors = [], [], []
                for (rel, full), digest in zip(batch, digests):
                    if isinstance(digest, OSError):
                        errors.append({"path": rel, "message": str(digest)})
                        continue
                    specs.append(FileSpec(name=full.name, size=digest.size,
                                          checksums=digest.checksums,
                                          is_directory=digest.is_directory, source=self.source))
                    rels.append(os.path.relpath(full, root))
                handed.append((specs, rels, errors, len(batch)))
                yield specs, rels

        # A batch is hashed while the one before it is registered (``register_batches``).
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for outcomes in self.catalogue.register_batches(hashed(pool), store):
                specs, rels, errors, size = handed.popleft()
                report.errors += errors
                self.record(specs, rels, outcomes, report)
                if progress is not None:
                    progress(size)
        return report

    def register(
        self, store: str, specs: list[FileSpec], rels: list[str], report: IngestReport
    ) -> None:
        """Register hashed files of ``store`` into ``report`` (``Catalogue.register_each``: a
        bad file is an error in ``report``, the rest are registered)."""
        self.record(specs, rels, self.catalogue.register_each(specs, store, rels), report)

    @staticmethod
    def record(specs: list[FileSpec], rels: list[str],
               outcomes: Sequence[Registration | StagingError], report: IngestReport) -> None:
        """Count ``register_each``'s ``outcomes`` of ``specs`` at ``rels`` into ``report``."""
        results = []
        for spec, rel, outcome in zip(specs, rels, outcomes):
            if isinstance(outcome, StagingError):
                report.errors.append({"path": rel, "name": spec.name, "message": outcome.message,
                                      "reason": type(outcome).__name__.lower()})
            else:
                results.append(outcome)
        for r in results:
            report.registered += r.created
            report.instances_added += r.instance_added
            if not r.created and not r.instance_added:
                report.unchanged += 1

    def ingest(self, store: str, globs: Sequence[str]) -> IngestReport:
        plan = self.plan(store, globs)
        report = self.ingest_paths(store, plan.todo)
        report.matched += plan.unchanged
        report.unchanged += plan.unchanged
        report.errors = plan.errors + report.errors
        return report


def _digest(path: Path):  # type: ignore[no-untyped-def]
    try:
        return hash_path(path)
    except OSError as exc:
        return exc
