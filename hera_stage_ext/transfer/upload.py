"""Bulk upload: a directory's files (by glob) copied into a store, verified, registered, with a
manifest; ``create_upload_job`` and the ``upload`` kind the one job engine runs.

Launch (``create_upload_job``, in the server, before anything is written): the directory is
confined to the allowed roots (``paths.confine``), the glob checked like ingest's, the matches
listed (a matched directory is one data set; nothing matched is a 400), their names checked
(catalogue names are unique, so two matches with one name are refused) and the store checked
(known, available, online). The job's items are the matches; its ``destination`` is the folder
the files go to in the store, ``<store root>/<directory's name>``, each item's ``dest_path`` its
path relative to the directory, so a file ``DIR/a/b.uvh5`` becomes the instance
``<DIR's name>/a/b.uvh5`` of the store (the layout is kept, under one folder per directory).

Run (``UploadKind.stream``: ``parallel`` streams, each claiming ``batch`` items at a time): each
item's source is opened below the directory, which was pinned at launch (its device and inode:
another folder, or a symlink, found there later is refused), without following a symlink on the
way (``safefs``), then checksummed from that descriptor (``checksums.hash_at``, the ingest's
digest) and copied from it: a folder swapped after the launch reads nothing outside the
directory. A file the catalogue
already holds on the store with that checksum is ``skipped`` (so a re-run redoes nothing); a
name known with other content fails (names are immutable); the rest is copied by
``methods.Mover`` (temporary name, verified against the checksum taken, fsynced, renamed: the
staging copy path, immediate mode so the file is final before it is registered) and the batch is
registered as files and instances of the store (``Ingester.register``: one transaction, one by
one only if something in it conflicts). A worker killed anywhere leaves either nothing under the
final name, or a file a re-run finds identical and registers, or a registered file it skips.

One writer per manifest: a launch (or a retry) whose manifest, symlinks resolved, is the
manifest of an unfinished (queued or running) upload job, or whose folder in the store is
another unfinished job's destination, is refused (``Conflict``, 409, naming that job) before
anything is written: two jobs would overwrite each other's manifest every ``MANIFEST_SECONDS``
and downstream ingestion would read the wrong job's. Once that job has finished, a re-run with
the same manifest is a new job like any other. The check and the insert of the job are one
write transaction, serialised with every other upload launch (``db.serialise``), so two
launches at the same moment, in two processes, cannot both pass it.

Manifest (``write_manifest``): JSON written atomically (temporary file, fsync, rename) at launch
(every file ``queued``), while the job runs (after its first results are recorded, then every
``MANIFEST_SECONDS``, so a long upload, or one whose worker died, shows how far it got), when the
job finishes and when it is cancelled: one entry per matched
file with its name, path in the directory, size, checksums, destination (``<store>:<path>``),
state (``done``: uploaded by this job, ``skipped``: already there, ``failed``, ``queued``: not
reached) and error, for downstream ingestion.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .. import safefs
from ..catalogue import checksums as ck
from ..catalogue.catalogue import Catalogue, FileSpec
from ..catalogue.db import Database, serialise
from ..catalogue.ingest import Ingester, IngestReport, check_glob
from ..catalogue.models import File, Instance, Store, utcnow
from ..catalogue.naming import validate_name
from ..errors import Conflict, InvalidRequest, StagingError, Unavailable
from ..jobs.engine import create_job
from ..jobs.items import claim_items, ClaimedItem, requeue_items, unfinished_paths
from ..jobs.joblog import JobLog
from ..jobs.contract import JobKind
from ..jobs.methods import TMP_SUFFIX, ItemFailed, ItemSpec, Mover, Outcome
from ..jobs.models import JobRow, JobItem
from ..jobs.targets import LocalTarget
from ..paths import confine, is_within
from ..states import ACTIVE_JOB_STATES, ARRIVED_ITEM_STATES, ItemState, JobState
from .kind_db import catalogue_db
from .models import RemoteInstance
from .peers import PeerRegistry
from .transfer_kind import TRANSFER, create_transfer_job

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..jobs.contract import KindRun

#: Items a stream claims at a time (``--batch``) and the most a request may ask for.
DEFAULT_BATCH = 16
MAX_BATCH = 4096
#: Most streams a request may ask for (``--parallel``).
MAX_PARALLEL = 32
#: The manifest's name in the uploaded directory when the request names none.
DEFAULT_MANIFEST = "upload-manifest.json"
#: A running upload's manifest is rewritten this often (it lists every file: not at every commit).
MANIFEST_SECONDS = 30.0
#: ``db.serialise`` key of upload launches and retries ("upld" in ASCII).
LAUNCH_LOCK = 0x75706C64


def _positive(value: object, what: str, largest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise InvalidRequest(f"'{what}' must be an integer from 1 to {largest}")
    return value


def _matches(directory: Path, pattern: str, manifest: Path) -> list[str]:
    """Paths relative to ``directory`` the glob matches (files and data set directories; what
    lies inside a matched directory is part of it), never the manifest (``manifest``, resolved:
    also when a symlink in the directory leads to it) or a temporary copy."""
    found = set()
    for path in directory.glob(pattern):
        if path.name.endswith(TMP_SUFFIX) or os.path.realpath(path) == str(manifest) or not (
                path.is_file() or path.is_dir()) or path == directory:
            continue
        rel = os.path.relpath(path, directory)
        # A symlink in the tree pointing out of it is refused, like any path from a request.
        confine(rel, [directory], what="matched path")
        found.add(rel)
    out: list[str] = []
    for rel in sorted(found):
        if not (out and rel.startswith(out[-1] + "/")):
            out.append(rel)
    return out


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum((path / member).stat().st_size for member in ck.contained_members(path))


def _store_root(catalogue: Catalogue, store: str) -> Path:
    info = catalogue.store(store)  # NotFound for an unknown store
    if not info["available"]:
        raise Unavailable(f"store {store!r} is not available")
    if info["kind"] != "online":
        raise InvalidRequest(f"store {store!r} is a {info['kind']} store: upload into an "
                             f"online store")
    root = Path(os.path.realpath(info["path"]))
    if not root.is_dir():
        raise Unavailable(f"store {store!r}: {info['path']} is not a directory")
    return root


def create_upload_job(
    db: Database, owner: str, directory: str, glob: str, allowed_roots: Sequence[str], *,
    store: str | None = None, peer: str | None = None, registry: PeerRegistry | None = None,
    upload_store: str = "", base: str | None = None, batch: int = DEFAULT_BATCH,
    parallel: int | None = None, manifest: str | None = None, read_only: bool = True,
    log_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Launch a job uploading what ``glob`` matches in ``directory`` into ``store``, or to
    ``peer`` (of ``registry``) through the local ``upload_store``; every check runs before
    anything is written (see the module's docstring)."""
    if (store is None) == (peer is None):
        raise InvalidRequest("give exactly one of a store or a peer to upload to")
    if peer is not None:
        (registry or PeerRegistry("site")).peer(peer)  # NotFound for an unknown peer
        if not upload_store:
            raise InvalidRequest("uploads to a peer are catalogued in a local store first, "
                                 "and none is configured (c.StagingApp.upload_store)")
        store = upload_store
    assert store is not None
    pattern = check_glob(glob)
    batch = _positive(batch, "batch", MAX_BATCH)
    if parallel is not None:
        parallel = _positive(parallel, "parallel", MAX_PARALLEL)
    source = confine(directory, allowed_roots, base=base, what="directory")
    if not source.is_dir():
        raise InvalidRequest(f"directory {directory!r} is not a directory")
    # Resolved like any path from a request (the default too: its name may be a symlink), so
    # two spellings of one manifest are one path for ``_hold``.
    manifest_path = confine(str(source / DEFAULT_MANIFEST) if manifest is None else manifest,
                            allowed_roots, base=base, what="manifest")
    if manifest_path.is_dir() or not os.access(manifest_path.parent, os.W_OK):
        raise InvalidRequest(f"manifest {str(manifest_path)!r} cannot be written (a folder, "
                             f"or its folder is missing or not writable)")
    catalogue = Catalogue(db)
    root = _store_root(catalogue, store)
    if is_within(root, source):  # a re-run would find the uploaded copies among the matches
        raise InvalidRequest(f"store {store!r} lies inside {str(source)!r}: upload a folder "
                             f"that does not hold the store")
    dest = confine(source.name, [root], what="folder in the store")
    rels = _matches(source, pattern, manifest_path)
    if not rels:
        raise InvalidRequest(f"the glob {pattern!r} matches nothing in {str(source)!r}")
    seen: dict[str, str] = {}
    items, total = [], 0
    for rel in rels:
        path = source / rel
        name = validate_name(path.name)
        if name in seen:
            raise InvalidRequest(f"{seen[name]!r} and {rel!r} have the same name; catalogue "
                                 f"names are unique: upload them separately")
        seen[name] = rel
        size = _size(path)
        items.append({"name": name, "store": store, "source_path": str(path), "dest_path": rel,
                      "size": size, "is_directory": path.is_dir(), "checksums": {}})
        total += size

    # Pinned: the run reads from this very folder (never through a symlink swapped in since).
    fd, _made = safefs.open_dir(str(source))
    try:
        pin = safefs.pin_of(str(source), fd)
    finally:
        os.close(fd)
    options = {"store": store, "directory": str(source), "directory_pin": [pin.dev, pin.ino],
               "glob": pattern, "batch": batch,
               "parallel": parallel, "manifest": str(manifest_path), "read_only": read_only,
               "prefix": os.path.relpath(dest, root), "peer": peer}
    job = create_job(db, owner, "upload", str(dest), "upload", items, [], total,
                     options=options, log_dir=log_dir,
                     take=lambda s, job: _hold(s, job.id, str(dest), str(manifest_path)),
                     summary=f"upload {len(items)} file(s), {total} bytes from {source} "
                             f"({pattern}) into store {store!r} at {dest}"
                             + (f", then send them to peer {peer!r}" if peer else ""))
    write_manifest(db, job["id"])
    return job


