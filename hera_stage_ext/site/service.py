"""``hera-stage site``: start the site service, a Jupyter server that serves only hera_stage.

It is a jupyter_server ``ServerApp`` with exactly one extension, ours, in site mode
(``c.StagingApp.mode = "site"``), whatever the config files enable; its identity provider is
the hub's (when JupyterHub started it: ``JUPYTERHUB_API_TOKEN`` is in its environment) or the
site tokens' (``hera-stage site-token``); its authorizer refuses every Jupyter resource
(``auth.SiteAuthorizer``), and terminals are off. The settings that make it a site service are
given as command-line config, which no config file overrides.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from jupyter_server.serverapp import ServerApp

from ..api.base import SITE_MAX_BODY_BYTES

EXTENSION = "hera_stage_ext"


class SiteServerApp(ServerApp):
    """A Jupyter server that loads hera_stage_ext alone."""

    name = "hera-stage-site"
    description = "The hera_stage site service."

    def find_server_extensions(self) -> None:
        """No other extension: the service account must never serve anything but ours."""

    def init_server_extensions(self) -> None:
        self.jpserver_extensions = {EXTENSION: True}
        super().init_server_extensions()


def hub_managed() -> bool:
    """Whether JupyterHub started this process (as one of its services)."""
    return bool(os.environ.get("JUPYTERHUB_API_TOKEN"))


def server_argv(args: argparse.Namespace) -> list[str]:
    """The ServerApp command line: the service's fixed settings last, so they win."""
    if hub_managed():
        identity = "jupyterhub.singleuser.extension.JupyterHubIdentityProvider"
        default_url = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    else:
        identity = "hera_stage_ext.site.auth.SiteTokenIdentityProvider"
        default_url = "/"
    argv = []
    if args.config:
        argv += [f"--config={os.path.abspath(args.config)}"]
    argv += [
        f"--ServerApp.ip={args.ip}",
        f"--ServerApp.port={args.port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={args.base_url or default_url}",
        "--ServerApp.open_browser=False",
        "--ServerApp.terminals_enabled=False",
        f"--ServerApp.max_body_size={SITE_MAX_BODY_BYTES}",
        f"--ServerApp.identity_provider_class={identity}",
        "--ServerApp.authorizer_class=hera_stage_ext.site.auth.SiteAuthorizer",
        "--StagingApp.mode=site",
    ]
    if not hub_managed():
        argv += ["--IdentityProvider.token="]  # no Jupyter token: site tokens only
    if args.root_dir:
        argv += [f"--ServerApp.root_dir={args.root_dir}"]
    if args.allow_root:
        argv += ["--ServerApp.allow_root=True"]
    return argv


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="hera-stage site",
                                               description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the service's config file (c.StagingApp.*: db_url, "
                        "stores, peers, ...); readable by the site account only")
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("HERA_STAGE_SITE_PORT", "8890")),
                        help="port to listen on")
    parser.add_argument("--base-url", default=None, help="URL prefix (default: "
                        "$JUPYTERHUB_SERVICE_PREFIX behind a hub, else /)")
    parser.add_argument("--root-dir", default=None,
                        help="the server's root folder (uploads read from allowed_roots; "
                        "default: the current folder)")
    parser.add_argument("--allow-root", action="store_true",
                        help="run even as root (tests, containers; a site runs the service "
                        "under its own account)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Start the service and serve until stopped."""
    SiteServerApp.launch_instance(argv=server_argv(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
