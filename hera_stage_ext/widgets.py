"""ipywidgets for notebooks: ``JobProgress``, ``SearchBrowser`` and ``MarkerWatcher``.

They are faces over ``client.Client`` (no domain logic). ``JobProgress`` and ``MarkerWatcher``
follow their job from a background thread that polls the REST API and sets widget traits;
ipywidgets sends trait changes from any thread over the kernel's comms, so the widgets move
while the kernel is idle and while other cells run. The thread stops when the job ends.
``SearchBrowser`` previews a stage (a dry run) and moves bytes only on its confirm button, as
the JupyterLab panel does. A finished job's buttons are disabled and unstyled: nothing about
them invites a click.
"""

from __future__ import annotations

import contextvars
import html
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import ipywidgets as w

from .client import (
    Client, ClientError, Job, SearchResults, StagePlan, human_duration, human_size,
)
from .states import JobState, MarkerState

_BAR_STYLE = {JobState.SUCCEEDED: "success", JobState.FAILED: "danger",
              JobState.CANCELLED: "warning"}
#: Consecutive polling errors after which a widget gives up (the last one is shown).
MAX_POLL_ERRORS = 20


def _start_thread(target: Any, name: str) -> threading.Thread:
    # Run in a copy of the current context: ipykernel keeps the parent message in a context
    # variable, so the comm messages the thread sends belong to the cell that made the widget.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread


def _client(client: Client | None) -> Client:
    return (client or Client()).copy()


def _finished_button(button: w.Button, description: str) -> None:
    """A button whose work is over: disabled and unstyled (a coloured button looks live even
    when disabled), saying how things ended."""
    button.disabled = True
    button.button_style = ""
    button.icon = ""
    button.description = description
    button.tooltip = "finished: nothing to do here"


def _error_html(message: str) -> str:
    return f"<span style='color:#c00'>{html.escape(message)}</span>"


