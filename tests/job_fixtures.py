"""Fixtures for the job engine tests: a small real archive ingested into the test database, a
workspace (the allowed root) and a log directory; helpers to list and hash what got staged."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.demo import MIRIAD_NAME, DemoArchive, make_demo_archive


@dataclass
class Site:
    db: Database
    archive: DemoArchive
    workspace: Path  # the allowed root
    logs: Path
    names: list[str]  # every file name in the catalogue
    sources: dict[str, Path]  # name -> path of the instance the engine stages from
    rel: dict[str, str]  # name -> path relative to the store root

    @property
    def roots(self) -> list[Path]:
        return [self.workspace]


def ingest(db: Database, stores: dict[str, dict[str, str]]) -> None:
    catalogue = Catalogue(db)
    catalogue.sync_stores(stores)
    ingester = Ingester(catalogue, source="test")
    for store in stores:
        ingester.ingest(store, ["*/*"])


def make_site(db: Database, root: Path, files_per_night: int = 3, nights: int = 3) -> Site:
    archive = make_demo_archive(root, files_per_night=files_per_night, nights=nights)
    ingest(db, archive.stores)
    return _site(db, archive)


def _site(db: Database, archive: DemoArchive) -> Site:
    onsite = Path(archive.stores["onsite"]["path"])
    rel = {}
    for entry in sorted(onsite.glob("*/*")):
        rel[entry.name] = str(entry.relative_to(onsite))
    assert MIRIAD_NAME in rel
    # The engine picks the first store by name holding an instance ("offsite" < "onsite").
    sources = {}
    for name, r in rel.items():
        for store in sorted(archive.stores):
            if (Path(archive.stores[store]["path"]) / r).exists():
                sources[name] = Path(archive.stores[store]["path"]) / r
                break
    logs = archive.root / "logs"
    return Site(db, archive, archive.workspace, logs, sorted(rel), sources, rel)


def make_big_site(db: Database, root: Path, n_files: int = 40, size: int = 256 * 1024) -> Site:
    """A store of ``n_files`` files of ``size`` bytes (for resume and cancel tests)."""
    root = root.resolve()
    rng = random.Random(7)
    store = root / "stores" / "onsite"
    night = store / "2457700"
    night.mkdir(parents=True)
    (store / "2457700" / MIRIAD_NAME).mkdir()  # keeps _site's layout check simple
    (store / "2457700" / MIRIAD_NAME / "visdata").write_bytes(rng.randbytes(1000))
    for k in range(n_files):
        (night / f"zen.2457700.{10000 + k * 10:05d}.xx.HH.uvh5").write_bytes(rng.randbytes(size))
    workspace = root / "workspace"
    workspace.mkdir()
    archive = DemoArchive(root=root, workspace=workspace,
                          stores={"onsite": {"path": str(store), "kind": "online"}},
                          db_url=db.url, config_file=root / "unused.py")
    ingest(db, archive.stores)
    return _site(db, archive)


#: The account a site's archive belongs to in these tests (not the one staging).
ARCHIVE_UID = ARCHIVE_GID = 65534


def give_stores_away(stores: dict[str, dict[str, str]]) -> None:
    """Make every store's files another account's, as a site's archive is: ``hardlink`` and
    ``symlink`` link only store files the staging account cannot write (``linkcheck``)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: handing the store's files to another account (chown)")
    for store in stores.values():
        for folder, dirs, files in os.walk(store["path"]):
            for name in [*dirs, *files, ""]:
                os.chown(os.path.join(folder, name), ARCHIVE_UID, ARCHIVE_GID,
                         follow_symlinks=False)


def tree(path: Path) -> list[str]:
    """Every entry below ``path`` (relative, sorted), directories included."""
    out = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)


def temp_files(path: Path) -> list[str]:
    return [p for p in tree(path) if p.endswith(".hera-tmp")]


# ----- helpers for fault tests: real worker processes, real small file systems ----------------
def wait_for(predicate, timeout: float = 30.0, step: float = 0.02):
    """Poll ``predicate`` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def start_worker(db_url: str, delay: float = 0.0, *, prefix: Sequence[str] = (),
                 extra: Sequence[str] = ()) -> subprocess.Popen:
    """A real worker process (``prefix`` runs it under another identity, e.g. ``setpriv``);
    ``delay`` is the test throttle slept after every 64 KiB chunk."""
    env = {**os.environ, "HERA_STAGE_TEST_CHUNK_DELAY": str(delay)}
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "hera_stage_ext.jobs.worker", "--db-url", db_url,
         "--streams", "2", "--chunk-size", str(64 * 1024), "--heartbeat", "0.2",
         "--lease", "60", "--poll", "0.1", "--no-fsync", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen) -> str:
    """SIGTERM, wait, SIGKILL if it lingers; returns what it printed."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    return worker.stdout.read().decode(errors="replace") if worker.stdout else ""


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int = 2) -> Iterator[str]:
    """Mount a real file system of ``size_mib`` MiB at ``path`` (a tmpfs; else a loop-mounted
    ext4 image); yields its kind and unmounts afterwards. Skips when this host allows neither
    (mounting needs root or CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path))
    kind = "tmpfs" if tried.returncode == 0 else None
    why = tried.stderr.strip()
    if kind is None and shutil.which("mkfs.ext4"):
        image = path.with_name(path.name + ".ext4")
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image), f"{size_mib + 1}M")
        looped = _run("mount", "-o", "loop", str(image), str(path)) if made.returncode == 0 \
            else made
        kind = "ext4" if looped.returncode == 0 else None
        why += "; " + looped.stderr.strip()
    if kind is None:
        pytest.skip(f"cannot mount a small file system here (needs root): {why}")
    try:
        yield kind
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))


def grow_filesystem(path: Path, size_mib: int) -> bool:
    """Make a tmpfs from ``small_filesystem`` bigger (the user freed or got more space)."""
    return _run("mount", "-o", f"remount,size={size_mib}m", str(path)).returncode == 0


def unprivileged_prefix() -> list[str] | None:
    """A command prefix under which file permission bits apply to the process: nothing when
    not root; as root, ``setpriv`` dropping the capabilities that let root ignore them (the
    process keeps uid 0, so it still owns, reads and writes its own files, database included).
    None when this host has no way."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search,-fowner,-linux_immutable"
    probe = _run("setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--",
                 sys.executable, "-c", "pass")
    if probe.returncode != 0:  # e.g. a container that may not change its bounding set
        return None
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
