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
Its commands work on many files per run (rclone takes a few tenths of a second to start): the
lists of files go to rclone in private temporary files (``--files-from-raw``,
``--filter-from``), never on its command line. Sending itself is ``rclone_send.py``.

Verification never trusts rclone's exit status alone: ``md5s`` gets the MD5 of every file it
is asked about in one run -- the backend's (``rclone hashsum md5``: SFTP, S3, ...) when
``verify`` is ``auto``, else, and for files the backend has none for, computed by rclone as it
reads the bytes back (``--download``) -- for the sender to compare with the catalogue's;
``download_digest`` streams one object back (``rclone cat``) through
``checksums.StreamHasher`` in constant memory, for a file the catalogue knows by xxh3-128 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..catalogue import checksums as ck
from ..errors import RcloneFailed, Unavailable
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
#: The count of server-side renames in rclone's closing statistics.
_RENAMED = re.compile(r"^Renamed:\s+(\d+)\s*$", re.MULTILINE)
_TIMESTAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (ERROR |NOTICE |INFO )?:?\s*")


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
        return join(self.remote, relative)

    def __repr__(self) -> str:  # never show the environment (secrets)
        return f"RclonePeer({self.name!r}, {self.remote!r})"


def join(base: str, relative: str) -> str:
    """The rclone path of ``relative`` under ``base`` (``remote:`` or ``remote:path``)."""
    return (base if base.endswith((":", "/")) else base + "/") + relative


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


