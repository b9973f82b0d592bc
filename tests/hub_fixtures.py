"""A real JupyterHub site for the tests of the site service (issue 16).

One module-scoped ``hub_site``: a throwaway PostgreSQL cluster that asks every role for its
password; throwaway Linux users with real homes (``hs_alice``, ``hs_bob`` and the service's own
account ``hs_site``, removed at the end); a peer site (``karoo``: a plain single-user
``jupyter server`` with the extension); and a real JupyterHub, run as root with its
``configurable-http-proxy`` (from the npm registry, in ``.hub/``) and ``LocalProcessSpawner``,
whose ``jupyterhub_config.py`` holds the block ``docs/deploying.md`` tells a site to paste, as it
is there (only the values of its settings at the top are this test's), and whose users' servers
read the server configuration from the same page. The hub starts the ``hera-stage`` service as
``hs_site``; the users' servers are started through the hub's REST API.

The users' processes cannot run the interpreter of this run when it lives under root's 0700 home
(pyenv), nor read a checkout in a root-only folder, so they run a ``runtime``: a virtual
environment of the system's Python of the same version, holding hard links to this run's
installed packages, and a copy of this checkout's package first on their ``PYTHONPATH``.

Skipped when not root, or when JupyterHub, the proxy or PostgreSQL are missing; in CI (``CI``
set; it runs as root and ``scripts/setup.sh`` installs them all) those are failures instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

import hera_stage_ext
from hera_stage_ext.demo import make_demo_archive

from .jupyter_process import free_port
from .pgcluster import PostgresCluster, find_pg_bin

REPO = Path(__file__).resolve().parents[1]
DEPLOYING = REPO / "docs" / "deploying.md"
PROXY = REPO / ".hub" / "node_modules" / ".bin" / "configurable-http-proxy"
#: Where the hub's log is kept after the run (the site's own folder is removed).
LOGS = REPO / "test-output" / "hub-site"

ALICE, BOB, SITE = "hs_alice", "hs_bob", "hs_site"
#: A hub user without a Linux account or a server: the site's archivist (ingest, transfers).
ARCHIVIST = "hs_archivist"
#: The site's name towards its peers, and its peer's.
SITE_NAME, PEER_NAME = "nrao", "karoo"
#: The hera-stage scopes (docs/deploying.md defines them on the hub).
SCOPES = tuple(f"custom:hera-stage:{s}" for s in ("read", "stage", "transfer", "ingest", "admin"))
SERVICE_ACCESS = "access:services!service=hera-stage"
#: The service's base URL path through the proxy.
SERVICE_PREFIX = "/services/hera-stage/"


def unavailable(reason: str) -> None:
    """Skip on a workstation; fail in CI, which must run these tests."""
    if os.environ.get("CI"):
        pytest.fail(f"the JupyterHub tests must run in CI: {reason}")
    pytest.skip(reason)


def system_python() -> Path:
    """The system's interpreter of this run's Python version (every user may run it)."""
    return Path(f"/usr/bin/python3.{sys.version_info.minor}")


def check_requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates Linux users and runs JupyterHub, which spawns as them")
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        unavailable("jupyterhub is not installed (pip install -e '.[test]')")
    if not os.access(PROXY, os.X_OK):
        unavailable("configurable-http-proxy is not installed in .hub/ (bash scripts/setup.sh)")
    if find_pg_bin() is None:
        unavailable("PostgreSQL server binaries not installed (apt-get install postgresql)")
    if not os.access(system_python(), os.X_OK):
        unavailable(f"{system_python()} is missing: the users' servers need a Python of this "
                    "run's version that every user may run")


# ----- the configuration a site writes, as docs/deploying.md gives it ---------------------------
def doc_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- tested: marker -->`` in docs/deploying.md."""
    text = DEPLOYING.read_text()
    start = text.index(f"<!-- tested: {marker} -->")
    fence = re.compile(r"^```\w*\n(.*?)^```", re.S | re.M).search(text, start)
    assert fence, f"no code block after the {marker} marker in {DEPLOYING}"
    return fence.group(1)


def with_values(block: str, values: dict[str, Any]) -> str:
    """``block`` with each ``NAME = ...`` line (top level, one each) set to ``values[NAME]``;
    ``c.X.y = ...`` names work too."""
    for name, value in values.items():
        block, count = re.subn(rf"^{re.escape(name)} = .*$", f"{name} = {value!r}", block,
                               flags=re.M)
        assert count == 1, f"{name} is set {count} times in the documented block"
    return block


