"""rclone peers: sites that do not run hera_stage_ext, reached with Debian's ``rclone``.

Configuration (``c.StagingApp.peers``)::

    {"karoo-s3": {"type": "rclone", "remote": "karoo:bucket/hera", "config": "/etc/rclone.conf",
                  "env": {"RCLONE_CONFIG_KAROO_PASS": "<rclone obscure output>"},
                  "verify": "auto", "timeout_s": 30, "max_bytes_per_s": 0, "max_in_flight": 0,
                  "hours": "", "retry_max_s": 300}}

``remote``: an rclone remote and path (files land under it at their instance's path relative to
their store). ``config``: the rclone.conf to use (default: rclone's own). ``env``: extra
``RCLONE_*`` variables (rclone reads any option, and whole remotes, from them). Secrets live in
the config file or ``env``: both reach rclone through its environment, never its command line
(``ps`` shows that to everyone) and never the database; a ``remote`` that is a connection string
holding a password is refused. rclone's messages are logged with every ``env`` value blanked.

``RcloneClient`` runs rclone for one peer and duck-types the parts of ``protocol.PeerClient``
the transfer machinery calls (``ping``, ``close``): ``client_for`` picks the one a peer needs.
Sending itself is ``rclone_send.py``.

Verification never trusts rclone's exit status alone: ``digest`` computes the remote object's
checksums to compare with the catalogue's -- from the backend's MD5 when it has them (``rclone
lsjson --hash``: SFTP, S3, ...) and ``verify`` is ``auto``, else by streaming the object back
(``rclone cat``) through ``checksums.StreamHasher`` in constant memory. A directory data set
gets the catalogue's directory digest from its members' checksums.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..catalogue import checksums as ck
from ..errors import StagingError, Unavailable
from ..jobs.methods import Cancelled
from .peers import PEERS_ENV, Peer
from .protocol import PeerClient

TYPE = "rclone"
SETTINGS = {"type", "remote", "config", "env", "verify", "timeout_s", "max_bytes_per_s",
            "max_in_flight", "hours", "retry_max_s"}
VERIFY_MODES = ("auto", "download")
#: rclone exit codes meaning "not there" (directory not found, file not found).
_ABSENT = (3, 4)
#: Connection-string parameters that are secrets (they would show on the command line).
_SECRET_PARAM = re.compile(r"(pass|secret|key|token|password)", re.IGNORECASE)
_TIMESTAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (ERROR |NOTICE |INFO )?:?\s*")


class RcloneFailed(StagingError):
    """rclone reached the remote and failed (its message, secrets blanked)."""

    status = 502


@dataclass(frozen=True, repr=False)
class RclonePeer(Peer):
    """A peer reached through rclone; ``url`` and ``secret`` are unused (empty)."""

    remote: str = ""
    config: str = ""
    env: tuple[tuple[str, str], ...] = ()
    verify: str = "auto"
    timeout_s: float = 30.0

    def path(self, relative: str) -> str:
        """The rclone path of ``relative`` under the peer's remote."""
        base = self.remote if self.remote.endswith((":", "/")) else self.remote + "/"
        return base + relative

    def __repr__(self) -> str:  # never show the environment (secrets)
        return f"RclonePeer({self.name!r}, {self.remote!r})"


