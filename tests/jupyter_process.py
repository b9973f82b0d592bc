"""A real Jupyter server (or JupyterLab) in a subprocess, with the extension configured.

The one way the tests that need a separate server process (notebook kernels, the browser) and
the benchmarks start one: its own config, runtime and data directories, a free loopback port, a
token, and a wait until the extension answers. Stopping it stops the server, not the staging
worker it may have started (that runs in its own session on purpose; callers that must reap it
do so).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

#: Variables that would point a client in the server (or its kernels) at another server.
_FOREIGN_ENV = ("JPY_PARENT_PID", "HERA_STAGE_URL", "HERA_STAGE_TOKEN", "JUPYTERHUB_API_TOKEN",
                "JUPYTERHUB_SERVICE_URL", "HERA_STAGE_DB_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class JupyterProcess:
    process: subprocess.Popen[bytes]
    url: str  # the server's base URL, ending in '/'
    token: str
    root_dir: Path
    runtime_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 30) -> requests.Response:
        """``method`` on ``path`` (relative to the base URL) with the token."""
        return requests.request(method, self.url + path, json=body, timeout=timeout,
                                headers={"Authorization": f"token {self.token}"})

    def api(self, path: str, body: Any = None) -> Any:
        """JSON of ``hera-stage/api/<path>``: GET without a body, POST with one; raises on
        an HTTP error."""
        reply = self.request("GET" if body is None else "POST", f"hera-stage/api/{path}", body)
        reply.raise_for_status()
        return reply.json()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def jupyter_process(
    workdir: Path, *, root_dir: Path, config: dict[str, Any], lab: bool = False,
    env: dict[str, str] | None = None, token: str | None = None, startup_timeout: float = 120,
    prefix: Sequence[str] = (), port: int | None = None, ready_path: str | None = None,
) -> Iterator[JupyterProcess]:
    """Start ``jupyter server`` (``jupyterlab`` with ``lab``) with ``config`` (traitlets as
    JSON: ``{"StagingApp": {...}, "LabApp": {...}}``) and wait until the extension answers
    (or Jupyter itself, when the config disables the extension). ``port``: a port chosen
    beforehand (``free_port()``), for sites configured with each other's URL before either
    starts. ``ready_path``: what must answer for the server to count as started (default: the
    extension's status, else Jupyter's)."""
    config_dir, runtime_dir = workdir / "config", workdir / "runtime"
    config_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "ServerApp": {"jpserver_extensions": {"hera_stage_ext": True},
                                      **config.get("ServerApp", {})}}
    for name in ("jupyter_server_config.json", "jupyter_lab_config.json"):
        (config_dir / name).write_text(json.dumps(config, indent=2))
    enabled = config["ServerApp"]["jpserver_extensions"].get("hera_stage_ext")
    ready_path = ready_path or ("hera-stage/api/status" if enabled else "api/status")
    port, token = port or free_port(), token or secrets.token_hex(16)
    process_env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    process_env.update(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_RUNTIME_DIR=str(runtime_dir),
                       JUPYTER_DATA_DIR=str(workdir / "data"), **(env or {}))
    command = [sys.executable, "-m", "jupyterlab" if lab else "jupyter_server", "--no-browser",
               "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
               "--ServerApp.log_level=WARN"]
    if os.geteuid() == 0 and not prefix:
        command.append("--allow-root")
    # ``prefix`` runs the server under another identity (e.g. ``setpriv --reuid=...``).
    command = [*prefix, *command]
    log_path = workdir / ("lab.log" if lab else "server.log")
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env=process_env, cwd=root_dir, start_new_session=True)
    server = JupyterProcess(process, f"http://127.0.0.1:{port}/", token, root_dir, runtime_dir,
                            log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter exited ({process.returncode}):\n"
                                   + server.log_tail())
            with contextlib.suppress(requests.RequestException):
                if server.request("GET", ready_path, timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter did not answer within {startup_timeout} s:\n"
                                   + server.log_tail())
            time.sleep(0.25)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
