"""The panel a user can trust (issue 17), in Debian's Chromium against a real ``jupyter lab`` on
the demo archive: what you see is what you stage, and you can see it. One lab and one page for
the module; the tests run in order.

Screenshots land in test-output/screenshots/ (panel-*.png) for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
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
MAIN = ".jp-HeraStage-mainView"
SUMMARY = f"{PANEL} .jp-HeraStage-summary"
NIGHT = "2457644"
#: GET jobs (JupyterLab adds a timestamp to GETs against caches).
JOBS_URL = re.compile(r".*/hera-stage/api/jobs(\?[^/]*)?$")
FAKE_JOB_URL = re.compile(r".*/hera-stage/api/jobs/990001(\?[^/]*)?$")


def night_names(server: LabServer, night: str = NIGHT) -> list[str]:
    onsite = Path(server.archive.stores["onsite"]["path"]) / night
    return sorted(p.name for p in onsite.iterdir() if p.name.startswith(f"zen.{night}."))


def wait_searched(page: Any) -> None:
    page.wait_for_function(
        "() => { const s = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-summary');"
        " return s && !s.textContent.includes('loading'); }")


def search_alert(page: Any) -> Any:
    return page.locator(f"{PANEL} .jp-HeraStage-searchBox [role=alert]")


def run_palette(page: Any, label: str) -> None:
    """Run a command from the palette by typing its label, as a person would."""
    # Ctrl+Shift+C does not reach the palette while a text box has the focus.
    page.evaluate("() => document.activeElement?.blur()")
    page.keyboard.press("Control+Shift+C")
    page.keyboard.type(label)
    page.locator(".lm-CommandPalette-item", has_text=label).first.wait_for()
    page.keyboard.press("Enter")


def wait_job(page: Any, job_id: int, state: str, timeout: float = 60_000) -> None:
    page.wait_for_selector(
        f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}'][data-state={state}]",
        timeout=timeout)


def confirm_preview(page: Any) -> int:
    """Confirm the preview shown; the new job's id once its card is there."""
    cards = page.locator(f"{PANEL} .jp-HeraStage-job")
    previous = int(cards.first.get_attribute("data-job-id")) if cards.count() else 0
    page.locator(f"{PANEL} .jp-HeraStage-preview .jp-HeraStage-confirm").click()
    page.wait_for_function(
        "prev => { const j = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-job');"
        " return j && Number(j.dataset.jobId) > prev; }", arg=previous)
    return int(cards.first.get_attribute("data-job-id"))


def stage_names(page: Any, query: str, count: int, destination: str) -> int:
    """Search ``query``, select its first ``count`` rows, preview and confirm into
    ``destination``; the job's id."""
    panel_search(page, query)
    wait_searched(page)
    for i in range(count):
        page.locator(ROW).nth(i).locator("input[type=checkbox]").check()
    page.fill(f"{PANEL} #jp-HeraStage-destination", destination)
    page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
    page.locator(f"{PANEL} .jp-HeraStage-preview [data-field=files]").get_by_text(
        f"{count} file").wait_for()
    return confirm_preview(page)


def test_this_checkouts_build_is_served(page: Any) -> None:
    open_panel(page)
    # Only this branch's build has the main-area button: the lab loads this checkout's build.
    page.locator(f"{PANEL} .jp-HeraStage-openMain").wait_for()


def test_a_sort_survives_a_change_of_kind(page: Any) -> None:
    """Point 1: sort files by size, then search observations, sessions and files again."""
    open_panel(page)
    kind = f"{PANEL} #jp-HeraStage-kind"
    panel_search(page, f"zen.{NIGHT}.*")
    wait_searched(page)
    size = page.locator(f"{PANEL} [role=columnheader] button", has_text="Size")
    size.click()
    size.click()
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=descending]")
    for k, query in (("observations", f"session:{NIGHT}"), ("sessions", ""),
                     ("files", f"zen.{NIGHT}.*")):
        page.select_option(kind, k)
        panel_search(page, query)
        page.locator(SUMMARY).get_by_text(re.compile(f"of [\\d,]+ {k} loaded")).wait_for()
        assert search_alert(page).count() == 0, search_alert(page).inner_text()
        assert page.locator(ROW).count() > 0
    # Each kind kept its own sort: the files are still by size, biggest first.
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=descending]")
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2}
    sizes = []
    for text in page.locator(f"{ROW} [role=gridcell]:nth-child(3)").all_inner_texts()[:8]:
        value, unit = text.split()
        sizes.append(float(value) * units[unit])
    assert sizes == sorted(sizes, reverse=True), sizes


