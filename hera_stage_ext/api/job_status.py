"""The short-lived memory of ``GET jobs/<id>`` replies that many pollers of one job share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


#: Seconds one read of a job's status answers the polls of that job after it. The worker
#: records progress about once a second, so a poll within this sees nothing the read did not;
#: many pollers of a job (a panel in several tabs, scripts) then cost a few database reads a
#: second, and each poll answered from memory skips the thread-pool hop, whose thread wake-ups
#: cost more CPU than the read itself (load_bench.py).
STATUS_REUSE_SECONDS = 0.25


class JobStatusCache:
    """The replies of ``GET jobs/<id>`` (JSON text) read less than ``reuse_s`` ago, on the
    event loop. Polls arriving while a read runs wait for that read instead of starting
    another. A failed read (no such job, a database error) is not kept. This server's own
    changes to a job (cancel, retry, delete) drop its entry, so they show at once."""

    def __init__(self, reuse_s: float = STATUS_REUSE_SECONDS) -> None:
        self.reuse_s = reuse_s
        self._entries: dict[int, tuple[float, asyncio.Future[str]]] = {}

    async def get(self, job_id: int, read: Callable[[], Awaitable[str]]) -> str:
        now = time.monotonic()
        entry = self._entries.get(job_id)
        if entry is None or now - entry[0] > self.reuse_s:
            if len(self._entries) > 64:  # forget the stale ones, not only this job's
                self._entries = {k: e for k, e in self._entries.items()
                                 if now - e[0] <= self.reuse_s}
            entry = (now, asyncio.ensure_future(read()))
            self._entries[job_id] = entry
            entry[1].add_done_callback(lambda done: self._drop_failed(job_id, done))
        return await asyncio.shield(entry[1])

    def _drop_failed(self, job_id: int, done: asyncio.Future[str]) -> None:
        entry = self._entries.get(job_id)
        if entry is not None and entry[1] is done and (done.cancelled() or done.exception()):
            del self._entries[job_id]

    def forget(self, job_id: int) -> None:
        self._entries.pop(job_id, None)
