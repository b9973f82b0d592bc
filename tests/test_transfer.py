"""Site-to-site transfers between two real sites on loopback.

Two ``jupyter server`` processes (site A sends, site B receives), each with its own SQLite
catalogue and store, each configured as the other's peer. A's transfer jobs run in this
process (``run_pending`` over A's database, the worker's code); B pulls the bytes from A's server.
Transfer jobs through REST, the worker process and directories: ``test_transfer_jobs.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update

from hera_stage_ext import directio, durability
from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.catalogue.models import File, Instance
from hera_stage_ext.core import Core
from hera_stage_ext.errors import (
    InvalidRequest, NotFound, PeerRejected, Unauthorized, Unavailable)
from hera_stage_ext.jobs import EngineConfig, get_job, run_pending
from hera_stage_ext.jobs.models import JobRow, JobItem
from hera_stage_ext.transfer import durable
from hera_stage_ext.transfer import peers as peers_module
from hera_stage_ext.transfer.models import RemoteInstance, TransferItem
from hera_stage_ext.transfer.outgoing import remote_sites
from hera_stage_ext.transfer.peer_config import parse_peers
from hera_stage_ext.transfer.peers import PeerRegistry, hash_secret
from hera_stage_ext.transfer.receiver import FLIP_ONCE_ENV, INCOMING_DIR, PAUSE_BEFORE_SYNC_ENV
from hera_stage_ext.transfer.transfer_kind import create_transfer_job
from hera_stage_ext.standard_kinds import standard_kinds

from .jupyter_process import JupyterProcess, jupyter_process
from .test_writeback import cached_bytes

pytestmark = pytest.mark.timeout(120)

SECRET_AB = "a-to-b-" + "k" * 40  # A presents it at B
SECRET_BA = "b-to-a-" + "q" * 40  # B presents it at A (its pulls)
SECRET_CA = "c-to-a-" + "z" * 40  # a peer A accepts pulls from without a throttle
BATCH = [f"zen.2457700.{10000 + 37 * i:05d}.xx.HH.uvh5" for i in range(30)]
BIG = "zen.2457701.10000.xx.HH.uvh5"
BIG_SIZE = 48 << 20
THROTTLE = 24 << 20  # bytes/s A serves B: the big file takes ~2 s
CONFLICT = "zen.2457702.10000.xx.HH.uvh5"
CORRUPT = "zen.2457702.20000.xx.HH.uvh5"
FLIP = "zen.2457702.30000.xx.HH.uvh5"
FORBIDDEN = "zen.2457702.40000.xx.HH.uvh5"
ONE_AT_A_TIME = [f"zen.2457703.{10000 + i}.xx.HH.uvh5" for i in range(3)]
#: Pulled together with FLIP, whose first pull gets a byte flipped.
FLIP_COMPANIONS = [f"zen.2457704.{10000 + i}.xx.HH.uvh5" for i in range(4)]
#: Sent together with a file B has and one that conflicts.
MIXED = [f"zen.2457705.{10000 + i}.xx.HH.uvh5" for i in range(3)]
#: Small enough for a batch pull, big enough that the throttled batch takes ~1.5 s.
KILLED_BATCH = [f"zen.2457706.{10000 + i}.xx.HH.uvh5" for i in range(12)]
KILLED_BATCH_SIZE = 3 << 20
#: Pulled while its sender is killed and started again.
SENDER_KILLED = "zen.2457707.10000.xx.HH.uvh5"
#: Like BIG, for the partial file left with a hole.
HOLED = "zen.2457708.10000.xx.HH.uvh5"
#: Shortened at the sender while the receiver is down mid-pull.
SHRUNK = "zen.2457719.10000.xx.HH.uvh5"
#: Followed while B pulls it (~3 s at the throttle): the job's bytes rise before it is done.
FOLLOWED = "zen.2457720.10000.xx.HH.uvh5"
FOLLOWED_SIZE = 72 << 20
#: Pulled in one batch by a receiver killed after writing them and before syncing them, in a
#: batch synced whole (one ``syncfs``) and in one synced file by file: (folder, names) each.
UNSYNCED_BATCHES = {way: (folder, [f"zen.{folder}.{10000 + i}.xx.HH.uvh5" for i in range(5)])
                    for way, folder in (("whole", "2457721"), ("file-by-file", "2457722"))}
#: The big files, each in a folder of its own.
BIG_FOLDERS = {BIG: "2457701", SENDER_KILLED: "2457707", HOLED: "2457708", SHRUNK: "2457719"}


@dataclass
class Sites:
    tmp: Path
    a: JupyterProcess
    b: JupyterProcess
    a_store: Path
    b_store: Path
    a_core: Core
    b_db: Database
    b_config: dict[str, Any]
    a_config: dict[str, Any]
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    b_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        """Stop both sites (B first) and let their databases go."""
        self.b_stack.close()
        self.stack.close()
        self.b_db.dispose()

    def start_b(self, workdir: str, env: dict[str, str] | None = None) -> None:
        self.b = self.b_stack.enter_context(jupyter_process(
            self.tmp / workdir, root_dir=self.tmp / "b", config=self.b_config,
            env={FLIP_ONCE_ENV: FLIP, **(env or {})}))
        self.a_core.peers.peers["site-b"] = replace(self.a_core.peers.peers["site-b"],
                                                    url=self.b.url)

    def kill_b(self) -> None:
        """B killed (SIGKILL), to be started again with ``start_b``."""
        os.kill(self.b.pid, signal.SIGKILL)
        self.b.process.wait()
        self.b_stack.close()
        self.b_stack = contextlib.ExitStack()

    def restart_a(self, workdir: str) -> None:
        """A killed and started again on its port (B is configured with its URL)."""
        if self.a.process.poll() is None:
            os.kill(self.a.pid, signal.SIGKILL)
            self.a.process.wait()
        port = int(self.a.url.rstrip("/").rsplit(":", 1)[1])
        self.a = self.stack.enter_context(jupyter_process(
            self.tmp / workdir, root_dir=self.tmp / "a", config=self.a_config, port=port))

    def b_file(self, name: str) -> requests.Response:
        return self.b.request("GET", f"hera-stage/api/files/{name}")

    def b_items(self) -> dict[str, TransferItem]:
        with self.b_db.read() as s:
            items = {i.name: i for i in s.scalars(select(TransferItem))}
            s.expunge_all()
            return items


def send(sites: Sites, names: list[str], peer: str = "site-b") -> dict[str, Any]:
    """A transfer job of ``names`` to ``peer``, run to its end in this process: the job, its
    items' (state, error) by name and the count of each state."""
    db = sites.a_core.catalogue.db
    job = create_transfer_job(db, "tester", names, sites.a_core.peers, peer,
                              log_dir=str(sites.tmp / "a-logs"))
    run_pending(db, EngineConfig(kinds=standard_kinds(),
                                 peers=sites.a_core.peers, fsync=False, heartbeat_seconds=0.2))
    with db.read() as s:
        items = {i.name: (i.state, i.error) for i in s.scalars(
            select(JobItem).where(JobItem.job_id == job["id"]))}
    counts: dict[str, int] = {}
    for state, _ in items.values():
        counts[state] = counts.get(state, 0) + 1
    return {"job": get_job(db, job["id"]), "items": items, "counts": counts}


def _write(path: Path, rng: random.Random, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))



#: What both sites' test servers share: no worker of their own, no service log.
SERVER_COMMON = {"start_worker": False, "service_log_file": ""}


def start_a(tmp: Path, a_store: Path, peers: dict[str, Any], peer_secrets: dict[str, str],
            stack: contextlib.ExitStack) -> tuple[JupyterProcess, Catalogue, dict[str, Any]]:
    """Site A of a test module, its server started on ``stack`` (``tmp/a-server``), its store
    ``a_store``, its catalogue ``tmp/a/catalogue.sqlite`` (files registered by the caller, in
    this process, as an ingest would), its ``peers`` (B's URL filled in by ``Sites.start_b``)
    and ``peer_secrets``; (its server, its catalogue, its config). No fixity audit: files
    damaged on purpose must reach B's checks as they are (an audit that marks one missing
    first makes it unavailable, a different failure)."""
    a_config = {"StagingApp": {
        **SERVER_COMMON, "db_url": f"sqlite:///{tmp / 'a' / 'catalogue.sqlite'}",
        "site_name": "site-a", "stores": {"a-store": {"path": str(a_store)}},
        "peers": peers, "peer_secrets": peer_secrets, "fixity_bytes_per_hour": 0,
    }}
    database = Database(a_config["StagingApp"]["db_url"])
    stack.callback(database.dispose)  # (after the server stops)
    a = stack.enter_context(jupyter_process(tmp / "a-server", root_dir=tmp / "a",
                                            config=a_config))
    return a, Catalogue(database), a_config


