"""Transfer benchmark: a site-to-site transfer on loopback next to ``curl`` and ``rsync``.

Two real ``jupyter server`` processes with the extension: site A (the sender, whose own worker
process runs the transfer jobs, as in production) and site B (the receiver, which pulls the
bytes from A, verifies them and registers them in its catalogue). Both use SQLite. The data: one
large file (2 GiB) and 10,000 files of 4 KiB in 100 folders, registered at A.

Each set is moved four times, in the order reference, ours, ours, reference (each cell is the
better of its two runs; all are printed): the run after a reference pays for the disk writes the
reference left unsynced (the host's disk is slow for a few seconds after 2 GiB), so each tool
gets one run in that place and one after itself. With ``--pairs N`` (N >= 3), N interleaved
pairs instead (reference, ours; ours, reference; ...), and each cell is the median of its N
runs (issue 19's targets ask for the median of at least 3 pairs):

- the large file: ``curl`` downloads it from A's own file endpoint
  (``GET /hera-stage/api/files/<name>/content``, the same server and file) into B's directory
  (printed also with a ``sync -f`` of its file, which a verified transfer does and curl not);
  ours: ``POST /hera-stage/api/transfers`` at A, timed as the job (``started_at`` to
  ``finished_at``: announce, B's pull, B's verification and registration, A's record of the
  remote copy) and end to end (the request to the job's end as seen by polling);
- the small files: ``rsync -a`` from an rsync daemon on loopback serving A's store (printed also
  with a ``sync -f`` of what it wrote); ours as above.

Targets: at least 0.8x ``curl`` throughput on the large file (issue 6); at least 0.5x ``rsync``
files/s on the small files (issue 19). Exit status 0 when both pass. Each run of ours also prints
the CPU the three processes spent in it (A's server, A's worker with its helpers, B's server),
user and system apart, in seconds and per file: on a busy machine the clearer measure of the
per-file cost. ``--strace`` also counts B's system calls a file (``strace -f -c``; it slows B,
so those runs say what B asks of the kernel, not how fast it is); ``--profile DIR`` samples
the three with py-spy.

    /path/to/venv/bin/python benchmarks/transfer_bench.py            # full run
    /path/to/venv/bin/python benchmarks/transfer_bench.py --quick    # 256 MiB, 1,000 x 4 KiB

Needs ``curl`` and ``rsync`` (``apt-get install rsync``). The servers, the rsync daemon and the
temporary directory are removed on exit, Ctrl-C included (the directory left with ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
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
sys.path.insert(0, str(REPO))

from hera_stage_ext.catalogue.catalogue import Catalogue
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.ingest import Ingester
from hera_stage_ext.transfer.peers import hash_secret
from tests.jupyter_process import JupyterProcess, free_port, jupyter_process

TARGET_LARGE = 0.8
TARGET_SMALL = 0.5
MiB = 1 << 20
SECRET_AB = "bench-a-to-b-" + "k" * 40
SECRET_BA = "bench-b-to-a-" + "q" * 40
BIG_NAME = "zen.2457900.10000.xx.HH.uvh5"


def log(message: str) -> None:
    print(message, flush=True)


def write_data(store: Path, big_bytes: int, small_files: int) -> list[str]:
    """The large file under 2457900/ and the small ones under 2457901/dNN/; their names."""
    big = store / "2457900" / BIG_NAME
    big.parent.mkdir(parents=True)
    block = os.urandom(MiB)
    with open(big, "wb") as f:
        f.writelines(block[i % 997:] + block[:i % 997] for i in range(big_bytes // MiB))  # no two MiB alike
    names = []
    for i in range(small_files):
        folder = store / "2457901" / f"d{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"zen.2457901.{i:05d}.xx.HH.uvh5"
        (folder / name).write_bytes(os.urandom(4096))
        names.append(name)
    return names


def read_all(paths: list[Path], settle_s: float) -> None:
    """Read the sources once, so every run starts with them in the page cache alike, and write
    out every dirty page first (``sync``), so no run pays for the disk writes of the one before
    (the references do not sync what they wrote; a verified transfer syncs its own); then wait
    ``settle_s``: this machine's virtual disk stays slow for seconds after taking 2 GiB (its
    host is still writing them), which only a run that syncs its own writes would pay."""
    for path in paths:
        for root, _dirs, files in os.walk(path) if path.is_dir() else [(path.parent, [], [path.name])]:
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    while f.read(8 * MiB):
                        pass
    os.sync()
    time.sleep(settle_s)


@contextlib.contextmanager
def rsync_daemon(tmp: Path, module_path: Path) -> Iterator[str]:
    port = free_port()
    conf = tmp / "rsyncd.conf"
    conf.write_text(f"use chroot = no\npid file = {tmp / 'rsyncd.pid'}\n[bench]\n"
                    f"path = {module_path}\nread only = yes\nuid = {os.getuid()}\n"
                    f"gid = {os.getgid()}\n")
    daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                               f"--port={port}", "--address=127.0.0.1"])
    try:
        time.sleep(0.5)
        yield f"rsync://127.0.0.1:{port}/bench/"
    finally:
        daemon.terminate()
        daemon.wait(10)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far ((0, 0) once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (A's worker, the worker's helpers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def job_seconds(job: dict[str, Any]) -> float:
    started = dt.datetime.fromisoformat(job["started_at"].rstrip("Z"))
    finished = dt.datetime.fromisoformat(job["finished_at"].rstrip("Z"))
    return (finished - started).total_seconds()


def transfer(a: JupyterProcess, query: str, expected: int) -> tuple[float, float]:
    """One transfer job of ``query`` from A to B; (job seconds, end-to-end seconds)."""
    started = time.monotonic()
    job = a.api("transfers", {"query": query, "peer": "site-b"})
    while job["state"] in ("queued", "running"):
        # Not faster: each poll is a request A's server answers, CPU the transfer then lacks
        # (the times are the job's own, not the poll's).
        time.sleep(0.25)
        job = a.api(f"jobs/{job['id']}")
    e2e = time.monotonic() - started
    if job["state"] != "succeeded" or job["files_done"] != expected:
        text = a.api(f"jobs/{job['id']}/log")["text"]
        raise SystemExit(f"transfer job {job['id']} {job['state']}: {job['files_done']} of "
                         f"{expected} file(s); {job['error']}\n{text[-3000:]}")
    return job_seconds(job), e2e


class Bench:
    def __init__(self, tmp: Path, big_bytes: int, small_files: int, settle_s: float,
                 profile: Path | None = None, receive_streams: int = 0,
                 worker_nice: int | None = None, gil: bool = False, strace: bool = False) -> None:
        self.tmp, self.settle_s, self.profile, self.gil = tmp, settle_s, profile, gil
        self.strace = strace
        self.receive_streams, self.worker_nice = receive_streams, worker_nice
        self.profiles = 0
        self.big_bytes, self.small_files = big_bytes, small_files
        self.a_store, self.b_root = tmp / "a" / "store", tmp / "b"
        self.stack = contextlib.ExitStack()
        self.a_port, self.b_port = free_port(), free_port()
        self.b_generation = 0
        self.b: JupyterProcess | None = None
        #: A's worker processes seen (A's server leaves its worker running when it stops).
        self.workers: set[int] = set()

    def start(self) -> None:
        log(f"writing {self.big_bytes / MiB:,.0f} MiB and {self.small_files:,} x 4 KiB in {self.tmp}")
        self.names = write_data(self.a_store, self.big_bytes, self.small_files)
        a_db_url = f"sqlite:///{self.tmp / 'a' / 'catalogue.sqlite'}"
        db = Database(a_db_url)
        db.upgrade()
        catalogue = Catalogue(db)
        catalogue.sync_stores({"a-store": {"path": str(self.a_store)}})
        started = time.monotonic()
        report = Ingester(catalogue).ingest("a-store", ["2457900/*", "2457901/*/*"])
        db.dispose()
        log(f"  registered {report.registered:,} file(s) at A in {time.monotonic() - started:.0f} s")
        # No fixity audit at either site: it re-hashes the files just registered (A's 10,000
        # at its first tick, B's as they arrive) once a minute, which lands in some runs and
        # not others; rsync's side does nothing of the kind.
        common = {"service_log_file": "", "fixity_bytes_per_hour": 0.0}
        nice = {} if self.worker_nice is None else {"worker_nice": self.worker_nice}
        self.a = self.stack.enter_context(jupyter_process(
            self.tmp / "a-server", root_dir=self.tmp / "a", port=self.a_port, config={
                "StagingApp": {**common, **nice, "db_url": a_db_url, "site_name": "site-a",
                               "stores": {"a-store": {"path": str(self.a_store)}},
                               "peers": {"site-b": {"url": f"http://127.0.0.1:{self.b_port}/",
                                                    "secret": SECRET_AB}},
                               "peer_secrets": {"site-b": hash_secret(SECRET_BA)}}}))
        self.start_b()

    def start_b(self) -> None:
        """A fresh receiving site (empty store and catalogue) on B's port."""
        if self.b is not None:
            self.b_stack.close()
        self.b_generation += 1
        root = self.b_root / f"run{self.b_generation}"
        (root / "store").mkdir(parents=True)
        self.b_stack = contextlib.ExitStack()
        self.b = self.b_stack.enter_context(jupyter_process(
            self.tmp / f"b-server{self.b_generation}", root_dir=root, port=self.b_port, config={
                "StagingApp": {"service_log_file": "", "fixity_bytes_per_hour": 0.0,
                               "start_worker": False,
                               **({"receive_streams": self.receive_streams}
                                  if self.receive_streams else {}),
                               "db_url": f"sqlite:///{root / 'catalogue.sqlite'}",
                               "site_name": "site-b",
                               "stores": {"b-store": {"path": str(root / "store")}},
                               "receive_store": "b-store",
                               "peers": {"site-a": {"url": self.a.url, "secret": SECRET_BA}},
                               "peer_secrets": {"site-a": hash_secret(SECRET_AB)}}}))
        self.b_store = root / "store"

    def close(self) -> None:
        if self.b is not None:
            self.b_stack.close()
        self.stack.close()
        for pid in self.workers:  # the worker stops its helpers itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # ----- the runs -----------------------------------------------------------------------
    def curl(self) -> tuple[float, float]:
        """(seconds of curl, seconds of curl and ``sync -f`` of its file)."""
        out = self.tmp / "curl" / BIG_NAME
        out.parent.mkdir(exist_ok=True)
        out.unlink(missing_ok=True)
        read_all([self.a_store / "2457900"], self.settle_s)
        started = time.monotonic()
        subprocess.run(["curl", "-sS", "--fail", "-o", str(out), "-H",
                        f"Authorization: token {self.a.token}",
                        f"{self.a.url}hera-stage/api/files/{BIG_NAME}/content"], check=True)
        seconds = time.monotonic() - started
        subprocess.run(["sync", "-f", str(out)], check=True)
        synced = time.monotonic() - started
        if out.stat().st_size != self.big_bytes:
            raise SystemExit("curl fetched a short file")
        out.unlink()
        return seconds, synced

    def rsync(self, url: str, run: int) -> tuple[float, float]:
        """(seconds of ``rsync -a``, seconds of it and a ``sync -f`` of what it wrote: a
        transfer's files are on disk when it ends, rsync's are not)."""
        out = self.tmp / f"rsync{run}"
        read_all([self.a_store / "2457901"], self.settle_s)
        started = time.monotonic()
        subprocess.run(["rsync", "-a", f"{url}2457901/", f"{out}/"], check=True)
        seconds = time.monotonic() - started
        subprocess.run(["sync", "-f", str(out)], check=True)
        synced = time.monotonic() - started
        copied = sum(len(files) for _root, _dirs, files in os.walk(out))
        if copied != self.small_files:
            raise SystemExit(f"rsync copied {copied} file(s)")
        return seconds, synced

    @contextlib.contextmanager
    def profiled(self, pid: int, what: str, children: bool = False) -> Iterator[None]:
        """With ``--profile DIR``: py-spy (on the PATH or beside this Python) samples ``pid``
        (all threads, idle ones left out; with ``children``, its child processes too, each
        stack under a ``process <pid>:"<command>"`` frame) meanwhile, into
        ``DIR/<what>-<n>.txt`` (collapsed stacks)."""
        if self.profile is None:
            yield
            return
        self.profiles += 1
        out = self.profile / f"{what}-{self.profiles}.txt"
        spy_exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spy = subprocess.Popen([spy_exe, "record", "--pid", str(pid), "--rate", "250",
                                "--format", "raw", "--output", str(out), "--nonblocking",
                                *(["--subprocesses"] if children else []),
                                *(["--gil"] if self.gil else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            log(f"      profile of {what}: {out}")

    def processes(self) -> dict[str, list[int]]:
        assert self.b is not None
        worker = children(self.a.pid)
        self.workers.update(worker)
        return {"A server": [self.a.pid], "A worker": worker + [c for w in worker
                                                                for c in children(w)],
                "B server": [self.b.pid]}

    def ours(self, query: str, expected: int, source: Path) -> tuple[float, float]:
        self.start_b()  # a receiver that holds nothing yet
        assert self.b is not None
        read_all([source], self.settle_s)
        before = {pid: cpu_seconds(pid) for pids in self.processes().values() for pid in pids}
        with self.profiled(self.b.pid, "b-server"), \
                self.profiled(self.a.pid, "a-server-and-worker", children=True), \
                self.syscalls(self.b.pid, expected):
            result = transfer(self.a, query, expected)
        spent: dict[str, tuple[float, float]] = {}
        for who, pids in self.processes().items():
            now = [(cpu_seconds(pid), before.get(pid, (0.0, 0.0))) for pid in pids]
            spent[who] = (sum(n[0] - b[0] for n, b in now), sum(n[1] - b[1] for n, b in now))
        log("      CPU s (user + system): " + ", ".join(
            f"{who} {user:.2f} + {system:.2f}" for who, (user, system) in spent.items()))
        log("      CPU us a file (user + system): " + ", ".join(
            f"{who} {user / expected * 1e6:,.0f} + {system / expected * 1e6:,.0f}"
            for who, (user, system) in spent.items())
            + f"; all {sum(u + s for u, s in spent.values()) / expected * 1e6:,.0f}")
        return result

    @contextlib.contextmanager
    def syscalls(self, pid: int, files: int) -> Iterator[None]:
        """With ``--strace``: ``strace -f -c`` on ``pid`` (B's server, all its threads)
        meanwhile; prints its system calls a file (strace slows what it watches: a run with
        it says what B asks of the kernel, not how fast)."""
        if not self.strace:
            yield
            return
        out = self.tmp / f"strace-{pid}.txt"
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            yield
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
            rows = []
            for line in out.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                    rows.append((int(parts[3]), parts[-1]))
            rows.sort(reverse=True)
            log(f"      B's system calls a file: {sum(n for n, _ in rows) / files:.1f} ("
                + ", ".join(f"{name} {n / files:.2f}" for n, name in rows[:12]) + ")")


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


Result = tuple[str, str, list[float], list[float], float, str]


def order(pairs: int) -> list[str]:
    """The runs of a set: reference, ours, ours, reference (``pairs`` 2: each cell the better
    of two), or ``pairs`` interleaved pairs, each starting with the other tool than the last."""
    if pairs <= 2:
        return ["ref", "ours", "ours", "ref"]
    return [tool for i in range(pairs) for tool in (("ref", "ours") if i % 2 == 0
                                                     else ("ours", "ref"))]


def cell(times: list[float], pairs: int) -> float:
    """A cell's seconds: the better of two runs, or the median of ``pairs`` runs."""
    return min(times) if pairs <= 2 else statistics.median(times)


def large(bench: Bench, big_bytes: int, pairs: int) -> Result:
    """The large file: MB/s, curl and ours in the ``order`` of ``pairs``."""
    log("\none large file")
    ref, ours, e2es = [], [], []
    for tool in order(pairs):
        if tool == "ref":
            seconds, synced = bench.curl()
            ref.append(seconds)
            log(f"    curl                 {seconds:7.2f} s  {big_bytes / seconds / 1e6:8,.0f} MB/s "
                f"(with sync -f of its file {big_bytes / synced / 1e6:,.0f} MB/s)")
        else:
            job, e2e = bench.ours(BIG_NAME, 1, bench.a_store / "2457900")
            ours.append(job)
            e2es.append(e2e)
            log(f"    hera-stage transfer  {job:7.2f} s  {big_bytes / job / 1e6:8,.0f} MB/s "
                f"(end to end {e2e:.2f} s)")
    return (f"{big_bytes / MiB:,.0f} MiB file", "curl", ref, ours, cell(e2es, pairs), "MB/s")


def small(bench: Bench, tmp: Path, small_files: int, pairs: int) -> Result:
    """The small files: files/s, rsync and ours in the ``order`` of ``pairs``."""
    log(f"\n{small_files:,} x 4 KiB in 100 folders")
    ref, ours, e2es = [], [], []
    with rsync_daemon(tmp, bench.a_store) as url:
        for tool in order(pairs):
            if tool == "ref":
                seconds, synced = bench.rsync(url, len(ref) + 1)
                ref.append(seconds)
                log(f"    rsync                {seconds:7.2f} s  {small_files / seconds:8,.0f} files/s "
                    f"(with sync -f of its files {small_files / synced:,.0f} files/s)")
            else:
                job, e2e = bench.ours("zen.2457901.*", small_files, bench.a_store / "2457901")
                ours.append(job)
                e2es.append(e2e)
                log(f"    hera-stage transfer  {job:7.2f} s  {small_files / job:8,.0f} files/s "
                    f"(end to end {e2e:.2f} s)")
    return (f"{small_files:,} x 4 KiB", "rsync -a", ref, ours, cell(e2es, pairs), "files/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 1,000 x 4 KiB")
    parser.add_argument("--dir", default=None, help="where the temporary directory goes")
    parser.add_argument("--only", choices=("large", "small"), default=None,
                        help="run one of the two sets")
    parser.add_argument("--pairs", type=int, default=2, metavar="N",
                        help="N >= 3: N interleaved pairs a set, each cell their median "
                             "(default: reference, ours, ours, reference, the better of two)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait after the sync before each run")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy samples A's server with its worker, and B's server, "
                             "during each run of ours into DIR (collapsed stacks)")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL (where "
                             "each process's Python time goes, not its waits)")
    parser.add_argument("--receive-streams", type=int, default=0, metavar="N",
                        help="B's receive_streams (default: the setting's default)")
    parser.add_argument("--worker-nice", type=int, default=None, metavar="N",
                        help="A's worker_nice, the sending worker's nice value (default: the "
                             "setting's default)")
    parser.add_argument("--strace", action="store_true",
                        help="count B's system calls a file with strace -f -c during each run "
                             "of ours (slows B: for the counts, not the times)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the temporary directory (its tens of thousands of files) "
                             "in place: deleting them slows every file creation on a small VM "
                             "for minutes, which others measuring meanwhile would pay")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    big_bytes = (256 if args.quick else 2048) * MiB if args.only != "small" else MiB
    small_files = (1_000 if args.quick else 10_000) if args.only != "large" else 0
    tmp = Path(tempfile.mkdtemp(prefix="hera-transfer-bench-", dir=args.dir))
    bench = Bench(tmp, big_bytes, small_files, args.settle, args.profile,
                  args.receive_streams, args.worker_nice, args.gil, args.strace)
    results: list[Result] = []
    try:
        bench.start()
        if args.only != "small":
            results.append(large(bench, big_bytes, args.pairs))
        if args.only != "large":
            results.append(small(bench, tmp, small_files, args.pairs))
    finally:
        bench.close()
        if args.keep:
            log(f"left in place: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    log("\neach cell: " + ("the better of its two runs (order reference, ours, ours, reference)"
                          if args.pairs <= 2 else
                          f"the median of {args.pairs} interleaved pairs (reference, ours; "
                          "ours, reference; ...)")
        + "; ours: the transfer job (started_at -> finished_at), end to end in brackets")
    log(f"{'set':<22} {'reference':<10} {'ref best' if args.pairs <= 2 else 'ref median':>14} | {'hera-stage':>14} {'ratio':>6} | "
        f"{'e2e ratio':>9}")
    ok = True
    for label, tool, ref, ours, e2e, unit in results:
        target = TARGET_LARGE if unit == "MB/s" else TARGET_SMALL
        amount = big_bytes / 1e6 if unit == "MB/s" else small_files
        ref_s, our_s = cell(ref, args.pairs), cell(ours, args.pairs)
        ref_rate, our_rate = amount / ref_s, amount / our_s
        ratio = our_rate / ref_rate
        log(f"{label:<22} {tool:<10} {fmt_rate(ref_rate, unit):>14} | "
            f"{fmt_rate(our_rate, unit):>14} {ratio:6.2f} | {ref_s / e2e:9.2f}")
        passed = ratio >= target
        ok &= passed
        log(f"{'PASS' if passed else 'FAIL'}  {label}: hera-stage transfer / {tool}: "
            f"{ratio:.2f}x >= {target}x ({unit})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
