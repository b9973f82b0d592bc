"""The sending side: ``send_files`` (synchronous; a transfer job will call it) and ``list_peers``.

``send_files`` announces the files to the peer in batches, records a remote instance for every
file the peer already has, then polls the peer's ``status`` until every file it accepted is
``committed`` (it pulled, verified, stored and registered it: the sender then records the remote
instance and a ``transfer-sent`` event) or ``failed``, or the time is up. It is idempotent: run
again, it announces again and the peer answers ``have`` for what it holds and resumes the rest.
While the peer is unreachable it retries with backoff, reading the peer's URL from the
configuration each time.

This slice keeps the sender's in-flight state on the receiver (``transfer_item``) and its result
in ``remote_instance``; the transfer job (``job_item`` rows) will hold the sender's own progress.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select

from ..catalogue.models import Event, File, utcnow
from ..errors import NotFound, StagingError, Unavailable
from .models import RemoteInstance
from .protocol import HAVE, MAX_OFFERS, SEND, PeerClient, offer_from_detail

if TYPE_CHECKING:
    from ..core import Core

log = logging.getLogger("hera_stage_ext.transfer")
T = TypeVar("T")


class _Link:
    """A client to one peer that follows configuration changes and retries while unreachable."""

    def __init__(self, core: Core, peer_name: str, deadline: float) -> None:
        self.core, self.peer_name, self.deadline = core, peer_name, deadline
        self.client = PeerClient(core.peers.peer(peer_name), core.site_name)

    def call(self, fn: Callable[[PeerClient], T]) -> T:
        delay = 0.5
        while True:
            try:
                return fn(self.client)
            except Unavailable:
                if time.monotonic() + delay > self.deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                self.client.close()
                self.client = PeerClient(self.core.peers.peer(self.peer_name),
                                         self.core.site_name)

    def close(self) -> None:
        self.client.close()


def send_files(core: Core, peer_name: str, names: Sequence[str], *, timeout: float = 3600.0,
               poll_interval: float = 0.2) -> dict[str, Any]:
    """Send ``names`` to ``peer_name``; a report with one entry per name and counts by state.

    States: ``committed`` (moved and verified), ``have`` (the peer already held it), ``conflict``,
    ``no-space``, ``refused``, ``failed`` (with the peer's error), ``missing`` (no such file or no
    available online instance here), ``skipped`` (a directory: not transferred yet), ``pending``
    (still moving when ``timeout`` ran out: send again to follow it up).
    Raises NotFound for an unknown peer, Unauthorized when the peer refuses our secret,
    Unavailable when it cannot be reached within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    transfer = uuid.uuid4().hex
    files: dict[str, dict[str, Any]] = {}
    offers = []
    for name in dict.fromkeys(names):
        entry = files[name] = {"name": name, "state": "pending", "message": ""}
        try:
            detail = core.catalogue.file_detail(name)
            instance = core.catalogue.locate(name)
        except NotFound as exc:
            entry.update(state="missing", message=exc.message)
            continue
        if detail["is_directory"]:
            entry.update(state="skipped", message="directory data sets are not transferred yet")
            continue
        if instance.get("store_kind") != "online":
            entry.update(state="missing", message="only on a cold store; recall it first")
            continue
        offers.append(offer_from_detail(detail, instance["path"]))
    link = _Link(core, peer_name, deadline)
    try:
        for start in range(0, len(offers), MAX_OFFERS):
            batch = offers[start:start + MAX_OFFERS]
            reply = link.call(lambda c, batch=batch: c.announce(transfer, batch))
            for answer in reply["files"]:
                entry = files[answer["name"]]
                entry["answer"] = answer["answer"]
                if answer["answer"] != SEND:
                    entry.update(state=answer["answer"], message=answer.get("message", ""))
            record_remote(core, peer_name, transfer,
                          [a["name"] for a in reply["files"] if a["answer"] == HAVE], HAVE)
        _follow(core, link, peer_name, transfer, files, deadline, poll_interval)
    finally:
        link.close()
    counts = Counter(entry["state"] for entry in files.values())
    log.info("transfer %s to %s: %s", transfer, peer_name, dict(counts))
    return {"transfer": transfer, "peer": peer_name, "files": list(files.values()),
            "counts": dict(counts),
            "ok": set(counts) <= {"committed", "have"}}


def _follow(core: Core, link: _Link, peer_name: str, transfer: str,
            files: dict[str, dict[str, Any]], deadline: float, poll_interval: float) -> None:
    """Poll the peer until every file it accepted is committed or failed (or time is up)."""
    interval = poll_interval
    while True:
        pending = [n for n, e in files.items() if e["state"] == "pending" and "answer" in e]
        if not pending:
            return
        try:
            status: dict[str, Any] = {"files": []}
            for start in range(0, len(pending), 10 * MAX_OFFERS):
                part = pending[start:start + 10 * MAX_OFFERS]
                status["files"] += link.call(lambda c, part=part: c.status(part))["files"]
        except Unavailable:
            return  # the deadline passed while the peer was away: what is left stays pending
        committed = []
        for row in status["files"]:
            entry = files[row["name"]]
            entry["bytes"] = row["bytes"]
            if row["state"] == "committed":
                entry.update(state="committed", message="")
                committed.append(row["name"])
            elif row["state"] == "failed":
                entry.update(state="failed", message=row["error"])
        record_remote(core, peer_name, transfer, committed, "committed")
        if time.monotonic() + interval > deadline:
            return
        time.sleep(interval)
        interval = min(interval * 1.5, 2.0)


def record_remote(core: Core, site: str, transfer: str, names: Sequence[str],
                  answer: str) -> None:
    """Record that ``site`` holds a verified copy of each of ``names`` (once per file and site),
    with a ``transfer-sent`` event."""
    if not names:
        return
    with core.catalogue.db.write() as s:
        ids = dict(s.execute(select(File.name, File.id).where(File.name.in_(list(names)))).all())
        known = set(s.scalars(select(RemoteInstance.file_id).where(
            RemoteInstance.site == site, RemoteInstance.file_id.in_(list(ids.values())))))
        now = utcnow()
        for file_id in ids.values():
            if file_id in known:
                continue
            s.add(RemoteInstance(file_id=file_id, site=site, time=now, transfer=transfer))
            s.add(Event(file_id=file_id, type="transfer-sent", time=now,
                        payload={"to": site, "transfer": transfer, "answer": answer}))


def remote_sites(core: Core, name: str) -> list[str]:
    """The sites known to hold a verified copy of ``name``."""
    with core.catalogue.db.read() as s:
        return list(s.scalars(select(RemoteInstance.site).join(
            File, RemoteInstance.file_id == File.id).where(File.name == name)
            .order_by(RemoteInstance.site)))


def list_peers(core: Core, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Configured peers with their reachability (an authenticated ping), and the sites this one
    accepts transfers from."""
    out = []
    registry = core.peers
    for name in sorted(set(registry.peers) | set(registry.secret_hashes)):
        row: dict[str, Any] = {"name": name, "url": None, "reachable": None, "site": None,
                               "error": "", "accepts_from": name in registry.secret_hashes}
        peer = registry.peers.get(name)
        if peer is not None:
            row["url"] = peer.url
            client = PeerClient(peer, core.site_name, timeout=timeout)
            try:
                row["site"] = client.ping().get("site")
                row["reachable"] = True
            except StagingError as exc:
                row["reachable"], row["error"] = False, exc.message
            finally:
                client.close()
        out.append(row)
    return out