def _hold(s: Session, job_id: int, dest: str, manifest: str) -> None:
    """Inside the transaction queueing upload job ``job_id`` (launch or retry): refuse it when
    another unfinished job uploads into ``dest`` or writes ``manifest`` (see the module's
    docstring). Manifest paths are stored resolved at launch, so they compare as strings."""
    serialise(s, LAUNCH_LOCK)
    busy = s.scalar(select(JobRow.id).where(JobRow.destination == dest, JobRow.id != job_id,
                                         JobRow.state.in_(ACTIVE_JOB_STATES)))
    if busy is not None:
        raise Conflict(f"job {busy} is already uploading into {dest}", job_id=busy)
    holder = _manifest_holder(s, job_id, manifest)
    if holder is not None:
        other, state = holder
        raise Conflict(f"job {other} ({state}) writes the manifest {manifest}: run again "
                       f"once it has finished, or name another manifest", job_id=other)


def _manifest_holder(s: Session, job_id: int, manifest: str) -> tuple[int, str] | None:
    """The unfinished upload job other than ``job_id`` that writes ``manifest``, with its
    state (call after ``serialise(s, LAUNCH_LOCK)``)."""
    for other, state, options in s.execute(
            select(JobRow.id, JobRow.state, JobRow.options).where(
                JobRow.kind == UploadKind.name, JobRow.id != job_id,
                JobRow.state.in_(ACTIVE_JOB_STATES))):
        if options.get("manifest") == manifest:
            return other, state
    return None


