"""``POST push``: small files sent with their announce, between two real sites on loopback.

As in ``test_transfer.py`` (whose ``Sites`` and ``send`` these use): two ``jupyter server``
processes, A sending and B receiving, A's jobs run in this process. Here A's peer ``site-b`` is
not throttled, so once B's ping has told a stream it takes pushes, every small file is pushed,
from the first (``FIRST_OFFERS`` of them alone first). What A's client sent is watched by
wrapping ``PeerClient.announce``, ``push`` and ``status`` in this process: a file B is never
told of by an announce is never pulled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import http.client
import http.server
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Text, cast, func, select

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import File, Instance
from hera_stage_ext import durability
from hera_stage_ext.transfer import durable, protocol
from hera_stage_ext.transfer.outgoing import remote_sites
from hera_stage_ext.transfer.peer_config import parse_peers
from hera_stage_ext.transfer.peer_sender import FIRST_OFFERS
from hera_stage_ext.transfer.peers import PeerRegistry, hash_secret
from hera_stage_ext.transfer.receiver import FLIP_ONCE_ENV, INCOMING_DIR, PAUSE_BEFORE_SYNC_ENV

from .test_transfer import (
    SECRET_AB, SECRET_BA, Sites, receiver_config, send, start_a, two_sites)

pytestmark = pytest.mark.timeout(180)


def _names(night: int, count: int) -> list[str]:
    return [f"zen.{night}.{10000 + i}.xx.HH.uvh5" for i in range(count)]


#: More than a stream's first push: the rest are pushed after it.
SMALL = _names(2457800, FIRST_OFFERS + 150)
LARGE = "zen.2457801.10000.xx.HH.uvh5"  # over PUSH_FILE_MAX: announced and pulled
DATASET = "zen.2457802.10000.xx.HH.uv"  # a directory data set: announced and pulled
FLIPPED = _names(2457803, FIRST_OFFERS + 20)
#: B flips a byte of this one the first time it receives it (a pushed one).
FLIP = FLIPPED[FIRST_OFFERS + 5]
OLD_RECEIVER = _names(2457804, FIRST_OFFERS + 20)
OLD_RECEIVER_PROXIED = _names(2457808, FIRST_OFFERS + 20)
OLD_SENDER = _names(2457805, FIRST_OFFERS + 20)
#: A job of small files only: every one pushed, none pulled or polled for.
ALL_PUSHED = _names(2457809, FIRST_OFFERS + 30)
KILLED = _names(2457806, FIRST_OFFERS + 20)
#: As KILLED, in a push synced file by file (partial files in the incoming folder).
KILLED_BY_FILE = _names(2457811, FIRST_OFFERS + 20)
#: Pushed to a receiver that answers every push 503 (it holds as many as it takes).
BUSY = _names(2457810, FIRST_OFFERS + 20)
#: Pushed to a path that B holds already, unregistered (a push killed after its renames):
#: the first with the bytes offered, the second with others.
TAKEN = _names(2457807, FIRST_OFFERS + 2)
#: What A's store holds: name -> (folder, size).
LAYOUT = {**{n: ("2457800", 1000 + 37 * i) for i, n in enumerate(SMALL)},
          LARGE: ("2457801", 1 << 20),
          **{n: ("2457803", 5000) for n in FLIPPED},
          **{n: ("2457804", 3000) for n in OLD_RECEIVER},
          **{n: ("2457808", 3000) for n in OLD_RECEIVER_PROXIED},
          **{n: ("2457805", 3000) for n in OLD_SENDER},
          **{n: ("2457809", 2500) for n in ALL_PUSHED},
          **{n: ("2457806", 6000) for n in KILLED},
          **{n: ("2457811", 6000) for n in KILLED_BY_FILE},
          **{n: ("2457810", 1500) for n in BUSY},
          **{n: ("2457807", 2000) for n in TAKEN}}


class _Watched:
    """The names A's client announced, pushed and asked the status of (the sender runs in this
    process)."""

    def __init__(self) -> None:
        self.announced: list[str] = []
        self.pushed: list[str] = []
        self.polled: list[str] = []
        self.lock = threading.Lock()


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[Sites]:
    tmp = tmp_path_factory.mktemp("push")
    rng = random.Random(19)
    a_store, b_store = tmp / "a" / "store", tmp / "b" / "store"
    b_store.mkdir(parents=True)
    paths = {}
    for name, (folder, size) in LAYOUT.items():
        path = a_store / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        paths[name] = f"{folder}/{name}"
    dataset = a_store / "2457802" / DATASET
    (dataset / "sub").mkdir(parents=True)
    (dataset / "vartable").write_bytes(rng.randbytes(3000))
    (dataset / "sub" / "visdata").write_bytes(rng.randbytes(9000))

    b_db_url = f"sqlite:///{tmp / 'b' / 'catalogue.sqlite'}"
    stack = contextlib.ExitStack()
    # ("site-b-throttled" and "site-b-old" are added below.)
    a, catalogue, a_config = start_a(
        tmp, a_store, {"site-b": {"url": "http://127.0.0.1:9/", "secret": SECRET_AB}},
        {"site-b": hash_secret(SECRET_BA)}, stack)
    specs = []
    for name, rel in paths.items():
        digest = ck.hash_file(a_store / rel)
        specs.append(FileSpec(name=name, size=digest.size, checksums=digest.checksums,
                              source="correlator", meta={"telescope": "HERA"}))
    tree = ck.hash_directory(dataset)
    specs.append(FileSpec(name=DATASET, size=tree.size, checksums=tree.checksums,
                          is_directory=True))
    catalogue.register(specs, "a-store", [*paths.values(), f"2457802/{DATASET}"])
    site = two_sites(tmp, a, a_store, b_store, catalogue, a_config,
                     receiver_config(b_db_url, b_store, a.url), stack)
    site.start_b("b-server", env={FLIP_ONCE_ENV: FLIP})
    try:
        yield site
    finally:
        site.close()


@pytest.fixture
def watched(monkeypatch) -> _Watched:
    seen = _Watched()
    announce, push = protocol.PeerClient.announce, protocol.PeerClient.push
    status = protocol.PeerClient.status

    def announcing(client: protocol.PeerClient, transfer: str, offers: Any) -> Any:
        with seen.lock:
            seen.announced += [o["name"] for o in offers]
        return announce(client, transfer, offers)

    def pushing(client: protocol.PeerClient, transfer: str, offers: Any, data: Any) -> Any:
        with seen.lock:
            seen.pushed += [o["name"] for o in offers]
        return push(client, transfer, offers, data)

    def polling(client: protocol.PeerClient, names: Any, *args: Any, **kwargs: Any) -> Any:
        with seen.lock:
            seen.polled += list(names)
        return status(client, names, *args, **kwargs)

    monkeypatch.setattr(protocol.PeerClient, "announce", announcing)
    monkeypatch.setattr(protocol.PeerClient, "push", pushing)
    monkeypatch.setattr(protocol.PeerClient, "status", polling)
    return seen


def _arrived_once(sites: Sites, names: list[str]) -> None:
    """Each of ``names`` at B: its bytes A's catalogue announced, at its path, registered once
    with one ``transfer-received`` event, its item committed after one attempt; A records B
    holds it."""
    with sites.b_db.read() as s:
        instances = dict(s.execute(select(File.name, func.count(Instance.id)).join(
            Instance, Instance.file_id == File.id).where(File.name.in_(names))
            .group_by(File.name)).all())
    assert instances == {n: 1 for n in names}
    items = sites.b_items()
    for name in names:
        folder = LAYOUT[name][0] if name in LAYOUT else "2457802"
        detail = sites.a_core.catalogue.file_detail(name)
        if name != DATASET:
            arrived = ck.hash_file(sites.b_store / folder / name)
            assert ck.compare(arrived.checksums, detail["checksums"])
        assert (items[name].state, items[name].path) == ("committed", f"{folder}/{name}")
        assert remote_sites(sites.a_core, name) == ["site-b"]
    for name in names[:3] + names[-3:]:
        events = [e for e in sites.b_file(name).json()["events"]
                  if e["type"] == "transfer-received"]
        assert len(events) == 1 and events[0]["payload"]["from"] == "site-a", events


def test_small_files_are_pushed_and_the_rest_announced_and_pulled(sites: Sites,
                                                                  watched: _Watched) -> None:
    names = [*SMALL, LARGE, DATASET]
    report = send(sites, names)
    assert report["counts"] == {"done": len(names)}, report
    assert report["job"]["state"] == "succeeded"
    # Every small file pushed from the stream's first claim on, never announced (so never
    # pulled); the large file and the data set announced.
    assert set(watched.pushed) == set(SMALL)
    assert len(watched.pushed) == len(set(watched.pushed))
    assert set(watched.announced) == {LARGE, DATASET}
    _arrived_once(sites, names)
    items = sites.b_items()
    assert {items[n].attempts for n in names} == {1}
    assert len({items[n].transfer for n in names}) == 1  # one transfer, as announced
    detail = sites.b_file(SMALL[-1]).json()
    assert (detail["source"], detail["metadata"]) == ("correlator", {"telescope": "HERA"})
    assert not list((sites.b_store / INCOMING_DIR).iterdir())
    log = Path(report["job"]["log_path"]).read_text()
    assert f"sent {SMALL[-1]} to site-b ({LAYOUT[SMALL[-1]][1]} bytes; verified and " \
           "registered there;" in log

    # Sent again: B holds each one; nothing moves (the pushed ones answered ``have``).
    again = send(sites, names)
    assert again["counts"] == {"skipped": len(names)}, again
    assert {sites.b_items()[n].attempts for n in names} == {1}
    _arrived_once(sites, names)


def test_a_member_damaged_on_the_way_is_answered_retry_then_pulled(
        sites: Sites, watched: _Watched) -> None:
    report = send(sites, FLIPPED)
    assert report["counts"] == {"done": len(FLIPPED)}, report
    assert FLIP in watched.pushed
    # Answered ``retry`` and announced: pulled then, its item's attempts counted by B.
    assert watched.announced.count(FLIP) == 1
    assert watched.announced == [FLIP]
    _arrived_once(sites, FLIPPED)
    assert "received 5000 bytes with checksums" in sites.b.log_tail(200_000)


def test_a_peer_this_site_throttles_is_never_pushed_to(sites: Sites,
                                                       watched: _Watched) -> None:
    """As an older sender (announce only): B answers it as before (its reply saying it takes
    pushes is ignored), pulling every file."""
    good = sites.a_core.peers.peers["site-b"]
    sites.a_core.peers.peers["site-b"] = replace(good, max_bytes_per_s=1 << 30)
    try:
        report = send(sites, OLD_SENDER)
    finally:
        sites.a_core.peers.peers["site-b"] = good
    assert report["counts"] == {"done": len(OLD_SENDER)}, report
    assert watched.pushed == [] and set(watched.announced) == set(OLD_SENDER)
    _arrived_once(sites, OLD_SENDER)


class _OldReceiver(http.server.BaseHTTPRequestHandler):
    """B as a receiver from before pushes: every call passed on to B, its ping and announce
    replies without ``push``; the paths asked for kept."""

    target = ""
    paths: list[str] = []
    #: False: its replies keep B's ``push`` (a proxy in front of a new receiver that passes on
    #: only the routes it knows).
    strip_push = True
    #: True: pushes passed on too (a plain proxy in front of B, to see what B is asked).
    knows_push = False
    #: Not 0: every push answered with this status (and a JSON message) instead.
    push_status = 0

    def _forward(self) -> None:
        self.paths.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.path.endswith("/push") and self.push_status:
            reply_body, status = b'{"message": "busy"}', self.push_status
        elif self.path.endswith("/push") and not self.knows_push:  # unknown to an older server
            reply_body, status = b'{"message": "Not Found"}', 404
        else:
            reply = requests.request(self.command, self.target + self.path.lstrip("/"),
                                     data=body, timeout=60, headers={
                                         k: v for k, v in self.headers.items()
                                         if k in ("Authorization", "Content-Type")})
            status, reply_body = reply.status_code, reply.content
            if self.path.endswith(("/announce", "/ping")) and reply.ok and self.strip_push:
                value = reply.json()
                value.pop("push", None)
                reply_body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply_body)))
        self.end_headers()
        self.wfile.write(reply_body)

    do_GET = do_POST = _forward  # noqa: N815 (http.server's names)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _proxied(sites: Sites, strip_push: bool, knows_push: bool, push_status: int = 0
             ) -> Iterator[list[str]]:
    """A's peer ``site-b`` reached through ``_OldReceiver`` meanwhile; the paths A asked B."""
    _OldReceiver.target, _OldReceiver.paths = sites.b.url, []
    _OldReceiver.strip_push, _OldReceiver.knows_push = strip_push, knows_push
    _OldReceiver.push_status = push_status
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    good = sites.a_core.peers.peers["site-b"]
    sites.a_core.peers.peers["site-b"] = replace(
        good, url=f"http://127.0.0.1:{server.server_port}/")
    try:
        yield _OldReceiver.paths
    finally:
        sites.a_core.peers.peers["site-b"] = good
        server.shutdown()
        server.server_close()


