"""``%stage`` and ``%%stage``: staging from a notebook (``%load_ext hera_stage_ext``).

    %stage DEST QUERY [--method M] [--dry-run] [--wait] [--force] [--no-widget]
    %%stage DEST [--method M] [--dry-run] [--wait]      <- a JSON search (or a query) in the cell
    %stage jobs | job ID | log ID | cancel ID | retry ID | wait ID
    %stage search QUERY [--limit N]
    %stage watch DIR                                   <- a MarkerWatcher on any folder
    %stage --help                                      <- this usage

Every form also takes ``--url URL`` and ``--token TOKEN`` (default: the kernel's own server).
QUERY is the one-line query syntax or JSON, written as it is (no quoting, no ``$``/``{}``
expansion). A stage returns the ``Job`` and displays its live ``JobProgress`` widget
(``job.widget``), the cell's one output: the returned job shows nothing more in that cell (a
table of it would freeze at ``queued``), and its widget again when shown in a later cell.
``--wait`` blocks until the job ends and raises ``JobFailed`` with its errors unless it
succeeded. Errors are one line, not a traceback.
"""

from __future__ import annotations

import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from .client import Client, ClientError, Job

SUBCOMMANDS = ("jobs", "job", "log", "cancel", "retry", "wait", "search", "watch")
#: Options that take a value, and flags.
_VALUED = {"--method", "--url", "--token", "--limit", "--timeout"}
_FLAGS = {"--dry-run", "--wait", "--force", "--no-widget"}
METHODS = ("copy", "hardlink", "symlink", "reflink", "contents")


def parse_line(line: str) -> tuple[list[str], dict[str, Any]]:
    """Split a magic line into its words (options removed) and options. Words are split on
    white space only, so a query keeps its quotes and its JSON."""
    words: list[str] = []
    options: dict[str, Any] = {}
    tokens = line.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if name in _VALUED:
            if not eq:
                i += 1
                if i >= len(tokens):
                    raise UsageError(f"%stage: {name} needs a value")
                value = tokens[i]
            options[name[2:].replace("-", "_")] = value
        elif token in _FLAGS:
            options[token[2:].replace("-", "_")] = True
        elif token.startswith("--") and len(token) > 2:
            raise UsageError(f"%stage: unknown option {token} (see %stage?)")
        else:
            words.append(token)
        i += 1
    return words, options


USAGE = """\
%stage DEST QUERY [--method M] [--dry-run] [--wait] [--timeout S] [--force] [--no-widget]
        stage what QUERY (one-line syntax or JSON, as it is) matches into the folder DEST
%%stage DEST [--method M] [--dry-run] [--wait]      with the search in the cell
%stage jobs                 your jobs
%stage job ID               one job (its live widget while it runs)
%stage log ID               its log
%stage cancel ID | retry ID
%stage wait ID              block until it ends; JobFailed unless it succeeded
%stage search QUERY [--limit N]
%stage watch DIR            the STAGING-* markers of any folder, live
%stage --help               this

Methods: copy (default), hardlink, symlink, reflink, contents. Every form also takes
--url URL --token TOKEN (default: this kernel's own Jupyter server)."""