# ----- the manifest ---------------------------------------------------------------------------
def manifest_json(db: Database, job_id: int, job_state: str | None = None) -> dict[str, Any]:
    """The manifest of an upload job as it stands (see the module's docstring); ``job_state``
    the job's state if it is about to change (its final state, written after the manifest)."""
    with db.read() as s:
        job = s.get(JobRow, job_id)
        assert job is not None
        options = dict(job.options)
        rows = s.execute(select(JobItem.name, JobItem.dest_path, JobItem.size, JobItem.state,
                                JobItem.error).where(JobItem.job_id == job_id)
                         .order_by(JobItem.id)).all()
        names = [r.name for r in rows]
        known: dict[str, tuple[int, dict[str, str]]] = {}
        for start in range(0, len(names), 500):
            known.update({n: (size, sums) for n, size, sums in s.execute(
                select(File.name, File.size, File.checksums)
                .where(File.name.in_(names[start:start + 500])))})
        state = job_state or job.state
    prefix, peer = options["prefix"], options.get("peer")
    files = []
    for r in rows:
        size, sums = known.get(r.name, (r.size, None)) if r.state in ARRIVED_ITEM_STATES \
            else (r.size, None)
        local = f"{options['store']}:{os.path.join(prefix, r.dest_path)}"
        entry = {"name": r.name, "path": r.dest_path, "size": size, "checksum": sums,
                 "destination": f"peer:{peer}" if peer else local, "state": r.state,
                 "error": r.error or None}
        if peer:
            entry["local"] = local
        files.append(entry)
    return {"job": job_id, "job_state": state, "directory": options["directory"],
            "glob": options["glob"], "store": options["store"], "peer": peer,
            "transfer_job": options.get("transfer_job"),
            "written_at": utcnow().isoformat(timespec="seconds") + "Z", "files": files}


