"""A throwaway PostgreSQL cluster on a loopback port, for the tests and the benchmarks.

Uses Debian's server binaries (``/usr/lib/postgresql/<major>/bin``). ``initdb`` and ``pg_ctl``
refuse to run as root, so as root they run as the ``postgres`` system user. The cluster lives in
a temporary directory and is stopped and deleted by ``stop()``.

With ``password_auth`` the loopback port asks every role for its password (SCRAM), as a site's
server does; the superuser then connects through the cluster's Unix socket, in a directory only
``postgres`` (and root) can enter.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_pg_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self, password_auth: bool = False) -> None:
        self.password_auth = password_auth
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hera-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PostgresCluster:
        self._run(
            self.bin_dir / "initdb", "-D", self.data, "-U", "postgres",
            *(["--auth-local=trust", "--auth-host=scram-sha-256"] if self.password_auth
              else ["--auth=trust"]),
            "--encoding=UTF8", "--locale=C.UTF-8",
        )
        self._options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            self.bin_dir / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-o", self._options,
            "-w", "start",
        )
        return self

    def restart(self) -> None:
        """Stop as a crash would (immediate: no checkpoint, connections cut) and start again
        on the same port."""
        self._run(self.bin_dir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        self._run(self.bin_dir / "pg_ctl", "-D", self.data, "-l", self.dir / "log",
                  "-o", self._options, "-w", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def superuser_conninfo(self, database: str = "postgres") -> str:
        """libpq connection string of the superuser (the socket under ``password_auth``)."""
        host = self.dir if self.password_auth else "127.0.0.1"
        return f"host={host} port={self.port} user=postgres dbname={database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(self.bin_dir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