def _display(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _cell_number(shell: Any) -> int | None:
    return getattr(shell, "execution_count", None)


class ShownJob(Job):
    """The ``Job`` a stage returns after displaying its live widget: in the cell that shows
    the widget it displays nothing more (the widget is the job's one live view); displayed in
    a later cell, it shows its widget again. ``print(job)`` is the usual one-line summary."""

    widget: Any = None
    shown_in: int | None = None

    def _ipython_display_(self) -> None:
        from IPython import get_ipython

        if self.widget is not None and self.shown_in == _cell_number(get_ipython()):
            return
        _display(self.widget if self.widget is not None else Job(self))


@magics_class
class StageMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._client: Client | None = None

    def client(self, options: dict[str, Any]) -> Client:
        """The kernel's default client (found once), or one for ``--url``/``--token``."""
        if options.get("url") or options.get("token"):
            return Client(options.get("url"), options.get("token"))
        if self._client is None:
            self._client = Client()
        return self._client

    @no_var_expand
    @line_magic
    def stage(self, line: str) -> Any:
        """Stage files into a folder, or look at your jobs. See ``%stage?``.

        %stage DEST QUERY [--method M] [--dry-run] [--wait] [--force] [--no-widget]
        %stage jobs | job ID | log ID | cancel ID | retry ID | wait ID
        %stage search QUERY [--limit N]
        %stage watch DIR
        %stage --help
        (all: [--url URL] [--token TOKEN])
        """
        if _asks_help(line):
            print(USAGE)
            return None
        words, options = parse_line(line)
        if not words:
            raise UsageError("%stage DEST QUERY [--method M] [--dry-run] [--wait], or "
                             "%stage jobs | job ID | log ID | cancel ID | search QUERY")
        command = words[0]
        if command in SUBCOMMANDS:
            return self._subcommand(command, words[1:], options)
        if len(words) < 2:
            raise UsageError(f"%stage {command}: give a query after the destination "
                             "(or use %%stage with a JSON search in the cell)")
        return self._stage(command, " ".join(words[1:]), options)

    # IPython types what cell_magic("name") returns as a union of a decorator and the function
    # (no overloads), which no call type-checks against.
    @cell_magic("stage")  # type: ignore[arg-type]
    def stage_cell(self, line: str, cell: str) -> Any:
        """%%stage DEST [--method M] [--dry-run] [--wait]: stage what the cell's search (JSON,
        or the one-line syntax) matches."""
        if _asks_help(line):
            print(USAGE)
            return None
        words, options = parse_line(line)
        if len(words) != 1:
            raise UsageError("%%stage DEST [--method M] [--dry-run] [--wait], with the search "
                             "in the cell")
        query = cell.strip()
        if not query:
            raise UsageError("%%stage: the cell holds no search")
        return self._stage(words[0], query, options)

    # ----- the work -------------------------------------------------------------------------
    def _stage(self, destination: str, query: str, options: dict[str, Any]) -> Any:
        method = options.get("method", "copy")
        if method not in METHODS:
            raise UsageError(f"%stage: --method is one of {', '.join(METHODS)}, not {method!r}")
        client = self.client(options)
        if options.get("dry_run"):
            return client.stage(destination, query, method=method, dry_run=True)
        job = client.stage(destination, query, method=method, force=bool(options.get("force")))
        return self._follow(client, job, options)

    def _follow(self, client: Client, job: Job, options: dict[str, Any]) -> Job:
        widget = None
        if not options.get("no_widget"):
            from .widgets import JobProgress

            widget = JobProgress(job, client)
            _display(widget)
        if options.get("wait"):
            timeout = float(options["timeout"]) if options.get("timeout") else None
            job = widget.wait(timeout) if widget is not None else client.wait(job["id"],
                                                                             timeout=timeout)
            if not job.succeeded:
                from .client import JobFailed

                raise JobFailed(job, client.errors(job["id"]))
        shown = ShownJob(job)  # (``widget`` None without one: it displays as the plain job)
        if widget is not None:
            shown.widget, shown.shown_in = widget, _cell_number(self.shell)
        return shown

    def _subcommand(self, command: str, args: list[str], options: dict[str, Any]) -> Any:
        if command == "search":
            if not args:
                raise UsageError("%stage search QUERY [--limit N]")
            limit = int(options.get("limit", 100))
            return self.client(options).search(" ".join(args), limit=limit, count=True)
        if command == "jobs":
            return self.client(options).jobs()
        if command == "watch":
            if len(args) != 1:
                raise UsageError("%stage watch DIR")
            from .widgets import MarkerWatcher

            try:
                client: Client | None = self.client(options)
            except ClientError:
                client = None  # markers only
            # Returned, not displayed: a widget as a cell's value shows itself, once.
            return MarkerWatcher(args[0], client)
        if len(args) != 1 or not re.fullmatch(r"\d+", args[0]):
            raise UsageError(f"%stage {command} ID: a job id is a number"
                             + (f", not {args[0]!r}" if args else ""))
        job_id = int(args[0])
        client = self.client(options)
        if command == "log":
            print(client.log_text(job_id), end="")
            return None
        if command == "cancel":
            return client.cancel(job_id)
        if command == "retry":
            return self._follow(client, client.retry(job_id), options)
        job = client.job(job_id)
        if command == "wait":
            options = {**options, "wait": True}
        if command == "wait" or not job.finished:
            return self._follow(client, job, options)
        return job


def _asks_help(line: str) -> bool:
    """``--help`` anywhere, or ``-h`` alone (elsewhere ``-h`` is a query's "not named h")."""
    words = line.split()
    return "--help" in words or words == ["-h"]


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(StageMagics)