def test_a_job_of_small_files_is_all_pushed_no_pull_and_no_status_poll(
        sites: Sites, watched: _Watched) -> None:
    """From a stream's first claim on, every file of a job of small files is pushed: B is
    asked pings and pushes only, never an announce (so it pulls nothing) nor a status poll."""
    with _proxied(sites, strip_push=False, knows_push=True) as paths:
        report = send(sites, ALL_PUSHED)
    assert report["counts"] == {"done": len(ALL_PUSHED)}, report
    routes = [p.rsplit("/", 1)[1] for p in paths]
    assert routes[0] == "ping" and set(routes) == {"ping", "push"}, routes  # a ping a stream
    assert watched.pushed == ALL_PUSHED
    assert watched.announced == [] and watched.polled == []
    _arrived_once(sites, ALL_PUSHED)


def test_a_push_answered_5xx_is_announced_and_pushes_go_on(sites: Sites,
                                                          watched: _Watched) -> None:
    """A push answered 503 (a receiver holding as many pushes as it takes) or any 5xx fails
    none of its files: they are announced and pulled, and the next claim is pushed again."""
    with _proxied(sites, strip_push=False, knows_push=True, push_status=503) as paths:
        report = send(sites, BUSY)
    assert report["counts"] == {"done": len(BUSY)}, report
    assert set(watched.announced) == set(BUSY)
    assert len([p for p in paths if p.endswith("/push")]) >= 2, paths  # not given up
    _arrived_once(sites, BUSY)