def receiver_config(db_url: str, store: Path, a_url: str) -> dict[str, Any]:
    """Site B's config: a receiver into ``store`` that pulls from site A at ``a_url``."""
    return {"StagingApp": {
        **SERVER_COMMON, "db_url": db_url, "site_name": "site-b",
        "stores": {"b-store": {"path": str(store)}}, "receive_store": "b-store",
        "peers": {"site-a": {"url": a_url, "secret": SECRET_BA}},
        "peer_secrets": {"site-a": hash_secret(SECRET_AB)},
    }}


def two_sites(tmp: Path, a: Any, a_store: Path, b_store: Path, catalogue: Catalogue,
              a_config: dict[str, Any], b_config: dict[str, Any], stack: Any) -> Sites:
    """The two sites of a test module: A's server ``a`` (its jobs run in this process on
    ``catalogue``, with A's configured peers) and B, started by ``Sites.start_b``."""
    registry = PeerRegistry("site-a", parse_peers(a_config["StagingApp"]["peers"]))
    a_core = Core(version="test", site_name="site-a", catalogue=catalogue,
                  ingester=Ingester(catalogue), allowed_roots=[str(tmp)], peers=registry)
    b_db = Database(b_config["StagingApp"]["db_url"])
    return Sites(tmp, a, None, a_store, b_store, a_core, b_db,  # type: ignore
                 b_config, a_config, stack)

@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[Sites]:
    tmp = tmp_path_factory.mktemp("sites")
    rng = random.Random(6)
    a_store, b_store = tmp / "a" / "store", tmp / "b" / "store"
    b_store.mkdir(parents=True)
    paths = {name: f"2457700/{name}" for name in BATCH}
    paths.update({name: f"{folder}/{name}" for name, folder in BIG_FOLDERS.items()})
    paths.update({n: f"2457702/{n}" for n in (CONFLICT, CORRUPT, FLIP, FORBIDDEN)})
    paths.update({n: f"2457703/{n}" for n in ONE_AT_A_TIME})
    paths.update({n: f"2457704/{n}" for n in FLIP_COMPANIONS})
    paths.update({n: f"2457705/{n}" for n in MIXED})
    paths.update({n: f"2457706/{n}" for n in KILLED_BATCH})
    paths[FOLLOWED] = f"2457720/{FOLLOWED}"
    for folder, names in UNSYNCED_BATCHES.values():
        paths.update({n: f"{folder}/{n}" for n in names})
    for name, rel in paths.items():
        size = BIG_SIZE if name in BIG_FOLDERS else FOLLOWED_SIZE if name == FOLLOWED else \
            KILLED_BATCH_SIZE if name in KILLED_BATCH else 65536 + rng.randrange(4096)
        _write(a_store / rel, rng, size)
    # B already holds another file under the conflicting name.
    _write(b_store / "mine" / CONFLICT, rng, 1000)

    b_db_url = f"sqlite:///{tmp / 'b' / 'catalogue.sqlite'}"
    stack = contextlib.ExitStack()
    # (A's jobs run in this process with these peers.)
    a, catalogue, a_config = start_a(
        tmp, a_store, {"site-b": {"url": "http://127.0.0.1:9/", "secret": SECRET_AB,
                                  "max_bytes_per_s": THROTTLE}},
        {"site-b": hash_secret(SECRET_BA), "site-c": hash_secret(SECRET_CA)}, stack)
    specs = []
    for i, (name, rel) in enumerate(paths.items()):
        digest = ck.hash_file(a_store / rel)
        specs.append(FileSpec(name=name, size=digest.size, checksums=digest.checksums,
                              source="correlator", meta={"index": i, "telescope": "HERA"}))
    catalogue.register(specs, "a-store", list(paths.values()))
    site = two_sites(tmp, a, a_store, b_store, catalogue, a_config,
                     receiver_config(b_db_url, b_store, a.url), stack)
    site.start_b("b-server")
    reply = site.b.api("ingest", {"store": "b-store", "globs": ["mine/*"]})
    assert reply, reply
    try:
        yield site
    finally:
        site.close()


def test_batch_arrives_verified_with_metadata_and_resend_moves_nothing(sites: Sites) -> None:
    report = send(sites, BATCH)
    assert report["counts"] == {"done": 30}, report
    assert report["job"]["state"] == "succeeded"
    assert len({sites.b_items()[n].transfer for n in BATCH}) == 1  # one announce
    a_detail = {n: sites.a_core.catalogue.file_detail(n) for n in BATCH}
    for name in BATCH:
        arrived = sites.b_store / "2457700" / name
        assert ck.compare(ck.hash_file(arrived).checksums, a_detail[name]["checksums"])
        detail = sites.b_file(name).json()
        assert detail["checksums"] == a_detail[name]["checksums"]
        assert detail["size"] == a_detail[name]["size"]
        assert detail["metadata"] == a_detail[name]["metadata"]
        assert detail["source"] == "correlator"
        assert detail["obsid"] == a_detail[name]["obsid"] is not None
        assert detail["observation"] == a_detail[name]["observation"]
        assert [(i["store"], i["path"]) for i in detail["instances"]] == \
            [("b-store", f"2457700/{name}")]
        types = [e["type"] for e in detail["events"]]
        assert types.count("transfer-received") == 1 and "instance-added" in types
        assert remote_sites(sites.a_core, name) == ["site-b"]
        assert "transfer-sent" in [e["type"] for e in sites.a_core.catalogue.file_detail(name)
                                   ["events"]]
    assert not list((sites.b_store / INCOMING_DIR).iterdir())
    inodes = {n: (sites.b_store / "2457700" / n).stat().st_mtime_ns for n in BATCH}

    again = send(sites, BATCH)
    assert again["counts"] == {"skipped": 30}, again
    assert again["job"]["files_skipped"] == 30
    assert {n: (sites.b_store / "2457700" / n).stat().st_mtime_ns for n in BATCH} == inodes
    assert all(sites.b_items()[n].attempts == 1 for n in BATCH)
    with sites.a_core.catalogue.db.read() as s:
        assert s.scalar(select(func.count()).select_from(RemoteInstance)) == 30
    for name in BATCH[:3]:
        events = sites.b_file(name).json()["events"]
        assert [e["type"] for e in events].count("transfer-received") == 1

    # GET peers on B: A is reachable with B's secret.
    peers = sites.b.api("peers")["peers"]
    assert peers == [{"name": "site-a", "url": sites.a.url, "reachable": True,
                      "site": "site-a", "error": "", "accepts_from": True}]


