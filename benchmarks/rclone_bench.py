"""rclone peer benchmark: a transfer job to an rclone remote on loopback next to ``rclone copy``.

The remote is ``rclone serve sftp`` (or ``webdav``, ``--backend``) on a loopback port with a
password, serving a temporary folder, as in ``tests/test_rclone.py``. The data: ``--files``
files of 4 KiB (2,000 by default) in 20 folders of one night, registered in a SQLite catalogue.

Each tool runs in the order reference, ours, ours, reference, each cell the better of its two
runs (all are printed), each run into a fresh folder of the remote:

- reference: ``rclone copy`` of the night's folder to the remote (what a site would run by hand:
  no hidden names, no verification against a catalogue, rclone's default checks only);
- ours: a transfer job to an rclone peer (``create_transfer_job``, then ``run_pending``: the
  worker's code, its default 4 streams, in this process), timed as the job (``started_at`` to
  ``finished_at``: look, copy to hidden names, verify every checksum, rename, record) and end to
  end (the launch's ping included). The job must end with every file ``done``.

No target: it prints files/s and the ratio. Run it on another checkout's code with
``PYTHONPATH=<checkout>`` from a copy of this script outside the repository (the script puts its
own repository first on ``sys.path``).

    /path/to/venv/bin/python benchmarks/rclone_bench.py                 # 2,000 x 4 KiB, SFTP
    /path/to/venv/bin/python benchmarks/rclone_bench.py --files 200 --backend webdav

Needs ``rclone``. The server and the temporary directory are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.catalogue.models import File
from hera_stage_ext.jobs import EngineConfig, get_job, run_pending
from hera_stage_ext.jobs.engine import load_job
from hera_stage_ext.transfer.transfer_kind import create_transfer_job
from hera_stage_ext.transfer.peer_config import parse_peers
from hera_stage_ext.transfer.peers import PeerRegistry
from hera_stage_ext.standard_kinds import standard_kinds

NIGHT = "2457901"
PASSWORD = "bench-rclone-" + "p" * 20


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def rclone_server(kind: str, root: Path, tmp: Path) -> Iterator[Path]:
    """``rclone serve <kind>`` of ``root`` on loopback; the rclone.conf naming it ``bench:``."""
    port = free_port()
    obscured = subprocess.run(["rclone", "obscure", PASSWORD], check=True, capture_output=True,
                              text=True).stdout.strip()
    config = tmp / "rclone.conf"
    config.write_text(
        f"[bench]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\nuser = hera\npass = {obscured}\n"
        if kind == "sftp" else
        f"[bench]\ntype = webdav\nurl = http://127.0.0.1:{port}/\nvendor = other\nuser = hera\n"
        f"pass = {obscured}\n")
    config.chmod(0o600)
    server = subprocess.Popen(
        ["rclone", "serve", kind, str(root), "--addr", f"127.0.0.1:{port}", "--user", "hera",
         "--pass", PASSWORD, "--cache-dir", str(tmp / "cache")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp)})
    try:
        deadline = time.monotonic() + 20
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"rclone serve {kind} did not start")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield config
    finally:
        server.terminate()
        server.wait(10)


def count_files(folder: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(folder))


class Bench:
    def __init__(self, tmp: Path, config: Path, served: Path, files: int) -> None:
        self.tmp, self.config, self.served, self.files = tmp, config, served, files
        self.store = tmp / "store"
        self.runs = 0
        self.env = {**os.environ, "RCLONE_CONFIG": str(config)}

    def prepare(self) -> None:
        log(f"writing {self.files:,} x 4 KiB in {self.tmp}")
        for i in range(self.files):
            folder = self.store / NIGHT / f"d{i % 20:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"zen.{NIGHT}.{i:05d}.xx.HH.uvh5").write_bytes(os.urandom(4096))
        self.db = Database(f"sqlite:///{self.tmp / 'catalogue.sqlite'}")
        self.db.upgrade()
        catalogue = Catalogue(self.db)
        catalogue.sync_stores({"onsite": {"path": str(self.store)}})
        Ingester(catalogue).ingest("onsite", [f"{NIGHT}/*/*"])
        with self.db.read() as s:
            self.names = list(s.scalars(select(File.name)))
        if len(self.names) != self.files:
            raise SystemExit(f"registered {len(self.names)} of {self.files} file(s)")

    def reference(self) -> float:
        self.runs += 1
        started = time.monotonic()
        subprocess.run(["rclone", "copy", str(self.store / NIGHT), f"bench:ref{self.runs}/{NIGHT}"],
                       check=True, env=self.env)
        seconds = time.monotonic() - started
        if count_files(self.served / f"ref{self.runs}") != self.files:
            raise SystemExit("rclone copy did not copy every file")
        return seconds

    def ours(self) -> tuple[float, float]:
        """(job seconds, end-to-end seconds)"""
        self.runs += 1
        peer = f"ours{self.runs}"
        registry = PeerRegistry("bench", parse_peers({peer: {
            "type": "rclone", "remote": f"bench:{peer}", "config": str(self.config)}}))
        started = time.monotonic()
        job = create_transfer_job(self.db, "bench", self.names, registry, peer,
                                  log_dir=str(self.tmp / "logs"))
        run_pending(self.db, EngineConfig(kinds=standard_kinds(), peers=registry))
        e2e = time.monotonic() - started
        done = get_job(self.db, job["id"])
        if done["state"] != "succeeded" or done["files_done"] != self.files or \
                count_files(self.served / peer) != self.files:
            raise SystemExit(f"transfer job {job['id']} {done['state']}: {done['files_done']} "
                             f"of {self.files} file(s); {done['error']}")
        row = load_job(self.db, job["id"])
        assert row.started_at is not None and row.finished_at is not None
        return (row.finished_at - row.started_at).total_seconds(), e2e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2_000, help="files of 4 KiB (2,000)")
    parser.add_argument("--backend", choices=("sftp", "webdav"), default="sftp",
                        help="what rclone serves (sftp: MD5s from the server; webdav: none, "
                             "so verification reads every file back)")
    parser.add_argument("--dir", default=None, help="where the temporary directory goes")
    args = parser.parse_args(argv)
    if shutil.which("rclone") is None:
        raise SystemExit("needs rclone (apt-get install rclone)")
    tmp = Path(tempfile.mkdtemp(prefix="hera-rclone-bench-", dir=args.dir))
    served = tmp / "served"
    served.mkdir()
    ref, ours, e2es = [], [], []
    try:
        with rclone_server(args.backend, served, tmp) as config:
            bench = Bench(tmp, config, served, args.files)
            bench.prepare()
            log(f"\n{args.files:,} x 4 KiB in 20 folders to rclone serve {args.backend} on "
                "loopback")
            for tool in ("rclone", "ours", "ours", "rclone"):
                if tool == "rclone":
                    ref.append(bench.reference())
                    log(f"    rclone copy          {ref[-1]:7.2f} s  "
                        f"{args.files / ref[-1]:8,.0f} files/s")
                else:
                    job, e2e = bench.ours()
                    ours.append(job)
                    e2es.append(e2e)
                    log(f"    hera-stage transfer  {job:7.2f} s  {args.files / job:8,.0f} files/s "
                        f"(end to end {e2e:.2f} s)")
            bench.db.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref_rate, our_rate = args.files / min(ref), args.files / min(ours)
    log("\neach cell: the better of its two runs (order rclone, ours, ours, rclone); ours: the "
        "transfer job (started_at -> finished_at), end to end in brackets")
    log(f"{'set':<22} {'rclone copy':>14} | {'hera-stage':>14} {'ratio':>6} | {'e2e ratio':>9}")
    log(f"{f'{args.files:,} x 4 KiB':<22} {ref_rate:>8,.0f} files/s | {our_rate:>8,.0f} files/s "
        f"{our_rate / ref_rate:6.2f} | {min(ref) / min(e2es):9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