class JobProgress(w.VBox):
    """A job's live progress: files and bytes bars, rate, ETA, state, the tail of its log and a
    cancel button. ``JobProgress(job_or_id, client=None)``; ``wait()`` blocks until the end."""

    def __init__(self, job: Job | dict[str, Any] | int, client: Client | None = None, *,
                 interval: float = 0.5, log_lines: int = 12, start: bool = True) -> None:
        self.client = _client(client)
        self.job_id = int(job["id"] if isinstance(job, dict) else job)
        self.job: Job | None = Job(job) if isinstance(job, dict) else None
        self.interval = interval
        self.error: str | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_offset = 0
        self._log_tail: deque[str] = deque(maxlen=log_lines)

        self.title = w.HTML()
        self.files_bar = w.IntProgress(value=0, min=0, max=1, description="files",
                                       layout=w.Layout(width="auto", flex="1"))
        self.bytes_bar = w.FloatProgress(value=0.0, min=0.0, max=100.0, description="bytes",
                                         layout=w.Layout(width="auto", flex="1"))
        self.files_label = w.Label()
        self.bytes_label = w.Label()
        self.rate_label = w.Label()
        self.log_view = w.HTML(layout=w.Layout(max_height="14em", overflow="auto"))
        self.cancel_button = w.Button(description="Cancel", icon="stop",
                                      button_style="warning",
                                      tooltip="Cancel this job (staged files stay)")
        self.cancel_button.on_click(lambda _button: self.cancel())
        # Shown once the job has failed or been cancelled: queue again what it did not stage.
        self.retry_button = w.Button(description="Retry", icon="redo", button_style="primary",
                                     tooltip="Queue again the files this job did not stage",
                                     layout=w.Layout(display="none"))
        self.retry_button.on_click(lambda _button: self.retry())
        super().__init__(children=[
            self.title,
            w.HBox([self.files_bar, self.files_label]),
            w.HBox([self.bytes_bar, self.bytes_label]),
            w.HBox([self.rate_label, self.cancel_button, self.retry_button]),
            self.log_view,
        ])
        if self.job is not None:
            self._render(self.job)
        if start:
            self.start()

    # ----- state ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.job["state"] if self.job is not None else "unknown"

    @property
    def finished(self) -> bool:
        return self.job is not None and self.job.finished

    @property
    def log_tail(self) -> list[str]:
        return list(self._log_tail)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = _start_thread(self._run, f"hera-stage job {self.job_id}")

    def stop(self) -> None:
        """Stop following the job (the job itself goes on)."""
        self._stop.set()

    def refresh(self) -> Job:
        """Ask the server now and show the answer."""
        with self._lock:
            job = self.client.job(self.job_id)
            self._read_log(until_quiet=job.finished)
            self._render(job)
            # After the render: whoever sees ``finished`` also sees the bars at the end.
            self.job = job
            return job

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends (TimeoutError after ``timeout`` s); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {self.job_id} is still {self.state} after {timeout} s")
            self._thread.join(0.2 if left is None else min(0.2, left))
        job = self.job
        if job is None or not job.finished:
            job = self.refresh()
        if not job.finished:
            return self.client.wait(self.job_id, timeout=timeout)
        # From the waiting (main) thread, so the final state goes out with this cell too.
        for bar in (self.files_bar, self.bytes_bar):
            bar.send_state()
        return job

    def cancel(self) -> Job | None:
        try:
            with self._lock:
                job = self.client.cancel(self.job_id)
        except ClientError as exc:
            self._show_error(str(exc))
            return None
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling"
        return job

    def retry(self) -> Job | None:
        """Queue again what the job did not stage (the client's retry), and follow it."""
        try:
            with self._lock:
                job = self.client.retry(self.job_id)
                self._render(job)
                self.job = job
        except ClientError as exc:
            self._show_error(str(exc))
            return None
        self.cancel_button.disabled = False
        self.cancel_button.button_style = "warning"
        self.cancel_button.icon = "stop"
        self.cancel_button.description = "Cancel"
        self.cancel_button.tooltip = "Cancel this job (staged files stay)"
        self.start()
        return job

    # ----- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                job = self.refresh()
                failures = 0
                if job.finished:
                    return
            except ClientError as exc:
                failures += 1
                self._show_error(str(exc))
                if failures >= MAX_POLL_ERRORS or getattr(exc, "status", 0) in (403, 404):
                    return
            except Exception as exc:  # a widget thread must never die silently
                self._show_error(f"{type(exc).__name__}: {exc}")
                return
            self._stop.wait(self.interval)

    def _read_log(self, until_quiet: bool) -> None:
        while True:
            text, self._log_offset = self.client.log(self.job_id, self._log_offset)
            self._log_tail.extend(text.splitlines())
            if not text or not until_quiet:
                return

    # ----- rendering ------------------------------------------------------------------------
    def _show_error(self, message: str) -> None:
        self.error = message
        self.title.value = (f"<b>job {self.job_id}</b> "
                            f"<span style='color:#c00'>{html.escape(message)}</span>")

    def _render(self, job: Job) -> None:
        state = job["state"]
        self.error = None
        self.title.value = (f"<b>job {job['id']}</b> &middot; {html.escape(job.shown_state)} "
                            "&middot; "
                            f"{html.escape(str(job.get('method')))} into "
                            f"<code>{html.escape(str(job.get('destination')))}</code>"
                            + (f" &middot; <span style='color:#c00'>"
                               f"{html.escape(job['error'])}</span>" if job.get("error") else ""))
        files_total = max(1, job.get("files_total") or 0)
        self.files_bar.max = files_total
        self.files_bar.value = min(files_total, job.get("files_done", 0))
        self.bytes_bar.value = job.percent
        style = _BAR_STYLE.get(state, "info" if state == JobState.RUNNING else "")
        self.files_bar.bar_style = self.bytes_bar.bar_style = style
        failed = f", {job['files_failed']} failed" if job.get("files_failed") else ""
        self.files_label.value = f"{job.get('files_done', 0)} / {job.get('files_total', 0)}{failed}"
        self.bytes_label.value = (f"{human_size(job.bytes_moved)} / "
                                  f"{human_size(job.get('bytes_total', 0))} ({job.percent:g}%)")
        rate = job.get("rate_bytes_per_s")
        self.rate_label.value = (f"{job.shown_state}  ·  "
                                 f"rate {human_size(rate) + '/s' if rate else '-'}  ·  "
                                 f"ETA {human_duration(job.get('eta_s'))}")
        if job.finished:
            _finished_button(self.cancel_button, state.capitalize())
        retryable = state in (JobState.FAILED, JobState.CANCELLED)
        self.retry_button.layout.display = None if retryable else "none"
        self.retry_button.disabled = not retryable
        self.log_view.value = ("<pre style='margin:0;font-size:11px'>"
                               + html.escape("\n".join(self._log_tail)) + "</pre>"
                               if self._log_tail else "")

    def __repr__(self) -> str:
        return f"<JobProgress of {self.job!r}>" if self.job else f"<JobProgress job {self.job_id}>"


