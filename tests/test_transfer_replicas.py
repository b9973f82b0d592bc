"""Replicas of a receiving site: two ``jupyter server`` processes of site B on one PostgreSQL
catalogue and one store (as docs/deploying.md's "Replicas" runs them), pulling from site A.

Each pull holds its item under a lease (``receiver.py``): a replica that starts while the other
pulls never pulls the same item (one writer of its partial file, the bytes pulled once), and a
replica killed mid-pull leaves its lease to run out, after which the other resumes the pull
from the partial file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select, update

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import File, Instance, utcnow
from hera_stage_ext.transfer.models import TransferItem
from hera_stage_ext.transfer.outgoing import remote_sites
from hera_stage_ext.transfer.peers import PeerRegistry, hash_secret
from hera_stage_ext.transfer.receiver import Receiver

from .jupyter_process import JupyterProcess, jupyter_process
from .test_transfer import (
    SECRET_AB, SECRET_BA, Sites, _send_until_partial, receiver_config, start_a, two_sites)

pytestmark = pytest.mark.timeout(180)

SIZE = 48 << 20
THROTTLE = 16 << 20  # bytes/s A serves B: a file takes ~3 s
LEASE = 6.0  # seconds: the replicas' leases (short, for the take-over)
#: Pulled by B while a second replica starts.
SHARED = "zen.2457900.10000.xx.HH.uvh5"
#: Left queued under the live lease of a process of this host that is gone (a replica killed
#: before its pull began): only a receiver starting takes it over at once, so its pull shows
#: that the second replica's resume ran.
LEFT = "zen.2457900.20000.xx.HH.uvh5"
#: Pulled by a replica killed mid-pull.
KILLED = "zen.2457901.10000.xx.HH.uvh5"
FOLDERS = {SHARED: "2457900", LEFT: "2457900", KILLED: "2457901"}


@pytest.fixture(scope="module")
def sites(tmp_path_factory, postgres: Any) -> Iterator[Sites]:
    tmp = tmp_path_factory.mktemp("replicas")
    rng = random.Random(20)
    a_store, b_store = tmp / "a" / "store", tmp / "b" / "store"
    b_store.mkdir(parents=True)
    paths = {name: f"{folder}/{name}" for name, folder in FOLDERS.items()}
    for name, rel in paths.items():
        (a_store / rel).parent.mkdir(parents=True, exist_ok=True)
        (a_store / rel).write_bytes(rng.randbytes(65536 if name == LEFT else SIZE))
    stack = contextlib.ExitStack()
    a, catalogue, a_config = start_a(
        tmp, a_store, {"site-b": {"url": "http://127.0.0.1:9/", "secret": SECRET_AB,
                                  "max_bytes_per_s": THROTTLE}},
        {"site-b": hash_secret(SECRET_BA)}, stack)
    specs = []
    for name, rel in paths.items():
        digest = ck.hash_file(a_store / rel)
        specs.append(FileSpec(name=name, size=digest.size, checksums=digest.checksums))
    catalogue.register(specs, "a-store", list(paths.values()))
    b_config = receiver_config(postgres.create_database(), b_store, a.url)
    b_config["StagingApp"]["receive_lease_seconds"] = LEASE
    site = two_sites(tmp, a, a_store, b_store, catalogue, a_config, b_config, stack)
    site.start_b("b1-server")
    try:
        yield site
    finally:
        site.close()


def _replica(sites: Sites, workdir: str) -> contextlib.AbstractContextManager[JupyterProcess]:
    """Another replica of B: its configuration, catalogue and store."""
    return jupyter_process(sites.tmp / workdir, root_dir=sites.tmp / "b",
                           config=sites.b_config)


def _arrived_once(sites: Sites, name: str) -> TransferItem:
    """``name`` committed at B, registered once, its bytes A's: its item."""
    item = sites.b_items()[name]
    assert item.state == "committed", item.error
    with sites.b_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Instance).join(Instance.file).where(
            File.name == name)) == 1
    arrived = ck.hash_file(sites.b_store / FOLDERS[name] / name)
    assert ck.compare(arrived.checksums, sites.a_core.catalogue.file_detail(name)["checksums"])
    return item


