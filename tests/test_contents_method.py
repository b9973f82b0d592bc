"""The ``contents`` staging method: through Jupyter's contents manager, in chunks, verified.

Each engine test runs twice: with jupyter_server's real LargeFileManager (file-based, the
default), and with a manager that is no file system at all (``contents_double``: SQLite rows), to
show that nothing takes a local-path shortcut. Then a real server and its worker process stage
through the server's own manager, and a worker is SIGKILLed mid-job and the job resumed.
"""

from __future__ import annotations

import base64
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.services.contents.largefilemanager import LargeFileManager
from traitlets.config import Config

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.demo import MIRIAD_NAME, make_demo_archive
from hera_stage_ext.errors import Forbidden, InvalidRequest, Unavailable
from hera_stage_ext.jobs import (
    EngineConfig,
    cancel_job,
    create_stage_job,
    get_job,
    markers,
    read_log,
    retry_job,
    run_pending,
)
from hera_stage_ext.jobs.contents import ContentsMover, ContentsTarget, Manager, describe_manager
from hera_stage_ext.jobs.methods import ItemFailed, ItemSpec
from hera_stage_ext.standard_kinds import standard_kinds
from hera_stage_ext.states import ItemState

from .api_fixtures import *
from .contents_double import SQLiteContentsManager
from .job_fixtures import (
    Site,
    _site,
    ingest,
    make_big_site,
    start_worker,
    stop_worker,
    tree,
    wait_for,
)
from .test_cli import cli  # noqa: F401  (a fixture)
from .test_stage_api import wait_for as wait_for_job

CHUNK = 4096
FAST = EngineConfig(kinds=standard_kinds(),
                    streams=2, heartbeat_seconds=0.2, fsync=False, chunk_size=CHUNK)
BINARY = "zen.2457646.50000.xx.HH.uvh5"


@pytest.fixture
def db_url(tmp_path) -> str:
    """The engine's database is not what this file is about: SQLite only."""
    return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"


@dataclass
class Contents:
    """A contents manager under test and a way to look at what it holds."""

    cm: Any
    local: Path | None  # its root, when it is file-based

    @property
    def spec(self) -> dict[str, Any]:
        return describe_manager(self.cm)

    def read(self, path: str) -> bytes:
        return (self.local / path).read_bytes() if self.local else self.cm.read(path)

    def paths(self, below: str = "") -> list[str]:
        if self.local is not None:
            return [p for p in (os.path.join(below, t) for t in tree(self.local / below))]
        return [p for p in self.cm.paths() if p.startswith(below)]

    def put(self, path: str, data: bytes) -> None:
        manager = Manager(self.spec)
        manager.make_dirs(path.rpartition("/")[0])
        manager.save({"type": "file", "format": "base64",
                      "content": base64.b64encode(data).decode()}, path)


def temps(contents: Contents) -> list[str]:
    return [p for p in contents.paths() if ".hera-tmp" in p]


@pytest.fixture
def site(database, tmp_path) -> Site:
    """The demo archive plus one file holding every byte value, ingested."""
    archive = make_demo_archive(tmp_path / "site", files_per_night=3, nights=3)
    night = Path(archive.stores["onsite"]["path"]) / "2457646"
    (night / BINARY).write_bytes(bytes(range(256)) * 200 + b"\x00\xff")  # 13 chunks of 4 KiB
    ingest(database, archive.stores)
    return _site(database, archive)


@pytest.fixture(params=["largefile", "database"])
def contents(request, site: Site, tmp_path) -> Contents:
    if request.param == "largefile":
        return Contents(LargeFileManager(root_dir=str(site.workspace)), site.workspace)
    config = Config({"SQLiteContentsManager": {"db_file": str(tmp_path / "contents.sqlite")}})
    # root_dir names a folder that does not exist: nothing may appear there.
    return Contents(SQLiteContentsManager(config=config, root_dir=str(tmp_path / "nowhere")),
                    None)


def stage(site: Site, contents: Contents, dest: str, names=None, **kw):
    return create_stage_job(site.db, "alice", site.names if names is None else names, dest,
                            "contents", site.roots, log_dir=site.logs, contents=contents.spec,
                            **kw)


