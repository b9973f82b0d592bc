"""Fixity audit throughput next to the command-line checksum tools, and its cost to staging.

Makes a store of files (``--files`` x ``--size`` bytes, default 40 x 32 MiB, plus 2,000 x 16 KiB
small ones), registers them in a throwaway SQLite catalogue, then times in interleaved pairs
(``--rounds``, default 3): the audit (``fixity.Auditor.tick`` with an unlimited budget, every
instance marked unchecked before each run; it hashes with xxh3-128, the catalogue's preferred
algorithm) and each reference tool present on the machine over the same files: ``xxh3sum`` (or
``xxhsum -H3``) when installed, and ``md5sum`` (coreutils, always there). The files stay in the
page cache across runs (every run reads them warm), so this compares the hashing and the
per-file overhead, not the disk. Prints MB/s per run, the medians and, per tool, the ratio of
the audit's median to the tool's; target: the audit >= 0.8x the fastest tool present.

The second figure (``--what cost``) is the audit's cost to a concurrent staging job: staging
jobs (the engine's ``copy``, in this process, default ``EngineConfig``) of ``--job-files`` x
``--job-size`` files from the same store run back to back for ``--seconds``, alone and with the
audit running as a server runs it (``Auditor.tick`` every ``--tick-seconds``, 60 by default,
at the default throttle ``c.StagingApp.fixity_bytes_per_hour``, 20 GiB/h, starting in steady
state: one interval's budget at the first tick), interleaved over ``--rounds``. Before each
run every file of the store is dropped from the page cache (``posix_fadvise``: only this
benchmark's files), so both read the disk. Prints each run's staging rate and the ratio of the
medians; target: the job keeps >= 0.8x its rate with the audit running.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import update

from hera_stage_ext.app import StagingApp
from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.fixity import Auditor
from hera_stage_ext.catalogue.models import Instance
from hera_stage_ext.jobs import EngineConfig, create_stage_job, get_job, run_pending
from hera_stage_ext.standard_kinds import standard_kinds

TARGET = 0.8
#: The audit's default throttle (bytes per hour) and interval, as a server has them.
DEFAULT_RATE = StagingApp.class_traits()["fixity_bytes_per_hour"].default_value
DEFAULT_TICK = StagingApp.class_traits()["fixity_check_seconds"].default_value


def reference_tools() -> dict[str, list[str]]:
    tools = {}
    if shutil.which("xxh3sum"):
        tools["xxh3sum"] = ["xxh3sum"]
    elif shutil.which("xxhsum"):
        tools["xxhsum -H3"] = ["xxhsum", "-H3"]
    tools["md5sum"] = ["md5sum"]
    return tools


def make_store(root: Path, files: int, size: int, small: int) -> list[tuple[str, int]]:
    made = []
    block = os.urandom(1 << 20)
    for i in range(files):
        path = root / "big" / f"file{i:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n] if i % 2 else os.urandom(n))
                left -= n
        made.append((str(path.relative_to(root)), size))
    for i in range(small):
        path = root / "small" / f"{i // 100:02d}" / f"s{i:05d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(16 * 1024))
        made.append((str(path.relative_to(root)), 16 * 1024))
    return made


def make_files(root: Path, files: list[tuple[str, int]]) -> None:
    for rel, size in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n


def run_tool(argv: list[str], paths: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(paths), 500):
        subprocess.run([*argv, *paths[i:i + 500]], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_audit(db: Database) -> float:
    with db.write() as s:
        s.execute(update(Instance).values(verified_at=None, fixity="unchecked"))
    auditor = Auditor(db, 1e18, batch=1000)
    auditor.budget = float("inf")  # unthrottled: measure the checking itself
    start = time.perf_counter()
    found = auditor.tick()
    elapsed = time.perf_counter() - start
    assert all(f.state == "ok" for f in found), [f for f in found if f.state != "ok"][:3]
    return elapsed


def uncache(root: Path) -> None:
    """Drop this benchmark's files (and only them) from the page cache."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class AuditLoop:
    """The audit as a server runs it: ``tick`` every ``interval`` seconds, in a thread."""

    def __init__(self, db: Database, bytes_per_hour: float, interval: float) -> None:
        self.auditor = Auditor(db, bytes_per_hour)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.auditor.tick()
            self._stop.wait(self.interval)

    def __enter__(self) -> AuditLoop:
        # Steady state: the first tick finds one interval's budget, as every later one does.
        self.auditor.budget = self.auditor.rate * self.interval
        self.auditor._last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stage_for(db: Database, names: list[str], workspace: Path, seconds: float,
              config: EngineConfig) -> tuple[int, float]:
    """Staging jobs of ``names`` back to back for ``seconds``: (bytes staged, seconds the jobs
    took; each job's destination is removed before the next, untimed)."""
    staged, spent, k = 0, 0.0, 0
    while spent < seconds:
        dest = workspace / f"job{k}"
        start = time.perf_counter()
        job = create_stage_job(db, "bench", names, str(dest), "copy", [str(workspace)])
        run_pending(db, config)
        spent += time.perf_counter() - start
        done = get_job(db, job["id"])
        assert done["state"] == "succeeded", done["error"]
        staged += done["bytes_done"]
        shutil.rmtree(dest)
        k += 1
    return staged, spent


