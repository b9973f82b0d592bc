"""Site mode on the user's side: a user's Jupyter server with ``c.StagingApp.site_url`` holds
nothing of the site's and forwards its REST API to the site service, with the user's token.

A real site service (``hera-stage site``, hub-less, with a token from ``hera-stage site-token
issue``) and a real user's Jupyter server in site mode; everything below goes through the
user's server as the panel, ``%stage`` and the CLI do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

import hera_stage_ext
from hera_stage_ext.api.events import JOB_PROGRESS_SCHEMA_ID
from hera_stage_ext.api.forward import (Bound, SiteClient, SiteConfigError, read_token_file,
                                        site_token)
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.demo import make_demo_archive

from .job_fixtures import ingest, wait_for
from .jupyter_process import _FOREIGN_ENV, JupyterProcess, free_port, jupyter_process
from .test_multiuser import as_user, ensure_user, readable_tree, remove_created_users  # noqa: F401


#: The throwaway Linux user the user's server runs as, when the tests run as root (CI).
USER = "hs_sm_alice"


@dataclass
class SiteSetup:
    service: JupyterProcess
    service_token: str  # the user's token at the service
    user: JupyterProcess  # the user's server, in site mode
    workspace: Path  # its root (the allowed root)
    uid: int  # whose the user's server (and worker, and staged files) are
    names: list[str]


def start_service(stack: ExitStack, base: Path) -> tuple[JupyterProcess, str]:
    """The site service (``hera-stage site``, its own SQLite catalogue with the demo archive,
    no worker of its own) and the user's token at it (``hera-stage site-token issue``)."""
    archive = make_demo_archive(base / "archive", files_per_night=3, nights=2)
    readable_tree(archive.root / "stores")
    db_url = f"sqlite:///{base / 'site.sqlite'}"
    db = Database(db_url)
    db.upgrade()
    ingest(db, {"onsite": archive.stores["onsite"]})
    db.dispose()
    service_dir = base / "service"
    (service_dir / "root").mkdir(parents=True)
    config = service_dir / "site_config.py"
    config.write_text(f"c.StagingApp.db_url = {db_url!r}\n"
                      f"c.StagingApp.stores = {archive.stores!r}\n"
                      f"c.StagingApp.job_log_dir = {str(service_dir / 'logs')!r}\n"
                      "c.StagingApp.start_worker = False\n")
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    issued = subprocess.run([sys.executable, "-m", "hera_stage_ext.cli", "site-token",
                             "--config", str(config), "issue", USER], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    port = free_port()
    command = [sys.executable, "-m", "hera_stage_ext.cli", "site", "--config", str(config),
               "--port", str(port), "--root-dir", str(service_dir / "root")]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env.update(JUPYTER_CONFIG_DIR=str(service_dir / "config"),
               JUPYTER_RUNTIME_DIR=str(service_dir / "runtime"),
               JUPYTER_DATA_DIR=str(service_dir / "data"))
    log = service_dir / "service.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=service_dir, start_new_session=True)
    stack.callback(stop, process)
    service = JupyterProcess(process, f"http://127.0.0.1:{port}/", token, service_dir / "root",
                             service_dir / "runtime", log)
    wait_for(lambda: _answers(service) or (process.poll() is not None and pytest.fail(
        "the site service exited:\n" + log.read_text()[-3000:])), timeout=90, step=0.25)
    return service, token


def _answers(service: JupyterProcess) -> bool:
    try:
        return service.request("GET", "hera-stage/api/status", timeout=2).ok
    except requests.RequestException:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def user_account(stack: ExitStack, base: Path) -> tuple[Path, int, list[str], dict[str, str]]:
    """Where the user's server runs: as a throwaway Linux user when root (its home 0700, the
    package copied where it can read it), else as this process's user. Returns its
    workspace, uid, command prefix and environment."""
    if os.geteuid() != 0:
        workspace = base / "alice"
        workspace.mkdir()
        return workspace, os.getuid(), [], {}
    entry = ensure_user(USER)
    home = base / "home" / USER
    (home / "work").mkdir(parents=True)
    os.chmod(home.parent, 0o755)
    for path in (home, home / "work"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    code = base / "code"
    shutil.copytree(Path(hera_stage_ext.__file__).parent, code / "hera_stage_ext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    readable_tree(code)
    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setenv("PYTHONPATH", os.pathsep.join(
        [str(code), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env = {"HOME": str(home), "USER": USER, "LOGNAME": USER}
    return home / "work", entry.pw_uid, as_user(USER), env


@pytest.fixture(scope="module")
def setup() -> Iterator[SiteSetup]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, so the user could not reach it.
    base = Path(tempfile.mkdtemp(prefix="hs-site-mode-"))
    os.chmod(base, 0o755)
    try:
        with ExitStack() as stack:
            service, token = start_service(stack, base)
            workspace, uid, prefix, env = user_account(stack, base)
            jupyter_dir = workspace.parent / "jupyter"
            jupyter_dir.mkdir()
            os.chown(jupyter_dir, uid, -1)
            user = stack.enter_context(jupyter_process(
                jupyter_dir, root_dir=workspace, prefix=prefix,
                config={"StagingApp": {"site_url": service.url,
                                       "worker_idle_exit_seconds": 3}},
                env={**env, "HERA_STAGE_SITE_TOKEN": token}))
            names = [r["name"] for r in user.api(
                "search", {"search": {"name-matches": "zen.%.xx.HH.uvh5"},
                           "limit": 100})["results"]]
            yield SiteSetup(service, token, user, workspace, uid, names)
    finally:
        if not os.environ.get("HS_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


def api(server: JupyterProcess, method: str, path: str, body=None):
    reply = server.request(method, f"hera-stage/api/{path}", body)
    return reply.status_code, reply.json(), reply


def finished(server: JupyterProcess, job_id: int) -> dict:
    return wait_for(lambda: (j := server.api(f"jobs/{job_id}"))["finished_at"] and j,
                    timeout=90, step=0.2)


# ----- through the user's server ----------------------------------------------------------------
def test_search_and_status_come_from_the_service(setup: SiteSetup) -> None:
    assert len(setup.names) >= 3
    status = setup.user.api("status")
    assert status["counts"]["files"] == setup.service.api("status")["counts"]["files"] > 0
    # Errors come back as the service gave them: status and JSON message.
    code, body, _ = api(setup.user, "POST", "search", {"query": "nosuchfield:1"})
    assert code == 400 and body["message"], body


def test_file_contents_stream_through(setup: SiteSetup) -> None:
    name = setup.names[0]
    whole = setup.service.request("GET", f"hera-stage/api/files/{name}/content")
    assert whole.status_code == 200 and len(whole.content) > 1000
    reply = setup.user.request("GET", f"hera-stage/api/files/{name}/content")
    assert reply.status_code == 200, reply.text
    assert reply.content == whole.content
    assert reply.headers["Content-Type"] == "application/octet-stream"
    part = requests.get(setup.user.url + f"hera-stage/api/files/{name}/content", timeout=30,
                        headers={"Authorization": f"token {setup.user.token}",
                                 "Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole.content[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(whole.content)}"
    code, body, _ = api(setup.user, "GET", "files/no-such-file/content")
    assert code == 404 and body["message"], body
    # A dot segment could take a proxy on the way to another route: refused here.
    reply = requests.get(setup.user.url + "hera-stage/api/files/%2e%2e/%2e%2e/api/status",
                         headers={"Authorization": f"token {setup.user.token}"}, timeout=30)
    assert reply.status_code == 400 and "'..' segment" in reply.json()["message"]


def test_stage_lands_in_the_users_folder(setup: SiteSetup) -> None:
    code, plan, _ = api(setup.user, "POST", "stage",
                        {"names": setup.names[:2], "destination": "plan", "dry_run": True})
    assert code == 200, plan
    # The destination went out resolved against the user's root.
    assert plan["destination"] == str(setup.workspace / "plan")
    assert (plan["already_there"], plan["conflicts"], plan["busy_job"]) == (0, 0, None), plan
    code, job, _ = api(setup.user, "POST", "stage",
                       {"names": setup.names[:2], "destination": "data/night1"})
    assert code == 202, job
    assert job["destination"] == str(setup.workspace / "data" / "night1")
    done = finished(setup.user, job["id"])
    assert done["state"] == "succeeded", done
    staged = sorted(p.name for p in (setup.workspace / "data" / "night1").rglob("*.uvh5"))
    assert staged == sorted(setup.names[:2])
    # The preview of the same files there: the user's server looked (the service cannot).
    code, plan, _ = api(setup.user, "POST", "stage", {"names": setup.names[:3],
                                                      "destination": "data/night1",
                                                      "dry_run": True})
    assert code == 200 and "items" not in plan, plan
    assert (plan["already_there"], plan["conflicts"], plan["not_checked"]) == (2, 0, 0), plan
    assert plan["already_there_bytes"] == done["bytes_total"]
    at_service = setup.service.api("stage", {"names": setup.names[:3], "dry_run": True,
                                             "destination": plan["destination"]})
    assert at_service["already_there"] is None and "items" not in at_service, at_service
    assert {p.stat().st_uid for p in (setup.workspace / "data").rglob("*")} == {setup.uid}
    # The job list and its log, through the forwarder; the marker read here.
    listed = setup.user.api("jobs")["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    assert all("marker" in j for j in listed)
    log = setup.user.api(f"jobs/{job['id']}/log?offset=0")
    assert log["next_offset"] > 0 and log["text"]
    again = setup.user.api(f"jobs/{job['id']}/log?offset={log['next_offset']}")
    assert again["text"] == "" and again["next_offset"] == log["next_offset"]


def test_contents_method_through_the_users_server(setup: SiteSetup) -> None:
    """The ``contents`` method: the user's server describes its contents manager, the service
    stores the description, the user's worker builds the manager and writes through it."""
    body = {"names": setup.names[:2], "destination": "through-cm", "method": "contents"}
    code, plan, _ = api(setup.user, "POST", "stage", {**body, "dry_run": True})
    assert code == 200, plan
    assert plan["destination"] == str(setup.workspace / "through-cm")
    code, job, _ = api(setup.user, "POST", "stage", body)
    assert code == 202, job
    described = job["options"]["contents"]
    assert described["file_based"] and described["path"] == "through-cm"
    assert described["root_dir"] == str(setup.workspace)
    done = finished(setup.user, job["id"])
    assert done["state"] == "succeeded", done
    folder = setup.workspace / "through-cm"
    staged = sorted(p.name for p in folder.rglob("*.uvh5"))
    assert staged == sorted(setup.names[:2])
    assert (folder / "STAGING-SUCCEEDED").exists()
    assert {p.stat().st_uid for p in folder.rglob("*")} == {setup.uid}
    log = setup.user.api(f"jobs/{job['id']}/log?offset=0")["text"]
    assert "through the contents manager" in log
    # Outside the allowed roots: refused by the user's server, nothing sent.
    code, refused, _ = api(setup.user, "POST", "stage", {**body, "destination": "../out"})
    assert code == 403, refused


def test_the_service_stores_a_contents_description_and_never_builds_it(setup: SiteSetup) -> None:
    """A description straight to the service (the user's token, no user's server): checked as
    plain JSON and stored; a class the service could not even import is kept as it is (the
    service never imports or builds it), and the user's worker is the one that refuses it."""
    service = setup.service
    destination = str(setup.workspace / "never-built")
    description = {"class": "no_such_module_anywhere:Manager", "config": {}, "root_dir": None,
                   "file_based": False, "path": "never-built"}
    body = {"names": setup.names[:1], "method": "contents", "contents": description,
            "destination": "contents:never-built"}
    reply = service.request("POST", "hera-stage/api/stage", body)
    assert reply.status_code == 202, reply.text
    number = reply.json()["id"]
    assert reply.json()["options"]["contents"] == description
    assert service.request("POST", f"hera-stage/api/jobs/{number}/cancel").ok
    for bad, why in [
        ({**description, "config": {"X": {"password": "p"}}}, "secret"),
        ({**description, "config": {"X": {"a": "b" * 70_000}}}, "larger than"),
        ({**description, "class": "os.system"}, "module:ClassName"),
        ({**description, "path": "../up"}, "outside"),
        ({**description, "path": "elsewhere"}, "not the contents path"),
        ("a string", "JSON object"),
    ]:
        reply = service.request("POST", "hera-stage/api/stage", {**body, "contents": bad})
        assert reply.status_code in (400, 403) and why in reply.json()["message"], reply.text
    reply = service.request("POST", "hera-stage/api/stage",
                            {**body, "destination": destination,
                             "contents": {**description, "file_based": True}})
    assert reply.status_code == 400 and "root_dir" in reply.json()["message"], reply.text
    assert not (setup.workspace / "never-built").exists()


def test_progress_is_pushed_on_the_event_bus(setup: SiteSetup) -> None:
    """The panel's live progress: events the user's server emits from what the service says."""

    async def follow() -> tuple[dict, list[dict]]:
        socket = await websocket_connect(HTTPRequest(
            setup.user.url.replace("http://", "ws://") + "api/events/subscribe",
            headers={"Authorization": f"token {setup.user.token}"}))
        loop = asyncio.get_running_loop()
        code, job, _ = await loop.run_in_executor(None, lambda: api(
            setup.user, "POST", "stage", {"names": setup.names, "destination": "pushed"}))
        assert code == 202, job
        events: list[dict] = []
        while not any(e["id"] == job["id"] and e["state"] == "succeeded" for e in events):
            message = await asyncio.wait_for(socket.read_message(), 60)
            assert message is not None, events
            event = json.loads(message)
            if event["schema_id"] == JOB_PROGRESS_SCHEMA_ID:
                events.append(event)
        socket.close()
        return job, [e for e in events if e["id"] == job["id"]]

    job, mine = asyncio.run(follow())
    done = [e["files_done"] for e in mine]
    assert done == sorted(done) and done[-1] == job["files_total"] == len(setup.names)
    assert mine[-1]["bytes_done"] == mine[-1]["bytes_total"] > 0


def test_destination_outside_the_roots_is_refused_here(setup: SiteSetup) -> None:
    before = setup.service.api("jobs")["jobs"]
    for destination in ("../elsewhere", "/etc", str(setup.workspace.parent)):
        code, body, _ = api(setup.user, "POST", "stage",
                            {"names": setup.names[:1], "destination": destination})
        assert code == 403, body
        assert "outside the allowed roots" in body["message"]
        assert [os.path.realpath(r) for r in body["allowed_roots"]] == [
            os.path.realpath(setup.workspace)] and body["allowed_roots"][0] in body["message"]
    code, body, _ = api(setup.user, "POST", "upload",
                        {"directory": "/etc", "glob": "*", "store": "onsite"})
    assert code == 403, body
    assert setup.service.api("jobs")["jobs"] == before
    assert not (setup.workspace.parent / "elsewhere").exists()


def test_cancel_and_forget_through_the_forwarder(setup: SiteSetup) -> None:
    code, job, _ = api(setup.user, "POST", "stage",
                       {"names": setup.names, "destination": "cancelled"})
    assert code == 202, job
    code, cancelled, _ = api(setup.user, "POST", f"jobs/{job['id']}/cancel", {})
    assert code == 200, cancelled
    done = finished(setup.user, job["id"])
    assert done["state"] in ("cancelled", "succeeded"), done
    code, forgot, _ = api(setup.user, "DELETE", f"jobs/{job['id']}")
    assert code == 200, forgot
    code, gone, _ = api(setup.user, "GET", f"jobs/{job['id']}")
    assert code == 404 and gone["message"] == f"no job {job['id']}"


def test_site_mode_clean_runs_in_the_users_server(setup: SiteSetup) -> None:
    """Staged folders are listed and cleaned by the user's server, as the user, from the
    service's records; the service never reads them and records what was cleaned."""
    user = setup.user
    # The service, as the user (their token there).
    service = dataclasses.replace(setup.service, token=setup.service_token)
    jobs = {}
    for folder in ("lc/expiring", "lc/shared"):
        code, job, _ = api(user, "POST", "stage", {"names": setup.names[:2],
                                                   "destination": folder, "expires_in": 1})
        assert code == 202, job
        jobs[folder] = finished(user, job["id"])
        assert jobs[folder]["state"] == "succeeded"
    shared = setup.workspace / "lc" / "shared"
    mine = shared / "mine.txt"
    mine.write_text("the user's own file, beside the staged ones")
    time.sleep(1.1)
    # The service knows the records only; it never reads the folders, nor cleans them.
    code, view, _ = api(service, "GET", "staged")
    assert code == 200 and {f["state"] for f in view["folders"]} >= {"unchecked"}
    code, refused, _ = api(service, "POST", "staged/clean", {"expired": True})
    assert code == 400 and "your own Jupyter server" in refused["message"]

    code, view, _ = api(user, "GET", "staged")
    assert code == 200, view
    ours = {f["destination"]: f for f in view["folders"]
            if f["destination"].startswith(str(setup.workspace / "lc"))}
    assert ours[str(shared)]["foreign"] == ["mine.txt"] and ours[str(shared)]["expired"]
    expiring = str(setup.workspace / "lc" / "expiring")
    assert ours[expiring]["state"] == "intact" and ours[expiring]["made"]

    code, report, _ = api(user, "POST", "staged/clean",
                          {"folders": ["lc/expiring", "lc/shared"]})
    assert code == 200, report
    by_path = {f["destination"]: f for f in report["folders"]}
    assert by_path[expiring]["folder_removed"] and not Path(expiring).exists()
    assert by_path[str(shared)]["removed_files"] == 2 and mine.exists()
    assert sorted(p.name for p in shared.rglob("*") if p.is_file()) == ["mine.txt"]
    # The service recorded the clean: the folders are no longer listed there.
    code, view, _ = api(service, "GET", "staged")
    assert not [f for f in view["folders"] if f["destination"].startswith(
        str(setup.workspace / "lc"))]


def test_no_site_secret_in_the_users_processes(setup: SiteSetup) -> None:
    code, job, _ = api(setup.user, "POST", "stage",
                       {"names": setup.names[:1], "destination": "secretless"})
    assert code == 202, job
    workers = wait_for(lambda: worker_pids(setup.uid, setup.service.url), timeout=30, step=0.1)
    seen: list[list[bytes]] = []  # the workers' command lines
    for pid in [setup.user.pid, *workers]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:  # a worker that finished meanwhile has nothing left to show
            assert pid != setup.user.pid
            continue
        assert not any(v.startswith((b"HERA_STAGE_DB_URL=", b"HERA_STAGE_PEERS="))
                       for v in environ), pid
        assert not any(b"sqlite:" in v or b"postgresql" in v for v in environ + cmdline), pid
        assert setup.service_token.encode() not in b"\0".join(cmdline)
        if pid != setup.user.pid:
            seen.append(cmdline)
    assert seen, "no worker of this user lived long enough to be read"
    # The worker has the token in its environment only, and the service's address.
    cmdline = seen[0]
    assert cmdline[cmdline.index(b"--site-url") + 1] == setup.service.url.encode()
    assert cmdline[cmdline.index(b"--allowed-root") + 1] == str(setup.workspace).encode()
    assert b"--owner" not in cmdline and b"--db-url" not in cmdline
    finished(setup.user, job["id"])


def worker_pids(uid: int, site_url: str) -> list[int]:
    """The site-mode workers running as ``uid`` towards the service at ``site_url`` (not the
    workers another test's service left running for the same user)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                cmd = (entry / "cmdline").read_bytes()
                if b"hera_stage_ext.jobs.worker" in cmd and site_url.encode() in cmd:
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# ----- a service that is down -------------------------------------------------------------------
def test_a_service_that_is_down_answers_502_json(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    dead = f"http://127.0.0.1:{free_port()}/services/hera-stage/"
    config = {"StagingApp": {"site_url": dead, "start_worker": False}}
    with jupyter_process(tmp_path / "jp", root_dir=tmp_path / "root", config=config,
                         env={"HERA_STAGE_SITE_TOKEN": "t0ken"}, ready_path="api/status") as user:
        for method, path, body in [("GET", "status", None), ("POST", "search", {"query": "x"}),
                                   ("GET", "jobs/1", None), ("GET", "jobs", None),
                                   ("GET", "files/x/content", None),
                                   ("POST", "stage", {"names": ["x"], "destination": "d"})]:
            code, reply, raw = api(user, method, path, body)
            assert code == 502, (method, path, code, raw.text)
            assert raw.headers["Content-Type"].startswith("application/json")
            assert reply["error"] == "SiteUnavailable"
            assert f"the site service at {dead} cannot be reached" in reply["message"]
        assert "Traceback" not in user.log_tail(20000)


class SilentService:
    """A site service that hangs: it accepts connections and reads the requests but never
    answers them; a request for a path holding ``stalls-mid`` gets the start of an answer
    (headers and 10 of 1,000 bytes) and then nothing more."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/services/hera-stage/"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.held.append(connection)
            threading.Thread(target=self.hold, args=(connection,), daemon=True).start()

    @staticmethod
    def hold(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            head = connection.recv(65536)
            if b"stalls-mid" in head.split(b"\r\n", 1)[0]:
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream"
                                   b"\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            while connection.recv(65536):
                pass

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_a_service_that_stops_answering_gives_504_json_in_bounded_time(tmp_path: Path) -> None:
    """A hung service (it takes the connection, then says nothing) costs the user the
    request's bound, not for ever: a 504 with a JSON message, which the CLI shows."""
    (tmp_path / "root").mkdir()
    silent = SilentService()
    bound = 2.0
    config = {"StagingApp": {"site_url": silent.url, "start_worker": False,
                             "site_request_timeout": bound}}
    try:
        with jupyter_process(tmp_path / "jp", root_dir=tmp_path / "root", config=config,
                             env={"HERA_STAGE_SITE_TOKEN": "t0ken"},
                             ready_path="api/status") as user:
            for method, path, body, what in [
                    ("GET", "status", None, "answer GET"),
                    ("POST", "search", {"query": "x"}, "answer POST"),
                    ("GET", "jobs", None, "answer GET"),
                    ("GET", "jobs/1", None, "answer GET"),
                    ("POST", "stage", {"names": ["x"], "destination": "d"}, "answer POST"),
                    ("GET", "files/x/content", None, "begin to answer GET")]:
                started = time.monotonic()
                code, reply, raw = api(user, method, path, body)
                waited = time.monotonic() - started
                assert code == 504, (method, path, code, raw.text)
                assert raw.headers["Content-Type"].startswith("application/json")
                assert reply["error"] == "SiteUnavailable"
                assert (f"the site service at {silent.url} did not {what} "
                        f"/services/hera-stage/hera-stage/api/{path} within 2 s"
                        ) in reply["message"], reply
                # The bound, and never the test's own 30 s timeout (the service never answers).
                assert bound <= waited < bound + 15, (path, waited)
            # A download the service stops sending mid-way ends short of its length.
            started = time.monotonic()
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                user.request("GET", "hera-stage/api/files/stalls-mid/content").content
            assert time.monotonic() - started < bound + 15
            # The CLI, through the user's server, prints the message and fails.
            cli = subprocess.run(
                [sys.executable, "-m", "hera_stage_ext.cli", "search", "x"],
                env={**os.environ, "HERA_STAGE_URL": user.url, "HERA_STAGE_TOKEN": user.token},
                capture_output=True, text=True, timeout=60)
            assert cli.returncode != 0 and "did not answer" in cli.stderr, cli
            assert "Traceback" not in cli.stderr + user.log_tail(20000)
    finally:
        silent.close()


def test_each_route_kind_has_its_bound() -> None:
    """Ordinary calls wait T; calls whose work grows with the data an hour; file contents T
    for the answer to begin and for each gap, with no bound on the whole download."""
    site = SiteClient("http://127.0.0.1:9/", "t", [], "/", answer_timeout_s=45)
    assert site.bound("GET", "status") == Bound(45)
    assert site.bound("POST", "stage") == Bound(45)
    assert site.bound("GET", "jobs/3/log") == Bound(45)
    for path in ("ingest", "offload", "fixity/audit", "delete-instances", "files/a.uvh5/repair"):
        assert site.bound("POST", path) == Bound(3600), path
    assert site.bound("GET", "fixity/audit") == Bound(45)
    content = site.bound("GET", "files/a.uvh5/content")
    assert content == Bound(45, streamed=True)
    timeout = content.httpx()
    assert (timeout.connect, timeout.read) == (10, 45)  # read: the gap between two chunks


# ----- refusals at start ----------------------------------------------------------------------
def test_site_url_with_db_url_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    config = {"StagingApp": {"site_url": "http://127.0.0.1:9/",
                             "db_url": f"sqlite:///{tmp_path / 'x.sqlite'}"}}
    with pytest.raises(RuntimeError) as failed:
        with jupyter_process(tmp_path / "jp", root_dir=tmp_path / "root", config=config,
                             env={"HERA_STAGE_SITE_TOKEN": "t0ken"}):
            pass
    assert "jupyter exited" in str(failed.value)
    assert "must not hold the site's settings: remove c.StagingApp.db_url" in str(failed.value)
    assert not (tmp_path / "x.sqlite").exists()


def test_token_file_must_be_the_users_own_and_private(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    assert read_token_file(str(token)) == "s3cret"
    assert site_token(str(token), {}) == "s3cret"
    assert site_token(str(token), {"HERA_STAGE_SITE_TOKEN": "env"}) == "env"
    assert site_token(str(token), {"JUPYTERHUB_API_TOKEN": "hub",
                                   "HERA_STAGE_SITE_TOKEN": "env"}) == "hub"
    token.chmod(0o644)
    with pytest.raises(SiteConfigError, match="mode 0644: others may read it"):
        read_token_file(str(token))
    token.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(token)
    with pytest.raises(SiteConfigError, match="not a link"):
        read_token_file(str(link))
    with pytest.raises(SiteConfigError, match="not a regular file"):
        read_token_file(str(tmp_path))
    if os.geteuid() == 0:
        os.chown(token, 65534, 65534)
        with pytest.raises(SiteConfigError, match="belongs to uid 65534"):
            read_token_file(str(token))
    with pytest.raises(SiteConfigError, match="no token for the site service"):
        site_token("", {})
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