class SearchBrowser(w.VBox):
    """A query box, a results table and a stage button. "Stage…" shows a preview (a dry run:
    files, bytes, missing files skipped, free space) with a confirm button; only the confirm
    moves bytes, and then shows the job's progress. Editing the query, the folder or the
    method withdraws a preview, so a confirm always stages what its preview said."""

    def __init__(self, query: str = "", client: Client | None = None, *, limit: int = 100,
                 destination: str = "", method: str = "copy") -> None:
        self.client = client or Client()
        self.limit = limit
        self.results: SearchResults | None = None
        self.plan: StagePlan | None = None
        self._planned: tuple[str, str, str] | None = None  # (query, destination, method)
        self.jobs: list[JobProgress] = []
        self.query = w.Text(value=query, placeholder="zen.2457644.* size>10k or JSON",
                            description="query", layout=w.Layout(width="60%"))
        self.search_button = w.Button(description="Search", icon="search")
        self.status = w.HTML()
        self.table = w.HTML(layout=w.Layout(max_height="24em", overflow="auto"))
        self.destination = w.Text(value=destination, placeholder="folder under your root",
                                  description="into")
        self.method = w.Dropdown(options=["copy", "hardlink", "symlink", "reflink", "contents"],
                                 value=method, description="method")
        self.stage_button = w.Button(description="Stage…", icon="download", disabled=True,
                                     tooltip="Preview what would be staged (nothing moves yet)")
        self.preview_view = w.HTML()
        self.confirm_button = w.Button(description="Stage", icon="download",
                                       button_style="primary", disabled=True,
                                       tooltip="Stage what the preview shows")
        self.discard_button = w.Button(description="Cancel", disabled=True,
                                       tooltip="Close the preview; nothing is staged")
        self.preview_box = w.VBox([self.preview_view,
                                   w.HBox([self.confirm_button, self.discard_button])],
                                  layout=w.Layout(display="none"))
        self.output = w.VBox()
        self.search_button.on_click(lambda _b: self.run_search())
        self.query.on_submit(lambda _t: self.run_search())
        self.stage_button.on_click(lambda _b: self.preview())
        self.confirm_button.on_click(lambda _b: self.confirm())
        self.discard_button.on_click(lambda _b: self._close_preview())
        for field in (self.query, self.destination, self.method):
            field.observe(self._inputs_changed, names="value")
        super().__init__(children=[
            w.HBox([self.query, self.search_button]), self.status, self.table,
            w.HBox([self.destination, self.method, self.stage_button]), self.preview_box,
            self.output,
        ])
        if query:
            self.run_search()

    def run_search(self) -> SearchResults | None:
        self._close_preview()
        try:
            self.results = self.client.search(self.query.value, limit=self.limit, count=True)
        except ClientError as exc:
            self.results = None
            self.status.value = _error_html(str(exc))
            self.table.value = ""
            self.stage_button.disabled = True
            return None
        total = self.results.total
        self.status.value = (f"{total} file(s) match" if total is not None
                             else f"{len(self.results)} file(s)")
        if total is not None and total > len(self.results):
            self.status.value += f" ({len(self.results)} shown; staging takes them all)"
        self.table.value = self.results._repr_html_()
        self.stage_button.disabled = not total
        return self.results

    def preview(self) -> StagePlan | None:
        """Show what staging the query in the box would do (a dry run; nothing moves) and
        offer the confirm button; returns the plan."""
        self._close_preview()
        if not self.destination.value:
            self.status.value = _error_html("give a destination folder")
            return None
        planned = (self.query.value, self.destination.value, self.method.value)
        try:
            plan = self.client.stage(planned[1], planned[0], method=planned[2], dry_run=True)
        except ClientError as exc:
            self.status.value = _error_html(str(exc))
            return None
        self.plan, self._planned = plan, planned
        self.preview_view.value = _plan_html(plan, planned[0])
        files = plan.get("files", 0)
        self.confirm_button.description = f"Stage {files} file(s)"
        self.confirm_button.button_style = "primary"
        self.confirm_button.icon = "download"
        self.confirm_button.tooltip = "Stage what the preview shows"
        self.confirm_button.disabled = not files or not plan.get("fits", True)
        self.discard_button.disabled = False
        self.preview_box.layout.display = None
        return plan

    def confirm(self) -> Job | None:
        """Stage what the shown preview planned; returns the job (None without a preview)."""
        if self._planned is None or self.plan is None or self.confirm_button.disabled:
            return None
        query, destination, method = self._planned
        planned_files = self.plan.get("files")
        try:
            job = self.client.stage(destination, query, method=method)
        except ClientError as exc:
            self.status.value = _error_html(str(exc))
            return None
        self._planned = None
        _finished_button(self.confirm_button, f"Launched job {job['id']}")
        self.discard_button.disabled = True
        if job.get("files_total") != planned_files:
            self.status.value = (f"the archive changed since the preview: job {job['id']} "
                                 f"stages {job.get('files_total')} file(s), not {planned_files}")
        progress = JobProgress(job, self.client)
        self.jobs.append(progress)
        self.output.children = (*self.output.children, progress)
        return job

    def _close_preview(self, note: str = "") -> None:
        self.plan, self._planned = None, None
        self.confirm_button.disabled = self.discard_button.disabled = True
        self.preview_box.layout.display = "none" if not note else None
        self.preview_view.value = note

    def _inputs_changed(self, change: Any) -> None:
        if change["owner"] is self.query and self.results is not None \
                and "stale" not in self.status.value:
            self.status.value += (" <span class='stale'>&mdash; <i>results of an earlier "
                                  "query: press Search</i></span>")
        if self._planned is not None:
            self._close_preview("<i>The query, folder or method changed: "
                                "press Stage… for a new preview.</i>")


