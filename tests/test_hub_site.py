"""A site behind a real JupyterHub (issue 16): one trusted service, users who hold only their own
identity.

The site is ``tests/hub_fixtures.py``'s: real Linux users spawned by a real hub, the
``hera-stage`` service as a hub-managed service under its own account on a PostgreSQL that asks
for a password, the hub configured with the block ``docs/deploying.md`` gives. The attacks are
those of the security review: bob, using everything his account can read, tries to see, change
and run alice's work and to find the site's secrets. On the deployment that page described before
(every user's server holding the database URL) each of these tests fails.

One hub for the module; the tests run in order (the last stops every user's server).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .hub_fixtures import (
    ALICE,
    ARCHIVIST,
    BOB,
    PEER_NAME,
    SITE,
    HubSite,
    as_user,
    login,
    process_cmdline,
    process_env,
    run_hub_site,
    user_processes,
    wait_until,
)
from .jupyter_process import free_port

pytestmark = [pytest.mark.timeout(600)]

NIGHT = "2457644"  # the demo archive's first night: 5 files
ORDER_NIGHT = "2457660"  # files of it are made (and ingested) while no user's server runs
BASHRC = "# alice's own shell set-up\nexport EDITOR=vi\n"


# pytest-jupyter's autouse fixtures close "their" event loop after each test, but the sync
# Playwright API keeps a loop running in this thread: opt out here (as tests/test_browser.py).
@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    return None


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    return None


@pytest.fixture(scope="module")
def site() -> Iterator[HubSite]:
    with run_hub_site() as hub_site:
        # The archivist registers the archive through the service; the users log in.
        for store in ("onsite", "offsite"):
            reply = hub_site.service(hub_site.token(ARCHIVIST), "POST", "ingest",
                                     {"store": store, "globs": ["*/*"]})
            assert reply.status_code == 200, reply.text
        alice = hub_site.accounts[ALICE]
        bashrc = alice.home / ".bashrc"
        bashrc.write_text(BASHRC)
        os.chown(bashrc, alice.uid, alice.gid)
        hub_site.spawn(ALICE)
        hub_site.spawn(BOB)
        yield hub_site


def night_names(site: HubSite, night: str = NIGHT) -> list[str]:
    reply = site.service(site.token(ALICE), "POST", "search",
                         {"query": f"zen.{night}.*", "limit": 100})
    assert reply.status_code == 200, reply.text
    return sorted(r["name"] for r in reply.json()["results"])


def stage(site: HubSite, user: str, names: list[str], destination: str) -> int:
    """A stage launched as ``user`` through their own server (as the panel does)."""
    reply = site.server(user, "POST", "stage", {"names": names, "destination": destination})
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def finished(site: HubSite, user: str, job_id: int, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        reply = site.server(user, "GET", f"jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        job = reply.json()
        return job if job["finished_at"] else None

    return wait_until(f"{user}'s job {job_id}", done, timeout, step=0.3,
                      detail=lambda: site.server(user, "GET", f"jobs/{job_id}/log").text)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_file(site: HubSite, name: str) -> Path:
    night = name.split(".")[1]
    return Path(site.archive_stores["onsite"]["path"]) / night / name


@pytest.fixture(scope="module")
def staged(site: HubSite) -> dict[str, dict[str, Any]]:
    """alice and bob each stage two files into their own home, at the same time."""
    names = night_names(site)
    launched = {ALICE: stage(site, ALICE, names[:2], "staged"),
                BOB: stage(site, BOB, names[2:4], "staged")}
    return {user: finished(site, user, job_id) for user, job_id in launched.items()}


def bob_reads_his_server_token(site: HubSite) -> str:
    """bob's hub token, as bob can read it: from his own server's environment."""
    done = site.run_as(BOB, textwrap.dedent(f"""
        env = open("/proc/{site.server_pid(BOB)}/environ", "rb").read().split(b"\\0")
        print(next(e for e in env if e.startswith(b"JUPYTERHUB_API_TOKEN=")).decode()
              .split("=", 1)[1])
    """))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# ----- staging: each user's files are their own -------------------------------------------------
def test_each_user_stages_into_their_own_home_as_themselves(
        site: HubSite, staged: dict[str, dict[str, Any]]) -> None:
    for user, job in staged.items():
        account = site.accounts[user]
        assert job["state"] == "succeeded" and job["files_done"] == 2, job
        assert job["owner"] == user
        folder = account.home / "staged"
        files = [p for p in folder.rglob("zen.*") if p.is_file()]
        assert len(files) == 2
        # Written by the user's own worker: every file and folder is theirs.
        assert {p.stat().st_uid for p in [folder, *folder.rglob("*")]} == {account.uid}
        assert all(sha256(p) == sha256(store_file(site, p.name)) for p in files)
        # Each user lists their own job only; its log is theirs to read.
        listed = site.server(user, "GET", "jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]] and listed[0]["owner"] == user
        log = site.server(user, "GET", f"jobs/{job['id']}/log")
        assert log.status_code == 200 and log.text.strip(), log.text


# ----- attack 1: bob acts on alice's jobs ---------------------------------------------------------
def test_bob_cannot_see_or_touch_alices_jobs(site: HubSite,
                                             staged: dict[str, dict[str, Any]]) -> None:
    alice_job = staged[ALICE]["id"]
    token = bob_reads_his_server_token(site)
    paths = {
        "the service": lambda m, p, b=None: site.service(token, m, p, b),
        "his own server": lambda m, p, b=None: site.server(BOB, m, p, b, token=token),
    }
    for via, call in paths.items():
        listed = call("GET", "jobs").json()["jobs"]
        assert alice_job not in [j["id"] for j in listed], via
        assert {j["owner"] for j in listed} == {BOB}, via
        for method, path, body in [("GET", f"jobs/{alice_job}", None),
                                   ("GET", f"jobs/{alice_job}/log", None),
                                   ("POST", f"jobs/{alice_job}/cancel", {}),
                                   ("POST", f"jobs/{alice_job}/retry", {}),
                                   ("DELETE", f"jobs/{alice_job}", None)]:
            reply = call(method, path, body)
            assert reply.status_code == 404, (via, method, path, reply.status_code, reply.text)
            assert reply.json()["message"] == f"no job {alice_job}", (via, reply.text)
    # Nor does alice's server let bob in.
    assert site.request(token, "GET", f"user/{ALICE}/hera-stage/api/jobs").status_code == 403
    # alice's job is as it was.
    job = site.server(ALICE, "GET", f"jobs/{alice_job}").json()
    assert job["state"] == "succeeded" and job["files_done"] == 2


def start_bobs_second_server(site: HubSite,
                             token: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """bob's own ``jupyter server`` (not the hub's), with his own ``~/.jupyter`` saying he is
    alice, his hub token and alice's name in its environment."""
    bob = site.accounts[BOB]
    config_dir = bob.home / ".jupyter"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "jupyter_server_config.py").write_text(
        'c.StagingApp.owner = "hs_alice"\nc.StagingApp.start_worker = False\n')
    for p in (config_dir, config_dir / "jupyter_server_config.py"):
        os.chown(p, bob.uid, bob.gid)
    port, server_token = free_port(), os.urandom(16).hex()
    server_env = process_env(site.server_pid(BOB))  # what bob's shell would have too
    env = {**server_env, "JUPYTERHUB_API_TOKEN": token, "JUPYTERHUB_USER": ALICE}
    for key in ("JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_OAUTH_CALLBACK_URL",
                "JUPYTERHUB_ACTIVITY_URL", "JUPYTERHUB_SERVER_NAME"):
        env.pop(key, None)  # a plain server, not a hub's
    log = open(site.base / "bob-second-server.log", "wb")
    process = subprocess.Popen(
        [*as_user(bob), str(site.runtime / "bin" / "python"), "-m", "jupyter_server",
         "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={server_token}", f"--ServerApp.root_dir={bob.home}"],
        env=env, cwd=bob.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}/", server_token


