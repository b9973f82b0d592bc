"""Fixtures for the browser tests: a real ``jupyter lab`` on the demo archive, and Debian's
Chromium driven by Playwright for Python.

Without Chromium or Playwright the tests are skipped on a workstation, but they FAIL in CI
(environment variable ``CI`` set): CI must run them. Never ``playwright install``: the browser is
Debian's ``chromium`` package (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.demo import (
    LIBRARIAN_AUTHENTICATOR,
    DemoArchive,
    ingest_demo_archive,
    make_demo_archive,
)

from .jupyter_process import JupyterProcess, jupyter_process

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


@dataclass
class LabServer:
    """A running ``jupyter lab`` (``jupyter_process``) and the demo archive it serves."""

    jupyter: JupyterProcess
    archive: DemoArchive

    @property
    def url(self) -> str:  # no trailing slash
        return self.jupyter.url.rstrip("/")

    @property
    def token(self) -> str:
        return self.jupyter.token

    def lab_url(self) -> str:
        return f"{self.url}/lab?token={self.token}&reset"

    def api(self, path: str, body: Any = None) -> Any:
        return self.jupyter.api(path, body)

    def log_tail(self, chars: int = 4000) -> str:
        return self.jupyter.log_tail(chars)


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    with run_lab(tmp_path_factory.mktemp("browser")) as server:
        yield server


@contextmanager
def run_lab(root: Path, files_per_night: int | None = None,
            nights: int | None = None, server_extension: bool = True) -> Iterator[LabServer]:
    """A real ``jupyter lab`` on a demo archive made (and ingested) under ``root``; the
    archive's size is ``make_demo_archive``'s default unless given. Without
    ``server_extension`` the lab runs with ``hera_stage_ext`` disabled on the server (the
    lab extension is still served), as on a server where it is not installed."""
    chromium_path()  # no point starting a lab without a browser
    if not (LABEXTENSION / "package.json").exists():
        pytest.fail("the lab extension is not built: run `jlpm build` first")
    sizes = {k: v for k, v in (("files_per_night", files_per_night), ("nights", nights))
             if v is not None}
    archive = make_demo_archive(root / "demo", **sizes)
    ingest_demo_archive(archive)
    # Serve this checkout's build of the lab extension, whatever else is installed.
    extensions = root / "labextensions"
    extensions.mkdir()
    (extensions / "hera_stage_ext").symlink_to(LABEXTENSION, target_is_directory=True)
    # No "news?" prompt over the screenshots.
    notification = root / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    config = {
        "StagingApp": {"db_url": archive.db_url, "stores": archive.stores,
                       "librarian_authenticators": {LIBRARIAN_AUTHENTICATOR: "demo"},
                       "worker_streams": 1, "worker_idle_exit_seconds": 30.0},
        "LabApp": {"extra_labextensions_path": [str(extensions)],
                   "user_settings_dir": str(root / "settings"),
                   "workspaces_dir": str(root / "workspaces"),
                   "expose_app_in_browser": True, "news_url": None,
                   "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
        "ServerApp": {"jpserver_extensions": {"hera_stage_ext": server_extension}},
    }
    try:
        with jupyter_process(root / "lab", root_dir=archive.workspace, config=config, lab=True,
                             env={"HERA_STAGE_TEST_CHUNK_DELAY": CHUNK_DELAY},
                             startup_timeout=90) as jupyter:
            yield LabServer(jupyter, archive)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def page(lab_server: LabServer) -> Iterator[Any]:
    with open_lab_page(lab_server) as page:
        yield page


@contextmanager
def open_lab_page(lab_server: LabServer, init_script: str | None = None,
                  browser: Any = None) -> Iterator[Any]:
    """Chromium on the lab, once the main area and the panel's tab are up. ``init_script``
    runs in the page before any of the lab's scripts (``page.add_init_script``). A test
    that already holds a browser (the module's ``page``) passes it: Playwright's sync API
    runs one instance per thread."""
    if browser is not None:
        with _lab_page(browser, lab_server, init_script) as page:
            yield page
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Python playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS,
                                    headless=True)
        try:
            with _lab_page(browser, lab_server, init_script) as page:
                yield page
        finally:
            browser.close()


@contextmanager
def _lab_page(browser: Any, lab_server: LabServer, init_script: str | None) -> Iterator[Any]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    if init_script:
        page.add_init_script(init_script)
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
    assert not [e for e in errors if "hera" in e.lower()], errors


def screenshot(page: Any, name: str, selector: str | None = None) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))
    return path


#: A demo archive of 10,503 files (5 nights of 1,400 observations, 1.5 files each) for the
#: panel's many-rows check and benchmarks/panel_frames.py.
BIG_FILES_PER_NIGHT = 1400
BIG_NIGHTS = 5


@pytest.fixture(scope="module")
def big_lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    with run_lab(tmp_path_factory.mktemp("browser-big"), BIG_FILES_PER_NIGHT,
                 BIG_NIGHTS) as server:
        yield server


PANEL = ".jp-HeraStage-panel"


def open_panel(page: Any, ready: bool = True) -> None:
    """Show the side panel (click its tab unless it is the current one); with ``ready``, wait
    until it offers a search (it does not when the server extension is missing or fails)."""
    tab = page.locator(".lm-TabBar-tab[data-id='hera-stage-panel']")
    # Right after a reload the lab may still be restoring its layout: a click that lands just
    # before the restored panel opens closes it again. So: click until the panel shows.
    deadline = time.monotonic() + 30
    while not page.locator(PANEL).is_visible():
        if "lm-mod-current" not in (tab.get_attribute("class") or ""):
            tab.click()
        if time.monotonic() > deadline:
            raise AssertionError("the side panel did not open")
        page.wait_for_timeout(250)
    if ready:
        page.wait_for_selector(f"{PANEL} .jp-HeraStage-query, {PANEL} .jp-HeraStage-json",
                               state="visible")


def panel_search(page: Any, text: str) -> None:
    page.fill(f"{PANEL} .jp-HeraStage-query", text)
    page.press(f"{PANEL} .jp-HeraStage-query", "Enter")


#: How many rows are loaded, of how many, from the table's summary ("1,200 of 10,503 files
#: loaded"); null before a search.
_LOADED_JS = """() => {
  const s = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-summary');
  const m = s && s.textContent.replace(/,/g, '').match(/(\\d+) of (\\d+)/);
  return m ? [Number(m[1]), Number(m[2]), s.textContent.includes('loading')] : null;
}"""


def loaded_rows(page: Any) -> tuple[int, int, bool] | None:
    """(rows loaded, total, loading) from the results summary, or None."""
    value = page.evaluate(_LOADED_JS)
    return None if value is None else (int(value[0]), int(value[1]), bool(value[2]))


def scroll_results_to_end(page: Any, step_px: int = 2600, pause_ms: int = 30,
                          timeout_s: float = 120.0) -> int:
    """Scroll the results table with the mouse wheel, as a person would, until every row is
    loaded and the last one is rendered (the table fetches pages from the server's cursor as
    the window nears the end). Returns the number of wheel steps."""
    body = page.locator(f"{PANEL} .jp-HeraStage-gridBody")
    box = body.bounding_box()
    assert box, "the results table is not shown"
    # The grid may be wider than a narrow side panel: point at a part of it that shows.
    panel = page.locator(PANEL).bounding_box()
    right = min(box["x"] + box["width"], panel["x"] + panel["width"]) if panel else box["x"] + 60
    page.mouse.move((box["x"] + right) / 2, box["y"] + box["height"] / 2)
    deadline = time.monotonic() + timeout_s
    steps = 0
    while time.monotonic() < deadline:
        state = loaded_rows(page)
        if state and state[0] == state[1] and not state[2]:
            at_end = page.evaluate(
                "() => { const b = document.querySelector('.jp-HeraStage-panel"
                " .jp-HeraStage-gridBody');"
                " return b.scrollTop + b.clientHeight >= b.scrollHeight - 2; }")
            if at_end:
                break
        page.mouse.wheel(0, step_px)
        steps += 1
        page.wait_for_timeout(pause_ms)
    else:
        raise AssertionError(f"the table did not reach its end in {timeout_s} s: "
                             f"{loaded_rows(page)}")
    return steps