def write_manifest(db: Database, job_id: int, job_state: str | None = None) -> Path:
    """Write the job's manifest atomically: a reader sees the old one or the new one, whole."""
    with db.read() as s:
        job = s.get(JobRow, job_id)
        assert job is not None
        path = Path(job.options["manifest"])
    data = json.dumps(manifest_json(db, job_id, job_state), indent=1).encode()
    # In its folder (resolved at launch) opened without following a symlink: a folder swapped
    # since is refused, never written through.
    folder, _made = safefs.open_dir(str(path.parent))
    try:
        tmp = f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        fd = safefs.create(folder, tmp, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o644)
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return path


# ----- the kind -------------------------------------------------------------------------------
class _ManifestClock:
    """When a run's manifest is next rewritten (its state under ``_MANIFEST``; monotonic, first:
    at once). ``recorded`` is called one commit at a time, so it needs no lock."""

    def __init__(self) -> None:
        self.due = 0.0


_MANIFEST = "upload.manifest"


class UploadKind(JobKind):
    name = "upload"

    def streams(self, run: KindRun) -> int:
        return run.job.options.get("parallel") or max(1, run.config.streams)

    def begin(self, run: KindRun, resumed: bool) -> None:
        if resumed:
            n = LocalTarget(run.dest).remove_temps(unfinished_paths(catalogue_db(run),
                                                                    run.job.id))
            if n:
                run.log(f"removed {n} temporary file(s) left by the previous worker")

    def stream(self, run: KindRun) -> None:
        uploader = _Uploader(run)
        try:
            uploader.loop()
        finally:
            uploader.close()

    def recorded(self, run: KindRun) -> None:
        clock, now = run.state_for(_MANIFEST, _ManifestClock), time.monotonic()
        if now >= clock.due:
            clock.due = now + MANIFEST_SECONDS
            try:
                write_manifest(catalogue_db(run), run.job.id)
            except OSError as exc:  # a progress view only: the job goes on, ``finish`` reports
                run.log(f"could not rewrite the manifest now ({exc.strerror}); the job goes on")

    def finish(self, run: KindRun, job: JobRow, lines: list[str]) -> None:
        if job.options.get("peer"):
            try:
                self._send(run, job)
            except StagingError as exc:  # the job fails with it: a retry sends again
                lines.append(f"sending to peer {job.options['peer']!r}: {exc.message}")
                run.log(f"FAILED to launch the transfer: {exc.message}")
        try:
            path = write_manifest(catalogue_db(run), job.id,
                                  JobState.FAILED if lines else JobState.SUCCEEDED)
        except OSError as exc:  # its folder swapped for a symlink, say: the job fails with it
            lines.append(f"manifest not written: {exc}")
            run.log(f"FAILED to write the manifest: {exc}")
        else:
            run.log(f"manifest written: {path}")

    @staticmethod
    def _send(run: KindRun, job: JobRow) -> None:
        """Launch the transfer job of what is in the local store and not at the peer yet
        (once: a finalisation run again after a crash finds it recorded)."""
        peer, db = job.options["peer"], catalogue_db(run)
        with db.read() as s:
            row = s.get(JobRow, job.id)
            assert row is not None
            if row.options.get("transfer_job") is not None:
                return
            names = list(s.scalars(select(JobItem.name).where(
                JobItem.job_id == job.id, JobItem.state.in_(ARRIVED_ITEM_STATES))
                .order_by(JobItem.id)))
        there = _at_peer(db, peer, names)
        names = [n for n in names if n not in there]
        if not names:
            run.log(f"nothing to send: peer {peer!r} holds every file already")
            return
        transfer = create_transfer_job(db, job.owner, names, TRANSFER.registry(run), peer,
                                       log_dir=os.path.dirname(job.log_path))
        with db.write() as s:
            row = s.get(JobRow, job.id)
            assert row is not None
            row.options = {**row.options, "transfer_job": transfer["id"]}
        run.log(f"transfer job {transfer['id']} launched: {len(names)} file(s) to peer "
                f"{peer!r}")

    def retake(self, s: Session, job: JobRow, *, left_bytes: int, force: bool,
               allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        # Still inside the roots and still themselves (not a folder swapped for a symlink
        # since the launch), as a staging retry checks its destination.
        for what in ("directory", "manifest"):
            path = job.options[what]
            if allowed_roots and str(confine(path, allowed_roots, what=what)) != path:
                raise InvalidRequest(f"the {what} {path} no longer resolves to itself")
        _hold(s, job.id, job.destination, job.options["manifest"])
        # Checked just now: the folder there is the one the retry reads from.
        fd, _made = safefs.open_dir(job.options["directory"])
        try:
            pin = safefs.pin_of(job.options["directory"], fd)
        finally:
            os.close(fd)
        job.options = {**job.options, "directory_pin": [pin.dev, pin.ino]}

    def cancelled(self, db: Database, job: JobRow, left: int) -> int:
        removed = LocalTarget(Path(job.destination)).remove_temps(unfinished_paths(db, job.id))
        # The job counts as finished already, so a new upload may have taken its manifest
        # over: written under the launches' lock, and only if none has (a launch that comes
        # after writes its own when it is queued).
        with db.write() as s:
            serialise(s, LAUNCH_LOCK)
            if _manifest_holder(s, job.id, job.options["manifest"]) is None:
                try:
                    write_manifest(db, job.id)
                except OSError as exc:
                    JobLog(job.log_path)(f"FAILED to write the manifest: {exc}")
        return removed


UPLOAD = UploadKind()


def _at_peer(db: Database, peer: str, names: list[str]) -> set[str]:
    """Of ``names``, those ``peer`` is recorded to hold (it answered have, or committed)."""
    out: set[str] = set()
    with db.read() as s:
        for start in range(0, len(names), 500):
            out.update(s.scalars(select(File.name).join(
                RemoteInstance, RemoteInstance.file_id == File.id).where(
                RemoteInstance.site == peer, File.name.in_(names[start:start + 500]))))
    return out


class _Uploader:
    """One stream of an upload job: claim a batch, checksum, skip or copy, register, report."""

    def __init__(self, run: KindRun) -> None:
        self.run = run
        options = run.job.options
        self.store, self.prefix = options["store"], options["prefix"]
        self.directory, self.peer = options["directory"], options.get("peer")
        self.read_only = bool(options.get("read_only", True))
        self.mover = Mover(run.config.chunk_size, run.check, run.log, run.config.fsync,
                           made_dirs=run.made_dirs, roots=[str(run.dest)])
        self.db = catalogue_db(run)
        self.ingester = Ingester(Catalogue(self.db), source="upload")
        pin = options.get("directory_pin")
        self.source_root = (safefs.Pin(self.directory, *pin) if pin else self.directory)
        self.sources = safefs.Folders([self.source_root])

    def open_source(self, item: ClaimedItem) -> int:
        """The item opened below the pinned directory, no symlink followed on the way (one
        inside the directory is, where the kernel can keep it inside): a folder swapped for a
        symlink after the launch reads nothing outside it."""
        try:
            root = self.sources.root_fd(self.source_root)
            flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if item.is_directory else 0)
            return safefs.open_beneath(root, item.dest_path, flags, inner_links=True,
                                       shown=item.source_path)
        except safefs.PathChanged as exc:
            raise ItemFailed(f"not read: {exc}") from None

    def close(self) -> None:
        self.sources.close()
        self.mover.close()

    def loop(self) -> None:
        run = self.run
        while not (run.stopping()):
            batch = claim_items(self.db, run.job.id, run.job.options["batch"])
            if not batch:
                return
            reported: set[int] = set()
            try:
                self.upload(batch, reported)
            finally:
                # Claimed and not through (cancel, stop): back to the queue for whoever runs
                # the job next (a file already renamed into the store is found identical).
                requeue_items(self.db, [c.id for c in batch if c.id not in reported])
            if run.commit_due():
                run.commit(wait=False)

    def report(self, item: ClaimedItem, state: ItemState, error: str, reported: set[int],
               note: str = "") -> None:
        if state == ItemState.FAILED:
            self.run.log.note(f"FAILED {item.dest_path}: {error}")
        elif note:
            self.run.log.note(note)
        self.run.report(item, state, error)
        reported.add(item.id)

    def known(self, names: list[str]) -> dict[str, tuple[int, dict[str, str], str | None]]:
        """name -> (size, checksums, its instance path on the store or None)."""
        out: dict[str, tuple[int, dict[str, str], str | None]] = {}
        with self.db.read() as s:
            for name, size, sums in s.execute(select(File.name, File.size, File.checksums)
                                              .where(File.name.in_(names))):
                out[name] = (size, sums, None)
            for name, path in s.execute(
                    select(File.name, Instance.path).join(Instance, Instance.file_id == File.id)
                    .join(Store, Instance.store_id == Store.id)
                    .where(File.name.in_(names), Store.name == self.store)):
                out[name] = (*out[name][:2], path)
        return out

    def upload(self, batch: list[ClaimedItem], reported: set[int]) -> None:
        run = self.run
        known = self.known([c.name for c in batch])
        at_peer = _at_peer(self.db, self.peer, list(known)) if self.peer else set()
        copied: list[tuple[ClaimedItem, ck.Digest, str, float]] = []
        for item in batch:
            if run.stopping():
                break
            started = time.monotonic()
            try:
                if item.store in run.unavailable:
                    raise ItemFailed(f"store {item.store!r} became unavailable")
                source_fd = self.open_source(item)
                try:
                    outcome, digest = self.upload_one(item, source_fd, known, at_peer,
                                                      reported)
                finally:
                    os.close(source_fd)
                if outcome is None:
                    continue
                note = outcome.note if outcome.state == ItemState.DONE else (
                    f"{outcome.note}, registered")
                copied.append((item, digest, note, time.monotonic() - started))
            except ItemFailed as exc:
                self.report(item, ItemState.FAILED, str(exc), reported)
            except (OSError, StagingError) as exc:
                message = run.explain(item, exc) if isinstance(exc, OSError) else str(exc)
                self.report(item, ItemState.FAILED, message, reported)
        self.register(copied, reported)

    def upload_one(self, item: ClaimedItem, source_fd: int,
                   known: dict[str, tuple[int, dict[str, str], str | None]],
                   at_peer: set[str], reported: set[int]) -> tuple[Outcome | None, ck.Digest]:
        """Checksum the open source, then skip it (None) or copy it from that descriptor."""
        run = self.run
        digest = ck.hash_at(source_fd)
        size, sums, there = known.get(item.name, (None, None, None))
        if sums is not None and not (size == digest.size
                                     and ck.compare(sums, digest.checksums)):
            raise ItemFailed(f"the catalogue knows {item.name!r} with other content "
                             f"(names are immutable); not uploaded")
        if self.peer and sums is not None and item.name in at_peer:
            self.report(item, ItemState.SKIPPED, "", reported, f"skipped {item.dest_path}: "
                        f"peer {self.peer!r} holds it with the same checksum")
            return None, digest
        if there is not None:
            mine = item.attempts > 1  # an earlier attempt of this job did it
            self.report(item, ItemState.DONE if mine else ItemState.SKIPPED, "", reported,
                        f"{'verified' if mine else 'skipped'} {item.dest_path}: on "
                        f"store {self.store!r} at {there} with the same checksum")
            return None, digest
        return self.mover.move(ItemSpec(
            Path(item.source_path), run.dest / item.dest_path, digest.size,
            digest.is_directory, digest.checksums, "copy", self.read_only),
            source_fd), digest

    def register(self, copied: list[tuple[ClaimedItem, ck.Digest, str, float]],
                 reported: set[int]) -> None:
        if not copied:
            return
        specs = [FileSpec(name=item.name, size=d.size, checksums=dict(d.checksums),
                          is_directory=d.is_directory, source="upload")
                 for item, d, _, _ in copied]
        rels = [os.path.join(self.prefix, item.dest_path) for item, _, _, _ in copied]
        report = IngestReport()
        try:
            self.ingester.register(self.store, specs, rels, report)
        except StagingError as exc:
            report.errors = [{"path": rel, "message": exc.message} for rel in rels]
        failed = {e["path"]: e["message"] for e in report.errors}
        for (item, digest, note, seconds), rel in zip(copied, rels):
            if rel in failed:
                self.report(item, ItemState.FAILED, f"copied to the store but not registered: "
                            f"{failed[rel]}", reported)
                continue
            self.run.count_copied(digest.size)
            self.report(item, ItemState.DONE, "", reported,
                        f"uploaded {item.dest_path} to {self.store}:{rel} ({digest.size} "
                        f"bytes, {digest.size / max(seconds, 1e-9) / 1e6:.1f} MB/s, {note})")
