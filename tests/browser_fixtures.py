"""Fixtures for the browser tests: a real ``jupyter lab`` on the demo archive, and Debian's
Chromium driven by Playwright for Python.

Without Chromium or Playwright the tests are skipped on a workstation, but they FAIL in CI
(environment variable ``CI`` set): CI must run them. Never ``playwright install``: the browser is
Debian's ``chromium`` package (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.demo import DemoArchive, ingest_demo_archive, make_demo_archive

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-output" / "screenshots"
LABEXTENSION = REPO / "hera_stage_ext" / "labextension"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: Seconds the staging worker sleeps after each chunk, so that a cancel lands mid-job.
CHUNK_DELAY = "0.05"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


def chromium_path() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    raise AssertionError  # not reached


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LabServer:
    url: str
    token: str
    archive: DemoArchive
    process: subprocess.Popen[bytes]
    log_path: Path

    def lab_url(self) -> str:
        return f"{self.url}/lab?token={self.token}&reset"

    def api(self, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/hera-stage/api/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    chromium_path()  # no point starting a lab without a browser
    if not (LABEXTENSION / "package.json").exists():
        pytest.fail("the lab extension is not built: run `jlpm build` first")
    root = tmp_path_factory.mktemp("browser")
    archive = make_demo_archive(root / "demo")
    ingest_demo_archive(archive)
    # Serve this checkout's build of the lab extension, whatever else is installed.
    extensions = root / "labextensions"
    extensions.mkdir()
    (extensions / "hera_stage_ext").symlink_to(LABEXTENSION, target_is_directory=True)
    config = root / "jupyter_lab_config.py"
    config.write_text(archive.jupyter_config() + "\n".join([
        "c.StagingApp.worker_streams = 1",
        "c.StagingApp.worker_idle_exit_seconds = 30.0",
        f"c.LabApp.extra_labextensions_path = [{str(extensions)!r}]",
        f"c.LabApp.user_settings_dir = {str(root / 'settings')!r}",
        f"c.LabApp.workspaces_dir = {str(root / 'workspaces')!r}",
        "c.LabApp.expose_app_in_browser = True",
        "c.LabApp.news_url = None",
        "c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'",
        "",
    ]))
    # No "news?" prompt over the screenshots.
    notification = root / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = _free_port()
    token = "browser-test-token"
    env = dict(os.environ, HERA_STAGE_TEST_CHUNK_DELAY=CHUNK_DELAY,
               JUPYTER_CONFIG_DIR=str(root / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--config={config}", f"--IdentityProvider.token={token}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = root / "lab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=archive.workspace)
    server = LabServer(f"http://127.0.0.1:{port}", token, archive, process, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited ({process.returncode}):\n{server.log_tail()}")
            try:
                server.api("status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{server.log_tail()}")
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def page(lab_server: LabServer) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Python playwright is not installed (pip install playwright)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS,
                                    headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(lab_server.lab_url())
        page.wait_for_selector("#jp-main-dock-panel", state="visible", timeout=60_000)
        page.wait_for_selector(".lm-TabBar-tab[data-id='hera-stage-panel']", timeout=30_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert not [e for e in errors if "hera" in e.lower()], errors


def screenshot(page: Any, name: str, selector: str | None = None) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))
    return path
