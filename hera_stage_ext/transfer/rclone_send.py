"""The stream of a transfer job to an rclone peer (``rclone.py``): batches of files, verified.

A stream claims up to ``BATCH`` items at a time (no more bytes than the worker's
``claim_bytes``, but always one item) and sends them with a number of rclone runs that does
not grow with the number of files: six per batch when nothing is in the way (rclone takes a
few tenths of a second to start and connect; five runs per file, as before, made 10,000 small
files most of an hour). Each item lands under the peer's remote at the instance's path
relative to its store (its ``dest_path``); a directory data set goes as its member files.

1. Look at the remote: one ``rclone lsjson`` of the folders the batch goes to (sizes), and when
   something is there already under the items' names, one ``rclone hashsum`` of it. Same
   checksums -> ``skipped`` ("already there"; ``done`` when an earlier attempt of this job put
   it there), the remote instance recorded; different -> ``failed`` as a conflict with both
   checksums (or sizes), the remote object left as it is (never overwritten).
2. Copy the rest into a hidden folder of this batch at the top of the remote,
   ``.hera-partial-<site>-<job>-<run>-<batch>/<dest_path>`` (``<site>``: a hash of this site's
   name, so sites sending to one remote never take each other's folders for their own;
   ``rclone copy --files-from-raw``, one run
   per local folder the sources are under: their store), so a half-written object never
   appears under a real name.
3. Verify every copy against the catalogue, never trusting rclone's exit status: one
   ``hashsum`` of the hidden folder (``RcloneClient.md5s``: the backend's MD5s with ``verify``
   ``auto``, else rclone reads the bytes back and hashes them; one more run when the backend
   turns out to have none). A data set is checked by its directory checksum over its members;
   a file the catalogue knows by xxh3-128 only is streamed back alone (``rclone cat``: a run
   per file). A mismatch fails that item alone with both checksums; its copy goes with the
   folder (step 5).
4. Rename the verified copies: one ``rclone move --ignore-existing`` per folder at the top of
   the remote that the batch writes into (rclone 1.60 refuses to move into a folder that holds
   the source, so not one move from the hidden folder to the remote's top; for the same reason
   a file at the very top of the remote is renamed alone, ``rclone moveto``). rclone lists the
   destination folders, renames into them, and leaves a copy in the hidden folder when its
   name is taken: the other object stays, and that item fails as a conflict (or is
   ``skipped`` when the object is the same content: another job sent it too, as step 1 would
   have found it). rclone's closing count of renames tells whether any was left; only then do
   an ``lsjson`` of the hidden folder and a look as in step 1 say which. The window that
   remains: something appearing under a name after rclone listed its folder and before it
   renames there (at most the move's own run, about a second per batch), since rclone 1.60
   has no rename-if-absent; a backend whose rename replaces an existing object (S3's
   server-side copy does, some SFTP servers' rename does) would replace it. A data set's
   members are renamed one by one. What the batch counts as sent is then looked up at its
   name (one ``lsjson``): gone from the hidden folder is not enough (the hidden folder may
   have been removed under the move).
5. Remove the hidden folder (``rclone purge``; with it what failed verification or met a
   conflict), then record the remote instances and ``transfer-sent`` events
   (``outgoing.record_remote``) and report.

A stream whose batch holds items an earlier run had claimed (its worker died or was stopped)
first removes the hidden folders earlier runs of this job left at the remote, once per run. A
cancel kills the running rclone within half a second and gives the hidden folder
``DISCARD_SECONDS`` to go (if it cannot, a later run of the job, if there is one, removes it;
otherwise it stays, and the job's log names it). The shared parts come from
``peer_sender.PeerSender``: allowed hours, ``max_in_flight``, reporting, and the exponential
backoff while the remote cannot be reached: the batch then starts over at step 1 (its hidden
folder emptied first; a file it renamed before counts as sent by it; a data set whose members it
had renamed only in part is found incomplete at its name and fails as a conflict, left for the
operator), and the job keeps running and says so in its log.
"""

from __future__ import annotations

