"""The site admin's commands of ``hera-stage``: ``site`` (start the service) and
``site-token issue|list|revoke`` (per-user API tokens of a site without a hub). They act on
the site's catalogue directly, so they run under the site account, which alone can read the
service's config file (the database URL is taken from it, or from ``--db-url`` or
``$HERA_STAGE_DB_URL``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import StagingError
from . import service, tokens


def db_url_of(args: argparse.Namespace) -> str:
    if args.db_url:
        return str(args.db_url)
    if args.config:
        from traitlets.config.loader import PyFileConfigLoader

        path = os.path.abspath(args.config)
        loaded = PyFileConfigLoader(os.path.basename(path), os.path.dirname(path)).load_config()
        url = loaded.get("StagingApp", {}).get("db_url")
        if url:
            return str(url)
    url = os.environ.get("HERA_STAGE_DB_URL")
    if not url:
        raise SystemExit("hera-stage: error: give --config FILE (with c.StagingApp.db_url), "
                         "--db-url or $HERA_STAGE_DB_URL")
    return url


def cmd_site(args: argparse.Namespace) -> int:
    return service.run(args)


def cmd_site_token(args: argparse.Namespace) -> int:
    from ..catalogue.db import Database

    db = Database(db_url_of(args))
    try:
        db.upgrade()
        if args.action == "issue":
            token, record = tokens.issue(db, args.user, args.scope or tokens.DEFAULT_SCOPES,
                                         args.note)
            print(token)
            print(f"token {record['id']} of {record['user']} ({', '.join(record['scopes'])}): "
                  f"shown once, keep it (e.g. in $HERA_STAGE_SITE_TOKEN)", file=sys.stderr)
        elif args.action == "list":
            rows = tokens.list_tokens(db, args.user)
            if args.json:
                print(json.dumps(rows, indent=1))
            for row in [] if args.json else rows:
                print(f"{row['id']:>5}  {row['user']:<16} {row['prefix']}...  "
                      f"{','.join(row['scopes']):<24} {row['created_at']}  {row['note']}")
        else:
            tokens.revoke(db, args.id)
            print(f"token {args.id} revoked")
    except StagingError as exc:
        print(f"hera-stage: error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("site", help="start the site service (site admins)")
    service.build_parser(p)
    p.set_defaults(func=cmd_site, local=True)

    p = sub.add_parser("site-token", help="per-user API tokens of a site service without a "
                       "hub (site admins)")
    p.add_argument("--config", help="the service's config file (its c.StagingApp.db_url)")
    p.add_argument("--db-url", help="the catalogue's SQLAlchemy URL instead")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("issue", help="issue a token of USER (printed once)")
    a.add_argument("user")
    a.add_argument("--scope", action="append", choices=tokens.SCOPES,
                   help=f"a scope of the token (repeat; default: "
                   f"{' '.join(tokens.DEFAULT_SCOPES)})")
    a.add_argument("--note", default="", help="what the token is for")
    a = actions.add_parser("list", help="the tokens (never the tokens themselves)")
    a.add_argument("--user", default=None, help="only this user's")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("revoke", help="revoke a token by its id")
    a.add_argument("id", type=int)
    p.set_defaults(func=cmd_site_token, local=True)