# ----- accounts ---------------------------------------------------------------------------------
@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path  # mode 0700, the user's own

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}


def make_account(name: str, homes: Path, created: list[str]) -> Account:
    """A Linux user ``name`` whose home is ``homes/name`` (made, 0700)."""
    home = homes / name
    try:
        pwd.getpwnam(name)
        subprocess.run(["usermod", "--home", str(home), name], check=True, capture_output=True)
    except KeyError:
        subprocess.run(["useradd", "--home-dir", str(home), "--no-create-home", "--user-group",
                        "--shell", "/bin/bash", name], check=True, capture_output=True)
        created.append(name)
    entry = pwd.getpwnam(name)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return Account(name, entry.pw_uid, entry.pw_gid, home)


def remove_accounts(names: list[str], created: list[str]) -> None:
    """Stop every process of ``names``; remove those of them this run ``created`` (after their
    processes: userdel refuses a user with processes)."""
    for name in names:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
    for name in created:
        for _ in range(50):
            if subprocess.run(["userdel", name], check=False,
                              capture_output=True).returncode != 8:  # 8: still logged in
                break
            time.sleep(0.1)


def as_user(account: Account) -> list[str]:
    """A command prefix running a program as ``account`` (its uid and groups, no capability)."""
    return ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", "--"]


def user_processes(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def process_cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


# ----- a Python every user can run --------------------------------------------------------------
def _link_tree(source: Path, target: Path) -> None:
    """``target`` a copy of ``source`` made of hard links (a real copy across file systems)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["cp", "-al", f"{source}/.", str(target)], capture_output=True)
    if done.returncode != 0:
        subprocess.run(["cp", "-a", f"{source}/.", str(target)], check=True)


def make_runtime(path: Path) -> Path:
    """A virtual environment of the system's Python holding this run's installed packages.
    Its files are hard links to this run's: never write into one (make a new file instead)."""
    subprocess.run([str(system_python()), "-m", "venv", "--without-pip", str(path)], check=True)
    venv = Path(sys.prefix)
    lib = f"lib/python3.{sys.version_info.minor}/site-packages"
    _link_tree(venv / lib, path / lib)
    for folder in ("share", "etc"):
        if (venv / folder).is_dir():
            _link_tree(venv / folder, path / folder)
    # Console scripts (jupyterhub-singleuser, hera-stage, jupyter ...), on the new interpreter.
    for script in (venv / "bin").iterdir():
        target = path / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        with contextlib.suppress(UnicodeDecodeError, OSError):
            first, _, rest = script.read_text().partition("\n")
            if first.startswith("#!") and "python" in first:
                target.write_text(f"#!{path / 'bin' / 'python'}\n{rest}")
                target.chmod(0o755)
    for root, dirs, _ in os.walk(path):
        os.chmod(root, 0o755)
    return path


def readable_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


# ----- the site ---------------------------------------------------------------------------------
@dataclass
class HubSite:
    base: Path
    url: str  # the proxy (the hub's public URL), no trailing slash
    hub_dir: Path  # the hub's own files (config, database, cookie secret), root's, 0700
    runtime: Path
    accounts: dict[str, Account]
    driver_token: str  # a hub service of the tests: manages users, servers and tokens
    peer: Any  # the peer site's JupyterProcess
    peer_dir: Path
    archive_stores: dict[str, dict[str, Any]]
    incoming: Path  # the site's receive store
    db_port: int  # PostgreSQL's loopback port (it asks every role for its password)
    #: Every secret of the site: none may be in a user's reach.
    secrets: dict[str, str]
    passwords: dict[str, str]  # the hub's login of each test user
    hub_process: subprocess.Popen[bytes]
    _tokens: dict[str, str] = field(default_factory=dict)

    # -- the hub's API --
    def hub_api(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,),
                ) -> Any:
        reply = requests.request(method, f"{self.url}/hub/api/{path}", json=body, timeout=30,
                                 headers={"Authorization": f"token {self.driver_token}"})
        assert reply.status_code in ok, (method, path, reply.status_code, reply.text)
        return reply.json() if reply.content else None

    def token(self, user: str) -> str:
        """A hub API token of ``user`` with every hera-stage scope the user holds (as a
        user makes one on the hub's token page): all for the archivist, read and stage for
        the others (the documented roles)."""
        if user not in self._tokens:
            held = SCOPES if user == ARCHIVIST else SCOPES[:2]
            self._tokens[user] = self.hub_api(
                "POST", f"users/{user}/tokens",
                {"scopes": [SERVICE_ACCESS, f"access:servers!user={user}", *held],
                 "note": "hub_fixtures"}, ok=(200, 201))["token"]
        return self._tokens[user]

    def spawn(self, user: str, timeout: float = 120) -> None:
        """Start ``user``'s server through the hub, and wait until the hub calls it ready."""
        self.hub_api("POST", f"users/{user}/server", ok=(201, 202, 400))
        wait_until(f"{user}'s server", lambda: (self.hub_api("GET", f"users/{user}")
                                                .get("servers", {}).get("", {}).get("ready")),
                   timeout, detail=self.log_tail)

    def stop(self, user: str, timeout: float = 60) -> None:
        self.hub_api("DELETE", f"users/{user}/server", ok=(202, 204, 400))
        wait_until(f"{user}'s server to stop",
                   lambda: not self.hub_api("GET", f"users/{user}").get("servers"), timeout)

    # -- requests, as a user with a token --
    def request(self, token: str, method: str, path: str, body: Any = None,
                timeout: float = 30) -> requests.Response:
        """``path`` under the proxy (``user/hs_alice/...``, ``services/hera-stage/...``)."""
        return requests.request(method, f"{self.url}/{path}", json=body, timeout=timeout,
                                headers={"Authorization": f"token {token}"})

    def service(self, token: str, method: str, path: str, body: Any = None) -> requests.Response:
        """The service's REST API: ``path`` under ``hera-stage/api/``."""
        return self.request(token, method, f"services/hera-stage/hera-stage/api/{path}", body)

    def server(self, user: str, method: str, path: str, body: Any = None,
               token: str | None = None) -> requests.Response:
        """``user``'s own server's hera-stage API, through the proxy (by default with a token
        of that user)."""
        return self.request(token or self.token(user), method,
                            f"user/{user}/hera-stage/api/{path}", body)

    # -- processes --
    def server_pid(self, user: str) -> int:
        """The pid of ``user``'s hub-spawned server."""
        for pid in user_processes(self.accounts[user].uid):
            if any("singleuser" in part for part in process_cmdline(pid)):
                return pid
        raise AssertionError(f"{user} has no server running")

    def run_as(self, user: str, code: str, *, stdin: str = "", env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Python ``code`` run by ``user`` on the users' runtime, with their home and their
        server's ``PYTHONPATH``."""
        account = self.accounts[user]
        base_env = {"PATH": f"{self.runtime / 'bin'}:/usr/bin:/bin",
                    "PYTHONPATH": os.environ["PYTHONPATH"], **account.env()}
        return subprocess.run([*as_user(account), str(self.runtime / "bin" / "python"), "-c",
                               code], input=stdin, env={**base_env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout,
                              cwd=account.home, check=False)

    def log_tail(self, chars: int = 6000) -> str:
        with contextlib.suppress(OSError):
            return (self.hub_dir / "hub.log").read_text(errors="replace")[-chars:]
        return ""


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, step: float = 0.25,
               detail: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}"
                                 + (f"\n{detail()}" if detail else ""))
        time.sleep(step)


