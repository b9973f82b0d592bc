"""Transfers to rclone peers: real ``rclone serve`` remotes on loopback (SFTP and WebDAV).

Site A is the demo archive (MIRIAD data set included). Two rclone servers, each with a password:
SFTP (the backend has MD5: verification compares rclone's remote hashes) with its obscured
password in an rclone.conf, and WebDAV (no hashes: verification streams each object back) with
its obscured password passed only through the peer's ``env``. Transfer jobs run in this process
(``run_pending``, the worker's code); the last test goes through REST and the server's own worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, update

from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.catalogue.models import Event, File, Instance, Store
from hera_stage_ext.demo import MIRIAD_NAME, ingest_demo_archive, make_demo_archive
from hera_stage_ext.jobs import EngineConfig, cancel_job, get_job, read_log, run_pending
from hera_stage_ext.jobs.models import JobItem
from hera_stage_ext.transfer.transfer_kind import create_transfer_job
from hera_stage_ext.transfer.models import RemoteInstance
from hera_stage_ext.transfer.peer_config import parse_peers
from hera_stage_ext.transfer.peers import PeerRegistry
from hera_stage_ext.transfer.rclone_send import PARTIAL_PREFIX, job_folders
from hera_stage_ext.transfer.outgoing import list_peers
from hera_stage_ext.standard_kinds import standard_kinds

from .jupyter_process import free_port, jupyter_process

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone")]

SFTP_PASSWORD = "sftp-pw-Zq81-not-in-any-log"
DAV_PASSWORD = "dav-pw-Kx52-not-in-any-log"


@dataclass
class Site:
    tmp: Path
    db: Database
    store: Path  # the "onsite" store's root
    sftp_root: Path
    dav_root: Path
    peers: dict[str, Any]
    registry: PeerRegistry
    secrets: list[str]  # the passwords and their obscured forms

    def path_of(self, name: str) -> str:
        with self.db.read() as s:
            return s.scalar(select(Instance.path).join(Instance.file).join(Instance.store).where(
                File.name == name, Store.name == "onsite"))

    def names(self, n: int, night: str) -> list[str]:
        with self.db.read() as s:
            return list(s.scalars(select(File.name).where(
                File.name.like(f"zen.{night}.%uvh5")).order_by(File.name).limit(n)))

    def send(self, names: list[str], peer: str) -> dict[str, Any]:
        """A transfer job run to its end here: the job, items' (state, error), state counts."""
        job = self.job(names, peer)
        self.run()
        return self.result(job["id"])

    def job(self, names: list[str], peer: str) -> dict[str, Any]:
        return create_transfer_job(self.db, "tester", names, self.registry, peer,
                                   log_dir=str(self.tmp / "logs"))

    def run(self) -> None:
        """The pending jobs, run to their end by the worker's code in this process."""
        run_pending(self.db, EngineConfig(kinds=standard_kinds(), peers=self.registry, fsync=False,
                                          heartbeat_seconds=0.2))

    def result(self, job_id: int) -> dict[str, Any]:
        with self.db.read() as s:
            items = {i.name: (i.state, i.error) for i in s.scalars(
                select(JobItem).where(JobItem.job_id == job_id))}
        counts: dict[str, int] = {}
        for state, _ in items.values():
            counts[state] = counts.get(state, 0) + 1
        job = get_job(self.db, job_id)
        return {"job": job, "items": items, "counts": counts, "log": read_log(job)[0]}


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "rclone serve exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"rclone serve on port {port}")