class _OldSender(http.server.BaseHTTPRequestHandler):
    """A sender from before the compact framing: ``POST files/batch`` answered with JSON member
    headers whatever the request asks (the ``framing`` field unknown to it), from ``files``."""

    files: dict[str, bytes] = {}
    #: Compact frames, and nothing else of the reply to say so (as after a proxy that keeps only
    #: the usual headers).
    compact = False

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        from hera_stage_ext.transfer.protocol import BatchFraming

        names = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["names"]
        framing = BatchFraming(compact=self.compact)
        out = bytearray(framing.start())
        for name in names:
            if name in self.files:
                framing.member(out, name, self.files[name])
            else:
                framing.error(out, name, "not here")
        out += framing.end()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class _NotThisProtocol(_OldSender):
    """A sender whose batch stream is no framing of this protocol: a header of bytes that are
    no JSON."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        out = (9).to_bytes(4, "big") + b"\xffnot JSON"
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_batch_streams_between_old_and_new_peers(sites: Sites) -> None:
    """The compact batch framing is used only when both sides know it: a receiver that does
    not ask for it (an older one) gets JSON member headers, byte for byte as before; one that
    asks gets the compact stream, whose first word says so; and this receiver reads the JSON
    headers of a sender that ignores the request (an older one) as well as the compact stream,
    told apart by that word alone."""
    from hera_stage_ext.transfer.protocol import SIZES, PeerClient

    name, missing = BATCH[0], "zen.nowhere.uvh5"
    data = (sites.a_store / "2457700" / name).read_bytes()
    url = sites.a.url + "hera-stage/peer/files/batch"
    auth = {"Authorization": f"HeraPeer site-b:{SECRET_BA}"}

    old = requests.post(url, json={"names": [name, missing]}, headers=auth, timeout=30)
    assert old.status_code == 200
    body, frames = old.content, []
    while (length := int.from_bytes(body[:4], "big")):
        header = json.loads(body[4:4 + length])
        size = header.get("size", 0)
        frames.append((header, body[4 + length:4 + length + size]))
        body = body[4 + length + size:]
    assert body == b"\x00" * 4
    assert frames[0] == ({"name": name, "size": len(data)}, data)
    assert frames[1][0]["name"] == missing and "no available instance" in frames[1][0]["error"]

    new = requests.post(url, json={"names": [name, missing], "framing": SIZES}, headers=auth,
                        timeout=30)
    assert new.status_code == 200
    message = new.content[4 + 4 + len(data) + 4 + 4:-4]
    assert new.content == (b"\xff\xff\xff\xfd" + len(data).to_bytes(4, "big") + data
                           + b"\xff" * 4 + len(message).to_bytes(4, "big") + message
                           + b"\xff\xff\xff\xfe")
    assert b"no available instance" in message

    peer = parse_peers({"site-a": {"url": sites.a.url, "secret": SECRET_BA}})["site-a"]
    client = PeerClient(peer, "site-b")
    try:
        members = list(client.batch([name, missing]))
    finally:
        client.close()
    assert members[0] == (name, data, "")
    assert members[1][:2] == (missing, b"") and "no available instance" in members[1][2]

    _OldSender.files = {name: data}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldSender)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        old_peer = parse_peers({"old": {"url": f"http://127.0.0.1:{server.server_port}/",
                                        "secret": SECRET_BA}})["old"]
        client = PeerClient(old_peer, "site-b")
        try:
            assert list(client.batch([missing, name])) == [(missing, b"", "not here"),
                                                           (name, data, "")]
            # Compact frames with no reply header to say so: read as compact all the same.
            _OldSender.compact = True
            assert list(client.batch([missing, name])) == [(missing, b"", "not here"),
                                                           (name, data, "")]
            # A stream of neither framing: a broken pull, pulled again later, never a crash.
            _OldSender.compact, _OldSender.files = False, {}
            server.RequestHandlerClass = _NotThisProtocol
            with pytest.raises(Unavailable, match="malformed header"):
                list(client.batch([name]))
        finally:
            _OldSender.compact = False
            client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_clients_batches_share_one_connection(sites: Sites) -> None:
    """What a receiver's drainer relies on to keep one client for all its batches: each batch
    stream is read to its end, so the keep-alive connection serves the next batch (a new
    session and connection a batch cost both sites CPU), and each batch arrives whole."""
    from hera_stage_ext.transfer.protocol import PeerClient

    names = list(BATCH[:3])
    data = {n: (sites.a_store / "2457700" / n).read_bytes() for n in names}
    peer = parse_peers({"site-a": {"url": sites.a.url, "secret": SECRET_BA}})["site-a"]
    client = PeerClient(peer, "site-b")
    try:
        for _ in range(3):
            assert list(client.batch(names)) == [(n, data[n], "") for n in names]
        pools = client.session.get_adapter(sites.a.url).poolmanager.pools
        (pool,) = [pools[key] for key in pools.keys()]
        assert pool.num_connections == 1
    finally:
        client.close()


def test_a_large_file_shows_the_bytes_the_peer_has_pulled_before_it_is_done(
        sites: Sites) -> None:
    """The job's bytes (done + moving) follow the peer's pull of a large file in steps, while
    the file is not done, never past the job's total (issue 17, point 5)."""
    db = sites.a_core.catalogue.db
    job = create_transfer_job(db, "tester", [FOLLOWED], sites.a_core.peers, "site-b",
                              log_dir=str(sites.tmp / "a-logs"))
    runner = threading.Thread(target=run_pending, args=(db, EngineConfig(
        kinds=standard_kinds(), peers=sites.a_core.peers, fsync=False, heartbeat_seconds=0.1)))
    runner.start()
    seen = []
    try:
        while runner.is_alive():
            seen.append(get_job(db, job["id"]))
            time.sleep(0.05)
    finally:
        runner.join(60)
    assert all(j["bytes_done"] + j["bytes_moving"] <= FOLLOWED_SIZE for j in seen)
    steps = {j["bytes_moving"] for j in seen
             if j["files_done"] == 0 and 0 < j["bytes_moving"] < FOLLOWED_SIZE}
    assert len(steps) >= 3, sorted(steps)
    end = get_job(db, job["id"])
    assert (end["state"], end["files_done"], end["bytes_moving"]) == ("succeeded", 1, 0)


def test_wrong_secret_gets_401_and_writes_nothing(sites: Sites) -> None:
    good = sites.a_core.peers.peers["site-b"]
    sites.a_core.peers.peers["site-b"] = replace(good, secret="not-the-secret-" + "x" * 30)
    try:
        with pytest.raises(PeerRejected) as info:
            send(sites, [FORBIDDEN])
        assert "401" in info.value.message and "wrong secret" in info.value.message
        with sites.a_core.catalogue.db.read() as s:
            assert not s.scalars(select(JobRow).join(JobItem).where(
                JobItem.name == FORBIDDEN)).first()
        assert SECRET_AB not in info.value.message
    finally:
        sites.a_core.peers.peers["site-b"] = good
    for header in ("HeraPeer site-x:" + SECRET_AB, "token " + sites.b.token, None):
        reply = requests.post(sites.b.url + "hera-stage/peer/announce", timeout=10,
                              json={"transfer": "t", "files": []},
                              headers={"Authorization": header} if header else {})
        assert reply.status_code == 401, (header, reply.text)
    assert FORBIDDEN not in sites.b_items()
    assert sites.b_file(FORBIDDEN).status_code == 404
    assert not list(sites.b_store.rglob(FORBIDDEN))


def test_file_bytes_by_sendfile_honour_range_and_authentication(sites: Sites) -> None:
    """Unthrottled responses (a user's download, a peer without ``max_bytes_per_s``) go out by
    the kernel's sendfile and close the connection after them; a throttled peer keeps the
    chunked path. Both give the same bytes for the same Range, and authentication still holds."""
    data = (sites.a_store / "2457701" / BIG).read_bytes()
    user = f"hera-stage/api/files/{BIG}/content"
    peer = f"hera-stage/peer/files/{BIG}/content"
    as_c = {"Authorization": f"HeraPeer site-c:{SECRET_CA}"}
    as_b = {"Authorization": f"HeraPeer site-b:{SECRET_BA}"}
    as_user = {"Authorization": f"token {sites.a.token}"}
    whole = requests.get(sites.a.url + user, headers=as_user, timeout=30)
    assert whole.status_code == 200 and whole.headers["Connection"] == "close"
    assert whole.content == data
    start = 5_000_001  # inside a page, not at a chunk boundary
    for path, headers in ((user, as_user), (peer, as_c)):
        reply = requests.get(sites.a.url + path, timeout=30,
                             headers={**headers, "Range": f"bytes={start}-"})
        assert reply.status_code == 206, reply.text[:300]
        assert reply.headers["Content-Range"] == f"bytes {start}-{len(data) - 1}/{len(data)}"
        assert reply.headers["Connection"] == "close"
        assert reply.content == data[start:]
    middle = requests.get(sites.a.url + peer, timeout=30,
                          headers={**as_c, "Range": "bytes=1000-1999"})
    assert middle.status_code == 206 and middle.content == data[1000:2000]
    throttled = requests.get(sites.a.url + peer, timeout=30,
                             headers={**as_b, "Range": "bytes=1000-1999"})
    assert throttled.status_code == 206 and throttled.content == data[1000:2000]
    assert throttled.headers.get("Connection") != "close"  # the 1 MiB chunk path
    for header in (f"HeraPeer site-c:{SECRET_BA}", f"HeraPeer site-c:{SECRET_CA}x", None):
        reply = requests.get(sites.a.url + peer, timeout=30, headers={"Range": f"bytes={start}-",
                             **({"Authorization": header} if header else {})})
        assert reply.status_code == 401 and data[start:start + 64] not in reply.content
    anonymous = requests.get(sites.a.url + user, timeout=30, headers={"Range": f"bytes={start}-"})
    assert anonymous.status_code == 403 and data[start:start + 64] not in anonymous.content


