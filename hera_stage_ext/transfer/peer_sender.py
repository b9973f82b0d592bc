"""One stream of a transfer job towards a peer running hera_stage_ext (``PeerSender``): it
waits for the peer's hours and room under its ``max_in_flight``, claims a batch, announces it,
reports what the peer already has or refuses, and follows the accepted files with ``status``
long polls until each is committed or failed. A peer whose ``ping`` says it takes pushes
(asked once, before a stream's first claim) gets a batch's small flat files by ``POST push``
instead, from the first claim on (their bytes with their offers, each answered with its
outcome: no pull, no status polls), looked up with their offers (``outgoing.offers_for``'s
``found``) and read as a peer's batch pull reads them (``members_at``, ``MemberReader``: each
folder opened once below the store's root, no link followed), each push sent by the stream's
``pusher`` thread while the stream reads the next (at most one in flight a stream, answered
before the stream's client is used again); a peer this site throttles (``max_bytes_per_s``,
applied by its server's pull handlers) is never pushed to, and one that answers a push 404 (a
proxy that knows only the older routes) is announced to from then on.
``rclone_send.RcloneSender`` builds on it for rclone remotes; ``jobs.TransferKind`` picks one
of the two per peer.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import func, select

from ..catalogue.db import Database
from ..errors import StagingError, Unavailable
from ..jobs.items import claim_items, ClaimedItem, requeue_items
from ..jobs.methods import Cancelled
from ..jobs.models import JobRow, JobItem
from ..states import ItemState, JobState, TransferItemState
from .peers import Peer, PeerRegistry
from .protocol import (
    BATCH_FILE_MAX, BATCH_MAX_FILES, COMMITTED, HAVE, MAX_OFFERS, PUSH_HEAD_MAX, RETRY, SEND,
    UNKNOWN, PeerClient, PushLimits)
from .outgoing import Found, MemberReader, members_at, offers_for, record_remote

if TYPE_CHECKING:
    from ..jobs.contract import KindRun

T = TypeVar("T")
DESTINATION_PREFIX = "peer:"
#: Longest wait of one status long poll (seconds): how late a cancel can be noticed.
STATUS_WAIT = 2.0
#: ...and while a large file is being pulled, how often the bytes it has are asked for.
PROGRESS_WAIT = 0.5
#: Files in a stream's first announce or push (later ones carry up to ``MAX_OFFERS``): the peer
#: starts pulling or writing once a short one is built, checked and recorded at both ends,
#: instead of waiting for a full one (about 0.1 s of a small-file transfer's start, measured).
FIRST_OFFERS = 100


def peer_destination(peer: str) -> str:
    return DESTINATION_PREFIX + peer


def refusal(answer: str, message: str) -> str:
    """The error of an item the peer refused (``conflict``, ``no-space``, ``refused``);
    standing orders read the ``conflict`` ones back to hold those files (``orders.py``)."""
    return f"peer answered {answer}: {message}"



#: Held while a stream counts a peer's items in flight and claims (see ``PeerSender.claim``).
_claim_lock = threading.Lock()


class _Notices:
    """Notices already logged by a run's streams (its state under ``_NOTICES``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: set[str] = set()


_NOTICES = "transfer.notices"



class _Push(NamedTuple):
    """A push in flight (``PeerSender.start``): its items by name, their offers (``known``),
    when it was sent, its reply to come, how many times it was sent (more than once: a
    push that broke, sent again whole), and when its reply came (``time.monotonic``; the
    stream acts on it later, once it has read its next push)."""

    transfer: str
    items: dict[str, ClaimedItem]
    known: dict[str, dict[str, Any]]
    started: float
    reply: Future[dict[str, Any]]
    tries: list[int]
    replied: list[float]


