"""Fixtures for the job engine tests: a small real archive ingested into the test database, a
workspace (the allowed root) and a log directory; helpers to list and hash what got staged."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

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


def tree(path: Path) -> list[str]:
    """Every entry below ``path`` (relative, sorted), directories included."""
    out = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)


def temp_files(path: Path) -> list[str]:
    return [p for p in tree(path) if p.endswith(".hera-tmp")]