import errno
import hashlib
import posixpath
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from ..catalogue import checksums as ck
from ..errors import StagingError
from ..jobs.items import ClaimedItem
from ..jobs.methods import Cancelled
from ..states import ItemState, TransferItemState
from . import protocol
from .kind_db import catalogue_db
from .outgoing import record_remote
from .peer_sender import PeerSender
from .rclone import RcloneClient, RclonePeer, glob_escape, join

T = TypeVar("T")
PARTIAL_PREFIX = ".hera-partial-"
#: Items a stream claims (and sends) at a time.
BATCH = 1000
#: Seconds a cancelled batch may spend removing its hidden folder.
DISCARD_SECONDS = 5.0
#: Outcomes of an item other than an error: sent by this job, or found there already (the
#: answers a hera_stage_ext peer gives too).
COMMITTED, HAVE = TransferItemState.COMMITTED, protocol.HAVE


class _Sweep:
    """Whether a run has removed the hidden folders its job's earlier runs left (once per
    run: its state under ``_SWEEP``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False


_SWEEP = "rclone.sweep"


@dataclass
class _Batch:
    """Items sent together, and what one attempt leaves the next (after the remote was away)."""

    items: list[ClaimedItem]
    folder: str  # the hidden folder's name, at the top of the remote
    there: set[int] | None = None  # the items the first look found at the remote
    copied: bool = False  # the hidden folder may hold something


class RcloneSender(PeerSender):
    peer: RclonePeer
    # Narrower than PeerSender's: an rclone peer's stream talks rclone, never the protocol.
    client: RcloneClient  # type: ignore[assignment]

    def connect(self) -> RcloneClient:  # type: ignore[override]  # (see ``client``)
        return RcloneClient(self.peer, interrupt=self.run.stopping)

    def rclone(self, what: str, fn: Callable[[RcloneClient], T]) -> T:
        """``fn`` with this stream's rclone client, retried like ``call`` while the remote
        cannot be reached (``call`` connects again before each retry: ``self.client`` is
        read when ``fn`` runs)."""
        return self.call(what, lambda _client: fn(self.client))

    def room(self) -> int:
        return min(super().room(), BATCH)

    def batch_bytes(self) -> int:
        return self.run.config.claim_bytes

    # ----- a batch ------------------------------------------------------------------------
    def send(self, batch: list[ClaimedItem]) -> None:
        run = self.run
        self.sweep(batch)
        sending = _Batch(batch, f"{job_folders(self.registry.site_name, run.job.id)}"
                                f"{run.run_key[:8]}-{uuid.uuid4().hex[:8]}")
        try:
            outcome = self.rclone(f"rclone peer {self.peer.name!r}",
                                  lambda c: self.put(c, sending))
        except Cancelled:
            self.discard(sending)
            raise
        except StagingError as exc:  # rclone reached the remote and failed
            self.discard(sending)
            outcome = {item.id: exc.message for item in batch}
        transfer = f"job{run.job.id}.rclone"
        for answer in (COMMITTED, HAVE):
            record_remote(catalogue_db(run), self.peer.name, transfer,
                          [i.name for i in batch if outcome[i.id] == answer], answer)
        for item in batch:
            answer, where = outcome[item.id], self.peer.path(item.dest_path)
            if answer == COMMITTED:
                self.report(item, ItemState.DONE, note=f"sent {item.name} to {where} ({item.size} "
                            "bytes; checksum verified at the remote)")
            elif answer == HAVE and item.attempts > 1:
                self.report(item, ItemState.DONE, note=f"verified {item.name} at {where} (sent "
                            "before the worker restarted; not sent again)")
            elif answer == HAVE:
                self.report(item, ItemState.SKIPPED, note=f"skipped {item.name}: {where} already "
                            "holds it (same checksum)")
            else:
                self.report(item, ItemState.FAILED, answer)

    def put(self, client: RcloneClient, batch: _Batch) -> dict[int, str]:
        """Steps 1-5 of the module's docstring: per item, ``COMMITTED``, ``HAVE`` or why it
        failed. Unavailable when the remote cannot be reached (the caller tries again)."""
        hidden = self.peer.path(batch.folder)
        if batch.copied:  # an attempt that broke off
            client.remove(hidden)
        outcome = self.look(client, batch)
        todo = [item for item in batch.items if item.id not in outcome]
        if todo:
            batch.copied = True
            self.rename(client, hidden, self.copy(client, hidden, todo, outcome), outcome)
            try:
                client.remove(hidden)
            except StagingError as exc:  # Unavailable goes up: the batch starts over
                self.run.log(f"could not remove {hidden}: {exc.message}")
            batch.copied = False
        return outcome

    def look(self, client: RcloneClient, batch: _Batch) -> dict[int, str]:
        """Step 1: the outcome of each item found at the remote already."""
        there, differs = self.examine(client, batch.items)
        by_id = {item.id: item for item in batch.items}
        if batch.there is None:
            batch.there = set(there)
        outcome = {}
        for item_id in there:
            if item_id in differs:
                outcome[item_id] = (f"conflict: {self.peer.path(by_id[item_id].dest_path)} "
                                    f"holds different content ({differs[item_id]}); "
                                    "not overwritten")
            else:  # what is not from the first look, an earlier attempt of this batch sent
                outcome[item_id] = HAVE if item_id in batch.there else COMMITTED
        return outcome

    def examine(self, client: RcloneClient, items: list[ClaimedItem]
                ) -> tuple[set[int], dict[int, str]]:
        """The items something is at the remote under the name of, and those of them where
        it is not the catalogue's content, with what differs."""
        sizes = client.sizes(self.peer.remote, _look_rules(items))
        there = [(item, files) for item in items if (files := _found(item, sizes))]
        differs = {item.id: f"{size} bytes there, {item.size} in the catalogue"
                   for item, files in there if (size := sum(files.values())) != item.size}
        same_size = [(item, files) for item, files in there if item.id not in differs]
        differs |= self.compare(client, self.peer.remote, same_size, client.md5s(
            self.peer.remote, [path for item, files in same_size if ck.MD5 in item.checksums
                               for path in files]))
        return {item.id for item, _ in there}, differs

    def copy(self, client: RcloneClient, hidden: str, todo: list[ClaimedItem],
             outcome: dict[int, str]) -> list[tuple[ClaimedItem, list[str]]]:
        """Steps 2 and 3: ``todo`` copied into the hidden folder and verified; the items
        verified, with their files. The others' failures go to ``outcome``."""
        sources: dict[str, list[str]] = {}  # local folder -> files to copy, relative to it
        for item in todo:
            try:
                root, files = _sources(item)
            except OSError as exc:
                outcome[item.id] = f"cannot read {exc.filename or item.source_path}: " \
                                   f"{exc.strerror}"
                continue
            sources.setdefault(root, []).extend(files)
        complaint = next((c for c in [client.copy(root, files, hidden)
                                      for root, files in sources.items()] if c), "")
        copies = client.md5s(hidden)  # what arrived, with its checksums
        arrived = []
        for item in todo:
            if item.id in outcome:
                continue
            if found := _found(item, copies):
                arrived.append((item, list(found)))
            else:
                outcome[item.id] = (f"verification failed at {self.peer.path(item.dest_path)}:"
                                    f" nothing arrived{f' ({complaint})' if complaint else ''}")
        differs = self.compare(client, hidden, arrived, copies)
        for item, _ in arrived:
            if item.id in differs:
                outcome[item.id] = (f"verification failed at {self.peer.path(item.dest_path)}:"
                                    f" {differs[item.id]}; the remote copy was removed")
        return [(item, files) for item, files in arrived if item.id not in differs]

    def rename(self, client: RcloneClient, hidden: str,
               verified: list[tuple[ClaimedItem, list[str]]], outcome: dict[int, str]) -> None:
        """Step 4: the verified copies renamed to their names; their outcomes."""
        tops: dict[str, list[str]] = {}  # folder at the top of the remote -> paths in it
        for _item, files in verified:
            for path in files:
                top, _, rest = path.partition("/")
                tops.setdefault(top, []).append(rest)
        failures, everything = {}, True
        for top, paths in tops.items():
            renamed, failures[top] = client.move(join(hidden, top), self.peer.path(top), paths) \
                if paths != [""] else client.move_file(join(hidden, top), self.peer.path(top))
            everything &= renamed
        left = client.sizes(hidden) if not everything else {}  # what was not renamed
        taken = []  # names something took while this batch was copied
        for item, files in verified:
            stuck = next((path for path in files if path in left), None)
            if stuck is None:
                outcome[item.id] = COMMITTED
            elif failure := failures[stuck.partition("/")[0]]:
                outcome[item.id] = f"renaming failed at {self.peer.path(item.dest_path)}: " \
                                   f"{failure}"
            else:
                taken.append(item)
        if taken:  # the same content (another job sent it too) counts as there already
            there, differs = self.examine(client, taken)
            for item in taken:
                what = f" ({differs[item.id]})" if item.id in differs else ""
                outcome[item.id] = HAVE if item.id in there and not what else (
                    f"conflict: {self.peer.path(item.dest_path)} appeared while sending{what}; "
                    "not overwritten")
        # Gone from the hidden folder is not sent: each must be at its name, whole (the
        # hidden folder may have been removed under the move, by hand or by a lifecycle rule).
        moved = [item for item, _files in verified if outcome[item.id] == COMMITTED]
        if moved:
            sizes = client.sizes(self.peer.remote, _look_rules(moved))
            for item in moved:
                arrived = _found(item, sizes)
                if not arrived or sum(arrived.values()) != item.size:
                    outcome[item.id] = (f"renaming failed at {self.peer.path(item.dest_path)}: "
                                        "not there after the rename")

    def compare(self, client: RcloneClient, base: str,
                found: Sequence[tuple[ClaimedItem, Collection[str]]], md5s: Mapping[str, str]
                ) -> dict[int, str]:
        """What differs between the catalogue and each item's files under ``base`` (the
        paths in ``found``, their MD5s in ``md5s``), for the items where something does."""
        differs = {}
        for item, files in found:
            if item.is_directory and item.dest_path in files:
                differs[item.id] = "a file where a data set is expected"
                continue
            if ck.MD5 not in item.checksums:  # xxh3-128 only: each file streamed back
                algorithm = ck.preferred_algorithm(item.checksums)
                checksum = _checksum(item, files, algorithm,
                                     partial(_streamed_checksum, client, base, algorithm))
            elif lost := [path for path in files if path not in md5s]:
                differs[item.id] = f"{lost[0]} could not be read back"
                continue
            else:
                algorithm, checksum = ck.MD5, _checksum(item, files, ck.MD5, md5s.__getitem__)
            if checksum != item.checksums[algorithm]:
                differs[item.id] = (f"{algorithm} {checksum} there, "
                                    f"{item.checksums[algorithm]} in the catalogue")
        return differs

    # ----- hidden folders -----------------------------------------------------------------
    def sweep(self, batch: list[ClaimedItem]) -> None:
        """Remove the hidden folders earlier runs of this job left at the remote, when this
        batch holds items one of them had claimed; once per run."""
        run = self.run
        if all(item.attempts == 1 for item in batch):
            return
        swept = run.state_for(_SWEEP, _Sweep)
        with swept.lock:
            if swept.done:
                return
            swept.done = True
        job_prefix = job_folders(self.registry.site_name, run.job.id)
        mine = f"{job_prefix}{run.run_key[:8]}-"

        def sweep(client: RcloneClient) -> list[str]:
            old = [name for name in client.folders(self.peer.remote)
                   if name.startswith(job_prefix) and not name.startswith(mine)]
            for name in old:
                client.remove(self.peer.path(name))
            return old

        try:
            old = self.rclone(f"rclone peer {self.peer.name!r}", sweep)
        except StagingError as exc:
            run.log(f"could not remove what earlier attempts left at {self.peer.remote}: "
                    f"{exc.message}")
            return
        if old:
            run.log(f"removed {', '.join(old)} at {self.peer.remote}: copies earlier attempts "
                    "of this job left there")

    def discard(self, batch: _Batch) -> None:
        """Remove the hidden folder of a batch that failed or was cancelled, giving it
        ``DISCARD_SECONDS``."""
        if not batch.copied:
            return
        deadline = time.monotonic() + DISCARD_SECONDS
        client = RcloneClient(self.peer, timeout=DISCARD_SECONDS,
                              interrupt=lambda: time.monotonic() > deadline)
        try:
            client.remove(self.peer.path(batch.folder))
        except (StagingError, Cancelled):
            self.run.log(f"could not remove {self.peer.path(batch.folder)} now: it stays at "
                         "the remote until a later run of this job, if any, removes it")