def client_for(peer: Peer, site_name: str, timeout: float) -> PeerClient | RcloneClient:
    """The client that talks to ``peer``: rclone for an rclone peer, else the protocol's;
    ``timeout``: how long one request (or rclone command) may take, in seconds."""
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
        #: Whether the backend reports MD5s (until a ``hashsum`` says it does not).
        self.backend_md5 = True

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

    # ----- objects at the remote -------------------------------------------------------------
    def sizes(self, path: str, rules: Sequence[str] = ()) -> dict[str, int]:
        """Every file below ``path`` (relative path -> size), or those the filter ``rules``
        (rclone's ``--filter-from`` lines) let through; nothing there is an empty answer."""
        args = ("lsjson", "-R", "--files-only", "--no-mimetype", "--no-modtime")
        if rules:
            with _list_file(rules) as filters:
                proc = self.run(*args, "--filter-from", filters, path)
        else:
            proc = self.run(*args, path)
        if proc.returncode in _ABSENT:
            return {}
        self.check(proc, f"listing {path}")
        return {e["Path"]: int(e["Size"]) for e in json.loads(proc.stdout)}

    def md5s(self, path: str, files: Collection[str] | None = None) -> dict[str, str]:
        """The MD5 of each of ``files`` below ``path`` (paths relative to it; None: every
        file there) that is there: the backend's with ``verify`` ``auto``, else (and for files
        the backend has none for) computed by rclone as it reads the bytes back
        (``hashsum --download``). One run, or two when the backend lacks some."""
        if files is not None and not files:
            return {}
        found: dict[str, str] = {}
        download: Collection[str] | None = files
        if self.peer.verify == "auto" and self.backend_md5:
            proc = self._hashsum(path, files, download=False)
            if proc.returncode != 0 and "hash type not supported" in proc.stderr:
                self.backend_md5 = False  # plain WebDAV and the like: download from now on
            elif proc.returncode in _ABSENT:
                return found
            else:
                self.check(proc, f"reading the checksums under {path}")
                listed = _hashsum_lines(proc.stdout)
                found = {name: digest for name, digest in listed.items() if digest}
                download = [name for name, digest in listed.items() if not digest]
        if download is None or download:
            proc = self._hashsum(path, download, download=True)
            if proc.returncode in _ABSENT:
                return found
            self.check(proc, f"reading back the files under {path}")
            found.update(_hashsum_lines(proc.stdout))
        return found

    def _hashsum(self, path: str, files: Collection[str] | None, download: bool
                 ) -> subprocess.CompletedProcess[str]:
        args = ("hashsum", ck.MD5, *(("--download",) if download else ()))
        if files is None:
            return self.run(*args, path)
        with _list_file(files) as listed:
            return self.run(*args, "--files-from-raw", listed, path)

    def download_digest(self, path: str, algorithm: str) -> ck.Digest:
        """Stream one object back (``rclone cat``) through the hasher, in constant memory: for
        a file the catalogue knows by no checksum rclone computes (xxh3-128 only)."""
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

    def copy(self, root: str, files: Collection[str], to: str) -> str:
        """Copy ``files`` (paths relative to the local folder ``root``) to the same paths
        under ``to``; "" when rclone says all went well, else its complaint (what did arrive
        is what verification looks at)."""
        if not files:
            return ""
        with _list_file(files) as listed:
            proc = self.run("copy", "--files-from-raw", listed, root, to)
        return self._outcome(proc, f"copying to {to}")

    def move(self, path: str, to: str, files: Collection[str]) -> tuple[bool, str]:
        """Move ``files`` (relative to ``path``) to the same paths under ``to``, never over
        anything there: rclone lists the folders under ``to`` first and leaves a file where it
        is when its name is taken (``--ignore-existing``). Whether rclone says it renamed
        every one (its closing count), and "" or its complaint, as for ``copy``."""
        # Not --no-traverse (a look per name right before its rename): on SFTP that made a
        # move of 200 files into 20 folders 9x slower (35 ms per file).
        with _list_file(files) as listed:
            proc = self.run("move", "--ignore-existing", "--stats-log-level", "NOTICE",
                            "--files-from-raw", listed, path, to)
        return self._renamed(proc, len(files)), self._outcome(proc, f"renaming into {to}")

    def move_file(self, path: str, to: str) -> tuple[bool, str]:
        """``move`` for one file at the top of the remote (see ``rclone_send``)."""
        proc = self.run("moveto", "--ignore-existing", "--stats-log-level", "NOTICE", path, to)
        return self._renamed(proc, 1), self._outcome(proc, f"renaming to {to}")

    @staticmethod
    def _renamed(proc: subprocess.CompletedProcess[str], files: int) -> bool:
        counts = _RENAMED.findall(proc.stderr)
        return proc.returncode == 0 and bool(counts) and int(counts[-1]) == files

    def _outcome(self, proc: subprocess.CompletedProcess[str], what: str) -> str:
        try:
            self.check(proc, what)
        except RcloneFailed as exc:  # Unavailable goes up: the caller tries again later
            return exc.message
        return ""

    def folders(self, path: str) -> list[str]:
        """The names of the folders right under ``path`` (none if it does not exist)."""
        proc = self.run("lsjson", "--dirs-only", "--no-mimetype", "--no-modtime", path)
        if proc.returncode in _ABSENT:
            return []
        self.check(proc, f"listing {path}")
        return [e["Name"] for e in json.loads(proc.stdout)]

    def remove(self, path: str) -> None:
        """Delete the folder ``path`` and everything in it; nothing there is no error."""
        proc = self.run("purge", path)
        if proc.returncode not in (0, *_ABSENT):
            self.check(proc, f"removing {path}")


@contextlib.contextmanager
def _list_file(lines: Iterable[str]) -> Iterator[str]:
    """A private temporary file of ``lines`` for rclone's ``--files-from-raw`` or
    ``--filter-from`` (lists go in files: no command-line limit, nothing in ``ps``)."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", errors="surrogateescape",
                                     prefix="hera-rclone-", suffix=".txt") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        yield f.name


def _hashsum_lines(out: str) -> dict[str, str]:
    """``rclone hashsum md5`` output (``<32 hex>  <path>``) as path -> hex ("" for a file
    the backend has no MD5 for: a blank)."""
    found = {}
    for line in out.splitlines():
        if len(line) > 34:
            found[line[34:]] = line[:32].strip().lower()
    return found


def glob_escape(path: str) -> str:
    """``path`` as a literal in an rclone filter rule."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)