def _hub_preamble(*, proxy_port: int, hub_port: int, proxy_api_port: int, hub_dir: Path,
                  driver_token: str, passwords: dict[str, str]) -> str:
    """What a site has before the documented block (its own hub, proxy and login); here: a
    password per test user, loopback ports, a service for the test driver."""
    return f"""
# ---- the test site's own hub settings (tests/hub_fixtures.py) ----
from jupyterhub.auth import Authenticator

class TestPasswords(Authenticator):
    passwords = {passwords!r}

    async def authenticate(self, handler, data):
        name = data.get("username", "")
        if name in self.passwords and data.get("password") == self.passwords[name]:
            return name
        return None

c.JupyterHub.authenticator_class = TestPasswords
c.Authenticator.allowed_users = set({sorted(passwords)!r})
c.JupyterHub.bind_url = "http://127.0.0.1:{proxy_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{hub_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(hub_dir / 'jupyterhub_cookie_secret')!r}
c.JupyterHub.pid_file = {str(hub_dir / 'jupyterhub.pid')!r}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.log_level = "INFO"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.default_url = "/lab"
c.JupyterHub.services = [{{"name": "test-driver", "api_token": {driver_token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "test-driver", "services": ["test-driver"],
    "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users",
               "access:servers", {SERVICE_ACCESS!r}, *{list(SCOPES)!r}],
}}]
"""


