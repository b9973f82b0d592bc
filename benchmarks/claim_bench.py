"""The worker API's item claims, timed: the site service's CPU and the wall time per claim of N
items, in-process (``WorkerOps.exchange``) and through HTTP (a real ``hera-stage site`` on a
loopback port, the user's ``HttpJobStore``), on SQLite.

Each round makes a fresh stage job of ``--items`` small-file items for the token's user, claims
the job and then exchanges every batch's results for the next batch (as a stream does), with
``--first`` items for the first claims of ``--streams`` streams at once (threads, as a run's
streams start) and ``--batch`` items after. This process's garbage collector is set as a
worker's (``quiet_garbage_collector``). Printed: the first claims' wall times (when each
answered, from the start), then per item: the service's CPU (``/proc`` for the service process,
``process_time`` in-process) and the worker's.

    python benchmarks/claim_bench.py                # 20,000 items, first 1,024, then 4,096
    python benchmarks/claim_bench.py --rounds 5 --items 8192
    python benchmarks/claim_bench.py --log-bytes 85  # with a log line per item, as a run's
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import insert  # noqa: E402

from benchmarks.site_service import site_service  # noqa: E402
from hera_stage_ext.catalogue.db import Database  # noqa: E402
from hera_stage_ext.jobs.http_store import HttpJobStore  # noqa: E402
from hera_stage_ext.jobs.items import id_runs  # noqa: E402
from hera_stage_ext.jobs.models import JOB_ITEM_TABLE, JOB_TABLE  # noqa: E402
from hera_stage_ext.jobs.worker import quiet_garbage_collector  # noqa: E402
from hera_stage_ext.site.worker_ops import WorkerOps  # noqa: E402

USER = "bench"
SUMS = {"md5": "0" * 32, "xxh3-128": "f" * 32}


def make_job(db: Database, workspace: Path, n: int) -> int:
    with db.write() as s:
        c = s.connection()
        job_id = c.execute(insert(JOB_TABLE).values(
            owner=USER, kind="stage", state="queued", destination=str(workspace / "dest"),
            method="hardlink", options={}, missing=[], files_total=n, bytes_total=4096 * n,
            log_path=str(workspace / "job.log")).returning(JOB_TABLE.c.id)).scalar_one()
        c.execute(insert(JOB_ITEM_TABLE), [
            {"job_id": job_id, "name": f"zen.2459{i:06d}.sum.uvh5", "store": "store",
             "source_path": f"/data/store/small/d{i // 1000:03d}/zen.2459{i:06d}.sum.uvh5",
             "dest_path": f"small/d{i // 1000:03d}/zen.2459{i:06d}.sum.uvh5", "size": 4096,
             "is_directory": False, "checksums": SUMS, "state": "queued", "attempts": 0}
            for i in range(n)])
    return int(job_id)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(claim: Any, exchange: Any, streams: int, first: int, batch: int
          ) -> tuple[list[float], int]:
    """Streams claiming ``first`` then exchanging for ``batch`` until none is left; the first
    claims' answer times (s from the start) and the items claimed."""
    start = time.perf_counter()
    answered: list[float] = []
    total = [0]
    lock = threading.Lock()

    def stream() -> None:
        got = claim(first)
        with lock:
            answered.append(time.perf_counter() - start)
        while got:
            with lock:
                total[0] += len(got)
            got = exchange(got, batch)

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(answered), total[0]