@pytest.mark.parametrize("says_push", [False, True],
                         ids=["says nothing of pushes", "says so, its push route unknown"])
def test_an_older_receiver_is_never_pushed_to(sites: Sites, watched: _Watched,
                                              says_push: bool) -> None:
    """A receiver whose ping and announce replies say nothing of pushes never gets one; one
    whose push is answered 404 (a proxy that knows only the older routes) gets the files
    announced instead from the first claim's first push on, and no more pushes."""
    names = OLD_RECEIVER if not says_push else OLD_RECEIVER_PROXIED
    with _proxied(sites, strip_push=not says_push, knows_push=False):
        report = send(sites, names)
    assert report["counts"] == {"done": len(names)}, report
    assert set(watched.announced) == set(names)
    pushes = [p for p in _OldReceiver.paths if p.endswith("/push")]
    assert _OldReceiver.paths[0].endswith("/ping")  # asked before anything is sent
    if says_push:  # the first push tried, answered 404: then announced, never pushed again
        assert len(pushes) == 1 and set(watched.pushed) == set(names[:FIRST_OFFERS])
    else:
        assert pushes == [] and watched.pushed == []
    assert any(p.endswith("/announce") for p in _OldReceiver.paths)
    _arrived_once(sites, names)


def _offer(name: str, data: bytes, **changes: Any) -> dict[str, Any]:
    return {"name": name, "size": len(data), "path": f"2457900/{name}",
            "checksums": {"md5": ck.hex_digest(data, "md5")}, **changes}