def parse_rclone_peer(name: str, spec: Mapping[str, Any]) -> RclonePeer:
    """One ``{"type": "rclone", ...}`` entry of ``c.StagingApp.peers``; ValueError if wrong."""
    if ":" in name or not name:
        raise ValueError(f"peer name {name!r} must be non-empty and contain no ':'")
    unknown = set(spec) - SETTINGS
    if unknown:
        raise ValueError(f"peer {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
    remote = spec.get("remote")
    if not isinstance(remote, str) or ":" not in remote:
        raise ValueError(f"rclone peer {name!r} needs a 'remote' like 'myremote:bucket/path'")
    head = remote.split(":", 2)[1] if remote.startswith(":") else remote.split(":", 1)[0]
    if "," in head and any(_SECRET_PARAM.search(p.split("=", 1)[0])
                           for p in head.split(",")[1:]):
        raise ValueError(f"rclone peer {name!r}: put passwords in the rclone config file or "
                         "'env', not in the remote string (it shows on rclone's command line)")
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k.startswith("RCLONE_") and isinstance(v, str)
            for k, v in env.items()):
        raise ValueError(f"rclone peer {name!r}: 'env' must map RCLONE_* names to strings")
    verify = spec.get("verify", "auto")
    if verify not in VERIFY_MODES:
        raise ValueError(f"rclone peer {name!r}: verify must be one of {VERIFY_MODES}")
    config = spec.get("config", "")
    if not isinstance(config, str):
        raise ValueError(f"rclone peer {name!r}: 'config' must be a file path")  # noqa: TRY004 (traitlets reports ValueError)
    peer = RclonePeer(
        name, "", "", int(spec.get("max_bytes_per_s", 0)), int(spec.get("max_in_flight", 0)),
        str(spec.get("hours", "")), float(spec.get("retry_max_s", 300.0)),
        remote=remote.rstrip("/") if not remote.endswith(":/") else remote, config=config,
        env=tuple(sorted(env.items())), verify=verify,
        timeout_s=float(spec.get("timeout_s", 30.0)))
    peer.window()  # a malformed window is refused with the configuration
    return peer


def client_for(peer: Peer, site_name: str, timeout: float | None = None
               ) -> PeerClient | RcloneClient:
    """The client that talks to ``peer``: rclone for an rclone peer, else the protocol's."""
    if isinstance(peer, RclonePeer):
        return RcloneClient(peer, timeout=timeout)
    return PeerClient(peer, site_name, timeout=timeout)