def test_stale_results_are_marked_and_cannot_be_staged(page: Any, lab_server: LabServer) -> None:
    """Point 2: the stage buttons act on exactly the rows and search shown, the one in the box."""
    open_panel(page)
    stage_all = page.locator(f"{PANEL} .jp-HeraStage-stageAll")
    stage_selected = page.locator(f"{PANEL} .jp-HeraStage-stageSelected")
    stale = page.locator(f"{PANEL} .jp-HeraStage-stale")
    panel_search(page, f"zen.{NIGHT}.*")
    wait_searched(page)
    page.locator(ROW).first.locator("input[type=checkbox]").check()
    assert stage_all.is_enabled() and stage_selected.is_enabled()
    assert stale.count() == 0

    # Edited without Enter: the rows are marked stale and nothing stages them.
    page.fill(f"{PANEL} .jp-HeraStage-query", "zen.2457645.*")
    stale.wait_for()
    assert not stage_all.is_enabled() and not stage_selected.is_enabled()
    # Back to the search shown: usable again.
    page.fill(f"{PANEL} .jp-HeraStage-query", f"zen.{NIGHT}.*")
    stale.wait_for(state="detached")
    assert stage_all.is_enabled()

    # A failed search: its error, and the old rows marked and not stageable.
    panel_search(page, "obsid:notanumber")
    search_alert(page).wait_for()
    stale.wait_for()
    assert "failed" in stale.inner_text()
    assert not stage_all.is_enabled() and not stage_selected.is_enabled()
    screenshot(page, "panel-stale-results", PANEL)

    # The JSON editor opens on the query in the box, not on a placeholder.
    page.fill(f"{PANEL} .jp-HeraStage-query", f"zen.{NIGHT}.* size>10000")
    page.locator(f"{PANEL} .jp-HeraStage-toggleJson").click()
    editor = page.locator(f"{PANEL} .jp-HeraStage-json")
    editor.wait_for()
    assert json.loads(editor.input_value()) == lab_server.api(
        "search", {"query": f"zen.{NIGHT}.* size>10000", "limit": 1})["search"]
    page.locator(f"{PANEL} .jp-HeraStage-toggleJson").click()
    page.locator(f"{PANEL} .jp-HeraStage-query").wait_for()


def test_the_query_box_is_checked_as_you_type(page: Any) -> None:
    """Point 11 (the panel's half): checked as you type, a placeholder that fits, a "?"."""
    open_panel(page)
    box = page.locator(f"{PANEL} .jp-HeraStage-query")
    validity = page.locator(f"{PANEL} .jp-HeraStage-validity")
    box.fill("obsid:notanumber")
    validity.get_by_text("obsid").wait_for()  # the server's message, without Enter
    assert box.get_attribute("aria-invalid") == "true"
    box.fill(f"zen.{NIGHT}.*")
    validity.get_by_text("valid query").wait_for()
    box.fill("")
    assert_placeholder_fits(page)
    page.locator(f"{PANEL} .jp-HeraStage-helpToggle").click()
    help_box = page.locator(f"{PANEL} .jp-HeraStage-queryHelp")
    assert "size>10k" in help_box.inner_text() and "OR" in help_box.inner_text()
    help_box.locator(".jp-HeraStage-example").first.click()
    assert box.input_value() == "zen.2457644.*.xx.HH.uvh5"
    page.locator(f"{PANEL} .jp-HeraStage-helpToggle").click()
    help_box.wait_for(state="detached")


def assert_placeholder_fits(page: Any) -> None:
    fits = page.evaluate(
        "() => { const i = document.querySelector('.jp-HeraStage-panel .jp-HeraStage-query');"
        " const c = document.createElement('canvas').getContext('2d');"
        " const s = getComputedStyle(i); c.font = `${s.fontSize} ${s.fontFamily}`;"
        " const pad = parseFloat(s.paddingLeft) + parseFloat(s.paddingRight);"
        " return [c.measureText(i.placeholder).width, i.clientWidth - pad]; }")
    assert fits[0] <= fits[1], fits


def set_left_width(page: Any, width: int) -> None:
    """Drag the left area's edge until the panel is ``width`` px wide."""
    panel = page.locator(PANEL)
    for _ in range(3):
        box = panel.bounding_box()
        if abs(box["width"] - width) <= 2:
            return
        handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
        hb = handle.bounding_box()
        page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
        page.mouse.down()
        page.mouse.move(hb["x"] + hb["width"] / 2 + (width - box["width"]),
                        hb["y"] + hb["height"] / 2, steps=4)
        page.mouse.up()
        page.wait_for_timeout(200)
    assert abs(panel.bounding_box()["width"] - width) <= 2, panel.bounding_box()


