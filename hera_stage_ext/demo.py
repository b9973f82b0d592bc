"""``hera-stage demo``: a small synthetic HERA-like archive, ingested, and JupyterLab on it.

``make_demo_archive`` writes a few hundred small files over several nights into two stores
(``onsite`` holds everything, ``offsite`` the first two nights again), one MIRIAD-like directory
data set and a couple of files with no observation; it also writes the Jupyter configuration
that points the extension at them. The tests reuse it as their sample archive.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .catalogue.catalogue import Catalogue
from .catalogue.db import Database
from .catalogue.ingest import Ingester, IngestReport

FIRST_NIGHT = 2457644
NIGHTS = 5
FILES_PER_NIGHT = 60
MIRIAD_NAME = "zen.2457646.40000.xx.HH.uv"
LIBRARIAN_AUTHENTICATOR = "demo-authenticator"


@dataclass
class DemoArchive:
    root: Path
    workspace: Path
    stores: dict[str, dict[str, str]]
    db_url: str
    config_file: Path

    def jupyter_config(self) -> str:
        return "\n".join([
            f"c.StagingApp.db_url = {self.db_url!r}",
            f"c.StagingApp.stores = {self.stores!r}",
            f"c.StagingApp.librarian_authenticators = {{{LIBRARIAN_AUTHENTICATOR!r}: 'demo'}}",
            f"c.ServerApp.root_dir = {str(self.workspace)!r}",
            "",
        ])


def _write(path: Path, rng: random.Random, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


def make_demo_archive(root: str | os.PathLike[str], files_per_night: int = FILES_PER_NIGHT,
                      nights: int = NIGHTS) -> DemoArchive:
    """Write the demo stores under ``root`` (deterministic content); does not ingest."""
    root = Path(root).resolve()
    rng = random.Random(2457644)
    onsite, offsite = root / "stores" / "onsite", root / "stores" / "offsite"
    for night in range(FIRST_NIGHT, FIRST_NIGHT + nights):
        for k in range(files_per_night):
            jd = f"{night}.{10000 + k * 745:05d}"
            for pol in ("xx", "yy"):
                if k % 2 and pol == "yy":
                    continue
                name = f"zen.{jd}.{pol}.HH.uvh5"
                size = rng.randrange(1024, 32 * 1024)
                _write(onsite / str(night) / name, rng, size)
                if night < FIRST_NIGHT + 2:
                    (offsite / str(night)).mkdir(parents=True, exist_ok=True)
                    (offsite / str(night) / name).write_bytes((onsite / str(night) / name).read_bytes())
    miriad = onsite / "2457646" / MIRIAD_NAME
    for member, size in (("header", 200), ("vartable", 600), ("visdata", 48 * 1024),
                         ("flags", 4096)):
        _write(miriad / member, rng, size)
    _write(onsite / "notes" / "observing-log.txt", rng, 3000)
    _write(onsite / "notes" / "antenna-positions.csv", rng, 1500)
    workspace = root / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    archive = DemoArchive(
        root=root,
        workspace=workspace,
        stores={"onsite": {"path": str(onsite), "kind": "online"},
                "offsite": {"path": str(offsite), "kind": "online"}},
        db_url=f"sqlite:///{root / 'catalogue.sqlite'}",
        config_file=root / "jupyter_server_config.py",
    )
    archive.config_file.write_text(archive.jupyter_config())
    return archive


def ingest_demo_archive(archive: DemoArchive) -> dict[str, IngestReport]:
    """Register both demo stores in the demo catalogue; returns each store's report."""
    db = Database(archive.db_url)
    try:
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores(archive.stores)
        ingester = Ingester(catalogue, source="demo")
        return {store: ingester.ingest(store, ["*/*"]) for store in archive.stores}
    finally:
        db.dispose()


def run_demo(directory: str, port: int = 8888, start_lab: bool = True) -> int:
    archive = make_demo_archive(directory)
    reports = ingest_demo_archive(archive)
    print(f"Demo archive in {archive.root}: " + ", ".join(
        f"{r.instances_added} new instance(s) on {store}" for store, r in reports.items()))
    if not start_lab:
        return 0
    token = secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--config={archive.config_file}", f"--IdentityProvider.token={token}",
        "--ServerApp.port_retries=0",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    print(f"JupyterLab with hera_stage_ext: http://127.0.0.1:{port}/lab?token={token}", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
