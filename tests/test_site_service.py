"""The site service (``hera-stage site``) without a hub: site tokens, per-request owners, the
worker API and a user's worker over HTTP.

One real service process per backend (SQLite and a real PostgreSQL), started by the
``hera-stage site`` command with its own config file; users are tokens issued by
``hera-stage site-token``. What a user would notice: bob sees nothing of alice's jobs and
cannot act on them (404, as if they did not exist), nor claim them through the worker API; no
token reaches a Jupyter resource (kernels, contents, sessions, terminals); a job belongs to the
token's user whatever the request says; a stage job alice launches is run by a worker started
with her token, and the files land in her folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.site import tokens

from .jupyter_process import free_port

FILES = [f"zen.2459000.{i}.uvh5" for i in range(1, 4)]
CLEAN_ENV = ("JPY_PARENT_PID", "HERA_STAGE_URL", "HERA_STAGE_TOKEN", "JUPYTERHUB_API_TOKEN",
             "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_SERVICE_PREFIX", "HERA_STAGE_DB_URL",
             "HERA_STAGE_SITE_TOKEN")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update(extra)
    return env


@dataclass
class Site:
    url: str  # the service's base URL, ending in '/'
    db_url: str
    config: Path
    work: Path
    tokens: dict[str, str]
    process: subprocess.Popen[bytes]

    def call(self, user: str | None, method: str, path: str, body: Any = None,
             token: str | None = None) -> requests.Response:
        headers = {}
        if token is not None or user is not None:
            headers["Authorization"] = f"token {self.tokens[user] if user else token}"
        return requests.request(method, self.url + path, json=body, headers=headers,
                                timeout=30)

    def api(self, user: str, method: str, path: str, body: Any = None) -> requests.Response:
        return self.call(user, method, f"hera-stage/api/{path}", body)

    def home(self, user: str) -> Path:
        path = self.work / "homes" / user
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stage(self, user: str, destination: Path | str, **body: Any) -> dict[str, Any]:
        reply = self.api(user, "POST", "stage",
                         {"names": FILES, "destination": str(destination), **body})
        assert reply.status_code == 202, reply.text
        return reply.json()

    def worker(self, user: str, *roots: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A user's worker run until no job of the user's is left."""
        command = [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url", self.url,
                   "--exit-when-idle", "--copy-processes", "0", "--heartbeat", "0.2",
                   *[f"--allowed-root={root}" for root in roots]]
        return subprocess.run(command, env=_env(HERA_STAGE_SITE_TOKEN=self.tokens[user],
                                                XDG_CACHE_HOME=str(self.work / f"cache-{user}")),
                              capture_output=True, text=True, timeout=timeout)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hera_stage_ext.cli", *args], env=_env(),
                          capture_output=True, text=True, timeout=120)


def prepare_site(work: Path, db_url: str) -> tuple[Path, dict[str, str]]:
    """A store of FILES, the service's config file, and the users' tokens."""
    store = work / "store"
    store.mkdir(parents=True)
    for i, name in enumerate(FILES):
        (store / name).write_bytes(os.urandom(1000 + i))
    config = work / "site_config.py"
    config.write_text(
        f"c.StagingApp.db_url = {db_url!r}\n"
        f"c.StagingApp.stores = {{'s1': {{'path': {str(store)!r}}}}}\n"
        f"c.StagingApp.job_log_dir = {str(work / 'logs')!r}\n"
        "c.StagingApp.start_worker = False\n")
    config.chmod(0o600)
    # The CLI issues alice's token (printed once on stdout); the others in-process.
    issued = _cli("site-token", "--config", str(config), "issue", "alice", "--note", "test")
    assert issued.returncode == 0, issued.stderr
    db = Database(db_url)
    users = {"alice": issued.stdout.strip(),
             "bob": tokens.issue(db, "bob", ["read", "stage"])[0],
             "reader": tokens.issue(db, "reader", ["read"])[0],
             "boss": tokens.issue(db, "boss", ["admin"])[0]}
    db.dispose()
    return config, users


