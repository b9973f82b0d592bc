"""Bytes in flight: what one run of a job has moved and not yet committed, for its progress.

A job's ``bytes_done`` changes only when a batch is committed (its files on disk under their
final names, their results recorded), so a large file, or a hand-over of small files to a copy
helper, would show nothing until its end. ``InFlight`` counts the rest as it moves: the bytes
written so far of each file being copied (each stream's current file, each hand-over in a copy
helper, each large file a peer is pulling) and the bytes of the items through (verified, or
skipped as already there) that wait for the next commit. The run publishes the total with its
heartbeat (the job's ``bytes_moving``); a file is never counted done before it is committed.

Counts may lag (a part is dropped before its item's bytes are added as through, and a commit's
bytes leave the count after they are recorded), so that done + moving is at most a heartbeat
behind and never counts a byte twice.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable


class InFlight:
    """The bytes in flight of one run: parts (a file or hand-over being moved, by key) and the
    bytes through and not committed yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[Hashable, int] = {}
        self._through = 0

    def add(self, key: Hashable, n: int) -> None:
        """``n`` more bytes of the part ``key`` were written."""
        with self._lock:
            self._parts[key] = self._parts.get(key, 0) + n

    def set(self, key: Hashable, n: int) -> None:
        """The part ``key`` stands at ``n`` bytes (as its helper or peer reports it)."""
        with self._lock:
            self._parts[key] = n

    def drop(self, key: Hashable) -> None:
        """The part ``key`` is over (its item through, failed or given back)."""
        with self._lock:
            self._parts.pop(key, None)

    def drop_all(self, keys: list[Hashable]) -> None:
        """``drop`` of each of ``keys`` (a batch's items through at once)."""
        with self._lock:
            for key in keys:
                self._parts.pop(key, None)

    def through(self, n: int) -> None:
        """Items of ``n`` bytes are through and wait for the next commit."""
        with self._lock:
            self._through += n

    def committed(self, n: int) -> None:
        """Items of ``n`` bytes that were through are recorded now."""
        with self._lock:
            self._through = max(self._through - n, 0)

    def total(self) -> int:
        with self._lock:
            return self._through + sum(self._parts.values())
