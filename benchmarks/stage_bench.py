"""Staging benchmark: ``cp``/``cp -r`` next to ``hera-stage stage`` (verified) on the same files.

Writes a store with one 2 GiB file, 200 files of 64 MiB and 20,000 files of 4 KiB in 100
folders, starts a real ``jupyter server`` with the extension (c.StagingApp.stores pointing at the
store, db_url at a temporary SQLite file; the server starts its own worker process, with the
production settings: 4 streams, fsync, xxh3-128 verification), registers the files with
``hera-stage ingest`` and then, for each set, copies it with ``cp`` and with
``hera-stage stage DEST QUERY --wait`` (method ``copy``), and the small set again with the
``hardlink`` and ``symlink`` methods next to ``cp -rl`` / ``cp -rs``, and the 64 MiB set with
the ``contents`` method (through the server's contents manager) next to ``cp -r``.

Timing. ``cp`` is timed as a process, start to exit. ``hera-stage`` is timed twice: end to end
(the CLI process: start-up, search, job creation, the worker's pick-up, the copy and the final
poll) and as the job, from its ``started_at`` to its ``finished_at`` (the worker's claim to the
result markers and final state: copy, verification, fsync, database bookkeeping). The ratios and
the targets use the job time; the end-to-end figures are printed next to them.

Page cache and the VM's quirks (see the performance notes): drop_caches is not available, so
every timed run is preceded by a full read of its source files (both tools start with the
source in the page cache as far as it fits), the tools alternate A-B-B-A (cp, ours, ours, cp)
and each cell is the better of its two runs (both are printed); ``--pairs N`` (N >= 3) runs N
interleaved pairs (A-B, B-A, ...) and each cell is the median. The small-file sets run first
and nothing is deleted between their runs (file creation is several times slower for a minute
after a bulk delete); the large-file destinations are deleted after each run, before the next
one's source read, the same for both tools.

The worker's resident memory is sampled every 50 ms from /proc/<pid>/status (VmRSS) for the
whole run, and its peak (VmHWM) read at the end. The CPU time of each run is printed per file
(less noisy than files/s on a shared host): cp's process (``RUSAGE_CHILDREN``), and the
worker's with its copy helper processes (``/proc/<pid>/stat`` before and after the job; not
the server's or the site service's share). The server's own CPU during each job is printed
beside it, the same way on both sides: the single-user Jupyter server's (which serves the
CLI's ``--wait`` polls and events; its worker, a child process, not counted) and the site
service's (which also does the job's database work), sampled every 20 ms from its own
``/proc/<pid>/stat`` (no scan of ``/proc``, so the sampling costs the same little in both
modes).

Site mode (``--site``): the same server goes on as single-user mode, and beside it a site
service without a hub (``hera-stage site``, its own SQLite catalogue of the same store, a site
token) and the token user's worker over HTTP (``--site-url``, started as a user's server in site
mode starts it: ``benchmarks/site_service.py``). Every copy, hardlink and symlink case then runs
cp, ``--pairs`` interleaved pairs (single-user, site; site, single-user; ...; default 2), cp,
``hera-stage stage --wait`` talking to the service with the token for the site runs, and a
second table compares the medians of the two modes (the job's own time, started_at ->
finished_at, on each side).

Targets: verified copy >= 0.9x ``cp`` throughput on the large files (the 2 GiB file and the
64 MiB files, each); worker RSS < 300 MB
throughout; with ``--site``, site mode >= 0.9x single-user mode's files/s (small files: copy,
hardlink and symlink) and GB/s (large files) on the verified copy. Issue 19's small-file
targets: the verified copy >= 1.0x ``cp -r && sync -f``, and a worker asked to skip fsync
(``worker_fsync`` False, a server of its own) >= 0.8x plain ``cp -r``;
hardlink / symlink >= 0.5x ``cp -rl`` / ``cp -rs``. Exit status 0 when all pass.

    /path/to/venv/bin/python benchmarks/stage_bench.py           # full run (about 6-9 minutes)
    /path/to/venv/bin/python benchmarks/stage_bench.py --quick   # 512 MiB, 20 x 64 MiB, 2,000 x 4 KiB
    /path/to/venv/bin/python benchmarks/stage_bench.py --site    # and site mode beside it

The server, its worker and the temporary directory are removed on exit, Ctrl-C included (the
directory left with ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
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

import requests  # noqa: E402

TARGET_LARGE = 0.9
TARGET_SMALL = 1.0  # verified copy of the small files / `cp -r && sync -f` (issue 19)
#: A job of a worker asked to skip fsync (``worker_fsync = False``) / plain `cp -r`: issue 19's
#: decision ("a job asked to skip fsync is compared with plain cp"); the durable job's ratio
#: to plain `cp -r` is printed beside it, for information.
TARGET_SMALL_PLAIN = 0.8
TARGET_LINKS = 0.5  # hardlink / `cp -rl`, symlink / `cp -rs` (issue 19)
TARGET_RSS_MB = 300.0
TARGET_SITE = 0.9  # site mode / single-user mode, verified copy
STORE = "bench"
MiB = 1 << 20
GiB = 1 << 30


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# The files


@dataclass
class FileSet:
    key: str
    label: str
    night: int  # names are zen.<night>.<5 digits>...: one night per set, searched by prefix
    rel_dir: str  # folder in the store
    count: int
    size: int
    folders: int = 1

    @property
    def total_bytes(self) -> int:
        return self.count * self.size

    @property
    def query(self) -> str:
        return json.dumps({"name-matches": f"zen.{self.night}.%"})

    @property
    def glob(self) -> str:
        """The set's files, as ``hera-stage ingest`` takes them."""
        return f"{self.rel_dir}/*/*" if self.folders > 1 else f"{self.rel_dir}/*"

    def paths(self) -> list[str]:
        """Store-relative paths of the set's files."""
        out = []
        per_folder = -(-self.count // self.folders)
        for i in range(self.count):
            name = f"zen.{self.night}.{10000 + i:05d}.xx.HH.uvh5"
            if self.folders > 1:
                out.append(f"{self.rel_dir}/d{i // per_folder:03d}/{name}")
            else:
                out.append(f"{self.rel_dir}/{name}")
        return out


def file_sets(quick: bool) -> list[FileSet]:
    if quick:
        return [FileSet("big", "1 x 512 MiB", 2459000, "big", 1, 512 * MiB),
                FileSet("medium", "20 x 64 MiB", 2459001, "medium", 20, 64 * MiB),
                FileSet("small", "2,000 x 4 KiB / 20 dirs", 2459002, "small", 2000, 4096, 20)]
    return [FileSet("big", "1 x 2 GiB", 2459000, "big", 1, 2 * GiB),
            FileSet("medium", "200 x 64 MiB", 2459001, "medium", 200, 64 * MiB),
            FileSet("small", "20,000 x 4 KiB / 100 dirs", 2459002, "small", 20000, 4096, 100)]


def write_sources(store: Path, sets: list[FileSet]) -> None:
    """Distinct pseudo-random content: slices of one random block at file-specific offsets."""
    block = bytearray(os.urandom(128 * MiB))
    view = memoryview(block)
    span = 64 * MiB
    k = 0
    for fs in sets:
        for rel in fs.paths():
            path = store / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb", buffering=0) as f:
                left = fs.size
                while left:
                    k += 1
                    start = (k * 1_048_583) % (len(block) - span)
                    n = min(left, span)
                    f.write(view[start:start + n])
                    left -= n


def read_all(store: Path, fs: FileSet) -> None:
    """Read the set's source files once (into the page cache, as far as it holds them)."""
    buffer = bytearray(MiB)
    for rel in fs.paths():
        with open(store / rel, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def count_files(path: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(path))


# ---------------------------------------------------------------------------------------------
# Server, worker, memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    workdir: Path
    # The process that starts the staging worker (default: the server itself).
    worker_parent: int | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(sys.executable).with_name("hera-stage")), "--url", self.url,
               "--token", self.token, *args]
        if not Path(cmd[0]).exists():
            cmd[0:1] = [sys.executable, "-m", "hera_stage_ext.cli"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
        return done

    def api(self, path: str) -> Any:
        reply = requests.get(f"{self.url}hera-stage/api/{path}", timeout=30,
                             headers={"Authorization": f"token {self.token}"})
        reply.raise_for_status()
        return reply.json()

    def worker_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                ppid = _status(int(entry)).get("PPid")
            except OSError:
                continue
            parent = self.worker_parent or self.proc.pid
            if b"hera_stage_ext.jobs.worker" in cmdline and ppid == str(parent):
                pids.append(int(entry))
        return pids


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _cpu_split(pids: list[int]) -> tuple[float, float, float, float]:
    """CPU seconds used so far: the worker(s) ``pids`` user, system; their children (the copy
    helper processes, which live as long as a worker does) user, system."""
    tick = os.sysconf("SC_CLK_TCK")
    split = [0, 0, 0, 0]
    for pid, base in [*((p, 0) for p in pids),
                      *((child, 2) for p in pids for child in _children(p))]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            split[base] += int(fields[11])
            split[base + 1] += int(fields[12])
    return (split[0] / tick, split[1] / tick, split[2] / tick, split[3] / tick)


def _own_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by ``pid`` alone (not its children): one read
    of its ``/proc/<pid>/stat``, cheap enough to sample every 20 ms."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kb(value: str | None) -> float:
    return float(value.split()[0]) / 1024 if value else 0.0  # "123 kB" -> MiB


@contextlib.contextmanager
def jupyter_server(workdir: Path, workspace: Path, db_url: str, stores: dict[str, Any],
                   settings: dict[str, Any] | None = None) -> Iterator[Server]:
    config_dir, runtime_dir = workdir / "config", workdir / "runtime"
    config_dir.mkdir(parents=True, exist_ok=True)
    config = {"StagingApp": {
        "db_url": db_url, "stores": stores, "job_log_dir": str(workdir / "logs"),
        "worker_idle_exit_seconds": 3600.0,  # one worker for the whole run
        # No background fixity audit: a tick re-hashes the whole small set at random moments
        # and slows whichever run it lands in (fixity_bench.py measures the audit's cost).
        "fixity_bytes_per_hour": 0,
        **(settings or {}),
    }}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config, indent=2))
    port, token = free_port(), hashlib.sha256(os.urandom(16)).hexdigest()[:32]
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir),
           "JUPYTER_RUNTIME_DIR": str(runtime_dir), "JUPYTER_DATA_DIR": str(workdir / "data")}
    cmd = [
        sys.executable, "-m", "jupyter", "server", "--no-browser", f"--port={port}",
        "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
        "--ServerApp.jpserver_extensions=hera_stage_ext=True",
        f"--ServerApp.root_dir={workspace}", "--ServerApp.log_level=WARN", "--allow-root",
    ]
    server_log = workdir / "server.log"
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=workspace, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}/", token, workspace)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited ({proc.returncode}):\n"
                                   + server_log.read_text()[-3000:])
            with contextlib.suppress(requests.RequestException):
                server.api("status")
                break
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter server did not answer within 120 s:\n"
                                   + server_log.read_text()[-3000:])
            time.sleep(0.25)
        server.known_workers = workers  # type: ignore[attr-defined]
        yield server
    finally:
        workers.update(server.worker_pids())
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The worker runs in a session of its own (it outlives a server restart): stop it too.
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in workers:
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if _status(int(entry)).get("PPid") == str(pid):
                    found.append(int(entry))
    return found


