"""REST for standing orders (``standing-orders`` routes), thin handlers over
``transfer.orders.StandingOrders``.

Their evaluation is ``StandingOrders.tick``, which the server runs every
``standing_order_check_seconds`` through a ``Ticker`` (app.py); the transfer jobs it launches
run in the worker like any other.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..transfer.orders import StandingOrders
from .base import BaseHandler

#: Tornado settings key of the server's ``StandingOrders``.
ORDERS_KEY = "hera_stage_orders"


class _OrdersHandler(BaseHandler):
    @property
    def orders(self) -> StandingOrders:
        return self.settings[ORDERS_KEY].for_core(self.core)


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