def test_unknown_peer_is_a_clear_error(sites: Sites) -> None:
    with pytest.raises(NotFound) as info:
        send(sites, [FORBIDDEN], peer="nowhere")
    assert "no peer named 'nowhere'" in info.value.message and "site-b" in info.value.message


def test_conflicting_name_is_reported_and_nothing_overwritten(sites: Sites) -> None:
    before = (sites.b_store / "mine" / CONFLICT).read_bytes()
    report = send(sites, [CONFLICT])
    state, error = report["items"][CONFLICT]
    assert state == "failed" and "conflict" in error and "other content" in error
    assert report["job"]["state"] == "failed" and "conflict" in report["job"]["error"]
    assert (sites.b_store / "mine" / CONFLICT).read_bytes() == before
    assert not (sites.b_store / "2457702" / CONFLICT).exists()
    assert [i["path"] for i in sites.b_file(CONFLICT).json()["instances"]] == [
        f"mine/{CONFLICT}"]
    assert remote_sites(sites.a_core, CONFLICT) == []


def test_bytes_corrupted_at_the_sender_are_caught(sites: Sites) -> None:
    source = sites.a_store / "2457702" / CORRUPT
    data = bytearray(source.read_bytes())
    data[1000] ^= 0x01  # the catalogue still has the checksums of the original
    source.write_bytes(bytes(data))
    report = send(sites, [CORRUPT])
    state, error = report["items"][CORRUPT]
    assert state == "failed" and "checksums" in error, error
    assert sites.b_file(CORRUPT).status_code == 404
    assert not (sites.b_store / "2457702" / CORRUPT).exists()
    assert not list((sites.b_store / INCOMING_DIR).iterdir())
    assert sites.b_items()[CORRUPT].state == "failed"
    assert remote_sites(sites.a_core, CORRUPT) == []


def test_byte_flipped_in_flight_is_caught_and_resent(sites: Sites) -> None:
    """One member of a batch pull arrives damaged: only it is pulled again."""
    report = send(sites, [FLIP, *FLIP_COMPANIONS])
    assert report["counts"] == {"done": 5}, report
    items = sites.b_items()
    assert items[FLIP].attempts == 2  # the first pull's checksum did not match
    assert {items[n].attempts for n in FLIP_COMPANIONS} == {1}  # the others went through
    for name, folder in ((FLIP, "2457702"), *((n, "2457704") for n in FLIP_COMPANIONS)):
        arrived = ck.hash_file(sites.b_store / folder / name)
        assert ck.compare(arrived.checksums,
                          sites.a_core.catalogue.file_detail(name)["checksums"])
        assert remote_sites(sites.a_core, name) == ["site-b"]
    assert not list((sites.b_store / INCOMING_DIR).iterdir())


def test_one_batch_mixing_have_send_and_conflict(sites: Sites) -> None:
    have = BATCH[0]  # sent by the first test
    report = send(sites, [have, CONFLICT, *MIXED])
    assert report["counts"] == {"skipped": 1, "failed": 1, "done": 3}, report
    assert report["items"][have] == ("skipped", "")
    state, error = report["items"][CONFLICT]
    assert state == "failed" and "conflict" in error and "other content" in error
    assert not (sites.b_store / "2457702" / CONFLICT).exists()
    items = sites.b_items()
    assert items[have].attempts == 1  # nothing pulled again
    for name in MIXED:
        assert items[name].state == "committed" and items[name].attempts == 1
        arrived = ck.hash_file(sites.b_store / "2457705" / name)
        assert ck.compare(arrived.checksums,
                          sites.a_core.catalogue.file_detail(name)["checksums"])
        events = [e["type"] for e in sites.b_file(name).json()["events"]]
        assert events.count("transfer-received") == 1
        assert remote_sites(sites.a_core, name) == ["site-b"]
    assert remote_sites(sites.a_core, CONFLICT) == []


def _punch_hole(path: Path, start: int, end: int) -> None:
    """Leave ``path`` with a hole from ``start`` to ``end``, its bytes after it kept (what
    direct writes finishing out of order leave when the pull breaks)."""
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read()
    os.truncate(path, start)
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(tail)
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) != start:
            pytest.skip("this file system does not report holes")
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", [BIG, HOLED], ids=["cut mid-block", "hole"])
def test_receiver_killed_mid_transfer_resumes_after_restart(sites: Sites, name: str) -> None:
    thread, result, part = _send_until_partial(sites, name)
    sites.kill_b()
    received_before = part.stat().st_size
    assert received_before < BIG_SIZE
    # A partial file that ends mid-block (as one written the ordinary way can): the pull
    # resumes from the last whole block.
    cut = received_before - 1000
    os.truncate(part, cut)
    resumed = cut - cut % directio.BLOCK
    if name == HOLED:
        # An earlier block missing, later ones written: the pull resumes before the hole,
        # not from zero (the bytes after it were never hashed).
        resumed = 2 << 20
        _punch_hole(part, resumed, resumed + (1 << 20))
    sites.start_b(f"b-server-{BIG_FOLDERS[name]}")
    thread.join(90)
    assert not thread.is_alive()
    assert result["counts"] == {"done": 1}, result
    item = sites.b_items()[name]
    assert item.state == "committed" and item.resumed_from == resumed > 0
    assert item.attempts == 2, item.error  # the pull the kill broke, then one more
    arrived_path = sites.b_store / BIG_FOLDERS[name] / name
    # Written straight to the disk: of the file, only the part hashed again on resume went
    # through the page cache.
    assert cached_bytes(arrived_path) <= cut + (1 << 20)
    arrived = ck.hash_file(arrived_path)
    assert ck.compare(arrived.checksums, sites.a_core.catalogue.file_detail(name)["checksums"])
    assert arrived.size == BIG_SIZE
    with sites.b_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Instance).join(Instance.file).where(
            File.name == name)) == 1
    assert not list((sites.b_store / INCOMING_DIR).iterdir())
    assert remote_sites(sites.a_core, name) == ["site-b"]
    # Sending it again moves nothing.
    assert send(sites, [name])["counts"] == {"skipped": 1}


