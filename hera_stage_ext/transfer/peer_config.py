"""The peers configuration read into peers: ``c.StagingApp.peers`` (sites running
hera_stage_ext, ``peers.Peer``, and rclone remotes, ``rclone.RclonePeer``), and the same
configuration handed to a worker process in ``HERA_STAGE_PEERS`` (``peers_env`` /
``registry_from_env``). It sits above both kinds of peer so neither imports the other.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .peers import MIN_SECRET_CHARS, PEERS_ENV, Peer, PeerRegistry
from .rclone import parse_rclone_peer


def parse_peers(config: dict[str, Any]) -> dict[str, Peer]:
    """``c.StagingApp.peers`` into Peers; ValueError naming what is wrong."""
    out: dict[str, Peer] = {}
    for name, spec in config.items():
        if isinstance(spec, dict) and spec.get("type") == "rclone":  # not hera_stage_ext
            out[name] = parse_rclone_peer(name, spec)
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) \
                or not isinstance(spec.get("secret"), str):
            raise ValueError(f"peer {name!r} needs a 'url' and a 'secret' (or 'type': "  # noqa: TRY004 (traitlets reports ValueError)
                             "'rclone' and a 'remote')")
        if ":" in name or not name:
            raise ValueError(f"peer name {name!r} must be non-empty and contain no ':'")
        unknown = set(spec) - {"url", "secret", "max_bytes_per_s", "max_in_flight", "hours",
                               "retry_max_s"}
        if unknown:
            raise ValueError(f"peer {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
        if len(spec["secret"]) < MIN_SECRET_CHARS:
            raise ValueError(f"peer {name!r}: its secret must have at least {MIN_SECRET_CHARS} "
                             "characters (python -m hera_stage_ext.transfer.peers hash-secret "
                             "makes one)")
        url = spec["url"] if spec["url"].endswith("/") else spec["url"] + "/"
        out[name] = Peer(name, url, spec["secret"], int(spec.get("max_bytes_per_s", 0)),
                         int(spec.get("max_in_flight", 0)), str(spec.get("hours", "")),
                         float(spec.get("retry_max_s", 300.0)))
        out[name].window()  # a malformed window is refused with the configuration
    return out


def peers_env(site_name: str, config: dict[str, Any]) -> dict[str, str]:
    """The environment a worker process needs to send to ``config``'s peers."""
    return {PEERS_ENV: json.dumps({"site_name": site_name, "peers": config})}


def registry_from_env(environ: dict[str, str] | None = None) -> PeerRegistry:
    """The sending half of the peer configuration, as ``peers_env`` passed it (none if
    unset: every peer is then unknown to this process)."""
    raw = (os.environ if environ is None else environ).get(PEERS_ENV)
    if not raw:
        return PeerRegistry("site")
    data = json.loads(raw)
    return PeerRegistry(data["site_name"], parse_peers(data["peers"]))
