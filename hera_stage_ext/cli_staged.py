"""The ``hera-stage`` subcommands of staged data's life cycle: ``staged`` (your staged folders,
their sizes and expiry, whether still intact, and how much you hold where) and ``clean``
(remove expired or chosen staged folders: only what is still the staged data). Thin over the
REST API (``GET staged``, ``POST staged/clean``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .client import Client, human_size


def _json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _folder_line(folder: dict[str, Any]) -> str:
    expiry = folder.get("expires_at") or "never"
    if folder.get("expired"):
        expiry += " (expired)"
    return (f"{folder['state'].upper()}\t{human_size(folder['bytes'])}\t{folder['files']} "
            f"file(s)\texpires {expiry}\t{folder['destination']}")


def _details(folder: dict[str, Any]) -> list[str]:
    lines = []
    for key, what in (("foreign", "not staged, kept"), ("missing", "staged, gone")):
        for path in folder.get(key) or []:
            lines.append(f"  {what}: {path}")
    for row in folder.get("changed") or []:
        lines.append(f"  changed, kept: {row['path']}: {row['reason']}")
    for row in folder.get("errors") or []:
        lines.append(f"  error: {row['path']}: {row['reason']}")
    if folder.get("reason"):
        lines.append(f"  {folder['reason']}")
    return lines


def cmd_staged(client: Client, args: argparse.Namespace) -> int:
    result = client.staged()
    if args.json:
        _json(result)
        return 0
    for folder in result["folders"]:
        print(_folder_line(folder))
        if args.verbose:
            for line in _details(folder):
                print(line)
    quota = result.get("quota_bytes")
    print(f"staged: {human_size(result['total_bytes'])} in {len(result['folders'])} "
          f"folder(s), {human_size(result.get('expired_bytes') or 0)} expired; unexpired "
          f"{human_size(result['unexpired_bytes'])}"
          + (f" of a {human_size(quota)} quota" if quota else ""))
    for root, size in sorted((result.get("by_root") or {}).items()):
        print(f"  {human_size(size)} under {root or '(outside your roots)'}")
    return 0


def cmd_clean(client: Client, args: argparse.Namespace) -> int:
    """Exit 1 when something could not be removed (kept files of yours are not errors)."""
    if not args.folders and not args.expired:
        print("hera-stage: error: name staged folders to clean, or --expired", file=sys.stderr)
        return 2
    result = client.clean(args.folders, expired=args.expired, dry_run=args.dry_run)
    if args.json:
        _json(result)
    else:
        for folder in result["folders"]:
            if args.dry_run:
                done = (f"would remove {folder.get('would_remove_files', 0)} file(s), "
                        f"{human_size(folder.get('would_remove_bytes', 0))}")
            else:
                done = (f"removed {folder.get('removed_files', 0)} file(s), "
                        f"{human_size(folder.get('removed_bytes', 0))}"
                        + ("; folder removed" if folder.get("folder_removed") else ""))
            print(f"{folder['destination']}: {folder['state']}: {done}")
            for line in _details(folder):
                print(line)
        key, verb = (("would_remove_files", "would be removed") if args.dry_run
                     else ("removed_files", "removed"))
        n = sum(f.get(key, 0) for f in result["folders"])
        print(f"{n} file(s) {verb} from {len(result['folders'])} folder(s)")
    return 1 if any(f.get("errors") for f in result["folders"]) else 0


def add_stage_options(p: argparse.ArgumentParser) -> None:
    """``hera-stage stage``'s expiry options."""
    when = p.add_mutually_exclusive_group()
    when.add_argument("--expires-in", metavar="DURATION",
                      help="the folder may be cleaned after this long (seconds, or 7d, 12h, "
                      "90m, 2w); default: the site's")
    when.add_argument("--expires-at", metavar="TIME",
                      help="the folder may be cleaned after this time (ISO 8601, UTC)")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("staged", help="your staged folders: sizes, expiry, whether intact")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also what each folder holds besides, or lacks of, its staged files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_staged)

    p = sub.add_parser("clean", help="remove expired or chosen staged folders (only what is "
                       "still the staged data; nothing else)")
    p.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="staged folders, relative to the Jupyter server's root")
    p.add_argument("--expired", action="store_true", help="every expired staged folder")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clean)