def test_a_file_shortened_at_the_sender_is_not_resumed(sites: Sites) -> None:
    """The sender's file shorter than what the receiver holds of it (damaged there since it
    was announced): pulled again from zero and failed on its checksum, no partial file left;
    not a resume the sender answers 416."""
    thread, result, part = _send_until_partial(sites, SHRUNK)
    sites.kill_b()
    os.truncate(sites.a_store / BIG_FOLDERS[SHRUNK] / SHRUNK, part.stat().st_size // 2)
    sites.start_b("b-server-shrunk")
    thread.join(90)
    assert not thread.is_alive()
    assert result["counts"] == {"failed": 1}, result
    item = sites.b_items()[SHRUNK]
    assert item.state == "failed" and "announced" in item.error and "416" not in item.error, \
        item.error
    assert not part.exists()
    assert remote_sites(sites.a_core, SHRUNK) == []


def _send_until_partial(sites: Sites, name: str
                        ) -> tuple[threading.Thread, dict[str, Any], Path]:
    """Send ``name`` from a thread; once B holds more than 8 MiB of it: the thread, the
    dictionary its ``send`` result goes to, and B's partial file."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(send(sites, [name])))
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        item = sites.b_items().get(name)
        part = sites.b_store / INCOMING_DIR / f"{item.id}.part" if item else None
        if part is not None and part.exists() and part.stat().st_size > 8 << 20:
            return thread, result, part
        assert time.monotonic() < deadline, "the pull never started"
        time.sleep(0.05)


def test_sender_killed_mid_pull_resumes_where_it_broke(sites: Sites) -> None:
    """A sender killed mid-body closes the connection: the receiver keeps what arrived and,
    once the sender is back, pulls only the rest."""
    thread, result, _part = _send_until_partial(sites, SENDER_KILLED)
    sites.restart_a("a-server-2")
    thread.join(90)
    assert not thread.is_alive()
    assert result["counts"] == {"done": 1}, result
    item = sites.b_items()[SENDER_KILLED]
    assert item.state == "committed" and item.resumed_from > 8 << 20, vars(item)
    arrived = ck.hash_file(sites.b_store / BIG_FOLDERS[SENDER_KILLED] / SENDER_KILLED)
    assert arrived.size == BIG_SIZE
    assert ck.compare(arrived.checksums,
                      sites.a_core.catalogue.file_detail(SENDER_KILLED)["checksums"])
    assert remote_sites(sites.a_core, SENDER_KILLED) == ["site-b"]


def test_batch_pull_interrupted_by_a_receiver_kill_resumes(sites: Sites) -> None:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(send(sites, KILLED_BATCH)))
    thread.start()
    incoming = sites.b_store / INCOMING_DIR
    deadline = time.monotonic() + 30
    while len(parts := list(incoming.glob("*.part")) if incoming.exists() else []) < 3:
        assert time.monotonic() < deadline, "the batch pull never started"
        time.sleep(0.02)
    sites.kill_b()
    assert len(parts) < len(KILLED_BATCH)  # killed half-way through the batch
    items = _restarted_and_arrived_once(sites, "b-server-3", thread, result, KILLED_BATCH,
                                        "2457706")
    for name in KILLED_BATCH:
        assert items[name].state == "committed"
        assert (sites.b_store / "2457706" / name).stat().st_size == KILLED_BATCH_SIZE
        assert remote_sites(sites.a_core, name) == ["site-b"]
    assert not list(incoming.iterdir())
    assert send(sites, KILLED_BATCH)["counts"] == {"skipped": len(KILLED_BATCH)}


def _restarted_and_arrived_once(sites: Sites, log_name: str, thread: threading.Thread,
                                result: dict[str, Any], names: list[str], folder: str
                                ) -> dict[str, TransferItem]:
    """B killed with none of ``names`` registered, restarted; the transfer (``thread``,
    its report in ``result``) then ends with each of them done, registered once at B, its
    bytes in ``folder`` of B's store those A's catalogue announced. B's transfer items by
    name."""
    with sites.b_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Instance).join(Instance.file).where(
            File.name.in_(names))) == 0
    sites.start_b(log_name)
    thread.join(90)
    assert not thread.is_alive()
    assert result["counts"] == {"done": len(names)}, result
    with sites.b_db.read() as s:
        instances = dict(s.execute(select(File.name, func.count(Instance.id)).join(
            Instance, Instance.file_id == File.id).where(File.name.in_(names))
            .group_by(File.name)).all())
    assert instances == {n: 1 for n in names}  # nothing duplicated
    for name in names:
        arrived = ck.hash_file(sites.b_store / folder / name)
        assert ck.compare(arrived.checksums,
                          sites.a_core.catalogue.file_detail(name)["checksums"])
    return sites.b_items()


@pytest.mark.parametrize("way", list(UNSYNCED_BATCHES))
def test_a_receiver_killed_between_a_batchs_writes_and_its_sync_registers_nothing(
        sites: Sites, way: str) -> None:
    """Killed once a batch's members are written and before they are made final (their syncs
    waited for, renamed): none of them is under its final name or registered; after the
    restart the batch is pulled again and each file arrives verified and registered once.
    Either way of syncing a batch: one ``syncfs`` (a quiet machine) or file by file."""
    if way == "whole" and not durability.SYNCFS_REPORTS_ERRORS:
        pytest.skip("syncfs reports write-back errors from Linux 5.8 on")
    if way == "whole":
        store = os.open(sites.b_store, os.O_RDONLY)
        try:
            if durability.file_system_type(store) not in durability.SYNCFS_TYPES:
                pytest.skip("the store's file system is synced file by file")
        finally:
            os.close(store)
    folder, names = UNSYNCED_BATCHES[way]
    unwritten = 0 if way == "whole" else durable.QUIET_BYTES + 1
    paused = sites.tmp / f"paused-before-sync-{way}"
    sites.kill_b()
    sites.start_b(f"b-server-paused-{way}", env={PAUSE_BEFORE_SYNC_ENV: str(paused),
                                                 durable.UNWRITTEN_ENV: str(unwritten)})
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(send(sites, names)))
    thread.start()
    deadline = time.monotonic() + 30
    # (Its text may come a moment after the file: created, then written.)
    while not (paused.exists() and paused.read_text()):
        assert time.monotonic() < deadline, "the batch never reached its sync"
        time.sleep(0.02)
    assert paused.read_text() == way  # the batch synced as the machine's unwritten data says
    incoming = sites.b_store / INCOMING_DIR
    assert len(list(incoming.glob("*.part"))) == len(names)  # all written
    sites.kill_b()
    assert not (sites.b_store / folder).exists()  # nothing under a final name
    assert {sites.b_items()[n].state for n in names} == {"receiving"}
    items = _restarted_and_arrived_once(sites, f"b-server-after-pause-{way}", thread, result,
                                        names, folder)
    for name in names:
        assert (items[name].state, items[name].attempts) == ("committed", 2)
    assert not list(incoming.iterdir())
    assert send(sites, names)["counts"] == {"skipped": len(names)}


def test_max_in_flight_announces_one_file_at_a_time(sites: Sites) -> None:
    good = sites.a_core.peers.peers["site-b"]
    sites.a_core.peers.peers["site-b"] = replace(good, max_in_flight=1)
    try:
        report = send(sites, ONE_AT_A_TIME)
    finally:
        sites.a_core.peers.peers["site-b"] = good
    assert report["counts"] == {"done": 3}, report
    items = sites.b_items()
    # Without the limit one announce carries all three (see the first test's batch).
    assert len({items[n].transfer for n in ONE_AT_A_TIME}) == 3
    log = Path(report["job"]["log_path"]).read_text()
    assert "item(s) in flight to peer 'site-b' (its max_in_flight 1)" in log


def test_secret_hashing_helper(capsys) -> None:
    assert peers_module.main(["hash-secret"]) == 0
    out = capsys.readouterr().out
    secret = out.split("peers[...]['secret']): ")[1].split("\n")[0]
    hashed = out.split("peer_secrets[...]): ")[1].strip()
    assert hashed == hash_secret(secret) and len(secret) >= peers_module.MIN_SECRET_CHARS
    registry = PeerRegistry("here", secret_hashes={"there": hashed})
    assert registry.authenticate(f"HeraPeer there:{secret}") == "there"
    for header in (f"HeraPeer there:{secret}x", f"HeraPeer else:{secret}", f"token {secret}",
                   "", f"HeraPeer there{secret}"):
        with pytest.raises(Unauthorized):
            registry.authenticate(header)
    with pytest.raises(InvalidRequest):
        hash_secret("short")


def test_migration_matches_transfer_models(tmp_path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from hera_stage_ext.catalogue.models import Base

    db = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    db.upgrade()
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "transfer_item" in repr(d) or "remote_instance" in repr(d)] == []
    db.dispose()


def test_full_store_answers_no_space(tmp_path) -> None:
    from hera_stage_ext.transfer.receiver import Receiver

    db = Database(f"sqlite:///{tmp_path / 'r.sqlite'}")
    db.upgrade()
    catalogue = Catalogue(db)
    (tmp_path / "store").mkdir()
    catalogue.sync_stores({"r": {"path": str(tmp_path / "store")}})
    registry = PeerRegistry("here", parse_peers(
        {"there": {"url": "http://127.0.0.1:9/", "secret": "s" * 40}}))
    receiver = Receiver(catalogue, registry, "r", reserve_bytes=10**18)
    offer = {"name": "zen.2457703.10000.xx.HH.uvh5", "size": 10, "path": "x/y.uvh5",
             "checksums": {"md5": "0" * 32}}
    try:
        reply = receiver.announce("there", {"transfer": "t1", "files": [
            offer, {**offer, "name": "zen.2457703.20000.xx.HH.uv", "is_directory": True,
                    "path": "x/z.uv"}]})
        assert [(f["answer"], "free" in f["message"]) for f in reply["files"]] == [
            ("no-space", True), ("no-space", True)]
        unknown = receiver.announce("elsewhere", {"transfer": "t2", "files": [offer]})
        assert unknown["files"][0]["answer"] == "refused"
        assert "no URL for peer 'elsewhere'" in unknown["files"][0]["message"]
        with pytest.raises(InvalidRequest):
            receiver.announce("there", {"transfer": "t3", "files": [{**offer, "path": "../x"}]})
        with db.read() as s:
            assert s.scalar(select(func.count()).select_from(TransferItem)) == 0
    finally:
        receiver.close()
        db.dispose()


def test_batch_lookups_of_many_names_on_both_databases(database: Database, tmp_path) -> None:
    """The lookups that bind a batch's names as one JSON array (``catalogue/inlist.py``) find
    exactly the rows named, quotes and non-ASCII included, for more names than SQLite once
    took as bound variables: the receiver's status (``finished_only`` lists only committed,
    failed and unknown names), the sender's offers and its remote-instance records (once per
    file and site)."""
    from hera_stage_ext.transfer.receiver import Receiver
    from hera_stage_ext.transfer.outgoing import offers_for, record_remote

    catalogue = Catalogue(database)
    (tmp_path / "store").mkdir()
    catalogue.sync_stores({"r": {"path": str(tmp_path / "store")}})
    names = [f"zen.2457703.{i:05d}.xx.HH.uvh5" for i in range(1200)]
    odd = ["zen.it's \"quoted\".uvh5", "zen.\u00e9t\u00e9.uvh5"]
    catalogue.register([FileSpec(name=n, size=1, checksums={"md5": f"{i:032x}"})
                        for i, n in enumerate(names + odd)])
    receiver = Receiver(catalogue, PeerRegistry("here"), "r")
    try:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        states = {names[0]: "committed", names[1]: "failed", names[2]: "receiving",
                  odd[0]: "committed", odd[1]: "queued"}
        with database.write() as s:
            s.add_all([TransferItem(transfer="t", peer="there", name=n, path=n, size=1,
                                    checksums={}, spec={}, state=states.get(n, "queued"),
                                    created_at=now, updated_at=now) for n in names + odd])
        asked = names + odd + ["zen.nowhere.uvh5"]
        full = receiver.status("there", asked)["files"]
        assert [f["state"] for f in full[:3]] == ["committed", "failed", "receiving"]
        finished = receiver.status("there", asked, finished_only=True)["files"]
        assert [(f["name"], f["state"]) for f in finished] == [
            (names[0], "committed"), (names[1], "failed"), (odd[0], "committed"),
            ("zen.nowhere.uvh5", "unknown")]
        # A long poll's later looks (every name known at its first) read only finished rows.
        assert receiver.status("there", asked[:-1], finished_only=True, all_known=True)[
            "files"] == [f for f in finished if f["state"] != "unknown"]
        assert receiver.status("elsewhere", names[:2], finished_only=True)["files"] == [
            {"name": n, "state": "unknown", "bytes": 0, "attempts": 0, "error": ""}
            for n in names[:2]]

        offers = offers_for(database, {n: f"d/{n}" for n in [*odd, names[5], "zen.none.uvh5"]})
        assert sorted(offers) == sorted([*odd, names[5]])
        assert offers[odd[0]]["path"] == f"d/{odd[0]}"
        record_remote(database, "there", "t", names + odd, "committed")
        record_remote(database, "there", "t", [odd[1], names[0]], "have")
        with database.read() as s:
            assert s.scalar(select(func.count()).select_from(RemoteInstance)) == len(names) + 2
    finally:
        receiver.close()


def test_offers_say_what_the_catalogue_holds_on_both_databases(database: Database) -> None:
    """The sender's offers (read on the database driver, not through the ORM) carry exactly
    what ``Catalogue.file_detail`` says of each file: its size, checksums, time (ISO, UTC,
    microseconds only when there are some), obsid with its observation, source and metadata;
    and a peer's ``check_offer`` takes them as they are."""
    from hera_stage_ext.catalogue.naming import ObservationInfo
    from hera_stage_ext.transfer.outgoing import offers_for
    from hera_stage_ext.transfer.protocol import check_offer

    catalogue = Catalogue(database)
    night = ObservationInfo(obsid=1179921618, start_time_jd=2457901.0,
                            stop_time_jd=2457901.007453333, start_lst_hr=5.777571899001487,
                            session_id=2457901)
    specs = [
        FileSpec(name="zen.2457901.00000.xx.HH.uvh5", size=4096,
                 checksums={"md5": "0" * 32, "xxh3-128": "1" * 32}, source="ingest",
                 obsid=night.obsid, create_time=dt.datetime(2026, 12, 6, 22, 37, 49, 522963),
                 meta={"k": [1, "\u00e9"]}, observation=night),
        FileSpec(name="plain.txt", size=0, checksums={"md5": "2" * 32},
                 create_time=dt.datetime(2026, 1, 2, 3, 4, 5)),
    ]
    catalogue.register(specs)
    offers = offers_for(database, {"zen.2457901.00000.xx.HH.uvh5": "n/zen.uvh5",
                                   "plain.txt": "p/plain.txt", "unknown.txt": "u"})
    assert sorted(offers) == ["plain.txt", "zen.2457901.00000.xx.HH.uvh5"]
    for spec in specs:
        detail = catalogue.file_detail(spec.name)
        obs = detail["observation"]
        assert offers[spec.name] == {
            "name": spec.name, "size": detail["size"], "checksums": detail["checksums"],
            "path": "n/zen.uvh5" if spec.obsid else "p/plain.txt",
            "is_directory": False, "obsid": detail["obsid"],
            "create_time": detail["create_time"], "source": detail["source"],
            "meta": detail["metadata"],
            "observation": None if obs is None else {
                k: obs[k] for k in ("obsid", "start_time_jd", "stop_time_jd", "start_lst_hr",
                                    "session_id")}}
        assert check_offer(offers[spec.name])["checksums"] == spec.checksums
    assert offers["plain.txt"]["create_time"] == "2026-01-02T03:04:05Z"
    assert offers["zen.2457901.00000.xx.HH.uvh5"]["observation"]["stop_time_jd"] == \
        2457901.007453333