def _wait(condition: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_replica_starting_while_another_pulls_leaves_it_that_pull(sites: Sites) -> None:
    """A second replica starts (and resumes what is left) while the first pulls SHARED: it
    takes the item no live receiver holds (LEFT) and leaves SHARED to the first, which pulls
    it once, from one writer: one attempt, from zero, committed once."""
    thread, result, part = _send_until_partial(sites, SHARED)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with contextlib.ExitStack() as replicas:
        # A stalls mid-body (SIGSTOP): the first replica's pull of SHARED waits on it, held.
        os.kill(sites.a.pid, signal.SIGSTOP)
        try:
            with sites.b_db.write() as s:
                s.add(TransferItem(
                    transfer="left-behind", peer="site-a", name=LEFT,
                    path=f"{FOLDERS[LEFT]}/{LEFT}", size=65536,
                    checksums=sites.a_core.catalogue.file_detail(LEFT)["checksums"], spec={},
                    state="queued", holder=f"{socket.gethostname()}:{gone.pid}:00000000",
                    lease_expires=utcnow() + dt.timedelta(hours=1)))
            replicas.enter_context(_replica(sites, "b2-server"))
            # The second replica's resume took LEFT (its pull waits on A too): it has been
            # through every item left queued or receiving, SHARED with it.
            _wait(lambda: sites.b_items()[LEFT].attempts > 0, "the second replica never resumed")
            assert sites.b_items()[SHARED].attempts == 1
        finally:
            os.kill(sites.a.pid, signal.SIGCONT)
        thread.join(90)
        assert not thread.is_alive()
        assert result["counts"] == {"done": 1}, result
        item = _arrived_once(sites, SHARED)
        assert remote_sites(sites.a_core, SHARED) == ["site-b"]
        assert (item.attempts, item.resumed_from) == (1, 0), item.error  # pulled once, whole
        _wait(lambda: sites.b_items()[LEFT].state == "committed", "LEFT never arrived")
        assert _arrived_once(sites, LEFT).attempts == 1
        assert not part.exists()


def test_a_replica_killed_mid_pull_is_taken_over_after_its_lease(sites: Sites) -> None:
    """The replica pulling KILLED is killed: the other one, started before the pull (holding
    nothing), resumes the pull from the partial file once the lease has run out, and the file
    arrives verified, once."""
    with _replica(sites, "b3-server") as other:
        thread, result, part = _send_until_partial(sites, KILLED)
        os.kill(sites.b.pid, signal.SIGKILL)
        sites.b.process.wait()
        held = part.stat().st_size
        # The site's URL now leads to the replica left (a load balancer's part).
        sites.a_core.peers.peers["site-b"] = replace(sites.a_core.peers.peers["site-b"],
                                                     url=other.url)
        thread.join(120)
        assert not thread.is_alive(), "the pull of the killed replica was never taken over"
    assert result["counts"] == {"done": 1}, result
    item = _arrived_once(sites, KILLED)
    assert remote_sites(sites.a_core, KILLED) == ["site-b"]
    # The killed pull, then the take-over, resumed from the partial file the kill left.
    assert item.attempts == 2 and 0 < item.resumed_from <= held, (item.attempts,
                                                                    item.resumed_from)
    assert not part.exists()


def test_of_two_receivers_claiming_an_item_at_once_one_holds_it_on_both_databases(
        database: Database, tmp_path: Any) -> None:
    """Two receivers on one catalogue claim one item at the same moment: exactly one holds it
    (a conditional update), the other cannot take it while its lease lives; once the lease
    has run out the other takes it over, and the first's next attempt finds it taken (it
    neither pulls nor ends it)."""
    catalogue = Catalogue(database)
    (tmp_path / "store").mkdir()
    catalogue.sync_stores({"r": {"path": str(tmp_path / "store")}})
    # (Leases of an hour: no renewal or take-over by their threads meanwhile.)
    receivers = [Receiver(catalogue, PeerRegistry("here"), "r", lease_s=3600)
                 for _ in range(2)]
    try:
        with database.write() as s:
            item = TransferItem(transfer="t", peer="there", name="zen.1.uvh5", path="zen.1.uvh5",
                                size=1, checksums={}, spec={}, state="queued")
            s.add(item)
            s.flush()
            item_id = item.id
        barrier = threading.Barrier(2)
        won: dict[int, set[int]] = {}

        def claim(i: int) -> None:
            barrier.wait()
            won[i] = receivers[i]._claim([item_id])

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(won.values(), key=len) == [set(), {item_id}]
        holder, other = (receivers[0], receivers[1]) if won[0] else (receivers[1], receivers[0])
        assert other._claim([item_id]) == set()
        assert holder._claim([item_id]) == {item_id}  # its own: kept
        # The holder stopped renewing (an hour ago, say): its lease ran out.
        holder._held[item_id] = time.monotonic() - 3600
        with database.write() as s:
            s.execute(update(TransferItem).values(lease_expires=dt.datetime(2000, 1, 1)))
        assert other._claim([item_id]) == {item_id}
        assert holder._start_batch([item_id]) == []  # its next attempt leaves the item
        with database.write() as s:
            assert holder._renew_held(s, [item_id]) == []
        holder._finish(item_id, "failed", "not its to end")
        assert (_state(database, item_id)) == ("queued", "")
        other._finish(item_id, "committed")
        assert (_state(database, item_id)) == ("committed", "")
    finally:
        for receiver in receivers:
            receiver.close()


def _state(database: Database, item_id: int) -> tuple[str, str]:
    with database.read() as s:
        item = s.get(TransferItem, item_id)
        assert item is not None
        return item.state, item.error


def _queued(database: Database, name: str) -> int:
    with database.write() as s:
        item = TransferItem(transfer="t", peer="there", name=name, path=name, size=1,
                            checksums={"md5": "0" * 32}, spec={}, state="queued")
        s.add(item)
        s.flush()
        return item.id


def test_a_batch_committed_gives_its_leases_up(database: Database, tmp_path: Any) -> None:
    """A batch pull's items end committed with no lease held: the file announced again (say
    it was removed here) is taken by any replica at once, not after the lease."""
    from hera_stage_ext.transfer.item_rows import ItemRow

    catalogue = Catalogue(database)
    (tmp_path / "store").mkdir()
    catalogue.sync_stores({"r": {"path": str(tmp_path / "store")}})
    first, second = (Receiver(catalogue, PeerRegistry("here"), "r", lease_s=3600)
                     for _ in range(2))
    try:
        item_id = _queued(database, "zen.a.uvh5")
        assert first._claim([item_id]) == {item_id}
        (tmp_path / "store" / "zen.a.uvh5").write_bytes(b"x")
        first._register_batch([ItemRow(item_id, "there", "zen.a.uvh5", "t", "zen.a.uvh5", 1,
                                       {"md5": ck.hex_digest(b"x", "md5")}, 1, {})])
        with database.read() as s:
            item = s.get(TransferItem, item_id)
            assert item is not None
            assert (item.state, item.holder, item.lease_expires) == ("committed", None, None)
        with database.write() as s:  # announced again
            s.execute(update(TransferItem).where(TransferItem.id == item_id)
                      .values(state="queued"))
        assert second._claim([item_id]) == {item_id}
    finally:
        first.close()
        second.close()


def test_a_pull_that_could_not_even_be_marked_failed_is_pulled_again(
        database: Database, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch pull fails and so does the write marking it failed (the database away): its
    items, still held under this receiver's live lease (which no other replica may take), are
    pulled again by its keeper once the database answers; and a batch pull that ends by an
    error no handler takes gives its place back (later items are pulled too)."""
    catalogue = Catalogue(database)
    (tmp_path / "store").mkdir()
    catalogue.sync_stores({"r": {"path": str(tmp_path / "store")}})
    receiver = Receiver(catalogue, PeerRegistry("here"), "r", lease_s=1.2, streams=1)
    pulled: list[int] = []
    write = database.write
    away = threading.Event()

    @contextlib.contextmanager
    def flaky_write() -> Iterator[Any]:
        if away.is_set():
            away.clear()
            raise RuntimeError("the database went away")
        with write() as s:
            yield s

    def failing(item_ids: list[int], clients: Any) -> None:
        away.set()
        raise RuntimeError("the database went away")

    try:
        ids = [_queued(database, f"zen.b{k}.uvh5") for k in range(3)]
        monkeypatch.setattr(database, "write", flaky_write)
        monkeypatch.setattr(receiver, "_pull_batch", failing)
        receiver._dispatch("there", [(k, 1, False) for k in ids])
        _wait(lambda: not receiver._running and not away.is_set(), "the failed pull", 10)
        monkeypatch.setattr(receiver, "_pull_batch",
                            lambda item_ids, clients: pulled.extend(item_ids))
        _wait(lambda: sorted(pulled) == ids, "the items pulled again", 10)

        escaped = threading.Event()

        def escaping(item_ids: list[int], clients: Any) -> None:
            monkeypatch.setattr(receiver, "_pull_batch",
                                lambda item_ids, clients: pulled.extend(item_ids))
            escaped.set()
            raise _Escape  # (not an Exception: the batch's handler lets it through)

        monkeypatch.setattr(receiver, "_pull_batch", escaping)
        receiver._dispatch("there", [(_queued(database, "zen.b8.uvh5"), 1, False)])
        assert escaped.wait(10)
        _wait(lambda: not receiver._running, "the escaped pull", 10)
        later = _queued(database, "zen.b9.uvh5")
        receiver._dispatch("there", [(later, 1, False)])
        _wait(lambda: later in pulled, "a later item pulled", 10)
    finally:
        receiver.close()


class _Escape(BaseException):
    """An error no pull's handler takes."""


def test_an_item_announced_again_while_its_pull_runs_is_pulled_again_after_it(
        database: Database, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item dispatched again (announced again) while a pull of it runs, which that pull
    then leaves active (it ended the item's first announce, say, and the second re-armed it):
    pulled again once that pull is over, not left queued under this receiver's lease for
    good."""
    catalogue = Catalogue(database)
    (tmp_path / "store").mkdir()
    catalogue.sync_stores({"r": {"path": str(tmp_path / "store")}})
    receiver = Receiver(catalogue, PeerRegistry("here"), "r", lease_s=1.2, streams=1)
    pulls: list[list[int]] = []
    first_running, go_on = threading.Event(), threading.Event()

    def pull(item_ids: list[int], clients: Any) -> None:
        pulls.append(list(item_ids))
        if len(pulls) == 1:
            first_running.set()
            go_on.wait(10)

    try:
        item_id = _queued(database, "zen.d.uvh5")
        monkeypatch.setattr(receiver, "_pull_batch", pull)
        receiver._dispatch("there", [(item_id, 1, False)])
        assert first_running.wait(10)
        assert receiver._dispatch("there", [(item_id, 1, False)]) == {item_id}  # its own
        go_on.set()
        _wait(lambda: len(pulls) >= 2, "the item pulled again", 10)
        assert pulls[:2] == [[item_id], [item_id]]
    finally:
        go_on.set()
        receiver.close()


def test_a_pulled_member_whose_lease_lapsed_during_its_sync_is_not_made_final(
        database: Database, tmp_path: Any) -> None:
    """A batch member's partial file is its receiver's only while its lease surely lives:
    when the lease could not be renewed by the time its sync is through (another replica may
    have taken the item over and be writing that file), it is neither renamed to its final
    name nor removed, and it is pulled again only under a lease held."""
    from hera_stage_ext import safefs
    from hera_stage_ext.transfer.item_rows import ItemRow
    from hera_stage_ext.transfer.receiver import INCOMING_DIR

    catalogue = Catalogue(database)
    store = tmp_path / "store"
    store.mkdir()
    catalogue.sync_stores({"r": {"path": str(store)}})
    receiver = Receiver(catalogue, PeerRegistry("here"), "r", lease_s=3600)
    try:
        item_id = _queued(database, "zen.c.uvh5")
        assert receiver._claim([item_id]) == {item_id}
        item = ItemRow(item_id, "there", "zen.c.uvh5", "t", "zen.c.uvh5", 1,
                       {"md5": ck.hex_digest(b"x", "md5")}, 1, {})
        incoming, _made = safefs.open_dir(str(store / INCOMING_DIR), create=True)
        try:
            with receiver._syncer.batch(incoming) as syncs:
                member = receiver._write_member(incoming, item, str(store / "zen.c.uvh5"),
                                                b"x", syncs)
                receiver._held[item_id] = time.monotonic() - 3600  # not renewed since
                final, retry, taken = receiver._make_final(str(store), incoming, [member],
                                                           syncs)
        finally:
            os.close(incoming)
        assert (final, taken) == ([], [])
        assert retry == [(item, "its lease was not renewed in time")]
        assert not (store / "zen.c.uvh5").exists()
        assert (store / INCOMING_DIR / member.part).exists()  # (another's, maybe: left)
    finally:
        receiver.close()