def test_bobs_own_server_claiming_to_be_alice_gains_nothing(
        site: HubSite, staged: dict[str, dict[str, Any]]) -> None:
    import requests

    alice, bob = site.accounts[ALICE], site.accounts[BOB]
    alice_job = staged[ALICE]["id"]
    process, url, server_token = start_bobs_second_server(site, bob_reads_his_server_token(site))

    def call(method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, f"{url}hera-stage/api/{path}", json=body, timeout=30,
                                headers={"Authorization": f"token {server_token}"})

    def up() -> bool:
        assert process.poll() is None, (site.base / "bob-second-server.log").read_text()
        try:
            return call("GET", "jobs").status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until("bob's second server", up, 90,
                   detail=lambda: (site.base / "bob-second-server.log").read_text())
        # It lists bob's jobs only, and alice's job does not exist for it.
        listed = call("GET", "jobs").json()["jobs"]
        assert alice_job not in [j["id"] for j in listed]
        assert {j["owner"] for j in listed} <= {BOB}
        for method, path in [("GET", f"jobs/{alice_job}"), ("DELETE", f"jobs/{alice_job}")]:
            assert call(method, path).status_code == 404

        # The trap: a folder of bob's with a link, named as the file he stages, to alice's
        # ~/.bashrc; his server asks for the job as alice.
        name = night_names(site)[0]
        trap = bob.home / "trap" / NIGHT
        trap.mkdir(parents=True)
        (trap / name).symlink_to(alice.home / ".bashrc")
        for p in (trap.parent, trap):
            os.chown(p, bob.uid, bob.gid)
        os.lchown(trap / name, bob.uid, bob.gid)
        reply = call("POST", "stage", {"names": [name], "destination": str(trap.parent)})
        trap_job = reply.json().get("id") if reply.status_code == 202 else None
    finally:
        process.terminate()
        process.wait(30)

    # alice's next ordinary job starts her worker: it runs hers, and only hers.
    own = finished(site, ALICE, stage(site, ALICE, night_names(site)[4:5], "after-trap"))
    assert own["state"] == "succeeded", own
    time.sleep(2)  # time for a worker that would take bob's job too
    assert (alice.home / ".bashrc").read_text() == BASHRC
    assert (alice.home / ".bashrc").stat().st_uid == alice.uid
    alice_jobs = site.server(ALICE, "GET", "jobs").json()["jobs"]
    assert trap_job not in [j["id"] for j in alice_jobs]
    assert {j["owner"] for j in alice_jobs} == {ALICE}
    if trap_job is not None:  # the job exists, as bob's
        job = site.service(site.token(BOB), "GET", f"jobs/{trap_job}").json()
        assert job["owner"] == BOB, job