class RssSampler(threading.Thread):
    """Samples VmRSS of the server's worker process(es) every ``interval`` seconds."""

    def __init__(self, server: Server, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.stop = threading.Event()
        self.max_rss_mb = 0.0
        self.hwm_mb = 0.0
        self.samples = 0
        self.pids: set[int] = set()
        self.max_total_mb = 0.0
        self.helpers = 0

    def run(self) -> None:
        last_scan = 0.0
        while not self.stop.wait(self.interval):
            if time.monotonic() - last_scan > 1.0:
                found = set(self.server.worker_pids())
                self.pids |= found
                self.server.known_workers |= found  # type: ignore[attr-defined]
                last_scan = time.monotonic()
            for pid in list(self.pids):
                try:
                    st = _status(pid)
                except OSError:
                    self.pids.discard(pid)
                    continue
                # The worker with its copy helper processes (its children).
                helpers = []
                for child in _children(pid):
                    with contextlib.suppress(OSError):
                        helpers.append(_status(child))
                self.max_rss_mb = max(self.max_rss_mb, _kb(st.get("VmRSS")))
                self.max_total_mb = max(self.max_total_mb, _kb(st.get("VmRSS")) + sum(
                    _kb(h.get("VmRSS")) for h in helpers))
                self.hwm_mb = max(self.hwm_mb, _kb(st.get("VmHWM")))
                self.helpers = max(self.helpers, len(helpers))
                self.samples += 1


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    tool: str
    seconds: float  # cp: process; ours: job started_at -> finished_at
    end_to_end: float  # ours: the CLI process; cp: cp followed by `sync -f` of the destination
    files: int
    nbytes: int
    # CPU seconds the tool used for the run: cp's process; ours, the worker with its copy
    # helpers (not the server's or the service's share).
    cpu: float | None = None
    # Ours: seconds from the job's start to its first files' log line (the first hand-over
    # made final).
    first_file: float | None = None
    # Ours: the server's own CPU seconds during the job (its own time): the single-user
    # Jupyter server's (not its worker's), or in site mode the site service's.
    server_cpu: float | None = None
    # Ours: seconds from its last per-file log line to the job's end (``_file_times``).
    end_after_files: float | None = None
    # Ours: CPU seconds of the worker (user, system) and of its helpers (user, system).
    cpu_split: tuple[float, float, float, float] | None = None

    @property
    def cpu_us_per_file(self) -> float | None:
        return None if self.cpu is None else self.cpu / self.files * 1e6

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


@dataclass
class Case:
    key: str
    label: str
    unit: str  # "GB/s" | "files/s"
    reference: str  # the cp command
    ours: str
    ref_runs: list[Run] = field(default_factory=list)
    our_runs: list[Run] = field(default_factory=list)
    site_runs: list[Run] = field(default_factory=list)  # ``--site``: the same, in site mode
    target: float | None = None  # ours / the reference
    site_target: float | None = None
    synced_target: float | None = None  # ours / the reference followed by `sync -f`

    def median(self, runs: list[Run]) -> float:
        return statistics.median(self.rate(r) for r in runs)

    @property
    def site_ratio(self) -> float:
        return self.median(self.site_runs) / self.median(self.our_runs)

    def rate(self, run: Run, end_to_end: bool = False) -> float:
        seconds = run.end_to_end if end_to_end else run.seconds
        return (run.nbytes / seconds / 1e9) if self.unit == "GB/s" else run.files / seconds

    def best(self, runs: list[Run], end_to_end: bool = False) -> float:
        """The better of two runs; the median of three or more (``--pairs``)."""
        rates = [self.rate(r, end_to_end) for r in runs]
        return statistics.median(rates) if len(rates) >= 3 else max(rates)

    @property
    def ratio(self) -> float:
        return self.best(self.our_runs) / self.best(self.ref_runs)

    @property
    def ratio_e2e(self) -> float:
        return self.best(self.our_runs, True) / self.best(self.ref_runs)

    @property
    def ratio_synced(self) -> float:
        return self.best(self.our_runs) / self.best(self.ref_runs, True)


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.rstrip("Z"))