def job_folders(site: str, job_id: int) -> str:
    """How the hidden folders of this site's job ``job_id`` begin. Job ids are a site's own:
    with the site in the name, another site sending to the same remote never sweeps them."""
    return f"{PARTIAL_PREFIX}{hashlib.sha256(site.encode()).hexdigest()[:8]}-{job_id}-"


def _look_rules(items: Iterable[ClaimedItem]) -> list[str]:
    """rclone filter rules listing the folders the items go to (their files, one level) and
    their data sets (recursively)."""
    rules = set()
    for item in items:
        if item.is_directory:
            rules |= {f"+ /{glob_escape(item.dest_path)}", f"+ /{glob_escape(item.dest_path)}/**"}
        else:
            parent = posixpath.dirname(item.dest_path)
            rules.add(f"+ /{glob_escape(parent)}/*" if parent else "+ /*")
    return [*sorted(rules), "- **"]


def _found(item: ClaimedItem, listing: Mapping[str, T]) -> dict[str, T]:
    """The entries of a listing (by path) under ``item``'s name: the file, or a data set's
    members (and a file with the data set's name)."""
    if not item.is_directory:
        path = item.dest_path
        return {path: listing[path]} if path in listing else {}
    prefix = item.dest_path + "/"
    found = {path: value for path, value in listing.items() if path.startswith(prefix)}
    if item.dest_path in listing:
        found[item.dest_path] = listing[item.dest_path]
    return found


