"""Repair from a peer, between two real sites on loopback: a copy found bad at site B, with no
good copy at B, is pulled again from site A (the transfer protocol's receiving side verifies it),
put in place and re-verified; every step is an event on the file. A copy that is bad at A too is
refused by the receiving side and B's bad copy stays out of service.

Two ``jupyter server`` processes, each with its own SQLite catalogue and store; the files reach
B by a transfer job of A's run in this process (as in ``test_transfer.py``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.core import Core
from hera_stage_ext.jobs import EngineConfig, get_job, run_pending
from hera_stage_ext.transfer.transfer_kind import create_transfer_job
from hera_stage_ext.transfer.peer_config import parse_peers
from hera_stage_ext.transfer.peers import PeerRegistry, hash_secret
from hera_stage_ext.standard_kinds import standard_kinds

from .jupyter_process import JupyterProcess, free_port, jupyter_process
from .test_stewardship import flip_byte

pytestmark = pytest.mark.timeout(180)

SECRET_AB = "a-to-b-" + "r" * 40
SECRET_BA = "b-to-a-" + "s" * 40
GOOD = "zen.2457800.10000.xx.HH.uvh5"  # bad at B, good at A
BOTH_BAD = "zen.2457800.20000.xx.HH.uvh5"  # bad at B and at A
DATASET = "zen.2457800.30000.xx.HH.uv"  # a data set (folder), bad at B


@dataclass
class TwoSites:
    a: JupyterProcess
    b: JupyterProcess
    a_store: Path
    b_store: Path


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> Iterator[TwoSites]:
    tmp = tmp_path_factory.mktemp("peer-repair")
    rng = random.Random(11)
    a_store, b_store = tmp / "a" / "store" / "2457800", tmp / "b" / "store"
    a_store.mkdir(parents=True)
    b_store.mkdir(parents=True)
    for name in (GOOD, BOTH_BAD):
        (a_store / name).write_bytes(rng.randbytes(70_000))
    (a_store / DATASET).mkdir()
    for member in ("header", "visdata"):
        (a_store / DATASET / member).write_bytes(rng.randbytes(5_000))
    a_port = free_port()
    a_db_url = f"sqlite:///{tmp / 'a' / 'catalogue.sqlite'}"
    common = {"start_worker": False, "service_log_file": "",
              "fixity_check_seconds": 3600.0, "fixity_bytes_per_hour": 1e13}
    b_config = {"StagingApp": {
        **common, "db_url": f"sqlite:///{tmp / 'b' / 'catalogue.sqlite'}",
        "site_name": "site-b", "stores": {"b-store": {"path": str(b_store)}},
        "receive_store": "b-store",
        "peers": {"site-a": {"url": f"http://127.0.0.1:{a_port}/", "secret": SECRET_BA}},
        "peer_secrets": {"site-a": hash_secret(SECRET_AB)},
    }}
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(jupyter_process(tmp / "b-server", root_dir=tmp / "b",
                                                config=b_config))
        a_config = {"StagingApp": {
            **common, "db_url": a_db_url, "site_name": "site-a",
            "stores": {"a-store": {"path": str(a_store.parent)}},
            "peers": {"site-b": {"url": b.url, "secret": SECRET_AB}},
            "peer_secrets": {"site-b": hash_secret(SECRET_BA)},
        }}
        a = stack.enter_context(jupyter_process(tmp / "a-server", root_dir=tmp / "a",
                                                config=a_config, port=a_port))
        assert a.api("ingest", {"store": "a-store", "globs": ["*/*"]})["registered"] == 3
        # A sends the three files to B (A's transfer job, run here as its worker would).
        a_db = Database(a_db_url)
        stack.callback(a_db.dispose)
        catalogue = Catalogue(a_db)
        registry = PeerRegistry("site-a", parse_peers(a_config["StagingApp"]["peers"]))
        core = Core(version="test", site_name="site-a", catalogue=catalogue,
                    ingester=Ingester(catalogue), allowed_roots=[str(tmp)], peers=registry)
        job = create_transfer_job(a_db, "tester", [GOOD, BOTH_BAD, DATASET], core.peers,
                                  "site-b", log_dir=str(tmp / "a-logs"))
        run_pending(a_db, EngineConfig(kinds=standard_kinds(),
                                       peers=core.peers, fsync=False, heartbeat_seconds=0.2))
        assert get_job(a_db, job["id"])["state"] == "succeeded"
        yield TwoSites(a, b, a_store, b_store / "2457800")


def events(site: JupyterProcess, name: str) -> list[dict[str, Any]]:
    return site.api(f"files/{name}")["events"]


def b_copy(two_sites: TwoSites, name: str) -> dict[str, Any]:
    return site_instance(two_sites.b, name)


def site_instance(site: JupyterProcess, name: str) -> dict[str, Any]:
    [instance] = site.api(f"files/{name}")["instances"]
    return instance


def test_a_bad_copy_with_no_good_copy_here_is_pulled_again_from_a_peer(
        two_sites: TwoSites) -> None:
    b = two_sites.b
    good = (two_sites.a_store / GOOD).read_bytes()
    flip_byte(two_sites.b_store / GOOD)
    flip_byte(two_sites.b_store / DATASET / "visdata")
    audit = b.api("fixity/audit", {})
    found = {r["name"]: r["state"] for r in audit["instances"]}
    assert found[GOOD] == found[DATASET] == "bad"
    assert not b_copy(two_sites, GOOD)["available"]

    for name in (GOOD, DATASET):
        result = b.api(f"files/{name}/repair", {})
        assert result["failed"] == [], result
        assert result["repaired"] == [{"store": "b-store", "path": f"2457800/{name}",
                                       "source": "peer site-a"}]
        copy = b_copy(two_sites, name)
        assert copy["fixity"] == "ok" and copy["available"]
        steps = [e["type"] for e in events(b, name)]
        tail = steps[steps.index("repair-started"):]
        assert tail == ["repair-started", "repair-pull-started", "repair-pulled",
                        "repair-copied", "fixity-restored", "repair-verified"], steps
        pulled = next(e for e in events(b, name) if e["type"] == "repair-pulled")
        assert pulled["payload"]["peer"] == "site-a"
    assert (two_sites.b_store / GOOD).read_bytes() == good
    assert (two_sites.b_store / DATASET / "visdata").read_bytes() == \
        (two_sites.a_store / DATASET / "visdata").read_bytes()
    # Nothing of the pull is left beside the copies.
    assert sorted(p.name for p in two_sites.b_store.iterdir()) == sorted(
        [GOOD, BOTH_BAD, DATASET])


def test_a_peer_copy_that_is_bad_too_is_refused_by_the_receiving_side(
        two_sites: TwoSites) -> None:
    b = two_sites.b
    flip_byte(two_sites.a_store / BOTH_BAD)  # A serves bad bytes, unknowing
    flip_byte(two_sites.b_store / BOTH_BAD)
    bad_here = (two_sites.b_store / BOTH_BAD).read_bytes()
    assert b.api(f"files/{BOTH_BAD}/fixity", {})["instances"][0]["state"] == "bad"
    result = b.api(f"files/{BOTH_BAD}/repair", {})
    assert result["repaired"] == []
    assert result["failed"] == [{"store": "b-store", "path": f"2457800/{BOTH_BAD}",
                                 "reason": "no good copy at this site nor at a peer could "
                                           "replace it"}]
    failures = [e["payload"] for e in events(b, BOTH_BAD) if e["type"] == "repair-failed"]
    assert failures[0]["peer"] == "site-a" and "checksums" in failures[0]["detail"]
    assert (two_sites.b_store / BOTH_BAD).read_bytes() == bad_here  # untouched
    copy = b_copy(two_sites, BOTH_BAD)
    assert copy["fixity"] == "bad" and not copy["available"]
    assert sorted(p.name for p in two_sites.b_store.iterdir()) == sorted(
        [GOOD, BOTH_BAD, DATASET])
