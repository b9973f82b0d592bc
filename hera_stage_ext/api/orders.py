"""REST for standing orders (``standing-orders`` routes), thin handlers over
``transfer.orders.StandingOrders``, and the server's timer that evaluates them.

The timer only decides *when* to look (every ``check_s``); what a round does, and whether one
is due, is ``StandingOrders.tick``, run in the thread pool. The transfer jobs it launches run in
the worker like any other.
"""

from __future__ import annotations

import asyncio
import logging

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import PeriodicCallback

from ..transfer.orders import StandingOrders
from .base import BaseHandler

log = logging.getLogger("hera_stage_ext")

#: Tornado settings key of the server's ``StandingOrders``.
ORDERS_KEY = "hera_stage_orders"


class _OrdersHandler(BaseHandler):
    @property
    def orders(self) -> StandingOrders:
        return self.settings[ORDERS_KEY]


class StandingOrdersHandler(_OrdersHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"standing_orders": await self.call(self.orders.list)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()
        self.reply(await self.call(self.orders.create, body), status=201)


class StandingOrderHandler(_OrdersHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply(await self.call(self.orders.get, name))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        self.reply(await self.call(self.orders.delete, name))


class StandingOrderPauseHandler(_OrdersHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        self.reply(await self.call(self.orders.set_paused, name, True))


class StandingOrderResumeHandler(_OrdersHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        self.reply(await self.call(self.orders.set_paused, name, False))


class StandingOrderTimer:
    """Calls ``orders.tick`` every ``check_s`` seconds, off the event loop, never two at once."""

    def __init__(self, orders: StandingOrders, check_s: float) -> None:
        self.orders = orders
        self._callback = PeriodicCallback(self._tick, check_s * 1000)
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
            await asyncio.get_running_loop().run_in_executor(None, self.orders.tick)
        except Exception:  # the timer must outlive a database hiccup
            log.exception("standing orders")
        finally:
            self._busy = False