# ----- attacks 2 and 3: the site's secrets --------------------------------------------------------
#: Run as bob: every file under the given roots and every process's environment and command
#: line bob can read, searched for the secrets (read from stdin, so they are in no command
#: line or environment themselves). Prints [where, which secret] pairs.
SECRET_SEARCH = textwrap.dedent("""
    import json, os, sys
    wanted = json.load(sys.stdin)
    roots, skip, secrets = wanted["roots"], tuple(wanted["skip"]), wanted["secrets"]
    found, read = [], 0

    def look(where, data):
        for label, secret in secrets.items():
            if secret.encode() in data:
                found.append([where, label])

    def read_file(path):
        global read
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 22)
        except OSError:
            return
        read += 1
        look(path, data)

    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.join(folder, d).startswith(skip)]
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    read_file(path)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for what in ("environ", "cmdline"):
                read_file(f"/proc/{pid}/{what}")
    print(json.dumps({"found": found, "read": read}))
""")


def test_bob_can_read_no_site_secret(site: HubSite,
                                     staged: dict[str, dict[str, Any]]) -> None:
    bob = site.accounts[BOB]
    # bob's worker is up (his staging just ran), and so are his server and the service.
    stage(site, BOB, night_names(site)[:1], "while-looking")
    worker = wait_until("bob's worker", lambda: [
        p for p in user_processes(bob.uid)
        if any("hera_stage_ext.jobs.worker" in part for part in process_cmdline(p))], 30)
    secrets = {**site.secrets,
               "alice's server token": process_env(site.server_pid(ALICE))[
                   "JUPYTERHUB_API_TOKEN"]}
    assert "the service's hub token" in secrets  # the fixture found the service's process
    roots = [str(site.base), "/etc/jupyter", "/usr/local/etc/jupyter", "/etc/hera-stage"]
    skip = [str(site.runtime / "lib"), str(site.runtime / "share"), str(site.base / "code")]
    done = site.run_as(BOB, SECRET_SEARCH, stdin=json.dumps(
        {"roots": roots, "skip": skip, "secrets": secrets}), timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["read"] > 20  # bob's own files, his processes, the shared config
    assert result["found"] == [], result["found"]

    # What his server and worker hold: his identity, no database, no peer.
    for pid in [site.server_pid(BOB), *worker]:
        env = process_env(pid)
        assert not [k for k in env if k in ("HERA_STAGE_DB_URL", "HERA_STAGE_PEERS")], (pid, env)
        assert not any("postgresql" in v for v in env.values()), pid
        assert not any("postgresql" in part for part in process_cmdline(pid)), pid

    # Without the password, the database does not let bob in, under any role.
    port = site.db_port
    probe = site.run_as(BOB, textwrap.dedent(f"""
        import psycopg
        for role in ("hera_site", "postgres", "{BOB}"):
            try:
                psycopg.connect(host="127.0.0.1", port={port}, user=role, dbname="postgres",
                                connect_timeout=5).close()
                print("connected as", role)
            except psycopg.OperationalError as exc:
                print("refused", role, str(exc).splitlines()[0][-60:])
    """))
    assert probe.returncode == 0, probe.stderr
    assert "connected" not in probe.stdout, probe.stdout
    assert probe.stdout.count("refused") == 3


def test_the_service_runs_as_its_own_account(site: HubSite) -> None:
    service = [p for p in user_processes(site.accounts[SITE].uid)
               if "site" in process_cmdline(p)]
    assert service, "no hera-stage site process runs as the service's account"
    # It serves nothing but the archive: no kernels, terminals or files through it, even to
    # an archivist (403; terminals are not even there: 404).
    token = site.token(ARCHIVIST)
    for path in ("api/kernels", "api/terminals", "api/contents", "api/sessions"):
        reply = site.request(token, "GET", f"services/hera-stage/{path}")
        assert reply.status_code in (403, 404), (path, reply.status_code)
    assert site.request(token, "GET", "services/hera-stage/api/kernels").status_code == 403
    assert site.request(token, "POST", "services/hera-stage/api/kernels", {}).status_code == 403
    assert site.request(token, "POST", "services/hera-stage/api/terminals", {}).status_code in (
        403, 404)


# ----- the panel and %stage, through the hub -------------------------------------------------------
@pytest.mark.browser
def test_the_panel_through_the_hub(site: HubSite) -> None:
    from playwright.sync_api import sync_playwright

    from .browser_fixtures import CHROMIUM_FLAGS, PANEL, chromium_path, open_panel, panel_search

    alice = site.accounts[ALICE]
    site.spawn(ALICE)
    names = night_names(site)[:2]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS,
                                    headless=True)
        try:
            page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            page.set_default_timeout(30_000)
            login(page, site, ALICE)
            page.goto(f"{site.url}/user/{ALICE}/lab?reset")
            page.wait_for_selector("#jp-main-dock-panel", state="visible", timeout=90_000)
            page.wait_for_selector(".lm-TabBar-tab[data-id='hera-stage-panel']")
            open_panel(page)
            panel_search(page, " OR ".join(names))
            rows = page.locator(f"{PANEL} .jp-HeraStage-gridRow")
            wait_until("the search's two rows", lambda: rows.count() == 2, 30)
            for i in range(2):
                rows.nth(i).locator("input[type=checkbox]").check()
            page.fill(f"{PANEL} #jp-HeraStage-destination", "from-the-panel")
            before = {j["id"] for j in site.server(ALICE, "GET", "jobs").json()["jobs"]}
            page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
            preview = page.locator(f"{PANEL} .jp-HeraStage-preview")
            preview.wait_for()
            assert preview.locator("[data-field=files]").inner_text() == "2 files"
            preview.locator(".jp-HeraStage-confirm").click()
            job_id = wait_until("the panel's job", lambda: [
                j["id"] for j in site.server(ALICE, "GET", "jobs").json()["jobs"]
                if j["id"] not in before], 30)[0]
            page.wait_for_selector(
                f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}'][data-state=succeeded]",
                timeout=120_000)
        finally:
            browser.close()
    staged = sorted((alice.home / "from-the-panel").rglob("zen.*"))
    assert [p.name for p in staged] == names
    assert {p.stat().st_uid for p in staged} == {alice.uid}


