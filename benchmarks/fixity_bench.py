"""Fixity audit throughput next to the command-line checksum tools on the same files.

Makes a store of files (``--files`` x ``--size`` bytes, default 40 x 32 MiB, plus 2,000 x 16 KiB
small ones), registers them in a throwaway SQLite catalogue, then times in interleaved pairs
(``--rounds``, default 3): the audit (``fixity.Auditor.tick`` with an unlimited budget, every
instance marked unchecked before each run; it hashes with xxh3-128, the catalogue's preferred
algorithm) and each reference tool present on the machine over the same files: ``xxh3sum`` (or
``xxhsum -H3``) when installed, and ``md5sum`` (coreutils, always there). The files stay in the
page cache across runs (every run reads them warm), so this compares the hashing and the
per-file overhead, not the disk. Prints MB/s per run, the medians and, per tool, the ratio of
the audit's median to the tool's; target: the audit >= 0.8x the fastest tool present.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import update

from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.fixity import Auditor
from hera_stage_ext.catalogue.models import Instance

TARGET = 0.8


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--size", type=int, default=32 << 20)
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fixity-bench-", dir=args.dir))
    try:
        store = tmp / "store"
        made = make_store(store, args.files, args.size, args.small)
        total = sum(size for _, size in made)
        db = Database(f"sqlite:///{tmp / 'catalogue.sqlite'}")
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores({"bench": {"path": str(store)}})
        specs = []
        for rel, _ in made:
            digest = ck.hash_path(store / rel)
            specs.append(FileSpec(name=rel.replace("/", "_"), size=digest.size,
                                  checksums=digest.checksums))
        catalogue.register(specs, store="bench", paths=[rel for rel, _ in made])
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
        db.dispose()
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