def test_stages_files_and_the_data_set(site: Site, contents: Contents, tmp_path) -> None:
    job = stage(site, contents, "run")
    assert job["method"] == "contents" and job["options"]["contents"]["path"] == "run"
    assert markers.IN_PROGRESS in [p.rpartition("/")[2] for p in contents.paths("run")]
    assert run_pending(site.db, FAST) == [job["id"]]
    out = get_job(site.db, job["id"])
    assert out["state"] == "succeeded", out
    assert out["files_done"] == len(site.names) and out["bytes_done"] == out["bytes_total"]
    for name in site.names:
        src = site.sources[name]
        if name == MIRIAD_NAME:
            for member in ck.directory_members(src):
                assert contents.read(f"run/{site.rel[name]}/{member}") == (
                    src / member).read_bytes()
        else:
            assert contents.read(f"run/{site.rel[name]}") == src.read_bytes()
    names = {p.rpartition("/")[2] for p in contents.paths("run")}
    assert markers.SUCCEEDED in names and markers.IN_PROGRESS not in names
    assert temps(contents) == [] and ".ipynb_checkpoints" not in names
    if contents.local is None:
        assert not (tmp_path / "nowhere").exists()  # no local shortcut
        assert not (site.workspace / "run").exists()
    log = read_log(out)[0]
    assert f"contents {site.rel[MIRIAD_NAME]} (" in log and "verified" in log


def test_every_byte_value_in_bounded_chunks(site: Site, contents: Contents) -> None:
    job = stage(site, contents, "bin", [BINARY])
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    path = f"bin/{site.rel[BINARY]}"
    assert contents.read(path) == site.sources[BINARY].read_bytes()
    if contents.local is None:
        size = site.sources[BINARY].stat().st_size
        chunks = contents.cm.chunks(path + ".hera-tmp")  # written under the temporary name
        n = math.ceil(size / CHUNK)
        assert [number for number, _ in chunks] == [*range(1, n), -1]
        assert max(nbytes for _, nbytes in chunks) == CHUNK  # memory: one chunk at a time
        assert sum(nbytes for _, nbytes in chunks) == size


def test_checksum_mismatch_fails_the_file_and_leaves_no_copy(site: Site,
                                                             contents: Contents) -> None:
    bad, good = BINARY, "zen.2457644.10000.xx.HH.uvh5"
    original = site.sources[bad].read_bytes()
    data = bytearray(original)
    data[5000] ^= 0xFF  # same size, other bytes: corrupted after ingest
    site.sources[bad].write_bytes(bytes(data))
    job = stage(site, contents, "verify", [bad, good, MIRIAD_NAME])
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert out["state"] == "failed" and (out["files_failed"], out["files_done"]) == (1, 2)
    held = contents.paths("verify")
    assert f"verify/{site.rel[bad]}" not in held and temps(contents) == []
    assert contents.read(f"verify/{site.rel[good]}") == site.sources[good].read_bytes()
    errors = contents.read(f"verify/{markers.ERRORS}").decode().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"{site.rel[bad]}: checksum mismatch")
    site.sources[bad].write_bytes(original)  # repaired: a retry stages just that file
    retry_job(site.db, job["id"], standard_kinds(), allowed_roots=site.roots)
    run_pending(site.db, FAST)
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    assert contents.read(f"verify/{site.rel[bad]}") == original
    assert f"verify/{markers.ERRORS}" not in contents.paths("verify")


def test_identical_skipped_different_never_overwritten(site: Site, contents: Contents) -> None:
    same, other, fine = "zen.2457644.10000.xx.HH.uvh5", BINARY, "zen.2457645.10000.xx.HH.uvh5"
    contents.put(f"pre/{site.rel[same]}", site.sources[same].read_bytes())
    contents.put(f"pre/{site.rel[other]}", b"somebody else's data")
    job = stage(site, contents, "pre", [same, other, fine])
    run_pending(site.db, FAST)
    out = get_job(site.db, job["id"])
    assert (out["files_done"], out["files_skipped"], out["files_failed"]) == (2, 1, 1)
    assert contents.read(f"pre/{site.rel[other]}") == b"somebody else's data"
    assert contents.read(f"pre/{site.rel[fine]}") == site.sources[fine].read_bytes()
    errors = contents.read(f"pre/{markers.ERRORS}").decode()
    assert f"{site.rel[other]}: exists with other content" in errors and "not overwritten" in errors