def test_the_panel_at_250_px_keeps_names_and_checkboxes_whole(page: Any) -> None:
    """Point 6 (the side panel's half): names keep their extension, checkboxes are whole."""
    open_panel(page)
    set_left_width(page, 250)
    panel_search(page, f"zen.{NIGHT}.*")
    wait_searched(page)
    geometry = page.evaluate(
        "() => { const p = document.querySelector('.jp-HeraStage-panel');"
        " const body = p.querySelector('.jp-HeraStage-gridBody').getBoundingClientRect();"
        " const inner = {left: Math.max(body.left, p.getBoundingClientRect().left),"
        "  right: Math.min(body.right, p.getBoundingClientRect().right)};"
        " return Array.from(p.querySelectorAll('.jp-HeraStage-gridRow')).slice(0, 8).map(r => {"
        "  const name = r.querySelector('[role=gridcell]:nth-child(2)');"
        "  const box = r.querySelector('input[type=checkbox]').getBoundingClientRect();"
        "  const tail = name.querySelector('.jp-HeraStage-nameTail');"
        "  const range = document.createRange(); range.selectNodeContents(tail || name);"
        "  const text = Array.from(range.getClientRects());"
        "  const visibleEnd = Math.min(name.getBoundingClientRect().right, inner.right);"
        "  return {name: name.title, lastChar: Math.max(...text.map(t => t.right)),"
        "   visibleEnd, boxLeft: box.left, boxRight: box.right, left: inner.left,"
        "   right: inner.right, tail: name.querySelector('.jp-HeraStage-nameTail')?.textContent};"
        " }); }")
    assert geometry
    for row in geometry:
        assert row["tail"] and row["name"].endswith(row["tail"]), row
        assert row["tail"].endswith(".uvh5"), row
        assert row["lastChar"] <= row["visibleEnd"] + 0.5, row  # the extension is on screen
        assert row["left"] <= row["boxLeft"] and row["boxRight"] <= row["right"], row
    widths = page.evaluate(
        "() => { const p = document.querySelector('.jp-HeraStage-panel');"
        " return [p.scrollWidth, p.clientWidth]; }")
    assert widths[0] <= widths[1], widths
    page.fill(f"{PANEL} .jp-HeraStage-query", "")
    assert_placeholder_fits(page)
    screenshot(page, "panel-250px", PANEL)
    set_left_width(page, 330)  # the rest of the module at a comfortable width


def test_the_main_area_view(page: Any, lab_server: LabServer) -> None:
    """Point 6: the archive in a full-width tab, from the palette and from the panel."""
    open_panel(page)
    panel_search(page, f"zen.{NIGHT}.*")
    wait_searched(page)
    run_palette(page, "Open HERA Archive in the Main Area")
    main = page.locator(MAIN)
    main.wait_for()
    headers = main.locator("[role=columnheader]").all_inner_texts()
    for column in ("Name", "Obsid", "Size", "Where", "Created"):
        assert any(h.startswith(column) for h in headers), headers
    assert main.locator(".jp-HeraStage-gridRow").count() > 5
    screenshot(page, "panel-main-area-results")

    # A file's page: its obsid links to its observation's page.
    name = night_names(lab_server)[0]
    main.locator(".jp-HeraStage-gridRow", has_text=name).first.click()
    file_page = main.locator(".jp-HeraStage-page[data-kind=file]")
    file_page.get_by_text("Instances (2)").wait_for()
    detail = lab_server.api(f"files/{name}")
    file_page.locator(".jp-HeraStage-obsidLink").click()
    obs_page = main.locator(".jp-HeraStage-page[data-kind=observation]")
    obs_page.locator("[data-field=totals]").wait_for()
    files = lab_server.api("search", {"query": f"obsid:{detail['obsid']}", "limit": 100})
    names = sorted(f["name"] for f in files["results"])
    assert sorted(obs_page.locator("table tbody tr td:first-child").all_inner_texts()) == names
    totals = obs_page.locator("[data-field=totals]").inner_text()
    total = human_kib(sum(f["size"] for f in files["results"]))
    assert f"{len(names)} file" in totals and total in totals, totals
    observation = detail["observation"]
    assert f"{observation['start_time_jd']:.5f}" in obs_page.locator("[data-field=jd]").inner_text()
    assert f"{observation['start_lst_hr']:.4f}" in obs_page.locator("[data-field=lst]").inner_text()
    assert obs_page.locator("tbody tr").first.locator("td").nth(2).inner_text().endswith("KiB")
    screenshot(page, "panel-main-area-observation")

    # Its session: every observation of the night, with counts and total sizes.
    obs_page.locator(".jp-HeraStage-sessionLink").click()
    session_page = main.locator(".jp-HeraStage-page[data-kind=session]")
    session_page.locator("[data-field=totals]").wait_for()
    observations = lab_server.api("search", {"query": f"session:{NIGHT}", "kind": "observations",
                                             "count": True, "limit": 1})["total"]
    night_files = lab_server.api("search", {"query": f"session:{NIGHT}", "count": True,
                                            "limit": 1})["total"]
    assert session_page.locator("[data-field=observations]").inner_text() == str(observations)
    assert f"{night_files} files" in session_page.locator("[data-field=totals]").inner_text()
    assert session_page.locator("tbody tr").count() == observations
    row = session_page.locator(f"tbody tr[data-key='{detail['obsid']}']")
    assert row.locator("td").nth(3).inner_text() == str(len(names))
    screenshot(page, "panel-main-area-session")
    # Back goes back.
    main.locator(".jp-HeraStage-back").click()
    obs_page.wait_for()

    # A MIRIAD data set lists its members.
    miriad = "zen.2457646.40000.xx.HH.uv"
    main.locator(".jp-HeraStage-mainTab", has_text="Search results").click()
    main.locator(".jp-HeraStage-query").fill(miriad)
    main.locator(".jp-HeraStage-query").press("Enter")
    main.locator(".jp-HeraStage-gridRow", has_text=miriad).click()
    members = main.locator(".jp-HeraStage-members")
    members.get_by_text("Members (4)").wait_for()
    assert set(members.locator("tbody td:first-child").all_inner_texts()) == {
        "flags", "header", "vartable", "visdata"}
    screenshot(page, "panel-main-area-dataset")

    # From the panel: a row's detail opens its page.
    open_panel(page)
    page.locator(ROW).first.click()
    page.locator(f"{PANEL} .jp-HeraStage-detail .jp-HeraStage-openPage").click()
    main.locator(".jp-HeraStage-page[data-kind=file]").wait_for()


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_bad_copy_is_badged_and_a_file_with_no_good_copy_is_marked(
        page: Any, lab_server: LabServer) -> None:
    """A copy the fixity check found changed shows "bad copy" on the file's page, and a file
    whose every copy is bad says so in its results row."""
    name = night_names(lab_server)[-1]
    copies = {store: Path(conf["path"]) / NIGHT / name
              for store, conf in lab_server.archive.stores.items()
              if (Path(conf["path"]) / NIGHT / name).is_file()}
    assert len(copies) == 2, copies
    for path in copies.values():
        flip_byte(path)
    try:
        checked = lab_server.api(f"files/{name}/fixity", {})
        assert sorted(r["state"] for r in checked["instances"]) == ["bad", "bad"], checked
        open_panel(page)
        panel_search(page, name)
        wait_searched(page)
        page.locator(ROW, has_text=name).first.click()
        badges = page.locator(f"{PANEL} .jp-HeraStage-detail .jp-HeraStage-instances "
                              ".jp-HeraStage-badge[data-fixity=bad]")
        badges.first.wait_for()
        assert badges.all_inner_texts() == ["bad copy", "bad copy"]
        screenshot(page, "panel-bad-copy", f"{PANEL} .jp-HeraStage-detail")
        # The main area's results show where the copies are: none of them good.
        run_palette(page, "Open HERA Archive in the Main Area")
        main = page.locator(MAIN)
        main.locator(".jp-HeraStage-mainTab", has_text="Search results").click()
        main.locator(".jp-HeraStage-query").fill(name)
        main.locator(".jp-HeraStage-query").press("Enter")
        row = main.locator(".jp-HeraStage-gridRow", has_text=name).first
        row.get_by_text("no good copy").wait_for()
        assert row.inner_text().count("(bad copy)") == 2, row.inner_text()
    finally:
        for path in copies.values():
            flip_byte(path)
        restored = lab_server.api(f"files/{name}/fixity", {})
        assert all(r["state"] == "ok" for r in restored["instances"]), restored


