"""A real notebook (nbclient) in a real kernel started by a real ``jupyter server`` with the
extension: ``%load_ext``, ``%stage --wait``, the widgets' model state, failures and bad input.

The kernel is started by the server itself, so the client finds its server with no
configuration, exactly as in a user's notebook. One notebook run covers the whole story (a
server and a kernel start once: the module stays well under a minute).
"""

from __future__ import annotations

from typing import Any

import pytest

from .notebook_fixtures import *  # noqa: F403
from .notebook_fixtures import error_of, notebook, run_notebook, text_of, widget_states

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

THREE_QUERY = "zen.2457645.10000.* OR zen.2457645.10745.*"  # 3 files: 2 + 1 polarisation
NAME = "zen.2457645.10000.xx.HH.uvh5"

# (key, source, may raise: the test of a cell that must not raise checks it has no error, so
# one broken cell fails its own test, not the whole notebook)
CELLS: list[tuple[str, str, bool]] = [
    ("load", "%load_ext hera_stage_ext", False),
    ("discover", "import os\nfrom hera_stage_ext.client import Client\nclient = Client()\n"
                 "print(client.server.source, client.server.url, os.environ['JPY_PARENT_PID'])",
     False),
    ("stage", f"job = %stage night1 {THREE_QUERY} --wait", False),
    ("read", f"data = open('night1/2457645/{NAME}', 'rb').read()\n"
             f"assert len(data) == client.info('{NAME}').size > 0\n"
             "w = job.widget\n"
             "print(job.state, job.files_done, job.files_total, w.state, w.files_bar.value,\n"
             "      w.files_bar.max, w.bytes_bar.value, w.bytes_bar.model_id,"
             " w.cancel_button.model_id)", False),
    ("launch", "job2 = %stage night3 session:2457646", False),
    ("busy", "import time\nt0 = time.monotonic()\n"
             "while not job2.widget.finished and time.monotonic() - t0 < 30:\n"
             "    time.sleep(0.1)  # this cell keeps the kernel busy; the widget's thread works\n"
             "w2 = job2.widget\n"
             "print(w2.state, w2.files_bar.value, w2.files_bar.max, w2.bytes_bar.value,"
             " len(w2.log_tail) > 0)", False),
    ("conflict", "import pathlib\np = pathlib.Path('night2/2457645')\n"
                 f"p.mkdir(parents=True)\n(p / '{NAME}').write_bytes(b'not the same bytes')",
     False),
    ("fails", "%stage night2 zen.2457645.10000.* --wait", True),
    ("refused", "%stage ../outside zen.* --wait", True),
    ("unknown", "%stage log 999", True),
    ("unreachable", "%stage jobs --url http://127.0.0.1:9/", True),
    ("wrongtoken", "%stage jobs --token wrong", True),
    ("badid", "%stage cancel abc", True),
    ("cellmagic", '%%stage night5 --wait\n{"name-matches": "zen.2457644.10000.%"}', False),
    ("jobs", "jobs = %stage jobs\nprint(len(jobs), sorted(j.state for j in jobs))", False),
    ("log", "get_ipython().run_line_magic('stage', f'log {job.id}')", False),
    ("search", "res = %stage search zen.2457644.1*\nprint(len(res), res.total, res.names[0])",
     False),
    ("markers", "from hera_stage_ext.widgets import MarkerWatcher, SearchBrowser\n"
                "print(MarkerWatcher('night1').state, MarkerWatcher('night2').state,"
                " MarkerWatcher('nowhere', start=False).state)", False),
    ("browser", "import os\n"
                "sb = SearchBrowser('zen.2457644.1*', destination='night4')\n"
                "print(sb.status.value)\nbefore = len(client.jobs())\n"
                "sb.stage_button.click()  # a preview: nothing moves\n"
                "print(len(client.jobs()) - before, os.path.exists('night4'),"
                " sb.confirm_button.disabled, repr(sb.confirm_button.description))\n"
                "print(sb.preview_view.value)\n"
                "sb.destination.value = 'night4b'  # the preview no longer says what happens\n"
                "print(sb.confirm_button.disabled, sb.confirm(), len(client.jobs()) - before)\n"
                "sb.destination.value = 'night4'\nsb.stage_button.click()\n"
                "sb.confirm_button.click()  # now it stages\n"
                "watcher = MarkerWatcher('night4')\n"
                "print(sb.jobs[0].wait(30).state, watcher.wait(30),"
                " watcher.job_id in (None, sb.jobs[0].job_id), sb.confirm_button.disabled,"
                " len(client.jobs()) - before, sb.confirm_button.model_id)", True),
    ("bare", "%stage night6 zen.2457646.1*", True),
    ("help", "%stage --help", True),
    ("finished", "done = MarkerWatcher('night1')\n"
                 "print(done.state, done.job_id == job.id, repr(done.files_label.value))", True),
]