class Bench:
    def __init__(self, server: Server, store: Path, workspace: Path,
                 site: Server | None = None, pairs: int = 2) -> None:
        self.server, self.store, self.workspace = server, store, workspace
        self.site = site  # ``--site``: the site service, the user's worker beside it
        self.pairs = pairs  # single-user/site pairs per case
        self.n = 0

    def dest(self, tag: str) -> Path:
        self.n += 1
        return self.workspace / f"{self.n:02d}-{tag}"

    def run_cp(self, fs: FileSet, dest: Path, flags: list[str]) -> Run:
        dest.mkdir(parents=True)
        src = self.store / fs.rel_dir
        if fs.count == 1:
            cmd = ["cp", *flags, str(self.store / fs.paths()[0]), str(dest) + "/"]
        else:
            cmd = ["cp", "-r", *flags, str(src), str(dest) + "/"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        # For information: cp plus writing its data to disk (what the worker's fsync waits for).
        subprocess.run(["sync", "-f", str(dest)], check=True)
        synced = time.perf_counter() - t0
        got = count_files(dest)
        if got != fs.count:
            raise RuntimeError(f"{' '.join(cmd)}: {got} files, expected {fs.count}")
        return Run("cp", seconds, synced, fs.count, fs.total_bytes, cpu)

    def run_ours(self, fs: FileSet, dest: Path, method: str, server: Server | None = None) -> Run:
        server = server or self.server
        workers = server.worker_pids()
        split0 = _cpu_split(workers)
        # The server's own CPU (single-user: the Jupyter server, not its worker; site: the
        # service), sampled through the run (its share of the job's own time is read from the
        # samples around the job's start and end).
        sampler = CpuSampler(server.proc.pid)
        t0 = time.perf_counter()
        done = server.cli("stage", str(dest), fs.query, "--method", method, "--wait",
                          check=False)
        end_to_end = time.perf_counter() - t0
        sampler.stop()
        found = re.search(r"job (\d+):", done.stderr)
        if done.returncode != 0 or not found:
            raise RuntimeError(f"hera-stage stage ({method}) exit {done.returncode}:\n"
                               f"{done.stderr[-3000:]}")
        job = server.api(f"jobs/{found.group(1)}")
        if job["state"] != "succeeded" or job["files_done"] != fs.count:
            raise RuntimeError(f"job {job['id']}: {job['state']} {job['files_done']} files: "
                               f"{job['error']}")
        seconds = (_parse_time(job["finished_at"]) - _parse_time(job["started_at"])).total_seconds()
        split = (tuple(b - a for a, b in zip(split0, _cpu_split(workers)))
                 if workers == server.worker_pids() else None)
        cpu = None if split is None else sum(split)
        started = _parse_time(job["started_at"])
        server_cpu = sampler.between(_epoch(started), _epoch(_parse_time(job["finished_at"])))
        first, end = _file_times(server, job["id"], started, _parse_time(job["finished_at"]))
        return Run("hera-stage", seconds, end_to_end, fs.count, fs.total_bytes, cpu, first,
                   server_cpu, end, split)  # type: ignore[arg-type]

    def case(self, fs: FileSet, key: str, label: str, unit: str, method: str,
             cp_flags: list[str], keep: bool, target: float | None,
             synced_target: float | None = None) -> Case:
        ours_name = f"hera-stage {method}" + (" (verified)" if method == "copy" else "")
        cp_name = "cp" + ("" if fs.count == 1 else " -r") + "".join(f" {f}" for f in cp_flags)
        case = Case(key, label, unit, cp_name, ours_name, target=target,
                    site_target=TARGET_SITE if method != "contents" else None,
                    synced_target=synced_target)
        site = self.site is not None and method != "contents"
        # A-B-B-A (``pairs`` interleaved pairs); with site mode A, then ``pairs`` interleaved pairs B-C, C-B, ..., then A (the
        # user's server adds the contents method's description: the service alone does not run
        # that method, so it has no site runs here).
        order: list[str] = [tool for k in range(self.pairs)
                             for tool in (("cp", "ours") if k % 2 == 0 else ("ours", "cp"))]
        if site:
            pairs = [("ours", "site") if k % 2 == 0 else ("site", "ours")
                     for k in range(self.pairs)]
            order = ["cp", *(tool for pair in pairs for tool in pair), "cp"]
        for tool in order:
            read_all(self.store, fs)
            dest = self.dest(f"{key}-{tool}")
            if tool == "cp":
                run = self.run_cp(fs, dest, cp_flags)
                case.ref_runs.append(run)
            elif tool == "site":
                run = self.run_ours(fs, dest, method, self.site)
                case.site_runs.append(run)
            else:
                run = self.run_ours(fs, dest, method)
                case.our_runs.append(run)
            extra = (f" (end to end {run.end_to_end:.2f} s)" if tool != "cp" else
                     f" (with sync -f {run.end_to_end:.2f} s)")
            name = {"cp": case.reference, "ours": case.ours, "site": f"site: {case.ours}"}[tool]
            if run.cpu_us_per_file is not None and unit == "files/s":
                extra += f" [CPU {run.cpu_us_per_file:.0f} us/file]"
            if run.cpu_split is not None and unit == "files/s":
                wu, ws, hu, hs = (v / run.files * 1e6 for v in run.cpu_split)
                extra += f" [worker {wu:.0f}u+{ws:.0f}s, helpers {hu:.0f}u+{hs:.0f}s]"
            if run.server_cpu is not None and unit == "files/s":
                what = "service" if tool == "site" else "server"
                extra += f" [{what} CPU {run.server_cpu / run.files * 1e6:.0f} us/file]"
            if run.first_file is not None:
                extra += f" [first files {run.first_file * 1e3:.0f} ms]"
            if run.end_after_files is not None:
                extra += f" [end {run.end_after_files * 1e3:.0f} ms]"
            log(f"    {name:<34} {run.seconds:7.2f} s  {case.rate(run):9,.2f} {unit}{extra}")
            if not keep:
                remove_tree(dest)
        return case


def warm_up(server: Server, fs: FileSet) -> None:
    """Stage one file of ``fs`` through ``server`` and remove it: the first job starts the
    worker process (not part of any timing)."""
    server.cli("stage", str(server.workdir / "00-warmup"), json.dumps(
        {"name-is-exactly": fs.paths()[0].rsplit("/", 1)[1]}), "--wait")
    remove_tree(server.workdir / "00-warmup")


def unsynced_case(workdir: Path, stores: dict[str, Any], fs: FileSet, store: Path,
                  pairs: int) -> Case:
    """The verified copy of ``fs`` by a worker asked to skip fsync, beside plain ``cp -r``: a
    server of its own (``worker_fsync`` False) on a catalogue of its own (the first server's
    worker would take its jobs otherwise), the set ingested there and its worker warmed up."""
    workspace = workdir / "workspace-no-fsync"
    workspace.mkdir()
    with jupyter_server(workdir / "server-no-fsync", workspace,
                        f"sqlite:///{workdir / 'catalogue-no-fsync.sqlite'}", stores,
                        {"worker_fsync": False}) as server:
        server.cli("ingest", STORE, fs.glob, "--quiet")
        warm_up(server, fs)
        return Bench(server, store, workspace, None, max(1, pairs)).case(
            fs, "small-no-fsync", f"{fs.label} (no fsync)", "files/s", "copy", [], True,
            TARGET_SMALL_PLAIN)


def remove_tree(path: Path) -> None:
    def _retry(func, p, _exc):  # type: ignore[no-untyped-def]
        os.chmod(os.path.dirname(p), 0o700)
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=_retry)