def human_kib(size: int) -> str:
    """A size between 1 KiB and 1 MiB as the panel writes it (three significant digits)."""
    kib = size / 1024
    return f"{kib:.{2 if kib < 10 else 1 if kib < 100 else 0}f} KiB"


def test_jobs_you_can_manage(page: Any, lab_server: LabServer) -> None:
    """Point 7: times, method, destination; filters; forget; clear finished; banners that go
    when their cause does; the log in the main area with copy and follow."""
    open_panel(page)
    names = night_names(lab_server)
    first = stage_names(page, names[0], 1, "managed/one")
    wait_job(page, first, "succeeded")
    second = stage_names(page, names[1], 1, "managed/two")
    wait_job(page, second, "succeeded")
    card = page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='{first}']")
    meta = card.locator("[data-field=meta]").inner_text()
    assert "copy" in meta and "started 20" in meta and re.search(r"took \d+ s", meta), meta
    assert "managed/one" in card.locator(".jp-HeraStage-jobTitle").inner_text()

    jobs = page.locator(f"{PANEL} .jp-HeraStage-jobs")
    jobs.locator("[data-filter=running]").click()
    assert page.locator(f"{PANEL} .jp-HeraStage-job").count() == 0
    jobs.get_by_text("No running jobs.").wait_for()
    jobs.locator("[data-filter=finished]").click()
    shown = page.locator(f"{PANEL} .jp-HeraStage-job")
    assert all(s == "succeeded" for s in (shown.nth(i).get_attribute("data-state")
                                          for i in range(shown.count())))
    jobs.locator("[data-filter=all]").click()

    # Forget one: gone from the panel and from the server; its files stay.
    card.get_by_role("button", name=f"Forget job {first}").click()
    card.wait_for(state="detached")
    assert lab_server.jupyter.request("GET", f"hera-stage/api/jobs/{first}").status_code == 404
    assert list((lab_server.archive.workspace / "managed" / "one").rglob(names[0]))

    # An error banner that goes once its cause has gone (the server answers again).
    page.route(JOBS_URL, lambda route: route.fulfill(
        status=503, content_type="application/json",
        body='{"error": "Unavailable", "message": "the catalogue is being upgraded"}'))
    try:
        jobs.get_by_role("button", name="Refresh the jobs").click()
        banner = jobs.locator(".jp-HeraStage-jobsError")
        banner.get_by_text("being upgraded").wait_for()
    finally:
        page.unroute(JOBS_URL)
    jobs.get_by_role("button", name="Refresh the jobs").click()
    banner.wait_for(state="detached")

    # The log in the main area, with copy and follow.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    second_card = page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='{second}']")
    second_card.locator(".jp-HeraStage-logToggle").click()
    second_card.get_by_role("button", name=f"Open the log of job {second} in the main area").click()
    main = page.locator(MAIN)
    log = main.locator(f".jp-HeraStage-job[data-job-id='{second}'] .jp-HeraStage-log")
    log.locator("pre").get_by_text(f"job {second} created").wait_for()
    assert log.get_by_label(f"Follow the end of the log of job {second}").is_checked()
    log.get_by_role("button", name=f"Copy the log of job {second}").click()
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert f"job {second} created" in copied
    screenshot(page, "panel-main-area-jobs")

    # Clear finished: every succeeded or cancelled job goes, on the server too.
    open_panel(page)
    jobs.locator(".jp-HeraStage-clearFinished").click()
    page.wait_for_function(
        "() => !document.querySelector("
        "'.jp-HeraStage-panel .jp-HeraStage-job[data-state=succeeded]')")
    assert not [j for j in lab_server.api("jobs")["jobs"] if j["state"] == "succeeded"]