@pytest.fixture(scope="module")
def executed(live_server) -> dict[str, Any]:
    nb = notebook(*(src for _, src, _ in CELLS))
    for cell, (_, _, raises) in zip(nb.cells, CELLS):
        if raises:
            cell.metadata["tags"] = ["raises-exception"]
    run_notebook(live_server, nb)
    return {"nb": nb, **{key: cell for (key, _, _), cell in zip(CELLS, nb.cells)}}


def test_discovers_its_parent_server_with_no_configuration(executed, live_server):
    assert text_of(executed["discover"]).split() == ["parent", live_server.url,
                                                     str(live_server.pid)]


def widget_views(cell: Any) -> list[str]:
    """The model ids of the widgets a cell's outputs show."""
    return [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
            for o in cell.outputs
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def test_stage_wait_then_read_and_the_widget_reached_100(executed, live_server):
    assert error_of(executed["stage"]) is None
    state, done, total, wstate, fvalue, fmax, bvalue, model_id, button_id = \
        text_of(executed["read"]).split()
    assert (state, done, total, wstate) == ("succeeded", "3", "3", "succeeded")
    assert (fvalue, fmax, float(bvalue)) == ("3", "3", 100.0)
    assert (live_server.root_dir / "night1" / "2457645" / NAME).exists()
    # The model state the frontend received over the comms, as nbclient recorded it.
    model = widget_states(executed["nb"])[model_id]
    assert model["model_name"] == "FloatProgressModel"
    assert model["state"]["value"] == model["state"]["max"] == 100.0
    assert model["state"]["bar_style"] == "success"
    # The widget was displayed by the magic.
    assert len(widget_views(executed["stage"])) == 1
    # A finished job's button is disabled and unstyled: nothing invites a click.
    button = widget_states(executed["nb"])[button_id]["state"]
    assert button["disabled"] is True and button["button_style"] == ""
    assert button["description"] == "Succeeded"


def test_widget_follows_the_job_while_other_cells_run(executed):
    assert error_of(executed["launch"]) is None
    state, fvalue, fmax, bvalue, has_log = text_of(executed["busy"]).split()
    assert (state, fvalue, fmax, float(bvalue), has_log) == ("succeeded", "10", "10", 100.0,
                                                             "True")


def test_a_failing_stage_raises_with_the_servers_message(executed):
    error = error_of(executed["fails"])
    assert error is not None and error["ename"] == "JobFailed"
    assert "failed" in error["evalue"] and "FAILED" in error["evalue"]
    assert NAME in error["evalue"]
    assert len(error["traceback"]) <= 5  # the job line and its errors, no traceback wall
    refused = error_of(executed["refused"])
    assert refused["ename"] == "ApiError" and "outside the allowed roots" in refused["evalue"]


@pytest.mark.parametrize(("key", "ename", "words"), [
    ("unknown", "ApiError", "no job 999"),
    ("unreachable", "ClientError", "cannot reach the Jupyter server"),
    ("wrongtoken", "ApiError", "wrong or missing token"),
])
def test_bad_input_is_a_one_line_error(executed, key, ename, words):
    error = error_of(executed[key])
    assert error is not None, executed[key].outputs
    assert error["ename"] == ename and words in error["evalue"]
    assert len(error["traceback"]) == 1 and words in error["traceback"][0], error["traceback"]


def test_bad_magic_syntax_is_ipythons_one_line_usage_error(executed):
    assert error_of(executed["badid"]) is None
    err = text_of(executed["badid"], "stderr")
    assert err.count("\n") == 1 and err.startswith("UsageError: %stage cancel ID: a job id is")


def test_cell_magic_jobs_log_search_markers_browser(executed):
    assert error_of(executed["cellmagic"]) is None
    # The finished job's widget is the cell's one output (no table of the job beside it).
    assert len(widget_views(executed["cellmagic"])) == len(executed["cellmagic"].outputs) == 1
    count, states = text_of(executed["jobs"]).split(" ", 1)
    assert int(count) == 4 and "'failed'" in states
    assert "succeeded" in text_of(executed["log"])
    assert text_of(executed["search"]).split() == ["9", "9", "zen.2457644.10000.xx.HH.uvh5"]
    assert text_of(executed["markers"]).split() == ["succeeded", "errors", "none"]

def test_search_browser_previews_then_stages_only_on_confirm(executed, live_server):
    assert error_of(executed["browser"]) is None, executed["browser"].outputs
    status, previewed, preview, withdrawn, result = text_of(executed["browser"]).splitlines()
    assert status.startswith("9 file(s) match")
    # One click on "Stage…" launched nothing and wrote nothing: it showed a preview.
    assert previewed.split(" ", 3) == ["0", "False", "False", "'Stage 9 file(s)'"]
    assert "Stage 9 file(s)" in preview and "KiB" in preview and "night4" in preview
    assert "zen.2457644.1*" in preview  # the query it stages, as it will run
    # Another folder: the preview is withdrawn and a confirm does nothing.
    assert withdrawn.split() == ["True", "None", "0"]
    state, marker, same_job, confirm_disabled, launched, confirm_id = result.split()
    assert (state, marker, same_job, launched) == ("succeeded", "succeeded", "True", "1")
    assert not (live_server.root_dir / "night4b").exists()
    assert confirm_disabled == "True"
    confirm = widget_states(executed["nb"])[confirm_id]["state"]
    assert confirm["disabled"] is True and confirm["button_style"] == ""


def test_a_bare_stage_shows_one_live_widget_and_no_frozen_table(executed):
    cell = executed["bare"]
    assert error_of(cell) is None
    views = widget_views(cell)
    assert len(views) == 1 and len(cell.outputs) == 1, cell.outputs
    assert not any("text/html" in o.get("data", {}) for o in cell.outputs)


def test_stage_help_prints_the_usage(executed):
    assert error_of(executed["help"]) is None
    text = text_of(executed["help"])
    assert text.startswith("%stage DEST QUERY [--method M]") and "%stage watch DIR" in text


def test_marker_watcher_on_a_finished_folder_shows_its_numbers(executed):
    assert error_of(executed["finished"]) is None
    state, same_job, label = text_of(executed["finished"]).split(" ", 2)
    assert (state, same_job) == ("succeeded", "True")
    assert label.startswith("'3 / 3, ") and "(100%)" in label


# ----- widgets and magic parsing without a kernel (fast) ----------------------------------
class FakeClient:
    """Answers a job's progress from a script of states, and its log line by line."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states, self.calls, self.cancelled = states, 0, False

    def copy(self) -> FakeClient:
        return self

    def job(self, job_id: int):
        from hera_stage_ext.client import Job

        state = self.states[min(self.calls, len(self.states) - 1)]
        self.calls += 1
        return Job({"id": job_id, "method": "copy", "destination": "d", "files_total": 4,
                    "bytes_total": 4000, "files_failed": 0, "files_skipped": 0, "error": "",
                    **state})

    def log(self, job_id: int, offset: int = 0) -> tuple[str, int]:
        return ("", offset) if offset >= self.calls else (f"line {offset}\n", offset + 1)

    def cancel(self, job_id: int):
        self.cancelled = True
        return self.job(job_id)


def test_job_progress_follows_a_job_to_its_end_in_a_thread():
    from hera_stage_ext.widgets import JobProgress

    fake = FakeClient([{"state": "queued", "files_done": 0, "bytes_done": 0},
                       {"state": "running", "files_done": 2, "bytes_done": 1000,
                        "rate_bytes_per_s": 500.0, "eta_s": 6.0},
                       {"state": "succeeded", "files_done": 4, "bytes_done": 4000}])
    progress = JobProgress(3, fake, interval=0.01)
    job = progress.wait(10)
    assert job.state == "succeeded" and not progress._thread.is_alive()
    assert (progress.files_bar.value, progress.files_bar.max) == (4, 4)
    assert progress.bytes_bar.value == 100.0 and progress.bytes_bar.bar_style == "success"
    assert progress.cancel_button.disabled and "line 0" in progress.log_view.value
    assert progress.bytes_label.value == "3.9 KiB / 3.9 KiB (100%)"
    calls = fake.calls
    import time

    time.sleep(0.1)
    assert fake.calls == calls  # the thread stopped with the job


def test_job_progress_cancel_button():
    from hera_stage_ext.widgets import JobProgress

    fake = FakeClient([{"state": "running", "files_done": 1, "bytes_done": 10}])
    progress = JobProgress(3, fake, start=False)
    progress.cancel_button.click()
    assert fake.cancelled and progress.cancel_button.description == "Cancelling"


class NotMine:
    def job(self, job_id: int):
        from hera_stage_ext.client import ApiError

        raise ApiError(404, f"no job {job_id}")  # a stage launched by someone else


def test_marker_watcher_on_markers_alone(tmp_path):
    from hera_stage_ext.widgets import MarkerWatcher

    d = tmp_path / "dest"
    d.mkdir()
    (d / "STAGING-IN-PROGRESS").write_text("job 12\nowner someone\n")
    watcher = MarkerWatcher(d, NotMine(), interval=0.05)
    assert watcher.state == "in-progress" and watcher.job_id == 12
    (d / "STAGING-ERRORS").write_text("/x/a: checksum mismatch\n")
    (d / "STAGING-IN-PROGRESS").unlink()
    assert watcher.wait(10) == "errors"
    assert watcher.errors == ["/x/a: checksum mismatch"] and "mismatch" in watcher.log_view.value
    assert "job 12" in watcher.title.value


@pytest.mark.parametrize(("line", "words", "options"), [
    ('night1 {"name-matches": "zen.%"} --wait --method=hardlink',
     ["night1", '{"name-matches":', '"zen.%"}'], {"wait": True, "method": "hardlink"}),
    ('n1 "a b" -type:uv --method symlink --dry-run', ["n1", '"a', 'b"', "-type:uv"],
     {"method": "symlink", "dry_run": True}),
    ("jobs --url http://h:1/ --token t", ["jobs"], {"url": "http://h:1/", "token": "t"}),
])
def test_magic_line_parsing(line, words, options):
    from hera_stage_ext.magics import parse_line

    assert parse_line(line) == (words, options)


def test_magic_rejects_unknown_options():
    from IPython.core.error import UsageError

    from hera_stage_ext.magics import parse_line

    with pytest.raises(UsageError, match="unknown option --bogus"):
        parse_line("n1 zen.* --bogus")
    with pytest.raises(UsageError, match="--method needs a value"):
        parse_line("n1 zen.* --method")


def test_job_progress_retries_a_cancelled_job_and_follows_it(slow_server):
    """The widget on a real server: a cancelled job shows an enabled Retry; a click queues
    what it did not stage and the widget follows the job to its end."""
    from hera_stage_ext.client import Client
    from hera_stage_ext.widgets import JobProgress

    client = Client(slow_server.url, slow_server.token)
    names = [f["name"] for f in client.search("zen.*", limit=3).results]
    assert len(names) == 3
    job = client.stage("retry-widget", names=names)
    client.cancel(job["id"])
    progress = JobProgress(job["id"], client, interval=0.05)
    assert progress.wait(60)["state"] == "cancelled"
    assert progress.retry_button.layout.display is None and not progress.retry_button.disabled
    progress.retry_button.click()
    assert progress.retry_button.layout.display == "none" and not progress.cancel_button.disabled
    assert progress.wait(60)["state"] == "succeeded"
    assert progress.bytes_bar.value == 100.0 and progress.retry_button.disabled
    assert client.job(job["id"])["files_done"] + client.job(job["id"])["files_skipped"] == 3