def _push(sites: Sites, body: bytes, secret: str = SECRET_AB) -> requests.Response:
    return requests.post(sites.b.url + "hera-stage/peer/push", data=body, timeout=30,
                         headers={"Authorization": f"HeraPeer site-a:{secret}",
                                  "Content-Type": "application/octet-stream"})


def _nothing_stored(sites: Sites, names: list[str]) -> None:
    items = sites.b_items()
    assert not [n for n in names if n in items]
    for name in names:
        assert sites.b_file(name).status_code == 404
        assert not list(sites.b_store.rglob(name))


def test_a_hand_built_push_commits_verified_members_and_retries_a_damaged_one(
        sites: Sites) -> None:
    good, bad = _names(2457900, 2)
    data = {good: b"good bytes" * 50, bad: b"bad bytes" * 50}
    offers = [_offer(good, data[good]), _offer(bad, data[bad])]
    damaged = bytearray(data[bad])
    damaged[3] ^= 0x01
    reply = _push(sites, protocol.push_body("hand", offers, [data[good], bytes(damaged)]))
    assert reply.status_code == 200, reply.text
    answers = {f["name"]: f for f in reply.json()["files"]}
    assert answers[good]["answer"] == "committed"
    assert answers[bad]["answer"] == "retry" and "announced" in answers[bad]["message"]
    assert (sites.b_store / "2457900" / good).read_bytes() == data[good]
    item = sites.b_items()[good]
    assert (item.state, item.attempts, item.transfer) == ("committed", 1, "hand")
    _nothing_stored(sites, [bad])
    assert not list((sites.b_store / INCOMING_DIR).iterdir())

    # Pushed again: ``have`` for what B holds; the damaged one, sent whole, committed.
    again = _push(sites, protocol.push_body("hand2", offers, [data[good], data[bad]]))
    assert {f["name"]: f["answer"] for f in again.json()["files"]} == \
        {good: "have", bad: "committed"}
    assert sites.b_items()[good].transfer == "hand"  # not written again
    # An announce's reply says B takes pushes, and what.
    announce = requests.post(sites.b.url + "hera-stage/peer/announce", timeout=30,
                             json={"transfer": "t", "files": [offers[0]]},
                             headers={"Authorization": f"HeraPeer site-a:{SECRET_AB}"})
    assert announce.json()["push"] == {"max_file": protocol.PUSH_FILE_MAX,
                                       "max_bytes": protocol.PUSH_MAX_BYTES,
                                       "max_files": protocol.PUSH_MAX_FILES}
    assert announce.json()["files"][0]["answer"] == "have"


