"""Site-to-site endpoints under ``<base_url>/hera-stage/peer/`` and the native ``GET peers``.

The peer endpoints authenticate with the peer secret (``Authorization: HeraPeer <site>:<secret>``,
checked against the hashes in ``c.StagingApp.peer_secrets``), not with a Jupyter token: the
calling site has none. A missing or wrong secret, or an unknown site, gets 401 before the body
is read, and nothing is written. The protocol is described in ``transfer/protocol.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import iostream, web

from ..catalogue.naming import validate_name
from ..errors import InvalidRequest, NotFound, StagingError
from ..paths import confine
from ..transfer.sender import list_peers
from .base import ApiError, BaseHandler
from .content import CHUNK, parse_range


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

        def locate() -> Path:
            validate_name(name)
            instance = self.core.catalogue.locate(name)
            if instance["store_kind"] != "online":
                raise NotFound(f"{name!r} is only on a cold store; recall it first")
            store = self.core.catalogue.store(instance["store"])
            path = confine(instance["path"], [store["path"]], what="instance path")
            if not path.is_file():
                raise NotFound(f"the instance of {name!r} on {instance['store']} is missing "
                               "or is a directory")
            return path

        path = await self.call(locate)
        configured = self.core.peers.peers.get(peer)
        rate = configured.max_bytes_per_s if configured else 0
        size = path.stat().st_size
        start, end = 0, size - 1
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Type", "application/octet-stream")
        header = self.request.headers.get("Range")
        if header:
            try:
                byte_range = parse_range(header, size)
            except InvalidRequest as exc:
                raise ApiError(exc) from exc
            if byte_range is None:
                self.set_header("Content-Range", f"bytes */{size}")
                self.reply({"error": "RangeNotSatisfiable",
                            "message": f"range {header!r} is outside the file ({size} bytes)"},
                           status=416)
                return
            start, end = byte_range
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.set_header("Content-Length", str(max(end - start + 1, 0)))
        remaining = end - start + 1
        began, sent = time.monotonic(), 0
        with open(path, "rb") as f:
            f.seek(start)
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                self.write(chunk)
                try:
                    await self.flush()
                except iostream.StreamClosedError:
                    return
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        self.finish()