def test_the_preview_says_what_will_happen(page: Any, lab_server: LabServer) -> None:
    """Point 8: files already there, another job writing into the folder, the allowed root."""
    open_panel(page)
    job_id = stage_names(page, "zen.2457645.1*", 3, "again")
    wait_job(page, job_id, "succeeded")
    preview = page.locator(f"{PANEL} .jp-HeraStage-preview")
    # The same three again: the preview says they are there already.
    page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
    preview.locator("[data-field=already]").get_by_text(
        "3 files will be checked and skipped").wait_for()
    preview.get_by_role("button", name="Cancel").click()
    preview.wait_for(state="detached")
    # Cancel keeps the focus in the panel.
    # (The focus moves on the next tick after the preview goes.)
    page.wait_for_function("() => !!document.activeElement?.closest('.jp-HeraStage-panel')",
                           timeout=5000)

    # Another job writing into the folder: said in the preview, before confirming.
    panel_search(page, "zen.*")
    wait_searched(page)
    page.fill(f"{PANEL} #jp-HeraStage-destination", "busy")
    page.locator(f"{PANEL} .jp-HeraStage-stageAll").click()
    preview.locator("[data-field=files]").wait_for()
    big = confirm_preview(page)
    try:
        panel_search(page, "zen.2457645.1*")
        wait_searched(page)
        page.locator(ROW).first.locator("input[type=checkbox]").check()
        page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
        busy = preview.locator(".jp-HeraStage-busy")
        busy.get_by_text(f"Job {big} is writing into this folder").wait_for()
        assert not preview.locator(".jp-HeraStage-confirm").is_enabled()
        screenshot(page, "panel-preview-busy", PANEL)
        preview.get_by_role("button", name="Cancel").click()
    finally:
        page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='{big}'] .jp-HeraStage-cancel").click()
    wait_job(page, big, "cancelled")

    # A destination outside the roots: the refusal names the allowed root.
    page.fill(f"{PANEL} #jp-HeraStage-destination", "/tmp/elsewhere")
    page.locator(f"{PANEL} .jp-HeraStage-stageSelected").click()
    error = page.locator(f"{PANEL} .jp-HeraStage-stage [role=alert]")
    error.get_by_text("outside the allowed roots").wait_for()
    assert str(lab_server.archive.workspace.resolve()) in error.inner_text()
    page.fill(f"{PANEL} #jp-HeraStage-destination", ".")


def test_rate_and_eta_come_from_the_bytes_moved(page: Any) -> None:
    """Point 5 (the panel's half): rate and ETA from byte samples over a window, not the
    server's own fields (which sat at 0 B/s and "ETA —" while bytes moved)."""
    open_panel(page)
    start = time.monotonic()

    def fake_bytes() -> int:
        return min(4 * 1024**3, round((time.monotonic() - start) * 20 * 1024**2))

    def job() -> dict[str, Any]:
        return {"id": 990001, "owner": "me", "kind": "stage", "state": "running",
                "destination": "/big/night", "method": "contents", "files_total": 2,
                "files_done": 0, "bytes_total": 4 * 1024**3, "bytes_done": 0,
                "bytes_moving": fake_bytes(),  # written, not committed: all of it uncommitted
                "files_failed": 0, "files_skipped": 0, "missing": [], "error": "",
                "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:05Z",
                "finished_at": None, "rate_bytes_per_s": 0, "eta_s": None,
                "marker": "STAGING-IN-PROGRESS"}

    def jobs_route(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"jobs": [job()]}))

    def job_route(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(job()))

    page.route(JOBS_URL, jobs_route)
    page.route(FAKE_JOB_URL, job_route)
    try:
        page.locator(f"{PANEL} .jp-HeraStage-jobs").get_by_role(
            "button", name="Refresh the jobs").click()
        card = page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='990001']")
        card.wait_for()
        stats = card.locator(".jp-HeraStage-jobStats span")  # files, bytes, rate, ETA
        rate = stats.nth(2)
        page.wait_for_function(
            "el => /MiB\\/s/.test(el.textContent)", arg=rate.element_handle(), timeout=20_000)
        page.wait_for_timeout(2500)  # a few more samples
        value = float(rate.inner_text().split()[0])
        assert 14 <= value <= 26, rate.inner_text()
        eta = stats.nth(3).inner_text()
        minutes = re.match(r"ETA (\d+) min", eta)
        assert minutes and 2 <= int(minutes.group(1)) <= 4, eta  # ~4 GiB at 20 MiB/s
        shown = stats.nth(1).inner_text()  # the bytes moved include those not committed yet
        assert re.match(r"\d+(\.\d+)? [MG]iB / 4(\.0+)? GiB", shown) and not shown.startswith("0 B"), shown
        screenshot(page, "panel-running-multi-gb-job", f"{PANEL} .jp-HeraStage-jobs")
    finally:
        page.unroute(JOBS_URL, jobs_route)
        page.unroute(FAKE_JOB_URL, job_route)
    page.locator(f"{PANEL} .jp-HeraStage-jobs").get_by_role(
        "button", name="Refresh the jobs").click()
    page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='990001']").wait_for(state="detached")