class RcloneClient:
    """rclone commands against one peer's remote. ``interrupt`` (a callable) stops a long
    command early (cancel, lost lease): it is polled while rclone runs."""

    binary = "rclone"

    def __init__(self, peer: RclonePeer, *, timeout: float | None = None,
                 interrupt: Callable[[], bool] | None = None) -> None:
        self.peer = peer
        self.timeout = timeout or peer.timeout_s
        self.interrupt = interrupt or (lambda: False)
        # rclone gets this peer's settings only, not every peer's secrets (HERA_STAGE_PEERS).
        self.environ = {k: v for k, v in os.environ.items() if k != PEERS_ENV}
        if peer.config:
            self.environ["RCLONE_CONFIG"] = peer.config
        self.environ.update(peer.env)
        self._secrets = [v for _, v in peer.env if len(v) >= 4]

    def close(self) -> None:
        """Nothing held between commands (the PeerClient interface)."""

    # ----- running rclone -------------------------------------------------------------------
    def _argv(self, args: tuple[str, ...]) -> list[str]:
        t = f"{max(1, int(self.timeout))}s"
        argv = [self.binary, "--retries", "1", "--low-level-retries", "2",
                "--contimeout", t, "--timeout", f"{max(60, int(self.timeout))}s"]
        if self.peer.max_bytes_per_s:
            argv += ["--bwlimit", f"{self.peer.max_bytes_per_s}B"]
        return argv + list(args)

    def message(self, stderr: str) -> str:
        """rclone's last complaint, without timestamps, with secrets blanked."""
        lines = [_TIMESTAMP.sub("", line).strip() for line in stderr.splitlines()]
        text = next((line for line in reversed(lines) if line), "no message")
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:500]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.Popen(self._argv(args), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=self.environ)
        except OSError as exc:
            raise RcloneFailed(f"cannot run rclone ({exc.strerror}): install it "
                               "(apt-get install rclone)") from None
        while True:
            try:
                out, err = proc.communicate(timeout=0.5)
                return subprocess.CompletedProcess(args, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                if self.interrupt():
                    proc.kill()
                    proc.communicate()
                    raise Cancelled() from None

    def check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        """Raise for a failed command: Unavailable when the remote cannot be reached now (the
        caller retries), RcloneFailed when it was reached and the command failed."""
        if proc.returncode == 0:
            return
        message = self.message(proc.stderr)
        self.ping()  # raises Unavailable when the remote is unreachable
        raise RcloneFailed(f"{what}: rclone: {message}")

    def ping(self) -> dict[str, Any]:
        """Whether the remote answers (a stat of its root path; one that does not exist yet
        counts: the first copy creates it). Unavailable if not, with rclone's reason."""
        proc = self.run("lsjson", "--stat", self.peer.remote)
        if proc.returncode not in (0, *_ABSENT):
            raise Unavailable(f"rclone remote {self.peer.remote!r} cannot be reached: "
                              f"{self.message(proc.stderr)}")
        return {"site": None, "remote": self.peer.remote}

    # ----- objects at the remote ------------------------------------------------------------
    def listing(self, path: str, directory: bool) -> list[dict[str, Any]] | None:
        """The members at ``path`` (one for a file) with sizes and any hashes; None if absent.
        A file where a directory is expected, or the reverse, lists as something else."""
        args = ("lsjson", "-R", "--files-only", "--hash", path) if directory else \
            ("lsjson", "--stat", "--hash", path)
        proc = self.run(*args)
        if proc.returncode in _ABSENT:
            return None
        self.check(proc, f"listing {path}")
        data = json.loads(proc.stdout)
        return data if directory else [data]

    def digest(self, path: str, entries: list[dict[str, Any]], directory: bool,
               expected: Mapping[str, str]) -> ck.Digest:
        """The checksums at ``path`` that compare with ``expected`` (the catalogue's)."""
        use_md5 = self.peer.verify == "auto" and ck.MD5 in expected and all(
            (e.get("Hashes") or {}).get(ck.MD5) for e in entries)
        algorithm = ck.MD5 if use_md5 else ck.preferred_algorithm(expected)

        def member(entry: dict[str, Any]) -> ck.Digest:
            if entry.get("IsDir"):
                raise RcloneFailed(f"{path} is a directory where a file is expected")
            if use_md5:
                return ck.Digest(entry["Size"], {ck.MD5: entry["Hashes"][ck.MD5]}, False)
            return self.download_digest(f"{path}/{entry['Path']}" if directory else path,
                                        algorithm)

        if not directory:
            return member(entries[0])
        entries = sorted(entries, key=lambda e: e["Path"].encode("utf-8", "surrogateescape"))
        return ck.manifest_digest(((e["Path"], member(e)) for e in entries), (algorithm,))

    def download_digest(self, path: str, algorithm: str) -> ck.Digest:
        """Stream the object back (``rclone cat``) through the hasher, in constant memory."""
        hasher = ck.StreamHasher((algorithm,))
        proc = subprocess.Popen(self._argv(("cat", path)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.environ)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(ck.CHUNK_SIZE):
                hasher.update(chunk)
                if self.interrupt():
                    raise Cancelled()
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            proc.wait()
        self.check(subprocess.CompletedProcess((), proc.returncode, "", err), f"reading {path}")
        return hasher.digest()

    def upload(self, source: str, path: str, directory: bool) -> None:
        proc = self.run("copy" if directory else "copyto", source, path)
        self.check(proc, f"copying to {path}")

    def move(self, path: str, to: str) -> None:
        self.check(self.run("moveto", path, to), f"renaming {path} to {to}")

    def remove(self, path: str, directory: bool) -> None:
        """Delete ``path`` (a whole directory data set); nothing there is no error."""
        proc = self.run("purge" if directory else "deletefile", path)
        if proc.returncode != 0 and self.listing(path, directory) is not None:
            self.check(proc, f"removing {path}")