@pytest.mark.parametrize(("destination", "error"), [
    ("../out", Forbidden), ("a/../../out", Forbidden), ("/etc/hera", Forbidden),
    ("a\x00b", InvalidRequest), ("a/b/../../../out", Forbidden)])
def test_bad_destinations_are_refused_and_nothing_is_written(site: Site, contents: Contents,
                                                             destination, error) -> None:
    before = contents.paths()
    outside = site.workspace.parent / "out"
    if contents.local is None and destination == "/etc/hera":
        error = InvalidRequest  # no file system to confine to: a contents path is relative
    with pytest.raises(error):
        stage(site, contents, destination, [BINARY])
    assert contents.paths() == before and not outside.exists()


@pytest.mark.parametrize(("setting", "value"), [
    ("access_key", "hunter2"), ("db_url", "postgresql://me:hunter2@db.example/contents")])
def test_secret_looking_settings_are_not_stored(tmp_path, setting, value) -> None:
    config = Config({"SQLiteContentsManager": {"db_file": str(tmp_path / "c.sqlite"),
                                               setting: value}})
    with pytest.raises(Unavailable, match=f"{setting} looks like"):
        describe_manager(SQLiteContentsManager(config=config))


def test_cancel_leaves_no_temporary_file(site: Site, contents: Contents) -> None:
    job = stage(site, contents, "c", [BINARY, MIRIAD_NAME])
    slow = EngineConfig(kinds=standard_kinds(),
                        streams=1, heartbeat_seconds=0.1, chunk_size=1024, chunk_delay=0.05,
                        fsync=False)
    runner = threading.Thread(target=run_pending, args=(site.db, slow))
    runner.start()
    try:
        wait_for(lambda: temps(contents))
        cancel_job(site.db, job["id"], standard_kinds())
        wait_for(lambda: get_job(site.db, job["id"])["state"] == "cancelled", timeout=10)
    finally:
        runner.join(20)
    assert temps(contents) == []
    names = {p.rpartition("/")[2] for p in contents.paths("c")}
    assert markers.IN_PROGRESS not in names and markers.ERRORS in names


def test_a_file_shows_its_bytes_chunk_by_chunk_before_it_is_committed(
        site: Site, contents: Contents) -> None:
    """13 chunks of 4 KiB through the manager, slowed: the job's bytes (done + moving) rise
    in steps while its file is not done yet, and never pass its total (issue 17, point 5)."""
    job = stage(site, contents, "progress", [BINARY])
    slow = EngineConfig(kinds=standard_kinds(),
                        streams=1, heartbeat_seconds=0.05, chunk_size=CHUNK, chunk_delay=0.1,
                        fsync=False)
    runner = threading.Thread(target=run_pending, args=(site.db, slow))
    runner.start()
    seen = []
    try:
        while runner.is_alive():
            seen.append(get_job(site.db, job["id"]))
            time.sleep(0.02)
    finally:
        runner.join(30)
    total = seen[0]["bytes_total"]
    assert all(j["bytes_done"] + j["bytes_moving"] <= total for j in seen)
    steps = {j["bytes_moving"] for j in seen if j["files_done"] == 0
             and 0 < j["bytes_moving"] < total}  # part of the file written
    assert len(steps) >= 3, steps
    end = get_job(site.db, job["id"])
    assert (end["state"], end["bytes_done"], end["bytes_moving"]) == ("succeeded", total, 0)


# ----- a store's folder swapped for a symlink out of the store while it is staged ------------
def _store_with_an_outside_twin(tmp_path: Path, outside_bytes: bytes | None = None
                                ) -> tuple[Path, Path, dict[str, bytes]]:
    """A store whose ``night`` folder holds a file and a data set (two members), and a folder
    outside the store laid out the same, holding the same bytes (or ``outside_bytes`` for the
    data set's second member)."""
    store, outside = tmp_path / "store", tmp_path / "outside"
    files = {"b.uvh5": bytes(range(256)) * 3, "set.uv/a": b"first member" * 40,
             "set.uv/z": b"second member" * 40}
    for top in (store / "night", outside):
        (top / "set.uv").mkdir(parents=True)
        for rel, data in files.items():
            (top / rel).write_bytes(data)
    if outside_bytes is not None:
        (outside / "set.uv" / "z").write_bytes(outside_bytes)
    return store, outside, files