def focus_in_panel(page: Any) -> bool:
    return bool(page.evaluate("() => !!document.activeElement?.closest('.jp-HeraStage-panel')"))


def test_the_keyboard_keeps_its_place(page: Any, lab_server: LabServer) -> None:
    """Point 9: Escape and confirming keep the focus in the panel; a header tabbed onto stays
    aligned with its column; the selected text is searched from the palette and from an
    editor's context menu; a shortcut opens the panel."""
    open_panel(page)
    panel_search(page, f"zen.{NIGHT}.*")
    wait_searched(page)
    page.locator(ROW).first.click()
    heading = page.locator(f"{PANEL} .jp-HeraStage-detail h3")
    heading.wait_for()
    page.keyboard.press("Escape")
    heading.wait_for(state="detached")
    assert page.evaluate("() => document.activeElement?.matches('.jp-HeraStage-panel [role=grid]')")

    # Confirming a stage with the keyboard: the focus lands on the new job's card.
    page.keyboard.press("Space")
    page.locator(f"{PANEL} #jp-HeraStage-destination").fill("keys")
    page.locator(f"{PANEL} .jp-HeraStage-stageSelected").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.activeElement?.matches('.jp-HeraStage-preview .jp-HeraStage-confirm')")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.activeElement?.matches('.jp-HeraStage-panel .jp-HeraStage-job')")
    assert focus_in_panel(page)

    # A shortcut opens the panel from anywhere, focus in the query box.
    page.locator(".lm-TabBar-tab[data-id='filebrowser']").click()
    page.locator(PANEL).wait_for(state="hidden")
    page.keyboard.press("Alt+Shift+H")
    page.wait_for_function("() => document.activeElement?.matches('.jp-HeraStage-query')")

    # The selected text of an editor, searched from the palette and from the context menu.
    query = "zen.2457645.10*"
    (lab_server.archive.workspace / "queries.txt").write_text(f"{query}\nsecond line\n")
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:open',"
                  " {path: 'queries.txt', factory: 'Editor'}).then(() => null)")
    editor = page.locator(".jp-FileEditor .cm-content")
    editor.get_by_text(query).wait_for()
    editor.get_by_text(query).click()
    page.keyboard.press("Home")
    page.keyboard.press("Shift+End")
    run_palette(page, "Search the Archive for the Selected Text")
    box = page.locator(f"{PANEL} .jp-HeraStage-query")
    box.wait_for()
    assert box.input_value() == query
    expected = len([n for n in night_names(lab_server, "2457645")
                    if n.startswith("zen.2457645.10")])
    page.locator(SUMMARY).get_by_text(f"of {expected} files loaded").wait_for()
    box.fill("")
    page.locator(".lm-TabBar-tab", has_text="queries.txt").click()
    editor.get_by_text(query).click()
    page.keyboard.press("Home")
    page.keyboard.press("Shift+End")
    editor.get_by_text(query).click(button="right")
    page.locator(".lm-Menu-item", has_text="Search the Archive for the Selected Text").click()
    page.wait_for_function(
        "q => document.querySelector('.jp-HeraStage-panel .jp-HeraStage-query')?.value === q",
        arg=query)

    # In the main area, at a width that scrolls the table sideways, a header tabbed onto
    # stays above its column.
    page.set_viewport_size({"width": 900, "height": 1000})
    try:
        page.evaluate("() => window.jupyterapp.commands.execute('hera-stage:open-main')"
                      ".then(() => null)")
        main = page.locator(MAIN)
        main.locator(".jp-HeraStage-mainTab", has_text="Search results").click()
        grid = main.locator(".jp-HeraStage-gridBody")
        grid.wait_for()
        assert grid.evaluate("b => b.scrollWidth > b.clientWidth"), "no sideways scroll here"
        created = main.locator("[role=columnheader] button", has_text="Created")
        main.locator("[role=columnheader] button", has_text="Name").focus()
        for _ in range(8):
            if page.evaluate("() => document.activeElement?.textContent?.startsWith('Created')"):
                break
            page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement?.textContent?.startsWith('Created')")
        page.wait_for_timeout(100)
        header_x = created.bounding_box()["x"]
        cell_x = main.locator(".jp-HeraStage-gridRow [role=gridcell]:last-child").first \
            .bounding_box()["x"]
        assert abs(header_x - cell_x) <= 5, (header_x, cell_x)
    finally:
        page.set_viewport_size({"width": 1440, "height": 1000})


