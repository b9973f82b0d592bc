"""``hera-stage``: the command line, a thin face over ``client.Client`` (and the demo).

Errors print one line, ``hera-stage: error: <message>``, on stderr and exit 1; usage errors
exit 2 (argparse's convention). Lists print as tables with a header and aligned columns;
``--json`` prints the server's JSON as it is, for scripts.

A reader that goes away (``hera-stage search ... | head -3``) ends the command quietly with
status 141, the status a shell reports for a C tool killed by SIGPIPE (``yes | head``), so a
``set -o pipefail`` script sees what it sees from ``grep`` or ``cat``, and 1 stays "an error".
(Restoring SIGPIPE's default action would give the same status but would also kill the
process on a write to a closed server socket, which must stay an error we report.) Ctrl+C
while following a job (``--wait``) stops following, not the job: it says how to follow or
cancel it and exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from . import cli_staged, cli_steward
from .client import (
    ApiError, Client, ClientError, Job, RateMeter, StagePlan, error_lines, human_size,
)
from .states import FINISHED_JOB_STATES, JobState

#: Store-relative paths the CLI sends per ingest request (one progress step each, one
#: registration transaction on the server: ``ingest.BATCH_SIZE``), and at most this many bytes
#: of them (well inside a request body's limit).
INGEST_BATCH = 1000
INGEST_BATCH_BYTES = 256 << 10
#: Exit status when the reader of our output went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141
#: Exit status after Ctrl+C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


class Column(NamedTuple):
    """A table column: its header, how a row shows in it, and its alignment (numbers right)."""

    header: str
    cell: Callable[[Mapping[str, Any]], Any]
    right: bool = False


def _print_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> None:
    """A header and one line per row, columns two spaces apart and aligned (the last one not
    padded, so lines carry no trailing blanks)."""
    cells = [[c.header for c in columns]]
    cells += [["-" if (v := c.cell(row)) is None else str(v) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        parts = [text.rjust(width) if column.right else text.ljust(width)
                 for text, width, column in zip(line, widths, columns)]
        print("  ".join(parts).rstrip())


def _stores_of(f: Mapping[str, Any]) -> str:
    stores = ",".join(sorted({i["store"] for i in f.get("instances", []) if i["available"]}))
    return stores or "(no instance)"


def _jd(value: float | None) -> str | None:
    return None if value is None else f"{value:.5f}"


SEARCH_COLUMNS: dict[str, list[Column]] = {
    "files": [Column("NAME", lambda f: f["name"]),
              Column("SIZE", lambda f: human_size(f["size"]), right=True),
              Column("OBSID", lambda f: f["obsid"], right=True),
              Column("STORES", _stores_of)],
    "instances": [Column("FILE", lambda r: r["file"]), Column("STORE", lambda r: r["store"]),
                  Column("PATH", lambda r: r["full_path"])],
    "observations": [Column("OBSID", lambda r: r["obsid"], right=True),
                     Column("START JD", lambda r: _jd(r["start_time_jd"]), right=True),
                     Column("SESSION", lambda r: r["session_id"], right=True)],
    "sessions": [Column("SESSION", lambda r: r["id"], right=True),
                 Column("START JD", lambda r: _jd(r["start_time_jd"]), right=True),
                 Column("STOP JD", lambda r: _jd(r["stop_time_jd"]), right=True)],
}


def cmd_search(client: Client, args: argparse.Namespace) -> int:
    total: int | None
    if args.all:
        results = list(client.iter_search(args.query, kind=args.kind, sort=args.sort))
        total = len(results)
    else:
        page = client.search(args.query, kind=args.kind, limit=args.limit, count=True,
                             sort=args.sort)
        results, total = page.results, page.total
    if args.json:
        _print_json(results)
        return 0
    _print_table(SEARCH_COLUMNS[args.kind], results)
    if total is not None and total > len(results):
        print(f"({len(results)} of {total} shown; --all lists every one)", file=sys.stderr)
    return 0


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    info = client.info(args.name)
    if args.json:
        _print_json(info)
        return 0
    print(f"name       {info['name']}")
    print(f"size       {info['size']} ({human_size(info['size'])})"
          + ("  [directory]" if info["is_directory"] else ""))
    print(f"obsid      {info['obsid']}")
    print(f"created    {info['create_time']}")
    for algorithm, digest in info["checksums"].items():
        print(f"{algorithm:<10} {digest}")
    for inst in info["instances"]:
        state = "available" if inst["available"] else "unavailable"
        print(f"instance   {inst['store']}: {inst['full_path']} ({state})")
    for event in info["events"]:
        print(f"event      {event['time']} {event['type']} {json.dumps(event['payload'])}")
    return 0


def cmd_locate(client: Client, args: argparse.Namespace) -> int:
    info = client.info(args.name)
    available = [i for i in info["instances"] if i["available"]]
    if not available:
        raise ClientError(f"file {args.name!r} has no available instance")
    # Online stores first, as the server's own locate does.
    available.sort(key=lambda i: (i.get("store_kind") != "online", i["store"]))
    for inst in available if args.all else available[:1]:
        print(inst["full_path"])
    return 0


def cmd_stores(client: Client, args: argparse.Namespace) -> int:
    return _print_rows(client.stores(), args.json, STORE_COLUMNS)


STORE_COLUMNS = [Column("NAME", lambda s: s["name"]), Column("KIND", lambda s: s["kind"]),
                 Column("STATE", lambda s: "available" if s["available"] else "unavailable"),
                 Column("INSTANCES", lambda s: s["instances"], right=True),
                 Column("PATH", lambda s: s["path"])]


def _ingest_batches(todo: list[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for path in todo:
        if batch and (len(batch) == INGEST_BATCH or size + len(path) > INGEST_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += len(path.encode("utf-8", "surrogateescape")) + 4
    if batch:
        yield batch


def cmd_ingest(client: Client, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    plan = client.ingest_plan(args.store, args.globs or ["*"])
    todo: list[str] = plan["todo"]
    errors: list[dict[str, str]] = list(plan["errors"])
    registered = instances = 0
    with tqdm(total=len(todo), unit="file", desc=f"ingest {args.store}",
              disable=args.quiet or None) as bar:
        for batch in _ingest_batches(todo):
            report = client.ingest_paths(args.store, batch)
            registered += report["registered"]
            instances += report["instances_added"]
            errors += report["errors"]
            bar.update(len(batch))
    print(f"{registered} file(s) registered, {instances} instance(s) added, "
          f"{plan['unchanged']} unchanged, {len(errors)} error(s)")
    for e in errors:
        print(f"hera-stage: error: {e.get('path', '')}: {e['message']}", file=sys.stderr)
    return 1 if errors else 0


JOB_COLUMNS = [
    Column("ID", lambda j: j["id"], right=True),
    Column("STATE", lambda j: Job(j).shown_state),
    Column("FILES", lambda j: f"{j['files_done']}/{j['files_total']}", right=True),
    Column("BYTES", lambda j: f"{human_size(j['bytes_done'])}/{human_size(j['bytes_total'])}",
           right=True),
    Column("FAILED", lambda j: j.get("files_failed", 0), right=True),
    Column("METHOD", lambda j: j["method"]),
    Column("DESTINATION", lambda j: j["destination"]),
]


def cmd_stage(client: Client, args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = client.stage(args.destination, args.query, method=args.method, dry_run=True)
        print(f"{plan['files']} file(s), {human_size(plan['bytes'])} into {plan['destination']} "
              f"by {plan['method']}; {human_size(plan['free_bytes'])} free"
              + ("" if plan["fits"] else " (NOT ENOUGH)"))
        for name in plan["missing"]:
            print(f"missing: {name} (no available instance)")
        for note in plan.notes() if isinstance(plan, StagePlan) else ():
            print(note)
        return 0
    job = client.stage(args.destination, args.query, method=args.method, force=args.force,
                       expires_in=args.expires_in, expires_at=args.expires_at)
    return _launched(client, job, f"staging {job['files_total']} file(s), "
                     f"{human_size(job['bytes_total'])} into {job['destination']}", args.wait)


def cmd_transfer(client: Client, args: argparse.Namespace) -> int:
    job = client.transfer(args.peer, args.query)
    return _launched(client, job, f"sending {job['files_total']} file(s), "
                     f"{human_size(job['bytes_total'])} to peer {args.peer}", args.wait)


def _launched(client: Client, job: dict[str, Any], doing: str, wait: bool) -> int:
    """Say what a launched job does and what it misses; follow it (``wait``) or print its id."""
    print(f"job {job['id']}: {doing}", file=sys.stderr)
    for name in job["missing"]:
        print(f"hera-stage: missing: {name} (no available instance)", file=sys.stderr)
    if not wait:
        print(job["id"])
        return 0
    return _wait(client, job)


def job_bar(job: dict[str, Any], **options: Any) -> Any:
    """A tqdm bar of a job's bytes whose rate and ETA come from a ``RateMeter`` over the
    byte counts the server reports (tqdm's own would time our polls, not the bytes: a stall
    then a jump would show a burst's rate). ``bar.show(job)`` moves it to a job snapshot."""
    from tqdm import tqdm

    class JobBar(tqdm):
        meter = RateMeter()

        @property
        def format_dict(self) -> dict[str, Any]:
            return {**super().format_dict, "job_rate": self.meter.rate_text(),
                    "job_eta": self.meter.eta_text(), "job_done": human_size(self.n),
                    "job_total": human_size(self.total)}

        def show(self, current: dict[str, Any]) -> None:
            moved = current["bytes_done"] + (current.get("bytes_moving") or 0)
            self.meter.add(moved, current["bytes_total"])
            self.total = current["bytes_total"]
            self.update(moved - self.n)
            self.refresh()

    return JobBar(total=job["bytes_total"], desc=f"job {job['id']}",
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {job_done}/{job_total} "
                  "[{job_rate}, ETA {job_eta}]", **options)


def _wait(client: Client, job: dict[str, Any]) -> int:
    """Follow a job with a progress bar; exit 0 when it succeeded, else 1 with its errors
    (as the Librarian's stage script did). Ctrl+C stops following, not the job."""
    try:
        with job_bar(job, disable=None) as bar:
            job = client.wait(job["id"], on_progress=bar.show)
    except KeyboardInterrupt:
        _still_running(job["id"])
        return EXIT_INTERRUPTED
    if job["state"] == JobState.SUCCEEDED:
        done = {"transfer": "sent", "upload": "uploaded"}.get(job["kind"], "staged")
        print(f"job {job['id']} succeeded: {job['files_done']} file(s) {done}, "
              f"{job['files_skipped']} already there", file=sys.stderr)
        return 0
    text = client.log_text(job["id"])
    for line in error_lines(text):
        print(f"hera-stage: {line}", file=sys.stderr)
    print(f"hera-stage: error: job {job['id']} {job['state']}: {job.get('error') or ''}".rstrip(),
          file=sys.stderr)
    return 1


def cmd_upload(client: Client, args: argparse.Namespace) -> int:
    # The directory and the manifest are paths on this machine (the server reads and writes
    # them on the same file system): relative ones are taken from the current directory.
    manifest = os.path.abspath(args.manifest) if args.manifest else None
    job = client.upload(os.path.abspath(args.directory), args.glob, store=args.store,
                        peer=args.peer, batch=args.batch, parallel=args.parallel,
                        manifest=manifest)
    print(f"job {job['id']}: uploading {job['files_total']} file(s), "
          f"{human_size(job['bytes_total'])} into {job['destination']}; manifest "
          f"{job['options']['manifest']}", file=sys.stderr)
    if not args.wait:
        print(job["id"])
        return 0
    return _wait(client, job)


def _still_running(job_id: int) -> None:
    """What Ctrl+C while following a job leaves: the job, and how to get back to it."""
    print(f"\nhera-stage: stopped following job {job_id}; the job goes on.\n"
          f"  follow it again: hera-stage job {job_id} --wait   (its log: hera-stage log "
          f"{job_id} --follow)\n"
          f"  cancel it:       hera-stage cancel {job_id}", file=sys.stderr)


ORDER_COLUMNS = [
    Column("NAME", lambda o: o["name"]),
    Column("STATE", lambda o: "paused" if o["paused"] else "active"),
    Column("PEER", lambda o: o["peer"]),
    Column("SEARCH", lambda o: o["query"] or json.dumps(o["search"])),
    Column("LAST RESULT", lambda o: o["last_message"]),
]


def _print_rows(rows: Sequence[Mapping[str, Any]], as_json: bool, columns: Sequence[Column]
                ) -> int:
    if as_json:
        _print_json(rows)
    else:
        _print_table(columns, rows)
    return 0


def cmd_orders(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _print_rows(client.orders(), args.json, ORDER_COLUMNS)
    if args.action == "delete":
        client.delete_order(args.name)
        print(f"standing order {args.name} deleted")
        return 0
    if args.action == "add":
        order = client.add_order(args.name, args.peer, args.query)
    elif args.action == "pause":
        order = client.pause_order(args.name)
    elif args.action == "resume":
        order = client.resume_order(args.name)
    else:
        order = client.order(args.name)
        if args.json:
            _print_json(order)
            return 0
    _print_table(ORDER_COLUMNS, [order])
    return 0


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    return _print_rows(client.jobs(), args.json, JOB_COLUMNS)


def cmd_job(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.id)
    if args.wait and job["state"] not in FINISHED_JOB_STATES:
        return _wait(client, job)
    _print_json(job) if args.json else _print_table(JOB_COLUMNS, [job])
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.id)
    if args.wait and not job.finished:
        try:
            job = client.wait(job["id"], poll_seconds=0.2)
        except KeyboardInterrupt:
            print(f"\nhera-stage: job {args.id} is still cancelling", file=sys.stderr)
            return EXIT_INTERRUPTED
    # As it is now: "cancelling" while its worker stops it, "cancelled" once it has.
    _print_table(JOB_COLUMNS, [job])
    if not job.finished:
        print(f"hera-stage: job {args.id} stops within seconds; hera-stage job {args.id} "
              "shows when it has", file=sys.stderr)
    return 0


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    job = client.retry(args.id, force=args.force)
    if args.wait:
        return _wait(client, job)
    _print_table(JOB_COLUMNS, [job])
    return 0


def cmd_forget(client: Client, args: argparse.Namespace) -> int:
    client.forget(args.id)
    print(f"job {args.id} forgotten")
    return 0


def cmd_log(client: Client, args: argparse.Namespace) -> int:
    import time

    offset = 0
    try:
        while True:
            text, offset = client.log(args.id, offset)
            sys.stdout.write(text)
            sys.stdout.flush()
            if not args.follow:
                return 0
            if not text and client.job(args.id)["state"] in FINISHED_JOB_STATES:
                text, offset = client.log(args.id, offset)
                sys.stdout.write(text)
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:
        _still_running(args.id)
        return EXIT_INTERRUPTED


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.dir, port=args.port, start_lab=not args.no_lab)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hera-stage", description="Search, stage and move files of a HERA-style archive."
    )
    parser.add_argument("--url", help="Jupyter server URL (default: found automatically)")
    parser.add_argument("--token", help="Jupyter server token")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search the catalogue")
    p.add_argument("query", help="one-line query (zen.2457644.* obsid:a..b) or JSON search")
    p.add_argument("--kind", default="files",
                   choices=("files", "instances", "observations", "sessions"))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--all", action="store_true", help="every result, page by page")
    p.add_argument("--sort", help="files: name, obsid, size, create_time, type; '-' prefix for "
                   "descending")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="a file's details, instances and events")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("locate", help="print the full path of an available instance")
    p.add_argument("name")
    p.add_argument("--all", action="store_true", help="every available instance")
    p.set_defaults(func=cmd_locate)

    p = sub.add_parser("stores", help="list the stores")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stores)

    p = sub.add_parser("ingest", help="register a store's files (by glob)")
    p.add_argument("store")
    p.add_argument("globs", nargs="*", help="patterns relative to the store root (default: *)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("stage", help="stage what a search matches into a folder of yours")
    p.add_argument("destination", help="folder, relative to the Jupyter server's root")
    p.add_argument("query", help="one-line query or JSON search")
    p.add_argument("--method", default="copy",
                   choices=("copy", "hardlink", "symlink", "reflink", "contents"))
    p.add_argument("--dry-run", action="store_true", help="only say what would be staged")
    p.add_argument("--wait", action="store_true",
                   help="follow the job; exit 1 with its errors unless it succeeds")
    p.add_argument("--force", action="store_true", help="launch even if space looks short")
    cli_staged.add_stage_options(p)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("transfer", help="send what a search matches to a peer site")
    p.add_argument("peer", help="a configured peer (c.StagingApp.peers)")
    p.add_argument("query", help="one-line query or JSON search")
    p.add_argument("--wait", action="store_true",
                   help="follow the job; exit 1 with its errors unless it succeeds")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("upload", help="upload a directory's files into a store or to a peer")
    p.add_argument("directory", help="folder on the server's machine (inside its allowed roots)")
    p.add_argument("--glob", required=True, help="pattern relative to the folder (**/*.uvh5)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--store", help="store to copy the files into")
    target.add_argument("--peer", help="peer to send them to (through the upload store)")
    p.add_argument("--batch", type=int, help="files a stream claims at a time (default 16)")
    p.add_argument("--parallel", type=int, help="parallel streams (default: the worker's)")
    p.add_argument("--manifest", help="where to write the manifest JSON (default: "
                   "upload-manifest.json in the folder)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job; exit 1 with its errors unless it succeeds")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("orders", help="standing orders: searches kept in sync with a peer")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="your standing orders")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("add", help="send what a search matches to a peer, as it arrives")
    a.add_argument("name", help="the order's name (letters, digits, '.', '_', '-')")
    a.add_argument("peer", help="a configured peer (c.StagingApp.peers)")
    a.add_argument("query", help="one-line query or JSON search")
    for action, text in (("show", "one order and what its last evaluation did"),
                         ("pause", "stop evaluating an order until resumed"),
                         ("resume", "evaluate an order again (at once)"),
                         ("delete", "delete an order (the jobs it launched run on)")):
        a = actions.add_parser(action, help=text)
        a.add_argument("name")
        if action == "show":
            a.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_orders)

    p = sub.add_parser("jobs", help="your staging, transfer and upload jobs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="one job's progress")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true", help="follow it to the end")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("cancel", help="cancel a job (prints it as it is then: cancelling, "
                       "or cancelled)")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true", help="wait until it has stopped")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("retry", help="stage again what a finished job did not")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true", help="follow it to the end")
    p.add_argument("--force", action="store_true", help="launch even if space looks short")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("forget", help="delete a finished job and its log (not its files)")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("log", help="a job's log")
    p.add_argument("id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    p.set_defaults(func=cmd_log)

    cli_steward.add_parsers(sub)  # fsck, delete, policy, offload
    cli_staged.add_parsers(sub)  # staged, clean

    p = sub.add_parser("demo", help="make a demo archive and start JupyterLab on it")
    p.add_argument("--dir", default="hera-stage-demo", help="where to make it")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--no-lab", action="store_true", help="make the archive only")
    p.set_defaults(func=None)

    from .site.admin import add_commands

    add_commands(sub)
    return parser


def _reader_gone() -> int:
    """stdout's reader went away: send what is still buffered nowhere (so the interpreter's
    own flush at exit does not fail again) and end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no file descriptor (a test's StringIO)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return cmd_demo(args)
        if getattr(args, "local", False):  # the site admin's commands: no client
            code = args.func(args)
        else:
            code = args.func(Client(args.url, args.token), args)
        sys.stdout.flush()  # here, so that a reader gone away is seen here
        return code
    except BrokenPipeError:
        return _reader_gone()
    except ApiError as exc:
        print(f"hera-stage: error: {exc.message}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"hera-stage: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hera-stage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