@contextlib.contextmanager
def serve_site(work: Path, db_url: str, config: Path, users: dict[str, str],
               name: str = "service", port: int | None = None) -> Iterator[Site]:
    """One ``hera-stage site`` process on ``config`` (on ``port``, else a free one), until the
    block ends."""
    port = port or free_port()
    command = [sys.executable, "-m", "hera_stage_ext.cli", "site", "--config", str(config),
               "--port", str(port), "--root-dir", str(work)]
    if os.geteuid() == 0:
        command.append("--allow-root")
    data = work / f"jupyter-{name}"
    env = _env(JUPYTER_CONFIG_DIR=str(data / "config"), JUPYTER_RUNTIME_DIR=str(data / "rt"),
               JUPYTER_DATA_DIR=str(data / "data"))
    log = work / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=work, start_new_session=True)
    site = Site(f"http://127.0.0.1:{port}/", db_url, config, work, users, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                if site.api("alice", "GET", "status").ok:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        yield site
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def site_service(work: Path, db_url: str) -> Iterator[Site]:
    config, users = prepare_site(work, db_url)
    with serve_site(work, db_url, config, users) as site:
        reply = site.api("boss", "POST", "ingest", {"store": "s1"})
        assert reply.ok and reply.json()["registered"] == len(FILES), reply.text
        yield site


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    work = tmp_path_factory.mktemp(f"site-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{work / 'catalogue.sqlite'}"
    else:
        db_url = request.getfixturevalue("postgres").create_database()
    with site_service(work, db_url) as running:
        yield running


def _issue_stage_token(site: Any, user: str) -> None:
    """A site token for ``user`` (read and stage scopes), kept in ``site.tokens``."""
    db = Database(site.db_url)
    try:
        site.tokens[user] = tokens.issue(db, user, ["read", "stage"])[0]
    finally:
        db.dispose()


def _dest(site: Site, user: str, name: str) -> Path:
    return site.home(user) / name


# ----- identity -------------------------------------------------------------------------------
def test_a_token_is_its_user(site: Site) -> None:
    for user in ("alice", "bob", "boss"):
        reply = site.api(user, "GET", "status")
        assert reply.status_code == 200 and reply.json()["user"] == user


@pytest.mark.parametrize("token", [None, "hst_not-a-token", "garbage", ""])
def test_a_bad_or_missing_token_is_refused_with_json(site: Site, token: str | None) -> None:
    reply = site.call(None, "GET", "hera-stage/api/jobs", token=token)
    assert reply.status_code in (401, 403)
    assert "message" in reply.json()
    # A token in the URL is not taken either (it would be in every access log).
    reply = requests.get(site.url + "hera-stage/api/status",
                         params={"token": site.tokens["alice"]}, timeout=30)
    assert reply.status_code in (401, 403)


def test_a_revoked_token_is_refused(site: Site) -> None:
    db = Database(site.db_url)
    try:
        token, record = tokens.issue(db, "carol", ["read"])
        assert site.call(None, "GET", "hera-stage/api/status", token=token).ok
        listed = _cli("site-token", "--config", str(site.config), "list", "--json")
        assert listed.returncode == 0
        rows = json.loads(listed.stdout)
        assert record["id"] in [row["id"] for row in rows]
        assert token not in listed.stdout and all("hash" not in row for row in rows)
        revoked = _cli("site-token", "--config", str(site.config), "revoke", str(record["id"]))
        assert revoked.returncode == 0, revoked.stderr
        assert site.call(None, "GET", "hera-stage/api/status", token=token).status_code == 403
        again = _cli("site-token", "--config", str(site.config), "revoke", str(record["id"]))
        assert again.returncode == 1 and "no site token" in again.stderr
    finally:
        db.dispose()


def test_a_revoke_takes_effect_on_the_next_request_of_every_replica(site: Site) -> None:
    """A token each replica has just accepted (so a lookup cache would still hold it) is
    refused by both on the very next request once it is revoked: a second service on the same
    database, as a site runs replicas, learns of the revoke from the database alone."""
    db = Database(site.db_url)
    try:
        token, record = tokens.issue(db, "dave", ["read"])
        with serve_site(site.work, site.db_url, site.config, site.tokens, "replica") as two:
            for service in (site, two, site, two):
                assert service.call(None, "GET", "hera-stage/api/status", token=token).ok
            tokens.revoke(db, record["id"])
            for service in (site, two):
                reply = service.call(None, "GET", "hera-stage/api/status", token=token)
                assert reply.status_code == 403, reply.text
                assert reply.json()["message"]
            assert two.api("reader", "GET", "status").ok  # the other tokens still work
    finally:
        db.dispose()


@pytest.mark.parametrize("method,path", [
    ("GET", "api/contents"), ("POST", "api/kernels"), ("GET", "api/kernels"),
    ("GET", "api/sessions"), ("POST", "api/sessions"), ("GET", "api/kernelspecs"),
    ("PUT", "api/contents/x.txt"), ("POST", "api/terminals"), ("GET", "api/nbconvert"),
])
def test_no_jupyter_resource_for_anyone(site: Site, method: str, path: str) -> None:
    for user in ("alice", "boss"):
        body = {"type": "file", "format": "text", "content": "x"} if method == "PUT" else {}
        reply = site.call(user, method, path, body)
        assert reply.status_code in (403, 404), (user, method, path, reply.text)
    assert not (site.work / "x.txt").exists()


def test_scopes_limit_what_a_token_does(site: Site) -> None:
    assert site.api("reader", "POST", "search", {"query": "name ~ zen"}).ok
    reply = site.api("reader", "POST", "stage", {"names": FILES,
                                                 "destination": str(site.home("reader"))})
    assert reply.status_code == 403
    assert site.api("alice", "POST", "ingest", {"store": "s1"}).status_code == 403
    assert site.api("reader", "POST", "worker/claim", {"worker_id": "w"}).status_code == 403
    # Reading is reading: a data set's members (the panel's page) and the fixity report.
    members = site.api("reader", "GET", f"files/{FILES[0]}/members")
    assert members.status_code == 400 and "not a data set" in members.json()["message"]
    assert site.api("reader", "GET", "fixity").ok
    assert site.api("reader", "POST", "fixity/audit", {}).status_code == 403


def test_a_body_over_the_services_limit_is_refused_before_it_is_read(site: Site) -> None:
    """A body just over the JSON limit gets the JSON 413 that names it; one well over it is
    refused from its length alone (jupyter_server would otherwise read up to 512 MiB of it into
    the service's memory first), and the service goes on answering."""
    from hera_stage_ext.api.base import MAX_BODY_BYTES, SITE_MAX_BODY_BYTES

    headers = {"Authorization": f"token {site.tokens['alice']}",
               "Content-Type": "application/json"}
    url = site.url + "hera-stage/api/search"
    reply = requests.post(url, data=b" " * (MAX_BODY_BYTES + 1), headers=headers, timeout=30)
    assert reply.status_code == 413 and str(MAX_BODY_BYTES) in reply.json()["message"]

    # 16 MiB: well over the service's limit, well under jupyter_server's own (512 MiB).
    big = b" " * (8 * SITE_MAX_BODY_BYTES)
    try:
        reply = requests.post(url, data=big, headers=headers, timeout=30)
    except requests.ConnectionError:
        pass  # refused and closed while the body was still on its way
    else:
        assert reply.status_code == 400, reply.text
    assert site.api("alice", "POST", "search", {"query": "name ~ zen"}).ok


# ----- owners ---------------------------------------------------------------------------------
def test_bob_cannot_see_or_touch_alices_jobs(site: Site) -> None:
    job = site.stage("alice", _dest(site, "alice", "private"))
    number = job["id"]
    assert job["owner"] == "alice"
    assert number not in [j["id"] for j in site.api("bob", "GET", "jobs").json()["jobs"]]
    for method, path in [("GET", f"jobs/{number}"), ("GET", f"jobs/{number}/log"),
                         ("POST", f"jobs/{number}/cancel"), ("POST", f"jobs/{number}/retry"),
                         ("DELETE", f"jobs/{number}"),
                         ("GET", f"worker/jobs/{number}"),
                         ("POST", f"worker/jobs/{number}/items/claim"),
                         ("POST", f"worker/jobs/{number}/items/exchange"),
                         ("POST", f"worker/jobs/{number}/heartbeat"),
                         ("POST", f"worker/jobs/{number}/log")]:
        reply = site.api("bob", method, path, {"worker_id": "bob-w", "text": "x\n"}
                         if method == "POST" else None)
        assert reply.status_code == 404, (method, path, reply.text)
        assert reply.json()["error"] == "NotFound"
    # Bob's worker claims nothing although alice's job waits.
    reply = site.api("bob", "POST", "worker/claim", {"worker_id": "bob-w"})
    assert reply.status_code == 200 and reply.json()["job"] is None
    assert site.api("alice", "GET", f"jobs/{number}").json()["state"] == "queued"
    assert "x\n" not in site.api("alice", "GET", f"jobs/{number}/log").json()["text"]
    # The admin sees every user's jobs.
    assert number in [j["id"] for j in site.api("boss", "GET", "jobs").json()["jobs"]]
    assert site.api("alice", "POST", f"jobs/{number}/cancel").json()["state"] == "cancelled"
    assert not _dest(site, "alice", "private").exists()  # the service never touched it


def test_the_owner_comes_only_from_the_token(site: Site) -> None:
    destination = _dest(site, "bob", "mine")
    reply = site.call("bob", "POST", "hera-stage/api/stage",
                      {"names": FILES, "destination": str(destination), "owner": "alice"})
    # Unknown fields are ignored or refused; never taken as the owner.
    assert reply.status_code in (202, 400), reply.text
    if reply.status_code == 202:
        number = reply.json()["id"]
        assert reply.json()["owner"] == "bob"
        assert site.api("alice", "GET", f"jobs/{number}").status_code == 404
        site.api("bob", "POST", f"jobs/{number}/cancel")
    forged = requests.post(site.url + "hera-stage/api/stage", timeout=30,
                           json={"names": FILES, "destination": str(destination)},
                           headers={"Authorization": f"token {site.tokens['bob']}",
                                    "X-Forwarded-User": "alice", "X-Remote-User": "alice"})
    assert forged.status_code == 202 and forged.json()["owner"] == "bob"
    site.api("bob", "POST", f"jobs/{forged.json()['id']}/cancel")
    # Bob cannot claim for alice through her name in a worker request either.
    site.stage("alice", _dest(site, "alice", "waiting"))
    claim = site.api("bob", "POST", "worker/claim", {"worker_id": "w", "owner": "alice"})
    assert claim.json()["job"] is None


def test_a_relative_destination_is_refused(site: Site) -> None:
    for destination in ("relative/dir", "/a/../b", "/a//b/"):
        reply = site.api("alice", "POST", "stage", {"names": FILES, "destination": destination})
        assert reply.status_code == 400 and "absolute" in reply.json()["message"]


# ----- the user's worker ----------------------------------------------------------------------
def _wait_finished(site: Site, user: str, number: int, timeout: float = 15.0) -> dict[str, Any]:
    """The job once it has ended (its worker has exited: the service's status cache may still
    answer its last state for a moment)."""
    deadline = time.monotonic() + timeout
    while (job := site.api(user, "GET", f"jobs/{number}").json())["state"] in ("queued",
                                                                              "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def _run_users_worker(site: Site, user: str, number: int, store_class: type | None = None,
                      store_options: dict[str, Any] | None = None, **config: Any) -> None:
    """Run ``user``'s worker over HTTP (``store_class``, an ``HttpJobStore``, with the user's
    token) until its pending job ``number`` is done; ``config``: more ``EngineConfig``, over
    what the store sets (``HttpJobStore.tune``)."""
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.run import EngineConfig, run_pending
    from hera_stage_ext.standard_kinds import standard_kinds

    store = (store_class or HttpJobStore)(site.url, site.tokens[user],
                                          spool_dir=site.work / f"cache-{user}",
                                          **(store_options or {}))
    settings = EngineConfig(kinds=standard_kinds(), heartbeat_seconds=0.2, fsync=False,
                            allowed_roots=(str(site.home(user).resolve()),))
    store.tune(settings)  # as a user's worker sets itself up (``worker.main``)
    for name, value in config.items():
        setattr(settings, name, value)
    try:
        assert run_pending(store, settings) == [number]
    finally:
        store.close()


def test_a_later_run_over_the_service_takes_the_folder_the_job_took_or_none(site: Site) -> None:
    """A user's worker stopped mid-job tells the service which folder the job took (its
    pin, kept with the job). The folder moved aside and another made in its place, the next
    run's worker writes nothing into the new one and the job fails saying why."""
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.run import EngineConfig, run_pending
    from hera_stage_ext.standard_kinds import standard_kinds

    _issue_stage_token(site, "olga")
    destination = _dest(site, "olga", "pinned")
    number = site.stage("olga", destination)["id"]
    stop = threading.Event()

    class StopAtSecondClaim(HttpJobStore):
        claims = 0

        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            if path.endswith(("/items/claim", "/items/exchange")):
                StopAtSecondClaim.claims += 1
                if StopAtSecondClaim.claims == 2:
                    stop.set()
            return super().call(method, path, body)

    # One stream: with more, the first claims take every file before the stop is seen.
    settings = EngineConfig(kinds=standard_kinds(), heartbeat_seconds=0.2, fsync=False,
                            claim_batch=1, streams=1,
                            allowed_roots=(str(site.home("olga").resolve()),))
    for store_class, stopping in ((StopAtSecondClaim, stop), (HttpJobStore, None)):
        store = store_class(site.url, site.tokens["olga"], spool_dir=site.work / "cache-olga")
        store.tune(settings)
        settings.claim_batch = settings.first_claim_batch = 1
        try:
            assert run_pending(store, settings, stop=stopping) == [number]
        finally:
            store.close()
        if stopping is not None:
            job = site.api("olga", "GET", f"jobs/{number}").json()
            st = os.stat(destination)
            assert job["options"]["pin"] == [st.st_dev, st.st_ino], job
            assert job["files_done"] < len(FILES)
            destination.rename(destination.with_name("aside"))
            destination.mkdir()
    job = _wait_finished(site, "olga", number)
    assert job["state"] == "failed" and "not the folder it was when the job took it" in \
        job["error"], job
    assert list(destination.iterdir()) == []


def test_a_run_whose_finish_fails_keeps_the_folder_it_took(site: Site) -> None:
    """A run that ends before its first heartbeat and whose finish does not reach the service
    still leaves the job's pin with it (its release says it): the next attempt, finding
    another folder in its place, writes nothing there and fails saying why."""
    from hera_stage_ext.errors import ServiceError
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.run import EngineConfig
    from hera_stage_ext.jobs.worker import Worker
    from hera_stage_ext.standard_kinds import standard_kinds

    _issue_stage_token(site, "olga")
    destination = _dest(site, "olga", "pinned-finish")
    number = site.stage("olga", destination)["id"]

    class FinishFailsOnce(HttpJobStore):
        failed = False

        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            if path.endswith("/finish") and not FinishFailsOnce.failed:
                FinishFailsOnce.failed = True
                raise ServiceError("the site service cannot be reached (gave up)")
            return super().call(method, path, body)

    # The heartbeat's default second: a job of a few small files ends before it.
    settings = EngineConfig(kinds=standard_kinds(), fsync=False,
                            allowed_roots=(str(site.home("olga").resolve()),))
    store = FinishFailsOnce(site.url, site.tokens["olga"], spool_dir=site.work / "cache-olga")
    store.tune(settings)
    try:
        Worker(store, settings).run(poll_seconds=0.1, exit_when_idle=True)
    finally:
        store.close()
    assert FinishFailsOnce.failed
    job = site.api("olga", "GET", f"jobs/{number}").json()
    st = os.stat(destination)
    assert job["options"].get("pin") == [st.st_dev, st.st_ino], job
    destination.rename(destination.with_name("aside-finish"))
    destination.mkdir()
    _run_users_worker(site, "olga", number)
    job = _wait_finished(site, "olga", number)
    assert job["state"] == "failed" and "not the folder it was when the job took it" in \
        job["error"], job
    assert list(destination.iterdir()) == []


def test_a_users_worker_runs_her_job_and_the_files_land(site: Site) -> None:
    destination = _dest(site, "alice", "staged")
    number = site.stage("alice", destination)["id"]
    # Bob's worker runs nothing of hers.
    bobs = site.worker("bob", site.home("bob"))
    assert bobs.returncode == 0, bobs.stderr
    assert not destination.exists()
    run = site.worker("alice", site.home("alice"))
    assert run.returncode == 0, run.stderr
    job = _wait_finished(site, "alice", number)
    assert job["state"] == "succeeded", job
    assert sorted(p.name for p in destination.iterdir()) == sorted([*FILES, "STAGING-SUCCEEDED"])
    for name in FILES:
        assert (destination / name).read_bytes() == (site.work / "store" / name).read_bytes()
    log = site.api("alice", "GET", f"jobs/{number}/log").json()["text"]
    assert "starts job" in log and f"job {number} succeeded" in log
    assert all(f"copy {name}" in log for name in FILES)
    assert not list((site.work / "cache-alice").rglob("*.log"))  # shipped, then removed


def test_the_worker_refuses_a_folder_outside_its_roots(site: Site) -> None:
    elsewhere = site.work / "elsewhere" / "dest"
    number = site.stage("alice", elsewhere)["id"]
    run = site.worker("alice", site.home("alice"))
    assert run.returncode == 0, run.stderr
    job = _wait_finished(site, "alice", number)
    assert job["state"] == "failed"
    assert "outside the allowed roots" in job["error"]
    assert not elsewhere.exists()


def test_the_worker_fails_a_job_whose_folder_another_job_holds(site: Site) -> None:
    stale = _dest(site, "alice", "stale")
    stale.mkdir()
    (stale / "STAGING-IN-PROGRESS").write_text("job 999999999\nowner someone\n")
    taken = site.stage("alice", stale)["id"]
    # A marker naming an unfinished job of alice's holds the folder.
    first = site.stage("alice", _dest(site, "alice", "first"))["id"]
    held = _dest(site, "alice", "held")
    held.mkdir()
    (held / "STAGING-IN-PROGRESS").write_text(f"job {first}\nowner alice\n")
    refused = site.stage("alice", held)["id"]
    run = site.worker("alice", site.home("alice"))
    assert run.returncode == 0, run.stderr
    # A marker naming no job of alice's is stale: the worker takes the folder and stages.
    assert _wait_finished(site, "alice", taken)["state"] == "succeeded"
    job = _wait_finished(site, "alice", refused)
    assert job["state"] == "failed" and f"job {first} is already staging" in job["error"]
    assert sorted(p.name for p in held.iterdir()) == ["STAGING-IN-PROGRESS"]
    assert _wait_finished(site, "alice", first)["state"] == "succeeded"


def test_a_cancel_reaches_the_users_worker(site: Site) -> None:
    destination = _dest(site, "alice", "cancelled")
    number = site.stage("alice", destination)["id"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url", site.url,
         "--exit-when-idle", "--copy-processes", "0", "--heartbeat", "0.2", "--streams", "1",
         f"--allowed-root={site.home('alice')}"],
        env=_env(HERA_STAGE_SITE_TOKEN=site.tokens["alice"], HERA_STAGE_TEST_CHUNK_DELAY="2",
                 XDG_CACHE_HOME=str(site.work / "cache-alice")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while site.api("alice", "GET", f"jobs/{number}").json()["state"] != "running":
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.1)
        assert site.api("bob", "POST", f"jobs/{number}/cancel").status_code == 404
        assert site.api("alice", "POST", f"jobs/{number}/cancel").ok
        assert worker.wait(60) == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    job = _wait_finished(site, "alice", number)
    assert job["state"] == "cancelled", job
    assert (destination / "STAGING-ERRORS").exists()
    assert not (destination / "STAGING-IN-PROGRESS").exists()
    assert not [p for p in destination.rglob("*") if "hera-tmp" in p.name]
    assert f"job {number} cancelled" in site.api("alice", "GET", f"jobs/{number}/log").json()["text"]


def test_the_users_worker_reports_bytes_as_they_move(site: Site) -> None:
    """Through the worker API (the worker holds no database): the bytes a user's worker has
    written and not yet committed reach the job's JSON with its heartbeat, in steps, while no
    file is done (issue 17, point 5)."""
    number = site.stage("alice", _dest(site, "alice", "followed"))["id"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url", site.url,
         "--exit-when-idle", "--copy-processes", "0", "--heartbeat", "0.1", "--streams", "1",
         "--chunk-size", "128", f"--allowed-root={site.home('alice')}"],
        env=_env(HERA_STAGE_SITE_TOKEN=site.tokens["alice"], HERA_STAGE_TEST_CHUNK_DELAY="0.3",
                 XDG_CACHE_HOME=str(site.work / "cache-alice")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        while worker.poll() is None:
            seen.append(site.api("alice", "GET", f"jobs/{number}").json())
            time.sleep(0.05)
        assert worker.returncode == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    total = seen[0]["bytes_total"]
    assert all(j["bytes_done"] + j["bytes_moving"] <= total for j in seen)
    steps = {j["bytes_moving"] for j in seen if j["files_done"] == 0 and j["bytes_moving"]}
    assert len(steps) >= 2, steps
    job = _wait_finished(site, "alice", number)
    assert (job["state"], job["bytes_done"], job["bytes_moving"]) == ("succeeded", total, 0)


def test_the_users_worker_waits_out_a_service_restart(tmp_path: Path) -> None:
    """The service stops mid-job and starts again a few seconds later: alice's worker backs
    off and tries again (saying so in its log) and goes on with its run; the job completes
    with every file copied once."""
    db_url = f"sqlite:///{tmp_path / 'catalogue.sqlite'}"
    config, users = prepare_site(tmp_path, db_url)
    port = free_port()
    destination = tmp_path / "homes" / "alice" / "through-a-restart"
    with serve_site(tmp_path, db_url, config, users, port=port) as site:
        assert site.api("boss", "POST", "ingest", {"store": "s1"}).ok
        number = site.stage("alice", destination)["id"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url", site.url,
             "--exit-when-idle", "--copy-processes", "0", "--heartbeat", "0.2",
             "--streams", "1", "--commit-seconds", "0.2", f"--allowed-root={site.home('alice')}"],
            env=_env(HERA_STAGE_SITE_TOKEN=users["alice"], HERA_STAGE_TEST_CHUNK_DELAY="1.5",
                     XDG_CACHE_HOME=str(tmp_path / "cache-alice")),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while site.api("alice", "GET", f"jobs/{number}").json()["files_done"] < 1:
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.1)
    try:
        time.sleep(2)  # the service is down: the worker's calls fail and are tried again
        assert worker.poll() is None
        with serve_site(tmp_path, db_url, config, users, name="again", port=port) as site:
            assert worker.wait(120) == 0
            stderr = worker.stderr.read() if worker.stderr else ""
            job = _wait_finished(site, "alice", number)
            log = site.api("alice", "GET", f"jobs/{number}/log").json()["text"]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert job["state"] == "succeeded" and job["files_done"] == len(FILES), (job, stderr)
    assert re.search(r"the site service cannot be reached: .*attempt \d+\); trying again in "
                     r"[0-9.]+ s", stderr), stderr
    assert "released" not in stderr and log.count("starts job") == 1, (stderr, log)
    assert "resumes" not in log and "earlier attempt" not in log, log
    for name in FILES:
        assert log.count(f"copy {name} ") == 1, log
        assert (destination / name).read_bytes() == (tmp_path / "store" / name).read_bytes()


def test_worker_command_line_keeps_the_database_out(site: Site, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url", site.url]
    no_token = subprocess.run(base, env=_env(), capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and "HERA_STAGE_SITE_TOKEN" in no_token.stderr
    with_db = subprocess.run(base, env=_env(HERA_STAGE_SITE_TOKEN=site.tokens["alice"],
                                            HERA_STAGE_DB_URL=site.db_url),
                             capture_output=True, text=True, timeout=60)
    assert with_db.returncode == 2 and "--site-url goes without" in with_db.stderr


def test_the_site_worker_never_claims_a_users_stage_job(database: Database,
                                                        tmp_path: Path) -> None:
    from hera_stage_ext.jobs.engine import create_job
    from hera_stage_ext.jobs.store import DbJobStore

    item = {"name": "f", "store": "s", "size": 1, "is_directory": False, "checksums": {},
            "dest_path": "f", "source_path": "/nowhere/f"}
    stage = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", [item], [], 1,
                       log_dir=tmp_path)
    site_worker = DbJobStore(database, kinds=("transfer", "upload"))
    assert site_worker.claim_job("site-w", 30) is None
    assert DbJobStore(database, owner="bob").claim_job("bob-w", 30) is None
    assert DbJobStore(database, owner="alice").claim_job("alice-w", 30) == (stage["id"], False)


def test_a_hand_over_records_and_claims_in_one_call(database: Database, tmp_path: Path) -> None:
    """``items/exchange``: the results of a worker's last items and its next items in one call;
    a result sent twice counts once, one for an item the worker does not hold is ignored, and
    another user's worker sees no such job."""
    from hera_stage_ext.errors import InvalidRequest, NotFound
    from hera_stage_ext.jobs.engine import create_job, get_job
    from hera_stage_ext.site.worker_ops import WorkerOps

    items = [{"name": f"f{k}", "store": "s", "size": 10, "is_directory": False,
              "checksums": {"md5": "0" * 32} if k else {}, "dest_path": f"f{k}",
              "source_path": f"/nowhere/f{k}"} for k in range(5)]
    items[1]["dest_path"] = "sub/\u00e9t\u00e9 \"1\".uvh5"  # the answer is JSON whatever the text
    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", items, [], 50,
                     log_dir=tmp_path)
    ops = WorkerOps(database, "alice")

    def exchange(body: dict[str, Any]) -> Any:  # the answer as the worker reads it
        return json.loads(ops.exchange(job["id"], {"worker_id": "w", **body}))

    assert ops.claim({"worker_id": "w"})["job"] == job["id"]
    first = exchange({"results": [], "n": 2})
    assert first["recorded"] == 0 and [row[1] for row in first["items"]] == ["f0", "f1"]
    assert first["items"][0][1:] == ["f0", "/nowhere/f0", "f0", 10, False, {}, 1, "s"]
    assert first["items"][1][3:7] == ["sub/\u00e9t\u00e9 \"1\".uvh5", 10, False, {"md5": "0" * 32}]
    done = [[row[0], "done", ""] for row in first["items"]]
    second = exchange({"results": done, "n": 2})
    assert second["recorded"] == 2 and [row[1] for row in second["items"]] == ["f2", "f3"]
    again = exchange({"n": 0, "results": [
        *done, [second["items"][0][0], "failed", "disk on fire"], [10**9, "done", ""]]})
    assert again == {"recorded": 1, "items": []}
    state = get_job(database, job["id"])
    assert (state["files_done"], state["bytes_done"], state["files_failed"]) == (2, 20, 1)
    with pytest.raises(InvalidRequest):
        exchange({"results": [["x", "done", ""]], "n": 1})
    with pytest.raises(NotFound):
        WorkerOps(database, "bob").exchange(job["id"], {"worker_id": "w", "results": [],
                                                        "n": 1})


def test_a_claim_in_the_narrow_form_gives_the_worker_the_same_items(database: Database,
                                                                   tmp_path: Path) -> None:
    """An item call that asks for the narrow form with the algorithm the job's answer names
    (``"narrow": "xxh3-128"``) gets the same items as the wide form, read back as
    ``ClaimedItem``s under the algorithm the answer names, but for the name, which a worker
    does not use: the checksum the worker verifies with (or all where that one is missing or
    not a string), a folder, text JSON must escape. A call that does not ask, or names
    another algorithm, gets the wide form as before."""
    from hera_stage_ext.errors import InvalidRequest
    from hera_stage_ext.jobs.engine import create_job
    from hera_stage_ext.jobs.items import ClaimedItem, narrow_items
    from hera_stage_ext.site.worker_ops import WorkerOps

    both = {"xxh3-128": "f" * 32, "md5": "0" * 32}
    specs = [("w.uvh5", "/store/root/w.uvh5", both, False),  # claimed in the wide form
             ("a/b.uvh5", "/store/root/a/b.uvh5", both, False),
             ("sub/\u00e9t\u00e9 \"1\".uvh5", "/store/x/\u00e9t\u00e9 \"1\".uvh5", {"md5": "1" * 32},
              False),
             ("dir", "/store/root/dir", {"md5": "2" * 32}, True),
             ("c.uvh5", "/store/root/c.uvh5", {}, False)]
    items = [{"name": f"f{k}", "store": "s", "size": 10 + k, "is_directory": is_dir,
              "checksums": sums, "dest_path": dest, "source_path": source}
             for k, (dest, source, sums, is_dir) in enumerate(specs)]
    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", items, [], 60,
                     log_dir=tmp_path)
    ops = WorkerOps(database, "alice")
    assert ops.claim({"worker_id": "w"})["job"] == job["id"]
    assert ops.job(job["id"])["narrow_items"] == "xxh3-128"
    wide = json.loads(ops.claim_items(job["id"], {"worker_id": "w", "n": 1}))
    assert "narrow" not in wide
    first = wide["items"][0][0]
    assert wide["items"][0][1:] == ["f0", "/store/root/w.uvh5", "w.uvh5", 10, False, both, 1,
                                    "s"]
    # A worker that names another algorithm, or none (a service of another version announced
    # the form), gets the wide form.
    for other in ("md5", True):
        answer = json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 0,
                                                     "narrow": other}))
        assert answer == {"recorded": 0, "items": []}
    narrow = json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 10,
                                                 "narrow": "xxh3-128"}))
    assert narrow["narrow"] == "xxh3-128" and narrow["recorded"] == 0
    assert narrow["items"][0][5] == "f" * 32  # only the checksum the worker verifies with
    assert narrow_items(narrow["items"], narrow["narrow"]) == [
        ClaimedItem(first + k, "", source, dest, 10 + k, is_dir,
                    {"xxh3-128": sums["xxh3-128"]} if "xxh3-128" in sums else sums, 1, "s")
        for k, (dest, source, sums, is_dir) in enumerate(specs) if k]
    # The lone checksum is mapped under the algorithm the answer names.
    assert narrow_items(narrow["items"][:1], "md5")[0].checksums == {"md5": "f" * 32}
    again = json.loads(ops.claim_items(job["id"], {"worker_id": "w", "n": 1,
                                                   "narrow": "xxh3-128"}))
    assert again == {"narrow": "xxh3-128", "items": []}
    with pytest.raises(InvalidRequest):
        ops.exchange(job["id"], {"worker_id": "w", "n": 1, "narrow": 1})


