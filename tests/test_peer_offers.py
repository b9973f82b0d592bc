"""Offers from a peer are checked entirely before any byte moves (issue 15, findings 5 and 6).

Two real sites on loopback: A holds a few small files in its catalogue and store; B receives
(``receive_store``) and pulls from A. Announces are made by hand at B's ``peer/announce`` with
A's secret, from the offers A's own sender would make (``offers_for``) with one field spoiled:
a path that is not canonical or enters B's scratch folder, or a malformed ``create_time``,
``obsid``, ``observation`` (its session too), size, checksums, ``source``, ``meta``. Each is
refused with 400 naming the file and the problem; B records nothing, pulls nothing and places
nothing (on main these were accepted: a second name for a stored file, a file the next incoming
transfer overwrites, or bytes moved into the store and then "internal error").
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.transfer.models import TransferItem
from hera_stage_ext.transfer.peers import hash_secret
from hera_stage_ext.transfer.protocol import check_offer
from hera_stage_ext.transfer.receiver import INCOMING_DIR
from hera_stage_ext.transfer.outgoing import offers_for

from .jupyter_process import JupyterProcess, jupyter_process

pytestmark = pytest.mark.timeout(120)

SECRET_AB = "a-to-b-" + "o" * 40  # A's secret at B (A announces)
SECRET_BA = "b-to-a-" + "p" * 40  # B's secret at A (B pulls)
SPOILED = "zen.2457720.10000.xx.HH.uvh5"  # offered with one field spoiled: never arrives
GOOD = "zen.2457720.20000.xx.HH.uvh5"  # offered well-formed (an offset in its create_time)
HELD = "zen.2457720.30000.xx.HH.uvh5"  # already at B (ingested there)
NIGHT = "2457720"
FINISHED = ("committed", "failed")


@dataclass
class Pair:
    a: JupyterProcess
    b: JupyterProcess
    a_db: Database
    b_db: Database
    b_store: Path

    def offer(self, name: str, **changes: Any) -> dict[str, Any]:
        """The offer A's sender makes of ``name``, with ``changes`` (None: the field left out)."""
        offer = offers_for(self.a_db, {name: f"{NIGHT}/{name}"})[name]
        for key, value in changes.items():
            if value is None:
                offer.pop(key, None)
            else:
                offer[key] = value
        return offer

    def announce(self, *offers: dict[str, Any]) -> requests.Response:
        return requests.post(self.b.url + "hera-stage/peer/announce", timeout=30,
                             json={"transfer": "by-hand", "files": list(offers)},
                             headers={"Authorization": f"HeraPeer site-a:{SECRET_AB}"})

    def item(self, name: str) -> TransferItem | None:
        with self.b_db.read() as s:
            item = s.scalars(select(TransferItem).where(TransferItem.name == name)).first()
            if item is not None:
                s.expunge(item)
            return item

    def settled(self, name: str, timeout: float = 20) -> TransferItem | None:
        """B's item of ``name`` once nothing more happens to it (None: B recorded none)."""
        deadline = time.monotonic() + timeout
        while (item := self.item(name)) is not None and item.state not in FINISHED:
            assert time.monotonic() < deadline, f"{name} still {item.state}"
            time.sleep(0.1)
        return item

    def store_files(self) -> set[str]:
        return {str(p.relative_to(self.b_store)) for p in self.b_store.rglob("*")
                if not p.is_dir()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("offers")
    rng = random.Random(15)
    a_store, b_store = tmp / "a" / "store", tmp / "b" / "store"
    for name in (SPOILED, GOOD, HELD):
        (a_store / NIGHT).mkdir(parents=True, exist_ok=True)
        (a_store / NIGHT / name).write_bytes(rng.randbytes(4096 + rng.randrange(512)))
    (b_store / NIGHT).mkdir(parents=True)
    (b_store / NIGHT / HELD).write_bytes((a_store / NIGHT / HELD).read_bytes())
    a_url, b_url = (f"sqlite:///{tmp / s / 'catalogue.sqlite'}" for s in ("a", "b"))
    a_db = Database(a_url)
    a_db.upgrade()
    catalogue = Catalogue(a_db)
    catalogue.sync_stores({"a-store": {"path": str(a_store)}})
    names = [SPOILED, GOOD, HELD]
    catalogue.register([FileSpec(name=n, size=(d := ck.hash_file(a_store / NIGHT / n)).size,
                                 checksums=d.checksums, source="correlator",
                                 meta={"telescope": "HERA"}) for n in names],
                       "a-store", [f"{NIGHT}/{n}" for n in names])
    common = {"start_worker": False, "service_log_file": ""}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(jupyter_process(tmp / "a-server", root_dir=tmp / "a", config={
            "StagingApp": {**common, "db_url": a_url, "site_name": "site-a",
                           "stores": {"a-store": {"path": str(a_store)}},
                           "peer_secrets": {"site-b": hash_secret(SECRET_BA)}}}))
        b = stack.enter_context(jupyter_process(tmp / "b-server", root_dir=tmp / "b", config={
            "StagingApp": {**common, "db_url": b_url, "site_name": "site-b",
                           "stores": {"b-store": {"path": str(b_store)}},
                           "receive_store": "b-store",
                           "peers": {"site-a": {"url": a.url, "secret": SECRET_BA}},
                           "peer_secrets": {"site-a": hash_secret(SECRET_AB)}}}))
        assert b.api("ingest", {"store": "b-store", "globs": [f"{NIGHT}/*"]})["registered"]
        b_db = Database(b_url)
        try:
            yield Pair(a, b, a_db, b_db, b_store)
        finally:
            a_db.dispose()
            b_db.dispose()


def assert_refused_and_nothing_placed(pair: Pair, reply: requests.Response, before: set[str],
                                      *words: str) -> None:
    assert reply.status_code == 400, (reply.status_code, reply.text[:500])
    message = reply.json()["message"]
    for word in words:
        assert word in message, message
    assert pair.settled(SPOILED) is None  # nothing recorded, so nothing is pulled
    assert pair.store_files() == before
    assert pair.b.request("GET", f"hera-stage/api/files/{SPOILED}").status_code == 404


def test_the_offers_used_are_well_formed(pair: Pair) -> None:
    """The control: the unspoiled offer passes the receiver's check unchanged."""
    offer = pair.offer(SPOILED)
    assert offer["observation"] is not None and offer["obsid"] == offer["observation"]["obsid"]
    checked = check_offer(offer)
    assert checked["path"] == offer["path"] and checked["checksums"] == offer["checksums"]


@pytest.mark.parametrize("path", [
    f"{NIGHT}//{HELD}",  # a second spelling of a file B holds
    f"{NIGHT}//{SPOILED}", f"./{NIGHT}/{SPOILED}", f"{NIGHT}/./{SPOILED}",
    f"{NIGHT}/../{NIGHT}/{SPOILED}", f"/{NIGHT}/{SPOILED}", f"{NIGHT}/{SPOILED}/",
    f"{INCOMING_DIR}/{SPOILED}", f"{INCOMING_DIR}/1.part", f"{NIGHT}/{INCOMING_DIR}/x",
    f"{NIGHT}/{SPOILED}.hera-tmp", f"{NIGHT}/a\nb", f"{NIGHT}/a\rb", f"{NIGHT}/a\x85b",
    f"{NIGHT}/a\x00b", "\u00e9" * 128, "d/" * 2100 + "x", "", ".", "..",
])
def test_a_path_that_is_not_canonical_is_refused(pair: Pair, path: str) -> None:
    before = pair.store_files()
    reply = pair.announce(pair.offer(SPOILED, path=path))
    assert_refused_and_nothing_placed(pair, reply, before, "path")
    if len(path) < 100 and path:
        assert repr(path)[1:-1][:20] in reply.json()["message"]  # the path, named


OBSERVATION = {"obsid": 1, "start_time_jd": 2457720.1, "stop_time_jd": 2457720.2,
               "start_lst_hr": 1.0, "session_id": 2457720}


@pytest.mark.parametrize(("field", "value"), [
    ("create_time", "yesterday"), ("create_time", 1700000000), ("create_time", ""),
    ("create_time", "2026-13-45T00:00:00"), ("create_time", ["2026-01-01"]),
    ("obsid", "1234"), ("obsid", 2**64), ("obsid", True), ("obsid", 1.5),
    ("obsid", 7),  # not its observation's
    ("observation", {**OBSERVATION, "obsid": "x"}),
    ("observation", {**OBSERVATION, "session_id": None}),
    ("observation", {**OBSERVATION, "session_id": "night"}),
    ("observation", {**OBSERVATION, "start_time_jd": "2457720"}),
    ("observation", {**OBSERVATION, "stop_time_jd": 2457719.0}),  # before its start
    ("observation", {**OBSERVATION, "start_lst_hr": 99}),
    ("observation", {k: v for k, v in OBSERVATION.items() if k != "session_id"}),
    ("observation", [1, 2]),
    ("size", -1), ("size", 2**64), ("size", "4096"), ("size", True),
    ("checksums", {"md5": "zz"}), ("checksums", {}), ("checksums", {"crc": "00"}),
    ("is_directory", "no"), ("source", 5), ("source", "s" * 300), ("source", "a\x00b"),
    ("source", "a\nb"), ("meta", [1]), ("meta", {"a": "b\x00"}), ("meta", {"a\x00": 1}),
])
def test_a_malformed_field_is_refused_before_anything_moves(pair: Pair, field: str,
                                                            value: Any) -> None:
    before = pair.store_files()
    reply = pair.announce(pair.offer(SPOILED, **{field: value}))
    assert_refused_and_nothing_placed(pair, reply, before, SPOILED, field)


def test_one_malformed_offer_refuses_the_whole_announce(pair: Pair) -> None:
    before = pair.store_files()
    reply = pair.announce(pair.offer(GOOD), pair.offer(SPOILED, create_time="never"))
    assert_refused_and_nothing_placed(pair, reply, before, "create_time")
    assert pair.item(GOOD) is None
    # Two names at one path: refused too.
    reply = pair.announce(pair.offer(GOOD), pair.offer(SPOILED, path=f"{NIGHT}/{GOOD}"))
    assert_refused_and_nothing_placed(pair, reply, before, "path is offered twice")


def test_a_well_formed_offer_arrives_with_its_time_in_utc(pair: Pair) -> None:
    """The control: a create_time with an offset is stored as UTC, and the file arrives."""
    reply = pair.announce(pair.offer(GOOD, create_time="2026-01-31T14:00:00.5+02:00"))
    assert reply.status_code == 200, reply.text
    assert [f["answer"] for f in reply.json()["files"]] == ["send"]
    item = pair.settled(GOOD)
    assert item is not None and item.state == "committed", item and item.error
    detail = pair.b.api(f"files/{GOOD}")
    assert detail["create_time"] == "2026-01-31T12:00:00.500000Z"
    assert detail["observation"] == pair.offer(GOOD)["observation"]
    assert (pair.b_store / NIGHT / GOOD).read_bytes() == \
        (Path(os.path.dirname(pair.b_store)).parent / "a" / "store" / NIGHT / GOOD).read_bytes()
