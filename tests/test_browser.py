"""The JupyterLab side panel in a real browser (Debian's Chromium via Playwright) against a real
``jupyter lab`` on the demo archive. The tests run in order and share one page.

Screenshots land in test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .browser_fixtures import (  # noqa: F401
    PANEL,
    LabServer,
    lab_server,
    open_lab_page,
    open_panel,
    page,
    panel_search,
    run_lab,
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
    open_panel(page)  # at the left area's default width, for the whole module
    header = page.locator(f"{PANEL} .jp-HeraStage-header")
    header.get_by_text(re.compile(r"\d[\d,]* files")).wait_for()
    assert page.locator(PANEL).get_attribute("aria-label") == "HERA archive"
    # The destination defaults to the file browser's folder (the root).
    assert page.input_value(f"{PANEL} #jp-HeraStage-destination") == "."


def show_file_browser(page: Any) -> Any:
    """Click the file browser's tab; returns its listing."""
    tab = page.locator(".lm-TabBar-tab[data-id='filebrowser']")
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    return page.locator("#filebrowser .jp-DirListing-content")


def test_destination_follows_and_is_picked_from_the_file_browser(
        page: Any, lab_server: LabServer) -> None:
    (lab_server.archive.workspace / "picked" / "inner").mkdir(parents=True)
    destination = f"{PANEL} #jp-HeraStage-destination"
    listing = show_file_browser(page)
    page.locator("#filebrowser [data-command='filebrowser:refresh']").click()
    listing.get_by_text("picked", exact=True).dblclick()
    page.locator("#filebrowser .jp-BreadCrumbs").get_by_text("picked").wait_for()
    open_panel(page)
    # It follows the file browser while the user has not typed a destination of their own.
    assert page.input_value(destination) == "picked"
    show_file_browser(page)
    page.locator("#filebrowser .jp-BreadCrumbs-home").click()
    page.locator("#filebrowser .jp-DirListing-content").get_by_text(
        "picked", exact=True).wait_for()
    open_panel(page)
    assert page.input_value(destination) == "."

    # Or it is chosen in a folder dialog.
    page.get_by_role("button", name="Choose the destination folder").click()
    dialog = page.locator(".jp-Dialog .jp-Open-Dialog")
    dialog.get_by_text("picked", exact=True).dblclick()
    dialog.get_by_text("inner", exact=True).click()
    screenshot(page, "09-folder-dialog")
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click()
    page.locator(".jp-Dialog").wait_for(state="detached")
    assert page.input_value(destination) == "picked/inner"


def test_search_shows_the_right_rows(page: Any, lab_server: LabServer) -> None:
    names = expected_names(lab_server)
    open_panel(page)
    panel_search(page, f"zen.{NIGHT}.*")
    summary = page.locator(f"{PANEL} .jp-HeraStage-summary")
    summary.get_by_text(f"of {len(names)} files loaded").wait_for()
    first = page.locator(f"{ROW} [role=gridcell]:nth-child(2)")
    shown = [first.nth(i).inner_text() for i in range(5)]
    assert shown == names[:5]
    # Sizes in human units (the side panel shows name and size; where a file is, in its
    # detail below, and in the main area's table).
    row = page.locator(ROW).first.inner_text()
    assert re.search(r"\d+(\.\d+)? KiB", row), row

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
    # Playwright scrolled the table sideways to click the Size header: back to the names.
    page.locator(f"{PANEL} .jp-HeraStage-gridBody").evaluate("b => { b.scrollLeft = 0; }")
    screenshot(page, "01-search-and-detail", PANEL)
    detail.get_by_label("Close detail").click()
    assert_fits_the_panel(page)


