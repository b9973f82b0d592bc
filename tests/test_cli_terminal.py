"""``hera-stage`` as a person runs it in a terminal: a separate process talking to a real Jupyter
server (its worker slowed by the test throttle, so a job runs long enough to be cancelled or
interrupted), its output piped into a reader that goes away, and Ctrl+C typed on a real
pseudo-terminal. Also the tables it prints and the JSON it keeps for scripts.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hera_stage_ext.demo import ingest_demo_archive, make_demo_archive

from .jupyter_process import JupyterProcess, jupyter_process

#: Seconds the worker sleeps after each chunk (a demo file is one chunk): ~0.4 s a file, one
#: stream, so staging the 30 files of ``zen.*`` takes ~12 s.
CHUNK_DELAY = "0.4"
ALL_ZEN = "zen.*"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[JupyterProcess]:
    base = tmp_path_factory.mktemp("terminal")
    archive = make_demo_archive(base / "demo", files_per_night=6, nights=3)
    ingest_demo_archive(archive)
    config = {"StagingApp": {"db_url": archive.db_url, "stores": archive.stores,
                             "job_log_dir": str(base / "job-logs"), "worker_streams": 1,
                             "worker_idle_exit_seconds": 5.0}}
    with jupyter_process(base, root_dir=archive.workspace, config=config,
                         env={"HERA_STAGE_TEST_CHUNK_DELAY": CHUNK_DELAY}) as jupyter:
        yield jupyter


def command(server: JupyterProcess, *args: str) -> list[str]:
    return [sys.executable, "-m", "hera_stage_ext.cli", "--url", server.url,
            "--token", server.token, *args]


def run(server: JupyterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(server, *args), capture_output=True, text=True, timeout=60)


def running_job(server: JupyterProcess, destination: str) -> dict[str, Any]:
    """Launch a slow stage of every zen file and wait until its worker runs it (the small
    files go to the copy helpers in one hand-over, ~0.4 s each: files_done stays 0 until
    nearly the end, so waiting for it would leave the cancel racing the last file)."""
    job = server.api("stage", {"destination": destination, "query": ALL_ZEN})
    deadline = time.monotonic() + 30
    while (job := server.api(f"jobs/{job['id']}"))["state"] != "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def cancel_quietly(server: JupyterProcess, job_id: int) -> None:
    server.request("POST", f"hera-stage/api/jobs/{job_id}/cancel", {})


# ----- a reader that goes away -----------------------------------------------------------------
@pytest.mark.parametrize("args", [("search", ALL_ZEN, "--all"), ("search", ALL_ZEN, "--json"),
                                  ("jobs",), ("stores",)])
def test_a_closed_pipe_ends_quietly_with_141(server, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already gone: every write meets EPIPE
    try:
        done = subprocess.run(command(server, *args), stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.stderr == "", done.stderr  # no traceback, no "Exception ignored"
    assert done.returncode == 141


def test_head_3_of_a_search_prints_the_header_and_two_rows(server):
    shell = (" ".join(map(repr, command(server, "search", ALL_ZEN, "--all")))
             + ' | head -3; echo "status ${PIPESTATUS[0]}" >&2')
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["NAME", "SIZE", "OBSID", "STORES"]
    # 0 when the whole table fitted in the pipe before `head` left, 141 when it did not
    assert done.stderr.splitlines() in (["status 0"], ["status 141"]), done.stderr


# ----- cancel says what the job is now -------------------------------------------------------
def test_cancel_echoes_cancelling_then_cancelled(server):
    job = running_job(server, "cancel-me")
    done = run(server, "cancel", str(job["id"]))
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:2] == ["ID", "STATE"]
    assert row.split()[:2] == [str(job["id"]), "cancelling"], done.stdout
    assert "stops within seconds" in done.stderr
    done = run(server, "cancel", str(job["id"]), "--wait")
    assert done.stdout.splitlines()[1].split()[:2] == [str(job["id"]), "cancelled"]


# ----- Ctrl+C while following a job ----------------------------------------------------------
def read_until(fd: int, words: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while words not in seen:
        left = deadline - time.monotonic()
        assert left > 0, seen.decode(errors="replace")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_ctrl_c_during_wait_says_the_job_goes_on_and_how_to_follow_or_cancel(server):
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty, as in a shell
        os.execv(sys.executable, command(server, "stage", "ctrl-c", ALL_ZEN, "--wait"))
    # A terminal has a size (a fresh pty's is 0x0, on which tqdm draws nothing).
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        seen = read_until(fd, b"B/s", 30)  # launched, and the bar shows a measured rate
        os.write(fd, b"\x03")  # Ctrl+C, typed: the terminal sends SIGINT to the foreground
        seen += read_until(fd, b"hera-stage cancel", 15)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    text = seen.decode(errors="replace").replace("\r", "")
    job_id = int(text.split("job ", 1)[1].split(":", 1)[0])
    try:
        assert os.waitstatus_to_exitcode(status) == 130, text
        assert "Traceback" not in text
        assert f"stopped following job {job_id}; the job goes on" in text
        assert f"hera-stage job {job_id} --wait" in text
        assert f"hera-stage cancel {job_id}" in text
        assert server.api(f"jobs/{job_id}")["state"] in ("queued", "running")
    finally:
        cancel_quietly(server, job_id)


# ----- tables, and JSON for scripts ----------------------------------------------------------
def columns_aligned(lines: list[str]) -> list[str]:
    """The header's labels, after checking the lines form aligned columns: every line has one
    cell per label (cells are two or more spaces apart), and each column's cells all start
    (left-aligned) or all end (right-aligned) at the same place."""
    cells = [[(m.start(), m.end()) for m in re.finditer(r"\S+(?: \S+)*", line)]
             for line in lines]
    labels = [lines[0][a:b] for a, b in cells[0]]
    assert all(line == line.rstrip() for line in lines)
    assert all(len(row) == len(labels) for row in cells), "\n".join(lines)
    for k in range(len(labels)):
        starts, ends = {row[k][0] for row in cells}, {row[k][1] for row in cells}
        assert len(starts) == 1 or len(ends) == 1, (labels[k], "\n".join(lines))
    return labels


def test_lists_are_tables_with_a_header_and_aligned_columns(server):
    done = run(server, "search", "zen.2457645.*")
    lines = done.stdout.splitlines()
    assert columns_aligned(lines) == ["NAME", "SIZE", "OBSID", "STORES"]
    assert len(lines) == 10 and all(line.startswith("zen.2457645.") for line in lines[1:])
    sizes = [line[: len(lines[0].split("SIZE")[0]) + 4] for line in lines]
    assert len({len(s) for s in sizes}) == 1 and all(s.endswith("B") for s in sizes[1:])

    for args, header in [
        (("search", "session:2457645", "--kind", "observations"), "OBSID"),
        (("search", "zen.2457645.1*", "--kind", "instances"), "FILE"),
        (("search", "session:2457645", "--kind", "sessions"), "SESSION"),
        (("stores",), "NAME"),
    ]:
        lines = run(server, *args).stdout.splitlines()
        assert columns_aligned(lines)[0] == header and len(lines) >= 2, lines

    server.api("stage", {"destination": "tables", "query": "zen.2457646.10000.*"})
    lines = run(server, "jobs").stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "FILES", "BYTES", "FAILED", "METHOD",
                                "DESTINATION"]
    columns_aligned(lines)


def test_json_output_is_the_servers_json_unchanged(server):
    """Scripts read ``--json``: exactly ``json.dumps(reply, indent=2)`` of the REST reply's
    rows, as before tables came."""
    def same(args: tuple[str, ...], rows: Any) -> None:
        done = run(server, *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout == json.dumps(rows, indent=2) + "\n"

    search = server.api("search", {"query": "zen.2457644.*", "kind": "files", "limit": 100,
                                   "count": True})
    same(("search", "zen.2457644.*", "--json"), search["results"])
    same(("stores", "--json"), server.api("stores")["stores"])
    job = server.api("stage", {"destination": "json-shape", "query": "zen.2457646.10745.*"})
    deadline = time.monotonic() + 60
    while any(j["state"] not in ("succeeded", "failed", "cancelled")
              for j in server.api("jobs")["jobs"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    same(("job", str(job["id"]), "--json"), server.api(f"jobs/{job['id']}"))
    same(("jobs", "--json"), server.api("jobs")["jobs"])
