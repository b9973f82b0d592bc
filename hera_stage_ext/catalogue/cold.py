"""Cold stores' settings: which buffer a cold (tape-like) store is recalled into, the cap on
the buffer's bytes, and the volume key that groups its instances by tape.

A cold store is configured in ``c.StagingApp.stores`` like any store, with ``"kind": "cold"``
and these keys (kept in the store row's ``options``, so a worker process reads them from the
database and needs no server configuration):

``buffer``        name of an online store the files are recalled into (required).
``buffer_bytes``  cap on the bytes recalled into that buffer and not yet used and reaped, for
                  every job together (default 10 GiB; a file bigger than the cap is recalled
                  alone, into an empty buffer).
``volume_key``    a regular expression searched in each instance's path relative to the store;
                  the volume is its first group (the whole match when it has no group), and a
                  second group, when it has one, the file's position on the volume (the tape
                  file sequence number, say: compared as a number when it is digits, so 9
                  comes before 10; files it gives no position come last). Files of one volume
                  are recalled together, volumes in sorted order, files of a volume by
                  position, then path. Default ``^([^/]+)/``: the first path component (a tape
                  per top-level folder), files in path order. A path it does not match, or
                  whose first group takes no part, belongs to the volume ``""``.

This module owns parsing and checking them; the recall itself is ``jobs/recall.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: A sort key of a file's position on its volume: numbers first, by value, then other
#: positions as text, then files with none.
Position = tuple[int, int, str]
NO_POSITION: Position = (2, 0, "")
DEFAULT_BUFFER_BYTES = 10 << 30
DEFAULT_VOLUME_KEY = r"^([^/]+)/"
#: The settings of a store's configuration that are columns of the store row.
STORE_COLUMNS = ("path", "kind", "available", "ssh_host")


@dataclass(frozen=True)
class ColdSettings:
    buffer: str
    buffer_bytes: int
    volume_key: str

    def place(self, path: str) -> tuple[str, Position]:
        """The volume (tape) holding the instance at ``path`` (relative to the store), and its
        position there, as a key to sort by."""
        match = _compiled(self.volume_key).search(path)
        if match is None:
            return "", NO_POSITION
        if not match.re.groups:
            return match.group(0), NO_POSITION
        volume = match.group(1) or ""  # an optional group that did not take part
        position = match.group(2) if match.re.groups > 1 else None
        if position is None:
            return volume, NO_POSITION
        return volume, ((0, int(position), "") if position.isdecimal() else (1, 0, position))


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def cold_settings(name: str, options: Mapping[str, Any]) -> ColdSettings:
    """The settings of cold store ``name`` from its options; ValueError saying what is wrong."""
    buffer = options.get("buffer")
    if not isinstance(buffer, str) or not buffer:
        raise ValueError(f"cold store {name!r} needs a 'buffer': the online store its files "
                         f"are recalled into")
    cap = options.get("buffer_bytes", DEFAULT_BUFFER_BYTES)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
        raise ValueError(f"cold store {name!r}: buffer_bytes must be a positive integer")
    key = options.get("volume_key", DEFAULT_VOLUME_KEY)
    try:
        if not isinstance(key, str):
            raise TypeError(key)
        _compiled(key)
    except (TypeError, re.error) as exc:
        raise ValueError(f"cold store {name!r}: volume_key {key!r} is not a regular "
                         f"expression ({exc})") from None
    return ColdSettings(buffer, cap, key)


def check_stores(configured: Mapping[str, Mapping[str, Any]]) -> None:
    """Every cold store names an online store of ``configured`` as its buffer, with valid
    settings; ValueError otherwise."""
    for name, spec in configured.items():
        if spec.get("kind", "online") != "cold":
            continue
        settings = cold_settings(name, spec)
        buffer = configured.get(settings.buffer)
        if buffer is None or buffer.get("kind", "online") != "online":
            raise ValueError(f"cold store {name!r}: its buffer {settings.buffer!r} must be an "
                             f"online store of c.StagingApp.stores")


def store_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a store's configuration says beyond its columns (a cold store's settings)."""
    return {key: value for key, value in spec.items() if key not in STORE_COLUMNS}