def test_the_receivers_json_text_of_an_offer_is_jsons_own() -> None:
    """What a receiver stores of each offer (its checksums and the rest of its metadata) is
    the text ``json.dumps`` writes, whatever the offer holds: the items' rows read back the
    same values, and a row is known for the receiver's own by its text."""
    from hera_stage_ext.catalogue.checksums import checksums_json
    from hera_stage_ext.transfer.protocol import check_offer, spec_json, spec_of

    observation = {"obsid": 1179921618, "start_time_jd": 2457901.0,
                   "stop_time_jd": 2457901.007453333, "start_lst_hr": 5.777571899001487,
                   "session_id": 2457901}
    full = {"name": "zen.2457901.00000.xx.HH.uvh5", "size": 4096, "path": "a/b.uvh5",
            "checksums": {"xxh3-128": "A" * 32, "md5": "4f85179c190b029b5c1946e9c34c6544"},
            "is_directory": False, "obsid": 1179921618,
            "create_time": "2026-12-06T22:37:49.522963+01:00", "source": "caf\u00e9 \"q\"",
            "meta": {"k": [1, 2.5, None, "\u00e9\\"], "n": {"x": True}},
            "observation": observation}
    offers = [
        full,
        {**full, "observation": {**observation, "start_time_jd": 2457901, "start_lst_hr": 0}},
        {**full, "obsid": None, "observation": None, "meta": {}, "create_time": None,
         "source": "", "is_directory": True},
        {"name": "plain.txt", "size": 0, "checksums": {"md5": "0" * 32}},
        {key: value for key, value in full.items() if key != "source"},
        {**full, "meta": {"z": 1, "a": [float("1e300"), -0.0]}},
    ]
    for offer in offers:
        checked = check_offer(offer)
        assert spec_json(spec_of(checked)) == json.dumps(spec_of(checked))
        assert checksums_json(checked["checksums"]) == json.dumps(checked["checksums"])
        assert json.loads(spec_json(spec_of(checked))) == spec_of(checked)


def test_the_receivers_event_payloads_are_jsons_own_text(tmp_path: Path) -> None:
    """Each received file's ``transfer-received`` payload, put together from its parts (a
    batch's files of one transfer share its head), is the text ``json.dumps`` writes of it,
    whatever the peer, transfer, store and path hold: SQLite stores it as it is."""
    from hera_stage_ext.transfer.item_rows import ItemRow
    from hera_stage_ext.transfer.receiver import Receiver

    database = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    database.upgrade()
    receiver = Receiver(Catalogue(database), PeerRegistry("here"), 'st\u00f6re "q"')
    try:
        items = [ItemRow(-1, "site-a", "a.uvh5", "t1", "d/a.uvh5", 1, {}, 1, {}),
                 ItemRow(-2, "site-a", "b.uvh5", "t1", 'd/\u00e9t\u00e9 "b".uvh5', 1, {}, 3, {}),
                 ItemRow(-3, "si\u2603te", "c.uvh5", "t\\2", "c\nd.uvh5", 1, {}, 2, {})]
        events = receiver._received_events(items)
        assert [event[0] for event in events] == ["transfer-received"] * 3
        assert [event[1] for event in events] == [json.dumps(
            {"from": item.peer, "transfer": item.transfer, "store": receiver.store,
             "path": item.path, "attempts": item.attempts}) for item in items]
    finally:
        receiver.close()
        database.dispose()


