"""Site-to-site endpoints under ``<base_url>/hera-stage/peer/`` and the native ``GET peers``.

The peer endpoints authenticate with the peer secret (``Authorization: HeraPeer <site>:<secret>``,
checked against the hashes in ``c.StagingApp.peer_secrets``), not with a Jupyter token: the
calling site has none. A missing or wrong secret, or an unknown site, gets 401 before the body
is read, and nothing is written. The protocol is described in ``transfer/protocol.py``.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import web

from ..errors import StagingError
from ..transfer.sender import list_peers
from .base import ApiError, BaseHandler
from .content import Throttle, online_instance_path, send_file, send_tar


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
    """The bytes of a file (one ``bytes=a-b`` Range) or the tar stream of a directory data set,
    for a peer's pull; all pulls of one peer together at most its ``max_bytes_per_s`` (a
    server-wide throttle per peer) when one is configured."""

    @allow_unauthenticated
    async def get(self, name: str) -> None:
        peer = self.peer()
        path = await self.call(online_instance_path, self.core, name)
        configured = self.core.peers.peers.get(peer)
        throttle = None
        if configured is not None and configured.max_bytes_per_s:
            key = (peer, configured.max_bytes_per_s)
            throttle = _throttles.setdefault(key, Throttle(configured.max_bytes_per_s))
        if path.is_dir():
            await send_tar(self, path, name, throttle=throttle)
        else:
            await send_file(self, path, throttle=throttle)


#: (peer, rate) -> the throttle every pull of that peer shares in this server.
_throttles: dict[tuple[str, int], Throttle] = {}
