"""Search benchmark: a 1,000,000-file catalogue, its ingest rate and REST search latency.

Builds a catalogue of HERA-style names (``zen.<night>.<5 digits>.<pol>.HH.uvh5``, about 1,000
files a night, two instances per file on two stores at ``<night>/<name>``) through
``Catalogue.register`` in ingest-sized batches (sizes and checksums are synthesized: nothing is
hashed), then starts a real ``jupyter server`` with the extension on that database and times
``POST <base_url>/hera-stage/api/search`` (limit 100) for five searches. Next to each REST figure
it prints the same searches timed in this process without HTTP: ``Catalogue.search`` (what the
handler calls: the SQL plus loading instances and building the JSON-ready dicts) and
``search.run_search`` alone (the SQL). Runs on SQLite and on a throwaway PostgreSQL cluster.

``--only SEARCH`` times some of the five searches only; ``--rest-alone`` times the REST requests
back to back and, on PostgreSQL without ``--compare-with``, also prints the CPU the database's
backends spend per request (from ``/proc``: the bench and the cluster on one machine).

Targets (issue 19): REST p50 <= 5 ms and p95 <= 15 ms for every search on both databases. A
missed target prints the query's plan (EXPLAIN QUERY PLAN / EXPLAIN ANALYZE). Exit status 0
when all pass.

    /path/to/venv/bin/python benchmarks/search_bench.py                  # 1,000,000 files, both
    /path/to/venv/bin/python benchmarks/search_bench.py --files 50000 --db sqlite --requests 100

The PostgreSQL cluster, the server and the temporary directory are removed on exit, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
import xxhash  # noqa: E402

from hera_stage_ext.catalogue import search as search_language  # noqa: E402
from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec  # noqa: E402
from hera_stage_ext.catalogue.db import Database  # noqa: E402
from hera_stage_ext.catalogue.ingest import BATCH_SIZE  # noqa: E402
from hera_stage_ext.catalogue.models import File  # noqa: E402
from hera_stage_ext.catalogue.naming import jd_to_gps  # noqa: E402
from tests.jupyter_process import jupyter_process  # noqa: E402

TARGET_P50_MS = 5.0
TARGET_P95_MS = 15.0
FIRST_NIGHT = 2458000
POLS = ("xx", "yy", "xy", "yx")
OBS_PER_NIGHT = 250  # x 4 polarisations = 1,000 files a night
STEP = 260  # 1e-5 day units between observations: 250 of them span .10000 - .74740
STORES = ("store-a", "store-b")
WARMUP = 20


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# The synthetic archive


def nights_for(files: int) -> int:
    return max(1, math.ceil(files / (OBS_PER_NIGHT * len(POLS))))


def file_name(index: int) -> str:
    night, rest = divmod(index, OBS_PER_NIGHT * len(POLS))
    obs, pol = divmod(rest, len(POLS))
    return f"zen.{FIRST_NIGHT + night}.{10000 + STEP * obs:05d}.{POLS[pol]}.HH.uvh5"


def file_spec(name: str) -> FileSpec:
    data = name.encode()
    return FileSpec(
        name=name,
        size=200_000_000 + xxhash.xxh64_intdigest(data) % 3_000_000_000,
        checksums={"md5": hashlib.md5(data).hexdigest(),
                   "xxh3-128": xxhash.xxh3_128_hexdigest(data)},
        source="search-bench",
    )


def night_of(name: str) -> str:
    return name.split(".")[1]


def night_obsid_range(night: int) -> list[int]:
    """Obsids of every observation of ``night`` (and nothing of the neighbouring nights)."""
    return [jd_to_gps(night + 0.1), jd_to_gps(night + (10000 + STEP * OBS_PER_NIGHT) / 1e5)]


@dataclass
class IngestResult:
    seconds: dict[str, float] = field(default_factory=dict)  # store -> time inside register
    wall: float = 0.0


def build(catalogue: Catalogue, files: int, batch: int) -> IngestResult:
    """Register the files batch by batch, each batch twice: on the first store (new files, their
    events, observations and sessions, first instances) and then on the second (a second
    instance of known files), as an archive does when each night's data is copied on arrival.
    Only the time inside Catalogue.register is counted."""
    result = IngestResult(seconds=dict.fromkeys(STORES, 0.0))
    start = last = time.perf_counter()
    done = 0
    for first in range(0, files, batch):
        names = [file_name(i) for i in range(first, min(files, first + batch))]
        paths = [f"{night_of(n)}/{n}" for n in names]
        for store in STORES:
            specs = [file_spec(n) for n in names]
            t0 = time.perf_counter()
            registered = catalogue.register(specs, store, paths)
            result.seconds[store] += time.perf_counter() - t0
            assert all(r.instance_added for r in registered), "unexpected existing instance"
        done += len(names)
        now = time.perf_counter()
        if now - last >= 15 or done == files:
            last = now
            a, b = (result.seconds[s] for s in STORES)
            log(f"    {done:>9,} / {files:,} files  {done / (a + b):>7,.0f} files/s in register "
                f"(new file + 1st instance {done / a:>7,.0f}/s, 2nd instance {done / b:>7,.0f}/s)")
    result.wall = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------
# The searches


@dataclass
class Query:
    key: str
    label: str
    make: Callable[[random.Random], Any]  # -> one search (parameters vary per request)
    expect_full_page: bool = True


def queries(files: int) -> list[Query]:
    last_index = files - 1

    def any_night(rnd: random.Random) -> int:
        # Nights that are complete (the last one may be partial with --files).
        full = max(1, files // (OBS_PER_NIGHT * len(POLS)))
        return FIRST_NIGHT + rnd.randrange(full)

    def any_name(rnd: random.Random) -> str:
        return file_name(rnd.randint(0, last_index))

    def nested_or(rnd: random.Random) -> dict[str, Any]:
        return {"or": {
            "name-is-exactly": any_name(rnd),
            "name-matches": f"zen.{any_night(rnd)}.%",
            "obsid-in-range": night_obsid_range(any_night(rnd)),
        }}

    return [
        Query("exact", "exact name",
              lambda rnd: {"name-is-exactly": any_name(rnd)}, expect_full_page=False),
        Query("prefix", "name prefix",
              lambda rnd: {"name-matches": f"zen.{any_night(rnd)}.%"}),
        Query("obsid", "obsid range (1 night)",
              lambda rnd: {"obsid-in-range": night_obsid_range(any_night(rnd))}),
        Query("or", "nested or of 3 clauses", nested_or),
        Query("ninst", "num-instances > 1",
              lambda rnd: {"num-instances-greater-than": 1}),
    ]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timing:
    rest: list[float] = field(default_factory=list)
    core: list[float] = field(default_factory=list)
    sql: list[float] = field(default_factory=list)
    compared: list[float] = field(default_factory=list)  # REST of the --compare-with server
    differing: int = 0  # requests whose reply differed from the compared server's
    cpu: dict[str, float] = field(default_factory=dict)  # server -> CPU seconds per request

    def p(self, which: str, q: float) -> float:
        return percentile(getattr(self, which), q) * 1000


@dataclass
class Server:
    url: str  # of POST search
    token: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads), from /proc: on a
        busy machine a steadier measure of the server's own cost than the latency."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(db: Database) -> dict[int, float]:
    """CPU time so far of each PostgreSQL backend connected to the bench's database (but the one
    asking), by pid, from /proc: what the database spends on the searches, which the server's
    CPU column does not count."""
    with db.engine.connect() as connection:
        pids = connection.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()").scalars().all()
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone, or not on this machine
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


class Client:
    """POSTs searches to the servers and returns each reply's body. ``http`` (the default): one
    keep-alive ``http.client`` connection per server, timed from the request to the reply's
    last byte, the reply decoded after the clock stops; ``requests``: ``requests.Session``
    with the reply decoded inside the timed call (what sessions 8-10 measured, about 1 ms a
    100-file page of the client's own CPU: ``requests`` itself and ``json`` decoding)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._session = requests.Session() if kind == "requests" else None
        self._connections: dict[str, http.client.HTTPConnection] = {}

    def post(self, to: Server, body: dict[str, Any]) -> tuple[int, bytes]:
        if self._session is not None:
            reply = self._session.post(to.url, json=body,
                                       headers={"Authorization": f"token {to.token}"})
            reply.json()
            return reply.status_code, reply.content
        url = urlsplit(to.url)
        connection = self._connections.get(to.url)
        if connection is None:
            connection = self._connections[to.url] = http.client.HTTPConnection(url.netloc)
        connection.request("POST", url.path, json.dumps(body).encode(),
                           {"Authorization": f"token {to.token}",
                            "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        for connection in self._connections.values():
            connection.close()


def time_queries(
    db: Database, catalogue: Catalogue, http_client: Client, server: Server, files: int,
    n_requests: int, compared: Server | None = None, rest_alone: bool = False,
    only: list[str] | None = None,
) -> dict[str, Timing]:
    """Per search: REST, Catalogue.search and run_search (and REST of the ``compared`` server),
    interleaved request by request (rotating which goes first) so that they see the same
    machine; each reply of ``compared`` is checked byte for byte against ``server``'s. With
    ``rest_alone``, only the REST requests are timed, back to back."""
    out: dict[str, Timing] = {}
    for query in queries(files):
        if only and query.key not in only:
            continue
        rnd = random.Random(f"{query.key}-{files}")
        searches = [query.make(rnd) for _ in range(WARMUP + n_requests)]
        bodies: dict[str, bytes] = {}

        def post(which: str, to: Server, search: Any) -> bytes:
            status, body = http_client.post(to, {"search": search, "limit": 100})
            if status != 200:
                raise RuntimeError(f"{query.label}: HTTP {status}: {body[:500]!r}")
            bodies[which] = body
            return body

        def rest(search: Any) -> bytes:
            return post("rest", server, search)

        def rest_compared(search: Any) -> bytes:
            assert compared is not None
            return post("compared", compared, search)

        def core(search: Any) -> dict[str, Any]:
            return catalogue.search("files", search, limit=100)

        def sql(search: Any) -> list[str]:
            with db.read() as s:
                rows = search_language.run_search(s, "files", search, limit=100).rows
                return [f.name for f in rows]

        # Sanity: the three agree, and the search finds what it should.
        first = searches[0]
        names_rest = [r["name"] for r in json.loads(rest(first))["results"]]
        names_core = [r["name"] for r in core(first)["results"]]
        names_sql = sql(first)
        if not names_rest == names_core == names_sql:
            raise RuntimeError(f"{query.label}: REST and in-process results differ")
        if not names_rest or (query.expect_full_page and len(names_rest) != 100):
            raise RuntimeError(f"{query.label}: {len(names_rest)} results for {first}")

        timing = Timing()
        runners = [("rest", rest)]
        if not rest_alone:
            runners += [("core", core), ("sql", sql)]
        if compared is not None:
            runners.append(("compared", rest_compared))
        servers = {"rest": server} if compared is None else {"rest": server, "compared": compared}
        cpu_before = {which: s.cpu_seconds() for which, s in servers.items()}
        # The backends' CPU per request means something only when the server is alone in using
        # the database (no in-process search, no second server).
        backends = (backend_cpu_seconds(db) if rest_alone and compared is None
                    and db.engine.dialect.name == "postgresql" else None)
        for i, search in enumerate(searches):
            turn = i % len(runners)
            for which, run in runners[turn:] + runners[:turn]:
                t0 = time.perf_counter()
                run(search)
                elapsed = time.perf_counter() - t0
                if i >= WARMUP:
                    getattr(timing, which).append(elapsed)
            if compared is not None and bodies["rest"] != bodies["compared"]:
                timing.differing += 1
        timing.cpu = {which: (s.cpu_seconds() - cpu_before[which]) / len(searches)
                      for which, s in servers.items()}
        if backends is not None:
            timing.cpu["backends"] = sum(
                cpu - backends.get(pid, 0.0) for pid, cpu in backend_cpu_seconds(db).items()
            ) / len(searches)
        out[query.key] = timing
        log(f"    {query.label:<24} REST p50 {timing.p('rest', .5):6.1f} ms  "
            f"p95 {timing.p('rest', .95):6.1f} ms  server CPU {timing.cpu['rest'] * 1000:.2f} ms"
            + ("" if backends is None else
               f"  PostgreSQL backends' CPU {timing.cpu['backends'] * 1000:.2f} ms")
            + ("" if compared is None else
               f"  | compared p50 {timing.p('compared', .5):6.1f} ms  "
               f"p95 {timing.p('compared', .95):6.1f} ms  server CPU "
               f"{timing.cpu['compared'] * 1000:.2f} ms, {timing.differing} replies differ"))
    return out


# ---------------------------------------------------------------------------------------------
# Plans of slow searches


def explain(db: Database, search: Any) -> str:
    """The plan of the search's page query (default sort: name), as run_search builds it."""
    with db.read() as s:
        stmt = (
            search_language.search_select(s, "files", search)
            .order_by(File.name.asc())
            .limit(101)
        )
        sql = str(stmt.compile(dialect=s.get_bind().dialect,
                               compile_kwargs={"literal_binds": True}))
        if db.backend == "sqlite":
            rows = s.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            plan = "\n".join(f"      {'  ' * _depth(rows, r)}{r[3]}" for r in rows)
        else:
            rows = s.connection().exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").all()
            plan = "\n".join(f"      {r[0]}" for r in rows)
    return f"      SQL: {' '.join(sql.split())}\n{plan}"


def _depth(rows: list[Any], row: Any) -> int:
    parents = {r[0]: r[1] for r in rows}
    depth, parent = 0, row[1]
    while parent:
        depth += 1
        parent = parents.get(parent, 0)
    return depth


# ---------------------------------------------------------------------------------------------
# Server, cluster, clean-up


@contextlib.contextmanager
def jupyter_server(
    workdir: Path, db_url: str, stores: dict[str, Any], code: Path | None = None
) -> Iterator[Server]:
    """A real ``jupyter server`` with the extension on ``db_url`` (the extension's code from
    the checkout ``code`` when given); yields its search URL and token."""
    workdir.mkdir(parents=True, exist_ok=True)
    # No fixity audit: the stores hold no files, so it would mark copies missing (changing the
    # replies, and using CPU) while the searches are timed.
    config = {"StagingApp": {"db_url": db_url, "stores": stores, "fixity_bytes_per_hour": 0}}
    env = None if code is None else {
        "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with jupyter_process(workdir, root_dir=workdir, config=config, env=env) as server:
        yield Server(f"{server.url}hera-stage/api/search", server.token, server.pid)


@contextlib.contextmanager
def postgres_cluster(reuse: Path | None = None) -> Iterator[Any]:
    """A throwaway cluster; with ``reuse``, one kept in ``reuse/pg-cluster`` across runs (made
    on the first run, started again on the next ones, stopped but not deleted on exit)."""
    from tests.pgcluster import PostgresCluster

    cluster = PostgresCluster()
    if reuse is not None:
        shutil.rmtree(cluster.dir, ignore_errors=True)
        cluster.dir = reuse / "pg-cluster"
        cluster.data = cluster.dir / "data"
        if not (cluster.data / "PG_VERSION").exists():
            shutil.rmtree(cluster.dir, ignore_errors=True)
            cluster.dir.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(cluster.dir, "postgres", "postgres")
            os.chmod(cluster.dir, 0o700)
            cluster.start()
        else:
            cluster._options = (  # as PostgresCluster.start sets them, on a new port
                f"-c listen_addresses=127.0.0.1 -c port={cluster.port} "
                f"-c unix_socket_directories={cluster.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
            cluster._run(cluster.bin_dir / "pg_ctl", "-D", cluster.data, "-l",
                          cluster.dir / "log", "-o", cluster._options, "-w", "start")
        try:
            yield cluster
        finally:
            cluster._run(cluster.bin_dir / "pg_ctl", "-D", cluster.data, "-m", "fast", "stop")
        return
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        except Exception as exc:  # e.g. Ctrl-C reached the postmaster first
            log(f"stopping PostgreSQL: {exc}")
            shutil.rmtree(cluster.dir, ignore_errors=True)


def reused_database(cluster: Any) -> str:
    """The URL of the bench's database in a kept cluster, created when missing."""
    import psycopg

    with psycopg.connect(cluster.superuser_conninfo(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'search_bench'").fetchone() \
                is None:
            conn.execute('CREATE DATABASE "search_bench"')
    return cluster.url("search_bench")


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------------------------
# One database


@dataclass
class DbResult:
    backend: str
    files: int
    ingest: IngestResult
    timings: dict[str, Timing]
    build_seconds: float
    plans: dict[str, str] = field(default_factory=dict)


def bench_database(
    backend: str, url: str, workdir: Path, args: argparse.Namespace
) -> DbResult:
    log(f"\n== {backend}: {url}")
    stores = {}
    for name in STORES:
        (workdir / name).mkdir(parents=True, exist_ok=True)
        stores[name] = {"path": str(workdir / name)}
    db = Database(url)
    try:
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores(stores)
        built = workdir / f"built-{args.files}-{args.batch}.json"
        if args.reuse is not None and built.exists():
            saved = json.loads(built.read_text())
            ingest = IngestResult(saved["seconds"], saved["wall"])
            build_seconds = saved["build_seconds"]
            log(f"  reusing the {args.files:,}-file catalogue built earlier in {workdir}")
        else:
            if args.reuse is not None and catalogue.counts().get("files"):
                raise SystemExit(f"{workdir} holds another catalogue: give another --reuse")
            log(f"  building {args.files:,} files x {len(STORES)} instances over "
                f"{nights_for(args.files):,} nights (batches of {args.batch})")
            t0 = time.perf_counter()
            ingest = build(catalogue, args.files, args.batch)
            if backend == "postgresql":
                # What autovacuum does on its own shortly after a bulk load; done here so that
                # the timings do not depend on when it happens to run.
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.exec_driver_sql("VACUUM ANALYZE")
            build_seconds = time.perf_counter() - t0
            if args.reuse is not None:
                built.write_text(json.dumps({"seconds": ingest.seconds, "wall": ingest.wall,
                                             "build_seconds": build_seconds}))
        counts = catalogue.counts()
        log(f"  built in {build_seconds:.0f} s: {counts}")
        log(f"  starting jupyter server; {args.requests} requests per search after "
            f"{WARMUP} warm-up")
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(jupyter_server(workdir / "server", url, stores, REPO))
            compared = None if args.compare_with is None else stack.enter_context(
                jupyter_server(workdir / "server-compared", url, stores, args.compare_with))
            client = Client(args.client)
            stack.callback(client.close)
            timings = time_queries(db, catalogue, client, server, args.files, args.requests,
                                   compared, args.rest_alone, args.only)
        result = DbResult(backend, args.files, ingest, timings, build_seconds)
        for query in queries(args.files):
            t = timings.get(query.key)
            if t is None:  # left out by --only
                continue
            if t.p("rest", .5) > TARGET_P50_MS or t.p("rest", .95) > TARGET_P95_MS:
                result.plans[query.key] = explain(db, query.make(random.Random(query.key)))
        return result
    finally:
        db.dispose()


# ---------------------------------------------------------------------------------------------
# Report


def report(results: list[DbResult], args: argparse.Namespace) -> bool:
    log("\n" + "=" * 100)
    log(f"Catalogue: {args.files:,} files, {len(STORES)} instances each; "
        f"{args.requests} requests per search, limit 100; times in ms")
    log("\nIngest through Catalogue.register "
        f"(batches of {args.batch}; time inside register only)")
    for r in results:
        a, b = (r.ingest.seconds[s] for s in STORES)
        log(f"  {r.backend:<10} new files + 1st instance: {r.files / a:>8,.0f} files/s  "
            f"| 2nd instance: {r.files / b:>8,.0f} files/s  "
            f"| both passes: {r.files / (a + b):>8,.0f} files/s  "
            f"(build incl. synthesis: {r.build_seconds:.0f} s)")
    log("")
    header = (f"{'database':<10} {'search':<24} | {'REST p50':>8} {'p95':>6} | "
              f"{'core p50':>8} {'p95':>6} | {'SQL p50':>8} {'p95':>6} | {'HTTP+JSON p50':>13} "
              f"| {'server CPU':>10}")
    log(header)
    log("-" * len(header))
    labels = {q.key: q.label for q in queries(args.files)}
    for r in results:
        for key, t in r.timings.items():
            log(f"{r.backend:<10} {labels[key]:<24} | {t.p('rest', .5):8.1f} "
                f"{t.p('rest', .95):6.1f} | {t.p('core', .5):8.1f} {t.p('core', .95):6.1f} | "
                f"{t.p('sql', .5):8.1f} {t.p('sql', .95):6.1f} | "
                f"{t.p('rest', .5) - t.p('core', .5):+12.1f}  | {t.cpu['rest'] * 1000:10.2f}")
    log("  REST = POST /hera-stage/api/search through a real jupyter server "
        f"({'requests.Session, reply decoded in the timed call' if args.client == 'requests' else 'http.client, keep-alive, timed to the last byte'}); "
        "server CPU = the server process's CPU time per request;")
    for r in results:
        backends = {key: t.cpu["backends"] for key, t in r.timings.items() if "backends" in t.cpu}
        if backends:
            log(f"  {r.backend}: its backends' CPU per request (--rest-alone): " + ", ".join(
                f"{labels[key]} {cpu * 1000:.2f} ms" for key, cpu in backends.items()))
    log("  core = Catalogue.search in this process (SQL + instances + dicts, no HTTP/JSON); "
        "SQL = search.run_search alone.")
    if args.compare_with is not None:
        log(f"\nThe same requests to a server running {args.compare_with} (interleaved):")
        for r in results:
            for key, t in r.timings.items():
                log(f"{r.backend:<10} {labels[key]:<24} | REST p50 {t.p('rest', .5):6.1f} "
                    f"p95 {t.p('rest', .95):6.1f} CPU {t.cpu['rest'] * 1000:5.2f} | compared "
                    f"p50 {t.p('compared', .5):6.1f} p95 {t.p('compared', .95):6.1f} CPU "
                    f"{t.cpu['compared'] * 1000:5.2f} | replies differing: {t.differing} of "
                    f"{WARMUP + args.requests}")
    plans = [(r.backend, key, plan) for r in results for key, plan in r.plans.items()]
    if plans:
        log("\nPlans of the searches that missed a target:")
        timings = {(r.backend, key): t for r in results for key, t in r.timings.items()}
        for backend, key, plan in plans:
            t = timings[backend, key]
            rest, core, sql = t.p("rest", .5), t.p("core", .5), t.p("sql", .5)
            log(f"  {backend} / {labels[key]}: REST p50 {rest:.1f} ms = SQL (run_search) "
                f"{sql:.1f} + rest of Catalogue.search {core - sql:.1f} + HTTP/JSON "
                f"{rest - core:.1f}\n{plan}")
    log("")
    ok = True
    for r in results:
        for key, t in r.timings.items():
            p50, p95 = t.p("rest", .5), t.p("rest", .95)
            for name, value, target in (("p50", p50, TARGET_P50_MS), ("p95", p95, TARGET_P95_MS)):
                passed = value <= target
                ok &= passed
                log(f"{'PASS' if passed else 'FAIL'}  {r.backend:<10} {labels[key]:<24} "
                    f"REST {name} {value:6.1f} ms <= {target:.0f} ms")
    if args.compare_with is not None:
        differing = sum(t.differing for r in results for t in r.timings.values())
        ok &= differing == 0
        log(f"{'PASS' if differing == 0 else 'FAIL'}  every reply the same, byte for byte, as "
            f"{args.compare_with}'s ({differing} differ)")
    log(f"{'PASS' if ok else 'FAIL'}  all searches on {', '.join(r.backend for r in results)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000, help="files in the catalogue")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per search")
    parser.add_argument("--batch", type=int, default=BATCH_SIZE,
                        help="files per Catalogue.register call (default: ingest's batch)")
    parser.add_argument("--reuse", type=Path, metavar="DIR",
                        help="keep the catalogues (and the PostgreSQL cluster) in DIR and reuse "
                             "them on the next run with the same --files and --batch")
    parser.add_argument("--client", choices=("http", "requests"), default="http",
                        help="the REST client timed: http.client to the reply's last byte "
                             "(default), or requests.Session with the reply decoded inside the "
                             "timed call (as sessions 8-10 measured)")
    parser.add_argument("--compare-with", type=Path, metavar="CHECKOUT",
                        help="also time a second server running the extension from CHECKOUT "
                             "(e.g. a worktree of main), request by request with this one, and "
                             "check that every reply is the same, byte for byte")
    parser.add_argument("--rest-alone", action="store_true",
                        help="time only the REST requests, back to back (no in-process search "
                             "between two of them, which leaves the server's caches cold); the "
                             "core and SQL columns are then empty")
    parser.add_argument("--only", action="append", metavar="SEARCH",
                        choices=[q.key for q in queries(1000)],
                        help="time only this search (repeatable): "
                             + ", ".join(q.key for q in queries(1000)))
    args = parser.parse_args(argv)
    if args.files < 1000 or args.requests < 1 or args.batch < 1:
        parser.error("--files must be at least 1000, --requests and --batch at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if args.reuse is not None:
        workdir = args.reuse.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)  # the kept cluster's owner (postgres) goes through it
    else:
        workdir = Path(tempfile.mkdtemp(prefix="hera-search-bench-"))
    results: list[DbResult] = []
    started = time.perf_counter()
    try:
        for backend in backends:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'sqlite' / 'catalogue.sqlite'}"
                results.append(bench_database(backend, url, workdir / "sqlite", args))
            else:
                with postgres_cluster(args.reuse and workdir) as cluster:
                    url = (cluster.create_database() if args.reuse is None
                           else reused_database(cluster))
                    results.append(bench_database(backend, url, workdir / "pg", args))
        ok = report(results, args)
        log(f"(total {time.perf_counter() - started:.0f} s)")
        return 0 if ok else 1
    except KeyboardInterrupt:
        log("\ninterrupted; cleaning up")
        return 130
    finally:
        if args.reuse is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
