"""Standing orders: a user's named search kept in sync with a peer, without operator action.

``StandingOrders`` owns the orders of one server's user (create, list, show, pause, resume,
delete) and their evaluation. Evaluating an order finds the files its search matches now that
are not yet at its peer (no ``RemoteInstance`` for that site), not already on their way there
(an item of an unfinished transfer job to that peer, whoever launched it) and that have an
available instance on an online store here, and launches ONE transfer job for them through
``Core.transfer`` (so the launch is audited like any transfer request). Files already at the
peer are therefore never sent twice, and a file the peer turns out to hold already is answered
``have`` by it and recorded, not sent.

When: ``tick`` (called every few seconds by the server, see ``api/orders.py``) evaluates every
active order when new instances were registered on this site since the last round (one indexed
``max(instance.id)`` read: it sees ingests through REST, the CLI, the Librarian RPC, transfers
received and uploads by the worker, whatever process wrote them, and costs ingest nothing),
when an order was created or resumed, and otherwise every ``interval_s`` (files that became
available again, failed sends to retry). Paused orders are not evaluated at all.

A file the peer refused as a ``conflict`` (it holds other content under that name) is held
back: offering it every round would fail the same way. Retrying or forgetting the job that
recorded the refusal offers it again (once the peer's copy is sorted out).
"""

from __future__ import annotations

import builtins
import copy
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError

from ..catalogue.models import File, Instance, Store, utcnow
from ..catalogue.query_text import parse_query_text
from ..catalogue.search import search_select
from ..catalogue.search_compile import validate_search
from ..catalogue.search_parse import parse_search
from ..catalogue.serialize import iso
from ..errors import Conflict, InvalidRequest, NotFound, StagingError
from ..jobs.models import JobRow, JobItem, item_state_is
from ..states import ACTIVE_JOB_STATES, ItemState
from .peer_sender import peer_destination, refusal
from .models import RemoteInstance
from .order_models import StandingOrder
from .protocol import CONFLICT

if TYPE_CHECKING:
    from ..core import Core

log = logging.getLogger("hera_stage_ext")

#: What a standing order may be called (it is a URL path segment and a CLI argument).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
_FIELDS = ("name", "peer", "search", "query")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(f"a standing order's name is 1 to 128 letters, digits, '.', '_' "
                             f"or '-', starting with a letter or digit, not {name!r}")
    return name


