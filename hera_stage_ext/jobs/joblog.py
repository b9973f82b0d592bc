"""Job logs: the human-readable log of each job (``JobLog``, appended by whoever acts on the
job: creation, workers, cancel, retry), where logs are kept by default, and reading a log back a
piece at a time (``read_log``, for tails that never see half a line)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..catalogue.models import utcnow
from ..errors import InvalidRequest
from .models import Job


def default_log_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "hera_stage" / "job-logs"


class JobLog:
    """The human-readable log of one job: appended by whoever acts on the job.

    ``log(message)`` appends at once; ``log.note(message)`` (the per-file lines of a run) keeps
    the line until the next ``flush`` (or the next ``log(...)``, which flushes first), so that a
    second's worth of lines costs one write instead of an open, a write and a close per file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._held: list[str] = []
        self._dir_made = False

    @staticmethod
    def _line(message: str) -> str:
        return f"{utcnow().isoformat(timespec='milliseconds')}Z  {message}\n"

    def __call__(self, message: str) -> None:
        line = self._line(message)
        with self._lock:
            self._held.append(line)
            self._write_held()

    def note(self, message: str) -> None:
        line = self._line(message)
        with self._lock:
            self._held.append(line)

    def flush(self) -> None:
        with self._lock:
            if self._held:
                self._write_held()

    def append_lines(self, text: str) -> None:
        """Append lines written elsewhere (a user's worker in site mode ships its job's log
        to the service), as they are."""
        with self._lock:
            self._held.append(text)
            self._write_held()

    def _write_held(self) -> None:
        data = "".join(self._held).encode("utf-8", "surrogateescape")
        self._held.clear()
        if not self._dir_made:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._dir_made = True
        # O_APPEND: whole writes from several processes never interleave mid-line.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def read_log(job: Job | Mapping[str, Any], offset: int = 0,
             max_bytes: int = 1 << 20) -> tuple[str, int]:
    """The log from byte ``offset``: ``(text, next_offset)``, whole lines only, so a tail can
    call again with ``next_offset`` and never see half a line."""
    path = job["log_path"] if isinstance(job, Mapping) else job.log_path
    if offset < 0:
        raise InvalidRequest("offset must be >= 0")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return "", offset
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) < max_bytes:
        return "", offset
    data = data[:end] if end else data
    return data.decode("utf-8", "replace"), offset + len(data)
