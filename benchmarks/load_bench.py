"""Load benchmark: 50 concurrent clients searching and polling job status while a large staging
job runs, against one real Jupyter server, loopback only.

Writes a store of large files (default 960 x 8 MiB), registers 50,000 more catalogue rows
(synthetic, as in search_bench.py) so the searches have a catalogue to search, starts a real
``jupyter server`` with the extension (tests/jupyter_process.py; its own worker with the
production settings: 4 streams, fsync, xxh3-128 verification) and ingests the store. After one
uncounted warm-up run, ``--rounds`` times (default 2):

1. **alone**: the staging job of every file of the store, nothing else running;
2. **loaded**: the same job into another folder while ``--clients`` threads (default 50) each
   loop: a search (``POST search``, limit 50, one of five kinds of search with varying
   parameters) or a status poll of the running job (``GET jobs/<id>``), alternately, each
   followed by a random pause of ``--think`` seconds on average (0.5: a panel polling twice as
   often as the real one). Every request's latency and answer are recorded until the job ends;

and a last run **alone** (A-B-A-B-A: the machine's own drift, and its swings from one run to the
next, weigh on both sides; the ratio compares the medians).

Throughput is the job's bytes over its own ``started_at``..``finished_at`` (the worker's time),
read the same way for both runs. Latencies are measured in the client threads, so they include
the client's own scheduling on the same (2-core) machine.

Site mode (``--site``): the clients talk to a site service without a hub instead (``hera-stage
site`` on the same catalogue and stores, ``benchmarks/site_service.py``), with a user's site
token, and the staging job is run by that user's worker over HTTP (``--site-url``, started as a
user's server in site mode starts it, woken at each launch as that server wakes it).

Targets: p95 latency of search and of status < 200 ms, zero errors (a non-2xx answer or a
failed request), the loaded job >= 0.8x the unloaded job's throughput (single-user mode; with
``--site`` the ratio is printed only: the site service's targets are the latencies and the
errors). Exit status 0 when all pass.

    /path/to/venv/bin/python benchmarks/load_bench.py                    # SQLite, about 4 min
    /path/to/venv/bin/python benchmarks/load_bench.py --db postgresql
    /path/to/venv/bin/python benchmarks/load_bench.py --quick            # 40 x 8 MiB, 10,000 rows
    /path/to/venv/bin/python benchmarks/load_bench.py --site             # the site service

Bounded: every run stops after ``--max-seconds`` (default 600) whatever happens, and the
clients stop when the job ends. The server, its worker, the PostgreSQL cluster and the
temporary directory are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests

from benchmarks.search_bench import FIRST_NIGHT, STORES, build, percentile
from benchmarks.site_service import site_service, user_worker
from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.jobs.worker import WAKE_SIGNAL
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


#: The PostgreSQL server's pid (its postmaster) while the benchmark's cluster runs.
postgres_pid: int | None = None


@contextlib.contextmanager
def database_url(kind: str, workdir: Path) -> Iterator[str]:
    global postgres_pid
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'catalogue.sqlite'}"
        return
    from tests.pgcluster import PostgresCluster

    cluster = PostgresCluster().start()
    try:
        url = cluster.create_database()
        postgres_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        yield url
    finally:
        postgres_pid = None
        cluster.stop()


def postgres_cpu_seconds() -> float:
    """CPU time of the PostgreSQL cluster so far: its server process, the backends that ended
    (added to the server's children times when reaped) and the running ones. 0 on SQLite."""
    if postgres_pid is None:
        return 0.0
    with open(f"/proc/{postgres_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    for child in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (child / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == postgres_pid:
                ticks += int(stat[11]) + int(stat[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ms: float, error: str | None) -> None:
        with self.lock:
            (self.search_ms if kind == "search" else self.status_ms).append(ms)
            if error is not None:
                self.errors.append(f"{kind}: {error}")


def client(server: JupyterProcess, job_id: int, kinds: list[tuple[str, Any]], think: float,
           stop: threading.Event, samples: Samples, seed: int) -> None:
    """One client: keep-alive HTTP/1.1 with the token. ``http.client`` rather than ``requests``:
    the clients share the 2-core machine with the server and the worker, and ``requests`` spent
    about 2.5 ms of CPU per request here, a quarter of a core for 50 clients that would run on
    other machines in real use. The server sees the same requests either way."""
    rnd = random.Random(seed)
    parsed = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Authorization": f"token {server.token}", "Content-Type": "application/json"}
    base = f"{parsed.path}hera-stage/api/"
    turn = rnd.randrange(2)
    stop.wait(rnd.uniform(0, think))  # the clients do not start in step
    while not stop.is_set():
        kind = "search" if turn % 2 == 0 else "status"
        turn += 1
        error = None
        began = time.perf_counter()
        try:
            if kind == "search":
                body = json.dumps({"search": rnd.choice(kinds)[1](rnd), "limit": 50})
                connection.request("POST", base + "search", body, headers)
            else:
                connection.request("GET", base + f"jobs/{job_id}", headers=headers)
            reply = connection.getresponse()
            text = reply.read()
            if reply.status >= 300:
                error = f"HTTP {reply.status}: {text[:200]!r}"
            else:
                json.loads(text)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = repr(exc)
            connection.close()  # reconnects on the next request
        samples.add(kind, (time.perf_counter() - began) * 1000, error)
        stop.wait(rnd.uniform(0, 2 * think))
    connection.close()


# ---------------------------------------------------------------------------------------------
# Runs


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.rstrip("Z"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reclaimed_directly_mb() -> float:
    """Memory the kernel has reclaimed so far inside processes' own allocations (direct
    reclaim, /proc/vmstat ``pgsteal_direct``, MB): CPU time the writer pays when the page cache
    has filled up, which makes runs unequal."""
    with open("/proc/vmstat") as f:
        pages = sum(int(line.split()[1]) for line in f if line.startswith("pgsteal_direct"))
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def stage(server: JupyterProcess, destination: str) -> int:
    # Absolute: a site service takes only a destination a user's server resolved.
    reply = server.request("POST", "hera-stage/api/stage", {
        "search": {"name-matches": "zen.24590%"}, "destination": str(server.root_dir /
                                                                      destination)})
    reply.raise_for_status()
    job_id = int(reply.json()["id"])
    wake = getattr(server, "wake", None)  # (a site's user worker: as her server wakes it)
    if wake is not None:
        wake()
    return job_id


def throughput(job: dict[str, Any]) -> tuple[float, float]:
    """(MB/s, seconds) of the job, over its own started_at..finished_at."""
    seconds = (_time(job["finished_at"]) - _time(job["started_at"])).total_seconds()
    return job["bytes_total"] / seconds / 1e6, seconds


def worker_pid(job: dict[str, Any]) -> int:
    """The pid of the worker that ran ``job`` (its id is ``host:pid:random``)."""
    return int(str(job["worker_id"]).split(":")[1])


@dataclass
class Phase:
    """One staging run: the job's reply and the CPU seconds each process spent meanwhile."""

    job: dict[str, Any]
    wall_s: float
    # "server", "worker", "clients" (this process: the client threads), "postgres" (the whole
    # cluster, 0 on SQLite)
    cpu_s: dict[str, float]
    reclaimed_mb: float  # direct reclaim meanwhile (``reclaimed_directly_mb``)


def staged_run(server: JupyterProcess, destination: str, deadline: float,
               during: Any = None) -> Phase:
    """Stage the store into ``destination``, with ``during(job_id)`` (a context manager: the
    clients) running meanwhile; then delete the copies so that the next run finds the same free
    space and memory (every run does the same, A-B-A stays symmetric)."""
    before = {"server": cpu_seconds(server.pid), "clients": time.process_time(),
              "postgres": postgres_cpu_seconds()}
    reclaimed = reclaimed_directly_mb()
    wall = time.monotonic()
    job_id = stage(server, destination)
    worker = None
    with during(job_id) if during else contextlib.nullcontext():
        while worker is None:  # the worker claims the job within a second or so
            job = server.api(f"jobs/{job_id}")
            if job["worker_id"]:
                worker = worker_pid(job)
                before["worker"] = cpu_seconds(worker)
            else:
                time.sleep(0.05)
        worker_cpu = before["worker"]
        while True:
            with contextlib.suppress(OSError):  # the worker may leave right after the job
                worker_cpu = cpu_seconds(worker)
            job = server.api(f"jobs/{job_id}")
            if job["finished_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still running at the time limit")
            time.sleep(0.2)
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
    wall_s = time.monotonic() - wall
    reclaimed = reclaimed_directly_mb() - reclaimed
    cpu = {"server": cpu_seconds(server.pid) - before["server"],
           "worker": worker_cpu - before["worker"],
           "clients": time.process_time() - before["clients"],
           "postgres": postgres_cpu_seconds() - before["postgres"]}
    shutil.rmtree(server.root_dir / destination)
    return Phase(job, wall_s, cpu, reclaimed)


@contextlib.contextmanager
def clients(args: argparse.Namespace, server: JupyterProcess, job_id: int,
            samples: Samples) -> Iterator[None]:
    """``args.clients`` client threads polling ``job_id`` and searching, stopped on exit."""
    stop, kinds = threading.Event(), searches(args.rows)
    threads = [threading.Thread(target=client, daemon=True, args=(
        server, job_id, kinds, args.think, stop, samples, k)) for k in range(args.clients)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(35)


def serial_cpu(server: JupyterProcess, job_id: int, rows: int, n: int) -> dict[str, float]:
    """The server's CPU milliseconds per request of each route, one request at a time (no
    contention: the route's own cost), after a warm-up."""
    session = requests.Session()
    session.headers["Authorization"] = f"token {server.token}"
    base = f"{server.url}hera-stage/api/"
    kinds, rnd = searches(rows), random.Random(0)
    routes = {
        "search": lambda: session.post(base + "search", timeout=30, json={
            "search": rnd.choice(kinds)[1](rnd), "limit": 50}),
        "status": lambda: session.get(base + f"jobs/{job_id}", timeout=30),
    }
    out = {}
    for name, call in routes.items():
        for k in range(n // 5 + n):
            if k == n // 5:
                before = cpu_seconds(server.pid)
            call().raise_for_status()
        out[name] = (cpu_seconds(server.pid) - before) / n * 1000
    session.close()
    return out


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
        with contextlib.ExitStack() as stack:
            if args.site:
                server = stack.enter_context(site_service(workdir / "site", db_url, stores,
                                                          workspace))
                pid = stack.enter_context(user_worker(server, [workspace],
                                                      workdir / "site" / "worker.log"))
                server.wake = lambda: os.kill(pid, WAKE_SIGNAL)  # type: ignore[attr-defined]
            else:
                server = stack.enter_context(jupyter_process(
                    workdir / "jupyter", root_dir=workspace, config=config))
            log("ingesting the store (checksums) ...")
            # 8 GB to hash: longer than a request's usual 30 s on a busy machine.
            server.request("POST", "hera-stage/api/ingest", {
                "store": BENCH_STORE, "globs": ["*/*"]}, timeout=args.max_seconds).raise_for_status()
            # A first run writes into memory the machine has not used lately, slower than the
            # runs after it (each of which reuses what the previous one's deletion freed).
            log("staging once to warm up (not counted) ...")
            staged_run(server, "warm-up", deadline)
            samples = Samples()
            phases: list[tuple[str, Phase]] = []
            serial: dict[str, float] = {}
            # Alone and loaded runs alternate (A-B-A-B-...-A): a machine whose speed drifts,
            # or swings from run to run, weighs on both sides alike.
            for k in range(args.rounds):
                log(f"staging alone ({k + 1} of {args.rounds + 1}) ...")
                phases.append(("alone", staged_run(server, f"alone-{k}", deadline)))
                if not serial:
                    log(f"server CPU per request, one request at a time ({args.serial} of each)"
                        " ...")
                    serial = serial_cpu(server, phases[0][1].job["id"], args.rows, args.serial)
                log(f"staging with {args.clients} clients searching and polling "
                    f"({k + 1} of {args.rounds}) ...")
                phases.append(("loaded", staged_run(
                    server, f"loaded-{k}", deadline,
                    lambda job_id: clients(args, server, job_id, samples))))
            log(f"staging alone ({args.rounds + 1} of {args.rounds + 1}) ...")
            phases.append(("alone", staged_run(server, f"alone-{args.rounds}", deadline)))
    return report(args, samples, serial, phases)


def report(args: argparse.Namespace, samples: Samples, serial: dict[str, float],
           phases: list[tuple[str, Phase]]) -> bool:
    where = "the site service, the user's worker over HTTP" if args.site else "single-user"
    rates = {kind: [throughput(p.job)[0] for k, p in phases if k == kind]
             for kind in ("alone", "loaded")}
    ratio = statistics.median(rates["loaded"]) / statistics.median(rates["alone"])
    loaded_phases = [p for k, p in phases if k == "loaded"]
    loaded_wall = sum(p.wall_s for p in loaded_phases)
    loaded_cpu = {name: sum(p.cpu_s[name] for p in loaded_phases)
                  for name in loaded_phases[0].cpu_s}
    job = loaded_phases[0].job
    log("")
    log(f"{args.db}, {where}: job of {job['files_total']} files, "
        f"{job['bytes_total'] / 1e6:,.0f} MB; "
        f"{args.clients} clients, think {args.think} s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    log(f"{'':<10} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'server CPU ms/request alone':>28}")
    for name, ms in (("search", samples.search_ms), ("status", samples.status_ms)):
        log(f"{name:<10} {len(ms):>9} {percentile(ms, 0.5):>8.1f} {percentile(ms, 0.95):>8.1f} "
            f"{max(ms):>8.1f} {serial[name]:>28.2f}")
    requests_made = len(samples.search_ms) + len(samples.status_ms)
    log(f"loaded: {requests_made / loaded_wall:.0f} requests/s; server "
        f"{loaded_cpu['server'] / max(requests_made, 1) * 1000:.1f} ms CPU per request; "
        f"clients {loaded_cpu['clients'] / max(requests_made, 1) * 1000:.1f} ms")
    log(f"errors     {len(samples.errors)}")
    for error in samples.errors[:10]:
        log(f"    {error}")
    log(f"{'staging':<16} {'MB/s':>8} {'job s':>6} {'CPU cores used: worker':>23} "
        f"{'server':>7} {'clients':>8} {'postgres':>9} {'direct reclaim MB':>18}")
    for name, phase in phases:
        rate, seconds = throughput(phase.job)
        cores = {k: v / phase.wall_s for k, v in phase.cpu_s.items()}
        log(f"{name:<16} {rate:>8.1f} {seconds:>6.1f} {cores['worker']:>23.2f} "
            f"{cores['server']:>7.2f} {cores['clients']:>8.2f} {cores['postgres']:>9.2f} "
            f"{phase.reclaimed_mb:>18,.0f}")
    log(f"ratio: median of loaded / median of alone: {ratio:.2f}")
    log("")
    checks = [
        (percentile(samples.search_ms, 0.95) < TARGET_P95_MS,
         f"search p95 {percentile(samples.search_ms, 0.95):.1f} ms < {TARGET_P95_MS:.0f} ms"),
        (percentile(samples.status_ms, 0.95) < TARGET_P95_MS,
         f"status p95 {percentile(samples.status_ms, 0.95):.1f} ms < {TARGET_P95_MS:.0f} ms"),
        (not samples.errors, f"errors {len(samples.errors)} == 0"),
    ]
    if not args.site:
        checks.append((ratio >= TARGET_RATIO,
                       f"staging throughput loaded/alone {ratio:.2f} >= {TARGET_RATIO}"))
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
    parser.add_argument("--files", type=int, default=960, help="files in the staged store")
    parser.add_argument("--size-mib", type=int, default=8, help="size of each, MiB")
    parser.add_argument("--rows", type=int, default=50_000, help="extra catalogue rows")
    parser.add_argument("--serial", type=int, default=200,
                        help="requests of each route timed one at a time for their server CPU")
    parser.add_argument("--rounds", type=int, default=2,
                        help="loaded runs, each between two runs alone")
    parser.add_argument("--quick", action="store_true", help="40 files, 10,000 rows")
    parser.add_argument("--site", action="store_true",
                        help="the clients against a site service (no hub, a site token), the "
                        "job run by the user's worker over HTTP")
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