def _contents_item(tmp_path: Path, store: Path, name: str, check=lambda n: None):
    """A ``ContentsMover`` into ``dest`` of a LargeFileManager rooted at ``workspace``, and
    the item of ``night/name`` on ``store`` (catalogue checksums taken now)."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    spec = describe_manager(LargeFileManager(root_dir=str(workspace)))
    target = ContentsTarget.plan("dest", spec, [workspace])
    source = store / "night" / name
    digest = ck.hash_path(source)
    item = ItemSpec(str(source), f"{target.key}/night/{name}", digest.size, source.is_dir(),
                    digest.checksums, "contents", True, str(store))
    return ContentsMover(target, 64, check, set()), item, workspace


@pytest.mark.parametrize("name", ["b.uvh5", "set.uv"])
def test_a_folder_swapped_for_a_link_out_of_the_store_after_the_check_is_not_read(
        tmp_path, monkeypatch, name) -> None:
    """The store's folder is renamed aside (it stays inside the store) and its name made a
    symlink to a folder outside holding the same bytes, after the item's source was checked
    and before it is read (while the destination folder is made): what is opened is checked,
    so the item (a file, or a data set) is refused and nothing outside is read into the
    destination."""
    store, outside, _files = _store_with_an_outside_twin(tmp_path)
    mover, item, workspace = _contents_item(tmp_path, store, name)
    make_dirs = mover.manager.make_dirs

    def swap_then_make_dirs(path: str) -> None:
        (store / "night").rename(store / "night.old")
        (store / "night").symlink_to(outside)
        make_dirs(path)

    monkeypatch.setattr(mover.manager, "make_dirs", swap_then_make_dirs)
    with pytest.raises(ItemFailed, match="the instance on its store leads outside the store"):
        mover.move(item)
    assert (store / "night").is_symlink()  # the swap was made
    assert [p for p in tree(workspace) if not (workspace / p).is_dir()] == []


def test_a_data_set_folder_swapped_after_its_first_member_is_read_from_the_folder_opened(
        tmp_path) -> None:
    """A data set is read below the folder opened (and checked) for it: its store folder
    renamed aside and its name made a symlink out of the store after the first member was sent,
    the next member still comes from the folder opened, never from outside (which holds other
    bytes there)."""
    store, outside, files = _store_with_an_outside_twin(tmp_path, b"outside bytes" * 40)
    swapped = []

    def swap_after_the_first_member(_nbytes: int) -> None:
        if not swapped:
            (store / "night").rename(store / "night.old")
            (store / "night").symlink_to(outside)
            swapped.append(True)

    mover, item, workspace = _contents_item(tmp_path, store, "set.uv",
                                            swap_after_the_first_member)
    outcome = mover.move(item)
    assert swapped and outcome.state == ItemState.DONE and "verified" in outcome.note
    for member in ("a", "z"):
        assert (workspace / "dest" / "night" / "set.uv" / member).read_bytes() == files[
            f"set.uv/{member}"]


# ----- a worker process SIGKILLed mid-job ---------------------------------------------------
def test_resume_after_sigkill(database, tmp_path) -> None:
    big = make_big_site(database, tmp_path / "big", n_files=12, size=256 * 1024)
    files = Contents(LargeFileManager(root_dir=str(big.workspace)), big.workspace)
    job = create_stage_job(big.db, "alice", big.names, "resume", "contents", big.roots,
                           log_dir=big.logs, contents=files.spec)
    dest = big.workspace / "resume"
    wanted = {big.rel[n] for n in big.names}
    finals = lambda: [p for p in tree(dest) if p in wanted]
    first = start_worker(big.db.url, delay=0.02)  # 64 KiB chunks, 20 ms each
    try:
        wait_for(lambda: len(finals()) >= 3 and temps(files), timeout=60, step=0.005)
    finally:
        first.kill()
        first.wait(10)
    before = {p: os.stat(dest / p).st_ino for p in finals()}
    assert 3 <= len(before) < len(wanted), "the kill must land mid-job"
    assert temps(files), "a partial copy under its temporary name"
    second = start_worker(big.db.url)
    try:
        wait_for(lambda: get_job(big.db, job["id"])["state"] not in ("queued", "running"),
                 timeout=60)
    finally:
        stop_worker(second)
    out = get_job(big.db, job["id"])
    assert out["state"] == "succeeded", out
    assert out["files_done"] == len(wanted) and out["files_failed"] == 0
    assert temps(files) == []
    for name in big.names:
        assert ck.hash_path(dest / big.rel[name]) == ck.hash_path(big.sources[name])
    for path, inode in before.items():  # verified before the kill: not written again
        assert os.stat(dest / path).st_ino == inode
    assert "temporary file(s) left by the previous worker" in read_log(out)[0]


# ----- a real server and the worker it starts ----------------------------------------------
@pytest.fixture
def staging_config(tmp_path) -> dict[str, Any]:
    return {"job_log_dir": str(tmp_path / "job-logs"), "worker_idle_exit_seconds": 5.0}


async def test_rest_stage_through_the_servers_manager(api, ingested, jp_root_dir, archive,
                                                      jp_serverapp) -> None:
    body = {"query": "session:2457646", "destination": "through/cm", "method": "contents"}
    code, plan = await api("POST", "stage", {**body, "dry_run": True})
    assert code == 200 and plan["method"] == "contents" and plan["fits"] is True
    code, job = await api("POST", "stage", body)
    assert code == 202, job
    spec = job["options"]["contents"]
    assert spec["class"].endswith(type(jp_serverapp.contents_manager).__name__)
    job = await wait_for_job(api, job["id"])
    assert job["state"] == "succeeded", job
    dest = Path(jp_root_dir) / "through" / "cm"
    store = Path(archive.stores["onsite"]["path"])
    assert ck.hash_path(dest / "2457646" / MIRIAD_NAME) == ck.hash_path(
        store / "2457646" / MIRIAD_NAME)
    assert (dest / markers.SUCCEEDED).exists() and not [p for p in tree(dest) if "tmp" in p]
    for bad, status in (("../../etc", 403), ("/etc", 403)):
        code, reply = await api("POST", "stage", {**body, "destination": bad})
        assert code == status and "outside" in reply["message"], reply


@pytest.fixture
def server_contents() -> str:
    """The server's contents manager: its default, or (``database``) the SQLite one."""
    return "default"