# ---------------------------------------------------------------------------------------------
# Report


def report(cases: list[Case], rss: RssSampler, sets: list[FileSet],
           site_rss: RssSampler | None = None) -> bool:
    log("\n" + "=" * 118)
    log("Each cell: the better of two runs, the median of 3+ (interleaved A-B pairs, source "
        "read before every run); "
        "hera-stage = the job, started_at -> finished_at;")
    log("e2e = the `hera-stage stage --wait` process end to end (start-up, search, job creation, "
        "pick-up, copy, polling);")
    log("cp+sync = the cp run plus `sync -f` of its destination (data on disk, as the worker's "
        "fsync ensures), for information; ours/it = job best / cp+sync best.")
    header = (f"{'set':<26} {'reference':<12} {'ref best':>10} {'(runs)':>19} | "
              f"{'hera-stage':<22} {'job best':>10} {'(runs)':>19} {'ratio':>6} | "
              f"{'e2e best':>9} {'ratio':>6} | {'cp+sync':>9} {'ours/it':>7}")
    log(header)
    log("-" * len(header))
    for c in cases:
        fmt = (lambda v: f"{v:.2f}") if c.unit == "GB/s" else (lambda v: f"{v:,.0f}")
        ref_runs = "/".join(fmt(c.rate(r)) for r in c.ref_runs)
        our_runs = "/".join(fmt(c.rate(r)) for r in c.our_runs)
        log(f"{c.label:<26} {c.reference:<12} {fmt(c.best(c.ref_runs)):>10} {ref_runs:>19} | "
            f"{c.ours:<22} {fmt(c.best(c.our_runs)):>10} {our_runs:>19} {c.ratio:6.2f} | "
            f"{fmt(c.best(c.our_runs, True)):>9} {c.ratio_e2e:6.2f} | "
            f"{fmt(c.best(c.ref_runs, True)):>9} {c.ratio_synced:7.2f}   {c.unit}")
    per_file = [c for c in cases if c.unit == "files/s"]
    if per_file:
        log("\nCPU time per file (median of the runs; cp: its process; hera-stage: the worker "
            "with its copy helpers, not the server's or the service's share)")
        for c in per_file:
            cells = [f"{name} {_median_cpu(runs)}" for name, runs in (
                (c.reference, c.ref_runs), ("single-user", c.our_runs), ("site", c.site_runs))
                if runs]
            log(f"{c.label:<34} " + ", ".join(cells))
    sited = [c for c in cases if c.site_runs]
    if sited:
        log("\nsite mode (a site service without a hub, the user's worker over HTTP) beside "
            "single-user mode: the median of each side's runs (the job's own time)")
        head = (f"{'set':<34} {'single-user':>12} {'(runs)':>19} | {'site':>10} "
                f"{'(runs)':>19} | {'site/single':>11}")
        log(head)
        log("-" * len(head))
        for c in sited:
            fmt = (lambda v: f"{v:.2f}") if c.unit == "GB/s" else (lambda v: f"{v:,.0f}")
            log(f"{c.label:<34} {fmt(c.median(c.our_runs)):>12} "
                f"{'/'.join(fmt(c.rate(r)) for r in c.our_runs):>19} | "
                f"{fmt(c.median(c.site_runs)):>10} "
                f"{'/'.join(fmt(c.rate(r)) for r in c.site_runs):>19} | "
                f"{c.site_ratio:10.2f}x   {c.unit}")
        log("the job's first files made final (ms from its start; median), its end (ms from "
            "its last files to finished; median) and the server's own CPU during the job (us a "
            "file; median: the single-user Jupyter server's, not its worker's; the site "
            "service's)")
        for c in sited:
            log(f"{c.label:<34} first files: single-user "
                f"{_median_of(c.our_runs, 'first_file', 1e3)}, site "
                f"{_median_of(c.site_runs, 'first_file', 1e3)}; end: single-user "
                f"{_median_of(c.our_runs, 'end_after_files', 1e3)}, site "
                f"{_median_of(c.site_runs, 'end_after_files', 1e3)}; server CPU: single-user "
                f"{_median_of(c.our_runs, 'server_cpu', 1e6, per_file=True)}, site service "
                f"{_median_of(c.site_runs, 'server_cpu', 1e6, per_file=True)}")
    log(f"\nworker resident memory: max sampled VmRSS {rss.max_rss_mb:.0f} MiB, peak VmHWM "
        f"{rss.hwm_mb:.0f} MiB ({rss.samples} samples every 50 ms, pids {sorted(rss.pids)}); "
        f"with its {rss.helpers} copy helper process(es): {rss.max_total_mb:.0f} MiB")
    if site_rss is not None:
        log(f"site mode, the user's worker: max sampled VmRSS {site_rss.max_rss_mb:.0f} MiB, "
            f"peak VmHWM {site_rss.hwm_mb:.0f} MiB; with its {site_rss.helpers} copy helper "
            f"process(es): {site_rss.max_total_mb:.0f} MiB")
    log("")
    ok = True
    for c in cases:
        if c.synced_target is not None:
            passed = c.ratio_synced >= c.synced_target
            ok &= passed
            log(f"{'PASS' if passed else 'FAIL'}  {c.label:<26} {c.ours} / {c.reference} && "
                f"sync -f: {c.ratio_synced:.2f}x >= {c.synced_target:.1f}x ({c.unit})")
        if c.target is None:
            if c.synced_target is not None:
                log(f"info  {c.label:<26} {c.ours} / {c.reference}: {c.ratio:.2f}x (a durable "
                    f"job; the issue's {TARGET_SMALL_PLAIN:.1f}x is of a job that skips fsync)")
            continue
        passed = c.ratio >= c.target
        ok &= passed
        log(f"{'PASS' if passed else 'FAIL'}  {c.label:<26} {c.ours} / {c.reference}: "
            f"{c.ratio:.2f}x >= {c.target:.1f}x ({c.unit})")
    for c in sited:
        if c.site_target is None:
            continue
        passed = c.site_ratio >= c.site_target
        ok &= passed
        log(f"{'PASS' if passed else 'FAIL'}  {c.label:<26} site mode / single-user mode: "
            f"{c.site_ratio:.2f}x >= {c.site_target:.1f}x ({c.unit})")
    peak = max(rss.max_rss_mb, rss.hwm_mb, rss.max_total_mb)
    passed = rss.samples > 0 and peak < TARGET_RSS_MB * 1e6 / MiB
    ok &= passed
    log(f"{'PASS' if passed else 'FAIL'}  worker RSS peak {peak * MiB / 1e6:.0f} MB < "
        f"{TARGET_RSS_MB:.0f} MB")
    return ok