def assert_fits_the_panel(page: Any) -> None:
    """At the left area's default width nothing makes the whole panel scroll sideways; a
    table wider than the panel scrolls inside itself, its header following the rows."""
    widths = page.evaluate(
        "() => { const p = document.querySelector('.jp-HeraStage-panel');"
        " const b = p.querySelector('.jp-HeraStage-gridBody');"
        " return [p.scrollWidth, p.clientWidth, b.scrollWidth, b.clientWidth]; }")
    panel_scroll, panel_width, table_scroll, table_width = widths
    assert panel_scroll <= panel_width, widths
    if table_scroll > table_width:
        body = page.locator(f"{PANEL} .jp-HeraStage-gridBody")
        body.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
        box = body.bounding_box()
        page.wait_for_function(
            "() => document.querySelector('.jp-HeraStage-panel .jp-HeraStage-gridHeaderClip')"
            ".scrollLeft > 0")
        for cell in (page.locator(f"{PANEL} [role=columnheader]", has_text="Created"),
                     page.locator(f"{ROW} [role=gridcell]:last-child").first):
            cell_box = cell.bounding_box()
            assert box["x"] - 1 <= cell_box["x"] and (
                cell_box["x"] + cell_box["width"] <= box["x"] + box["width"] + 1), widths
        screenshot(page, "01b-results-scrolled-sideways", PANEL)
        body.evaluate("b => { b.scrollLeft = 0; }")


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
    # The Librarian's marker in the destination, as the server reads it.
    card.locator(".jp-HeraStage-marker[data-marker='STAGING-SUCCEEDED']").wait_for()
    assert lab_server.api(f"jobs/{job_id}")["marker"] == "STAGING-SUCCEEDED"
    assert (lab_server.archive.workspace / "staged" / "STAGING-SUCCEEDED").exists()
    # A notification says so.
    page.locator(".jp-toast-container, .Toastify").get_by_text(
        re.compile(f"job {job_id} finished")).first.wait_for()
    page.wait_for_timeout(400)  # the progress bar's transition
    screenshot(page, "03-job-succeeded", PANEL)

    # "Open folder" shows the destination in the file browser, with the staged files.
    card.locator(".jp-HeraStage-open").click()
    page.locator("#filebrowser .jp-BreadCrumbs").get_by_text("staged").wait_for()
    listing = page.locator("#filebrowser .jp-DirListing-content")
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
    total = lab_server.api("search", {"query": "zen.*", "count": True, "limit": 1})["total"]
    panel_search(page, "zen.*")
    page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(f"of {total:,} files").wait_for()
    page.fill(f"{PANEL} #jp-HeraStage-destination", "big")
    page.locator(f"{PANEL} .jp-HeraStage-stageAll").click()
    preview = page.locator(f"{PANEL} .jp-HeraStage-preview")
    preview.wait_for()
    assert preview.locator("[data-field=files]").inner_text() == f"{total:,} files"
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
    assert job["marker"] == "STAGING-ERRORS"
    card.locator(".jp-HeraStage-marker[data-marker='STAGING-ERRORS']").wait_for()
    # The log tails in the panel.
    card.locator(".jp-HeraStage-logToggle").click()
    log = card.locator(".jp-HeraStage-log pre")
    page.wait_for_function("el => el.textContent && !el.textContent.startsWith('The log is empty')",
                           arg=log.element_handle())
    screenshot(page, "06-job-cancelled", PANEL)


def wait_state(page: Any, job_id: int, state: str, timeout: float = 60_000) -> None:
    page.wait_for_selector(
        f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}'][data-state={state}]",
        timeout=timeout)


def stage_previewed(page: Any) -> int:
    """Confirm the preview shown; returns the new job's id once its card is there."""
    previous = (int(page.locator(f"{PANEL} .jp-HeraStage-job").first.get_attribute(
        "data-job-id")) if page.locator(f"{PANEL} .jp-HeraStage-job").count() else 0)
    page.locator(f"{PANEL} .jp-HeraStage-preview .jp-HeraStage-confirm").click()
    page.wait_for_function(
        "prev => { const j = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-job');"
        " return j && Number(j.dataset.jobId) > prev; }", arg=previous)
    return newest_job_id(page)


def test_retry_a_failed_job(page: Any, lab_server: LabServer) -> None:
    night = "2457646"  # the onsite store alone holds this night: one instance per file
    name = expected_names(lab_server, night)[0]
    source = Path(lab_server.archive.stores["onsite"]["path"]) / night / name
    content = source.read_bytes()
    open_panel(page)
    panel_search(page, name)
    page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text("1 of 1 files").wait_for()
    page.locator(ROW).first.locator("input[type=checkbox]").check()
    page.fill(f"{PANEL} #jp-HeraStage-destination", "retried")
    # The instance goes away after the catalogue recorded it (a disk swapped, a bad sync).
    aside = source.with_name(name + ".aside")
    source.rename(aside)
    try:
        page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
        page.locator(f"{PANEL} .jp-HeraStage-preview [data-field=files]").get_by_text(
            "1 file").wait_for()
        job_id = stage_previewed(page)
        wait_state(page, job_id, "failed")
        card = job_card(page, job_id)
        card.locator(".jp-HeraStage-marker[data-marker='STAGING-ERRORS']").wait_for()
        assert "1 failed" in card.locator(".jp-HeraStage-jobNotes").inner_text()
        assert name in card.locator(".jp-HeraStage-error").inner_text()
        page.locator(".jp-toast-container, .Toastify").get_by_text(
            re.compile(f"job {job_id} failed")).first.wait_for()
        screenshot(page, "10-job-failed", PANEL)
    finally:
        aside.rename(source)  # the operator puts it back

    card.get_by_role("button", name=f"Retry job {job_id}").click()
    wait_state(page, job_id, "succeeded")
    card.locator(".jp-HeraStage-marker[data-marker='STAGING-SUCCEEDED']").wait_for()
    assert card.locator(".jp-HeraStage-retry").count() == 0
    staged = list((lab_server.archive.workspace / "retried").rglob(name))
    assert len(staged) == 1 and staged[0].read_bytes() == content
    page.wait_for_timeout(400)  # the progress bar's transition
    screenshot(page, "11-job-retried", PANEL)


