"""``hera-stage``: the command line, a thin face over ``client.Client`` (and the demo).

Errors print one line, ``hera-stage: error: <message>``, on stderr and exit 1; usage errors
exit 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import cli_steward
from .client import ApiError, Client, ClientError, error_lines, human_size

#: Store-relative paths the CLI sends per ingest request (one progress step each).
INGEST_BATCH = 100


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _file_line(f: dict[str, Any]) -> str:
    stores = ",".join(sorted({i["store"] for i in f.get("instances", []) if i["available"]}))
    obsid = "-" if f["obsid"] is None else str(f["obsid"])
    return f"{f['name']}\t{human_size(f['size'])}\t{obsid}\t{stores or '(no instance)'}"


def cmd_search(client: Client, args: argparse.Namespace) -> int:
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
    for row in results:
        if args.kind == "files":
            print(_file_line(row))
        elif args.kind == "instances":
            print(f"{row['file']}\t{row['store']}\t{row['full_path']}")
        elif args.kind == "observations":
            print(f"{row['obsid']}\tJD {row['start_time_jd']:.5f}\tsession {row['session_id']}")
        else:
            print(f"{row['id']}\tJD {row['start_time_jd']:.5f} - {row['stop_time_jd']:.5f}")
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
    stores = client.stores()
    if args.json:
        _print_json(stores)
        return 0
    for s in stores:
        state = "available" if s["available"] else "unavailable"
        print(f"{s['name']}\t{s['kind']}\t{state}\t{s['instances']} instances\t{s['path']}")
    return 0


def cmd_ingest(client: Client, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    plan = client.ingest_plan(args.store, args.globs or ["*"])
    todo: list[str] = plan["todo"]
    errors: list[dict[str, str]] = list(plan["errors"])
    registered = instances = 0
    with tqdm(total=len(todo), unit="file", desc=f"ingest {args.store}",
              disable=args.quiet or None) as bar:
        for start in range(0, len(todo), INGEST_BATCH):
            batch = todo[start : start + INGEST_BATCH]
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


def _job_line(job: dict[str, Any]) -> str:
    return (f"{job['id']}\t{job['state']}\t{job['files_done']}/{job['files_total']} files\t"
            f"{human_size(job['bytes_done'])}/{human_size(job['bytes_total'])}\t"
            f"{job['method']}\t{job['destination']}")


def cmd_stage(client: Client, args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = client.stage(args.destination, args.query, method=args.method, dry_run=True)
        print(f"{plan['files']} file(s), {human_size(plan['bytes'])} into {plan['destination']} "
              f"by {plan['method']}; {human_size(plan['free_bytes'])} free"
              + ("" if plan["fits"] else " (NOT ENOUGH)"))
        for name in plan["missing"]:
            print(f"missing: {name} (no available instance)")
        return 0
    job = client.stage(args.destination, args.query, method=args.method, force=args.force)
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


def _wait(client: Client, job: dict[str, Any]) -> int:
    """Follow a job with a progress bar; exit 0 when it succeeded, else 1 with its errors
    (as the Librarian's stage script did)."""
    from tqdm import tqdm

    with tqdm(total=job["bytes_total"], unit="B", unit_scale=True, unit_divisor=1024,
              desc=f"job {job['id']}", disable=None) as bar:
        def progress(current: dict[str, Any]) -> None:
            bar.update(current["bytes_done"] - bar.n)

        job = client.wait(job["id"], on_progress=progress)
    if job["state"] == "succeeded":
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


def _order_line(order: dict[str, Any]) -> str:
    state = "paused" if order["paused"] else "active"
    what = order["query"] or json.dumps(order["search"])
    return f"{order['name']}\t{state}\t{order['peer']}\t{what}\t{order['last_message']}"


def _print_rows(rows: list[dict[str, Any]], as_json: bool,
                line: Callable[[dict[str, Any]], str]) -> int:
    if as_json:
        _print_json(rows)
    else:
        for row in rows:
            print(line(row))
    return 0


def cmd_orders(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _print_rows(client.orders(), args.json, _order_line)
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
    print(_order_line(order))
    return 0


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    return _print_rows(client.jobs(), args.json, _job_line)


def cmd_job(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.id)
    if args.wait and job["state"] not in ("succeeded", "failed", "cancelled"):
        return _wait(client, job)
    _print_json(job) if args.json else print(_job_line(job))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.id)
    print(_job_line(job))
    return 0


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    job = client.retry(args.id, force=args.force)
    if args.wait:
        return _wait(client, job)
    print(_job_line(job))
    return 0


def cmd_forget(client: Client, args: argparse.Namespace) -> int:
    client.forget(args.id)
    print(f"job {args.id} forgotten")
    return 0


def cmd_log(client: Client, args: argparse.Namespace) -> int:
    import time

    offset = 0
    while True:
        text, offset = client.log(args.id, offset)
        sys.stdout.write(text)
        sys.stdout.flush()
        if not args.follow:
            return 0
        if not text and client.job(args.id)["state"] in ("succeeded", "failed", "cancelled"):
            text, offset = client.log(args.id, offset)
            sys.stdout.write(text)
            return 0
        time.sleep(0.5)


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

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("id", type=int)
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

    p = sub.add_parser("demo", help="make a demo archive and start JupyterLab on it")
    p.add_argument("--dir", default="hera-stage-demo", help="where to make it")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--no-lab", action="store_true", help="make the archive only")
    p.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return cmd_demo(args)
        return args.func(Client(args.url, args.token), args)
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