@pytest.fixture
def jp_server_config(db_url, archive, staging_config, server_contents, tmp_path):
    config: dict[str, Any] = {
        "ServerApp": {"jpserver_extensions": {"hera_stage_ext": True},
                      "allow_unauthenticated_access": False},
        "StagingApp": {"db_url": db_url, "stores": archive.stores, **staging_config},
    }
    if server_contents == "database":
        config["ServerApp"]["contents_manager_class"] = SQLiteContentsManager
        config["SQLiteContentsManager"] = {"db_file": str(tmp_path / "server-contents.sqlite")}
    return config


@pytest.mark.parametrize("server_contents", ["database"])
async def test_rest_and_cli_stage_into_a_manager_without_files(api, cli, ingested, jp_root_dir,  # noqa: F811
                                                               jp_serverapp, archive) -> None:
    assert isinstance(jp_serverapp.contents_manager, SQLiteContentsManager)
    name = "zen.2457645.10000.xx.HH.uvh5"
    code, job = await api("POST", "stage", {"names": [name, MIRIAD_NAME], "destination": "db",
                                            "method": "contents"})
    assert code == 202, job
    assert job["destination"] == "contents:db"
    job = await wait_for_job(api, job["id"])
    assert job["state"] == "succeeded", job
    cm = jp_serverapp.contents_manager
    store = Path(archive.stores["offsite"]["path"])
    assert cm.read(f"db/2457645/{name}") == (store / "2457645" / name).read_bytes()
    assert f"db/{markers.SUCCEEDED}" in cm.paths()
    assert not (Path(jp_root_dir) / "db").exists()
    code, reply = await api("POST", "stage", {"names": [name], "destination": "../x",
                                              "method": "contents"})
    assert code == 403 and "outside the contents root" in reply["message"]
    assert not [p for p in cm.paths() if p.startswith("x")]
    code, out, err = await cli("stage", "viacli", "zen.2457644.1*", "--method", "contents",
                               "--dry-run")
    assert code == 0 and out.startswith("9 file(s)") and "contents:viacli" in out, err
    code, out, err = await cli("stage", "viacli", "zen.2457644.1*", "--method", "contents",
                               "--wait")
    assert code == 0 and "succeeded: 9 file(s) staged" in err, err
    assert len([p for p in cm.paths() if p.startswith("viacli/2457644/")]) == 9