class HubUserServer:
    """What tests/notebook_fixtures.run_notebook needs of a server: ``user``'s hub-spawned
    server, reached through the proxy with the user's token."""

    def __init__(self, site: HubSite, user: str) -> None:
        self.site, self.user = site, user
        self.runtime_dir = site.accounts[user].home / ".local" / "share" / "jupyter" / "runtime"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        return self.site.request(self.site.token(self.user), method, f"user/{self.user}/{path}",
                                 body, timeout)


def test_stage_magic_in_a_kernel_of_the_users_hub_server(site: HubSite) -> None:
    from .notebook_fixtures import error_of, notebook, run_notebook, text_of

    alice = site.accounts[ALICE]
    site.spawn(ALICE)
    name = night_names(site)[3]
    nb = run_notebook(HubUserServer(site, ALICE), notebook(
        "%load_ext hera_stage_ext",
        f"import os\njob = %stage from-a-notebook {name} --wait\n"
        "print(os.getuid(), job.state, job.files_done)",
    ), path="hub.ipynb", timeout=120)
    assert error_of(nb.cells[1]) is None, nb.cells[1].outputs
    assert text_of(nb.cells[1]).split() == [str(alice.uid), "succeeded", "1"]
    staged = list((alice.home / "from-a-notebook").rglob(name))
    assert len(staged) == 1 and staged[0].stat().st_uid == alice.uid
    assert sha256(staged[0]) == sha256(store_file(site, name))


