"""The Librarian's marker files in a staging destination: ``STAGING-IN-PROGRESS`` (the lock,
created with O_EXCL), then ``STAGING-SUCCEEDED`` or ``STAGING-ERRORS`` (one line per failed path).

Markers are a view of job state for the Librarian's stock ``--wait`` script; the database is the
truth. The in-progress marker names its job (``job <id>``), so a marker whose job is no longer
active (finished, forgotten, or a server restart in v1) is recovered instead of locking the
directory forever.

Every marker is created, read, renamed and removed relative to the destination's open folder
(``safefs``), never through a symlink: created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a result
marker under a fresh temporary name, renamed over the old one), read with ``O_NOFOLLOW``. A
link planted under a marker's name is replaced or refused, never written through.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import safefs
from ..catalogue.models import utcnow
from ..errors import Conflict

IN_PROGRESS = "STAGING-IN-PROGRESS"
SUCCEEDED = "STAGING-SUCCEEDED"
ERRORS = "STAGING-ERRORS"


def in_progress_text(job_id: int, owner: str, made: bool = False) -> str:
    """The in-progress marker's text; ``made``: the job made the folder (so a worker that
    resumes the job knows it, for ``hera-stage clean``)."""
    return (f"job {job_id}\nowner {owner}\nstarted {utcnow().isoformat()}Z\n"
            + ("made yes\n" if made else ""))


def holder(text: str) -> int | None:
    """The job id an in-progress marker's text names, or None (empty or foreign)."""
    parts = text.split("\n", 1)[0].split()
    if len(parts) == 2 and parts[0] == "job" and parts[1].isdigit():
        return int(parts[1])
    return None


def result_marker(errors: Iterable[str]) -> tuple[str, str]:
    """The result marker's name and text: SUCCEEDED (empty), or ERRORS with one line each."""
    # One line each: no line break (nor any other control character) of a name reaches it.
    lines = ["".join(c if c.isprintable() else " " for c in line) for line in errors]
    return (ERRORS, "".join(f"{line}\n" for line in lines)) if lines else (SUCCEEDED, "")


#: Longest in-progress marker read (it holds three short lines).
_MARKER_BYTES = 4096


def made_by(dir_fd: int, job_id: int) -> bool:
    """Whether the open folder's in-progress marker is ``job_id``'s and says it made the
    folder."""
    text = _marker_text(dir_fd)
    return text is not None and holder(text) == job_id and "\nmade yes\n" in text


def marker_job(directory: Path | int) -> int | None:
    """The job id written in the in-progress marker of ``directory`` (a path, or the open
    folder), or None (absent, empty, unreadable, or not a plain file: a symlink is not read)."""
    if not isinstance(directory, int):
        try:
            fd, _made = safefs.open_dir(os.fspath(directory))
        except OSError:
            return None
        try:
            return marker_job(fd)
        finally:
            os.close(fd)
    text = _marker_text(directory)
    return None if text is None else holder(text)


def _marker_text(dir_fd: int) -> str | None:
    """The in-progress marker's text, or None (absent, unreadable, not a plain file)."""
    try:
        fd = os.open(IN_PROGRESS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted there
            return None
        return os.read(fd, _MARKER_BYTES).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def present(directory: Path) -> str | None:
    """The marker a poller of ``directory`` sees now (in-progress before a result, as
    ``finish`` leaves both for a moment), or None: at most three stats, for display (a
    symlink under a marker's name is not one)."""
    for name in (IN_PROGRESS, ERRORS, SUCCEEDED):
        try:
            if stat.S_ISREG(os.lstat(directory / name).st_mode):
                return name
        except OSError:
            continue
    return None


def _write_new(dir_fd: int, name: str, text: str) -> None:
    """Create ``name`` in the folder and write ``text``: O_EXCL and O_NOFOLLOW, so nothing
    already there (a symlink included) is ever written through."""
    fd = safefs.create(dir_fd, name, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def acquire(dir_fd: int, job_id: int, owner: str, is_active: Callable[[int], bool],
            shown: str = "the destination", made: bool = False) -> None:
    """Take the open folder for ``job_id``: clear old result markers and create the
    in-progress marker exclusively. Raises Conflict naming the job that holds it; a marker of a
    job that ``is_active`` says is over is stale and replaced."""
    text = in_progress_text(job_id, owner, made)
    for _ in range(3):
        try:
            _write_new(dir_fd, IN_PROGRESS, text)
            break
        except FileExistsError:
            holder = marker_job(dir_fd)
            if holder == job_id:
                break
            if holder is not None and is_active(holder):
                raise Conflict(
                    f"job {holder} is already staging into {shown}", job_id=holder
                ) from None
            # A dead job's (or a foreign, unparseable) marker: recover the directory.
            _unlink(dir_fd, IN_PROGRESS)
    else:
        raise Conflict(f"could not take {shown}: {IN_PROGRESS} keeps reappearing")
    for name in (SUCCEEDED, ERRORS):
        _unlink(dir_fd, name)


def ensure_in_progress(dir_fd: int, job_id: int, owner: str) -> None:
    """On (re)start of a job that owns the folder: put its marker back if it went missing."""
    if marker_job(dir_fd) != job_id:
        _unlink(dir_fd, IN_PROGRESS)
        _write_new(dir_fd, IN_PROGRESS, in_progress_text(job_id, owner))


def release(dir_fd: int, job_id: int) -> None:
    """Remove the in-progress marker if it is this job's."""
    if marker_job(dir_fd) == job_id:
        _unlink(dir_fd, IN_PROGRESS)


def finish(dir_fd: int, job_id: int, errors: Iterable[str]) -> None:
    """Write the result marker, then drop the in-progress one (so a poller never sees neither).
    Writing goes through a temporary name renamed over the marker, so a reader never sees a
    half-written marker; whatever is under that name (a leftover, or a symlink planted there)
    is removed and the file created exclusively, never written through."""
    name, text = result_marker(errors)
    for other in (SUCCEEDED, ERRORS):
        if other != name:
            _unlink(dir_fd, other)
    tmp = f".{name}.hera-tmp"
    for attempt in range(3):
        _unlink(dir_fd, tmp)
        try:
            _write_new(dir_fd, tmp, text)
            break
        except FileExistsError:  # put back meanwhile: remove it again
            if attempt == 2:
                raise
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink(dir_fd, tmp)
        raise
    release(dir_fd, job_id)
