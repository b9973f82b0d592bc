"""The ``hera-stage`` subcommands that keep the archive: ``fsck`` (fixity findings, checks,
repair), ``delete`` (copies the deletion rule allows), ``policy`` (a copy's deletion policy)
and ``offload`` (move a store's copies onto another). Thin over the REST API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from .client import Client
from .states import BAD_FIXITY_STATES, FixityState


def _json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _file_path(name: str, action: str) -> str:
    return f"files/{urllib.parse.quote(name, safe='')}/{action}"


def _finding_line(row: dict[str, Any]) -> str:
    when = row.get("verified_at") or "-"
    return f"{row['state'].upper()}\t{row['store']}:{row['path']}\t{row['name']}\t{when}\t" \
           f"{row['detail']}"


def cmd_fsck(client: Client, args: argparse.Namespace) -> int:
    """Exit 0 when no copy it reports on is bad or missing, 1 otherwise (as fsck)."""
    body = {"store": args.store} if args.store else {}
    if args.repair:
        result = client.request("POST", _file_path(args.repair, "repair"), body)
        if args.json:
            _json(result)
        for row in result["repaired"]:
            print(f"REPAIRED\t{row['store']}:{row['path']}\tfrom {row['source']}")
        for row in result["failed"]:
            print(f"FAILED\t{row['store']}:{row['path']}\t{row['reason']}")
        return 1 if result["failed"] else 0
    if args.check or args.audit:
        result = (client.request("POST", _file_path(args.check, "fixity"), body) if args.check
                  else client.request("POST", "fixity/audit", {}))
        rows = result["instances"]
    else:
        params: dict[str, Any] = {"state": args.state or list(BAD_FIXITY_STATES)}
        if args.store:
            params["store"] = args.store
        result = client.request("GET", "fixity", params=params)
        rows = result["instances"]
    if args.json:
        _json(result)
    else:
        for row in rows:
            print(_finding_line(row))
        if "summary" in result:
            counts = ", ".join(f"{n} {state}" for state, n in result["summary"].items())
            print(f"copies: {counts}; oldest check: {result['oldest_check'] or 'never'}")
    return 1 if any(r["state"] in BAD_FIXITY_STATES for r in rows) else 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    """Exit 1 when a deletion failed; copies kept by the rule are not errors."""
    body: dict[str, Any] = {"dry_run": args.dry_run}
    if args.query:
        body["query"] = args.query
    else:
        body["names"] = args.names
    if args.store:
        body["store"] = args.store
    result = client.request("POST", "delete-instances", body)
    if args.json:
        _json(result)
    else:
        for name, stats in sorted(result["files"].items()):
            for inst in stats["instances"]:
                reason = f"\t{inst['reason']}" if inst["reason"] else ""
                print(f"{inst['outcome']}\t{inst['store']}:{inst['path']}\t{name}{reason}")
        verb = "would be deleted" if args.dry_run else "deleted"
        print(f"{result['n_deleted']} copies {verb}, {result['n_kept']} kept, "
              f"{result['n_error']} error(s)")
    return 1 if result["n_error"] else 0


def cmd_policy(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"policy": args.policy, "all": args.all}
    if args.store:
        body["store"] = args.store
    result = client.request("POST", _file_path(args.name, "deletion-policy"), body)
    for inst in result["instances"]:
        print(f"{inst['store']}:{inst['path']}\t{inst['deletion_policy']}")
    return 0


def cmd_offload(client: Client, args: argparse.Namespace) -> int:
    result = client.request("POST", "offload", {"source": args.source, "dest": args.dest,
                                                "wait": args.wait}, timeout=None)
    if args.json or not args.wait:
        _json(result)
        return 0
    print(f"{len(result['moved'])} moved, {len(result['kept'])} kept, "
          f"{len(result['failed'])} failed")
    for row in result["kept"] + result["failed"]:
        print(f"not moved: {row['name']}: {row['reason']}")
    return 1 if result["failed"] else 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("fsck", help="copies whose fixity check failed; check or repair a file")
    p.add_argument("--store", help="only this store")
    p.add_argument("--state", action="append",
                   choices=list(FixityState),
                   help="list copies in this state (repeatable; default bad and missing)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--check", metavar="NAME", help="re-hash this file's copies now")
    what.add_argument("--repair", metavar="NAME",
                      help="replace this file's bad copies from a good copy here")
    what.add_argument("--audit", action="store_true",
                      help="run one round of the periodic audit now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("delete", help="delete copies the deletion rule allows (never the "
                       "last one)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--query", help="the files a search matches instead of names")
    p.add_argument("--store", help="only copies on this store")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("policy", help="set a copy's deletion policy")
    p.add_argument("name")
    p.add_argument("policy", choices=["allowed", "disallowed"])
    p.add_argument("--store", help="the copy on this store")
    p.add_argument("--all", action="store_true", help="every copy of the file")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("offload", help="move every copy of one store onto another")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--wait", action="store_true", help="do one batch now and report it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_offload)
