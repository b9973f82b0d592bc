"""The stream of a transfer job to an rclone peer (``rclone.py``): one file at a time, verified.

For each claimed item (a file, or a directory data set copied recursively), under the peer's
remote at the instance's path relative to its store:

1. Look at the remote (``rclone lsjson``). Something there already: its checksums (``digest``)
   equal the catalogue's -> ``skipped`` ("already there"; ``done`` when an earlier attempt of this
   job put it there), the remote instance recorded; different -> ``failed`` as a conflict, the
   remote object left as it is (never overwritten).
2. Copy to a hidden sibling name (``.hera-partial-<job>-<name>``; what a dead attempt left there is
   removed first), so a half-written object never appears under the real name. Files go one at
   a time (``rclone copyto``; a directory data set with ``rclone copy``), each its own rclone
   run: simple and exact, but a few tenths of a second per file; the job's streams (the
   worker's ``--streams``) claim two items at a time, so that many run at once.
3. Verify the copy against the catalogue (remote MD5, or the bytes streamed back). A mismatch
   removes the copy and fails the item with both checksums.
4. Rename it to its name (``rclone moveto``; refused if something took the name meanwhile), then
   record the remote instance and a ``transfer-sent`` event (``sender.record_remote``).

The shared parts come from ``jobs._Sender``: allowed hours, ``max_in_flight``, reporting, and
the exponential backoff while the remote cannot be reached (the item starts over at step 1 when
it answers again; the job keeps running and says so in its log).
"""

from __future__ import annotations

import posixpath

from ..catalogue import checksums as ck
from ..errors import Conflict, StagingError
from ..jobs.items import _Claimed
from .jobs import _Sender
from .rclone import RcloneClient, RclonePeer
from .sender import record_remote

PARTIAL_PREFIX = ".hera-partial-"
#: Items a stream claims at a time.
CLAIM = 2


class RcloneSender(_Sender):
    peer: RclonePeer
    client: RcloneClient  # type: ignore[assignment]

    def connect(self) -> RcloneClient:  # type: ignore[override]
        run = self.run
        return RcloneClient(self.peer,
                            interrupt=lambda: run.abort.is_set() or run.stop.is_set())

    def room(self) -> int:
        """Claim few items at a time: each costs whole rclone runs, so the job's other
        streams should get the rest and run rclone alongside."""
        return min(super().room(), CLAIM)

    def send(self, batch: list[_Claimed]) -> None:
        transfer = f"job{self.run.job.id}.rclone"
        for item in batch:
            self.check()
            try:
                answer = self.call(f"rclone peer {self.peer.name!r}",
                                   lambda c, item=item: self.put(c, item))
            except StagingError as exc:
                self.report(item, "failed", exc.message)
                continue
            record_remote(self.run.db, self.peer.name, transfer, [item.name], answer)
            where = self.peer.path(item.dest_path)
            if answer == "committed":
                self.report(item, "done", note=f"sent {item.name} to {where} ({item.size} "
                            "bytes; checksum verified at the remote)")
            elif item.attempts > 1:
                self.report(item, "done", note=f"verified {item.name} at {where} (sent "
                            "before the worker restarted; not sent again)")
            else:
                self.report(item, "skipped", note=f"skipped {item.name}: {where} already "
                            "holds it (same checksum)")

    def put(self, client: RcloneClient, item: _Claimed) -> str:
        """Send and verify one item; ``"have"`` if the remote held it already, else
        ``"committed"``. StagingError says why it failed (Unavailable: try again later)."""
        target = self.peer.path(item.dest_path)
        there = client.listing(target, item.is_directory)
        if there is not None:
            found = self.compare(client, target, there, item)
            if found is None:
                return "have"
            raise Conflict(f"conflict: {target} holds different content ({found}); not "
                           "overwritten")
        parent, base = posixpath.split(item.dest_path)
        partial = self.peer.path(posixpath.join(
            parent, f"{PARTIAL_PREFIX}{self.run.job.id}-{base}"))
        if item.attempts > 1:  # a worker that died on this item may have left a partial copy
            client.remove(partial, item.is_directory)
        client.upload(item.source_path, partial, item.is_directory)
        copied = client.listing(partial, item.is_directory)
        found = "nothing arrived" if copied is None else \
            self.compare(client, partial, copied, item)
        if found is not None:
            client.remove(partial, item.is_directory)
            raise StagingError(f"verification failed at {target}: {found}; the remote copy "
                               "was removed")
        if client.listing(target, item.is_directory) is not None:
            client.remove(partial, item.is_directory)
            raise Conflict(f"conflict: {target} appeared while copying; not overwritten")
        client.move(partial, target)
        return "committed"

    @staticmethod
    def compare(client: RcloneClient, path: str, entries: list[dict[str, object]],
                item: _Claimed) -> str | None:
        """None when the object at ``path`` is ``item``'s content, else what differs."""
        size = sum(int(e.get("Size", 0)) for e in entries)  # type: ignore[call-overload]
        if size != item.size:
            return f"{size} bytes there, {item.size} in the catalogue"
        digest = client.digest(path, entries, item.is_directory, item.checksums)
        if not ck.compare(item.checksums, digest.checksums):
            algorithm = next(iter(digest.checksums))
            return (f"{algorithm} {digest.checksums[algorithm]} there, "
                    f"{item.checksums[algorithm]} in the catalogue")
        return None