def test_malformed_pushes_get_a_4xx_json_error_and_store_nothing(sites: Sites) -> None:
    names = _names(2457901, 3)
    data = [f"bytes of {n}".encode() * 20 for n in names]
    offers = [_offer(n, d) for n, d in zip(names, data)]
    head = json.dumps({"transfer": "bad", "files": offers}).encode()
    whole = b"".join(data)
    bodies = {
        "short data": b"%d\n" % len(head) + head + whole[:-1],
        "extra data": b"%d\n" % len(head) + head + whole + b"x",
        "no length line": head + whole,
        "a length that is no number": b"12a\n" + head + whole,
        "a length past the body": b"%d\n" % (len(head) + len(whole) + 10) + head + whole,
        "a head that is no JSON": b"5\nnope!" + whole,
        "a head that is a list": b"2\n[]",
        "too many offers": protocol.push_body(
            "bad", [_offer(f"zen.2457902.{10000 + i}.xx.HH.uvh5", b"x")
                    for i in range(protocol.PUSH_MAX_FILES + 1)],
            [b"x"] * (protocol.PUSH_MAX_FILES + 1)),
        "a file over the limit": protocol.push_body(
            "bad", [_offer(names[0], b"y" * (protocol.PUSH_FILE_MAX + 1))],
            [b"y" * (protocol.PUSH_FILE_MAX + 1)]),
        "a directory": protocol.push_body(
            "bad", [_offer(names[0], data[0], is_directory=True)], [data[0]]),
        "a malformed offer": protocol.push_body(
            "bad", [_offer(names[0], data[0], path="../outside")], [data[0]]),
        "an empty body": b"",
    }
    for what, body in bodies.items():
        reply = _push(sites, body)
        assert reply.status_code == 400, (what, reply.status_code, reply.text)
        assert reply.json()["message"], what
    _nothing_stored(sites, names)

    # Oversize: refused from its Content-Length alone, before the body is sent.
    def headers_only(headers: dict[str, str]) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", int(sites.b.url.split(":")[2]
                                                                 .rstrip("/")), timeout=30)
        try:
            connection.putrequest("POST", "/hera-stage/peer/push")
            for key, value in headers.items():
                connection.putheader(key, value)
            connection.endheaders()
            if headers.get("Transfer-Encoding") == "chunked":
                connection.send(b"5\r\nhello\r\n0\r\n\r\n")
            reply = connection.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            connection.close()

    auth = {"Authorization": f"HeraPeer site-a:{SECRET_AB}"}
    status, body = headers_only({**auth, "Content-Length": str(protocol.PUSH_MAX_BYTES + 1)})
    assert status == 413 and str(protocol.PUSH_MAX_BYTES) in body["message"]
    status, body = headers_only({**auth, "Transfer-Encoding": "chunked"})
    assert status == 411 and "Content-Length" in body["message"]
    # A wrong secret: 401 before the body is read, nothing stored.
    status, body = headers_only({"Authorization": "HeraPeer site-a:" + "w" * 40,
                                 "Content-Length": str(protocol.PUSH_MAX_BYTES + 1)})
    assert status == 401
    good = protocol.push_body("bad", offers, data)
    assert _push(sites, good, secret="w" * 40).status_code == 401
    assert requests.post(sites.b.url + "hera-stage/peer/push", data=good,
                         timeout=30).status_code == 401
    _nothing_stored(sites, names)


def test_a_receiver_holds_a_bounded_number_of_pushes_and_refuses_a_bad_length(
        sites: Sites) -> None:
    """Pushes whose bodies are still on their way each hold a place: one more than
    ``PUSH_MAX_HELD`` is answered 503 (JSON) before its body is read, and the places come back
    when their connections end. A Content-Length that is no ASCII number is a 411, not a 500."""
    from hera_stage_ext.api.peer import PUSH_MAX_HELD

    port = int(sites.b.url.split(":")[2].rstrip("/"))
    auth = f"HeraPeer site-a:{SECRET_AB}"

    def started(length: str) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/hera-stage/peer/push")
        connection.putheader("Authorization", auth)
        connection.putheader("Content-Length", length)
        connection.endheaders()
        return connection

    for length in ("\u00b2", "1" * 20):
        connection = started(length)
        try:
            reply = connection.getresponse()
            assert reply.status == 411 and "Content-Length" in json.loads(reply.read())["message"]
        finally:
            connection.close()
    stalled = [started("1000") for _ in range(PUSH_MAX_HELD)]
    try:
        for connection in stalled:
            connection.send(b"1")  # a body begun, never ended
        time.sleep(0.5)
        extra = started("1000")
        try:
            reply = extra.getresponse()
            assert reply.status == 503 and "announce" in json.loads(reply.read())["message"]
        finally:
            extra.close()
    finally:
        for connection in stalled:
            connection.close()
    names = _names(2457903, 2)
    data = [f"bytes of {n}".encode() for n in names]
    deadline = time.monotonic() + 10
    while True:  # the places come back as the stalled connections are seen closed
        reply = _push(sites, protocol.push_body("held", [_offer(n, d) for n, d in
                                                         zip(names, data)], data))
        if reply.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reply.status_code == 200, reply.text
    assert [f["answer"] for f in reply.json()["files"]] == [protocol.COMMITTED] * 2


def test_a_push_whose_client_left_holds_its_place_until_it_is_through(sites: Sites) -> None:
    """A push's place is held while the receiver works on its body, even once its client has
    gone (a sender that timed out and sends it again): the receiver never holds more than
    ``PUSH_MAX_HELD`` bodies at once."""
    from hera_stage_ext.api.peer import PUSH_MAX_HELD

    paused = sites.tmp / "paused-held"
    sites.kill_b()
    sites.start_b("b-server-held", env={PAUSE_BEFORE_SYNC_ENV: str(paused), FLIP_ONCE_ENV: ""})
    port = int(sites.b.url.split(":")[2].rstrip("/"))

    def started(length: int) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/hera-stage/peer/push")
        connection.putheader("Authorization", f"HeraPeer site-a:{SECRET_AB}")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        return connection

    names = _names(2457990, 2)
    data = [f"bytes of {n}".encode() for n in names]
    body = protocol.push_body("gone", [_offer(n, d) for n, d in zip(names, data)], data)
    first = started(len(body))
    stalled: list[http.client.HTTPConnection] = []
    try:
        first.send(body)
        deadline = time.monotonic() + 30
        while not (paused.exists() and paused.read_text()):
            assert time.monotonic() < deadline, "the push never reached its sync"
            time.sleep(0.05)
        first.close()  # gone while the receiver holds its body (paused before its sync)
        time.sleep(0.5)
        stalled = [started(1000) for _ in range(PUSH_MAX_HELD - 1)]
        for connection in stalled:
            connection.send(b"1")
        time.sleep(0.5)
        extra = started(1000)
        try:
            reply = extra.getresponse()
            assert reply.status == 503, reply.status
        finally:
            extra.close()
    finally:
        for connection in stalled:
            connection.close()
        first.close()
        sites.kill_b()
        sites.start_b("b-server-after-held")