def in_process(db: Database, workspace: Path, args: argparse.Namespace) -> None:
    """The service's side alone: ``WorkerOps`` and the answer's text (each call's CPU from
    ``thread_time``; the answer decoded outside it, as the worker would)."""
    ops = WorkerOps(db, USER)
    job_id = make_job(db, workspace, args.items)
    ops.claim({"worker_id": "w"})
    spent = [0.0]
    lock = threading.Lock()

    def answer(call: Any, body: dict[str, Any]) -> list[Any]:
        cpu = time.thread_time()
        reply = call(job_id, {"worker_id": "w", **body})
        text = reply if isinstance(reply, str) else json.dumps(reply)
        cpu = time.thread_time() - cpu
        with lock:
            spent[0] += cpu
        return list(json.loads(text)["items"])

    def claim(n: int) -> list[Any]:
        return answer(ops.claim_items, {"n": n})

    def exchange(got: list[Any], n: int) -> list[Any]:
        # The results as the worker sends them (``HttpJobStore``): error-free ones by id runs.
        runs = [list(run) for run in id_runs(row[0] for row in got)]
        return answer(ops.exchange, {"n": n, "runs": {"done": runs}})

    wall = time.perf_counter()
    firsts, total = drive(claim, exchange, args.streams, args.first, args.batch)
    wall = time.perf_counter() - wall
    print(f"  in-process: {total:,} items, wall {wall * 1e3:.0f} ms, service CPU "
          f"{spent[0] / total * 1e6:.1f} us/item; first claims answered at "
          f"{', '.join(f'{t * 1e3:.0f}' for t in firsts)} ms")


def over_http(service: Any, db: Database, workspace: Path, args: argparse.Namespace) -> None:
    store = HttpJobStore(service.url, service.token, spool_dir=workspace / "spool")
    job_id = make_job(db, workspace, args.items)
    assert store.claim_job("w", 30.0) == (job_id, False)
    # The run's log, shipped as a run ships it (with the item calls, and by its shipper).
    job = store.load_job(job_id)
    joblog = store.log(job)
    line = "2026-12-07T00:00:00.000Z  hardlink small/d000/zen.2459000000.sum.uvh5 {}\n"

    def claim(n: int) -> list[Any]:
        return store.claim_items(job_id, "w", n)

    def exchange(got: list[Any], n: int) -> list[Any]:
        if args.log_bytes:  # each item's line, appended as a copy helper appends its lines
            text = "".join(line.format("x" * max(0, args.log_bytes - len(line)))
                           for _ in got)
            with open(joblog.path, "a") as f:
                f.write(text)
        return store.exchange(job_id, "w", [(c, "done", "") for c in got], n)

    service_cpu = proc_cpu(service.pid)
    cpu = time.process_time()
    wall = time.perf_counter()
    firsts, total = drive(claim, exchange, args.streams, args.first, args.batch)
    wall = time.perf_counter() - wall
    store.close_log(job, joblog)  # the last lines (a run's go with its finish)
    cpu = time.process_time() - cpu
    service_cpu = proc_cpu(service.pid) - service_cpu
    store.close()
    print(f"  HTTP: {total:,} items, wall {wall * 1e3:.0f} ms, service CPU "
          f"{service_cpu / total * 1e6:.1f} us/item, worker CPU {cpu / total * 1e6:.1f} us/item;"
          f" first claims answered at {', '.join(f'{t * 1e3:.0f}' for t in firsts)} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--first", type=int, default=1024, help="items of a first claim")
    parser.add_argument("--batch", type=int, default=4096, help="items of later claims")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-http", action="store_true", help="in-process only")
    parser.add_argument("--log-bytes", type=int, default=0,
                        help="through HTTP: a log line of about this many bytes per item, "
                        "shipped as a run ships its log (a small-file run's are about 85)")
    args = parser.parse_args(argv)
    quiet_garbage_collector()  # as the worker's (and the service's) own
    with tempfile.TemporaryDirectory(prefix="hera-claim-bench-") as tmp:
        workdir = Path(tmp)
        workspace = workdir / "workspace"
        workspace.mkdir()
        url = f"sqlite:///{workdir / 'catalogue.sqlite'}"
        with contextlib.ExitStack() as stack:
            service = None
            if not args.no_http:
                service = stack.enter_context(site_service(workdir / "site", url, {}, workspace,
                                                           user=USER))
            db = Database(url)
            db.upgrade()
            for r in range(args.rounds):
                print(f"round {r + 1}")
                in_process(db, workspace, args)
                if service is not None:
                    over_http(service, db, workspace, args)
            db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
