"""Site-to-site endpoints under ``<base_url>/hera-stage/peer/`` and the native ``GET peers``.

The peer endpoints authenticate with the peer secret (``Authorization: HeraPeer <site>:<secret>``,
checked against the hashes in ``c.StagingApp.peer_secrets``), not with a Jupyter token: the
calling site has none. A missing or wrong secret, or an unknown site, gets 401 before the body
is read, and nothing is written. The protocol is described in ``transfer/protocol.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import iostream, web

from ..core import Core
from ..errors import InvalidRequest, NotFound, PayloadTooLarge, StagingError, Unavailable
from ..states import TransferItemState
from ..transfer.protocol import (
    BATCH_FILE_MAX, MAX_STATUS_WAIT, PUSH_MAX_BYTES, SIZES, UNKNOWN, BatchFraming,
    push_capability)
from ..transfer.outgoing import BatchMember, MemberReader, batch_paths, list_peers
from ..transfer.receiver import Receiver
from .base import ApiHttpError, BaseHandler
from .content import Throttle, online_instance_path, send_file, send_tar

#: Bytes gathered before a batch stream is flushed to the socket.
_FLUSH_BYTES = 1 << 20


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
            raise ApiHttpError(exc) from exc

    def receiver(self) -> Receiver:
        """This server's receiver; 404 where there is none (a server that only forwards to its
        site service holds no catalogue to receive into)."""
        receiver = self.core.receiver
        if receiver is None:
            raise ApiHttpError(NotFound("this server receives no site-to-site transfers"))
        return receiver


class PeerPingHandler(PeerBaseHandler):
    @allow_unauthenticated
    async def get(self) -> None:
        peer = self.peer()
        # What it takes in a push too: a sender pushes from its first claim on.
        self.reply({"site": self.core.site_name, "peer": peer, "push": push_capability()})


class PeerAnnounceHandler(PeerBaseHandler):
    @allow_unauthenticated
    async def post(self) -> None:
        peer = self.peer()
        body = self.body_json()
        self.reply(await self.call(self.receiver().announce, peer, body))


@web.stream_request_body
class PeerPushHandler(PeerBaseHandler):
    """``POST push``: small files with their announce in one body (``transfer/protocol.py``).
    The secret is checked, and the body's ``Content-Length`` against ``PUSH_MAX_BYTES`` (413),
    from the headers alone, before a byte of the body is read; the body is then gathered (at
    most that) and the receiver takes it whole in the thread pool, like an announce. At most
    ``PUSH_MAX_HELD`` pushes are held at once (each up to ``PUSH_MAX_BYTES`` in memory): one
    more is answered 503 before its body is read, and its sender announces those files
    instead (they are pulled)."""

    #: Pushes whose bodies this server holds now (the IOLoop's thread alone counts them).
    held = 0
    _peer = ""
    _holding = False
    _body_done = False

    async def prepare(self) -> None:  # type: ignore[override]  # (jupyter_server's is async)
        self._chunks: list[bytes] = []
        await super().prepare()
        self._peer = self.peer()
        self.receiver()
        length = self.request.headers.get("Content-Length")
        if length is None or not _DIGITS.fullmatch(length):
            error = InvalidRequest("a push needs its Content-Length")
            error.status = 411
            raise ApiHttpError(error)
        if int(length) > PUSH_MAX_BYTES:
            raise ApiHttpError(PayloadTooLarge(f"a push is at most {PUSH_MAX_BYTES} bytes, "
                                               f"this one {length}"))
        if PeerPushHandler.held >= PUSH_MAX_HELD:
            raise ApiHttpError(Unavailable(f"this site holds {PUSH_MAX_HELD} pushes already: "
                                           "announce the files instead"))
        PeerPushHandler.held += 1
        self._holding = True
        self.request.connection.set_max_body_size(PUSH_MAX_BYTES)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if not self._finished:  # (refused already: nothing kept)
            self._chunks.append(chunk)

    @allow_unauthenticated
    async def post(self) -> None:
        self._body_done = True  # held until its push is through, whatever the client does
        body = b"".join(self._chunks)
        self._chunks = []
        try:
            self.reply(await self.call(self.receiver().push, self._peer, body))
        finally:
            self._let_go()

    def _let_go(self) -> None:
        self._chunks = []
        if self._holding:
            self._holding = False
            PeerPushHandler.held -= 1

    def on_finish(self) -> None:
        self._let_go()
        super().on_finish()

    def on_connection_close(self) -> None:
        if not self._body_done:  # (a body still arriving: never processed)
            self._let_go()
        super().on_connection_close()


#: A ``Content-Length``: ASCII digits only (``str.isdigit`` takes others, which ``int`` refuses).
_DIGITS = re.compile(r"[0-9]{1,12}")
#: Pushes a server holds at once, at most (``PeerPushHandler``).
PUSH_MAX_HELD = 8
#: Folders a batch pull keeps open, at most: many pulls at once stay well under a server's
#: descriptor limit (a sender's own reads keep more: ``outgoing.FOLDERS_OPEN``).
_PULL_FOLDERS_OPEN = 16


class PeerStatusHandler(PeerBaseHandler):
    """``POST status``; with ``wait``, a long poll: answered as soon as one more of the names is
    committed or failed (the receiver's in-memory change counter says when to look again; the
    wait costs no thread and no query); with ``finished_only``, the answer lists only the files
    committed, failed or unknown, and only their rows are read (a sender following thousands
    needs no more), and it comes at once when it lists any."""

    @allow_unauthenticated
    async def post(self) -> None:
        peer = self.peer()
        body = self.body_json()
        receiver = self.receiver()
        wait = body.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise ApiHttpError(InvalidRequest("'wait' must be a non-negative number of seconds"))
        deadline = time.monotonic() + min(float(wait), MAX_STATUS_WAIT)
        names = body.get("names")
        finished_only = body.get("finished_only") is True
        seen = receiver.changes
        reply = await self.call(receiver.status, peer, names, finished_only)  # 400 unless names
        asked = len(names) if isinstance(names, list) else 0
        finished = _finished(reply)
        # A finished_only reply that lists a file is news already (the sender drops what it
        # learns, so every file listed finished since it last asked): answered at once. So a
        # finished_only poll that waits found every name known: it need not look again.
        while time.monotonic() < deadline and finished < asked \
                and not (finished_only and finished):
            await asyncio.sleep(0.02)
            if receiver.changes == seen:
                continue
            seen = receiver.changes
            reply = await self.call(receiver.status, peer, names, finished_only,
                                    finished_only)
            if _finished(reply) > finished:
                break
        self.reply(reply)


_FINISHED = (TransferItemState.COMMITTED, TransferItemState.FAILED, UNKNOWN)


def _finished(reply: dict[str, Any]) -> int:
    return sum(f["state"] in _FINISHED for f in reply["files"])


class PeerBatchHandler(PeerBaseHandler):
    """``POST files/batch``: many small files in one framed stream (``transfer/protocol.py``:
    compact when the receiver asks for it, else with JSON headers), read one at a time; the
    peer's throttle applies as to single pulls."""

    @allow_unauthenticated
    async def post(self) -> None:
        peer = self.peer()
        body = self.body_json()
        members = await self.call(batch_paths, self.core.catalogue.db, body.get("names"))
        throttle = _throttle(self.core, peer)
        framing = BatchFraming(compact=body.get("framing") == SIZES)
        self.set_header("Content-Type", "application/octet-stream")
        done = 0
        # Each folder opened once for the pull; the reader is used by one pool thread at a time.
        reader = MemberReader(members, folders_open=_PULL_FOLDERS_OPEN)
        try:
            self.write(framing.start())
            while done < len(members):
                # Files are read in the thread pool, about a flush's worth at a time.
                frames, done = await self.run(_read_members, reader, members, done, framing)
                self.write(frames)
                await self.flush()
                if throttle is not None:
                    await throttle.consume(len(frames))
            self.write(framing.end())
            await self.flush()
        except iostream.StreamClosedError:
            return
        finally:
            reader.close()
        self.finish()


