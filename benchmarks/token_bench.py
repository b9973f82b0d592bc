"""Site token benchmark: what looking a site token up costs the site service on every request.

A site service without a hub (``hera-stage site``) checks each request's token in the
catalogue (``site/tokens.lookup``: one indexed read of the ``site_token`` table on a bare
connection, no cache, so a revoke takes effect on the next request of every replica). This
times ``--lookups`` lookups of one issued token in a fresh catalogue (a SQLite file; a new
database in a throwaway PostgreSQL cluster on a loopback port: ``tests/pgcluster.py``), called
directly and through the event loop's thread pool as the service calls it, and prints the
wall time and this process's CPU time per lookup. (On PostgreSQL the server's share comes on
top: one indexed read.)

    /path/to/venv/bin/python benchmarks/token_bench.py                 # both databases
    /path/to/venv/bin/python benchmarks/token_bench.py --db sqlite --lookups 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hera_stage_ext.catalogue.db import Database  # noqa: E402
from hera_stage_ext.site import tokens  # noqa: E402


def timed(n: int, call: Callable[[], object]) -> tuple[float, float]:
    """Microseconds of wall and of this process's CPU per call, over ``n`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    return ((time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6)


def through_the_loop(n: int, db: Database, token: str) -> tuple[float, float]:
    """As the service calls it: awaited on the event loop, run in the thread pool."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            await loop.run_in_executor(None, tokens.lookup, db, token)

    return timed(1, lambda: asyncio.run(run()))


def bench(label: str, url: str, n: int) -> None:
    db = Database(url)
    try:
        db.upgrade()
        token, _ = tokens.issue(db, "alice", ["read"])
        assert tokens.lookup(db, token) is not None
        timed(min(n, 500), lambda: tokens.lookup(db, token))  # warm: connections, statement
        direct = timed(n, lambda: tokens.lookup(db, token))
        looped = [value / n for value in through_the_loop(n, db, token)]
        print(f"{label:<11} direct {direct[0]:7.0f} us wall {direct[1]:6.0f} us CPU | "
              f"through the thread pool {looped[0]:7.0f} us wall {looped[1]:6.0f} us CPU")
    finally:
        db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--lookups", type=int, default=5000)
    args = parser.parse_args()
    print(f"{args.lookups} lookups of one site token, per lookup:")
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as work:
            bench("sqlite", f"sqlite:///{work}/catalogue.sqlite", args.lookups)
    if args.db in ("postgresql", "both"):
        from tests.pgcluster import PostgresCluster

        cluster = PostgresCluster().start()
        try:
            bench("postgresql", cluster.create_database(), args.lookups)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