def _site_config(values: dict[str, Any]) -> str:
    return "".join(f"c.StagingApp.{k} = {v!r}\n" for k, v in values.items())


@contextlib.contextmanager
def run_hub_site() -> Iterator[HubSite]:
    """The whole site (see the module's docstring), torn down again."""
    from hera_stage_ext.transfer.peers import hash_secret

    from .jupyter_process import jupyter_process

    check_requirements()
    created: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="hs-hub-"))
    os.chmod(base, 0o755)
    cluster: PostgresCluster | None = None
    hub: subprocess.Popen[bytes] | None = None
    proxy_api_port = free_port()
    with contextlib.ExitStack() as stack:
        try:
            # Code and Python the users can run.
            code = base / "code"
            shutil.copytree(Path(hera_stage_ext.__file__).parent, code / "hera_stage_ext",
                            ignore=shutil.ignore_patterns("__pycache__"))
            readable_tree(code)
            runtime = make_runtime(base / "runtime")
            patch = stack.enter_context(pytest.MonkeyPatch.context())
            patch.setenv("PYTHONPATH", os.pathsep.join(
                [str(code), *filter(None, [os.environ.get("PYTHONPATH")])]))

            homes = base / "home"
            homes.mkdir()
            os.chmod(homes, 0o755)
            accounts = {name: make_account(name, homes, created) for name in (ALICE, BOB, SITE)}
            site = accounts[SITE]

            # The catalogue: PostgreSQL, a role with a password only the service holds.
            cluster = PostgresCluster(password_auth=True).start()
            db_password = secrets.token_urlsafe(24)
            db_name = cluster.create_database().rsplit("/", 1)[1]
            import psycopg

            with psycopg.connect(cluster.superuser_conninfo(), autocommit=True) as conn:
                conn.execute(f"CREATE ROLE hera_site LOGIN PASSWORD '{db_password}'")
                conn.execute(f'ALTER DATABASE "{db_name}" OWNER TO hera_site')
            db_url = f"postgresql+psycopg://hera_site:{db_password}@127.0.0.1:{cluster.port}/" \
                     f"{db_name}"

            # The archive's stores (every user reads them), the receive store (the service's).
            archive = make_demo_archive(base / "archive", files_per_night=3, nights=2)
            readable_tree(archive.root / "stores")
            incoming = base / "archive" / "stores" / "incoming"
            incoming.mkdir()
            os.chown(incoming, site.uid, site.gid)
            stores = {**archive.stores, "incoming": {"path": str(incoming), "kind": "online"}}

            # The peer site, a plain single-user server (root's: its files are its own).
            proxy_port, hub_port = free_port(), free_port()
            service_port, peer_port = free_port(), free_port()
            url = f"http://127.0.0.1:{proxy_port}"
            nrao_secret, karoo_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            peer_dir = base / "peer"
            peer_store = peer_dir / "store"
            peer_store.mkdir(parents=True)
            os.chmod(peer_dir, 0o700)
            peer = stack.enter_context(jupyter_process(peer_dir / "server", root_dir=peer_dir,
                                                       port=peer_port, config={"StagingApp": {
                "db_url": f"sqlite:///{peer_dir / 'catalogue.sqlite'}", "site_name": PEER_NAME,
                "stores": {"store": {"path": str(peer_store)}}, "receive_store": "store",
                "peers": {SITE_NAME: {"url": f"{url}{SERVICE_PREFIX}", "secret": karoo_secret}},
                "peer_secrets": {SITE_NAME: hash_secret(nrao_secret)},
                "worker_idle_exit_seconds": 5.0, "service_log_file": "",
                "job_log_dir": str(peer_dir / "logs")}}))

            # The service's settings: its account's alone.
            site_dir = site.home / "etc"
            site_dir.mkdir()
            site_config = site_dir / "site_config.py"
            site_config.write_text(_site_config({
                "site_name": SITE_NAME, "db_url": db_url, "stores": stores,
                "receive_store": "incoming",
                "peers": {PEER_NAME: {"url": f"http://127.0.0.1:{peer_port}/",
                                      "secret": nrao_secret}},
                "peer_secrets": {PEER_NAME: hash_secret(karoo_secret)},
                "standing_order_interval_seconds": 2.0, "standing_order_check_seconds": 0.5,
                "worker_idle_exit_seconds": 5.0,
            }))
            for p in (site_dir, site_config):
                os.chown(p, site.uid, site.gid)
            os.chmod(site_dir, 0o700)
            os.chmod(site_config, 0o600)

            # The users' servers: the documented server configuration, in the image's
            # (the runtime's) system config directory.
            users_config = runtime / "etc" / "jupyter" / "jupyter_server_config.py"
            users_config.unlink(missing_ok=True)  # never write through a hard link
            users_config.write_text(with_values(doc_block("server-config"), {
                "c.StagingApp.site_url": f"{url}{SERVICE_PREFIX}"}))
            users_config.chmod(0o644)

            # The hub: its own settings, then the documented block.
            hub_dir = base / "hub"
            hub_dir.mkdir(mode=0o700)
            driver_token = secrets.token_hex(32)
            passwords = {name: secrets.token_urlsafe(12) for name in (ALICE, BOB, ARCHIVIST)}
            config = _hub_preamble(
                proxy_port=proxy_port, hub_port=hub_port, proxy_api_port=proxy_api_port,
                hub_dir=hub_dir, driver_token=driver_token, passwords=passwords,
            ) + with_values(doc_block("hub-config"), {
                "HERA_STAGE_ACCOUNT": SITE, "HERA_STAGE_CONFIG": str(site_config),
                "HERA_STAGE_PORT": service_port, "HERA_STAGE_ARCHIVISTS": [ARCHIVIST]})
            (hub_dir / "jupyterhub_config.py").write_text(config)
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("JUPYTERHUB_", "JUPYTER_", "HERA_STAGE_", "JPY_"))}
            env["PATH"] = f"{runtime / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
            with open(hub_dir / "hub.log", "wb") as log:
                hub = subprocess.Popen(
                    [sys.executable, "-m", "jupyterhub", "-f", str(hub_dir /
                                                                   "jupyterhub_config.py")],
                    cwd=hub_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            hub_site = HubSite(
                base=base, url=url, hub_dir=hub_dir, runtime=runtime, accounts=accounts,
                driver_token=driver_token, peer=peer, peer_dir=peer_dir,
                archive_stores=stores, incoming=incoming, db_port=cluster.port,
                secrets={"the database password": db_password,
                         "the site's secret towards its peer": nrao_secret,
                         "the peer's secret towards the site": karoo_secret},
                passwords=passwords, hub_process=hub)

            def hub_up() -> bool:
                if hub.poll() is not None:
                    raise AssertionError(f"the hub exited:\n{hub_site.log_tail()}")
                with contextlib.suppress(requests.RequestException):
                    return requests.get(f"{url}/hub/api/", timeout=2).ok
                return False

            wait_until("the hub", hub_up, 90, detail=hub_site.log_tail)

            def service_up() -> bool:
                with contextlib.suppress(requests.RequestException):
                    reply = hub_site.service(hub_site.token(ARCHIVIST), "GET", "status")
                    return reply.status_code < 500
                return False

            wait_until("the hera-stage service", service_up, 90, detail=hub_site.log_tail)
            # The service's own hub token is a site secret too.
            service_pids = [p for p in user_processes(site.uid)
                            if any(part == "site" for part in process_cmdline(p))]
            for pid in service_pids:
                with contextlib.suppress(OSError):
                    token = process_env(pid).get("JUPYTERHUB_API_TOKEN")
                    if token:
                        hub_site.secrets["the service's hub token"] = token
            yield hub_site
        finally:
            if hub is not None:
                if hub.poll() is None:
                    hub.terminate()  # the hub stops the proxy, the servers and the service
                    try:
                        hub.wait(60)
                    except subprocess.TimeoutExpired:
                        os.killpg(hub.pid, 9)
                        hub.wait()
                # A hub that died starting up (a service that would not start) leaves its
                # proxy running.
                for pid in user_processes(0):
                    command = process_cmdline(pid)
                    if str(PROXY) in command and str(proxy_api_port) in command:
                        with contextlib.suppress(OSError):
                            os.kill(pid, 9)
            stack.close()
            # The hub's log has the service's and the users' servers' output too.
            with contextlib.suppress(OSError):
                LOGS.mkdir(parents=True, exist_ok=True)
                shutil.copy(base / "hub" / "hub.log", LOGS / "hub.log")
            remove_accounts([ALICE, BOB, SITE], created)
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(base, ignore_errors=True)


def login(page: Any, site: HubSite, user: str) -> None:
    """Log ``user`` in on the hub's login page (Playwright ``page``)."""
    page.goto(f"{site.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", site.passwords[user])
    page.click("#login_submit")


def stage_json(reply: requests.Response) -> dict[str, Any]:
    assert reply.status_code == 202, reply.text
    return reply.json()


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)