class PeerSender:
    """One stream of a transfer job: batches announced, followed and reported."""

    def __init__(self, run: KindRun, registry: PeerRegistry, peer: Peer) -> None:
        if run.db is None:  # a transfer's streams record what the peer holds in the catalogue
            raise StagingError("a transfer job runs only with the catalogue at hand")
        self.run, self.registry, self.peer = run, registry, peer
        self.db: Database = run.db
        self.client = self.connect()
        self.reported: set[int] = set()
        #: Accepted by the peer and not through yet: name -> item, and (transfer, when).
        self.waiting: dict[str, ClaimedItem] = {}
        self.announced: dict[str, tuple[str, float]] = {}
        self.sent_any = False  # a first announce or push made (the next ones are full)
        #: What the peer's ping, then its last announce reply, said it takes in a push; None:
        #: no pushes (an older receiver, a peer this site throttles, or one that answered a
        #: push 404: ``push_refused``).
        self.push_limits: PushLimits | None = None
        self.push_refused = False
        #: Items of pushes answered 5xx, announced instead: a ``have`` for one of them is the
        #: push's own work (it may have committed some before it failed).
        self.push_failed: set[int] = set()
        #: The push in flight, sent by ``pusher`` (one thread) while this stream reads the
        #: next: at most one a stream, answered (``settle``) before the client is used again.
        self.pushing: _Push | None = None
        self.pusher: ThreadPoolExecutor | None = None

    # ----- waiting, always interruptible by cancel, lost lease or worker stop -------------
    def check(self) -> None:
        if self.run.stopping():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        if self.run.wait_stopping(seconds):
            raise Cancelled()

    def once(self, key: str, message: str) -> None:
        """Log ``message`` unless another stream of this run logged the same ``key``."""
        notes = self.run.state_for(_NOTICES, _Notices)
        with notes.lock:
            if key in notes.keys:
                return
            notes.keys.add(key)
        self.run.log(message)

    def wait_for_hours(self) -> None:
        waited = False
        while (wait := self.peer.seconds_until_open()) > 0:
            self.settle()  # (not left unanswered for hours)
            self.once(f"hours-closed-{self.peer.hours}",
                      f"waiting: peer {self.peer.name!r} takes transfers only at hours "
                      f"{self.peer.hours} (local time of this site); they begin in "
                      f"{wait / 60:.0f} min")
            waited = True
            self.sleep(min(wait, 5.0))
        if waited:
            self.once(f"hours-open-{self.peer.hours}",
                      f"peer {self.peer.name!r}: allowed hours begin, sending")

    def room(self) -> int:
        """Items one claim takes at most (before the peer's ``max_in_flight``): a whole number
        of announces where the engine's claim allows it (1,024 would announce 500, 500 and 24:
        a third round trip, and a third transaction at the peer, for 24 files)."""
        claim = self.run.config.claim_batch
        return max(claim - claim % MAX_OFFERS, min(claim, MAX_OFFERS))

    def batch_bytes(self) -> int | None:
        """Bytes one claim takes at most (but always one item); None: no limit."""
        return None

    def claim(self, wait: bool = True) -> list[ClaimedItem]:
        """The next batch, no more than the peer's ``max_in_flight`` allows; without room,
        waits for it (``wait``) or returns nothing at once (a stream with files in flight
        follows them meanwhile).

        Counting and claiming hold a lock, so this worker's streams never overshoot together;
        between worker processes the count is a close bound, not a lock."""
        run = self.run
        while True:
            with _claim_lock:
                n = self.room()
                if self.peer.max_in_flight:
                    with self.db.read() as s:
                        in_flight = s.scalar(select(func.count()).select_from(JobItem).join(
                            JobRow, JobRow.id == JobItem.job_id).where(
                            JobRow.destination == peer_destination(self.peer.name),
                            JobRow.state == JobState.RUNNING,
                            JobItem.state == ItemState.RUNNING)) or 0
                    n = min(n, self.peer.max_in_flight - in_flight)
                if n > 0:
                    return claim_items(self.db, run.job.id, n,
                                        self.batch_bytes())
            # Items through but not recorded yet still count as running: record them (those
            # of this stream's push in flight once it is answered).
            self.settle()
            run.commit(wait=False)
            self.once("in-flight", f"waiting: {in_flight} item(s) in flight to peer "
                      f"{self.peer.name!r} (its max_in_flight {self.peer.max_in_flight})")
            if not wait:
                return []
            self.sleep(0.5)

    def call(self, what: str, fn: Callable[[PeerClient], T]) -> T:
        """``fn(client)``, retried with exponential backoff while the peer is unreachable (once
        this stream's push in flight is answered: one request at a time on the client)."""
        self.settle()
        return self.retrying(what, fn)

    def retrying(self, what: str, fn: Callable[[PeerClient], T]) -> T:
        """``call`` without waiting for a push in flight (what the ``pusher`` runs)."""
        delay, attempt = 1.0, 0
        while True:
            self.check()
            try:
                return fn(self.client)
            except Unavailable as exc:
                attempt += 1
                self.run.log(f"{what}: {exc.message}; attempt {attempt} failed, trying again "
                             f"in {delay:.0f} s")
                self.sleep(delay)
                delay = min(delay * 2, self.peer.retry_max_s)
                # A new connection, to the peer as configured now (in-process runs may change
                # it; a worker's configuration is fixed at its start).
                self.client.close()
                self.peer = self.registry.peer(self.peer.name)
                self.client = self.connect()

    def connect(self) -> PeerClient:
        return PeerClient(self.peer, self.registry.site_name)

    def close(self) -> None:
        """Once the stream is over (``loop`` answered its push in flight): its client and
        pusher thread let go."""
        if self.pusher is not None:
            self.pusher.shutdown()
        self.client.close()

    # ----- results ------------------------------------------------------------------------
    def report(self, item: ClaimedItem, state: ItemState, error: str = "",
               note: str = "") -> None:
        run = self.run
        if state == ItemState.FAILED:
            run.log.note(f"FAILED {item.name}: {error}")
        elif note:
            run.log.note(note)
        if state == ItemState.DONE:
            run.count_copied(item.size)
        run.inflight.drop(("peer", item.name))  # (its bytes pulled so far, ``progress``)
        run.report(item, state, error)
        self.reported.add(item.id)
        if run.commit_due():
            run.commit(wait=False)

    def report_done(self, items: list[ClaimedItem], notes: list[str]) -> None:
        """``report`` of ``items`` the peer committed, each done with its log line in ``notes``,
        all at once (a push's answer has up to 500: their lines, bytes and results each
        handed over once, under one lock, not once a file); nothing here is left to make final
        (``report_final``)."""
        run = self.run
        run.log.notes(notes)
        run.count_copied(sum(item.size for item in items))
        run.inflight.drop_all([("peer", item.name) for item in items])
        run.report_final(items)
        self.reported.update(item.id for item in items)
        if run.commit_due():
            run.commit(wait=False)

    # ----- the stream ---------------------------------------------------------------------
    def loop(self) -> None:
        """Claim, announce, follow; the next batch is claimed and announced while the peer
        still pulls the last one (at most about two claims in flight per stream), so the
        peer always has work queued."""
        run = self.run
        claimed: list[ClaimedItem] = []
        try:
            while not (run.stopping()):
                if len(self.waiting) < self.room() and (
                        not self.waiting or self.peer.seconds_until_open() == 0):
                    if not self.waiting:
                        self.wait_for_hours()
                    batch = self.claim(wait=not self.waiting)
                    if batch:
                        claimed += batch
                        self.send(batch)
                        continue
                    self.settle()  # (its files to send again are then announced: followed)
                    if not self.waiting:
                        return
                self.follow()
        finally:
            if self.pushing is not None:  # (an error or a stop is on its way out, and is
                # the one raised): what the peer committed meanwhile is reported as done
                with contextlib.suppress(Exception):
                    self.settle()
            # Claimed and not through (cancel, stop): back to the queue, announced again
            # by whoever takes them (the peer keeps pulling what it accepted meanwhile).
            requeue_items(self.db, [c.id for c in claimed if c.id not in self.reported])
            for name in self.waiting:
                run.inflight.drop(("peer", name))

    def send(self, batch: list[ClaimedItem]) -> None:
        """Announce ``batch`` (one transfer), ``MAX_OFFERS`` at a time, or push its small files
        when the peer takes pushes; a stream's very first claim is split at ``FIRST_OFFERS``,
        those offers built, read and sent alone (the peer starts on them while the rest are
        built and read), after the peer's ping has said whether it takes pushes."""
        transfer = f"job{self.run.job.id}.{uuid.uuid4().hex[:16]}"
        parts = [batch]
        if not self.sent_any:
            self.sent_any = True
            parts = [batch[:FIRST_OFFERS], batch[FIRST_OFFERS:]]
            try:
                self.push_limits = self.takes_pushes(self.call(
                    f"ping peer {self.peer.name!r}", _ping))
            except StagingError:  # refused (a secret changed): the announce says so per file
                self.push_limits = None
        for part in filter(None, parts):
            # With pushes, where their files lie comes with their offers (one query).
            found: Found | None = None if self.push_limits is None else {}
            known = offers_for(self.db, {item.name: item.dest_path for item in part}, found)
            pushed: list[ClaimedItem] = []
            if self.push_limits is not None:
                part, pushed = self.pushable(part, known, self.push_limits)
            # The announced first: the peer starts pulling them while the push is received.
            for start in range(0, len(part), MAX_OFFERS):
                self.announce(transfer, part[start:start + MAX_OFFERS], known)
            for start in range(0, len(pushed), BATCH_MAX_FILES):
                self.push(transfer, pushed[start:start + BATCH_MAX_FILES], known, found or {})

    def announce(self, transfer: str, chunk: list[ClaimedItem],
                 known: dict[str, dict[str, Any]]) -> None:
        """One announce of ``chunk`` (at most ``MAX_OFFERS``; ``known``: their offers by name,
        those of files no longer known missing) to the peer, and its answers."""
        offers, items = [], {}
        for item in chunk:
            if item.name not in known:
                self.report(item, ItemState.FAILED, f"no file named {item.name!r}")
                continue
            offers.append(known[item.name])
            items[item.name] = item
        if not offers:
            return
        announced = time.monotonic()
        try:
            reply = self.call(f"announce to peer {self.peer.name!r}",
                              _announce(transfer, offers))
        except StagingError as exc:  # refused outright (secret changed, bad request)
            for offer in offers:
                self.report(items[offer["name"]], ItemState.FAILED, exc.message)
            return
        self.push_limits = self.takes_pushes(reply)
        self.answered(transfer, items, reply["files"], announced)

    def answered(self, transfer: str, items: dict[str, ClaimedItem],
                 answers: list[dict[str, Any]], announced: float, pushed: bool = False,
                 sent_again: bool = False, replied: float | None = None) -> list[ClaimedItem]:
        """Act on the peer's answers to an announce (or a push: ``pushed``; ``sent_again``:
        after one that broke; ``replied``: when its reply came, else now) of ``items``:
        follow the files it will pull, report the rest; those a push's answer says to send
        again by announce."""
        have, committed, again = [], [], []
        for answer in answers:
            item = items[answer["name"]]
            kind = answer["answer"]
            if kind == SEND:
                self.waiting[item.name] = item
                self.announced[item.name] = (transfer, announced)
            elif kind == HAVE:
                have.append(item)
            elif pushed and kind == COMMITTED:
                committed.append(item)
            elif pushed and kind == RETRY:
                again.append(item)
            else:
                self.report(item, ItemState.FAILED, refusal(kind, answer.get("message", "")))
        record_remote(self.db, self.peer.name, transfer, [i.name for i in have], HAVE)
        for item in have:
            # An earlier attempt of this job sent it (its worker died before recording, or
            # a push broke after the peer committed it).
            mine = item.attempts > 1 or sent_again or item.id in self.push_failed
            self.report(item, ItemState.DONE if mine else ItemState.SKIPPED, note=(
                f"verified {item.name} at {self.peer.name} (sent before the worker "
                f"restarted; not sent again)" if item.attempts > 1
                else f"verified {item.name} at {self.peer.name} (sent by a push that broke; "
                f"not sent again)" if mine
                else f"skipped {item.name}: {self.peer.name} already holds it"))
        if committed:
            record_remote(self.db, self.peer.name, transfer, [i.name for i in committed],
                          TransferItemState.COMMITTED)
            since = (time.monotonic() if replied is None else replied) - announced
            peer = self.peer.name
            self.report_done(committed, [
                f"sent {item.name} to {peer} ({item.size} bytes; verified and registered "
                f"there; {since:.1f} s since announced)" for item in committed])
        return again

    def takes_pushes(self, reply: dict[str, Any]) -> PushLimits | None:
        """What the peer's ping or announce ``reply`` says it takes in a push: pushes only to a
        peer that says it takes them, never past this site's throttle of it (which only its
        server's pull handlers apply), and never again to one that answered a push 404."""
        if self.peer.max_bytes_per_s or self.push_refused:
            return None
        return PushLimits.of(reply)

    @staticmethod
    def pushable(chunk: list[ClaimedItem], known: dict[str, dict[str, Any]],
                 limits: PushLimits) -> tuple[list[ClaimedItem], list[ClaimedItem]]:
        """``chunk`` split into (what is announced, what is pushed: known flat files of at
        most the peer's ``max_file``)."""
        announced, pushed = [], []
        for item in chunk:
            offer = known.get(item.name)
            if offer is not None and not offer["is_directory"] \
                    and offer["size"] <= limits.max_file:
                pushed.append(item)
            else:
                announced.append(item)
        return announced, pushed

    def push(self, transfer: str, items: list[ClaimedItem],
             known: dict[str, dict[str, Any]], found: Found) -> None:
        """Push ``items`` (at most ``BATCH_MAX_FILES`` known small flat files, their offers in
        ``known``, where they lie in ``found``; each folder opened once) in as few requests
        as the peer's limits allow, each file read as a peer's batch pull reads it, each
        request sent while the next is read (``start``; the last one left in flight while the
        stream claims and reads its next batch); those the peer answers ``retry`` for, and
        those whose size changed here, are announced (pulled, verified as any)."""
        limits = self.push_limits
        if limits is None:  # the peer stopped taking pushes (an earlier one was answered 404)
            for start in range(0, len(items), MAX_OFFERS):
                self.announce(transfer, items[start:start + MAX_OFFERS], known)
            return
        # Room for the offers' JSON at a body's head (the receiver takes at most this).
        room = max(limits.max_bytes - min(PUSH_HEAD_MAX, limits.max_bytes // 2), 1)
        members = members_at([item.name for item in items], found)
        batch: list[tuple[ClaimedItem, bytes]] = []
        size, announce = 0, []
        with MemberReader(members) as reader:
            for item, member in zip(items, members):
                offer = known[item.name]
                if self.push_limits is None:  # a push of this claim was refused: the rest too
                    announce.append(item)
                    continue
                try:
                    if member.error:
                        raise StagingError(member.error)
                    data = reader.read(member, limits.max_file)
                except OSError as exc:
                    self.report(item, ItemState.FAILED, _cannot_serve(
                        f"cannot read {item.name!r} here: {exc.strerror}"))
                    continue
                except StagingError as exc:  # no instance any more, a link leading out
                    self.report(item, ItemState.FAILED, _cannot_serve(exc.message))
                    continue
                if len(data) != offer["size"]:  # changed here: the pull path verifies it
                    announce.append(item)
                    continue
                if batch and (len(batch) >= limits.max_files or size + len(data) > room):
                    announce += self.start(transfer, batch, known)
                    batch, size = [], 0
                batch.append((item, data))
                size += len(data)
        if batch:
            announce += self.start(transfer, batch, known)
        for start in range(0, len(announce), MAX_OFFERS):
            self.announce(transfer, announce[start:start + MAX_OFFERS], known)

    def start(self, transfer: str, batch: list[tuple[ClaimedItem, bytes]],
              known: dict[str, dict[str, Any]]) -> list[ClaimedItem]:
        """Send ``batch`` (items with their bytes) by one ``POST push`` from the ``pusher``
        thread, once the push in flight is answered (``settle``), and return: the stream
        reads the next meanwhile, so the peer always has this stream's next push at hand
        instead of waiting for it to be read. The items to announce instead (the peer no
        longer takes pushes)."""
        self.settle()
        if self.push_limits is None:  # the last push was refused: announce
            return [item for item, _data in batch]
        items = {item.name: item for item, _data in batch}
        offers = [known[name] for name in items]
        data = [data for _item, data in batch]
        tries = [0]
        replied = [0.0]

        def push(client: PeerClient) -> dict[str, Any]:
            tries[0] += 1
            reply = client.push(transfer, offers, data)
            replied[0] = time.monotonic()
            return reply

        if self.pusher is None:
            self.pusher = ThreadPoolExecutor(
                1, thread_name_prefix=threading.current_thread().name + "-push")
        self.pushing = _Push(transfer, items, known, time.monotonic(), self.pusher.submit(
            self.retrying, f"push to peer {self.peer.name!r}", push), tries, replied)
        return []

    def settle(self) -> None:
        """Wait for this stream's push in flight, if any (retried whole while the peer is
        unreachable), and act on its answers: those the peer committed are done, those it
        answers to send again (or all, when it is busy or failed) are announced."""
        pushing, self.pushing = self.pushing, None
        if pushing is None:
            return
        items = pushing.items
        again: list[ClaimedItem] = []
        try:
            reply = pushing.reply.result()
        except StagingError as exc:
            if exc.status in (404, 405, 411, 413):  # it no longer takes them: announce
                self.push_limits, self.push_refused = None, True
                again = list(items.values())
            elif exc.status >= 500:
                # Busy (it holds as many pushes as it takes), or it failed after committing
                # some of them: the announce says which it holds (``have``) and pulls the rest.
                if exc.status != 503:  # (a busy receiver's 503 comes before any is read)
                    self.push_failed.update(item.id for item in items.values())
                again = list(items.values())
            else:
                for item in items.values():  # refused outright (secret changed, bad request)
                    self.report(item, ItemState.FAILED, exc.message)
        else:
            again = self.answered(pushing.transfer, items, reply["files"], pushing.started,
                                  pushed=True, sent_again=pushing.tries[0] > 1,
                                  replied=pushing.replied[0])
        for start in range(0, len(again), MAX_OFFERS):
            self.announce(pushing.transfer, again[start:start + MAX_OFFERS], pushing.known)

    def follow(self) -> None:
        """Ask the peer once how the files it accepted are doing, and report those through: a
        long poll (the peer answers as soon as one more is through, or after
        ``STATUS_WAIT``)."""
        waiting = self.waiting
        asked = time.monotonic()
        names = list(waiting)
        large = [name for name, item in waiting.items() if item.size > BATCH_FILE_MAX]
        wait = PROGRESS_WAIT if large else STATUS_WAIT
        rows: list[dict[str, Any]] = []
        for start in range(0, len(names), 10 * MAX_OFFERS):
            part = names[start:start + 10 * MAX_OFFERS]
            try:
                rows += self.call(f"status from peer {self.peer.name!r}",
                                  _status(part, wait, finished_only=True))["files"]
            except StagingError as exc:
                for name in part:
                    self.report(waiting.pop(name), ItemState.FAILED, exc.message)
        committed = [waiting[r["name"]] for r in rows
                     if r["state"] == TransferItemState.COMMITTED and r["name"] in waiting]
        by_transfer: dict[str, list[str]] = {}
        for item in committed:
            by_transfer.setdefault(self.announced[item.name][0], []).append(item.name)
        for transfer, done in by_transfer.items():
            record_remote(self.db, self.peer.name, transfer, done,
                          TransferItemState.COMMITTED)
        now = time.monotonic()
        notes = []
        for item in committed:
            del waiting[item.name]
            _transfer, announced = self.announced.pop(item.name)
            notes.append(f"sent {item.name} to {self.peer.name} ({item.size} bytes; verified "
                         f"and registered there; {now - announced:.1f} s since announced)")
        if committed:
            self.report_done(committed, notes)
        for row in rows:
            if row["name"] not in waiting:
                continue
            if row["state"] in (TransferItemState.FAILED, UNKNOWN):
                self.announced.pop(row["name"], None)
            if row["state"] == TransferItemState.FAILED:
                self.report(waiting.pop(row["name"]), ItemState.FAILED,
                            f"the peer failed to receive it: {row['error']}")
            elif row["state"] == UNKNOWN:
                self.report(waiting.pop(row["name"]), ItemState.FAILED,
                            "the peer has no record of it (retry the job to announce it "
                            "again)")
        self.progress([name for name in large if name in waiting])
        if waiting and not committed and time.monotonic() - asked < 0.1:
            self.sleep(0.5)  # a peer that answered at once with nothing new: no busy loop

    def progress(self, names: list[str]) -> None:
        """The bytes the peer has of these large files it is pulling, for the job's progress
        (small files arrive whole, a batch at a time: they count when committed)."""
        for start in range(0, len(names), 10 * MAX_OFFERS):
            part = names[start:start + 10 * MAX_OFFERS]
            try:
                rows = self.call(f"status from peer {self.peer.name!r}",
                                 _status(part))["files"]
            except StagingError:
                return  # progress only: the next long poll says what became of them
            for row in rows:
                item = self.waiting.get(row["name"])
                if item is not None and row.get("state") == TransferItemState.RECEIVING:
                    self.run.inflight.set(("peer", item.name),
                                          min(int(row.get("bytes") or 0), item.size))


def _cannot_serve(error: str) -> str:
    """The failure of a file this site cannot send: what a peer's pull of it reports."""
    return f"the peer failed to receive it: the sender cannot serve it: {error}"


def _ping(client: PeerClient) -> dict[str, Any]:
    """A call of ``ping`` for ``PeerSender.call``."""
    return client.ping()


def _announce(transfer: str, offers: list[dict[str, Any]]
              ) -> Callable[[PeerClient], dict[str, Any]]:
    """A call of ``announce`` for ``PeerSender.call`` (bound now, not to a loop's variable)."""
    return lambda client: client.announce(transfer, offers)


def _status(names: list[str], wait: float = 0.0, finished_only: bool = False
            ) -> Callable[[PeerClient], dict[str, Any]]:
    """A call of ``status`` for ``PeerSender.call``."""
    return lambda client: client.status(names, wait, finished_only=finished_only)