def _obscure(password: str) -> str:
    return subprocess.run(["rclone", "obscure", password], check=True, capture_output=True,
                          text=True).stdout.strip()


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("rclone")
    archive = make_demo_archive(tmp / "a", files_per_night=3)
    ingest_demo_archive(archive)
    sftp_root, dav_root = tmp / "sftp-root", tmp / "dav-root"
    sftp_root.mkdir()
    dav_root.mkdir()
    sftp_port, dav_port, down_port = free_port(), free_port(), free_port()
    obscured_sftp, obscured_dav = _obscure(SFTP_PASSWORD), _obscure(DAV_PASSWORD)
    config = tmp / "rclone.conf"
    config.write_text(
        f"[sf]\ntype = sftp\nhost = 127.0.0.1\nport = {sftp_port}\nuser = hera\n"
        f"pass = {obscured_sftp}\n\n"
        f"[dav]\ntype = webdav\nurl = http://127.0.0.1:{dav_port}/\nvendor = other\n"
        "user = hera\n\n"  # its password comes from the peer's env only
        f"[down]\ntype = sftp\nhost = 127.0.0.1\nport = {down_port}\nuser = hera\n"
        f"pass = {obscured_sftp}\n")
    servers = []
    try:
        for kind, root, port, password in (("sftp", sftp_root, sftp_port, SFTP_PASSWORD),
                                           ("webdav", dav_root, dav_port, DAV_PASSWORD)):
            proc = subprocess.Popen(
                ["rclone", "serve", kind, str(root), "--addr", f"127.0.0.1:{port}",
                 "--user", "hera", "--pass", password, "--cache-dir", str(tmp / "cache"),
                 # The tests change the roots behind the servers' backs: no stale listings.
                 "--dir-cache-time", "0s"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp)})
            servers.append(proc)
            _wait_port(port, proc)
        peers = {
            "karoo-sftp": {"type": "rclone", "remote": "sf:archive", "config": str(config)},
            "karoo-sftp-2": {"type": "rclone", "remote": "sf:second", "config": str(config)},
            "karoo-dav": {"type": "rclone", "remote": "dav:archive", "config": str(config),
                          "env": {"RCLONE_CONFIG_DAV_PASS": obscured_dav}},
            "karoo-down": {"type": "rclone", "remote": "down:archive", "config": str(config),
                           "retry_max_s": 1, "timeout_s": 2},
        }
        db = Database(archive.db_url)
        yield Site(tmp, db, Path(archive.stores["onsite"]["path"]), sftp_root, dav_root, peers,
                   PeerRegistry("site-a", parse_peers(peers)),
                   [SFTP_PASSWORD, DAV_PASSWORD, obscured_sftp, obscured_dav])
        db.dispose()
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)


def _same_content(source: Path, copy: Path) -> bool:
    if source.is_dir():
        members = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
        there = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
        return members == there and all(
            (source / m).read_bytes() == (copy / m).read_bytes() for m in members)
    return copy.is_file() and source.read_bytes() == copy.read_bytes()


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{PARTIAL_PREFIX}*")]


def _remote_count(site: Site, peer: str) -> int:
    with site.db.read() as s:
        return s.scalar(select(func.count()).select_from(RemoteInstance).where(
            RemoteInstance.site == peer)) or 0


@pytest.mark.parametrize("peer", ["karoo-sftp", "karoo-dav"])
def test_files_and_a_data_set_arrive_verified_and_a_rerun_sends_nothing(site: Site,
                                                                         peer: str) -> None:
    root = site.sftp_root if peer == "karoo-sftp" else site.dav_root
    names = [*site.names(6, "2457644"), MIRIAD_NAME]
    result = site.send(names, peer)
    assert result["counts"] == {"done": len(names)}, result["items"]
    assert result["job"]["state"] == "succeeded"
    for name in names:
        rel = site.path_of(name)
        assert _same_content(site.store / rel, root / "archive" / rel), name
    assert not _partials(root)
    assert _remote_count(site, peer) == len(names)
    with site.db.read() as s:
        events = s.scalar(select(func.count()).select_from(Event).where(
            Event.type == "transfer-sent", Event.payload["to"].as_string() == peer))
    assert events == len(names)
    assert "checksum verified at the remote" in result["log"]

    again = site.send(names, peer)
    assert again["counts"] == {"skipped": len(names)}, again["items"]
    assert "already holds it (same checksum)" in again["log"]
    assert _remote_count(site, peer) == len(names)


