"""Peers: other sites running hera_stage_ext, and how site-to-site requests authenticate.

Sending side: ``c.StagingApp.peers = {"karoo": {"url": "https://...", "secret": "..."}}`` -- the
URL of the peer's server (its base_url) and the secret this site presents there. Receiving
side: ``c.StagingApp.peer_secrets = {"nrao": "sha256$<hex>"}`` -- only a hash of the secret each
peer presents. Each site configures the other both ways (the receiver pulls the bytes from the
sender, authenticating with its own secret there).

Requests carry ``Authorization: HeraPeer <site>:<secret>`` (over HTTPS between real sites).

Why SHA-256 and not a slow password hash: peer secrets are machine-generated (``hash-secret``
makes 256 random bits), so guessing one is infeasible however fast the hash; a slow KDF only
helps low-entropy, human-chosen passwords, and would cost its full time on *every* request (one
announce, one status poll, one ranged GET per file). Secrets shorter than ``MIN_SECRET_CHARS`` are
refused for that reason. Hashes are compared with ``hmac.compare_digest``; secrets are never
logged.

Limits per peer (sending side, ``c.StagingApp.peers[name]``): ``max_in_flight`` (items announced
to the peer and not yet through, across all transfer jobs; 0: no limit), ``max_bytes_per_s``
(the rate this site serves the peer's pulls: the bytes stream there), ``hours`` (``"20-06"`` or
``"19:30-05:00"``, local time of this site: transfer jobs announce only inside that window; empty:
any time) and ``retry_max_s`` (the cap of the exponential backoff while the peer is unreachable).

Worker processes have no Jupyter configuration: the server hands them the peers in the
environment variable ``HERA_STAGE_PEERS`` (``peer_config.peers_env``/``registry_from_env``), like the
database URL: never on the command line (``ps`` shows it to every user), never in the database
(a database dump or a read-only database user would expose it).

Sites without hera_stage_ext: ``{"type": "rclone", "remote": ...}`` entries (``rclone.py``).
The configuration of both kinds is read by ``peer_config.py``.

``python -m hera_stage_ext.transfer.peers hash-secret`` prints a new secret and its hash
(``--stdin`` hashes a secret read from standard input instead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, NotFound, Unauthorized

SCHEME = "HeraPeer"
HASH_PREFIX = "sha256$"
#: Shortest secret accepted (hash-secret makes 43-character ones: 256 random bits).
MIN_SECRET_CHARS = 32
#: Environment variable carrying this site's name and its peers to a worker process.
PEERS_ENV = "HERA_STAGE_PEERS"
_HOURS = re.compile(r"^(\d{1,2})(?::(\d{2}))?-(\d{1,2})(?::(\d{2}))?$")


def hash_secret(secret: str) -> str:
    """The form of a secret stored on the receiving side: ``sha256$<hex>``."""
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidRequest(f"a peer secret must have at least {MIN_SECRET_CHARS} characters "
                             "(use hash-secret to make one)")
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Peer:
    """A site this one sends to: where it is and the secret presented there."""

    name: str
    url: str  # the peer server's base URL, ending in '/'
    secret: str
    max_bytes_per_s: int = 0  # serving this peer's pulls: 0 = no limit
    max_in_flight: int = 0  # items announced and not through, across jobs: 0 = no limit
    hours: str = ""  # "HH[:MM]-HH[:MM]" local time when transfers may run; "" = always
    retry_max_s: float = 300.0  # cap of the backoff while the peer is unreachable

    def window(self) -> tuple[int, int] | None:
        """The allowed hours as (start, end) minutes after midnight; None: always."""
        if not self.hours:
            return None
        match = _HOURS.match(self.hours.strip())
        if not match:
            raise ValueError(f"peer {self.name!r}: hours must look like '20-06' or "
                             f"'19:30-05:00', not {self.hours!r}")
        h1, m1, h2, m2 = (int(g or 0) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or start == end or max(start, end) > 1440:
            raise ValueError(f"peer {self.name!r}: hours {self.hours!r} is not a window")
        return start, end

    def seconds_until_open(self, now: dt.datetime | None = None) -> float:
        """0 inside the allowed hours, else the seconds until they begin (local time)."""
        window = self.window()
        if window is None:
            return 0.0
        now = now or dt.datetime.now()
        minute = now.hour * 60 + now.minute + now.second / 60
        start, end = window
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if inside:
            return 0.0
        return ((start - minute) % 1440) * 60

    def authorization(self, site_name: str) -> str:
        return f"{SCHEME} {site_name}:{self.secret}"

    def __repr__(self) -> str:  # never show the secret
        return f"Peer({self.name!r}, {self.url!r})"


def check_secret_hashes(config: dict[str, Any]) -> dict[str, str]:
    for name, value in config.items():
        if not isinstance(value, str) or not value.startswith(HASH_PREFIX) \
                or len(value) != len(HASH_PREFIX) + 64:
            raise ValueError(f"peer_secrets[{name!r}] must be 'sha256$<64 hex digits>' "
                             "(python -m hera_stage_ext.transfer.peers hash-secret)")
    return dict(config)


class PeerRegistry:
    """Both halves of the peer configuration, and the check of an incoming request."""

    def __init__(self, site_name: str, peers: dict[str, Peer] | None = None,
                 secret_hashes: dict[str, str] | None = None) -> None:
        self.site_name = site_name
        self.peers = dict(peers or {})
        self.secret_hashes = dict(secret_hashes or {})

    def peer(self, name: str) -> Peer:
        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none"
            raise NotFound(f"no peer named {name!r} is configured (c.StagingApp.peers; "
                           f"known: {known})") from None

    def authenticate(self, header: str | None) -> str:
        """The peer a request's ``Authorization`` header proves to be; Unauthorized if not."""
        if not header:
            raise Unauthorized("site-to-site requests need 'Authorization: HeraPeer "
                               "<site>:<secret>'")
        scheme, _, credentials = header.partition(" ")
        site, sep, secret = credentials.strip().partition(":")
        if scheme != SCHEME or not sep or not site:
            raise Unauthorized("site-to-site requests need 'Authorization: HeraPeer "
                               "<site>:<secret>'")
        given = HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()
        expected = self.secret_hashes.get(site)
        # Compare against something even for an unknown site: the timing says nothing.
        ok = hmac.compare_digest(given.encode(), (expected or "-" * len(given)).encode())
        if expected is None:
            raise Unauthorized(f"unknown peer {site!r}")
        if not ok:
            raise Unauthorized(f"wrong secret for peer {site!r}")
        return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hera_stage_ext.transfer.peers",
        description="Peer secrets: make one and the hash the receiving site stores.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("hash-secret", help="print a new secret and its hash")
    cmd.add_argument("--stdin", action="store_true",
                     help="hash the secret read from standard input instead of making one")
    args = parser.parse_args(argv)
    if args.command == "hash-secret":
        secret = sys.stdin.readline().strip() if args.stdin else new_secret()
        try:
            hashed = hash_secret(secret)
        except InvalidRequest as exc:
            print(exc.message, file=sys.stderr)
            return 2
        if not args.stdin:
            print(f"secret (sending site, c.StagingApp.peers[...]['secret']): {secret}")
        print(f"hash (receiving site, c.StagingApp.peer_secrets[...]): {hashed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