class CpuSampler(threading.Thread):
    """A process's own CPU seconds (not its children's), sampled every ``interval`` seconds
    with the wall clock."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while True:
            self.samples.append((time.time(), _own_cpu_seconds(self.pid)))
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds from the last sample at or before ``start`` to the first at or after
        ``end`` (a little more than the interval: at most one ``interval`` each side)."""
        before = [cpu for t, cpu in self.samples if t <= start]
        after = [cpu for t, cpu in self.samples if t >= end]
        return after[0] - before[-1] if before and after else None


def _epoch(moment: dt.datetime) -> float:
    return moment.replace(tzinfo=dt.timezone.utc).timestamp()


#: A per-file line of a job's log: its time stamp, then the method.
_FILE_LINE = re.compile(r"^(\S+)Z  (?:copy|hardlink|symlink|contents) ", re.M)


def _file_times(server: Server, job_id: int, started: dt.datetime, finished: dt.datetime
                ) -> tuple[float | None, float | None]:
    """Seconds from the job's start to the first per-file line of its log, and from the last
    one to the job's end (what its run does after its last files: the last results, the
    checks, the marker, the finish)."""
    first = last = None
    offset = 0
    while True:  # (the log comes in pages of whole lines)
        page = server.api(f"jobs/{job_id}/log?offset={offset}")
        if not page["text"]:
            break
        times = _FILE_LINE.findall(page["text"])
        if times:
            first = first or times[0]
            last = times[-1]
        offset = page["next_offset"]
    if first is None or last is None:
        return None, None
    return ((_parse_time(first) - started).total_seconds(),
            (finished - _parse_time(last)).total_seconds())


