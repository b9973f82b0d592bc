"""``Ticker``: blocking work run in the thread pool at a fixed interval by the server's event loop,
for the server's periodic duties (job progress events, standing orders); a coroutine function
(a request to the site service) runs on the loop itself.

A tick is skipped while the previous one still runs, so a slow database never piles them up; an
exception is logged and the next tick runs as usual.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from tornado.ioloop import PeriodicCallback

log = logging.getLogger("hera_stage_ext")


class Ticker:
    def __init__(self, what: str, interval_s: float, work: Callable[[], Any],
                 then: Callable[[Any], None] | None = None) -> None:
        """Every ``interval_s``: ``work()`` in the thread pool, then ``then(result)`` on the
        event loop."""
        self.what, self.work, self.then = what, work, then
        self._callback = PeriodicCallback(self._tick, interval_s * 1000)
        self._busy = False

    def start(self) -> None:
        self._callback.start()

    def stop(self) -> None:
        self._callback.stop()

    async def _tick(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            if inspect.iscoroutinefunction(self.work):
                result = await self.work()
            else:
                result = await asyncio.get_running_loop().run_in_executor(None, self.work)
            if self.then is not None:
                self.then(result)
        except Exception:  # a periodic duty must outlive a database hiccup
            log.exception(self.what)
        finally:
            self._busy = False