def test_a_corrupted_remote_object_is_a_conflict_and_not_overwritten(site: Site) -> None:
    name = site.names(1, "2457645")[0]
    rel = site.path_of(name)
    assert site.send([name], "karoo-sftp")["counts"] == {"done": 1}
    remote = site.sftp_root / "archive" / rel
    corrupted = bytearray(remote.read_bytes())
    corrupted[100] ^= 0xFF  # same size: only the checksum tells
    remote.write_bytes(bytes(corrupted))
    with site.db.write() as s:  # forget the record: the job looks at the remote again
        s.execute(RemoteInstance.__table__.delete().where(RemoteInstance.site == "karoo-sftp"))
    result = site.send([name], "karoo-sftp")
    state, error = result["items"][name]
    assert state == "failed" and "conflict" in error and "md5" in error, error
    assert remote.read_bytes() == bytes(corrupted)


def test_a_different_object_under_the_name_is_never_overwritten(site: Site) -> None:
    names = site.names(2, "2457646")
    rel = site.path_of(names[0])
    squatter = site.dav_root / "archive" / rel
    squatter.parent.mkdir(parents=True, exist_ok=True)
    squatter.write_bytes(b"someone else's file")
    result = site.send(names, "karoo-dav")
    state, error = result["items"][names[0]]
    assert state == "failed" and "conflict" in error and "not overwritten" in error
    assert squatter.read_bytes() == b"someone else's file"
    assert result["items"][names[1]] == ("done", "")
    assert result["job"]["state"] == "failed"


@pytest.mark.parametrize("peer", ["karoo-sftp", "karoo-dav"])
def test_bytes_that_differ_from_the_catalogue_fail_verification_and_are_removed(
        site: Site, peer: str) -> None:
    name = site.names(3, "2457647")[0 if peer == "karoo-sftp" else 1]
    rel = site.path_of(name)
    source = site.store / rel
    original = source.read_bytes()
    changed = bytearray(original)
    changed[7] ^= 0x01  # rclone copies these bytes faithfully; the catalogue knows better
    source.write_bytes(bytes(changed))
    try:
        result = site.send([name], peer)
    finally:
        source.write_bytes(original)
    state, error = result["items"][name]
    assert state == "failed" and "verification failed" in error and "removed" in error, error
    root = site.sftp_root if peer == "karoo-sftp" else site.dav_root
    assert not (root / "archive" / rel).exists()
    assert not _partials(root)
    # The source repaired, a retry sends it.
    assert site.send([name], peer)["counts"] == {"done": 1}


def test_copies_left_by_a_dead_worker_are_removed(site: Site) -> None:
    rel = site.path_of(MIRIAD_NAME)
    job = site.job([MIRIAD_NAME], "karoo-sftp-2")
    # What a worker killed mid-copy leaves: its batch's hidden folder, with part of the data
    # set (and a stray member, which verification would refuse).
    left = site.sftp_root / "second" / f"{job_folders('site-a', job['id'])}deadbeef-00000000"
    (left / rel).mkdir(parents=True)
    (left / rel / "visdata").write_bytes(b"half of it")
    (left / rel / "stray").write_bytes(b"not a member")
    # Another site's batch in flight to the same remote, for its own job of the same id.
    theirs = site.sftp_root / "second" / f"{job_folders('site-z', job['id'])}0be51de0-1234abcd"
    (theirs / "2457646").mkdir(parents=True)
    (theirs / "2457646" / "their-file").write_bytes(b"another site's batch")
    with site.db.write() as s:  # that worker had claimed the item
        s.execute(update(JobItem).where(JobItem.job_id == job["id"]).values(attempts=1))
    site.run()
    result = site.result(job["id"])
    assert result["items"][MIRIAD_NAME] == ("done", "")
    assert f"removed {left.name}" in result["log"]
    assert _same_content(site.store / rel, site.sftp_root / "second" / rel)
    assert _partials(site.sftp_root) == [theirs]  # ours gone, the other site's left alone
    shutil.rmtree(theirs)