@pytest.mark.parametrize("stored, narrow_sent, read", [
    ('{"xxh3-128": 5, "md5": "00"}', {"xxh3-128": 5, "md5": "00"}, {"xxh3-128": 5, "md5": "00"}),
    ('{"xxh3-128": null}', {"xxh3-128": None}, {"xxh3-128": None}),
    ("5", 5, {}),
    ('["x"]', ["x"], {}),
])
def test_malformed_stored_checksums_fail_the_item_not_the_stream(
        database: Database, tmp_path: Path, stored: str, narrow_sent: Any, read: Any) -> None:
    """A stored checksum that is not a string goes whole in the narrow form, as the wide form
    sends it; checksums that are not an object are read as none: the item fails its
    verification ("no known checksum"; a wrong digest's mismatch) instead of the worker's
    stream crashing on them."""
    from sqlalchemy import text

    from hera_stage_ext.catalogue.checksums import preferred_algorithm
    from hera_stage_ext.errors import InvalidRequest
    from hera_stage_ext.jobs.engine import create_job
    from hera_stage_ext.jobs.items import narrow_items
    from hera_stage_ext.site.worker_ops import WorkerOps

    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy",
                     [{"name": "f", "store": "s", "size": 1, "is_directory": False,
                       "checksums": {}, "dest_path": "f", "source_path": "/nowhere/f"}],
                     [], 1, log_dir=tmp_path)
    with database.write() as s:
        cast = "CAST(:v AS jsonb)" if database.engine.dialect.name == "postgresql" else ":v"
        s.execute(text(f"UPDATE job_item SET checksums = {cast} WHERE job_id = :j"),
                  {"v": stored, "j": job["id"]})
    ops = WorkerOps(database, "alice")
    assert ops.claim({"worker_id": "w"})["job"] == job["id"]
    answer = json.loads(ops.claim_items(job["id"], {"worker_id": "w", "n": 1,
                                                    "narrow": "xxh3-128"}))
    assert answer["items"][0][5] == narrow_sent
    (item,) = narrow_items(answer["items"], answer["narrow"])
    assert item.checksums == read
    if not read:
        with pytest.raises(InvalidRequest, match="no known checksum"):
            preferred_algorithm(item.checksums)