def test_a_batch_is_served_from_available_online_instances_on_both_databases(
        database: Database, tmp_path) -> None:
    """What a peer's batch pull is served from: per name, in the order asked, the first
    available instance on an available online store (by store name, then instance), or why
    there is none (unknown, only on a cold or unavailable store or instance, a directory).
    A sender's push reads the same, found with its offers in one query (``offers_for``'s
    ``found``), each file's offer made once whatever its instances."""
    from hera_stage_ext.transfer.outgoing import (
        BatchMember, batch_paths, members_at, offers_for)

    catalogue = Catalogue(database)
    roots = {name: tmp_path / name for name in ("a", "b", "cold", "off")}
    catalogue.sync_stores({"b": {"path": str(roots["b"])}, "a": {"path": str(roots["a"])},
                           "cold": {"path": str(roots["cold"]), "kind": "cold", "buffer": "a"},
                           "off": {"path": str(roots["off"]), "available": False}})
    spec = lambda name, **kw: FileSpec(name=name, size=1, checksums={"md5": "0" * 32}, **kw)
    catalogue.register([spec("two.uvh5")], "b", ["d/two.uvh5"])
    catalogue.register([spec("two.uvh5")], "a", ["e/two.uvh5"])
    catalogue.register([spec("cold.uvh5")], "cold", ["c/cold.uvh5"])
    catalogue.register([spec("off.uvh5")], "off", ["o/off.uvh5"])
    catalogue.register([spec("gone.uvh5"), spec("set.uv", is_directory=True)], "a",
                       ["g/gone.uvh5", "s/set.uv"])
    with database.write() as s:
        s.execute(update(Instance).where(Instance.path == "g/gone.uvh5").values(available=False))
    core = Core(version="test", site_name="here", catalogue=catalogue,
                ingester=Ingester(catalogue), allowed_roots=[str(tmp_path)],
                peers=PeerRegistry("here"))
    members = batch_paths(core.catalogue.db, ["set.uv", "two.uvh5", "cold.uvh5", "nothing",
                                              "off.uvh5", "gone.uvh5"])
    assert members[1] == BatchMember("two.uvh5", f"{roots['a']}/e/two.uvh5", str(roots["a"]))
    assert "is a directory data set" in members[0].error
    assert [m.name for m in members] == ["set.uv", "two.uvh5", "cold.uvh5", "nothing",
                                         "off.uvh5", "gone.uvh5"]
    assert all("no available instance" in m.error and not m.path
               for m in members[2:]), members
    names = [m.name for m in members]
    found: dict = {}
    offers = offers_for(core.catalogue.db, {n: f"p/{n}" for n in names}, found)
    assert members_at(names, found) == members
    assert offers == offers_for(core.catalogue.db, {n: f"p/{n}" for n in names})
    assert sorted(offers) == sorted(set(names) - {"nothing"})


def test_a_folder_swapped_for_a_link_is_never_followed_by_a_sender(tmp_path) -> None:
    """A sender reads each member in its folder opened below the store's root, following no
    link: a folder swapped for a link out of the store after the lookup (or between claims)
    is resolved, confined and refused, its target never read; one already open for the claim
    is read from the folder it opened; a link that stays inside the store is served."""
    from hera_stage_ext.errors import Forbidden
    from hera_stage_ext.transfer.outgoing import MemberReader, batch_paths

    store, outside = tmp_path / "store", tmp_path / "outside"
    for folder in ("d", "e", "kept"):
        (store / folder).mkdir(parents=True)
        (store / folder / "f.uvh5").write_bytes(b"PLAIN")
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "f.uvh5").write_bytes(b"SECRET")
    db = Database(f"sqlite:///{tmp_path / 'a.sqlite'}")
    db.upgrade()
    try:
        catalogue = Catalogue(db)
        catalogue.sync_stores({"s": {"path": str(store)}})
        names = ["zen.d.uvh5", "zen.e.uvh5"]
        catalogue.register([FileSpec(name=n, size=5, checksums={"md5": "0" * 32})
                            for n in names], "s", ["d/f.uvh5", "e/f.uvh5"])
        with MemberReader(batch_paths(db, names)) as reader:  # a first claim: served
            assert [reader.read(m, 100) for m in batch_paths(db, names)] == [b"PLAIN"] * 2
            # Swapped while the claim holds the folder open: its folder read, not the link's.
            first = batch_paths(db, names)
            reader.read(first[0], 100)
            (store / "d").rename(store / "d.old")
            (store / "d").symlink_to(outside / "d")
            assert reader.read(first[0], 100) == b"PLAIN"
        # The next claim, looked up with the link in place, or before it was swapped in.
        (store / "d").unlink()
        (store / "d.old").rename(store / "d")
        looked_up = batch_paths(db, names)
        (store / "d").rename(store / "d.old")
        (store / "d").symlink_to(outside / "d")
        for members in (looked_up, batch_paths(db, names)):
            with MemberReader(members) as reader:
                with pytest.raises(Forbidden, match="resolves outside the allowed roots"):
                    reader.read(members[0], 100)
                assert reader.read(members[1], 100) == b"PLAIN"
        # A link to a folder inside the store: resolved, confined, served.
        (store / "d").unlink()
        (store / "d").symlink_to(store / "kept")
        members = batch_paths(db, names)
        with MemberReader(members) as reader:
            assert reader.read(members[0], 100) == b"PLAIN"
    finally:
        db.dispose()


def test_a_fifo_in_the_store_is_refused_by_a_sender_never_waited_on(tmp_path) -> None:
    """A member that is no regular file (a FIFO someone made in the store) is refused at once
    as a file that cannot be read: opening it must not hang a sender's stream or a pull."""
    from hera_stage_ext.transfer.outgoing import MemberReader, batch_paths

    store = tmp_path / "store"
    (store / "d").mkdir(parents=True)
    os.mkfifo(store / "d" / "f.uvh5")
    db = Database(f"sqlite:///{tmp_path / 'a.sqlite'}")
    db.upgrade()
    try:
        catalogue = Catalogue(db)
        catalogue.sync_stores({"s": {"path": str(store)}})
        catalogue.register([FileSpec(name="zen.f.uvh5", size=5, checksums={"md5": "0" * 32})],
                           "s", ["d/f.uvh5"])
        members = batch_paths(db, ["zen.f.uvh5"])
        with MemberReader(members) as reader:
            with pytest.raises(OSError, match="not a regular file"):
                reader.read(members[0], 100)
    finally:
        db.dispose()


def test_allowed_hours_windows_and_peer_settings() -> None:
    def peer(**spec: Any) -> Any:
        return parse_peers({"p": {"url": "http://x/", "secret": "s" * 40, **spec}})["p"]

    night = peer(hours="20-06")
    at = lambda h, m=0: dt.datetime(2026, 11, 21, h, m)
    assert night.seconds_until_open(at(23)) == 0 == night.seconds_until_open(at(5, 59))
    assert night.seconds_until_open(at(6)) == 14 * 3600
    assert night.seconds_until_open(at(19, 30)) == 30 * 60
    day = peer(hours="09:30-17:00")
    assert day.seconds_until_open(at(12)) == 0
    assert day.seconds_until_open(at(17)) == (16 * 60 + 30) * 60
    assert peer().seconds_until_open(at(3)) == 0  # no window: any time
    for bad in ("20", "25-06", "06-06", "8pm-6am", "10:75-11"):
        with pytest.raises(ValueError, match="hours"):
            peer(hours=bad)
    with pytest.raises(ValueError, match="unknown setting"):
        peer(max_inflight=3)
    # A guessable secret is refused with the configuration, as hash-secret refuses it.
    with pytest.raises(ValueError, match="at least 32 characters"):
        peer(secret="s" * 31)