class PeerFileContentHandler(PeerBaseHandler):
    """The bytes of a file (one ``bytes=a-b`` Range) or the tar stream of a directory data set,
    for a peer's pull; all pulls of one peer together at most its ``max_bytes_per_s`` (a
    server-wide throttle per peer) when one is configured."""

    @allow_unauthenticated
    async def get(self, name: str) -> None:
        peer = self.peer()
        path = await self.call(online_instance_path, self.core, name)
        throttle = _throttle(self.core, peer)
        if path.is_dir():
            await send_tar(self, path, name, throttle=throttle)
        else:
            await send_file(self, path, throttle=throttle)


def _read_members(reader: MemberReader, members: list[BatchMember], start: int,
                  framing: BatchFraming) -> tuple[bytes, int]:
    """The framed members from ``start`` on, about ``_FLUSH_BYTES`` of them, and the index of
    the next one. A member that cannot be served is framed with its error (no bytes)."""
    out = bytearray()
    i = start
    while i < len(members) and len(out) < _FLUSH_BYTES:
        member = members[i]
        name = member.name
        i += 1
        if member.error:
            framing.error(out, name, member.error)
            continue
        try:
            data = reader.read(member, BATCH_FILE_MAX)
        except OSError as exc:
            framing.error(out, name, f"cannot read {name!r} here: {exc.strerror}")
            continue
        except StagingError as exc:  # a link leading out of the store
            framing.error(out, name, exc.message)
            continue
        if len(data) > BATCH_FILE_MAX:
            framing.error(out, name, f"{name!r} is larger than a batch member may be: pull it "
                          "alone")
            continue
        framing.member(out, name, data)
    return bytes(out), i


def _throttle(core: Core, peer: str) -> Throttle | None:
    """The throttle every pull of ``peer`` shares in this server (None: no limit)."""
    configured = core.peers.peers.get(peer)
    if configured is None or not configured.max_bytes_per_s:
        return None
    key = (peer, configured.max_bytes_per_s)
    return _throttles.setdefault(key, Throttle(configured.max_bytes_per_s))


#: (peer, rate) -> the throttle every pull of that peer shares in this server.
_throttles: dict[tuple[str, int], Throttle] = {}
