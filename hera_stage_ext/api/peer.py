"""Site-to-site endpoints under ``<base_url>/hera-stage/peer/`` and the native ``GET peers``.

The peer endpoints authenticate with the peer secret (``Authorization: HeraPeer <site>:<secret>``,
checked against the hashes in ``c.StagingApp.peer_secrets``), not with a Jupyter token: the
calling site has none. A missing or wrong secret, or an unknown site, gets 401 before the body
is read, and nothing is written. The protocol is described in ``transfer/protocol.py``.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import web

from ..errors import NotFound, StagingError
from ..transfer.sender import list_peers
from .base import ApiError, BaseHandler
from .content import online_instance_path, send_file


class PeersHandler(BaseHandler):
    """``GET peers`` (native API, Jupyter token): configured peers and their reachability."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"peers": await self.call(list_peers, self.core)})


class PeerBaseHandler(BaseHandler):
    def check_xsrf_cookie(self) -> None:
        """Sites post JSON with no cookie; the peer secret protects these endpoints."""

    def peer(self) -> str:
        """The calling site, proven by its secret; 401 otherwise."""
        try:
            return self.core.peers.authenticate(self.request.headers.get("Authorization"))
        except StagingError as exc:
            self.log.warning("hera_stage_ext: refused site-to-site %s %s from %s: %s",
                             self.request.method, self.request.path, self.request.remote_ip,
                             exc.message)
            raise ApiError(exc) from exc


class PeerPingHandler(PeerBaseHandler):
    @allow_unauthenticated
    async def get(self) -> None:
        peer = self.peer()
        self.reply({"site": self.core.site_name, "peer": peer})


class PeerAnnounceHandler(PeerBaseHandler):
    @allow_unauthenticated
    async def post(self) -> None:
        peer = self.peer()
        body = self.body_json()
        self.reply(await self.call(self.core.receiver.announce, peer, body))


class PeerStatusHandler(PeerBaseHandler):
    @allow_unauthenticated
    async def post(self) -> None:
        peer = self.peer()
        body = self.body_json()
        self.reply(await self.call(self.core.receiver.status, peer, body.get("names")))


class PeerFileContentHandler(PeerBaseHandler):
    """The bytes of a flat file for a peer's pull (one ``bytes=a-b`` Range), limited to the
    peer's ``max_bytes_per_s`` when one is configured."""

    @allow_unauthenticated
    async def get(self, name: str) -> None:
        peer = self.peer()

        path = await self.call(online_instance_path, self.core, name)
        if path.is_dir():
            raise ApiError(NotFound(f"{name!r} is a directory: data sets are not sent yet"))
        configured = self.core.peers.peers.get(peer)
        await send_file(self, path, max_bytes_per_s=configured.max_bytes_per_s if configured
                        else 0)