def test_offers_are_answered_alike_on_both_databases(database: Database,
                                                    tmp_path: Path) -> None:
    """An announce's answers (``Receiver._answers``, read through the driver's SQL): a name
    held here with the same content ``have`` (on any store), one known with other content or
    offered to a path that holds another file ``conflict`` (saying which), one known without
    an instance, being pulled, or new ``send``, one larger than the store's space
    ``no-space``; with the state of the peer's items of those names."""
    from hera_stage_ext.transfer.item_rows import ItemRows
    from hera_stage_ext.transfer.receiver import Receiver

    receiver = Receiver(Catalogue(database), PeerRegistry("site-b", parse_peers(
        {"site-a": {"url": "http://127.0.0.1:9/", "secret": "x" * 40}})), "s")
    catalogue = receiver.catalogue
    catalogue.sync_stores({"s": {"path": str(tmp_path)}, "t": {"path": str(tmp_path / "t")}})

    def md5(digit: str) -> dict[str, str]:
        return {"md5": digit * 32}

    catalogue.register([FileSpec("have.uvh5", 10, md5("a")), FileSpec("other.uvh5", 10, md5("b")),
                        FileSpec("held.uvh5", 10, md5("c"))], "s",
                       ["d/have.uvh5", "d/other.uvh5", "d/held.uvh5"])
    catalogue.register([FileSpec("elsewhere.uvh5", 10, md5("e"))], "t", ["d/elsewhere.uvh5"])
    catalogue.register([FileSpec("no-copy.uvh5", 10, md5("f"))])
    now = dt.datetime(2026, 12, 7, 20, 0)
    with database.write() as s:
        rows = ItemRows(s)
        rows.insert([(t, peer, name, f"d/{name}", 10, json.dumps(md5("1")), "{}", state, 1, 0,
                      "", rows.time(now), rows.time(now))
                     for t, peer, name, state in (("t0", "site-a", "pulled.uvh5", "receiving"),
                                                  ("t0", "site-c", "new.uvh5", "committed"))])
    offers = [{"name": name, "size": size, "checksums": md5(digit), "path": f"d/{path}"}
              for name, size, digit, path in (
                  ("have.uvh5", 10, "a", "have.uvh5"), ("other.uvh5", 11, "b", "o.uvh5"),
                  ("other-2.uvh5", 10, "b", "held.uvh5"),
                  ("elsewhere.uvh5", 10, "e", "elsewhere.uvh5"),
                  ("no-copy.uvh5", 10, "f", "no-copy.uvh5"), ("pulled.uvh5", 10, "1", "p.uvh5"),
                  ("big.uvh5", 2**62, "2", "big.uvh5"), ("new.uvh5", 10, "3", "new.uvh5"))]
    states: dict[str, str] = {}
    try:
        answers = receiver._answers("site-a", offers, tmp_path, states)
    finally:
        receiver.close()
    assert {name: answer for name, (answer, _message) in answers.items()} == {
        "have.uvh5": "have", "other.uvh5": "conflict", "other-2.uvh5": "conflict",
        "elsewhere.uvh5": "have", "no-copy.uvh5": "send", "pulled.uvh5": "send",
        "big.uvh5": "no-space", "new.uvh5": "send"}
    assert answers["other.uvh5"][1] == ("'other.uvh5' is known here with other content (size 10, "
                                        "checksums {'md5': '" + "b" * 32 + "'})")
    assert answers["other-2.uvh5"][1] == "s:d/held.uvh5 holds another file"
    assert answers["big.uvh5"][1].startswith("store 's' has ")
    assert states == {"pulled.uvh5": "receiving"}  # the peer's own items only


def test_item_rows_written_by_the_driver_read_back_through_the_orm(database: Database) -> None:
    """The receiver's bulk item writes (``transfer/item_rows.py``: announce, re-announce, a
    batch's start and commit) store what the ORM reads as its own on both databases: a restart
    (``Receiver.resume``) and the status endpoint see every value as written."""
    from hera_stage_ext.transfer.item_rows import ItemRows

    now = dt.datetime(2026, 12, 6, 8, 30, 15, 123456)
    names = [f"zen.2457703.{i:05d}.xx.HH.uvh5" for i in range(3)] + ["zen.it's \u00e9.uvh5"]
    spec = {"obsid": 2457703, "meta": {"k": [1, "\u00e9"]}}
    with database.write() as s:
        rows = ItemRows(s)
        rows.insert([("t1", "there", n, f"d/{n}", 4096, json.dumps({"md5": "0" * 32}),
                      json.dumps(spec), "queued", 0, 0, "", rows.time(now), rows.time(now))
                     for n in names])
    with database.write() as s:
        rows = ItemRows(s)
        known = rows.known("there", names + ["zen.none.uvh5"])
        assert sorted(known) == sorted(names)
        assert known[names[0]][1:] == ("queued", 4096, {"md5": "0" * 32})
        ids = rows.ids("there", names)
        assert rows.ids("elsewhere", names) == {}
        # What this process wrote is not parsed again, unless the row holds other text now.
        mine = {"md5": "0" * 32}
        parsed = {ids[names[0]]: (json.dumps(mine), json.dumps(spec), mine, spec),
                  ids[names[1]]: ("{}", json.dumps(spec), {}, spec)}
        started = rows.start([ids[n] for n in names[:2]], now, parsed)
        assert [(r.name, r.attempts, r.spec, r.checksums) for r in started] == [
            (n, 1, spec, {"md5": "0" * 32}) for n in names[:2]]
        # (PostgreSQL: the driver parses JSONB itself.)
        assert (started[0].checksums is mine) == (database.backend == "sqlite")
        assert parsed == {}
        rows.set_state([ids[names[0]]], "committed", "", now)
        rows.set_state([ids[names[1]]], "failed", "it broke", now)
        # Announced again: the failed one from zero, the queued one keeps its state.
        rows.rearm([("t2", "e/x", 10, json.dumps({"md5": "1" * 32}), json.dumps({}),
                     rows.time(now), True, ids[names[1]]),
                    ("t2", f"d/{names[2]}", 4096, json.dumps({"md5": "0" * 32}),
                     json.dumps(spec), rows.time(now), False, ids[names[2]])])
    with database.read() as s:
        items = {i.name: i for i in s.scalars(select(TransferItem))}
        s.expunge_all()
    assert (items[names[0]].state, items[names[0]].attempts) == ("committed", 1)
    failed = items[names[1]]
    assert (failed.state, failed.attempts, failed.error, failed.transfer, failed.path,
            failed.size, failed.checksums, failed.spec) == (
        "queued", 0, "", "t2", "e/x", 10, {"md5": "1" * 32}, {})
    assert (items[names[2]].state, items[names[2]].transfer) == ("queued", "t2")
    assert items[names[3]].spec == spec and items[names[3]].updated_at == now
    assert items[names[3]].created_at == now


@pytest.mark.parametrize("compact", [False, True], ids=["json-headers", "compact"])
def test_a_batch_serves_links_only_inside_the_store(tmp_path, compact: bool) -> None:
    """``POST files/batch`` at the sender opens each file without following a link: a file
    served as it is, a link resolved and served only if it stays inside the store (the other
    member framed with an error, its target's bytes never sent), in either framing."""
    from hera_stage_ext.api.peer import _read_members
    from hera_stage_ext.transfer.outgoing import MemberReader, batch_paths
    from hera_stage_ext.transfer.protocol import BatchFraming

    store, outside = tmp_path / "store", tmp_path / "outside"
    (store / "d").mkdir(parents=True)
    outside.mkdir()
    (store / "d" / "plain.uvh5").write_bytes(b"PLAIN")
    (outside / "secret").write_bytes(b"secret")
    (store / "d" / "out.uvh5").symlink_to(outside / "secret")
    (store / "d" / "in.uvh5").symlink_to(store / "d" / "plain.uvh5")
    db = Database(f"sqlite:///{tmp_path / 'a.sqlite'}")
    db.upgrade()
    try:
        catalogue = Catalogue(db)
        catalogue.sync_stores({"s": {"path": str(store)}})
        names = ["zen.plain.uvh5", "zen.out.uvh5", "zen.in.uvh5"]
        catalogue.register([FileSpec(name=n, size=5, checksums={"md5": "0" * 32})
                            for n in names], "s", ["d/plain.uvh5", "d/out.uvh5", "d/in.uvh5"])
        core = Core(version="test", site_name="site-a", catalogue=catalogue,
                    ingester=Ingester(catalogue), allowed_roots=[str(tmp_path)],
                    peers=PeerRegistry("site-a"))
        members = batch_paths(core.catalogue.db, names + ["zen.none.uvh5"])
        with MemberReader(members) as reader:
            frames, done = _read_members(reader, members, 0, BatchFraming(compact))
    finally:
        db.dispose()
    assert done == 4
    assert b"secret" not in frames
    assert frames.count(b"\x00\x00\x00\x05PLAIN" if compact else b"}PLAIN") == 2
    assert b"resolves outside the allowed roots" in frames
    assert b"no available instance" in frames