@pytest.mark.parametrize("way", ["whole", "file-by-file"])
def test_a_receiver_killed_during_a_push_leaves_nothing_under_a_final_name(
        sites: Sites, watched: _Watched, way: str) -> None:
    """B killed once a push's members are written and before their sync: none of them under
    its final name or registered; the sender sends the push again whole when B is back, and
    each file arrives verified and registered once. Either way of syncing a push: one
    ``syncfs`` (its files written nameless in their folder) or file by file (partial files
    in the incoming folder)."""
    names, folder_name = (KILLED, "2457806") if way == "whole" else \
        (KILLED_BY_FILE, "2457811")
    if way == "whole":
        store = os.open(sites.b_store, os.O_RDONLY)
        try:
            if not durability.SYNCFS_REPORTS_ERRORS or \
                    durability.file_system_type(store) not in durability.SYNCFS_TYPES:
                pytest.skip("the store's file system is synced file by file")
        finally:
            os.close(store)
    first = names[:FIRST_OFFERS]
    assert send(sites, first)["counts"] == {"done": len(first)}  # B holds these then
    paused = sites.tmp / f"paused-in-push-{way}"
    sites.kill_b()
    unwritten = 0 if way == "whole" else durable.QUIET_BYTES + 1
    sites.start_b(f"b-server-paused-{way}", env={PAUSE_BEFORE_SYNC_ENV: str(paused),
                                                 FLIP_ONCE_ENV: "",
                                                 durable.UNWRITTEN_ENV: str(unwritten)})
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(send(sites, names)))
    thread.start()
    deadline = time.monotonic() + 60
    while not (paused.exists() and paused.read_text()):
        assert time.monotonic() < deadline, "the push never reached its sync"
        time.sleep(0.02)
    pushed = names[FIRST_OFFERS:]  # (the first pushed again, answered ``have``)
    assert set(watched.pushed) == set(names)
    incoming = sites.b_store / INCOMING_DIR
    folder = sites.b_store / folder_name
    if way == "whole":
        # All written, nameless in their folder (held open by B until linked), none named.
        assert len(_nameless_held(sites.b.pid, folder)) == len(pushed)
        assert not list(incoming.iterdir())
    else:
        assert len(list(incoming.glob("*.part"))) == len(pushed)  # all written
    sites.kill_b()
    assert not [n for n in pushed if (folder / n).exists()]
    assert not [n for n in pushed if n in sites.b_items()]
    sites.start_b(f"b-server-after-push-{way}")
    thread.join(120)
    assert not thread.is_alive()
    assert result["counts"] == {"skipped": len(first), "done": len(pushed)}, result
    _arrived_once(sites, names)
    assert not list(incoming.iterdir())
    assert set(os.listdir(folder)) == set(names)