def test_a_claim_whose_detail_fails_still_gives_the_job(database: Database, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The job is claimed before its answer's ``more`` and ``detail`` are read: when those
    fail (the database away for a moment), the claim still answers the job, without them (the
    worker then asks as it would an older service), not an error that leaves the job leased to
    a worker that never heard of it."""
    from hera_stage_ext.jobs.engine import create_job, get_job
    from hera_stage_ext.site.worker_ops import WorkerOps

    item = {"name": "f0", "store": "s", "size": 1, "is_directory": False, "checksums": {},
            "dest_path": "f0", "source_path": "/nowhere/f0"}
    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", [item], [], 1,
                     log_dir=tmp_path)
    ops = WorkerOps(database, "alice")

    def away(job_id: int) -> dict[str, Any]:
        raise OSError("the database went away")

    monkeypatch.setattr(ops, "job", away)
    answer = ops.claim({"worker_id": "w"})
    assert answer["job"] == job["id"] and "detail" not in answer, answer
    assert get_job(database, job["id"])["state"] == "running"


def test_results_may_come_as_id_runs_and_count_once(database: Database, tmp_path: Path) -> None:
    """A worker may send a hand-over's error-free results as runs of item ids (``runs``): only
    the job's running items in them are recorded (one queued, done already or out of the job
    is not), each once, the sizes from the database; a malformed or oversized run is a 400."""
    from hera_stage_ext.errors import InvalidRequest, NotFound
    from hera_stage_ext.jobs.engine import create_job, get_job
    from hera_stage_ext.site.worker_ops import MAX_BATCH, WorkerOps

    items = [{"name": f"f{k}", "store": "s", "size": 10 + k, "is_directory": False,
              "checksums": {}, "dest_path": f"f{k}", "source_path": f"/nowhere/f{k}"}
             for k in range(6)]
    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", items, [], 75,
                     log_dir=tmp_path)
    ops = WorkerOps(database, "alice")
    assert ops.claim({"worker_id": "w"})["job"] == job["id"]
    assert ops.job(job["id"])["result_runs"] is True  # what tells the worker it may
    assert ops.job(job["id"])["items_log"] is True
    taken = json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 4}))["items"]
    ids = [row[0] for row in taken]  # f0..f3 running; f4, f5 still queued
    answer = json.loads(ops.exchange(job["id"], {
        "worker_id": "w", "n": 0, "results": [[ids[3], "failed", "disk on fire"]],
        "runs": {"done": [[ids[0], ids[1]], [ids[1], ids[1]], [ids[3] + 1, ids[3] + 9]],
                 "skipped": [[ids[2], ids[2]]]}}))
    assert answer == {"recorded": 4, "items": []}
    # Lines of the job's log may come with an item call (appended once its results are).
    ops.record(job["id"], {"runs": {}, "log": "COPIED f0\nCOPIED f1"})
    log_text = Path(get_job(database, job["id"])["log_path"]).read_text()
    assert log_text.endswith("COPIED f0\nCOPIED f1\n"), log_text
    state = get_job(database, job["id"])
    assert (state["files_done"], state["bytes_done"], state["files_skipped"],
            state["files_failed"]) == (3, 10 + 11 + 12, 1, 1), state
    # Sent again (a retry after a lost answer): nothing counts twice.
    assert ops.record(job["id"], {"runs": {"done": [[ids[0], ids[3]]]}}) == {"recorded": 0}
    assert get_job(database, job["id"])["files_done"] == 3
    for bad in ({"failed": [[ids[0], ids[0]]]}, {"done": [[ids[1], ids[0]]]},
                {"done": [[1, MAX_BATCH + 1]]}, {"done": [ids[0]]}, [[ids[0], ids[0]]],
                {"done": [["1", "2"]]}):
        with pytest.raises(InvalidRequest):
            ops.record(job["id"], {"runs": bad})
    with pytest.raises(NotFound):
        WorkerOps(database, "bob").record(job["id"], {"runs": {"done": [[ids[0], ids[3]]]}})


def test_an_item_call_the_database_refuses_appends_none_of_its_log_lines(
        tmp_path: Path) -> None:
    """A user's worker sends the log lines of an item call that failed again with its next
    (its spool offset did not move): the service must not have kept them the first time, or
    the job's log shows them twice. A cancel's own holder name is no worker's."""
    from sqlalchemy.exc import DBAPIError

    from hera_stage_ext.errors import InvalidRequest
    from hera_stage_ext.jobs.engine import create_job, get_job
    from hera_stage_ext.site.worker_ops import WorkerOps

    # SQLite only: the refusal is an SQLite trigger (the order is the same code on both).
    database = Database(f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    database.upgrade()
    items = [{"name": f"f{k}", "store": "s", "size": 10, "is_directory": False,
              "checksums": {}, "dest_path": f"f{k}", "source_path": f"/nowhere/f{k}"}
             for k in range(4)]
    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", items, [], 40,
                     log_dir=tmp_path)
    ops = WorkerOps(database, "alice")
    with pytest.raises(InvalidRequest):
        ops.claim({"worker_id": "cancel"})
    assert ops.claim({"worker_id": "w"})["job"] == job["id"]
    ids = [row[0] for row in json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 4}))
           ["items"]]
    for call, run, line in (("record", ids[:2], "COPIED f0\n"),
                            ("exchange", ids[2:], "COPIED f2\n")):
        body: dict[str, Any] = {"worker_id": "w", "n": 0, "runs": {"done": [run]},
                                "log": line}
        with database.write() as s:  # the database refuses the call's write, as in a restart
            s.connection().exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE UPDATE ON job_item "
                "BEGIN SELECT RAISE(ABORT, 'down'); END")
        with pytest.raises(DBAPIError):
            getattr(ops, call)(job["id"], body)
        with database.write() as s:
            s.connection().exec_driver_sql("DROP TRIGGER refuse")
        getattr(ops, call)(job["id"], body)  # the worker's next call carries the same lines
        text = Path(get_job(database, job["id"])["log_path"]).read_text()
        assert text.count(line) == 1, text
    assert get_job(database, job["id"])["files_done"] == 4
    database.dispose()