#: The contrast ratio of an element's text on its background, from computed colours (resolved
#: through a canvas, so color-mix() and any colour syntax work).
CONTRAST_JS = """(sel) => {
  const el = document.querySelector(sel);
  const rgb = css => { const c = document.createElement('canvas'); c.width = c.height = 1;
    const g = c.getContext('2d'); g.fillStyle = '#000'; g.fillRect(0, 0, 1, 1);
    g.fillStyle = css; g.fillRect(0, 0, 1, 1);
    return Array.from(g.getImageData(0, 0, 1, 1).data); };
  let node = el, bg = null;
  while (node) { const c = getComputedStyle(node).backgroundColor;
    const v = rgb(c); if (!/rgba\\(.*, 0\\)$/.test(c) && c !== 'transparent') { bg = v; break; }
    node = node.parentElement; }
  const fg = rgb(getComputedStyle(el).color);
  const lum = ([r, g, b]) => [r, g, b].map(x => { x /= 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; })
    .reduce((s, x, i) => s + x * [0.2126, 0.7152, 0.0722][i], 0);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def test_dark_theme_is_readable(page: Any) -> None:
    """Point 10: selected rows and the "available" badge at >= 4.5:1 in the dark theme."""
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme',"
                  " {theme: 'JupyterLab Dark'})")
    page.wait_for_selector("body[data-jp-theme-light='false']", state="attached", timeout=20_000)
    page.wait_for_timeout(500)
    try:
        open_panel(page)
        panel_search(page, f"zen.{NIGHT}.*")
        wait_searched(page)
        page.locator(ROW).nth(1).locator("input[type=checkbox]").check()
        page.locator(ROW).nth(2).click()
        page.locator(f"{PANEL} .jp-HeraStage-badge.jp-mod-ok").first.wait_for()
        page.mouse.move(0, 0)  # no hover colour on the rows
        selected = page.evaluate(CONTRAST_JS, f"{PANEL} .jp-HeraStage-gridRow.jp-mod-selected"
                                 " [role=gridcell]:nth-child(2)")
        badge = page.evaluate(CONTRAST_JS, f"{PANEL} .jp-HeraStage-badge.jp-mod-ok")
        screenshot(page, "panel-dark-theme", PANEL)
        assert selected >= 4.5, selected
        assert badge >= 4.5, badge
    finally:
        page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme',"
                      " {theme: 'JupyterLab Light'})")
        page.wait_for_selector("body[data-jp-theme-light='true']", state="attached")


def test_the_folder_dialog_opens_with_nothing_selected_and_values_copy(page: Any) -> None:
    """Point 15: the folder dialog has nothing selected; a file's full path and checksums copy."""
    open_panel(page)
    page.get_by_role("button", name="Choose the destination folder").click()
    dialog = page.locator(".jp-Dialog .jp-Open-Dialog")
    dialog.locator(".jp-DirListing-item").first.wait_for()
    page.wait_for_timeout(300)
    assert dialog.locator(".jp-DirListing-item.jp-mod-selected").count() == 0
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-reject").click()
    page.locator(".jp-Dialog").wait_for(state="detached")

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    panel_search(page, f"zen.{NIGHT}.*")
    wait_searched(page)
    page.locator(ROW).first.click()
    detail = page.locator(f"{PANEL} .jp-HeraStage-detail")
    detail.get_by_role("button", name="Copy the md5 checksum").click()
    md5 = page.evaluate("() => navigator.clipboard.readText()")
    assert re.fullmatch(r"[0-9a-f]{32}", md5) and md5 in detail.inner_text()
    detail.get_by_role("button", name="Copy the full path on onsite").click()
    path = page.evaluate("() => navigator.clipboard.readText()")
    assert path.startswith("/") and Path(path).is_file()
    page.keyboard.press("Escape")


def test_state_is_kept_across_a_reload_and_counts_follow_an_ingest(
        page: Any, lab_server: LabServer) -> None:
    """Point 12: query, kind, sort, destination and method survive a reload; the archive's
    counts follow an ingest done elsewhere."""
    open_panel(page)
    page.select_option(f"{PANEL} #jp-HeraStage-kind", "observations")
    panel_search(page, "session:2457645")
    wait_searched(page)
    header = page.locator(f"{PANEL} [role=columnheader] button", has_text="Start JD")
    header.click()
    header.click()
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=descending]")
    page.fill(f"{PANEL} #jp-HeraStage-destination", "kept/here")
    page.select_option(f"{PANEL} #jp-HeraStage-method", "symlink")
    page.reload()
    page.wait_for_selector(".lm-TabBar-tab[data-id='hera-stage-panel']")
    open_panel(page)
    assert page.input_value(f"{PANEL} .jp-HeraStage-query") == "session:2457645"
    assert page.input_value(f"{PANEL} #jp-HeraStage-kind") == "observations"
    assert page.input_value(f"{PANEL} #jp-HeraStage-destination") == "kept/here"
    assert page.input_value(f"{PANEL} #jp-HeraStage-method") == "symlink"
    page.locator(f"{PANEL} .jp-HeraStage-searchButton").click()
    page.wait_for_selector(f"{PANEL} [role=columnheader][aria-sort=descending]")
    page.select_option(f"{PANEL} #jp-HeraStage-kind", "files")
    page.select_option(f"{PANEL} #jp-HeraStage-method", "copy")

    # An ingest done elsewhere (here: the REST API, as the CLI does): the counts follow.
    counts = page.locator(f"{PANEL} .jp-HeraStage-counts")
    before = lab_server.api("status")["counts"]["files"]
    counts.get_by_text(f"{before:,} files").wait_for()
    store = Path(lab_server.archive.stores["onsite"]["path"])
    (store / "notes" / "late-note.txt").write_text("ingested while the panel was open\n")
    reply = lab_server.api("ingest", {"store": "onsite", "paths": ["notes/late-note.txt"]})
    assert reply["errors"] == [], reply
    counts.get_by_text(f"{before + 1:,} files").wait_for(timeout=30_000)