def test_stage_all_files_of_an_observation_or_a_session(
        page: Any, lab_server: LabServer) -> None:
    open_panel(page)
    kind = f"{PANEL} #jp-HeraStage-kind"
    detail = page.locator(f"{PANEL} .jp-HeraStage-detail")
    preview = page.locator(f"{PANEL} .jp-HeraStage-preview")
    try:
        page.select_option(kind, "observations")
        panel_search(page, "session:2457645")
        page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(
            re.compile(r"of [\d,]+ observations")).wait_for()
        page.locator(ROW).nth(1).click()
        obsid = int(page.locator(ROW).nth(1).get_attribute("data-key"))
        detail.get_by_text(f"Observation {obsid}").wait_for()
        files = sorted(f["name"] for f in lab_server.api(
            "search", {"query": f"obsid:{obsid}", "limit": 100})["results"])
        assert files
        page.fill(f"{PANEL} #jp-HeraStage-destination", "observation")
        detail.get_by_role("button", name="Stage all its files").click()
        preview.locator("[data-field=files]").get_by_text(
            f"{len(files)} file", exact=False).wait_for()
        screenshot(page, "12-observation-preview", PANEL)
        job_id = stage_previewed(page)
        wait_state(page, job_id, "succeeded")
        staged = lab_server.archive.workspace / "observation"
        assert sorted(p.name for p in staged.rglob("zen.*")) == files

        # A session: its preview counts every file of the night.
        page.select_option(kind, "sessions")
        panel_search(page, "session:2457646")
        page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text("1 of 1 sessions").wait_for()
        page.locator(ROW).first.click()
        detail.get_by_text("Session 2457646").wait_for()
        total = lab_server.api("search", {"query": "session:2457646", "count": True,
                                          "limit": 1})["total"]
        detail.get_by_role("button", name="Stage all its files").click()
        preview.locator("[data-field=files]").get_by_text(f"{total} files").wait_for()
        preview.get_by_role("button", name="Cancel").click()
        preview.wait_for(state="detached")
    finally:
        page.select_option(kind, "files")


def is_focused(page: Any, selector: str) -> bool:
    return bool(page.evaluate("s => document.activeElement?.matches(s)", selector))


def tab_to(page: Any, selector: str, limit: int = 30) -> None:
    """Press Tab until the element matching ``selector`` has the focus."""
    for _ in range(limit):
        if is_focused(page, selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}; focus on "
                         + page.evaluate("() => document.activeElement?.outerHTML.slice(0, 200)"))


