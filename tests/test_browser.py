"""The JupyterLab side panel in a real browser (Debian's Chromium via Playwright) against a real
``jupyter lab`` on the demo archive. The tests run in order and share one page.

Screenshots land in test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .browser_fixtures import (  # noqa: F401
    PANEL,
    LabServer,
    lab_server,
    open_panel,
    page,
    panel_search,
    screenshot,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


# pytest-jupyter's autouse fixtures close "their" event loop after each test, but the sync
# Playwright API keeps a loop running in this thread for the whole module: opt out here.
@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    return None


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    return None

ROW = f"{PANEL} .jp-HeraStage-gridRow"
NIGHT = "2457644"


def expected_names(server: LabServer, night: str = NIGHT) -> list[str]:
    """The demo files of one night, from the store on disk (independent of the server)."""
    onsite = Path(server.archive.stores["onsite"]["path"]) / night
    return sorted(p.name for p in onsite.iterdir() if p.name.startswith(f"zen.{night}."))


def wait_loaded(page: Any) -> None:
    page.wait_for_function(
        "() => { const s = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-summary');"
        " return s && !s.textContent.includes('loading'); }")


def job_card(page: Any, job_id: int) -> Any:
    return page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}']")


def newest_job_id(page: Any) -> int:
    page.wait_for_selector(f"{PANEL} .jp-HeraStage-job")
    return int(page.locator(f"{PANEL} .jp-HeraStage-job").first.get_attribute("data-job-id"))


def test_panel_opens_with_archive_icon(page: Any, lab_server: LabServer) -> None:
    tab = page.locator(".lm-TabBar-tab[data-id='hera-stage-panel']")
    assert tab.locator("svg").count() == 1
    open_panel(page)
    # Widen the left area (as a person would) so the table's columns fit the screenshots.
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    if box:
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 200)
        page.mouse.down()
        page.mouse.move(box["x"] + 380, box["y"] + 200, steps=5)
        page.mouse.up()
    header = page.locator(f"{PANEL} .jp-HeraStage-header")
    header.get_by_text(re.compile(r"\d[\d,]* files")).wait_for()
    assert page.locator(PANEL).get_attribute("aria-label") == "HERA archive"
    # The destination defaults to the file browser's folder (the root).
    assert page.input_value(f"{PANEL} #jp-HeraStage-destination") == "."


def test_search_shows_the_right_rows(page: Any, lab_server: LabServer) -> None:
    names = expected_names(lab_server)
    open_panel(page)
    panel_search(page, f"zen.{NIGHT}.*")
    summary = page.locator(f"{PANEL} .jp-HeraStage-summary")
    summary.get_by_text(f"of {len(names)} files loaded").wait_for()
    first = page.locator(f"{ROW} [role=gridcell]:nth-child(2)")
    shown = [first.nth(i).inner_text() for i in range(5)]
    assert shown == names[:5]
    # Sizes in human units, instances on both stores for this night.
    row = page.locator(ROW).first.inner_text()
    assert re.search(r"\d+(\.\d+)? KiB", row), row
    assert "onsite, offsite" in row or "offsite, onsite" in row

    # Sort by size on the server: descending after two clicks.
    header = page.locator(f"{PANEL} [role=columnheader] button", has_text="Size")
    header.click()
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=ascending]")
    header.click()
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=descending]")
    wait_loaded(page)
    sizes = [p.stat().st_size for p in (Path(lab_server.archive.stores["onsite"]["path"]) / NIGHT)
             .iterdir() if p.name.startswith("zen.")]
    biggest = max(sizes)
    first_name = page.locator(f"{ROW} [role=gridcell]:nth-child(2)").first.inner_text()
    first_path = Path(lab_server.archive.stores["onsite"]["path"]) / NIGHT / first_name
    assert first_path.stat().st_size == biggest

    # Back to name order; a file's detail on click.
    header.click()
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=none] >> text=Size")
    wait_loaded(page)
    page.locator(f"{ROW} >> text={names[0]}").wait_for()
    page.locator(ROW).first.click()
    detail = page.locator(f"{PANEL} .jp-HeraStage-detail")
    detail.get_by_text("Instances (2)").wait_for()
    assert "md5" in detail.inner_text()
    screenshot(page, "01-search-and-detail", PANEL)
    detail.get_by_label("Close detail").click()


def test_stage_three_files_with_preview(page: Any, lab_server: LabServer) -> None:
    names = expected_names(lab_server)[:3]
    open_panel(page)
    for i in range(3):
        page.locator(ROW).nth(i).locator("input[type=checkbox]").check()
    page.fill(f"{PANEL} #jp-HeraStage-destination", "staged")
    page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
    preview = page.locator(f"{PANEL} .jp-HeraStage-preview")
    preview.wait_for()
    assert preview.locator("[data-field=files]").inner_text() == "3 files"
    assert preview.locator("[data-field=missing]").inner_text() == "none"
    assert re.search(r"\d", preview.locator("[data-field=free]").inner_text())
    screenshot(page, "02-dry-run-preview", PANEL)
    preview.locator(".jp-HeraStage-confirm").click()

    job_id = newest_job_id(page)
    card = job_card(page, job_id)
    page.wait_for_selector(
        f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}'][data-state=succeeded]",
        timeout=60_000)
    card.locator("[role=progressbar][aria-valuenow='100']").wait_for()
    assert "3/3 files" in card.inner_text()
    # A notification says so.
    page.locator(".jp-toast-container, .Toastify").get_by_text(
        re.compile(f"job {job_id} finished")).first.wait_for()
    screenshot(page, "03-job-succeeded", PANEL)

    # The staged files appear in the file browser.
    card.locator(".jp-HeraStage-open").click()
    listing = page.locator(".jp-FileBrowser .jp-DirListing-content")
    # The engine keeps the store's layout (night folders) under the destination.
    night = listing.get_by_text(NIGHT, exact=True)
    night.wait_for()
    night.dblclick()
    for name in names:
        listing.get_by_text(name, exact=True).wait_for()
    screenshot(page, "04-file-browser", None)
    staged = lab_server.archive.workspace / "staged"
    assert sorted(p.name for p in staged.rglob("zen.*")) == names


def test_cancel_a_second_job(page: Any, lab_server: LabServer) -> None:
    open_panel(page)
    panel_search(page, "zen.*")
    page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(re.compile(r"of [\d,]+ files")).wait_for()
    page.fill(f"{PANEL} #jp-HeraStage-destination", "big")
    page.locator(f"{PANEL} .jp-HeraStage-stageAll").click()
    preview = page.locator(f"{PANEL} .jp-HeraStage-preview")
    preview.wait_for()
    total = int(preview.locator("[data-field=files]").inner_text().split()[0].replace(",", ""))
    assert total > 100
    previous = newest_job_id(page)
    preview.locator(".jp-HeraStage-confirm").click()
    page.wait_for_function(
        "prev => { const j = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-job');"
        " return j && Number(j.dataset.jobId) > prev; }", arg=previous)
    job_id = newest_job_id(page)
    card = job_card(page, job_id)
    # Wait until it has copied something, then cancel mid-job.
    page.wait_for_function(
        "id => { const b = document.querySelector(`.jp-HeraStage-job[data-job-id='${id}']"
        " [role=progressbar]`); return b && Number(b.getAttribute('aria-valuenow')) > 0; }",
        arg=job_id, timeout=60_000)
    screenshot(page, "05-job-running", PANEL)
    card.locator(".jp-HeraStage-cancel").click()
    page.wait_for_selector(
        f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}'][data-state=cancelled]",
        timeout=30_000)
    job = lab_server.api(f"jobs/{job_id}")
    assert job["state"] == "cancelled"
    assert 0 < job["files_done"] < job["files_total"]
    # The log tails in the panel.
    card.locator(".jp-HeraStage-logToggle").click()
    log = card.locator(".jp-HeraStage-log pre")
    page.wait_for_function("el => el.textContent && !el.textContent.startsWith('The log is empty')",
                           arg=log.element_handle())
    screenshot(page, "06-job-cancelled", PANEL)


def test_invalid_json_search_is_explained(page: Any, lab_server: LabServer) -> None:
    open_panel(page)
    page.locator(f"{PANEL} .jp-HeraStage-toggleJson").click()
    editor = page.locator(f"{PANEL} .jp-HeraStage-json")
    validity = page.locator(f"{PANEL} .jp-HeraStage-validity")
    editor.fill('{"name-matches": ')
    validity.get_by_text("Not valid JSON").wait_for()
    editor.fill('{"nme-matches": "zen.%"}')
    page.wait_for_selector(f"{PANEL} .jp-HeraStage-validity.jp-mod-error:not(:empty)")
    server_message = validity.inner_text()
    assert "nme-matches" in server_message, server_message
    page.locator(f"{PANEL} .jp-HeraStage-searchButton").click()
    alert = page.locator(f"{PANEL} .jp-HeraStage-searchBox [role=alert]")
    alert.wait_for()
    assert "nme-matches" in alert.inner_text()
    screenshot(page, "07-invalid-json", PANEL)

    # A valid JSON search runs.
    editor.fill('{"name-matches": "zen.2457645.%"}')
    validity.get_by_text("valid search").wait_for()
    page.locator(f"{PANEL} .jp-HeraStage-searchButton").click()
    page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(
        f"of {len(expected_names(lab_server, '2457645'))} files loaded").wait_for()


def test_dark_theme_screenshot(page: Any, lab_server: LabServer) -> None:
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme',"
                  " {theme: 'JupyterLab Dark'})")
    page.wait_for_selector("body[data-jp-theme-light='false']", state="attached",
                           timeout=20_000)
    page.wait_for_timeout(500)  # the theme's CSS applies
    open_panel(page)
    path = screenshot(page, "08-dark-theme", PANEL)
    assert path.stat().st_size > 0