def _sources(item: ClaimedItem) -> tuple[str, list[str]]:
    """The local folder ``item`` is in at its ``dest_path`` (its store's root, or its recall
    buffer's), and its files relative to that folder (a data set's members)."""
    if not item.source_path.endswith("/" + item.dest_path):
        raise OSError(errno.EINVAL, f"its path in the store is not {item.dest_path}", item.source_path)
    root = item.source_path[:-len(item.dest_path) - 1] or "/"
    if not item.is_directory:
        return root, [item.dest_path]
    files = [f"{item.dest_path}/{member}"
             for member in ck.directory_members(Path(item.source_path))]
    if any("\n" in path or "\r" in path for path in files):
        # rclone's file lists and hashsum output are one path per line.
        raise OSError(errno.EINVAL, "a member's name holds a line break, which rclone's file "
                      "lists cannot carry", item.source_path)
    return root, files


def _streamed_checksum(client: RcloneClient, base: str, algorithm: str, path: str) -> str:
    """The ``algorithm`` checksum of the file at ``path`` under ``base``, streamed back."""
    return client.download_digest(join(base, path), algorithm).checksums[algorithm]


def _checksum(item: ClaimedItem, files: Iterable[str], algorithm: str,
              member: Callable[[str], str]) -> str:
    """``item``'s checksum from its files' (``member``): a data set's is its directory
    checksum over its members."""
    if not item.is_directory:
        return member(item.dest_path)
    cut = len(item.dest_path) + 1
    ordered = sorted(files, key=lambda path: path[cut:].encode("utf-8", "surrogateescape"))
    # Sizes do not enter the directory checksum.
    return ck.manifest_digest(((path[cut:], ck.Digest(0, {algorithm: member(path)}, False))
                               for path in ordered), (algorithm,)).checksums[algorithm]