def _nameless_held(pid: int, folder: Path) -> list[str]:
    """The files without a name (``O_TMPFILE``) in ``folder`` that process ``pid`` holds open
    (the kernel shows each as ``<folder>/#<inode> (deleted)``)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(f"{folder}/#") and target.endswith(" (deleted)"):
                held.append(target)
    return held


def test_a_pushed_file_whose_final_name_is_taken_is_registered_only_if_it_is_the_same(
        sites: Sites, watched: _Watched) -> None:
    """What a push killed after its renames leaves: the file under its final name, not
    registered. The next push of it finds the name taken and answers ``send``: the receiver
    registers what is there if it is exactly what was offered, and never overwrites it."""
    same, other = TAKEN[FIRST_OFFERS:]
    folder = sites.b_store / "2457807"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / same).write_bytes((sites.a_store / "2457807" / same).read_bytes())
    (folder / other).write_bytes(b"other bytes")
    report = send(sites, TAKEN)
    assert set(watched.pushed) == set(TAKEN)  # (every one, from the first claim on)
    assert report["items"][same][0] == "done"
    assert report["items"][other][0] == "failed"
    assert "already holds other content" in report["items"][other][1]
    assert report["counts"] == {"done": len(TAKEN) - 1, "failed": 1}, report
    _arrived_once(sites, TAKEN[:-1])
    assert (folder / other).read_bytes() == b"other bytes"
    assert sites.b_file(other).status_code == 404


def test_pushed_items_are_recorded_once_committed_on_both_databases(database: Database
                                                                     ) -> None:
    """A push's items (``ItemRows.put_committed``): a new name inserted, a known one (an
    earlier transfer of it, failed) updated, each committed after one attempt, with what the
    ORM reads as its own."""
    from hera_stage_ext.transfer.item_rows import ItemRow, ItemRows
    from hera_stage_ext.transfer.models import TransferItem

    now = dt.datetime(2026, 12, 7, 9, 15, 0, 654321)
    new, known = "zen.2457910.10000.xx.HH.uvh5", "zen.2457910.10001.xx.HH.uvh5"
    spec = {"is_directory": False, "obsid": None, "create_time": None, "source": "s",
            "meta": {"k": "\u00e9"}, "observation": None}
    earlier = now - dt.timedelta(days=1)
    with database.write() as s:
        rows = ItemRows(s)
        rows.insert([("old", "there", known, "x/old", 3, json.dumps({"md5": "1" * 32}),
                      json.dumps({}), "failed", 5, 0, "it broke", rows.time(earlier),
                      rows.time(earlier))])
        (known_id,) = rows.ids("there", [known]).values()
    with database.write() as s:
        ItemRows(s).put_committed([
            ItemRow(-1, "there", name, "pushed", f"d/{name}", 4096, {"md5": "0" * 32}, 1,
                    spec) for name in (new, known)], now)
    with database.read() as s:
        items = {i.name: i for i in s.scalars(select(TransferItem))}
        s.expunge_all()
        # Stored as SQLAlchemy stores JSON: ``json.dumps``' text (SQLite keeps it as it is).
        texts = s.execute(select(TransferItem.name, cast(TransferItem.spec, Text),
                                 cast(TransferItem.checksums, Text))).all()
    assert len(items) == 2
    # The known row is updated in place (its id and creation time kept), the new one added.
    assert (items[known].id, items[known].created_at) == (known_id, earlier)
    assert items[new].id > known_id and items[new].created_at == now
    if database.backend == "sqlite":
        assert sorted(texts) == sorted((name, json.dumps(spec), json.dumps({"md5": "0" * 32}))
                                       for name in (new, known))
    for name in (new, known):
        item = items[name]
        assert (item.state, item.attempts, item.error, item.transfer, item.path, item.size,
                item.checksums, item.spec, item.peer, item.updated_at) == (
            "committed", 1, "", "pushed", f"d/{name}", 4096, {"md5": "0" * 32}, spec,
            "there", now)


def test_a_sender_pushes_only_within_what_the_peer_said_and_its_own_limits() -> None:
    """What a sender takes from an announce reply: no push without a well-formed ``push``
    (an older receiver, or one not understood), and never more than this version's own
    limits (a push is held in the sender's memory), whatever a peer says."""
    said = {"max_file": 1 << 40, "max_bytes": 1000, "max_files": 7}
    assert protocol.PushLimits.of({"push": said}) == (protocol.PUSH_FILE_MAX, 1000, 7)
    assert protocol.PushLimits.of({"push": protocol.push_capability()}) == \
        tuple(protocol.push_capability().values())
    for reply in ({}, {"push": None}, {"push": {**said, "max_file": True}},
                  {"push": {**said, "max_files": 0}}, {"push": {"max_file": 1}}):
        assert protocol.PushLimits.of(reply) is None, reply


def test_two_receivers_of_one_store_never_share_a_pushed_partial_file(tmp_path: Path) -> None:
    """Two servers receiving into one store (replicas) take a push each at once. Even when
    both would name their partial files alike (forced here: each starts its names at a random
    point), the second cannot take over the first's file: it is created only if new, so that
    member is answered ``retry``, and the first file lands with its own bytes under its name."""
    import itertools

    from hera_stage_ext.transfer.receiver import Receiver

    store = tmp_path / "store"
    store.mkdir()
    db = Database(f"sqlite:///{tmp_path / 'b.sqlite'}")
    db.upgrade()
    peers = parse_peers({"site-a": {"url": "http://127.0.0.1:9/", "secret": "x" * 40}})
    receivers = []
    for _ in range(2):
        receiver = Receiver(Catalogue(db), PeerRegistry("site-b", peers), "s")
        receiver.catalogue.sync_stores({"s": {"path": str(store)}})
        receiver._push_ids = itertools.count(-7, -1)  # the same names in both
        # Partial files are what a push uses where its files cannot be written nameless
        # (``_in_place``: a store without O_TMPFILE); nameless ones have no name to share.
        receiver._in_place = False
        receivers.append(receiver)
    first, second = receivers
    names = _names(2459000, 2)
    data = [os.urandom(5000), os.urandom(5000)]
    paused, go = threading.Event(), threading.Event()
    make_final = first._make_final

    def slow(*args: Any, **kwargs: Any) -> Any:  # the first one's sync takes a while
        paused.set()
        go.wait(10)
        return make_final(*args, **kwargs)

    first._make_final = slow  # type: ignore[method-assign]
    replies: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: replies.setdefault("first", first.push(
        "site-a", protocol.push_body("t1", [_offer(names[0], data[0])], [data[0]]))))
    thread.start()
    try:
        assert paused.wait(10)
        replies["second"] = second.push(
            "site-a", protocol.push_body("t2", [_offer(names[1], data[1])], [data[1]]))
    finally:
        go.set()
        thread.join(10)
    assert [f["answer"] for f in replies["first"]["files"]] == [protocol.COMMITTED]
    assert [f["answer"] for f in replies["second"]["files"]] == [protocol.RETRY]
    assert (store / _offer(names[0], data[0])["path"]).read_bytes() == data[0]
    assert not (store / _offer(names[1], data[1])["path"]).exists()
    assert os.listdir(store / INCOMING_DIR) == []
    for receiver in receivers:
        receiver.close()
    db.dispose()


