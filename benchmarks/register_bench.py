"""Register benchmark: files/s through ``Catalogue.register`` and ingest, on SQLite and PostgreSQL.

Each case gets a fresh catalogue (a SQLite file; a new database in a throwaway PostgreSQL cluster
on a loopback port: ``tests/pgcluster.py``) and times, from the batches made (outside the time)
to the last one registered, ``Catalogue.register_batches`` (a bulk caller's way: the next batch
checked while one is written) in batches of ingest's size (``ingest.BATCH_SIZE``), or on a tree
without it (a baseline) one ``Catalogue.register`` a batch:

- ``new``: ``--files`` HERA-style names (``zen.<JD>.<5 digits>.<pol>.HH.uvh5``, 1,000 a night, so
  the namer makes their observations and sessions) registered with an instance on store A:
  what ingest, an upload and a transfer's receiver write (a file row, an instance, one event row
  for its two events: ``catalogue/file_events``);
- ``2nd``: the same files with a second instance on store B (known files: same-content checks);
- ``again``: the same calls as ``new`` once more (idempotent: nothing is written);

and end to end, ``ingest``: ``Ingester.ingest`` of ``--ingest-files`` files of 4 KiB in 100
folders of a store (glob, plan, hash, register; the files are written once, before the cases).

Beside each rate: files per CPU second of this process and (PostgreSQL) the server processes of
its connections (``/proc/<pid>/stat``): the cost of the work whatever else runs on the machine,
and what a quiet machine's wall rate approaches; on PostgreSQL also the server's share of it
(``server%``: what no change to our Python can win back), and the CPU microseconds a file of
each side (``client-us``: this process; ``server-us``: the backends).

With ``--baseline DIR`` (another checkout, e.g. ``/work/main``) every case also runs with that
tree's code, in interleaved pairs (ours, baseline; baseline, ours; ...), each case in a
subprocess of its own with the tree first on ``PYTHONPATH``; the table shows the medians and the
ratio. Target: ``new`` >= 30,000 files/s on each database (issue 19), a PASS/FAIL line each.
Exit status 0 when every target passes.

    /path/to/venv/bin/python benchmarks/register_bench.py                    # both databases
    /path/to/venv/bin/python benchmarks/register_bench.py --baseline /work/main --pairs 3
    /path/to/venv/bin/python benchmarks/register_bench.py --db sqlite --files 20000

The PostgreSQL cluster and the temporary directory are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_FILES_PER_S = 30_000
PHASES = ("new", "2nd", "again", "ingest")
#: Per phase: files/s of wall time, files per CPU second, the PostgreSQL server's share of it,
#: CPU microseconds a file of this process (the client) and of the server's backends.
SUFFIXES = ("", "-cpu", "-server%", "-client-us", "-server-us")
POLS = ("xx", "yy", "xy", "yx")
FIRST_NIGHT = 2458000
OBS_PER_NIGHT = 250  # x 4 polarisations = 1,000 files a night
STEP = 260  # 1e-5 day units between observations


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# One case, in a subprocess whose PYTHONPATH starts with the tree being measured


def file_name(index: int) -> str:
    night, rest = divmod(index, OBS_PER_NIGHT * len(POLS))
    obs, pol = divmod(rest, len(POLS))
    return f"zen.{FIRST_NIGHT + night}.{10000 + STEP * obs:05d}.{POLS[pol]}.HH.uvh5"


def run_case(url: str, workdir: Path, files: int, batch: int, ingest_dir: str) -> dict[str, Any]:
    """Time the phases on a fresh catalogue at ``url``; files/s of each."""
    import xxhash

    from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
    from hera_stage_ext.catalogue.db import Database
    from hera_stage_ext.catalogue.ingest import BATCH_SIZE, Ingester

    batch = batch or BATCH_SIZE
    stores = {name: {"path": str(workdir / name)} for name in ("store-a", "store-b")}
    for spec in stores.values():
        Path(spec["path"]).mkdir(parents=True, exist_ok=True)
    if ingest_dir:
        stores["store-c"] = {"path": ingest_dir}
    db = Database(url)
    try:
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores(stores)
        names = [file_name(i) for i in range(files)]
        sums = {n: {"xxh3-128": xxhash.xxh3_128_hexdigest(n.encode()),
                    "md5": hashlib.md5(n.encode()).hexdigest()} for n in names}

        def register(phase: str, store: str) -> None:
            batches = []
            for first in range(0, files, batch):
                chunk = names[first:first + batch]
                batches.append((
                    [FileSpec(name=n, size=4096 + i, checksums=dict(sums[n]), source="bench")
                     for i, n in enumerate(chunk, first)],
                    [f"{n.split('.')[1]}/{n}" for n in chunk]))
            server = -server_cpu(db)
            c0, t0 = time.process_time(), time.perf_counter()
            if hasattr(catalogue, "register_batches"):  # a bulk caller's way, where it exists
                for outcomes in catalogue.register_batches(batches, store):
                    assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            else:
                for specs, paths in batches:
                    catalogue.register(specs, store, paths)
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - c0
            server += server_cpu(db)
            out[phase], out[f"{phase}-cpu"] = files / seconds, files / (cpu + server)
            out[f"{phase}-client-us"] = 1e6 * cpu / files
            if db.backend == "postgresql":
                out[f"{phase}-server%"] = 100 * server / (cpu + server)
                out[f"{phase}-server-us"] = 1e6 * server / files

        out: dict[str, float] = {}
        register("new", "store-a")
        register("2nd", "store-b")
        register("again", "store-a")
        counts = catalogue.counts()
        assert counts["files"] == files and counts["instances"] == 2 * files, counts
        if ingest_dir:
            c0, s0, t0 = time.process_time(), server_cpu(db), time.perf_counter()
            report = Ingester(catalogue).ingest("store-c", ["*/*"])
            seconds = time.perf_counter() - t0
            cpu, server = time.process_time() - c0, server_cpu(db) - s0
            assert report.registered == report.matched and not report.errors, report.to_json()
            out["ingest"] = report.registered / seconds
            out["ingest-cpu"] = report.registered / (cpu + server)
            out["ingest-client-us"] = 1e6 * cpu / report.registered
            if db.backend == "postgresql":
                out["ingest-server%"] = 100 * server / (cpu + server)
                out["ingest-server-us"] = 1e6 * server / report.registered
        return out
    finally:
        db.dispose()


_backend_cpu: dict[int, float] = {}  # PostgreSQL backend pid -> CPU seconds when last read


def server_cpu(db: Any) -> float:
    """CPU seconds used so far by the PostgreSQL server processes of ``db``'s connections
    (``/proc/<pid>/stat``: utime + stime; 0 on SQLite, which works in this process): with this
    process's own, the cost of the work whatever else runs on the machine."""
    if db.backend != "postgresql":
        return 0.0
    with db.engine.connect() as c:
        pids = [row[0] for row in c.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            _backend_cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    return sum(_backend_cpu.values())


def make_ingest_tree(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ingest.{i:07d}.dat").write_bytes(i.to_bytes(8, "little") * 512)


# ---------------------------------------------------------------------------------------------
# The driver


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Any]:
    sys.path.insert(0, str(REPO))
    from tests.pgcluster import PostgresCluster

    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        except Exception as exc:  # e.g. Ctrl-C reached the postmaster first
            log(f"stopping PostgreSQL: {exc}")
            shutil.rmtree(cluster.dir, ignore_errors=True)


def one_case(tree: Path, url: str, workdir: Path, args: argparse.Namespace,
             ingest_dir: str) -> dict[str, float]:
    """Run a case in a subprocess with ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, __file__, "--case", url, "--workdir", str(workdir),
         "--files", str(args.files), "--batch", str(args.batch), "--ingest-dir", ingest_dir],
        env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case with {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(backend: str, new_url: Any, tmp: Path, trees: dict[str, Path],
          args: argparse.Namespace, ingest_root: Path) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        side: {f"{p}{suffix}": [] for p in PHASES for suffix in SUFFIXES}
        for side in trees}
    order = list(trees)
    for pair in range(args.pairs):
        for side in order if pair % 2 == 0 else order[::-1]:
            n = sum(len(v["new"]) for v in results.values())
            workdir = tmp / f"{backend}-{n}"
            ingest_dir = ""
            if args.ingest_files:
                ingest_dir = str(tmp / f"ingest-{backend}-{n}")
                shutil.copytree(ingest_root, ingest_dir, copy_function=os.link)
            got = one_case(trees[side], new_url(workdir), workdir, args, ingest_dir)
            line = "  ".join(f"{p} {got[p]:>7,.0f} ({got[p + '-cpu']:>7,.0f} cpu"
                             + (f", server {got[p + '-server%']:.0f}%" if p + "-server%" in got
                                else "")
                             + f"; us/file client {got[p + '-client-us']:.1f}"
                             + (f" server {got[p + '-server-us']:.1f}" if p + "-server-us" in got
                                else "") + ")"
                             for p in PHASES if p in got)
            log(f"  {backend:<10} {side:<8} pair {pair + 1}: {line}  files/s")
            for phase, rate in got.items():
                results[side][phase].append(rate)
            shutil.rmtree(workdir, ignore_errors=True)
            if ingest_dir:
                shutil.rmtree(ingest_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=0,
                        help="files per register call (default: ingest's BATCH_SIZE)")
    parser.add_argument("--ingest-files", type=int, default=20_000,
                        help="4 KiB files for the end-to-end ingest (0: skip it)")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--pairs", type=int, default=1,
                        help="interleaved runs per side (the median is reported)")
    parser.add_argument("--dir", type=Path, help="where the temporary directory goes")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ingest-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.workdir, args.files, args.batch,
                                  args.ingest_dir)))
        return 0

    signal.signal(signal.SIGTERM, lambda signum, _f: (_ for _ in ()).throw(
        KeyboardInterrupt(f"signal {signum}")))
    trees = {"ours": REPO}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    backends = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    tmp = Path(tempfile.mkdtemp(prefix="register-bench-", dir=args.dir))
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    try:
        ingest_root = tmp / "ingest-files"
        if args.ingest_files:
            make_ingest_tree(ingest_root, args.ingest_files)
        log(f"{args.files:,} files registered per phase, batches of "
            f"{args.batch or 'ingest size'}; ingest of {args.ingest_files:,} x 4 KiB; "
            f"{args.pairs} pair(s)")
        for backend in backends:
            if backend == "sqlite":
                results[backend] = bench(backend, lambda w: f"sqlite:///{w}/catalogue.sqlite",
                                         tmp, trees, args, ingest_root)
            else:
                with postgres_cluster() as cluster:
                    results[backend] = bench(backend, lambda _w: cluster.create_database(),
                                             tmp, trees, args, ingest_root)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    log("\nmedian files/s (time inside Catalogue.register_batches, or register; ingest end to "
        "end); 'cpu': files per CPU second of this process and its PostgreSQL backends (what a "
        "quiet machine's wall rate approaches); 'server%': the backends' share of those CPU "
        "seconds; '-us': CPU microseconds a file of this process ('client') and of the "
        "backends ('server')")
    header = f"  {'database':<11}{'phase':<17}" + "".join(f"{side:>12}" for side in trees)
    log(header + ("       ratio" if args.baseline else ""))
    ok = True
    for backend, sides in results.items():
        for phase in [f"{p}{suffix}" for p in PHASES for suffix in SUFFIXES]:
            if not sides["ours"].get(phase):
                continue
            medians = {side: statistics.median(v[phase]) for side, v in sides.items()}
            unit = "%" if phase.endswith("%") else ""
            digits = 1 if phase.endswith("-us") else 0
            line = f"  {backend:<11}{phase:<17}" + "".join(
                f"{m:>11,.{digits}f}{unit or ' '}" for m in medians.values())
            if args.baseline:
                line += f"{medians['ours'] / medians['baseline']:>11.2f}x"
            log(line)
    for backend, sides in results.items():
        rate = statistics.median(sides["ours"]["new"])
        cpu = statistics.median(sides["ours"]["new-cpu"])
        client_us = statistics.median(sides["ours"]["new-client-us"])
        server = sides["ours"]["new-server-us"]
        passed = rate >= TARGET_FILES_PER_S
        ok &= passed
        log(f"{'PASS' if passed else 'FAIL'}: register on {backend}: {rate:,.0f} files/s "
            f"(target >= {TARGET_FILES_PER_S:,}; {cpu:,.0f} files per CPU second; CPU a file: "
            f"client {client_us:.1f} us"
            + (f", server {statistics.median(server):.1f} us" if server else "") + ")")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