def _three_file_job_claimed(database: Database, tmp_path: Path) -> tuple[dict[str, Any], Any]:
    """alice's stage job of three files (sources that do not exist), claimed by her worker
    ``w`` through the service's operations: the job and those operations (``WorkerOps``)."""
    from hera_stage_ext.jobs.engine import create_job
    from hera_stage_ext.site.worker_ops import WorkerOps

    items = [{"name": f"f{k}", "store": "s", "size": 10, "is_directory": False,
              "checksums": {}, "dest_path": f"f{k}", "source_path": f"/nowhere/f{k}"}
             for k in range(3)]
    job = create_job(database, "alice", "stage", str(tmp_path / "d"), "copy", items, [], 30,
                     log_dir=tmp_path)
    ops = WorkerOps(database, "alice")
    assert ops.claim({"worker_id": "w"})["job"] == job["id"]
    return job, ops


def test_a_record_may_ask_which_items_are_left(database: Database, tmp_path: Path) -> None:
    """A run's last record may ask for the job's unfinished items too (``"unfinished":
    true``): the answer is ``unfinished``'s, read after the results are recorded (the result
    lines once none is left); the job answer says the service takes it; not a boolean: 400."""
    from hera_stage_ext.errors import InvalidRequest

    job, ops = _three_file_job_claimed(database, tmp_path)
    assert ops.job(job["id"])["record_unfinished"] is True
    ids = [row[0] for row in json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 3}))[
        "items"]]
    first = ops.record(job["id"], {"runs": {"done": [[ids[0], ids[1]]]}, "unfinished": True})
    assert first == {"recorded": 2, "paths": ["f2"]}, first
    last = ops.record(job["id"], {"results": [[ids[2], "failed", "gone"]], "unfinished": True})
    assert last["recorded"] == 1 and last["paths"] == [], last
    assert last["lines"] == ops.results(job["id"])["lines"] and last["lines"], last
    assert ops.record(job["id"], {"runs": {}}) == {"recorded": 0}  # not asked: not answered
    with pytest.raises(InvalidRequest):
        ops.record(job["id"], {"runs": {}, "unfinished": "yes"})


def test_a_finish_with_files_left_is_refused_and_the_job_goes_on(database: Database,
                                                                  tmp_path: Path) -> None:
    """A worker's finish while any of its job's files is still to do (queued, running) is a
    409: the job goes on running, with its counters, and the log lines the finish carried are
    not appended (the worker sends them again); once all are through, the same finish ends
    the job with them."""
    from hera_stage_ext.errors import Conflict
    from hera_stage_ext.jobs.engine import get_job

    job, ops = _three_file_job_claimed(database, tmp_path)
    ids = [row[0] for row in json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 2}))[
        "items"]]
    log_path = Path(get_job(database, job["id"])["log_path"])
    finish = {"worker_id": "w", "log": "LAST LINE"}
    for left in ("queued", "running"):
        with pytest.raises(Conflict):
            ops.finish(job["id"], finish)
        state = get_job(database, job["id"])
        assert state["state"] == "running" and state["files_done"] == (1 if left == "running"
                                                                       else 0), state
        assert "LAST LINE" not in log_path.read_text()
        # Then: the queued one done, one still running.
        if left == "queued":
            ops.record(job["id"], {"runs": {"done": [[ids[0], ids[0]]]}})
            taken = json.loads(ops.exchange(job["id"], {"worker_id": "w", "n": 5}))["items"]
            ids = [ids[1], *(row[0] for row in taken)]
    ops.record(job["id"], {"runs": {"done": [[min(ids), max(ids)]]}})
    assert ops.finish(job["id"], finish)["state"] == "succeeded"
    assert log_path.read_text().count("LAST LINE") == 1
    assert get_job(database, job["id"])["files_done"] == 3


def test_a_run_claims_for_all_streams_at_once_and_asks_what_is_left_with_its_results(
        site: Site) -> None:
    """A user's worker starts a job's streams with one claim for all of them (not one each,
    queued behind each other at the service), and its last record asks which items are left
    (no separate ``unfinished`` call); every file is staged and counted once."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "erin")
    destination = _dest(site, "erin", "start")
    number = site.stage("erin", destination)["id"]
    calls: list[tuple[str, dict[str, Any]]] = []

    class Recording(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            calls.append((path.split(f"jobs/{number}/", 1)[-1], dict(body or {})))
            return super().call(method, path, body)

    _run_users_worker(site, "erin", number, Recording, streams=4, claim_batch=2,
                      first_claim_batch=None)
    claims = [body["n"] for action, body in calls
              if action in ("items/claim", "items/exchange") and body.get("n")]
    assert claims[0] == 4 * 2, calls  # the first claim: for the four streams
    assert len(claims) <= 1 + 4, calls  # (then each stream's one claim that finds none left)
    assert "unfinished" not in [action for action, _ in calls], calls
    assert [body.get("unfinished") for action, body in calls
            if action == "items/record"][-1:] == [True], calls
    job = _wait_finished(site, "erin", number)
    assert job["state"] == "succeeded", job
    assert (job["files_done"], job["files_failed"]) == (len(FILES), 0), job
    for name in FILES:
        assert (destination / name).read_bytes() == (site.work / "store" / name).read_bytes()


def test_a_users_worker_claims_fewer_items_first(site: Site) -> None:
    """A run's first claim may be smaller than its later ones (``first_claim_batch``: a
    user's worker in site mode, so that its helpers start sooner: ``FIRST_CLAIM_ITEMS``
    a stream, as ``HttpJobStore.tune`` sets it): the streams' first items in one claim of
    that size for each, and every file is staged once."""
    from hera_stage_ext.jobs.http_store import FIRST_CLAIM_ITEMS, HttpJobStore

    _issue_stage_token(site, "erin")
    for tag, settings, first in (("set", {"claim_batch": 5, "first_claim_batch": 1}, 1),
                                 ("tuned", {}, FIRST_CLAIM_ITEMS)):
        destination = _dest(site, "erin", f"fewer-first-{tag}")
        number = site.stage("erin", destination)["id"]
        claims: list[int] = []

        class Recording(HttpJobStore):
            def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                if path.endswith(("/items/claim", "/items/exchange")) and (body or {}).get("n"):
                    claims.append(body["n"])  # type: ignore[index]
                return super().call(method, path, body)

        _run_users_worker(site, "erin", number, Recording, streams=2, **settings)
        assert claims[0] == 2 * first, claims  # (then a stream's next: claim_batch, as before)
        if settings:
            assert 5 in claims[1:], claims
        job = _wait_finished(site, "erin", number)
        assert (job["state"], job["files_done"], job["files_failed"]) == ("succeeded", 3, 0), job
        for name in FILES:
            assert (destination / name).read_bytes() == (site.work / "store" / name
                                                         ).read_bytes()


def test_a_job_claim_says_whether_another_of_the_users_jobs_waits(site: Site) -> None:
    """With the job it gives, a worker's job claim says whether another job of the same user
    waits (``more``): never counting another user's job, nor the one just given."""
    _issue_stage_token(site, "frank")
    first = site.stage("frank", _dest(site, "frank", "one"))["id"]
    second = site.stage("frank", _dest(site, "frank", "two"))["id"]
    others = site.stage("alice", _dest(site, "alice", "not-franks"))["id"]
    claim = site.api("frank", "POST", "worker/claim", {"worker_id": "f"}).json()
    assert (claim["job"], claim["more"]) == (first, True), claim
    claim = site.api("frank", "POST", "worker/claim", {"worker_id": "f"}).json()
    assert (claim["job"], claim["more"]) == (second, False), claim  # alice's is not his
    assert site.api("frank", "POST", "worker/claim", {"worker_id": "f"}).json()["job"] is None
    # (Alice's job must not wait for the next test's worker of hers.)
    assert site.api("alice", "POST", f"jobs/{others}/cancel").json()["state"] == "cancelled"