# ----- staged data (issue 18, point 4) -----------------------------------------------------------
STAGED = f"{PANEL} .jp-HeraStage-staged"


def stage_by_rest(server: LabServer, name: str, destination: str, **options: Any) -> str:
    """Stage ``name`` into ``destination`` through the REST API and wait for it; the staged
    folder's absolute path (as GET staged names it)."""
    job = server.api("stage", {"names": [name], "destination": destination, **options})
    deadline = time.monotonic() + 60
    while (job := server.api(f"jobs/{job['id']}"))["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "succeeded", job
    return job["destination"]


def staged_card(page: Any, destination: str) -> Any:
    return page.locator(f"{STAGED} .jp-HeraStage-stagedFolder[data-destination='{destination}']")


def test_clean_expired_removes_the_staged_folder_and_keeps_a_file_beside_it(
        page: Any, lab_server: LabServer) -> None:
    """Issue 18, point 4: the panel lists a staged folder as expired; "Clean expired" shows
    the dry run, and once confirmed the folder is gone from disk and from the list, while a
    file of the user's beside it stays. A stale "Remove" shows the server's refusal."""
    names = night_names(lab_server)
    workspace = lab_server.archive.workspace
    expiring = stage_by_rest(lab_server, names[0], "expiring/night", expires_in=1)
    other = stage_by_rest(lab_server, names[1], "kept/night")
    notes = workspace / "expiring" / "notes.txt"
    notes.write_text("my notes, beside the staged folder")
    time.sleep(1.1)  # past the expiry

    open_panel(page)
    page.locator(STAGED).get_by_role("button", name="Refresh the staged folders").click()
    card = staged_card(page, expiring)
    page.wait_for_selector(f"{STAGED} .jp-HeraStage-stagedFolder"
                           f"[data-destination='{expiring}'][data-expired=true][data-state=intact]")
    assert "expired" in card.inner_text() and "1 file" in card.inner_text()
    assert staged_card(page, other).get_attribute("data-expired") == "false"
    card.scroll_into_view_if_needed()
    screenshot(page, "panel-staged", STAGED)
    # The main area's "Staged data" page shows the same folders.
    page.locator(f"{PANEL} .jp-HeraStage-openMain").click()
    main = page.locator(MAIN)
    main.locator(".jp-HeraStage-mainTab", has_text="Staged data").click()
    main.locator(f".jp-HeraStage-stagedFolder[data-destination='{expiring}']"
                 "[data-expired=true]").wait_for()

    page.locator(f"{STAGED} .jp-HeraStage-cleanExpired").click()
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_text("Clean expired staged folders?").wait_for()
    plan = dialog.locator(f".jp-HeraStage-cleanPlan li[data-destination='{expiring}']")
    assert "1 file" in plan.inner_text(), plan.inner_text()
    assert dialog.locator(".jp-HeraStage-cleanPlan > ul > li").count() == 1  # not kept/night
    assert (workspace / "expiring" / "night").is_dir()  # a dry run so far
    screenshot(page, "panel-staged-confirm", ".jp-Dialog-content")
    dialog.get_by_role("button", name="Remove the staged files").click()
    dialog.wait_for(state="detached")
    page.wait_for_selector(f"{STAGED} .jp-HeraStage-cleanOutcome[data-kind=cleaned]")
    outcome = page.locator(f"{STAGED} .jp-HeraStage-cleanOutcome")
    assert "Removed 1 file" in outcome.inner_text()
    assert outcome.evaluate("node => node === document.activeElement")  # the focus follows
    card.wait_for(state="detached")
    assert not (workspace / "expiring" / "night").exists()
    assert notes.read_text() == "my notes, beside the staged folder"
    listed = [f["destination"] for f in lab_server.api("staged")["folders"]]
    assert expiring not in listed and other in listed

    # Cleaned elsewhere (the CLI, say) while the panel still lists it: "Remove" shows the
    # server's refusal, and the list catches up.
    lab_server.api("staged/clean", {"folders": [other]})
    staged_card(page, other).get_by_role("button", name="Remove the staged files of").click()
    refusal = page.locator(f"{STAGED} .jp-HeraStage-cleanOutcome[data-kind=error][role=alert]")
    refusal.get_by_text("is not one of your staged folders").wait_for()
    staged_card(page, other).wait_for(state="detached")
