"""The notebook widgets (``%stage`` and its ``JobProgress``, ``MarkerWatcher``, ``SearchBrowser``)
rendered by JupyterLab in a real browser (Debian's Chromium via Playwright), with a kernel that
the lab starts and that finds its server by itself (``JPY_PARENT_PID``, no configuration).

The screenshot lands in test-output/screenshots/widgets-*.png for a person to look at.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from .browser_fixtures import LabServer, lab_server, page, screenshot  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

NOTEBOOK = "widgets.ipynb"
DEST = "nbdest"
QUERY = "zen.2457644.1*"


# pytest-jupyter's autouse fixtures close "their" event loop after each test, but the sync
# Playwright API keeps a loop running in this thread for the whole module: opt out here.
@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    return None


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    return None


def _cell(source: str) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": source}


def put_notebook(server: LabServer, path: str, sources: list[str]) -> None:
    """Create the notebook through the contents API (as the lab's "New notebook" would)."""
    model = {"type": "notebook", "format": "json", "content": {
        "nbformat": 4, "nbformat_minor": 5, "cells": [_cell(s) for s in sources],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
    }}
    request = urllib.request.Request(
        f"{server.url}/api/contents/{path}", data=json.dumps(model).encode(), method="PUT",
        headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status in (200, 201)


def matching_names(server: LabServer) -> list[str]:
    return sorted(f["name"] for f in server.api("search", {"query": QUERY,
                                                           "limit": 1000})["results"])


def test_stage_magic_widgets_render_in_lab(page: Any, lab_server: LabServer) -> None:
    names = matching_names(lab_server)
    assert names
    put_notebook(lab_server, NOTEBOOK, [
        "%load_ext hera_stage_ext",
        f"job = %stage {DEST} {QUERY} --wait\njob.state, job.files_done",
        f"%stage watch {DEST}",
        ("from hera_stage_ext.widgets import SearchBrowser\n"
         "SearchBrowser('zen.2457645.1*', destination='nbdest2', limit=8)"),
    ])
    page.evaluate(f"window.jupyterapp.commands.execute('docmanager:open', {{path: {NOTEBOOK!r}}})")
    panel = page.locator(".jp-NotebookPanel:visible")
    panel.wait_for()
    # Wait for the kernel the lab started, then run every cell.
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel;"
        " return k && k.connectionStatus === 'connected' && k.status === 'idle'; }",
        timeout=60_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    # The JobProgress widget, as rendered: both bars full and green, the labels at the end.
    cells = panel.locator(".jp-Cell")
    job_output = cells.nth(1).locator(".jp-OutputArea")
    job_output.locator(".widget-html", has_text="succeeded").first.wait_for(timeout=90_000)
    bars = job_output.locator(".widget-hprogress")
    assert bars.count() == 2
    for i in range(2):
        bar = bars.nth(i).locator(".progress-bar")
        page.wait_for_function("el => el.style.width === '100%'", arg=bar.element_handle())
        assert "progress-bar-success" in (bar.get_attribute("class") or "")
    labels = job_output.locator(".widget-label")
    label_text = " | ".join(labels.all_inner_texts())
    assert f"{len(names)} / {len(names)}" in label_text, label_text
    assert "(100%)" in label_text, label_text
    assert re.search(r"\bsucceeded\b", label_text), label_text
    finished_button = job_output.locator(".widget-button", has_text="Succeeded")
    # Disabled, and grey: no coloured "live" style on a button that does nothing.
    assert finished_button.is_disabled() and "mod-" not in (finished_button.get_attribute(
        "class") or "")
    # The cell's own result: the kernel's view of the same job.
    job_output.get_by_text(f"('succeeded', {len(names)})").wait_for()

    # The MarkerWatcher on the destination (STAGING-SUCCEEDED, by the job), rendered.
    watch_output = cells.nth(2).locator(".jp-OutputArea")
    # (.first: the magic displays the watcher and also returns it, so a bare ``%stage watch``
    # as a cell's last line shows it twice.)
    watch_output.locator(".widget-html", has_text="staging succeeded").first.wait_for(
        timeout=30_000)
    watcher_bar = watch_output.locator(".widget-hprogress .progress-bar").first
    page.wait_for_function("el => el.style.width === '100%'", arg=watcher_bar.element_handle())

    # The SearchBrowser: query box, the status line and a table of results.
    browser_output = cells.nth(3).locator(".jp-OutputArea")
    query_box = browser_output.locator(".widget-text input").first
    query_box.wait_for(timeout=30_000)
    assert query_box.input_value() == "zen.2457645.1*"
    browser_output.get_by_text(re.compile(r"\d+ file\(s\) match")).wait_for()
    assert browser_output.locator("table tr").count() > 1
    stage_button = browser_output.locator(".widget-button", has_text="Stage…")
    assert stage_button.is_enabled()

    page.wait_for_timeout(300)  # let the last layout settle for the picture
    screenshot(page, "widgets-notebook", ".jp-NotebookPanel:visible")
    # "Stage…" previews (nothing moves): the plan and its confirm button show.
    stage_button.click()
    browser_output.get_by_text(re.compile(r"Stage \d+ file\(s\), [\d.]+ KiB")).wait_for()
    confirm = browser_output.locator(".widget-button", has_text=re.compile(r"Stage \d+ file"))
    assert confirm.is_visible() and confirm.is_enabled()
    assert not (lab_server.archive.workspace / "nbdest2").exists()
    cells.nth(3).scroll_into_view_if_needed()
    # The panel's "job finished" toast would cover the stage button in this picture.
    page.add_style_tag(content=".Toastify { display: none !important; }")
    screenshot(page, "widgets-search-browser", ".jp-NotebookPanel:visible .jp-Cell >> nth=3")

    # The files are there for the next cell; the server agrees on the job.
    staged = sorted(p.name for p in (lab_server.archive.workspace / DEST).rglob("zen.*"))
    assert staged == names
    jobs = lab_server.api("jobs")
    jobs = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
    mine = [j for j in jobs if str(j.get("destination", "")).rstrip("/").endswith(DEST)]
    assert mine and mine[0]["state"] == "succeeded"
