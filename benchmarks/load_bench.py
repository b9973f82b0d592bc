"""Load benchmark: 50 concurrent clients searching and polling job status while a large staging
job runs, against one real Jupyter server, loopback only.

Writes a store of large files (default 160 x 8 MiB), registers 50,000 more catalogue rows
(synthetic, as in search_bench.py) so the searches have a catalogue to search, starts a real
``jupyter server`` with the extension (tests/jupyter_process.py; its own worker with the
production settings: 4 streams, fsync, xxh3-128 verification) and ingests the store. Then:

1. **alone**: the staging job of every file of the store, nothing else running;
2. **loaded**: the same job into another folder while ``--clients`` threads (default 50) each
   loop: a search (``POST search``, limit 50, one of five kinds of search with varying
   parameters) or a status poll of the running job (``GET jobs/<id>``), alternately, each
   followed by a random pause of ``--think`` seconds on average (0.5: a panel polling twice as
   often as the real one). Every request's latency and answer are recorded until the job ends;
3. **alone** again, into a third folder (A-B-A: the machine's own drift shows up as a
   difference between the two unloaded runs, and the ratio uses their mean).

Throughput is the job's bytes over its own ``started_at``..``finished_at`` (the worker's time),
read the same way for both runs. Latencies are measured in the client threads, so they include
the client's own scheduling on the same (2-core) machine.

Targets: p95 latency of search and of status < 200 ms, zero errors (a non-2xx answer or a
failed request), the loaded job >= 0.8x the unloaded job's throughput. Exit status 0 when all
pass.

    /path/to/venv/bin/python benchmarks/load_bench.py                    # SQLite, about 2 min
    /path/to/venv/bin/python benchmarks/load_bench.py --db postgresql
    /path/to/venv/bin/python benchmarks/load_bench.py --quick            # 40 x 8 MiB, 10,000 rows

Bounded: every run stops after ``--max-seconds`` (default 600) whatever happens, and the
clients stop when the job ends. The server, its worker, the PostgreSQL cluster and the
temporary directory are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests

from benchmarks.search_bench import FIRST_NIGHT, STORES, build, percentile
from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from tests.jupyter_process import JupyterProcess, jupyter_process

TARGET_P95_MS = 200.0
TARGET_RATIO = 0.8
BENCH_STORE = "bench"
MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# The archive and the server


def write_store(store: Path, files: int, size: int) -> None:
    block = os.urandom(size)
    for k in range(files):
        night = store / str(2459000 + k % 4)
        night.mkdir(parents=True, exist_ok=True)
        # Different bytes per file (the first 8 bytes), one buffer written.
        (night / f"zen.{2459000 + k % 4}.{10000 + k:05d}.xx.HH.uvh5").write_bytes(
            k.to_bytes(8, "little") + block[8:])


@contextlib.contextmanager
def database_url(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'catalogue.sqlite'}"
        return
    from tests.pgcluster import PostgresCluster

    cluster = PostgresCluster().start()
    try:
        yield cluster.create_database()
    finally:
        cluster.stop()


def searches(rows: int) -> list[tuple[str, Any]]:
    """Five kinds of search, with parameters drawn per request."""
    nights = max(1, rows // 1000)

    def night(rnd: random.Random) -> int:
        return FIRST_NIGHT + rnd.randrange(nights)

    return [
        ("name prefix", lambda r: {"name-matches": f"zen.{night(r)}.1%"}),
        ("night and pol", lambda r: {"name-matches": f"zen.{night(r)}.%.{r.choice('xy')}x.HH.uvh5"}),
        ("size range", lambda r: {"size-in-range": sorted([r.randrange(2 * 10**8, 3 * 10**9),
                                                           r.randrange(2 * 10**8, 3 * 10**9)])}),
        ("or of names", lambda r: {"or": [{"name-matches": f"zen.{night(r)}.2%"},
                                          {"name-matches": f"zen.{night(r)}.3%"}]}),
        ("staged store", lambda r: {"name-matches": f"zen.{2459000 + r.randrange(4)}.%"}),
    ]


# ---------------------------------------------------------------------------------------------
# Clients


@dataclass
class Samples:
    search_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu_s: float = 0.0  # the server process's CPU time during the loaded run
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ms: float, error: str | None) -> None:
        with self.lock:
            (self.search_ms if kind == "search" else self.status_ms).append(ms)
            if error is not None:
                self.errors.append(f"{kind}: {error}")


def client(server: JupyterProcess, job_id: int, kinds: list[tuple[str, Any]], think: float,
           stop: threading.Event, samples: Samples, seed: int) -> None:
    rnd = random.Random(seed)
    session = requests.Session()
    session.headers["Authorization"] = f"token {server.token}"
    base = f"{server.url}hera-stage/api/"
    turn = rnd.randrange(2)
    stop.wait(rnd.uniform(0, think))  # the clients do not start in step
    while not stop.is_set():
        kind = "search" if turn % 2 == 0 else "status"
        turn += 1
        error = None
        began = time.perf_counter()
        try:
            if kind == "search":
                reply = session.post(base + "search", timeout=30, json={
                    "search": rnd.choice(kinds)[1](rnd), "limit": 50})
            else:
                reply = session.get(base + f"jobs/{job_id}", timeout=30)
            if reply.status_code >= 300:
                error = f"HTTP {reply.status_code}: {reply.text[:200]}"
            else:
                reply.json()
        except (requests.RequestException, ValueError) as exc:
            error = repr(exc)
        samples.add(kind, (time.perf_counter() - began) * 1000, error)
        stop.wait(rnd.uniform(0, 2 * think))
    session.close()


# ---------------------------------------------------------------------------------------------
# Runs


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.rstrip("Z"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage(server: JupyterProcess, destination: str) -> int:
    reply = server.request("POST", "hera-stage/api/stage", {
        "search": {"name-matches": "zen.24590%"}, "destination": destination})
    reply.raise_for_status()
    return int(reply.json()["id"])


def wait_job(server: JupyterProcess, job_id: int, deadline: float) -> dict[str, Any]:
    while True:
        job = server.api(f"jobs/{job_id}")
        if job["finished_at"] is not None:
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still running at the time limit")
        time.sleep(0.5)


def throughput(job: dict[str, Any]) -> tuple[float, float]:
    """(MB/s, seconds) of the job, over its own started_at..finished_at."""
    seconds = (_time(job["finished_at"]) - _time(job["started_at"])).total_seconds()
    return job["bytes_total"] / seconds / 1e6, seconds


def run(args: argparse.Namespace, workdir: Path) -> bool:
    deadline = time.monotonic() + args.max_seconds
    store, workspace = workdir / "store", workdir / "workspace"
    workspace.mkdir(parents=True)
    log(f"writing {args.files} files of {args.size_mib} MiB ...")
    write_store(store, args.files, args.size_mib * MiB)
    with database_url(args.db, workdir) as db_url:
        stores = {BENCH_STORE: {"path": str(store), "kind": "online"},
                  **{name: {"path": str(workdir / name), "kind": "online"} for name in STORES}}
        db = Database(db_url)
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores(stores)
        log(f"registering {args.rows:,} catalogue rows to search ...")
        build(catalogue, args.rows, 1000)
        if db.backend == "postgresql":
            # What autovacuum does on its own shortly after a bulk load (as search_bench.py).
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE")
        db.dispose()
        # The worker the server starts leaves soon after the last job (it outlives the server).
        config = {"StagingApp": {"db_url": db_url, "stores": stores,
                                 "allowed_roots": [str(workspace)],
                                 "worker_idle_exit_seconds": 3}}
        with jupyter_process(workdir / "jupyter", root_dir=workspace, config=config) as server:
            log("ingesting the store (checksums) ...")
            server.api("ingest", {"store": BENCH_STORE, "globs": ["*/*"]})
            log("staging alone ...")
            alone = [wait_job(server, stage(server, "alone-1"), deadline)]
            log(f"staging with {args.clients} clients searching and polling ...")
            samples, stop = Samples(), threading.Event()
            kinds = searches(args.rows)
            cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
            job_id = stage(server, "loaded")
            threads = [threading.Thread(target=client, daemon=True, args=(
                server, job_id, kinds, args.think, stop, samples, k))
                for k in range(args.clients)]
            for t in threads:
                t.start()
            try:
                loaded = wait_job(server, job_id, deadline)
            finally:
                stop.set()
                for t in threads:
                    t.join(35)
            samples.server_cpu_s = cpu_seconds(server.pid) - cpu_before
            samples.wall_s = time.monotonic() - wall_before
            log("staging alone again ...")
            alone.append(wait_job(server, stage(server, "alone-2"), deadline))
    return report(args, samples, alone, loaded)


def report(args: argparse.Namespace, samples: Samples, alone: list[dict[str, Any]],
           loaded: dict[str, Any]) -> bool:
    alone_runs = [throughput(job) for job in alone]
    rate_alone = sum(rate for rate, _ in alone_runs) / len(alone_runs)
    rate_loaded, s_loaded = throughput(loaded)
    ratio = rate_loaded / rate_alone
    log("")
    log(f"{args.db}: job of {loaded['files_total']} files, {loaded['bytes_total'] / 1e6:,.0f} MB; "
        f"{args.clients} clients, think {args.think} s")
    log(f"{'':<10} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, ms in (("search", samples.search_ms), ("status", samples.status_ms)):
        log(f"{name:<10} {len(ms):>9} {percentile(ms, 0.5):>8.1f} {percentile(ms, 0.95):>8.1f} "
            f"{max(ms):>8.1f}")
    requests_made = len(samples.search_ms) + len(samples.status_ms)
    log(f"server     {samples.server_cpu_s:.1f} CPU s in {samples.wall_s:.1f} s "
        f"({samples.server_cpu_s / samples.wall_s:.0%} of a core; "
        f"{samples.server_cpu_s / max(requests_made, 1) * 1000:.1f} ms per request); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    log(f"errors     {len(samples.errors)}")
    for error in samples.errors[:10]:
        log(f"    {error}")
    for k, (rate, seconds) in enumerate(alone_runs):
        log(f"staging alone   {rate:>8.1f} MB/s ({seconds:.1f} s){'  before' if k == 0 else '  after'}")
    log(f"staging loaded  {rate_loaded:>8.1f} MB/s ({s_loaded:.1f} s)  ratio {ratio:.2f} "
        f"(to the mean of the unloaded runs)")
    log("")
    checks = [
        (percentile(samples.search_ms, 0.95) < TARGET_P95_MS,
         f"search p95 {percentile(samples.search_ms, 0.95):.1f} ms < {TARGET_P95_MS:.0f} ms"),
        (percentile(samples.status_ms, 0.95) < TARGET_P95_MS,
         f"status p95 {percentile(samples.status_ms, 0.95):.1f} ms < {TARGET_P95_MS:.0f} ms"),
        (not samples.errors, f"errors {len(samples.errors)} == 0"),
        (ratio >= TARGET_RATIO, f"staging throughput loaded/alone {ratio:.2f} >= {TARGET_RATIO}"),
    ]
    for passed, text in checks:
        log(f"{'PASS' if passed else 'FAIL'}  {text}")
    return all(passed for passed, _ in checks)


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--think", type=float, default=0.5,
                        help="mean pause of a client between two requests, seconds")
    parser.add_argument("--files", type=int, default=160, help="files in the staged store")
    parser.add_argument("--size-mib", type=int, default=8, help="size of each, MiB")
    parser.add_argument("--rows", type=int, default=50_000, help="extra catalogue rows")
    parser.add_argument("--quick", action="store_true", help="40 files, 10,000 rows")
    parser.add_argument("--max-seconds", type=float, default=600,
                        help="give up (and fail) after this long")
    parser.add_argument("--dir", default=None, help="where the temporary directory goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.rows = 40, 10_000
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="hera-load-", dir=args.dir))
    try:
        return 0 if run(args, workdir) else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