# ----- attack 4: the site's own work runs with nobody logged in -------------------------------------
def test_standing_order_and_incoming_transfer_complete_with_no_user_server(
        site: HubSite) -> None:
    for user in (ALICE, BOB):
        site.stop(user)
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
    wait_until("no process of alice's or bob's", lambda: not any(
        user_processes(site.accounts[u].uid) for u in (ALICE, BOB)), 30)
    archivist = site.token(ARCHIVIST)
    peer = site.peer

    def at_peer(names: list[str]) -> bool:
        found = peer.api("search", {"query": " OR ".join(names), "limit": 100})["results"]
        return sorted(r["name"] for r in found) == sorted(names)

    def at_site(names: list[str]) -> bool:
        reply = site.service(archivist, "POST", "search",
                             {"query": " OR ".join(names), "limit": 100})
        assert reply.status_code == 200, reply.text
        return sorted(r["name"] for r in reply.json()["results"]) == sorted(names)

    # A standing order of the site's: what is ingested at the site goes to the peer.
    reply = site.service(archivist, "POST", "standing-orders",
                         {"name": "to-karoo", "peer": PEER_NAME, "query": f"zen.{ORDER_NIGHT}.*"})
    assert reply.status_code == 201, reply.text
    onsite = Path(site.archive_stores["onsite"]["path"]) / ORDER_NIGHT
    onsite.mkdir()
    new = [f"zen.{ORDER_NIGHT}.{10000 + k}.xx.HH.uvh5" for k in range(2)]
    for name in new:
        (onsite / name).write_bytes(os.urandom(4096))
        (onsite / name).chmod(0o644)
    onsite.chmod(0o755)
    reply = site.service(archivist, "POST", "ingest",
                         {"store": "onsite", "globs": [f"{ORDER_NIGHT}/*"]})
    assert reply.status_code == 200, reply.text

    # An incoming transfer: the peer sends files of its own to the site.
    night = site.peer_dir / "store" / "2457670"
    night.mkdir()
    sent = [f"zen.2457670.{10000 + k}.xx.HH.uvh5" for k in range(2)]
    for name in sent:
        (night / name).write_bytes(os.urandom(4096))
    assert peer.api("ingest", {"store": "store", "globs": ["2457670/*"]})
    reply = peer.request("POST", "hera-stage/api/transfers", {"peer": "nrao", "names": sent})
    assert reply.status_code == 202, reply.text

    wait_until("the standing order's files at the peer", lambda: at_peer(new), 120,
               detail=lambda: site.service(archivist, "GET", "standing-orders/to-karoo").text)
    wait_until("the peer's files at the site", lambda: at_site(sent), 120,
               detail=lambda: peer.api("jobs"))
    # Received into the site's store, by the service's account.
    received = [p for p in site.incoming.rglob("zen.2457670.*") if p.is_file()]
    assert sorted(p.name for p in received) == sent
    assert {p.stat().st_uid for p in received} == {site.accounts[SITE].uid}
    assert all(sha256(p) == sha256(night / p.name) for p in received)
    assert not any(user_processes(site.accounts[u].uid) for u in (ALICE, BOB))
