"""Every state a job, a job's item, a recall copy, a received transfer file, a copy's fixity, a
staged folder and a destination folder's markers can be in: one ``StrEnum`` each, with the
strings the database, the REST API and the markers hold.

A ``StrEnum`` member is the string itself (``JobState.QUEUED == "queued"``, and JSON, SQL,
f-strings and, here, ``repr`` see ``"queued"``), so replies, rows, files and what a notebook
shows are unchanged; code names a state through its enum, so a misspelt one is an
``AttributeError`` and a type checker sees which kind of state a value is.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A kind of state; a member shows as its string (``repr`` too: a notebook cell, a log)."""

    def __repr__(self) -> str:
        return repr(self.value)


class JobState(State):
    """A job's ``state`` (``job`` table; ``GET jobs``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: The states in which a job still holds its destination (and its STAGING-IN-PROGRESS marker).
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
#: The states a job ends in (it never leaves them unless retried).
FINISHED_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ItemState(State):
    """A job item's ``state`` (``job_item``): one file or directory to move."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # its file is only on a cold store: no stream claims it until recalled
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


#: The states of an item whose file is at its destination (moved by the job, or there already).
ARRIVED_ITEM_STATES = (ItemState.DONE, ItemState.SKIPPED)
#: The item states a retry queues again (``waiting`` ones stay so: a retry recalls them first).
RETRIED_ITEM_STATES = (ItemState.FAILED, ItemState.QUEUED, ItemState.RUNNING)


class RecallState(State):
    """A recall copy's ``state`` (``recall_copy``): a cold file brought to a buffer store."""

    RECALLING = "recalling"
    RECALLED = "recalled"
    REAPING = "reaping"
    REAPED = "reaped"
    FAILED = "failed"


#: The states in which a recall copy holds room on its buffer store.
HELD_RECALL_STATES = (RecallState.RECALLING, RecallState.RECALLED, RecallState.REAPING)


class TransferItemState(State):
    """A received file's ``state`` (``transfer_item``, the receiving site's queue)."""

    QUEUED = "queued"
    RECEIVING = "receiving"
    COMMITTED = "committed"
    FAILED = "failed"


#: The states of a file the receiving site has yet to finish.
ACTIVE_TRANSFER_ITEM_STATES = (TransferItemState.QUEUED, TransferItemState.RECEIVING)


class FixityState(State):
    """What the last re-hash of a copy found (``instance.fixity``)."""

    UNCHECKED = "unchecked"
    OK = "ok"
    BAD = "bad"  # its bytes no longer match the file's checksums
    MISSING = "missing"  # gone or unreadable


#: The findings that make a copy untrustworthy (fsck's default, repair's work).
BAD_FIXITY_STATES = (FixityState.BAD, FixityState.MISSING)


class FolderState(State):
    """What a staged folder's check found (``GET staged``: ``jobs.cleaner``); UNCHECKED: a site
    service's answer, which never reads users' folders."""

    INTACT = "intact"
    CHANGED = "changed"
    GONE = "gone"
    MOVED = "moved"
    BUSY = "busy"  # a job still stages into it
    UNCHECKED = "unchecked"


class MarkerState(State):
    """What a destination folder's STAGING-* markers say (``widgets.MarkerWatcher``)."""

    NONE = "none"
    IN_PROGRESS = "in-progress"
    ERRORS = "errors"
    SUCCEEDED = "succeeded"
