"""The side panel with 10,000+ result rows, in a real browser: every row is reachable by
scrolling (the table pages from the server's cursor) while a staging job updates the jobs list.

A functional check only: the frame timings are measured by benchmarks/panel_frames.py, not
asserted here (the machines we test on are too noisy for timing assertions).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .browser_fixtures import (  # noqa: F401
    PANEL,
    LabServer,
    big_lab_server,
    loaded_rows,
    open_lab_page,
    open_panel,
    panel_search,
    screenshot,
    scroll_results_to_end,
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


def zen_names(server: LabServer) -> list[str]:
    """Every ``zen.*`` name in the catalogue's stores, from the disk (the onsite store holds
    all of them, files and MIRIAD directories)."""
    onsite = Path(server.archive.stores["onsite"]["path"])
    return sorted(p.name for p in onsite.glob("*/zen.*"))


def test_ten_thousand_rows_reachable_by_scrolling(big_lab_server: LabServer) -> None:
    names = zen_names(big_lab_server)
    assert len(names) >= 10_000
    with open_lab_page(big_lab_server) as page:
        open_panel(page)
        # A job runs (and updates the jobs list) while the rows load.
        job = big_lab_server.api("stage", {"destination": "scrolled",
                                           "query": "zen.2457645.1*"})
        job_id = job["id"]
        panel_search(page, "zen.*")
        page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(
            re.compile(r"of [\d,]+ files")).wait_for()
        first = loaded_rows(page)
        assert first is not None and first[1] == len(names)
        assert first[0] < len(names)  # paged, not all at once
        page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}']").wait_for()

        scroll_results_to_end(page)

        assert loaded_rows(page) == (len(names), len(names), False)
        rows = page.locator(f"{PANEL} .jp-HeraStage-gridRow")
        # Virtualized: only a window of rows is in the DOM, and it holds the last one.
        assert rows.count() < 200
        last = page.locator(f"{PANEL} .jp-HeraStage-gridRow[aria-rowindex='{len(names) + 1}']")
        assert last.locator("[role=gridcell]:nth-child(2)").inner_text() == names[-1]
        page.locator(f"{PANEL} .jp-HeraStage-job[data-job-id='{job_id}'][data-state=succeeded]"
                     ).wait_for(timeout=60_000)
        screenshot(page, "perf-10000-rows-end", PANEL)