def cost_to_staging(db: Database, store: Path, job_names: list[str], workspace: Path,
                    args: argparse.Namespace) -> bool:
    """The second figure: a staging job's rate alone and with the audit running."""
    config = EngineConfig(kinds=standard_kinds())
    print(f"\nstaging {len(job_names)} x {args.job_size / 2**20:.0f} MiB per job for "
          f"{args.seconds:g} s per run; audit at {args.bytes_per_hour / 2**30:g} GiB/h, a tick "
          f"every {args.tick_seconds:g} s")
    rates: dict[str, list[float]] = {"alone": [], "with audit": []}
    for r in range(args.rounds):
        order = ["alone", "with audit"] if r % 2 == 0 else ["with audit", "alone"]
        for name in order:
            uncache(store)
            if name == "alone":
                staged, spent = stage_for(db, job_names, workspace, args.seconds, config)
                audited = 0
            else:
                with AuditLoop(db, args.bytes_per_hour, args.tick_seconds) as loop:
                    staged, spent = stage_for(db, job_names, workspace, args.seconds, config)
                audited = loop.auditor.bytes_read
            rates[name].append(staged / spent)
            print(f"round {r + 1}  {name:10s} {staged / spent / 1e6:9.1f} MB/s staged"
                  + (f"  (audit read {audited / 1e6:.0f} MB)" if name != "alone" else ""))
    alone = statistics.median(rates["alone"])
    audited_rate = statistics.median(rates["with audit"])
    ratio = audited_rate / alone
    print(f"median  alone {alone / 1e6:.1f} MB/s, with the audit {audited_rate / 1e6:.1f} MB/s")
    ok = ratio >= TARGET
    print(f"{'PASS' if ok else 'FAIL'} staging keeps >= {TARGET}x its rate with the audit "
          f"running: {ratio:.2f}x")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("throughput", "cost", "both"), default="both",
                   help="the audit's throughput, its cost to staging, or both")
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--size", type=int, default=32 << 20)
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--job-files", type=int, default=20, help="files each staging job copies")
    p.add_argument("--job-size", type=int, default=64 << 20)
    p.add_argument("--seconds", type=float, default=120.0,
                   help="how long each staging run lasts (jobs back to back)")
    p.add_argument("--tick-seconds", type=float, default=DEFAULT_TICK)
    p.add_argument("--bytes-per-hour", type=float, default=DEFAULT_RATE)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fixity-bench-", dir=args.dir))
    try:
        store = tmp / "store"
        made = make_store(store, args.files, args.size, args.small)
        job_files = [(f"job/j{i:04d}.dat", args.job_size) for i in range(args.job_files)]
        if args.what != "throughput":
            make_files(store, job_files)
        total = sum(size for _, size in made)
        db = Database(f"sqlite:///{tmp / 'catalogue.sqlite'}")
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores({"bench": {"path": str(store)}})
        specs = []
        registered = made + (job_files if args.what != "throughput" else [])
        for rel, _ in registered:
            digest = ck.hash_path(store / rel)
            specs.append(FileSpec(name=rel.replace("/", "_"), size=digest.size,
                                  checksums=digest.checksums))
        catalogue.register(specs, store="bench", paths=[rel for rel, _ in registered])
        if args.what == "cost":
            workspace = tmp / "workspace"
            workspace.mkdir()
            ok = cost_to_staging(db, store, [rel.replace("/", "_") for rel, _ in job_files],
                                 workspace, args)
            db.dispose()
            return 0 if ok else 1
        paths = [str(store / rel) for rel, _ in made]
        tools = reference_tools()
        print(f"{len(made)} files, {total / 1e6:.0f} MB; reference tools: {', '.join(tools)}"
              f"{'' if len(tools) > 1 else ' (no xxh3sum/xxhsum installed)'}")
        times: dict[str, list[float]] = {"audit": [], **{t: [] for t in tools}}
        for r in range(args.rounds):
            order = ["audit", *tools] if r % 2 == 0 else [*tools, "audit"]
            for name in order:
                t = run_audit(db) if name == "audit" else run_tool(tools[name], paths)
                times[name].append(t)
                print(f"round {r + 1}  {name:12s} {total / t / 1e6:9.1f} MB/s")
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print()
        for name, t in med.items():
            print(f"median  {name:12s} {total / t / 1e6:9.1f} MB/s  {len(made) / t:9.0f} files/s")
        fastest = min((t, name) for name, t in med.items() if name != "audit")
        ratio = fastest[0] / med["audit"]
        for name in tools:
            print(f"audit / {name}: {med[name] / med['audit']:.2f}x")
        ok = ratio >= TARGET
        print(f"{'PASS' if ok else 'FAIL'} audit >= {TARGET}x the fastest tool ({fastest[1]}): "
              f"{ratio:.2f}x")
        if args.what == "both":
            workspace = tmp / "workspace"
            workspace.mkdir()
            ok = cost_to_staging(db, store, [rel.replace("/", "_") for rel, _ in job_files],
                                 workspace, args) and ok
        db.dispose()
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