def order_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST standing-orders`` body: ``name``, ``peer`` and exactly one of
    ``search`` (JSON) or ``query`` (one-line text), compiled by the real search compiler so a
    search that could never run is refused now, not at its first evaluation."""
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; a standing "
                             f"order has {', '.join(_FIELDS)}")
    name = check_name(body.get("name"))
    peer = body.get("peer")
    if not isinstance(peer, str) or not peer:
        raise InvalidRequest("'peer' must name a configured peer (GET peers lists them)")
    if ("search" in body) == ("query" in body):
        raise InvalidRequest("give exactly one of 'search' (JSON) or 'query' (text)")
    query = ""
    if "search" in body:
        search = parse_search(body["search"])
    else:
        query = body["query"]
        if not isinstance(query, str):
            raise InvalidRequest("'query' must be a string")
        search = parse_query_text(query)
    validate_search("files", search)
    return {"name": name, "peer": peer, "search": search, "query": query}


class _Due(NamedTuple):
    """What an evaluation needs of an order, read before the round (no live ORM object)."""

    id: int
    name: str
    owner: str
    peer: str
    search: Any


def order_json(order: StandingOrder) -> dict[str, Any]:
    return {
        "name": order.name,
        "owner": order.owner,
        "peer": order.peer,
        "search": order.search,
        "query": order.query,
        "paused": order.paused,
        "created_at": iso(order.created_at),
        "last_evaluated_at": iso(order.last_evaluated_at),
        "last_launched_at": iso(order.last_launched_at),
        "last_job_id": order.last_job_id,
        "last_files": order.last_files,
        "last_message": order.last_message,
    }


class StandingOrders:
    """The standing orders of ``core``'s user, and their evaluation."""

    def __init__(self, core: Core, interval_s: float = 300.0) -> None:
        self.core = core
        self.interval_s = interval_s
        self._round = threading.Lock()  # one evaluation round at a time
        self._wake = threading.Event()  # an order was created or resumed: evaluate soon
        self._seen: int | None = None  # newest instance id when the last round began
        self._next_round = 0.0  # monotonic time of the next periodic round

    def for_core(self, core: Core) -> StandingOrders:
        """These orders as one request's user sees them (site mode: a core per request);
        evaluation rounds and wake-ups stay shared."""
        if core is self.core:
            return self
        view = copy.copy(self)
        view.core = core
        return view

    # ----- CRUD -----------------------------------------------------------------------------
    def _row(self, s: Any, name: str) -> StandingOrder:
        order = s.scalar(select(StandingOrder).where(
            StandingOrder.owner == self.core.owner, StandingOrder.name == check_name(name)))
        if order is None:
            raise NotFound(f"no standing order named {name!r}")
        return order

    def list(self) -> list[dict[str, Any]]:
        with self.core.catalogue.db.read() as s:
            return [order_json(o) for o in s.scalars(select(StandingOrder).where(
                StandingOrder.owner == self.core.owner).order_by(StandingOrder.name))]

    def get(self, name: str) -> dict[str, Any]:
        with self.core.catalogue.db.read() as s:
            return order_json(self._row(s, name))

    def create(self, body: dict[str, Any], via: str = "rest") -> dict[str, Any]:
        """Create an order from a request body (``order_request``); audited, refusals too."""
        asked: dict[str, Any] = {"order": body.get("name"), "search": body.get("search"),
                                 "query": body.get("query")}
        peer = body.get("peer")
        destination = peer_destination(peer if isinstance(peer, str) else "?")
        try:
            request = order_request(body)
            asked["search"] = request["search"]
            self.core.peers.peer(request["peer"])  # NotFound for a peer not configured
            try:
                with self.core.catalogue.db.write() as s:
                    if s.scalar(select(StandingOrder.id).where(
                            StandingOrder.owner == self.core.owner,
                            StandingOrder.name == request["name"])) is not None:
                        raise Conflict(f"a standing order named {request['name']!r} exists "
                                       "already (delete it first, or choose another name)")
                    order = StandingOrder(owner=self.core.owner, paused=False, created_at=utcnow(),
                                          last_files=0, last_message="not evaluated yet",
                                          **request)
                    s.add(order)
                    s.flush()
                    result = order_json(order)
            except IntegrityError:  # created by a concurrent request meanwhile
                raise Conflict(f"a standing order named {request['name']!r} exists "
                               "already") from None
        except StagingError as exc:
            self.core.audit(via, None, "order-create", destination, "standing-order", asked,
                            "refused", exc.message)
            raise
        self.core.audit(via, None, "order-create", destination, "standing-order", asked,
                        "accepted", "")
        self._wake.set()
        return result

    def delete(self, name: str) -> dict[str, Any]:
        """Delete an order; the jobs it launched run on (cancel them as any job)."""
        with self.core.catalogue.db.write() as s:
            s.delete(self._row(s, name))
        return {"deleted": name}

    def set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        with self.core.catalogue.db.write() as s:
            order = self._row(s, name)
            order.paused = paused
            s.flush()
            result = order_json(order)
        if not paused:
            self._wake.set()  # resumed: catch up on what arrived meanwhile, now
        return result

    # ----- evaluation -----------------------------------------------------------------------
    def tick(self) -> int:
        """Evaluate every active order if a round is due (see the module's docstring);
        returns the number of orders evaluated."""
        with self._round:
            with self.core.catalogue.db.read() as s:
                newest = s.scalar(select(func.max(Instance.id)))
                query = select(
                    StandingOrder.id, StandingOrder.name, StandingOrder.owner,
                    StandingOrder.peer, StandingOrder.search).where(
                    StandingOrder.paused.is_(False)).order_by(StandingOrder.name)
                if not self.core.site_mode:  # a site service evaluates every user's orders
                    query = query.where(StandingOrder.owner == self.core.owner)
                orders = [_Due(*row) for row in s.execute(query)]
            now = time.monotonic()
            if not (self._wake.is_set() or newest != self._seen or now >= self._next_round):
                return 0
            self._wake.clear()
            self._seen, self._next_round = newest, now + self.interval_s
            for order in orders:
                self.evaluate(order)
            return len(orders)

    def pending(self, order: _Due) -> builtins.list[str]:  # (``list``: the method above)
        """The files ``order`` should send now: matched by its search, with an available
        instance on an online store here, not at its peer, not in an unfinished transfer job
        to it, not refused by it as a conflict. At most ``max_stage_files`` (the rest go at the
        next evaluation)."""
        destination = peer_destination(order.peer)
        peer_jobs = (JobItem.name == File.name, JobItem.job_id == JobRow.id,
                     JobRow.destination == destination)
        with self.core.catalogue.db.read() as s:
            stmt = search_select(s, "files", order.search).with_only_columns(File.name).where(
                exists().where(Instance.file_id == File.id, Instance.available,
                               Instance.store_id == Store.id, Store.available,
                               Store.kind == "online"),
                ~exists().where(RemoteInstance.file_id == File.id,
                                RemoteInstance.site == order.peer),
                ~exists().where(*peer_jobs, JobRow.state.in_(ACTIVE_JOB_STATES)),
                ~exists().where(*peer_jobs, item_state_is(ItemState.FAILED),
                                JobItem.error.startswith(refusal(CONFLICT, ""), autoescape=True)),
            ).order_by(File.name).limit(self.core.max_stage_files)
            return list(s.scalars(stmt))

    def evaluate(self, order: _Due) -> None:
        """Launch one transfer job of what ``order`` should send now (if anything), and record
        what was done on the order."""
        launched: dict[str, Any] | None = None
        try:
            names = self.pending(order)
            if not names:
                message = (f"nothing to send: every matching file is at {order.peer}, on its way "
                           f"or refused by it as a conflict")
            else:
                core = (self.core.for_user(order.owner, frozenset({"transfer"}))
                        if self.core.site_mode else self.core)
                launched = core.transfer(order.peer, names=names, search=order.search,
                                         via="order")
                message = (f"launched job {launched['id']}: {launched['files_total']} file(s) "
                           f"not yet at {order.peer}")
        except StagingError as exc:  # peer gone from the configuration, refusing us, ...
            message = f"could not launch a transfer: {exc.message}"
        log.info("standing order %r of %s: %s", order.name, order.owner, message)
        with self.core.catalogue.db.write() as s:
            row = s.get(StandingOrder, order.id)
            if row is None:  # deleted meanwhile
                return
            row.last_evaluated_at = utcnow()
            row.last_message = message
            if launched is not None:
                row.last_launched_at = row.last_evaluated_at
                row.last_job_id = launched["id"]
                row.last_files = launched["files_total"]
