"""The Librarian's marker files in a staging destination: ``STAGING-IN-PROGRESS`` (the lock,
created with O_EXCL), then ``STAGING-SUCCEEDED`` or ``STAGING-ERRORS`` (one line per failed path).

Markers are a view of job state for the Librarian's stock ``--wait`` script; the database is the
truth. The in-progress marker names its job (``job <id>``), so a marker whose job is no longer
active (finished, forgotten, or a server restart in v1) is recovered instead of locking the
directory forever.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..catalogue.models import utcnow
from ..errors import Conflict

IN_PROGRESS = "STAGING-IN-PROGRESS"
SUCCEEDED = "STAGING-SUCCEEDED"
ERRORS = "STAGING-ERRORS"


def in_progress_text(job_id: int, owner: str) -> str:
    return f"job {job_id}\nowner {owner}\nstarted {utcnow().isoformat()}Z\n"


def holder(text: str) -> int | None:
    """The job id an in-progress marker's text names, or None (empty or foreign)."""
    parts = text.split("\n", 1)[0].split()
    if len(parts) == 2 and parts[0] == "job" and parts[1].isdigit():
        return int(parts[1])
    return None


def result_marker(errors: Iterable[str]) -> tuple[str, str]:
    """The result marker's name and text: SUCCEEDED (empty), or ERRORS with one line each."""
    lines = [line.replace("\n", " ") for line in errors]
    return (ERRORS, "".join(f"{line}\n" for line in lines)) if lines else (SUCCEEDED, "")


def marker_job(directory: Path) -> int | None:
    """The job id written in the in-progress marker, or None (absent, empty, or unreadable)."""
    try:
        return holder((directory / IN_PROGRESS).read_text(errors="replace"))
    except OSError:
        return None


def present(directory: Path) -> str | None:
    """The marker a poller of ``directory`` sees now (in-progress before a result, as
    ``finish`` leaves both for a moment), or None: at most three stats, for display."""
    for name in (IN_PROGRESS, ERRORS, SUCCEEDED):
        if os.path.exists(directory / name):  # False on any OSError, not a raise
            return name
    return None


def _create_exclusive(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def acquire(directory: Path, job_id: int, owner: str, is_active: Callable[[int], bool]) -> None:
    """Take the directory for ``job_id``: clear old result markers and create the in-progress
    marker exclusively. Raises Conflict naming the job that holds it; a marker of a job that
    ``is_active`` says is over is stale and replaced."""
    text = in_progress_text(job_id, owner)
    for _ in range(3):
        try:
            _create_exclusive(directory / IN_PROGRESS, text)
            break
        except FileExistsError:
            holder = marker_job(directory)
            if holder == job_id:
                break
            if holder is not None and is_active(holder):
                raise Conflict(
                    f"job {holder} is already staging into {directory}", job_id=holder
                ) from None
            # A dead job's (or a foreign, unparseable) marker: recover the directory.
            with contextlib.suppress(FileNotFoundError):
                (directory / IN_PROGRESS).unlink()
    else:
        raise Conflict(f"could not take {directory}: {IN_PROGRESS} keeps reappearing")
    for name in (SUCCEEDED, ERRORS):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def ensure_in_progress(directory: Path, job_id: int, owner: str) -> None:
    """On (re)start of a job that owns the directory: put its marker back if it went missing."""
    directory.mkdir(parents=True, exist_ok=True)
    if marker_job(directory) != job_id:
        with contextlib.suppress(FileNotFoundError):
            (directory / IN_PROGRESS).unlink()
        _create_exclusive(directory / IN_PROGRESS, in_progress_text(job_id, owner))


def release(directory: Path, job_id: int) -> None:
    """Remove the in-progress marker if it is this job's."""
    if marker_job(directory) == job_id:
        with contextlib.suppress(FileNotFoundError):
            (directory / IN_PROGRESS).unlink()


def finish(directory: Path, job_id: int, errors: Iterable[str]) -> None:
    """Write the result marker, then drop the in-progress one (so a poller never sees neither).
    Writing goes through a temporary name, so a reader never sees a half-written marker."""
    name, text = result_marker(errors)
    for other in (SUCCEEDED, ERRORS):
        if other != name:
            with contextlib.suppress(FileNotFoundError):
                (directory / other).unlink()
    tmp = directory / f".{name}.hera-tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / name)
    release(directory, job_id)