def _plan_html(plan: StagePlan, query: str) -> str:
    """The preview: what a confirm would stage, and what it would not."""
    missing = list(plan.get("missing", []))
    lines = [f"<b>Stage {plan.get('files', 0)} file(s), {human_size(plan.get('bytes'))}</b> "
             f"into <code>{html.escape(str(plan.get('destination')))}</code> by "
             f"{html.escape(str(plan.get('method')))}",
             f"query <code>{html.escape(query)}</code>"]
    free = plan.get("free_bytes")
    if free is not None:
        lines.append(f"{human_size(free)} free there"
                     + ("" if plan.get("fits", True) else
                        " &mdash; <b style='color:#c00'>not enough space</b>"))
    if missing:
        shown = ", ".join(html.escape(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        lines.append(f"{len(missing)} skipped: no available copy ({shown}{more})")
    if not plan.get("files"):
        lines.append("<b>nothing to stage</b>")
    return "<br>".join(lines)


class MarkerWatcher(w.VBox):
    """Follows a destination folder's ``STAGING-*`` marker files (the Librarian's protocol),
    whoever launched the stage (this extension, its CLI, or older Librarian scripts), and, when
    a server is reachable and the marker names one of your jobs, that job's progress and log.

    ``state`` is ``none``, ``in-progress``, ``succeeded`` or ``errors``; ``errors`` the lines of
    ``STAGING-ERRORS``. It stops once a result marker appears (``wait()`` blocks until then).
    """

    def __init__(self, directory: str | Path, client: Client | None = None, *,
                 follow_log: bool = True, interval: float = 1.0, log_lines: int = 12,
                 start: bool = True) -> None:
        self.directory = Path(directory).expanduser()
        self.follow_log = follow_log
        self.interval = interval
        self.state = MarkerState.NONE
        self.job_id: int | None = None
        self.job: Job | None = None
        self.errors: list[str] = []
        self._client = client
        self._client_tried = client is not None
        self._log_offset = 0
        self._log_tail: deque[str] = deque(maxlen=log_lines)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.title = w.HTML()
        self.files_bar = w.IntProgress(value=0, min=0, max=1, description="files",
                                       layout=w.Layout(width="auto", flex="1"))
        self.files_label = w.Label()
        self.log_view = w.HTML(layout=w.Layout(max_height="14em", overflow="auto"))
        super().__init__(children=[self.title, w.HBox([self.files_bar, self.files_label]),
                                   self.log_view])
        self.check()
        if start and not self.finished:
            self._thread = _start_thread(self._run, f"hera-stage markers {self.directory}")

    @property
    def finished(self) -> bool:
        return self.state in (MarkerState.SUCCEEDED, MarkerState.ERRORS)

    @property
    def client(self) -> Client | None:
        if not self._client_tried:
            self._client_tried = True
            try:
                self._client = Client()
            except ClientError:
                self._client = None  # markers only
        return self._client

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> str:
        """Block until a result marker appears; returns ``state``."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self.directory} is still {self.state} after {timeout} s")
        self.files_bar.send_state()
        return self.state

    def check(self) -> str:
        """Read the markers (and the job, if known) now."""
        from .jobs.markers import ERRORS, IN_PROGRESS, SUCCEEDED, marker_job

        d = self.directory
        if (d / IN_PROGRESS).exists():
            self.state = MarkerState.IN_PROGRESS
            self.job_id = marker_job(d) or self.job_id
        elif (d / ERRORS).exists():
            self.state = MarkerState.ERRORS
            try:
                self.errors = (d / ERRORS).read_text(errors="replace").splitlines()
            except OSError:
                self.errors = []
        elif (d / SUCCEEDED).exists():
            self.state = MarkerState.SUCCEEDED
        else:
            self.state = MarkerState.NONE
        if self.finished and self.job_id is None:
            self.job_id = self._finished_job()
        self._follow_job()
        self._render()
        return self.state

    def _finished_job(self) -> int | None:
        """The newest of your jobs that staged into this folder (a result marker does not
        name its job), so a finished folder shows its numbers; None without a server or when
        none of your jobs did."""
        if self.client is None:
            return None
        try:
            folder = self.directory.resolve()
            for job in self.client.jobs():  # newest first
                destination = str(job.get("destination") or "")
                if os.path.isabs(destination) and Path(destination).resolve() == folder:
                    return int(job["id"])
        except (ClientError, OSError):
            pass
        return None

    def _follow_job(self) -> None:
        if self.job_id is None or self.client is None:
            return
        try:
            self.job = self.client.job(self.job_id)
            if self.follow_log:
                while True:
                    text, self._log_offset = self.client.log(self.job_id, self._log_offset)
                    self._log_tail.extend(text.splitlines())
                    if not text or not self.job.finished:
                        break
        except ClientError:
            self.job = None  # not ours, or no server: markers only

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
                if self.finished or (self.job is not None and self.job.finished):
                    return
            except Exception as exc:  # keep going on a transient file-system error
                self.title.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"

    def _render(self) -> None:
        label = {MarkerState.NONE: "no staging markers (yet)",
                 MarkerState.IN_PROGRESS: "staging in progress",
                 MarkerState.SUCCEEDED: "staging succeeded",
                 MarkerState.ERRORS: "staging finished with errors"}
        who = f" by job {self.job_id}" if self.job_id is not None else ""
        self.title.value = (f"<code>{html.escape(str(self.directory))}</code>: "
                            f"{label[self.state]}{who}")
        job = self.job
        if job is not None:
            self.files_bar.max = max(1, job.get("files_total") or 0)
            self.files_bar.value = min(self.files_bar.max, job.get("files_done", 0))
            skipped = f", {job['files_skipped']} already there" if job.get("files_skipped") else ""
            failed = f", {job['files_failed']} failed" if job.get("files_failed") else ""
            self.files_label.value = (f"{job.get('files_done', 0)} / {job.get('files_total', 0)}"
                                      f"{skipped}{failed}, "
                                      f"{human_size(job.bytes_moved)} "
                                      f"({job.percent:g}%)")
        elif self.state == MarkerState.SUCCEEDED:
            self.files_bar.value = self.files_bar.max
            self.files_label.value = "all staged"
        elif self.state == MarkerState.ERRORS:
            self.files_label.value = f"{len(self.errors)} error line(s)"
        style = {MarkerState.SUCCEEDED: "success",
                 MarkerState.ERRORS: "danger"}.get(self.state, "")
        self.files_bar.bar_style = style
        lines = list(self._log_tail) or self.errors
        self.log_view.value = ("<pre style='margin:0;font-size:11px'>"
                               + html.escape("\n".join(lines)) + "</pre>" if lines else "")

    def __repr__(self) -> str:
        return f"<MarkerWatcher {self.directory}: {self.state}>"