def _median_of(runs: list[Run], what: str, scale: float, per_file: bool = False) -> str:
    known = [getattr(r, what) * scale / (r.files if per_file else 1) for r in runs
             if getattr(r, what) is not None]
    return f"{statistics.median(known):.0f}" if known else "-"


def _median_cpu(runs: list[Run]) -> str:
    known = [r.cpu_us_per_file for r in runs if r.cpu_us_per_file is not None]
    return f"{statistics.median(known):.0f} us/file" if known else "-"


def start_site(stack: contextlib.ExitStack, workdir: Path, stores: dict[str, Any],
               workspace: Path) -> Server:
    """``--site``: a site service (its own catalogue of the same store) and its token user's
    worker over HTTP, until ``stack`` closes; the service as a ``Server`` for the CLI."""
    from benchmarks.site_service import site_service, user_worker

    log("starting the site service (hera-stage site, a site token) and the user's worker "
        "(--site-url)")
    service = stack.enter_context(site_service(
        workdir / "site", f"sqlite:///{workdir / 'site-catalogue.sqlite'}", stores, workspace))
    stack.enter_context(user_worker(service, [workspace], workdir / "site" / "worker.log"))
    server = Server(service.process, service.url, service.token, workspace,
                    worker_parent=os.getpid())
    server.known_workers = set()  # type: ignore[attr-defined]  (RssSampler adds to it)
    return server


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sets: 512 MiB, 20 x 64 MiB, 2,000 x 4 KiB in 20 folders")
    parser.add_argument("--dir", default=None,
                        help="where to make the temporary directory (default: the system's "
                        "temp dir); store and destinations share its file system")
    parser.add_argument("--only", default="", help="comma-separated subset: small,big,medium")
    parser.add_argument("--site", action="store_true",
                        help="also run each case in site mode (a site service without a hub, "
                        "the user's worker over HTTP) and compare it with single-user mode")
    parser.add_argument("--pairs", type=int, default=2,
                        help="interleaved cp/hera-stage pairs per case (A-B, B-A, ...; with "
                        "3 or more each side's median is compared, else its better run); "
                        "with --site: interleaved single-user/site pairs (the medians of "
                        "each side are compared; default 2)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the temporary directory (its files) in place: deleting "
                             "a hundred thousand files slows every file creation on a small VM "
                             "for minutes, which a benchmark run next would pay")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    sets = file_sets(args.quick)
    only = {s for s in args.only.split(",") if s}
    if only:
        sets = [fs for fs in sets if fs.key in only]
    by_key = {fs.key: fs for fs in sets}
    workdir = Path(tempfile.mkdtemp(prefix="hera-stage-bench-", dir=args.dir)).resolve()
    started = time.perf_counter()
    rss: RssSampler | None = None
    try:
        store, workspace = workdir / "store", workdir / "workspace"
        workspace.mkdir(parents=True)
        total = sum(fs.total_bytes for fs in sets)
        need = 3 * total + 2 * GiB
        free = shutil.disk_usage(workdir).free
        if free < need:
            raise SystemExit(f"{workdir}: {free / GiB:.1f} GiB free, the run needs about "
                             f"{need / GiB:.1f} GiB")
        log(f"writing {sum(fs.count for fs in sets):,} source files ({total / GiB:.1f} GiB) "
            f"in {store}")
        t0 = time.perf_counter()
        write_sources(store, sets)
        log(f"  written in {time.perf_counter() - t0:.0f} s")
        if os.geteuid() == 0:
            # As a site's archive: another account's files, so hardlink/symlink may link them.
            for folder, dirs, files in os.walk(store):
                for name in [*dirs, *files, ""]:
                    os.chown(os.path.join(folder, name), 65534, 65534)
        else:
            log("  (not root: the store is this account's own, so the hardlink and symlink "
                "rows are refused; see the admin guide)")
        db_url = f"sqlite:///{workdir / 'catalogue.sqlite'}"
        stores = {STORE: {"path": str(store), "kind": "online"}}
        log("starting jupyter server (worker: server-started, production settings)")
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(jupyter_server(workdir / "server", workspace, db_url,
                                                        stores))
            globs = [fs.glob for fs in sets]
            site = start_site(stack, workdir, stores, workspace) if args.site else None
            for each in (server, site):
                if each is None:
                    continue
                t0 = time.perf_counter()
                done = each.cli("ingest", STORE, *globs, "--quiet")
                log(f"  hera-stage ingest{' (site)' if each is site else ''}: "
                    f"{done.stdout.strip()} in {time.perf_counter() - t0:.0f} s")
            rss = RssSampler(server)
            rss.start()
            site_rss = RssSampler(site) if site is not None else None
            if site_rss is not None:
                site_rss.start()
            bench = Bench(server, store, workspace, site, max(1, args.pairs))
            warm = next(iter(by_key.values()))
            for each in (server, site):
                if each is not None:
                    warm_up(each, warm)
            cases: list[Case] = []
            if "small" in by_key:
                fs = by_key["small"]
                # Small sets first, nothing deleted until the end (see the module docstring).
                log(f"\n{fs.label}: copy")
                cases.append(bench.case(fs, "small", fs.label, "files/s", "copy", [], True,
                                        None, TARGET_SMALL))
                log(f"{fs.label}: hardlink")
                cases.append(bench.case(fs, "hardlink", f"{fs.label} (hardlink)", "files/s",
                                        "hardlink", ["-l"], True, TARGET_LINKS))
                log(f"{fs.label}: symlink")
                cases.append(bench.case(fs, "symlink", f"{fs.label} (symlink)", "files/s",
                                        "symlink", ["-s"], True, TARGET_LINKS))
                log(f"{fs.label}: copy, the worker started --no-fsync (worker_fsync False)")
                cases.append(unsynced_case(workdir, stores, fs, store, args.pairs))
            for key in ("big", "medium"):
                if key in by_key:
                    fs = by_key[key]
                    log(f"\n{fs.label}: copy")
                    cases.append(bench.case(fs, key, fs.label, "GB/s", "copy", [], False,
                                            TARGET_LARGE))
            if "medium" in by_key:
                # The contents method (through the server's contents manager, base64 chunks):
                # no target, a figure for admins choosing it.
                fs = by_key["medium"]
                log(f"\n{fs.label}: contents")
                cases.append(bench.case(fs, "contents", f"{fs.label} (contents)", "GB/s",
                                        "contents", [], False, None))
            for sampler in (rss, site_rss):
                if sampler is not None:
                    sampler.stop.set()
                    sampler.join()
            ok = report(cases, rss, sets, site_rss)
        log(f"(total {time.perf_counter() - started:.0f} s)")
        return 0 if ok else 1
    except KeyboardInterrupt:
        log("\ninterrupted; cleaning up")
        return 130
    finally:
        if rss is not None:
            rss.stop.set()
        if args.keep:
            log(f"left in place: {workdir}")
        else:
            remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
