"""Job logs: the human-readable log of each job (``JobLog``, appended by whoever acts on the
job: creation, workers, cancel, retry), where logs are kept by default and who may read them
(``prepare_log_dir``), the form in which a user's worker ships them (``LOG_TAIL_TYPE``), and
reading a log back a piece at a time (``read_log``, for tails that never see half a line).

Logs name users' paths, so they are private: the log folder is 0700 and each log 0600. With a
site group (``c.StagingApp.job_log_group``) the folder is 2750 in that group (new files take the
group) and each log 0640. A log takes its mode from its folder, so every process that writes
one (the server, the worker, a cancel) gives it the same without being told the group."""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from .models import JobRow


log = logging.getLogger("hera_stage_ext.jobs")

#: The log folder's mode without a site group, and with one (setgid: new files take its group).
PRIVATE_DIR, GROUP_DIR = 0o700, 0o2750
#: The content type of a worker-API item call whose job's log lines follow its JSON as they
#: are (a user's worker in site mode: ``http_store``, ``site.worker_ops.body_with_log``): the
#: JSON object on the first line (sent on one line: compact ``json.dumps`` writes no newline
#: and escapes the control characters in strings), then the lines in UTF-8.
#: Inside the JSON, a megabyte of lines a job was escaped by the worker and unescaped, with
#: the depth check's escape path, by the service: 0.29 us of the service's CPU a line, 0.11
#: of the worker's; as they are, neither.
LOG_TAIL_TYPE = "application/x-hera-stage-json-log-tail"
#: The worker-API calls whose body may be in that form (the item calls; a heartbeat would
#: take lines it does not append).
LOG_TAIL_ACTIONS = ("items/record", "items/exchange")


#: The control characters a log's text may not hold as they are (C0 but a tab and a newline,
#: DEL, C1): a log is shown on terminals (``hera-stage log``), where an escape sequence in a
#: line a user's worker sent, or a file's name, would act. Each is written escaped (``\x1b``).
#: (Not ``paths.CONTROL_CHARACTERS``, which refuses tabs and newlines in a name too.)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Every byte but those of C0 control characters other than a tab and a newline, and DEL
#: (deleted by ``bytes.translate``: a pass in C over a write's bytes finds whether any is
#: there).
_NOT_C0 = bytes(b for b in range(256) if not (b < 0x20 and b not in b"\t\n" or b == 0x7f))
#: C1 characters in UTF-8 (0xC2 0x80-0x9F; looked for only where a 0xC2 byte is: a name's
#: µ, ° or no-break space starts with one too).
_C1 = re.compile(b"\xc2[\x80-\x9f]")


def log_bytes(text: str) -> bytes:
    """``text`` as a log holds it: UTF-8 (undecodable bytes of a name as they were), its
    control characters escaped (``_CONTROL``)."""
    data = text.encode("utf-8", "surrogateescape")
    if data.translate(None, _NOT_C0) or b"\xc2" in data and _C1.search(data):
        data = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text).encode(
            "utf-8", "surrogateescape")
    return data


def default_log_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "hera_stage" / "job-logs"


def prepare_log_dir(path: str | os.PathLike[str], group: str = "") -> None:
    """Create the log folder if needed and make it 0700, or 2750 in ``group`` (a group name;
    ValueError if there is none of that name). A folder this account does not own keeps its
    mode (a warning says so)."""
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"job_log_group: no group named {group!r}") from None
    folder = Path(path)
    folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    try:
        if gid != -1:
            os.chown(folder, -1, gid)
        os.chmod(folder, GROUP_DIR if gid != -1 else PRIVATE_DIR)
    except OSError as exc:
        log.warning("hera_stage_ext: cannot make the job log folder %s private (%s): job logs "
                    "there may be readable by others", folder, exc.strerror)


#: The clock a line's stamp reads: nanoseconds since the epoch (UTC).
now_ns = time.time_ns
#: The last second a line was stamped in, and its text: a log line a file (a transfer's
#: per-file lines) spent more on formatting its date than on the rest of its note.
_stamp: tuple[int, str] = (-1, "")


def _stamp_second(second: int) -> tuple[int, str]:
    """``second`` (of the epoch) as a line's stamp gives it, kept as the last (one assignment:
    the threads stamping lines see the old pair or the new one, never half of each)."""
    global _stamp
    _stamp = (second, dt.datetime.fromtimestamp(second, dt.timezone.utc).replace(
        tzinfo=None).isoformat())
    return _stamp


def _file_mode(folder_mode: int) -> int:
    """A log's mode: group-readable only where its folder is."""
    return 0o640 if folder_mode & stat.S_IRGRP else 0o600


class JobLog:
    """The human-readable log of one job: appended by whoever acts on the job.

    ``log(message)`` appends at once; ``log.note(message)`` (the per-file lines of a run) keeps
    the line until the next ``flush`` (or the next ``log(...)``, which flushes first), so that a
    second's worth of lines costs one write instead of an open, a write and a close per file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._held: list[str] = []
        self._checked = False  # the file's mode and group set (once per JobLog)

    @staticmethod
    def _line(message: str) -> str:
        """``message`` stamped with the time (UTC, to the millisecond) as a line."""
        second, nanoseconds = divmod(now_ns(), 1_000_000_000)
        stamp = _stamp
        if stamp[0] != second:
            stamp = _stamp_second(second)
        return f"{stamp[1]}.{nanoseconds // 1_000_000:03d}Z  {message}\n"

    def __call__(self, message: str) -> None:
        line = self._line(message)
        with self._lock:
            self._held.append(line)
            self._write_held()

    def note(self, message: str) -> None:
        line = self._line(message)
        with self._lock:
            self._held.append(line)

    def notes(self, messages: list[str]) -> None:
        """``note`` of each of ``messages``, stamped with one time (a batch's lines, written
        in one go: a stamp and a lock for all, not one each)."""
        stamp = self._line("")[:-1]
        with self._lock:
            self._held.extend([f"{stamp}{message}\n" for message in messages])

    def flush(self) -> None:
        with self._lock:
            if self._held:
                self._write_held()

    def append_lines(self, text: str) -> None:
        """Append lines written elsewhere (a user's worker in site mode ships its job's log
        to the service), as they are but for their control characters (escaped, as every
        write's are)."""
        with self._lock:
            self._held.append(text)
            self._write_held()

    def _write_held(self) -> None:
        data = log_bytes("".join(self._held))
        self._held.clear()
        if not self._checked:
            self.path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        # O_APPEND: whole writes from several processes never interleave mid-line. Created
        # 0600 whatever the umask says; made 0640 below where the folder is group-readable.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        try:
            if not self._checked:
                self._set_mode(fd)
                self._checked = True
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def _set_mode(self, fd: int) -> None:
        """Give the log the mode (and group) its folder calls for; a log of another account,
        or one written before logs were private, is left as the file system allows."""
        folder = os.stat(self.path.parent)
        mine = os.fstat(fd)
        want = _file_mode(folder.st_mode)
        with contextlib.suppress(OSError):
            if want & stat.S_IRGRP and mine.st_gid != folder.st_gid:
                os.fchown(fd, -1, folder.st_gid)
            if stat.S_IMODE(mine.st_mode) != want:
                os.fchmod(fd, want)


def read_log(job: JobRow | Mapping[str, Any], offset: int = 0,
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