def test_pushed_files_take_partial_files_where_they_cannot_be_written_nameless(
        tmp_path: Path, monkeypatch) -> None:
    """Where the store's file system refuses nameless files (``O_TMPFILE``), or the receiver
    holds as many open as it may, a push's files go through partial files in the incoming
    folder instead: each committed with its own bytes under its name, nothing left behind,
    and no nameless file held after the push."""
    from hera_stage_ext.transfer import receiver as receiving
    from hera_stage_ext.transfer.receiver import Receiver

    store = tmp_path / "store"
    store.mkdir()
    fd = os.open(store, os.O_RDONLY)
    try:
        if not durability.syncfs_is_durable(fd):
            pytest.skip("the store's file system is synced file by file (no nameless files)")
    finally:
        os.close(fd)
    # Pushes synced whole (the way that writes nameless files), whatever else the machine
    # holds unwritten.
    monkeypatch.setenv(durable.UNWRITTEN_ENV, "0")
    db = Database(f"sqlite:///{tmp_path / 'b.sqlite'}")
    db.upgrade()
    peers = parse_peers({"site-a": {"url": "http://127.0.0.1:9/", "secret": "x" * 40}})
    receiver = Receiver(Catalogue(db), PeerRegistry("site-b", peers), "s")
    receiver.catalogue.sync_stores({"s": {"path": str(store)}})
    names = _names(2459100, 6)
    data = [os.urandom(3000 + i) for i in range(6)]
    offers = [_offer(name, d) for name, d in zip(names, data)]
    try:
        # One nameless file at a time: the rest of the push goes through partial files.
        receiver._syncer._places = 1
        reply = receiver.push("site-a", protocol.push_body("t1", offers[:3], data[:3]))
        assert [f["answer"] for f in reply["files"]] == [protocol.COMMITTED] * 3
        assert receiver._syncer.hold()  # given back
        receiver._syncer.let_go()
        opened = os.open

        def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            return opened(path, flags, *args, **kwargs)

        monkeypatch.setattr(receiving.os, "open", no_tmpfile)
        reply = receiver.push("site-a", protocol.push_body("t2", offers[3:], data[3:]))
        assert [f["answer"] for f in reply["files"]] == [protocol.COMMITTED] * 3
        assert receiver._in_place is False
    finally:
        receiver.close()
    for offer, d in zip(offers, data):
        assert (store / offer["path"]).read_bytes() == d
    assert os.listdir(store / INCOMING_DIR) == []
    db.dispose()


def test_a_partial_file_whose_write_fails_is_removed(tmp_path: Path, monkeypatch) -> None:
    """A member whose write fails (a full disk) leaves no partial file holding space: a pushed
    one's name is never used again."""
    from hera_stage_ext.transfer import receiver

    def full(fd: int, data: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(receiver, "write_all", full)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match="No space"):
            receiver._write_new(folder, "-5.part", b"data", exclusive=True)
        assert os.listdir(tmp_path) == []
    finally:
        os.close(folder)


def test_a_clashing_file_is_removed_through_its_folder_never_through_a_link(
        tmp_path: Path) -> None:
    """A received file whose registration clashed is removed from the store; a folder on its
    path swapped for a link meanwhile removes nothing elsewhere."""
    from hera_stage_ext.transfer.receiver import Receiver

    store, outside = tmp_path / "store", tmp_path / "outside"
    (store / "night").mkdir(parents=True)
    outside.mkdir()
    (store / "night" / "f.uvh5").write_bytes(b"x")
    (outside / "g.uvh5").write_bytes(b"keep")
    (store / "swapped").symlink_to(outside)
    db = Database(f"sqlite:///{tmp_path / 'b.sqlite'}")
    db.upgrade()
    receiver = Receiver(Catalogue(db), PeerRegistry("site-b", {}), "s")
    receiver.catalogue.sync_stores({"s": {"path": str(store)}})
    try:
        receiver._remove_final("night/f.uvh5")
        receiver._remove_final("swapped/g.uvh5")
        assert not (store / "night" / "f.uvh5").exists()
        assert (outside / "g.uvh5").read_bytes() == b"keep"
    finally:
        receiver.close()
        db.dispose()