def test_search_and_stage_with_the_keyboard_only(page: Any, lab_server: LabServer) -> None:
    names = expected_names(lab_server, "2457645")
    names = [n for n in names if n.startswith("zen.2457645.10")]
    # Every button says what it does to a screen reader (a label, or words on it).
    unnamed = page.evaluate(
        "() => Array.from(document.querySelectorAll('.jp-HeraStage-panel button'))"
        ".filter(b => !(b.getAttribute('aria-label') || /[A-Za-z]/.test(b.textContent)))"
        ".map(b => b.outerHTML.slice(0, 120))")
    assert unnamed == []

    # The command palette opens the panel, which puts the focus in the query box.
    page.keyboard.press("Control+Shift+C")
    page.keyboard.type("Open HERA Archive Panel")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement?.matches('.jp-HeraStage-query')")
    page.keyboard.press("Control+A")
    page.keyboard.type("zen.2457645.10*")
    page.keyboard.press("Enter")
    page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(
        f"of {len(names)} files loaded").wait_for()

    # Rows: the grid takes the focus, arrows move, Space selects.
    tab_to(page, f"{PANEL} [role=grid]")
    page.keyboard.press("Space")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text("2 selected").wait_for()
    selected = page.locator(f"{ROW}[aria-selected=true] [role=gridcell]:nth-child(2)")
    assert [selected.nth(i).inner_text() for i in range(2)] == names[:2]

    tab_to(page, f"{PANEL} #jp-HeraStage-destination")
    page.keyboard.press("Control+A")
    page.keyboard.type("keyboard")
    tab_to(page, f"{PANEL} .jp-HeraStage-stageSelected")
    page.keyboard.press("Enter")
    # The preview takes the focus on its confirm button.
    page.wait_for_function(
        "() => document.activeElement?.matches('.jp-HeraStage-preview .jp-HeraStage-confirm')")
    assert page.locator(f"{PANEL} .jp-HeraStage-preview [data-field=files]").inner_text() \
        == "2 files"
    screenshot(page, "13-keyboard-preview", PANEL)
    previous = newest_job_id(page)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "prev => { const j = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-job');"
        " return j && Number(j.dataset.jobId) > prev; }", arg=previous)
    wait_state(page, newest_job_id(page), "succeeded")
    staged = lab_server.archive.workspace / "keyboard"
    assert sorted(p.name for p in staged.rglob("zen.*")) == names[:2]


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
    # Said once: the search's error replaces the validity line's message.
    messages = page.locator(f"{PANEL} .jp-HeraStage-error, {PANEL} .jp-HeraStage-validity",
                            has_text="nme-matches")
    assert sum(messages.nth(i).is_visible() for i in range(messages.count())) == 1
    screenshot(page, "07-invalid-json", PANEL)
    # Editing the search brings the validity line back (and drops the stale error).
    editor.fill('{"nme-matches": "zen.2%"}')
    page.wait_for_selector(f"{PANEL} .jp-HeraStage-validity.jp-mod-error:not(:empty)")
    assert alert.count() == 0

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


def test_failing_server_extension_is_said_plainly(page: Any, lab_server: LabServer) -> None:
    """The server extension is there but fails (its catalogue lost a table under it): the
    panel shows the error instead of spinning. Last test on this lab."""
    database = sqlite3.connect(lab_server.archive.db_url.removeprefix("sqlite:///"))
    database.execute("ALTER TABLE file RENAME TO file_lost")
    database.commit()
    try:
        assert lab_server.jupyter.request("GET", "hera-stage/api/status").status_code == 500
        page.reload()
        page.wait_for_selector(".lm-TabBar-tab[data-id='hera-stage-panel']")
        open_panel(page, ready=False)
        notice = page.locator(f"{PANEL} .jp-HeraStage-unavailable[role=alert]")
        notice.get_by_text("The archive server answered with an error.").wait_for()
        assert "(HTTP 500)" in notice.inner_text()
        assert page.locator(f"{PANEL} .jp-HeraStage-query").count() == 0
        screenshot(page, "15-server-extension-error", PANEL)
    finally:
        database.execute("ALTER TABLE file_lost RENAME TO file")
        database.commit()
        database.close()
    notice.get_by_role("button", name="Try again").click()
    # The query box or the JSON editor, whichever the panel had before the reload.
    page.locator(f"{PANEL} .jp-HeraStage-query, {PANEL} .jp-HeraStage-json").first.wait_for()


def test_missing_server_extension_is_said_plainly(page: Any, tmp_path: Path) -> None:
    """A lab whose server runs without hera_stage_ext: the panel says so (and what to do)
    instead of spinning."""
    browser = page.context.browser
    with run_lab(tmp_path, files_per_night=1, nights=1, server_extension=False) as server:
        assert server.jupyter.request("GET", "hera-stage/api/status").status_code == 404
        with open_lab_page(server, browser=browser) as page:
            open_panel(page, ready=False)
            notice = page.locator(f"{PANEL} .jp-HeraStage-unavailable[role=alert]")
            notice.get_by_text("The archive server extension is missing.").wait_for()
            assert "jupyter server extension enable hera_stage_ext" in notice.inner_text()
            assert page.locator(f"{PANEL} .jp-HeraStage-query").count() == 0
            assert "connecting" not in page.locator(f"{PANEL} .jp-HeraStage-header").inner_text()
            screenshot(page, "14-server-extension-missing", PANEL)
            # "Try again" asks again and says the same, plainly.
            notice.get_by_role("button", name="Try again").click()
            notice.get_by_text("The archive server extension is missing.").wait_for()