def test_a_users_worker_claims_again_at_once_only_when_another_job_waits(site: Site) -> None:
    """A user's worker that claims a job claims again at once only when the service said
    another job waits: a lone job costs no claim that finds nothing beside its run's first
    calls (one claim that finds none after it ends, before the worker exits)."""
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.run import EngineConfig
    from hera_stage_ext.jobs.worker import Worker
    from hera_stage_ext.standard_kinds import standard_kinds

    _issue_stage_token(site, "gina")
    number = site.stage("gina", _dest(site, "gina", "lone"))["id"]
    answers: list[dict[str, Any]] = []

    class Recording(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            answer = super().call(method, path, body)
            if path == "claim":
                answers.append(answer)
            return answer

    store = Recording(site.url, site.tokens["gina"], spool_dir=site.work / "cache-gina")
    settings = EngineConfig(kinds=standard_kinds(), heartbeat_seconds=0.2, fsync=False,
                            allowed_roots=(str(site.home("gina").resolve()),))
    try:
        # (A poll far beyond the run: only a claim at once, or the job's end, claims again.)
        Worker(store, settings).run(poll_seconds=600, exit_when_idle=True)
    finally:
        store.close()
    assert [a["job"] for a in answers] == [number, None], answers
    assert answers[0]["more"] is False, answers
    assert _wait_finished(site, "gina", number)["state"] == "succeeded"


def test_a_job_claim_carries_the_job_as_its_answer_gives_it(database: Database,
                                                            tmp_path: Path) -> None:
    """A worker's job claim answers the job as ``GET jobs/<id>`` does (``detail``: the row,
    its stores' roots and which are unavailable, how many files wait for a recall, what the
    item calls take), so that its run asks nothing before its first items."""
    from hera_stage_ext.jobs.engine import create_job

    job, ops = _three_file_job_claimed(database, tmp_path)
    another = ops.claim({"worker_id": "w"})
    assert another == {"job": None, "resumed": False}, another  # (none: no detail)
    items = [{"name": "g", "store": "s", "size": 10, "is_directory": False, "checksums": {},
              "dest_path": "g", "source_path": "/nowhere/g"}]
    second = create_job(database, "alice", "stage", str(tmp_path / "e"), "copy", items, [],
                        30, log_dir=tmp_path)
    claim = ops.claim({"worker_id": "w"})
    assert claim["job"] == second["id"], claim
    asked = ops.job(second["id"])
    for moving in ("rate_bytes_per_s", "eta_s"):  # (from the clock: not compared)
        claim["detail"].pop(moving)
        asked.pop(moving)
    assert claim["detail"] == asked, (claim, asked)
    assert (asked["id"], asked["owner"], asked["worker_id"]) == (second["id"], "alice", "w")
    assert (asked["waiting"], asked["unavailable"]) == (0, []), asked


def test_a_users_run_asks_nothing_before_its_first_items(site: Site) -> None:
    """A user's worker asks nothing between its job claim and its run's first item claim (the
    claim carried the job: no ``GET jobs/<id>``, no ``stores``, no heartbeat, no
    ``waiting``); against a service whose claim does not carry the job (an older one) it asks
    the job as before, and both runs stage every file."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "ines")
    for older in (False, True):
        destination = _dest(site, "ines", f"first-{older}")
        number = site.stage("ines", destination)["id"]
        calls: list[str] = []

        class Recording(HttpJobStore):
            def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                calls.append(f"{method} {path}")
                answer = super().call(method, path, body)
                if older and path == "claim":
                    answer.pop("detail", None)
                return answer

        _run_users_worker(site, "ines", number, Recording, streams=2)
        first = next(i for i, c in enumerate(calls) if c.endswith(("/items/claim",
                                                                   "/items/exchange")))
        before = [c for c in calls[:first] if not c.endswith("/log")]
        assert before == ["POST claim", *([f"GET jobs/{number}"] if older else [])], calls
        job = _wait_finished(site, "ines", number)
        assert job["state"] == "succeeded" and job["files_done"] == len(FILES), job
        for name in FILES:
            assert (destination / name).read_bytes() == (site.work / "store" / name
                                                         ).read_bytes()


def test_a_users_worker_ships_non_ascii_log_lines_as_they_are(site: Site) -> None:
    """A worker's calls go as UTF-8 (not ``\\u`` escapes): non-ASCII lines of a job's log
    arrive unchanged."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "hana")
    number = site.stage("hana", _dest(site, "hana", "utf8"))["id"]
    store = HttpJobStore(site.url, site.tokens["hana"], spool_dir=site.work / "cache-hana")
    try:
        lines = "Zürich 東京 ✓ \\ \"quoted\"\n"
        assert store.call("POST", f"jobs/{number}/log", {"text": lines}) == {
            "appended": len(lines)}
    finally:
        store.close()
    assert lines in site.api("hana", "GET", f"jobs/{number}/log").json()["text"]
    assert site.api("hana", "POST", f"jobs/{number}/cancel").json()["state"] == "cancelled"


def test_a_users_netrc_does_not_replace_the_workers_token(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's calls carry its token whatever the user's ``~/.netrc`` says of the
    service's host (requests would send that entry's login instead)."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "ivan")
    number = site.stage("ivan", _dest(site, "ivan", "netrc"))["id"]
    netrc = tmp_path / "netrc"
    host = site.url.split("//", 1)[1].split(":", 1)[0].split("/", 1)[0]
    netrc.write_text(f"machine {host} login mallory password guessed\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    store = HttpJobStore(site.url, site.tokens["ivan"], spool_dir=site.work / "cache-ivan")
    try:
        assert store.call("POST", f"jobs/{number}/log", {"text": "by ivan\n"}) == {
            "appended": len("by ivan\n")}
    finally:
        store.close()
        monkeypatch.delenv("NETRC")  # (the test's own client reads it too)
    assert "by ivan" in site.api("ivan", "GET", f"jobs/{number}/log").json()["text"]
    assert site.api("ivan", "POST", f"jobs/{number}/cancel").json()["state"] == "cancelled"


def test_the_worker_goes_through_the_proxy_its_environment_names(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment's proxy for the service's URL is still used (read once, when the
    worker starts): a proxy that is down makes the service one that cannot be reached."""
    from hera_stage_ext.errors import ServiceError
    from hera_stage_ext.jobs.http_store import HttpJobStore

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    store = HttpJobStore(site.url, site.tokens["alice"], patience=0)
    try:
        with pytest.raises(ServiceError, match="cannot be reached") as raised:
            store.call("POST", "claim", {"worker_id": "w:1:proxy", "skip": []})
        assert "Proxy" in str(raised.value)
    finally:
        store.close()


def test_an_answer_cut_short_is_a_service_that_cannot_be_reached(tmp_path: Path) -> None:
    """An answer whose body ends before its length (the service stopped while sending it) is
    tried again like a refused connection, then said plainly, never an error of the HTTP
    library's own."""
    import socket
    import threading

    from hera_stage_ext.errors import ServiceError
    from hera_stage_ext.jobs.http_store import HttpJobStore

    server = socket.create_server(("127.0.0.1", 0))
    answered = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = server.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 1000\r\n\r\n{\"items\": [")
                    answered.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    store = HttpJobStore(f"http://127.0.0.1:{server.getsockname()[1]}/", "hst_x", patience=0,
                         spool_dir=tmp_path)
    try:
        with pytest.raises(ServiceError, match="cannot be reached"):
            store.call("POST", "claim", {"worker_id": "w:1:cut", "skip": []})
    finally:
        store.close()
        server.close()
    assert answered


def test_a_service_that_does_not_say_so_is_asked_what_is_left_as_before(site: Site) -> None:
    """Against a service that does not announce ``record_unfinished`` (an older one), a user's
    worker asks ``unfinished`` on its own and sends no such question with its records."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "erin")
    destination = _dest(site, "erin", "older")
    number = site.stage("erin", destination)["id"]
    calls: list[tuple[str, dict[str, Any]]] = []

    class Older(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            calls.append((path.rsplit("/", 1)[-1], dict(body or {})))
            answer = super().call(method, path, body)
            if path == "claim":
                answer.pop("detail", None)  # (older than that too: the run asks the job)
            if path == f"jobs/{number}":
                answer.pop("record_unfinished")
            return answer

    _run_users_worker(site, "erin", number, Older, streams=2)
    assert "unfinished" in [action for action, _ in calls], calls
    assert not any("unfinished" in body for _, body in calls), calls
    job = _wait_finished(site, "erin", number)
    assert job["state"] == "succeeded" and job["files_done"] == len(FILES), job


def test_a_users_worker_asks_for_narrow_items_only_where_the_service_announces_them(
        site: Site) -> None:
    """A user's worker asks for its claimed items in the narrow form where the job's answer
    announces it (``narrow_items``, naming the algorithm), and reads each answer as it says:
    against a service that does not announce it (an older one) it asks nothing of the form,
    and a service that announces it but answers in the wide form (a replica of another
    version; here the request's ``narrow`` removed on the wire) is read in the wide form; one
    that names an algorithm this worker does not know is asked nothing of the form. Either
    way every file lands."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "erin")
    for service in ("new", "older", "answers wide", "unknown algorithm"):
        destination = _dest(site, "erin", f"narrow-{service}")
        number = site.stage("erin", destination)["id"]
        asked: list[Any] = []
        answered: list[Any] = []

        class Watching(HttpJobStore):
            def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                answer = super().call(method, path, body)
                if path.endswith(("/items/claim", "/items/exchange")) and (body or {}).get("n"):
                    asked.append((body or {}).get("narrow"))
                    answered.append(answer.get("narrow"))
                detail = answer.get("detail") if path == "claim" else answer
                if service == "older" and isinstance(detail, dict):
                    detail.pop("narrow_items", None)
                if service == "unknown algorithm" and isinstance(detail, dict):
                    detail["narrow_items"] = "xxh9-512"
                return answer

            def _attempt(self, method: str, path: str, data: bytes | None,
                         headers: dict[str, str] | None) -> Any:
                if service == "answers wide" and data and b'"narrow"' in data:
                    head, newline, tail = data.partition(b"\n")
                    body = json.loads(head)
                    del body["narrow"]
                    data = json.dumps(body).encode() + newline + tail
                return super()._attempt(method, path, data, headers)

        _run_users_worker(site, "erin", number, Watching, streams=2)
        assert asked and set(asked) == ({"xxh3-128"} if service in ("new", "answers wide")
                                        else {None}), asked
        assert set(answered) == ({"xxh3-128"} if service == "new" else {None}), answered
        job = _wait_finished(site, "erin", number)
        assert (job["state"], job["files_done"], job["files_failed"]) == ("succeeded", 3, 0), job
        for name in FILES:
            assert (destination / name).read_bytes() == (site.work / "store" / name
                                                         ).read_bytes()


def _assert_each_file_logged_once(site: Site, user: str, number: int) -> None:
    """The job succeeded, and its log (on the service's side) has each file's line once."""
    from hera_stage_ext.catalogue.db import Database
    from hera_stage_ext.jobs.engine import get_job

    job = _wait_finished(site, user, number)
    assert job["state"] == "succeeded" and job["files_done"] == len(FILES), job
    db = Database(site.db_url)
    try:
        text = Path(get_job(db, number)["log_path"]).read_text()
    finally:
        db.dispose()
    for name in FILES:
        assert text.count(f"  copy {name} (") == 1, text


def test_a_users_worker_sends_its_lines_inside_the_json_where_a_replica_refuses_them(
        site: Site) -> None:
    """A replica older than log tails beside one that announced them (a rolling upgrade)
    reads a body with lines after its JSON as JSON and answers 400 (here: the body sent as
    JSON on the wire); the worker sends that call again with its lines inside the JSON, and
    no more tails: the job succeeds and its log has every file's line once."""
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.joblog import LOG_TAIL_TYPE

    _issue_stage_token(site, "erin")
    destination = _dest(site, "erin", "old-replica")
    number = site.stage("erin", destination)["id"]
    refused: list[int] = []
    sent: list[str] = []

    class BesideAnOldReplica(HttpJobStore):
        def _attempt(self, method: str, path: str, data: bytes | None,
                     headers: dict[str, str] | None) -> Any:
            if (headers or {}).get("Content-Type") == LOG_TAIL_TYPE:
                headers = {"Content-Type": "application/json"}  # as an old replica reads it
                reply, content = super()._attempt(method, path, data, headers)
                refused.append(reply.status_code)
                return reply, content
            if path.endswith(("/items/record", "/items/exchange")):
                sent.append(json.loads(data or b"").get("log", ""))
            return super()._attempt(method, path, data, headers)

    _run_users_worker(site, "erin", number, BesideAnOldReplica, streams=1)
    assert refused and set(refused) == {400}, refused
    assert "  copy " in "".join(sent), sent
    _assert_each_file_logged_once(site, "erin", number)


def test_a_refused_item_call_with_lines_after_its_json_is_not_sent_again(site: Site) -> None:
    """Only an old replica's refusal to read a body with lines after its JSON makes the worker
    send the call again as JSON: a call the service refuses for what it says (bad results)
    is sent once, fails with the service's message, and leaves the worker sending tails."""
    from hera_stage_ext.errors import ServiceError
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.joblog import LOG_TAIL_TYPE

    _issue_stage_token(site, "erin")
    number = site.stage("erin", _dest(site, "erin", "refused-tail"))["id"]
    sent: list[str] = []

    class Counting(HttpJobStore):
        def _attempt(self, method: str, path: str, data: bytes | None,
                     headers: dict[str, str] | None) -> Any:
            sent.append((headers or {}).get("Content-Type", ""))
            return super()._attempt(method, path, data, headers)

    store = Counting(site.url, site.tokens["erin"], spool_dir=site.work / "cache-erin")
    store._log_tail = True  # as a job's answer that announces tails sets it
    try:
        with pytest.raises(ServiceError) as refused:
            store.call("POST", f"jobs/{number}/items/record",
                       {"worker_id": "w", "results": "not a list", "log": "a line\n"})
    finally:
        store.close()
        # (Not left queued for erin's next worker in another test.)
        assert site.api("erin", "POST", f"jobs/{number}/cancel").json()["state"] == \
            "cancelled"
    assert refused.value.status == 400 and "results" in str(refused.value)
    assert sent == [LOG_TAIL_TYPE] and store._log_tail


def test_a_users_worker_sends_no_lines_after_the_json_where_the_service_takes_none(
        site: Site) -> None:
    """Against a service that takes log lines with its item calls (``items_log``) but not
    after their JSON (no ``log_tail``: an older one), a user's worker sends every item call
    as JSON, the lines in its ``log``; the job's log gets every file's line."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "erin")
    destination = _dest(site, "erin", "no-tail")
    number = site.stage("erin", destination)["id"]
    sent: list[tuple[str, bytes | None, Any]] = []

    class Older(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            answer = super().call(method, path, body)
            detail = answer.get("detail") if path == "claim" else answer
            if isinstance(detail, dict) and "log_tail" in detail:
                assert detail["items_log"] is True
                del detail["log_tail"]
            return answer

        def _attempt(self, method: str, path: str, data: bytes | None,
                     headers: dict[str, str] | None) -> Any:
            sent.append((path, data, (headers or {}).get("Content-Type")))
            return super()._attempt(method, path, data, headers)

    _run_users_worker(site, "erin", number, Older, streams=1)
    items_calls = [(json.loads(data or b""), kind) for path, data, kind in sent
                   if path.endswith(("/items/record", "/items/exchange"))]
    assert items_calls and all(kind == "application/json" for _, kind in items_calls), sent
    assert "  copy " in "".join(body.get("log", "") for body, _ in items_calls), items_calls
    _assert_each_file_logged_once(site, "erin", number)


def test_an_item_calls_log_lines_may_follow_its_json(site: Site) -> None:
    """An item call may send the job's log lines after its JSON, as they are
    (``LOG_TAIL_TYPE``, announced as ``log_tail``): they are appended to the job's log as with
    ``log`` in the JSON. Lines that are not UTF-8, ``log`` in the JSON as well, lines after
    another call's JSON or a body over the limit are refused with a JSON error, and nothing
    is appended; another user's worker still finds no such job."""
    from hera_stage_ext.api.base import MAX_BODY_BYTES
    from hera_stage_ext.jobs.joblog import LOG_TAIL_TYPE

    _issue_stage_token(site, "frank")
    number = site.stage("frank", _dest(site, "frank", "tail"))["id"]
    claimed = site.api("frank", "POST", "worker/claim", {"worker_id": "fw"}).json()
    assert claimed["job"] == number and claimed["detail"]["log_tail"] is True

    def post(action: str, head: dict[str, Any] | bytes, tail: bytes, user: str = "frank",
             kind: str = LOG_TAIL_TYPE) -> requests.Response:
        data = head if isinstance(head, bytes) else json.dumps(head).encode()
        return requests.post(f"{site.url}hera-stage/api/worker/jobs/{number}/{action}",
                             data=data + b"\n" + tail, timeout=30,
                             headers={"Authorization": f"token {site.tokens[user]}",
                                      "Content-Type": kind})

    def log_text() -> str:
        return site.api("frank", "GET", f"jobs/{number}/log").json()["text"]

    lines = "2026-12-07T00:00:00.000Z  copy \u00e9t\u00e9 \"1\".uvh5 (3 bytes)\nsecond line\n"
    reply = post("items/record", {"results": []}, lines.encode())
    assert reply.status_code == 200 and reply.json() == {"recorded": 0}, reply.text
    reply = post("items/exchange", {"worker_id": "fw", "n": 1, "narrow": "xxh3-128"},
                 b"third\n")
    assert reply.status_code == 200 and len(reply.json()["items"]) == 1, reply.text
    # A media type is case-insensitive, its parameters (a charset) ignored as with JSON; the
    # lines' control characters but tabs are escaped (an admin's terminal shows the log).
    reply = post("items/record", {"results": []}, b"fourth\x1b[2J\tx\r\x00\xc2\x9b\n",
                 kind=LOG_TAIL_TYPE.upper() + "; charset=utf-8")
    assert reply.status_code == 200 and reply.json() == {"recorded": 0}, reply.text
    assert log_text().endswith(lines + "third\nfourth\\x1b[2J\tx\\x0d\\x00\\x9b\n")
    before = log_text()
    for action, head, tail, status in (
            ("items/record", {"results": []}, b"bad \xff byte\n", 400),
            ("items/record", '{"results": []}'.encode("utf-16-le"), b"x\n", 400),
            ("items/record", {"results": [], "log": "x\n"}, b"y\n", 400),
            ("heartbeat", {"worker_id": "fw"}, b"z\n", 400),
            ("items/record", {"results": []}, b"w" * MAX_BODY_BYTES, 413)):
        reply = post(action, head, tail)
        assert reply.status_code == status and "message" in reply.json(), (action, reply.text)
    reply = post("items/record", {"results": []}, b"bob's\n", user="bob")
    assert reply.status_code == 404, reply.text
    assert log_text() == before
    assert site.api("frank", "POST", f"jobs/{number}/cancel").status_code == 200


def test_results_beyond_one_calls_limit_go_in_several_calls(site: Site) -> None:
    """A user's worker sends its results in calls of at most the service's limit (10,000; 2
    here): a hand-over with more goes as records of that many and the rest with the claim;
    every result is counted once and the job succeeds."""
    from hera_stage_ext.jobs.http_store import HttpJobStore

    _issue_stage_token(site, "carol")
    destination = _dest(site, "carol", "split")
    destination.mkdir(parents=True)
    for name in FILES:  # already there: skipped, so recorded at the claim (no rename to wait)
        (destination / name).write_bytes((site.work / "store" / name).read_bytes())
    number = site.stage("carol", destination)["id"]
    sent: list[tuple[str, int]] = []

    class Counting(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            # Results one by one and (error-free ones) as id runs.
            count = len((body or {}).get("results", [])) + sum(
                last - first + 1 for runs in (body or {}).get("runs", {}).values()
                for first, last in runs)
            if count:
                sent.append((path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1], count))
            return super().call(method, path, body)

    _run_users_worker(site, "carol", number, Counting, {"results_per_call": 2}, streams=1,
                      claim_batch=len(FILES))
    assert sent == [("items/record", 2), ("items/exchange", 1)], sent
    job = _wait_finished(site, "carol", number)
    assert job["state"] == "succeeded", job
    assert (job["files_done"], job["files_skipped"], job["files_failed"]) == (3, 3, 0), job


def test_a_users_worker_sends_results_as_id_runs_and_its_log_with_them(site: Site) -> None:
    """A user's worker sends a hand-over's error-free results as runs of item ids, and the
    job's log lines with its item calls; the service's log of the job has every file's line
    once, and every file is counted once."""
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.joblog import LOG_TAIL_TYPE

    _issue_stage_token(site, "dave")
    destination = _dest(site, "dave", "runs")
    number = site.stage("dave", destination)["id"]
    bodies: list[tuple[str, dict[str, Any]]] = []
    sent: list[tuple[str, bytes | None, Any]] = []

    class Recording(HttpJobStore):  # (and what went on the wire: the lines after the JSON)
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            bodies.append((path.rsplit("/", 1)[-1], dict(body or {})))
            return super().call(method, path, body)

        def _attempt(self, method: str, path: str, data: bytes | None,
                     headers: dict[str, str] | None) -> Any:
            sent.append((path, data, (headers or {}).get("Content-Type")))
            return super()._attempt(method, path, data, headers)

    _run_users_worker(site, "dave", number, Recording, streams=1)
    items_calls = [(data or b"").partition(b"\n") + (kind,) for path, data, kind in sent
                   if path.endswith(("/items/record", "/items/exchange"))]
    # Every item call's lines after its JSON, none in it; the files' lines among them.
    assert all("log" not in json.loads(head) and (kind == LOG_TAIL_TYPE) == bool(tail)
               for head, _, tail, kind in items_calls), items_calls
    assert b"  copy " in b"".join(tail for _, _, tail, _ in items_calls), items_calls
    reported = [body for action, body in bodies if action in ("record", "exchange")
                and (body.get("results") or body.get("runs"))]
    assert reported and all(not body["results"] for body in reported), reported
    assert sum(last - first + 1 for body in reported for first, last in body["runs"]["done"]
               ) == len(FILES)
    _assert_each_file_logged_once(site, "dave", number)


def test_two_service_replicas_run_each_job_once(postgres: Any,
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    """Two service processes on one PostgreSQL: alice's workers through either claim each job
    (and each file) exactly once."""
    work = tmp_path_factory.mktemp("replicas")
    db_url = postgres.create_database()
    with site_service(work, db_url) as one, serve_site(work, db_url, one.config, one.tokens,
                                                       "replica") as two:
        numbers = [one.stage("alice", _dest(one, "alice", f"r{i}"))["id"] for i in range(4)]
        numbers += [two.stage("alice", _dest(two, "alice", f"s{i}"))["id"] for i in range(4)]
        runs = []
        for service in (one, two, one):
            command = [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url",
                       service.url, "--exit-when-idle", "--copy-processes", "0",
                       f"--allowed-root={one.home('alice')}", "--jobs", "2"]
            runs.append(subprocess.Popen(
                command, env=_env(HERA_STAGE_SITE_TOKEN=one.tokens["alice"],
                                  XDG_CACHE_HOME=str(work / "cache")),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for run in runs:
            assert run.wait(120) == 0, run.stderr.read() if run.stderr else ""
        for number in numbers:
            job = two.api("alice", "GET", f"jobs/{number}").json()
            assert job["state"] == "succeeded" and job["files_done"] == len(FILES), job
            log = one.api("alice", "GET", f"jobs/{number}/log").json()["text"]
            assert log.count("starts job") == 1, log
            for name in FILES:
                assert log.count(f"copy {name} ") == 1, log


# ----- behind a real JupyterHub: hub tokens (HubOAuth) ------------------------------------------
NO_PROXY = '''
from jupyterhub.proxy import Proxy


class NoProxy(Proxy):
    """No proxy: the test talks to the hub and to the service directly."""

    should_start = False
    _routes: dict = {}

    async def add_route(self, routespec, target, data):
        self._routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec):
        self._routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self._routes)
'''


def _kill_service_of(config: Path) -> None:
    """The site service the hub started on ``config``, if the hub left it running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if str(config).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), 15)


def test_hub_tokens_are_users_on_a_hub_managed_service(tmp_path: Path) -> None:
    """JupyterHub starts the service (as ``c.JupyterHub.services``); programs present hub API
    tokens, checked by HubOAuth, with the custom scopes and the service's access scope."""
    pytest.importorskip("jupyterhub")
    config, users = prepare_site(tmp_path, f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    (tmp_path / "noproxy.py").write_text(NO_PROXY)
    hub_port, service_port = free_port(), free_port()
    admin_token = "tester-" + os.urandom(16).hex()
    service_command = [sys.executable, "-m", "hera_stage_ext.cli", "site", "--config",
                       str(config), "--port", str(service_port),
                       *(["--allow-root"] if os.geteuid() == 0 else [])]
    scopes = {f"custom:hera-stage:{s}": {"description": s} for s in ("read", "stage", "admin")}
    service_env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                   "JUPYTER_CONFIG_DIR": str(tmp_path / "jc"),
                   "JUPYTER_RUNTIME_DIR": str(tmp_path / "jr"),
                   "JUPYTER_DATA_DIR": str(tmp_path / "jd")}
    (tmp_path / "hub_config.py").write_text(f"""
c.JupyterHub.proxy_class = "noproxy.NoProxy"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"alice", "bob", "boss"}}
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {free_port()}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{tmp_path / 'hub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{tmp_path / 'cookie_secret'}"
c.JupyterHub.custom_scopes = {scopes!r}
c.JupyterHub.load_roles = [
    {{"name": "stagers", "users": ["alice", "bob"],
     "scopes": ["self", "custom:hera-stage:read", "custom:hera-stage:stage",
                "access:services!service=hera-stage"]}},
    {{"name": "archivists", "users": ["boss"],
     "scopes": ["self", "custom:hera-stage:admin", "access:services!service=hera-stage"]}},
    {{"name": "tester", "services": ["tester"], "scopes": ["admin:users", "tokens"]}},
]
c.JupyterHub.services = [
    {{"name": "hera-stage", "url": "http://127.0.0.1:{service_port}",
     "command": {service_command!r}, "environment": {service_env!r},
     "oauth_no_confirm": True}},
    {{"name": "tester", "api_token": {admin_token!r}}},
]
""")
    hub_log = open(tmp_path / "hub.log", "wb")
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f",
                            str(tmp_path / "hub_config.py")], cwd=tmp_path,
                           env=_env(PYTHONPATH=f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"),
                           stdout=hub_log, stderr=subprocess.STDOUT, start_new_session=True)
    hub_api = f"http://127.0.0.1:{hub_port}/hub/api/"
    service = f"http://127.0.0.1:{service_port}/services/hera-stage/hera-stage/api/"

    def hub_token(user: str, scopes: list[str]) -> str:
        reply = requests.post(hub_api + f"users/{user}/tokens", json={"scopes": scopes},
                              headers={"Authorization": f"token {admin_token}"}, timeout=30)
        assert reply.ok, reply.text
        return str(reply.json()["token"])

    def call(token: str | None, method: str, path: str, body: Any = None) -> requests.Response:
        headers = {"Authorization": f"token {token}"} if token else {}
        return requests.request(method, service + path, json=body, headers=headers, timeout=30)

    try:
        deadline = time.monotonic() + 120
        while True:
            assert hub.poll() is None, (tmp_path / "hub.log").read_text(errors="replace")[-3000:]
            with contextlib.suppress(requests.RequestException):
                if (requests.get(hub_api, timeout=2).ok
                        and requests.get(service + "status", timeout=2).status_code == 403):
                    break
            assert time.monotonic() < deadline, (tmp_path / "hub.log").read_text()[-3000:]
            time.sleep(0.5)
        access = "access:services!service=hera-stage"
        alice = hub_token("alice", ["custom:hera-stage:read", "custom:hera-stage:stage", access])
        bob = hub_token("bob", ["custom:hera-stage:read", "custom:hera-stage:stage", access])
        bob_no_access = hub_token("bob", ["custom:hera-stage:read"])
        boss = hub_token("boss", ["custom:hera-stage:admin", access])
        assert call(alice, "GET", "status").json()["user"] == "alice"
        assert call(bob_no_access, "GET", "status").status_code == 403
        assert call(None, "GET", "jobs").status_code == 403
        assert call("not-a-token", "POST", "stage", {}).status_code == 403
        assert call(boss, "POST", "ingest", {"store": "s1"}).json()["registered"] == len(FILES)
        job = call(alice, "POST", "stage", {"names": FILES,
                                            "destination": str(tmp_path / "alice" / "d")})
        assert job.status_code == 202 and job.json()["owner"] == "alice", job.text
        number = job.json()["id"]
        assert call(bob, "GET", f"jobs/{number}").status_code == 404
        assert call(bob, "POST", f"jobs/{number}/cancel").status_code == 404
        assert call(bob, "POST", "worker/claim", {"worker_id": "b"}).json()["job"] is None
        assert number in [j["id"] for j in call(boss, "GET", "jobs").json()["jobs"]]
        kernels = requests.post(f"http://127.0.0.1:{service_port}/services/hera-stage/api/kernels",
                                headers={"Authorization": f"token {alice}"}, timeout=30)
        assert kernels.status_code == 403
        # A user's worker with her hub token runs her job.
        run = subprocess.run(
            [sys.executable, "-m", "hera_stage_ext.jobs.worker", "--site-url",
             f"http://127.0.0.1:{service_port}/services/hera-stage/", "--exit-when-idle",
             "--copy-processes", "0", f"--allowed-root={tmp_path / 'alice'}"],
            env=_env(HERA_STAGE_SITE_TOKEN=alice, XDG_CACHE_HOME=str(tmp_path / "cache")),
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert call(alice, "GET", f"jobs/{number}").json()["state"] == "succeeded"
        assert sorted(p.name for p in (tmp_path / "alice" / "d").iterdir()) == sorted(
            [*FILES, "STAGING-SUCCEEDED"])
    finally:
        hub.terminate()
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
        hub_log.close()
        _kill_service_of(config)


def test_the_logs_last_lines_come_with_the_finish(site: Site) -> None:
    """At a run's end the user's worker sends its log's last lines with the job's finish (one
    round trip, not a log call before it), and the service appends them before the job shows
    finished: the whole log, in order, is there when the job reads succeeded. A finish whose
    log is no text is refused and leaves the job as it was."""
    from hera_stage_ext.errors import InvalidRequest
    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.site.worker_ops import WorkerOps

    _issue_stage_token(site, "dave")
    destination = _dest(site, "dave", "logged")
    number = site.stage("dave", destination)["id"]
    calls: list[str] = []
    seen_at_finish: list[str] = []

    class Watching(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            calls.append(path.split("/", 2)[-1])
            if path.endswith("/finish"):
                seen_at_finish.append(str((body or {}).get("log")))
                job = site.api("dave", "GET", f"jobs/{number}").json()
                assert job["state"] == "running", job  # not finished before its log is in
            return super().call(method, path, body)

    with pytest.raises(InvalidRequest):  # (a log that is no text: refused, nothing done)
        WorkerOps(Database(site.db_url), "dave").finish(number, {"worker_id": "x", "log": 5})
    _run_users_worker(site, "dave", number, Watching, streams=1)
    last_record = len(calls) - 1 - calls[::-1].index("items/record")
    end = calls[last_record:calls.index("finish") + 1]
    # The unfinished items and the result lines with the last record's answer, the log's
    # last lines with the finish.
    assert end == ["items/record", "finish"] and "unfinished" not in calls, calls
    assert "copied" in seen_at_finish[0] and "bytes in" in seen_at_finish[0], seen_at_finish
    job = _wait_finished(site, "dave", number)  # (the status read above is cached 0.25 s)
    assert job["state"] == "succeeded", job
    log = site.api("dave", "GET", f"jobs/{number}/log").json()["text"]
    assert all(log.count(f"copy {name} ") == 1 for name in FILES), log
    assert 0 < log.index("bytes in") < log.index(f"job {number} succeeded"), log
    assert not list((site.work / "cache-dave").rglob("*.log"))  # shipped, then removed


def test_a_users_worker_keeps_every_call_within_the_services_body_limit(tmp_path: Path) -> None:
    """A hand-over of 10,000 files that all failed, each with a long message, while a megabyte
    of the job's log lines waits: every call of the user's worker stays within the service's
    body limit (one over it is refused, 413, and the job could never end), and every result
    and log line goes exactly once."""
    from hera_stage_ext.api.base import MAX_BODY_BYTES
    from hera_stage_ext.jobs.http_store import HttpJobStore, LogShipper
    from hera_stage_ext.jobs.items import ClaimedItem
    from hera_stage_ext.jobs.joblog import JobLog

    bodies: list[tuple[str, dict[str, Any], int]] = []

    class Recording(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            text = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
            bodies.append((path, body or {}, len(text)))
            return {"items": []}

    store = Recording("http://127.0.0.1:9/", "token", spool_dir=tmp_path)
    store._items_log = store._result_runs = True  # as the service's job answer says
    log = JobLog(tmp_path / "job.log")
    lines = [f"FAILED night/{i:05}.uvh5: the instance cannot be read \"{'é' * 80}\""
             for i in range(7_000)]
    for line in lines:
        log.note(line)
    store._shippers[7] = LogShipper(store, 7, log)
    results = [(ClaimedItem(i, f"f{i}", f"night/{i:05}.uvh5", f"night/{i:05}.uvh5", 4096, False,
                            {}, 1), "failed",
                f"the instance of f{i} on store 'cold' cannot be read: {'é' * 150}")
               for i in range(10_000)]
    store.exchange(7, "worker", results, 100)
    assert all(size <= MAX_BODY_BYTES for _path, _body, size in bodies), [
        (path, size) for path, _body, size in bodies]
    assert sorted(r[0] for _p, body, _s in bodies for r in body.get("results", [])) == list(
        range(10_000))
    assert bodies[-1][0].endswith("items/exchange")
    shipped = "".join(body.get("log", body.get("text", "")) for _p, body, _s in bodies)
    assert [line.split("  ", 1)[1] for line in shipped.splitlines()] == lines


def test_a_claim_waiting_for_another_streams_commit_ends_when_the_run_stops(
        tmp_path: Path) -> None:
    """Over the service a stream's claim waits for another stream's commit (one round trip
    then, not two); a run cancelled meanwhile (or losing its lease, or its worker stopping)
    ends that wait with nothing claimed and no call made, instead of claiming and renaming
    for a run that is over."""
    import threading

    from hera_stage_ext.jobs.http_store import HttpJobStore
    from hera_stage_ext.jobs.models import JobRow
    from hera_stage_ext.jobs.run import EngineConfig, JobRun
    from hera_stage_ext.standard_kinds import standard_kinds

    calls: list[str] = []

    class Recording(HttpJobStore):
        def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            calls.append(path)
            return {"items": []}

    store = Recording("http://127.0.0.1:9/", "token", spool_dir=tmp_path)
    job = JobRow(id=7, owner="carol", kind="stage", destination=str(tmp_path / "dest"),
                 files_total=10)
    run = JobRun(store, job, "worker", EngineConfig(kinds=standard_kinds()), threading.Event())
    claimed: list[Any] = []
    run._commit_lock.acquire()  # another stream's commit, in its round trip
    try:
        waiting = threading.Thread(
            target=lambda: claimed.append(run.commit(wait=False, claim=(10, 1 << 20))))
        waiting.start()
        waiting.join(0.6)
        assert waiting.is_alive() and claimed == []  # it waits (it does not claim alone)
        run.abort.set()  # cancelled
        waiting.join(10)
        assert not waiting.is_alive() and claimed == [[]] and calls == []
    finally:
        run._commit_lock.release()
