"""``GET files/<name>/content``: a file's bytes (with HTTP Range), or a directory as a tar stream.

Reads one available instance on an online store, confined to that store's root. Memory stays
constant: a flat file's bytes go from the page cache to the socket by the kernel (``sendfile``,
driven by the event loop: no Python copy, no thread) once the headers are out, and the connection
is closed after them (``Connection: close``: the response's end is the end of the stream). A
throttled response (a peer's ``max_bytes_per_s``) and a TLS connection (the kernel cannot
encrypt) take the 1 MiB chunk path instead. A directory is tarred by a thread into a small
bounded queue that the handler drains, so a slow client slows the tar instead of filling memory.
"""

from __future__ import annotations

import asyncio
import io
import queue
import re
import socket
import ssl
import tarfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_server.auth.decorator import authorized
from tornado import iostream, web
from tornado.http1connection import HTTP1Connection

from ..catalogue.naming import validate_name
from ..core import Core
from ..errors import InvalidRequest, NotFound
from ..paths import confine
from .base import ApiHttpError, BaseHandler

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range, None for no/unsatisfiable-as-whole."""
    match = _RANGE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise InvalidRequest(f"unsupported Range header {header!r} (one 'bytes=a-b' range)")
    first, last = match.groups()
    if first == "":
        length = int(last)
        start, end = max(size - length, 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return None
    return start, end


class _QueueWriter(io.BufferedIOBase):
    """A write-only file object feeding a bounded queue (the tar thread's side)."""

    def __init__(self, q: queue.Queue[bytes | None], cancelled: threading.Event) -> None:
        super().__init__()
        self.q = q
        self.cancelled = cancelled

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        if self.cancelled.is_set():
            raise BrokenPipeError("client went away")
        chunk = bytes(data)
        self.q.put(chunk)
        return len(chunk)


def online_instance_path(core: Core, name: str) -> Path:
    """Where an available online instance of ``name`` lies, confined to its store's root."""
    validate_name(name)
    instance = core.catalogue.locate(name)
    if instance["store_kind"] != "online":
        raise NotFound(f"{name!r} is only on a cold store; recall it first")
    store = core.catalogue.store(instance["store"])
    path = confine(instance["path"], [store["path"]], what="instance path")
    if not path.exists():
        raise NotFound(f"the instance of {name!r} on {instance['store']} is missing")
    return path


class Throttle:
    """At most ``bytes_per_s`` through everything that consumes it: one response, or every
    pull of one peer together (the server's single event-loop thread needs no lock)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = float(bytes_per_s)
        self.free_at = 0.0  # when the bytes consumed so far will have had their time

    async def consume(self, n: int) -> None:
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + n / self.rate
        if self.free_at > now:
            await asyncio.sleep(self.free_at - now)


async def send_file(handler: BaseHandler, path: Path, *, filename: str | None = None,
                    throttle: Throttle | None = None) -> None:
    """Stream a flat file in 1 MiB chunks, honouring one ``bytes=a-b`` Range, no faster than
    ``throttle`` allows when one is given."""
    size = path.stat().st_size
    start, end = 0, size - 1
    handler.set_header("Accept-Ranges", "bytes")
    handler.set_header("Content-Type", "application/octet-stream")
    if filename is not None:
        handler.set_header("Content-Disposition", f'attachment; filename="{filename}"')
    header = handler.request.headers.get("Range")
    if header:
        try:
            byte_range = parse_range(header, size)
        except InvalidRequest as exc:
            raise ApiHttpError(exc) from exc
        if byte_range is None:
            handler.set_header("Content-Range", f"bytes */{size}")
            handler.reply({"error": "RangeNotSatisfiable",
                           "message": f"range {header!r} is outside the file ({size} bytes)"},
                          status=416)
            return
        start, end = byte_range
        handler.set_status(206)
        handler.set_header("Content-Range", f"bytes {start}-{end}/{size}")
    handler.set_header("Content-Length", str(max(end - start + 1, 0)))
    remaining = end - start + 1
    if throttle is None and remaining > 0 and _plain_socket(handler) is not None:
        await _sendfile(handler, path, start, remaining)
        return
    with open(path, "rb") as f:
        f.seek(start)
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            handler.write(chunk)
            try:
                await handler.flush()
            except iostream.StreamClosedError:
                return
            if throttle is not None:
                await throttle.consume(len(chunk))
    handler.finish()


def _plain_socket(handler: BaseHandler) -> socket.socket | None:
    """The connection's socket when the kernel may send a file's bytes on it: plain TCP over
    HTTP/1.x (not TLS, which the kernel does not encrypt; not an HTTP/2 or test connection)."""
    connection = handler.request.connection
    stream = getattr(connection, "stream", None)
    if not isinstance(connection, HTTP1Connection) or type(stream) is not iostream.IOStream:
        return None
    sock = stream.socket
    return None if sock is None or isinstance(sock, ssl.SSLSocket) else sock


async def _sendfile(handler: BaseHandler, path: Path, start: int, count: int) -> None:
    """Send the headers, then ``count`` bytes of ``path`` from ``start`` with ``sendfile``, then
    close the connection (if the file shrank meanwhile, the body ends before its length: the
    client sees a broken connection)."""
    handler.set_header("Connection", "close")
    with open(path, "rb") as f:  # noqa: ASYNC230 (an open, like the chunk path's)
        try:
            await handler.flush()  # the headers, and nothing of the body yet
        except iostream.StreamClosedError:
            return
        stream = handler.detach()  # tornado no longer touches the connection
        try:
            # Tornado's own event handler must not see the socket's readiness from now on.
            stream.io_loop.remove_handler(stream.socket)
            await asyncio.get_running_loop().sock_sendfile(stream.socket, f, start, count,
                                                           fallback=True)
        except OSError:
            pass  # the client went away: nothing to tell it
        finally:
            stream.close()
            handler.application.log_request(handler)


class FileContentHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        path = await self.call(online_instance_path, self.core, name)
        if path.is_dir():
            await send_tar(self, path, name)
        else:
            await send_file(self, path, filename=name)


async def send_tar(handler: BaseHandler, path: Path, name: str, *,
                   throttle: Throttle | None = None) -> None:
    """Stream the directory ``path`` as a tar of ``name/...`` in constant memory."""
    handler.set_header("Content-Type", "application/x-tar")
    handler.set_header("Content-Disposition", f'attachment; filename="{name}.tar"')
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    cancelled = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(chunks, cancelled), mode="w|",
                              bufsize=CHUNK) as tar:
                tar.add(path, arcname=name, recursive=True)
        except BaseException as exc:  # reported to the handler below
            failure.append(exc)
        finally:
            chunks.put(None)

    threading.Thread(target=produce, daemon=True, name=f"tar {name}").start()
    loop = asyncio.get_running_loop()
    try:
        while (chunk := await loop.run_in_executor(None, chunks.get)) is not None:
            handler.write(chunk)
            await handler.flush()
            if throttle is not None:
                await throttle.consume(len(chunk))
    except iostream.StreamClosedError:
        cancelled.set()
        # Drain so the producer, blocked on a full queue, sees the cancel and exits.
        await loop.run_in_executor(None, lambda: [_ for _ in iter(chunks.get, None)])
        return
    if failure and not isinstance(failure[0], BrokenPipeError):
        handler.log.error("tar of %s failed: %s", name, failure[0])
        # Headers are gone; closing early makes the client see a truncated tar.
        # (Tornado's server connections are HTTP1Connections; another has nothing to close.)
        connection = handler.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.close()
        return
    handler.finish()

