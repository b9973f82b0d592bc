"""Many users on one PostgreSQL: three real Linux users (hs_alice, hs_bob, hs_carol), each with
their own Jupyter server and staging worker running as that user, sharing one catalogue and one
job table (a non-superuser database role). Each sees and controls only their own jobs, staged
files belong to the user who staged them, and four workers draining 1,000 queued files together
never copy one twice.

Needs root (to create the users and start processes as them): skipped otherwise, with the
reason; CI runs as root.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

import hera_stage_ext
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.demo import make_demo_archive
from hera_stage_ext.jobs.models import JobRow, JobItem

from .job_fixtures import ingest, start_worker, stop_worker, wait_for
from .jupyter_process import JupyterProcess, jupyter_process
from .pgcluster import PostgresCluster

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates Linux users and runs servers as them")

USERS = ("hs_alice", "hs_bob", "hs_carol")
#: The database role every user's server connects as (not a superuser).
ROLE = "hera_site"


#: Users this module created (removed again when it ends).
_created: list[str] = []


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        _created.append(name)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module", autouse=True)
def remove_created_users() -> Iterator[None]:
    """The machine keeps no user of ours once the module is done (a worker that outlived its
    server is stopped first: userdel refuses a user with processes)."""
    yield
    for name in _created:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
        for _ in range(50):
            if subprocess.run(["userdel", name], check=False,
                              capture_output=True).returncode != 8:  # 8: still logged in
                break
            time.sleep(0.1)
    _created.clear()


def shared_database(cluster: PostgresCluster) -> str:
    """A new database owned by the (non-superuser) site role; its URL as that role."""
    url = cluster.create_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN")
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO {ROLE}')
    return url.replace("postgres@", f"{ROLE}@", 1)


def readable_tree(path: Path) -> None:
    """Everyone may read the archive (as on a site's shared store)."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


@dataclass
class Home:
    user: str
    uid: int
    path: Path  # the user's home: their Jupyter files and workspace, mode 0700
    workspace: Path  # root_dir and allowed root of their server


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, so the users could not reach it.
    path = Path(tempfile.mkdtemp(prefix="hs-multiuser-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def code_users_can_read(base: Path) -> Iterator[None]:
    """The users' processes import the package from a copy under ``base``: the checkout may sit
    in a folder only root can enter (a ``mktemp -d`` clone), and the capability ``as_user``
    grants does not help there, since alembic looks for its migrations with access(2), which
    ignores capabilities."""
    code = base / "code"
    shutil.copytree(Path(hera_stage_ext.__file__).parent, code / "hera_stage_ext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    readable_tree(code)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(
            [str(code), *filter(None, [os.environ.get("PYTHONPATH")])]))
        yield


def make_home(base: Path, user: str) -> Home:
    """The user (created if need be) and their home under ``base`` (made on first call)."""
    entry = ensure_user(user)
    home = base / "home" / user
    (home / "work").mkdir(parents=True, exist_ok=True)
    os.chmod(home.parent, 0o755)
    for p in (home, home / "work"):
        os.chown(p, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return Home(user, entry.pw_uid, home, home / "work")


def as_user(user: str) -> list[str]:
    """A command prefix running a program as ``user`` (uid, gid, no other groups).

    When this interpreter lives where users cannot reach it (pyenv under a 0700 /root), the
    process keeps one capability, CAP_DAC_READ_SEARCH, so it can read the interpreter: it still
    writes, and owns what it writes, as ``user`` only."""
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    # Probed from a child: setpriv itself still holds root's capabilities when it executes.
    grandchild = ("import subprocess, sys; "
                  "subprocess.run([sys.executable, '-c', 'import hera_stage_ext'], check=True)")
    probe = subprocess.run([*prefix, "--", sys.executable, "-c", grandchild],
                           capture_output=True, check=False)
    if probe.returncode == 0:
        return [*prefix, "--"]
    return [*prefix, "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]


def run_as(user: str, code: str, env: dict[str, str]) -> str:
    """Run Python ``code`` as ``user``; its stdout."""
    done = subprocess.run([*as_user(user), sys.executable, "-c", code],
                          env={**os.environ, **env}, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- each user's own server and worker --------------------------------------------------------
@dataclass
class Tenant:
    home: Home
    server: JupyterProcess


@pytest.fixture(scope="module")
def tenants(postgres: PostgresCluster, base: Path) -> Iterator[dict[str, Tenant]]:
    archive = make_demo_archive(base / "archive", files_per_night=3, nights=2)
    readable_tree(archive.root / "stores")
    db_url = shared_database(postgres)
    with ExitStack() as stack:
        out = {}
        for user in USERS:
            home = make_home(base, user)
            jupyter_dir = home.path / "jupyter"
            jupyter_dir.mkdir(exist_ok=True)
            os.chown(jupyter_dir, home.uid, pwd.getpwnam(user).pw_gid)
            # alice and bob are named by the hub; carol's server takes its system user's name.
            env = {"HOME": str(home.path), "USER": user, "LOGNAME": user}
            if user != "hs_carol":
                env["JUPYTERHUB_USER"] = user
            config = {"StagingApp": {
                "db_url": db_url, "stores": archive.stores, "allowed_roots": [str(home.workspace)],
                # Workers leave soon after their last job: none lingers after the test.
                "worker_idle_exit_seconds": 0.2,
            }}
            server = stack.enter_context(jupyter_process(
                jupyter_dir, root_dir=home.workspace, config=config, env=env,
                prefix=as_user(user)))
            out[user] = Tenant(home, server)
        out["hs_alice"].server.api("ingest", {"store": "onsite", "globs": ["*/*"]})
        yield out


def stage(tenant: Tenant, names: list[str], destination: str) -> int:
    reply = tenant.server.request("POST", "hera-stage/api/stage",
                                  {"names": names, "destination": destination})
    assert reply.status_code == 202, reply.text + tenant.server.log_tail()
    return reply.json()["id"]


def finished(tenant: Tenant, job_id: int) -> dict:
    job = wait_for(lambda: (j := tenant.server.api(f"jobs/{job_id}"))["finished_at"] and j,
                   timeout=90, step=0.2)
    assert job["state"] == "succeeded", job
    return job


def test_each_user_sees_controls_and_owns_only_their_own(tenants: dict[str, Tenant]) -> None:
    names = [r["name"] for r in tenants["hs_alice"].server.api(
        "search", {"search": {"name-matches": "zen.%.xx.HH.uvh5"}, "limit": 100})["results"]]
    assert len(names) >= 4
    # All three at once: each server's own worker (running as its user) takes its user's job.
    launched = {user: stage(t, names[:3], "staged") for user, t in tenants.items()}
    jobs = {user: finished(tenants[user], job_id) for user, job_id in launched.items()}

    for user, tenant in tenants.items():
        # Each server lists its user's job only, and says whose it is.
        listed = tenant.server.api("jobs")["jobs"]
        assert [j["id"] for j in listed] == [jobs[user]["id"]]
        assert listed[0]["owner"] == user
        # The files are the user's own, in their own workspace, with the archive's content.
        staged = tenant.home.workspace / "staged"
        files = [p for p in staged.rglob("*") if p.is_file() and "STAGING" not in p.name]
        assert len(files) == 3
        assert {p.stat().st_uid for p in [staged, *staged.rglob("*")]} == {tenant.home.uid}
        # The job log is written by the user's worker, in the user's data directory.
        log_path = Path(jobs[user]["log_path"])
        assert log_path.is_relative_to(tenant.home.path) and log_path.stat().st_uid == \
            tenant.home.uid

    # Another user's job does not exist, whatever alice asks of it; it stays as it was.
    alice, bob_job = tenants["hs_alice"].server, jobs["hs_bob"]["id"]
    for method, path, body in [("GET", f"jobs/{bob_job}", None),
                               ("GET", f"jobs/{bob_job}/log", None),
                               ("POST", f"jobs/{bob_job}/cancel", {}),
                               ("POST", f"jobs/{bob_job}/retry", {}),
                               ("DELETE", f"jobs/{bob_job}", None)]:
        reply = alice.request(method, f"hera-stage/api/{path}", body)
        assert reply.status_code == 404, (method, path, reply.text)
        assert reply.json()["message"] == f"no job {bob_job}"
    bob = tenants["hs_bob"].server.api(f"jobs/{bob_job}")
    assert bob["state"] == "succeeded" and bob["files_done"] == 3
    # Nor can alice stage into bob's home: it is outside her allowed roots.
    reply = alice.request("POST", "hera-stage/api/stage", {
        "names": names[:1], "destination": str(tenants["hs_bob"].home.workspace / "gift")})
    assert reply.status_code == 403, reply.text
    assert not (tenants["hs_bob"].home.workspace / "gift").exists()


# ----- four workers, one queue -----------------------------------------------------------------
N_FILES, N_JOBS, N_WORKERS = 1000, 8, 4


def test_four_workers_drain_a_thousand_files_once(postgres: PostgresCluster, base: Path) -> None:
    store = base / "drain-store"
    for k in range(N_FILES):
        night = store / str(2457700 + k % 4)
        night.mkdir(parents=True, exist_ok=True)
        (night / f"zen.{2457700 + k % 4}.{10000 + k:05d}.xx.HH.uvh5").write_bytes(
            os.urandom(512 + k % 1024))
    readable_tree(store)
    db_url = shared_database(postgres)
    db = Database(db_url)
    db.upgrade()
    ingest(db, {"drain": {"path": str(store), "kind": "online"}})
    home = make_home(base, "hs_carol")
    sources = {p.name: p for p in store.rglob("*.uvh5")}
    names = sorted(sources)
    per_job = N_FILES // N_JOBS
    # Carol queues the jobs (as herself, so the folders are hers) and no worker runs yet.
    run_as("hs_carol", textwrap.dedent(f"""
        from hera_stage_ext.catalogue.db import Database
        from hera_stage_ext.jobs import create_stage_job
        db = Database({db_url!r})
        names = {names!r}
        for j in range({N_JOBS}):
            create_stage_job(db, "hs_carol", names[j * {per_job}:(j + 1) * {per_job}],
                             "drain/job%d" % j, "copy", [{str(home.workspace)!r}],
                             base={str(home.workspace)!r}, log_dir={str(home.path / "logs")!r})
    """), {"HOME": str(home.path)})

    workers = [start_worker(db_url, prefix=as_user("hs_carol"), extra=["--exit-when-idle"])
               for _ in range(N_WORKERS)]
    outputs = []
    try:
        for w in workers:
            w.wait(180)
    finally:
        outputs = [stop_worker(w) for w in workers]

    with db.read() as s:
        jobs = s.execute(select(JobRow.id, JobRow.state, JobRow.files_done)
                         .order_by(JobRow.id)).all()
        items = s.execute(select(JobItem.state, JobItem.attempts)).all()
    assert [state for _, state, _ in jobs] == ["succeeded"] * N_JOBS
    assert sum(done for _, _, done in jobs) == N_FILES
    assert len(items) == N_FILES and {state for state, _ in items} == {"done"}
    # Claimed once, copied once: no item was ever handed to a second stream or worker.
    assert {attempts for _, attempts in items} == {1}
    # Each job was run by exactly one worker, and the work was shared among them.
    ran = [line.split("running job ")[1].split()[0] for out in outputs
           for line in out.splitlines() if "running job " in line]
    assert sorted(ran, key=int) == [str(job_id) for job_id, _, _ in jobs], outputs
    assert sum(1 for out in outputs if "running job " in out) >= 2, outputs
    # Every file is there once, with the archive's bytes, and belongs to carol.
    staged = [p for p in (home.workspace / "drain").rglob("*.uvh5")]
    assert sorted(p.name for p in staged) == names
    assert all(sha256(p) == sha256(sources[p.name]) for p in staged)
    assert {p.stat().st_uid for p in staged} == {home.uid}
    db.dispose()


def test_a_users_worker_takes_only_that_users_jobs(postgres: PostgresCluster, base: Path) -> None:
    store = base / "gift-store" / "2457800"
    store.mkdir(parents=True)
    (store / "zen.2457800.10000.xx.HH.uvh5").write_bytes(os.urandom(4096))
    readable_tree(store.parent)
    db_url = shared_database(postgres)
    db = Database(db_url)
    db.upgrade()
    ingest(db, {"gift": {"path": str(store.parent), "kind": "online"}})
    bob = make_home(base, "hs_bob")
    make_home(base, "hs_alice")
    # Bob's server queued a job (his worker has not come yet) ...
    run_as("hs_bob", textwrap.dedent(f"""
        from hera_stage_ext.catalogue.db import Database
        from hera_stage_ext.jobs import create_stage_job
        create_stage_job(Database({db_url!r}), "hs_bob", ["zen.2457800.10000.xx.HH.uvh5"],
                         "mine", "copy", [{str(bob.workspace)!r}], base={str(bob.workspace)!r},
                         log_dir={str(bob.path / "logs")!r})
    """), {"HOME": str(bob.path)})
    # ... when alice's server starts her worker (its launcher passes --owner): it must leave
    # bob's job alone.
    alice_worker = start_worker(db_url, prefix=as_user("hs_alice"),
                                extra=["--owner", "hs_alice", "--exit-when-idle"])
    try:
        alice_worker.wait(60)
    finally:
        output = stop_worker(alice_worker)
    with db.read() as s:
        state, started = s.execute(select(JobRow.state, JobRow.started_at)).one()
    db.dispose()
    assert (state, started) == ("queued", None), output
