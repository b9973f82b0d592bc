"""Job logs name users' paths: private by default (folder 0700, logs 0600, whatever the umask),
readable by a configured site group only (folder 2750 in the group, logs 0640), from every
process that writes one (the server at launch, the worker, another process later)."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hera_stage_ext.jobs import EngineConfig, create_stage_job, get_job, run_pending
from hera_stage_ext.jobs.joblog import JobLog, prepare_log_dir
from hera_stage_ext.standard_kinds import standard_kinds

from .api_fixtures import *  # noqa: F403
from .job_fixtures import Site, make_site


def other_group() -> grp.struct_group:
    """A group this process may give its files that is not its own primary group."""
    mine = os.getegid()
    if os.geteuid() == 0:
        for name in ("nogroup", "users", "daemon"):
            try:
                return grp.getgrnam(name)
            except KeyError:
                continue
        candidates = [g for g in grp.getgrall() if g.gr_gid != mine]
    else:
        candidates = [grp.getgrgid(g) for g in os.getgroups() if g != mine]
    if not candidates:
        pytest.skip("this account belongs to no second group to give the logs")
    return candidates[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)  # what a careless session might run with: nothing masked
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def site(tmp_path) -> Iterator[Site]:
    from hera_stage_ext.catalogue.db import Database

    db = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    db.upgrade()
    yield make_site(db, tmp_path / "site", files_per_night=1, nights=1)
    db.dispose()


def test_job_logs_are_private_by_default(site: Site, loose_umask: None) -> None:
    site.logs.mkdir(mode=0o755)
    old = site.logs / "job-999.log"  # a log written before logs were private
    old.write_text("old\n")
    os.chmod(old, 0o644)
    prepare_log_dir(site.logs)
    assert mode(site.logs) == 0o700
    job = create_stage_job(site.db, "alice", site.names[:1], "out", "copy", site.roots,
                           log_dir=site.logs)
    log = Path(job["log_path"])
    assert mode(log) == 0o600  # created by the launch
    run_pending(site.db, EngineConfig(kinds=standard_kinds(), fsync=False))
    assert get_job(site.db, job["id"])["state"] == "succeeded"
    assert mode(log) == 0o600 and "succeeded" in log.read_text()
    JobLog(old)("appended")
    assert mode(old) == 0o600
    # A log folder made by the engine itself (no server prepared it): private too.
    fresh = site.archive.root / "fresh-logs"
    JobLog(fresh / "job-1.log")("hello")
    assert mode(fresh) == 0o700 and mode(fresh / "job-1.log") == 0o600


def test_site_group_reads_the_logs(site: Site, loose_umask: None) -> None:
    group = other_group()
    prepare_log_dir(site.logs, group.gr_name)
    assert mode(site.logs) == 0o2750 and os.stat(site.logs).st_gid == group.gr_gid
    job = create_stage_job(site.db, "alice", site.names[:1], "out", "copy", site.roots,
                           log_dir=site.logs)
    log = Path(job["log_path"])
    assert mode(log) == 0o640 and os.stat(log).st_gid == group.gr_gid
    # Another process (as a worker is) gives its logs the same, untold.
    other = site.logs / "job-2.log"
    subprocess.run([sys.executable, "-c", "import sys; from hera_stage_ext.jobs.joblog import "
                    "JobLog; JobLog(sys.argv[1])('from a worker')", str(other)], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert mode(other) == 0o640 and os.stat(other).st_gid == group.gr_gid
    assert "from a worker" in other.read_text()
    # Without the group again: the folder is private once more.
    prepare_log_dir(site.logs)
    assert mode(site.logs) == 0o700


def test_unknown_group_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no group named 'no-such-group-here'"):
        prepare_log_dir(tmp_path / "logs", "no-such-group-here")


# ----- the server's configuration ---------------------------------------------------------------
@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"


@pytest.fixture
def staging_config(tmp_path) -> dict:
    return {"job_log_dir": str(tmp_path / "server-logs"), "job_log_group": other_group().gr_name,
            "start_worker": False}


async def test_server_applies_job_log_group(api, ingested, tmp_path) -> None:
    logs = tmp_path / "server-logs"
    group = other_group()
    assert mode(logs) == 0o2750 and os.stat(logs).st_gid == group.gr_gid
    code, job = await api("POST", "stage", {"destination": "staged",
                                            "names": ["zen.2457644.10000.xx.HH.uvh5"]})
    assert code == 202, job
    log = Path(job["log_path"])
    assert log.parent == logs
    assert mode(log) == 0o640 and os.stat(log).st_gid == group.gr_gid


def test_a_logs_control_characters_are_written_escaped(tmp_path) -> None:
    """Whatever writes a job's log (a message, lines a user's worker shipped), its control
    characters but tabs and line ends are written escaped: an escape sequence, a carriage
    return or a NUL in a file's name or a worker's lines never acts on the terminal of whoever
    reads the log (``hera-stage log``)."""
    from hera_stage_ext.jobs.joblog import JobLog, read_log

    from hera_stage_ext.jobs.copy_pool import _append

    log = JobLog(tmp_path / "job.log")
    log("copy evil\x1b]0;owned\x07name (3 bytes)")
    log.append_lines("shipped\r\x00\x7f\u009b[31m\tline \u00e9t\u00e9\nnext\n")
    _append(str(tmp_path / "job.log"), "helper \x1b[2J\n")  # a copy helper's own write
    text, _ = read_log({"log_path": str(tmp_path / "job.log")})
    assert text.endswith("copy evil\\x1b]0;owned\\x07name (3 bytes)\n"
                         "shipped\\x0d\\x00\\x7f\\x9b[31m\tline \u00e9t\u00e9\nnext\n"
                         "helper \\x1b[2J\n"), text


def test_a_logs_lines_are_stamped_with_the_utc_time_to_the_millisecond(tmp_path) -> None:
    """Each line (a noted file's too, and lines noted across a second's turn) starts with the
    UTC time it was written, to the millisecond, as an ISO date with a ``Z``."""
    import datetime as dt
    import time

    from hera_stage_ext.jobs.joblog import read_log

    log = JobLog(tmp_path / "job.log")
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for i in range(3):
        log.note(f"sent file{i}")
        time.sleep(0.6)  # the second turns between some of them
    log("done")
    after = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    text, _ = read_log({"log_path": str(tmp_path / "job.log")})
    lines = text.splitlines()
    assert [line.split("Z  ", 1)[1] for line in lines] == [
        "sent file0", "sent file1", "sent file2", "done"]
    stamps = [line.split("Z  ", 1)[0] for line in lines]
    assert all(len(stamp) == len("2026-12-07T16:41:14.864") for stamp in stamps), stamps
    times = [dt.datetime.fromisoformat(stamp) for stamp in stamps]
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= times[0]
    assert times == sorted(times) and times[-1] <= after
    assert times[-1] - times[0] >= dt.timedelta(seconds=1.5)