def test_files_gone_from_the_hidden_folder_but_not_at_their_names_are_not_sent(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hidden folder removed under the move (by hand, a lifecycle rule): nothing is at the
    final names, so nothing counts as sent or is recorded."""
    names = _new_night(site, "2457810", 3)
    root = site.sftp_root / "archive"
    _wrap_rclone(tmp_path, monkeypatch, f'*" move "*) rm -rf {root}/{PARTIAL_PREFIX}*;;')
    result = site.send(names, "karoo-sftp")
    assert result["counts"] == {"failed": 3}, result["items"]
    for name in names:
        assert "not there after the rename" in result["items"][name][1]
        assert not (root / site.path_of(name)).exists()
    with site.db.read() as s:
        assert s.scalar(select(func.count()).select_from(RemoteInstance).join(
            File, RemoteInstance.file_id == File.id).where(File.name.in_(names))) == 0


def _new_night(site: Site, night: str, n: int) -> list[str]:
    """``n`` new files of 4 KiB in a night folder of the store, registered; their names."""
    folder = site.store / night
    folder.mkdir()
    for i in range(n):
        (folder / f"zen.{night}.{i:05d}.xx.HH.uvh5").write_bytes(os.urandom(4096))
    Ingester(Catalogue(site.db), source="test").ingest("onsite", [f"{night}/*"])
    return site.names(n, night)


def _wrap_rclone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cases: str = "") -> Path:
    """A wrapper ahead of the real rclone (``$REAL``) on PATH: it logs every run's arguments
    (to the file it returns), then runs the shell ``case`` arms ``cases`` on them, then rclone."""
    log = tmp_path / "runs.log"
    log.touch()
    wrapper = tmp_path / "bin" / "rclone"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nREAL={shutil.which("rclone")}\necho "$*" >> {log}\n'
                       f'case " $* " in\n{cases}\nesac\nexec "$REAL" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.fixture
def rclone_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """A function returning the subcommands of the rclone runs since it was last called."""
    log = _wrap_rclone(tmp_path, monkeypatch)

    def runs() -> list[str]:
        lines = log.read_text().splitlines()
        log.write_text("")
        # The subcommand: the first word after rclone's global flags (--name value pairs).
        return [next(w for i, w in enumerate(words) if not w.startswith("-") and
                     not words[i - 1].startswith("-")) for words in map(str.split, lines)]
    return runs


@pytest.mark.parametrize("peer", ["karoo-sftp", "karoo-dav"])
def test_a_batch_skips_what_is_there_and_fails_conflicts_and_bad_sources_alone(
        site: Site, peer: str) -> None:
    night = "2457750" if peer == "karoo-sftp" else "2457751"
    names = _new_night(site, night, 24)
    root = (site.sftp_root if peer == "karoo-sftp" else site.dav_root) / "archive"
    rels = {name: site.path_of(name) for name in names}
    same, other_bytes, other_size, bad = names[:3], names[3], names[4], names[5]
    for name in same:  # already there, same content
        (root / rels[name]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site.store / rels[name], root / rels[name])
    theirs = {other_bytes: os.urandom(4096), other_size: b"someone else's"}
    for name, data in theirs.items():
        (root / rels[name]).write_bytes(data)
    source = site.store / rels[bad]
    original = source.read_bytes()
    source.write_bytes(original[:7] + bytes([original[7] ^ 1]) + original[8:])
    try:
        result = site.send(names, peer)
    finally:
        source.write_bytes(original)
    items = result["items"]
    assert {items[name] for name in same} == {("skipped", "")}
    for name, data in theirs.items():
        state, error = items[name]
        assert state == "failed" and "conflict" in error and "not overwritten" in error
        assert (root / rels[name]).read_bytes() == data
    state, error = items[bad]
    assert state == "failed" and "verification failed" in error and "removed" in error, error
    assert not (root / rels[bad]).exists()
    landed = [name for name in names if name not in (*same, *theirs, bad)]
    assert {items[name] for name in landed} == {("done", "")}
    assert all(_same_content(site.store / rels[name], root / rels[name]) for name in landed)
    assert not _partials(root)
    with site.db.read() as s:
        recorded = set(s.scalars(select(File.name).join(RemoteInstance).where(
            RemoteInstance.site == peer, File.name.in_(names))))
    assert recorded == {*same, *landed}


def test_rclone_runs_do_not_grow_with_the_number_of_files(
        site: Site, rclone_runs: Callable[[], list[str]]) -> None:
    few, many = _new_night(site, "2457760", 4), _new_night(site, "2457761", 60)
    rclone_runs()
    assert site.send(few, "karoo-sftp")["counts"] == {"done": 4}
    for_few = rclone_runs()
    assert site.send(many, "karoo-sftp")["counts"] == {"done": 60}
    for_many = rclone_runs()
    assert for_many == for_few, (for_few, for_many)
    assert len(for_many) <= 7, for_many  # the launch's ping and one batch


def test_names_taken_while_the_batch_is_copied_are_not_overwritten(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _new_night(site, "2457770", 5)
    root = site.sftp_root / "archive"
    late, same = (root / site.path_of(names[i]) for i in (2, 3))
    # After the job looked and copied, before it renames: someone writes other bytes under
    # one name, and the very file under another (another job sending it too).
    _wrap_rclone(tmp_path, monkeypatch, f'*" move "*) mkdir -p {late.parent}; '
                 f'printf late > {late}; cp {site.store / site.path_of(names[3])} {same};;')
    result = site.send(names, "karoo-sftp")
    state, error = result["items"][names[2]]
    assert state == "failed" and "appeared while sending" in error and "not overwritten" in error
    assert late.read_bytes() == b"late"
    assert result["items"][names[3]] == ("skipped", "")
    others = [names[0], names[1], names[4]]
    assert {result["items"][name] for name in others} == {("done", "")}
    assert all(_same_content(site.store / site.path_of(name), root / site.path_of(name))
               for name in [*others, names[3]])
    assert not _partials(root)


def test_files_known_by_xxh3_only_are_read_back_and_verified(site: Site) -> None:
    good, bad = _new_night(site, "2457780", 2)
    job = site.job([good, bad], "karoo-sftp")
    with site.db.write() as s:  # records from a catalogue that kept no MD5
        for item in s.scalars(select(JobItem).where(JobItem.job_id == job["id"])):
            item.checksums = {"xxh3-128": item.checksums["xxh3-128"]}
    source = site.store / site.path_of(bad)
    source.write_bytes(b"changed after ingest".ljust(4096))
    site.run()
    result = site.result(job["id"])
    assert result["items"][good] == ("done", "")
    state, error = result["items"][bad]
    assert state == "failed" and "xxh3-128" in error and "verification failed" in error, error
    root = site.sftp_root / "archive"
    assert _same_content(site.store / site.path_of(good), root / site.path_of(good))
    assert not (root / site.path_of(bad)).exists()
    assert not _partials(root)


def test_a_cancel_mid_batch_stops_rclone_and_removes_the_hidden_copies(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _new_night(site, "2457790", 6)
    # The copy goes through, then rclone "hangs" (the wrapper becomes a long sleep).
    log = _wrap_rclone(tmp_path, monkeypatch, '*" copy "*) "$REAL" "$@"; exec sleep 60;;')
    job = site.job(names, "karoo-sftp")
    worker = threading.Thread(target=site.run)
    worker.start()
    try:
        _wait_for("the copies", lambda: "copy" in log.read_text() and _partials(
            site.sftp_root) and list(_partials(site.sftp_root)[0].rglob("*.uvh5")))
    finally:
        cancel_job(site.db, job["id"], standard_kinds())
        worker.join(30)
    assert not worker.is_alive()
    assert get_job(site.db, job["id"])["state"] == "cancelled"
    assert not _partials(site.sftp_root)
    assert not any((site.sftp_root / "archive" / site.path_of(name)).exists() for name in names)


def test_an_unreachable_remote_keeps_the_job_retrying_until_cancelled(site: Site) -> None:
    name = site.names(1, "2457648")[0]
    job = site.job([name], "karoo-down")
    created = read_log(get_job(site.db, job["id"]))[0]
    assert "cannot be reached" in created and "the job waits for it" in created
    worker = threading.Thread(target=run_pending, args=(site.db, EngineConfig(
        kinds=standard_kinds(), peers=site.registry, fsync=False, heartbeat_seconds=0.2)))
    worker.start()
    try:
        log = _wait_for("two failed attempts", lambda: (
            text if "attempt 2 failed" in (text := read_log(get_job(site.db, job["id"]))[0])
            else None))
        assert "cannot be reached" in log and "connection refused" in log
        assert get_job(site.db, job["id"])["state"] == "running"
    finally:
        cancel_job(site.db, job["id"], standard_kinds())
        worker.join(30)
    assert get_job(site.db, job["id"])["state"] == "cancelled"
    assert _remote_count(site, "karoo-down") == 0


def test_get_peers_shows_rclone_peers_with_reachability(site: Site) -> None:
    rows = {r["name"]: r for r in list_peers(
        SimpleNamespace(peers=site.registry, site_name="site-a"), timeout=3)}  # type: ignore
    assert rows["karoo-sftp"]["type"] == "rclone"
    assert rows["karoo-sftp"]["remote"] == "sf:archive"
    assert rows["karoo-sftp"]["reachable"] is True and rows["karoo-dav"]["reachable"] is True
    assert rows["karoo-down"]["reachable"] is False
    assert "connection refused" in rows["karoo-down"]["error"]


def test_configuration_refuses_passwords_on_the_command_line() -> None:
    with pytest.raises(ValueError, match="not in the remote string"):
        parse_peers({"x": {"type": "rclone", "remote": ":sftp,host=h,pass=abc:path"}})
    with pytest.raises(ValueError, match="RCLONE_"):
        parse_peers({"x": {"type": "rclone", "remote": "r:p", "env": {"PATH": "/tmp"}}})
    with pytest.raises(ValueError, match="unknown setting"):
        parse_peers({"x": {"type": "rclone", "remote": "r:p", "secret": "s"}})
    assert repr(parse_peers({"x": {"type": "rclone", "remote": "r:p", "env": {
        "RCLONE_CONFIG_R_PASS": "hidden"}}})["x"]) == "RclonePeer('x', 'r:p')"


def test_over_rest_with_the_servers_worker(site: Site) -> None:
    """``POST transfers`` to an rclone peer: the server's worker gets the peer (its env
    secrets too) through its environment and sends like the in-process runs."""
    names = site.names(2, "2457648")
    config = {"StagingApp": {
        "db_url": str(site.db.engine.url), "site_name": "site-a",
        "stores": {"onsite": {"path": str(site.store)}}, "peers": site.peers,
        "start_worker": True, "worker_idle_exit_seconds": 3.0, "service_log_file": "",
        "job_log_dir": str(site.tmp / "logs")}}
    with jupyter_process(site.tmp / "server", root_dir=site.tmp / "a" / "workspace",
                         config=config) as server:
        peers = {p["name"]: p for p in server.api("peers")["peers"]}
        assert peers["karoo-dav"]["reachable"] is True
        job = server.api("transfers", {"names": names, "peer": "karoo-dav"})
        done = _wait_for("the job to end", lambda: (
            j if (j := server.api(f"jobs/{job['id']}"))["state"] not in ("queued", "running")
            else None), timeout=60)
        assert done["state"] == "succeeded", done
        log = server.request("GET", f"hera-stage/api/jobs/{job['id']}/log").text
    for name in names:
        rel = site.path_of(name)
        assert _same_content(site.store / rel, site.dav_root / "archive" / rel)
    assert "checksum verified at the remote" in log


def test_no_password_in_logs_or_database(site: Site) -> None:
    """Last: every job log written above and the whole database, searched for the passwords
    and their obscured forms."""
    texts = [p.read_text(errors="replace") for p in (site.tmp / "logs").rglob("*") if p.is_file()]
    assert texts
    with site.db.engine.connect() as conn:
        dump = "\n".join(str(row) for table in ("job", "job_item", "event", "audit",
                                                 "remote_instance")
                         for row in conn.exec_driver_sql(f"SELECT * FROM {table}"))
    for secret in site.secrets:
        assert all(secret not in text for text in texts), secret
        assert secret not in dump, secret
