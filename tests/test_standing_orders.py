"""Standing orders: what an order's search matches reaches its peer without operator action.

Two real sites on loopback (as in test_transfer_jobs.py): site A, a small demo archive behind a
``jupyter server`` whose own worker runs the transfer jobs, and site B, an empty receiving store
behind another. New files are written into A's store and ingested with the ``hera-stage ingest``
CLI; nobody launches a transfer: the order does, and they arrive at B verified and registered.
A second evaluation sends nothing again; a paused order launches nothing until resumed; a
deleted one nothing at all. The evaluation itself (what is pending, what is on its way, audit)
is also checked in-process against both databases, with a peer that is down so jobs stay put.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import func, select

from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.catalogue.models import File, Instance
from hera_stage_ext.cli import main as cli_main
from hera_stage_ext.core import Core
from hera_stage_ext.demo import DemoArchive, ingest_demo_archive, make_demo_archive
from hera_stage_ext.errors import Conflict, InvalidRequest, NotFound, SearchError
from hera_stage_ext.jobs import cancel_job, forget_job
from hera_stage_ext.jobs.models import AuditEntry, JobRow, JobItem
from hera_stage_ext.transfer.peer_sender import refusal
from hera_stage_ext.transfer.models import RemoteInstance
from hera_stage_ext.transfer.orders import StandingOrders
from hera_stage_ext.transfer.peer_config import parse_peers
from hera_stage_ext.transfer.peers import PeerRegistry, hash_secret
from hera_stage_ext.transfer.protocol import CONFLICT
from hera_stage_ext.transfer.outgoing import record_remote
from hera_stage_ext.standard_kinds import standard_kinds

from .jupyter_process import JupyterProcess, free_port, jupyter_process

pytestmark = pytest.mark.timeout(180)

SECRET_AB = "orders-a-to-b-" + "k" * 40
SECRET_BA = "orders-b-to-a-" + "q" * 40
NEW_NIGHT = 2457650  # not in the demo archive: every file of it is a new ingest
ORDER_QUERY = f"zen.{NEW_NIGHT}.*"


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 60,
              detail: Callable[[], Any] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {detail()}"
        time.sleep(0.2)
    return value


def _new_files(store: Path, first: int, count: int) -> list[str]:
    """Write ``count`` new files of the new night into ``store``; their names."""
    rng = random.Random(first)
    names = []
    for k in range(first, first + count):
        name = f"zen.{NEW_NIGHT}.{10000 + k * 745:05d}.xx.HH.uvh5"
        path = store / str(NEW_NIGHT) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1024, 8192)))
        names.append(name)
    return names


# ----- the evaluation, in process ---------------------------------------------------------------
@pytest.fixture
def local(db_url: str, tmp_path) -> Iterator[tuple[Core, StandingOrders]]:
    archive = make_demo_archive(tmp_path / "a", files_per_night=4, nights=2)
    archive.db_url = db_url
    ingest_demo_archive(archive)
    db = Database(db_url)
    catalogue = Catalogue(db)
    # Port 9 answers nobody: jobs are created (they wait for the peer) and stay queued, since
    # no worker is started here.
    peers = PeerRegistry("site-a", parse_peers(
        {"b": {"url": "http://127.0.0.1:9/", "secret": SECRET_AB}}))
    core = Core(version="0", site_name="site-a", catalogue=catalogue,
                ingester=Ingester(catalogue), allowed_roots=[str(tmp_path)], owner="alice",
                peers=peers, job_log_dir=tmp_path / "logs")
    try:
        yield core, StandingOrders(core, interval_s=3600)
    finally:
        db.dispose()


def _transfer_jobs(core: Core) -> list[dict[str, Any]]:
    """The transfer jobs, oldest first, with the names each sends."""
    with core.catalogue.db.read() as s:
        jobs = [{"id": j.id, "destination": j.destination, "files_total": j.files_total,
                 "state": j.state, "search": j.search}
                for j in s.scalars(select(JobRow).where(JobRow.kind == "transfer")
                                   .order_by(JobRow.id))]
        for job in jobs:
            job["names"] = set(s.scalars(select(JobItem.name).where(JobItem.job_id == job["id"])))
    return jobs


def test_evaluation_sends_what_is_neither_at_the_peer_nor_on_its_way(local) -> None:
    core, orders = local
    night = core.names_matching({"name-matches": "zen.2457644.%"})
    assert len(night) == 6
    order = orders.create({"name": "night44", "peer": "b", "query": "zen.2457644.*"})
    assert order["paused"] is False and order["search"] == {"name-matches": "zen.2457644.%"}
    assert order["last_evaluated_at"] is None

    assert orders.tick() == 1  # the new order is evaluated at once
    [job] = _transfer_jobs(core)
    assert job["destination"] == "peer:b" and job["files_total"] == 6
    assert job["state"] == "queued" and job["search"] == order["search"]
    shown = orders.get("night44")
    assert shown["last_job_id"] == job["id"] and shown["last_files"] == 6
    assert shown["last_launched_at"] == shown["last_evaluated_at"] is not None

    # Nothing new ingested and the period not over: no round at all.
    assert orders.tick() == 0
    # A round (resume wakes the orders): every file is on its way in the queued job.
    orders.set_paused("night44", False)
    assert orders.tick() == 1
    assert len(_transfer_jobs(core)) == 1
    assert orders.get("night44")["last_message"].startswith("nothing to send")

    # Half the night reached the peer, then the job was cancelled: only the rest is sent.
    record_remote(core.catalogue.db, "b", "earlier", night[:3], "committed")
    cancel_job(core.catalogue.db, job["id"], standard_kinds())
    orders.set_paused("night44", False)
    assert orders.tick() == 1
    second = _transfer_jobs(core)[-1]
    assert second["id"] != job["id"] and second["names"] == set(night[3:])

    # A new ingest of a matching file is seen by the next tick (a new instance), and only
    # that file goes; paused, the order is not evaluated at all.
    orders.set_paused("night44", True)
    store = Path(core.catalogue.store("onsite")["path"])
    rng = random.Random(1)
    (store / "2457644" / "zen.2457644.99999.xx.HH.uvh5").write_bytes(rng.randbytes(2000))
    core.ingester.ingest("onsite", ["2457644/zen.2457644.99999.xx.HH.uvh5"])
    assert orders.tick() == 0
    assert len(_transfer_jobs(core)) == 2
    orders.set_paused("night44", False)
    cancel_job(core.catalogue.db, second["id"], standard_kinds())
    record_remote(core.catalogue.db, "b", "earlier", night[3:], "committed")
    assert orders.tick() == 1
    third = _transfer_jobs(core)[-1]
    assert third["names"] == {"zen.2457644.99999.xx.HH.uvh5"}

    with core.catalogue.db.read() as s:
        audit = [(a.action, a.via, a.outcome, a.job_id) for a in s.scalars(
            select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("order-create", "rest", "accepted", None),
                     ("transfer", "order", "accepted", job["id"]),
                     ("transfer", "order", "accepted", second["id"]),
                     ("transfer", "order", "accepted", third["id"])]
    assert orders.delete("night44") == {"deleted": "night44"}
    assert orders.list() == [] and orders.tick() == 0


def test_files_the_peer_refused_as_conflicts_are_held_back(local) -> None:
    """A conflict would fail the same way at every round: held back until the job that
    recorded it is retried or forgotten. Other failures (the peer down) are offered again."""
    core, orders = local
    night = core.names_matching({"name-matches": "zen.2457644.%"})
    orders.create({"name": "night44", "peer": "b", "query": "zen.2457644.*"})
    assert orders.tick() == 1
    [job] = _transfer_jobs(core)
    conflicted = night[:2]
    with core.catalogue.db.write() as s:  # the job ended as a sender's job ends
        for item in s.scalars(select(JobItem).where(JobItem.job_id == job["id"])):
            item.state = "failed"
            item.error = (refusal(CONFLICT, "b holds other content under this name")
                          if item.name in conflicted else "peer 'b' unreachable")
        s.get(JobRow, job["id"]).state = "failed"

    orders.set_paused("night44", False)
    assert orders.tick() == 1
    second = _transfer_jobs(core)[-1]
    assert second["names"] == set(night[2:])
    cancel_job(core.catalogue.db, second["id"], standard_kinds())
    record_remote(core.catalogue.db, "b", "earlier", night[2:], "committed")
    orders.set_paused("night44", False)
    assert orders.tick() == 1
    assert len(_transfer_jobs(core)) == 2
    assert "refused by it as a conflict" in orders.get("night44")["last_message"]

    forget_job(core.catalogue.db, job["id"])  # the operator sorted the peer's copies out
    orders.set_paused("night44", False)
    assert orders.tick() == 1
    assert _transfer_jobs(core)[-1]["names"] == set(conflicted)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no SQL of its own to compare
def test_bad_orders_are_refused_audited_and_store_nothing(local) -> None:
    core, orders = local
    orders.create({"name": "keep", "peer": "b", "search": {"name-matches": "zen.%"}})
    cases = [
        ({"name": "x", "peer": "nowhere", "query": "zen.*"}, NotFound, "no peer named"),
        ({"name": "x", "peer": "b", "search": {"no-such-clause": 1}}, SearchError,
         "no-such-clause"),
        ({"name": "x", "peer": "b", "query": "obsid:abc"}, SearchError, ""),
        ({"name": "keep", "peer": "b", "query": "zen.*"}, Conflict, "exists already"),
        ({"name": "../x", "peer": "b", "query": "zen.*"}, InvalidRequest, "name"),
        ({"name": "x", "peer": "b"}, InvalidRequest, "exactly one of"),
        ({"name": "x", "peer": "b", "query": "zen.*", "search": {}}, InvalidRequest,
         "exactly one of"),
        ({"name": "x", "peer": "b", "query": "zen.*", "paused": True}, InvalidRequest,
         "unknown field"),
    ]
    for body, error, words in cases:
        with pytest.raises(error) as info:
            orders.create(body)
        assert words in info.value.message, (body, info.value.message)
    assert [o["name"] for o in orders.list()] == ["keep"]
    with pytest.raises(NotFound):
        orders.get("gone")
    with pytest.raises(InvalidRequest):
        orders.set_paused("no/such", True)
    with core.catalogue.db.read() as s:
        outcomes = list(s.scalars(select(AuditEntry.outcome).where(
            AuditEntry.action == "order-create").order_by(AuditEntry.id)))
    assert outcomes == ["accepted"] + ["refused"] * len(cases)


# ----- two real sites ---------------------------------------------------------------------------
@dataclass
class Sites:
    a: JupyterProcess
    b: JupyterProcess
    archive: DemoArchive
    b_db: Database

    @property
    def store(self) -> Path:
        return Path(self.archive.stores["onsite"]["path"])

    def cli(self, *args: str) -> int:
        return cli_main(["--url", self.a.url, "--token", self.a.token, *args])

    def order(self, name: str) -> dict[str, Any]:
        return self.a.api(f"standing-orders/{name}")

    def transfer_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.a.api("jobs")["jobs"] if j["kind"] == "transfer"]

    def at_b(self, names: list[str]) -> bool:
        with self.b_db.read() as s:
            held = s.scalar(select(func.count()).select_from(Instance).join(
                File, Instance.file_id == File.id).where(File.name.in_(names)))
        return held == len(names)

    def remote_at_a(self) -> set[int]:
        db = Database(self.archive.db_url)
        try:
            with db.read() as s:
                return set(s.scalars(select(RemoteInstance.file_id).where(
                    RemoteInstance.site == "site-b")))
        finally:
            db.dispose()


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[Sites]:
    tmp = tmp_path_factory.mktemp("standing-orders")
    archive = make_demo_archive(tmp / "a", files_per_night=4, nights=2)
    ingest_demo_archive(archive)
    b_store = tmp / "b" / "store"
    b_store.mkdir(parents=True)
    b_port, a_port = free_port(), free_port()
    common = {"start_worker": True, "worker_idle_exit_seconds": 3.0, "service_log_file": ""}
    a_config = {"StagingApp": {
        **common, "db_url": archive.db_url, "site_name": "site-a", "stores": archive.stores,
        "job_log_dir": str(tmp / "a-logs"),
        "standing_order_interval_seconds": 1.0, "standing_order_check_seconds": 0.25,
        "peers": {"site-b": {"url": f"http://127.0.0.1:{b_port}/", "secret": SECRET_AB}},
        "peer_secrets": {"site-b": hash_secret(SECRET_BA)},
    }}
    b_db = Database(f"sqlite:///{tmp / 'b' / 'catalogue.sqlite'}")
    b_config = {"StagingApp": {
        **common, "db_url": str(b_db.engine.url), "site_name": "site-b",
        "stores": {"b-store": {"path": str(b_store)}}, "receive_store": "b-store",
        "peers": {"site-a": {"url": f"http://127.0.0.1:{a_port}/", "secret": SECRET_BA}},
        "peer_secrets": {"site-a": hash_secret(SECRET_AB)},
    }}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(jupyter_process(tmp / "a-server", root_dir=archive.workspace,
                                                config=a_config, port=a_port))
        b = stack.enter_context(jupyter_process(tmp / "b-server", root_dir=tmp / "b",
                                                config=b_config, port=b_port))
        try:
            yield Sites(a, b, archive, b_db)
        finally:
            # A job left unfinished would keep A's worker retrying B after both are gone.
            for job in a.api("jobs")["jobs"]:
                if job["finished_at"] is None:
                    a.api(f"jobs/{job['id']}/cancel", {})
            b_db.dispose()


def test_new_ingests_reach_the_peer_without_operator_action(sites: Sites, capsys) -> None:
    reply = sites.a.request("POST", "hera-stage/api/standing-orders",
                            {"name": "night50", "peer": "site-b", "query": ORDER_QUERY})
    assert reply.status_code == 201, reply.text
    assert reply.json()["search"] == {"name-matches": f"zen.{NEW_NIGHT}.%"}
    _wait_for("the first evaluation", lambda: sites.order("night50")["last_evaluated_at"])
    assert sites.order("night50")["last_job_id"] is None  # nothing matched yet
    assert sites.transfer_jobs() == []

    # New files ingested at A with the CLI; nobody asks for a transfer.
    first = _new_files(sites.store, 0, 3)
    assert sites.cli("ingest", "onsite", f"{NEW_NIGHT}/*", "--quiet") == 0
    _wait_for("the new files at B", lambda: sites.at_b(first), timeout=60)
    order = _wait_for("the job to finish", lambda: (o := sites.order("night50"))["last_job_id"]
                      and sites.a.api(f"jobs/{o['last_job_id']}")["finished_at"] and o)
    job = sites.a.api(f"jobs/{order['last_job_id']}")
    assert job["state"] == "succeeded" and job["files_done"] == 3, job
    assert job["destination"] == "peer:site-b" and order["last_files"] == 3
    a_catalogue, b_catalogue = Catalogue(Database(sites.archive.db_url)), Catalogue(sites.b_db)
    try:
        for name in first:
            here, there = a_catalogue.file_detail(name), b_catalogue.file_detail(name)
            assert there["checksums"] == here["checksums"] and there["size"] == here["size"]
            assert [e["type"] for e in there["events"]].count("transfer-received") == 1
    finally:
        a_catalogue.db.dispose()
    assert len(sites.remote_at_a()) == 3

    # Later evaluations (every second here) find everything at B: nothing is sent again.
    _wait_for("an evaluation after the job", lambda: sites.order("night50")
              ["last_evaluated_at"] > job["finished_at"])
    order = sites.order("night50")
    assert order["last_job_id"] == job["id"] and order["last_message"].startswith("nothing")
    assert len(sites.transfer_jobs()) == 1

    # Paused: new files stay at A.
    assert sites.cli("orders", "pause", "night50") == 0
    assert "night50 paused site-b" in " ".join(capsys.readouterr().out.split())  # a table row
    second = _new_files(sites.store, 3, 2)
    assert sites.cli("ingest", "onsite", f"{NEW_NIGHT}/*", "--quiet") == 0
    evaluated = sites.order("night50")["last_evaluated_at"]
    time.sleep(3)  # three periods, twelve checks
    assert sites.order("night50")["last_evaluated_at"] == evaluated
    assert len(sites.transfer_jobs()) == 1 and not sites.at_b(second[:1])

    # Resumed: they go at once, and only they.
    assert sites.cli("orders", "resume", "night50") == 0
    assert "night50 active site-b" in " ".join(capsys.readouterr().out.split())  # a table row
    _wait_for("the files ingested while paused at B", lambda: sites.at_b(second),
              detail=lambda: (sites.order("night50"), sites.transfer_jobs()))
    jobs = sites.transfer_jobs()
    assert len(jobs) == 2 and jobs[0]["files_total"] == 2  # newest first
    _wait_for("A to record them at B", lambda: len(sites.remote_at_a()) == 5)

    # Listed and shown by the CLI; deleted, the order sends nothing more.
    assert sites.cli("orders", "list") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "PEER", "SEARCH"]
    assert row.split()[:3] == ["night50", "active", "site-b"] and f"  {ORDER_QUERY}  " in row
    assert sites.cli("orders", "show", "night50", "--json") == 0
    assert '"peer": "site-b"' in capsys.readouterr().out
    assert sites.cli("orders", "delete", "night50") == 0
    assert sites.a.request("GET", "hera-stage/api/standing-orders/night50").status_code == 404
    third = _new_files(sites.store, 5, 1)
    assert sites.cli("ingest", "onsite", f"{NEW_NIGHT}/*", "--quiet") == 0
    time.sleep(2)
    assert len(sites.transfer_jobs()) == 2 and not sites.at_b(third)


def test_bad_requests_get_clear_answers(sites: Sites, capsys) -> None:
    def post(body: dict[str, Any]) -> tuple[int, str]:
        reply = sites.a.request("POST", "hera-stage/api/standing-orders", body)
        return reply.status_code, reply.json().get("message", "")

    code, message = post({"name": "o1", "peer": "nowhere", "query": "zen.*"})
    assert code == 404 and "no peer named 'nowhere'" in message
    code, message = post({"name": "o1", "peer": "site-b", "search": {"bogus-clause": 1}})
    assert code == 400 and "bogus-clause" in message
    code, message = post({"name": "o1 two", "peer": "site-b", "query": "zen.*"})
    assert code == 400 and "name" in message
    # (a night with no file: the order launches nothing that would outlive the servers)
    assert post({"name": "o1", "peer": "site-b", "query": "zen.2457699.*"})[0] == 201
    code, message = post({"name": "o1", "peer": "site-b", "query": "zen.*"})
    assert code == 409 and "exists already" in message
    assert sites.a.request("POST", "hera-stage/api/standing-orders/nope/pause",
                           {}).status_code == 404
    assert sites.cli("orders", "add", "o2", "site-b", "obsid:1..x") == 1
    assert capsys.readouterr().err.startswith("hera-stage: error: ")
    assert sites.cli("orders", "show", "nope") == 1
    assert "no standing order named 'nope'" in capsys.readouterr().err
    orders = sites.a.api("standing-orders")["standing_orders"]
    assert [o["name"] for o in orders] == ["o1"]

    # Replies as the OpenAPI document says.
    doc = sites.a.api("openapi.json")

    def check(schema: str, value: Any) -> None:
        jsonschema.validate(value, {**doc, "$ref": f"#/components/schemas/{schema}"},
                            cls=jsonschema.Draft202012Validator)

    check("StandingOrder", orders[0])
    check("StandingOrder", sites.a.api("standing-orders/o1/pause", {}))
    check("StandingOrder", sites.a.api("standing-orders/o1/resume", {}))
    check("Error", sites.a.request("GET", "hera-stage/api/standing-orders/nope").json())
    assert sites.cli("orders", "delete", "o1") == 0
    assert sites.a.api("standing-orders") == {"standing_orders": []}


def test_migration_matches_the_model(tmp_path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from hera_stage_ext.catalogue.models import Base

    db = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    db.upgrade()
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "standing_order" in repr(d)] == []
    db.dispose()
