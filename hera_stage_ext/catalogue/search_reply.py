"""The reply of ``POST search`` as JSON text, written straight from a files page's rows.

``json.dumps`` of the dicts of ``serialize.file_json`` and ``serialize.instance_fields`` is the
reply's definition; building those dicts and encoding them was a third of a search's CPU. Here
each file and instance is formatted once into its JSON text with the same keys in the same
order and the same spacing (``json.dumps``'s defaults: ``", "``, ``": "``, ASCII only). Every
value goes through ``json``'s own encoders, a fast path for the exact types the columns hold
(``str``, ``int``, ``bool``, ``datetime``) and ``json.dumps``'s encoder for anything else, so
the text is the same byte for byte whatever a row holds (``tests/test_search_reply_text.py``
checks it against ``json.dumps`` of the dicts).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

#: ``json.dumps(value)`` with its defaults (it is what ``json.dumps`` itself calls).
_encode = json.JSONEncoder().encode

# json.dumps makes its C encoder anew on every call (3 us, as long as encoding a checksums dict
# itself); this one is made once. Without the circular-reference check, which changes nothing
# for a value decoded from a JSON column (it cannot refer to itself).
_c_encoder = None if c_make_encoder is None else c_make_encoder(
    None, json.JSONEncoder().default, encode_basestring_ascii, None, ": ", ", ", False, False,
    True)


def _decoded(value: Any) -> str:
    """``json.dumps`` of a value decoded from a JSON column."""
    if type(value) is dict and not value:
        return "{}"
    if _c_encoder is None:
        return _encode(value)
    return "".join(_c_encoder(value, 0))


def _text(value: Any) -> str:
    return encode_basestring_ascii(value) if type(value) is str else _encode(value)


def _int(value: Any) -> str:
    return int.__repr__(value) if type(value) is int else _encode(value)


def _bool(value: Any) -> str:
    return "true" if value is True else "false" if value is False else _encode(value)


def _time(value: Any) -> str:
    """``serialize.iso`` of a time, encoded (an ISO text needs no escaping)."""
    if value is None:
        return "null"
    if type(value) is dt.datetime or type(value) is IsoTime:
        return f'"{value.isoformat()}Z"'
    return _text(value.isoformat() + "Z")


class IsoTime(str):
    """A time as the ISO text ``datetime.isoformat`` gives, for a time SQLite stored as
    SQLAlchemy writes it (``YYYY-MM-DD HH:MM:SS.ffffff``): written into a reply without
    parsing it into a datetime and formatting that again."""

    def isoformat(self) -> str:
        return str.__str__(self)


#: SQLAlchemy's own form of a time in SQLite, the only one ``iso_time_or`` rewrites.
_SQLITE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}")


def iso_time_or(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A time column's result processor for a reply's text: SQLAlchemy's SQLite form as its
    ``IsoTime`` (``isoformat`` leaves out a zero microsecond), anything else through
    ``processor``. Only the digits are checked, not that the date exists."""
    match = _SQLITE_TIME.fullmatch

    def process(value: Any) -> Any:
        if type(value) is str and match(value):
            return IsoTime(value[:10] + "T" + value[11:19] if value.endswith(".000000")
                           else value[:10] + "T" + value[11:])
        return processor(value)

    return process


def _full_path(root: str, path: str) -> str:
    """``os.path.join(root, path)`` for two texts, without its generic checks."""
    if type(root) is not str or type(path) is not str:
        return os.path.join(root, path)
    if path.startswith("/"):
        return path
    if not root or root.endswith("/"):
        return root + path
    return root + "/" + path


class InstanceWriter:
    """``json.dumps(serialize.instance_fields(...))`` of an instance's values, for the
    instances of one page: the texts a page repeats (a store's name and kind, a deletion
    policy, a fixity state) are encoded once."""

    def __init__(self) -> None:
        self._encoded: dict[Any, str] = {}

    def _repeated(self, value: Any) -> str:
        encoded = self._encoded.get(value) if type(value) is str else None
        if encoded is None:
            encoded = _text(value)
            if type(value) is str:
                self._encoded[value] = encoded
        return encoded

    def text(self, name_json: str, store_name: str, store_root: str, store_kind: str,
             store_available: Any, path: str, available: Any, deletion_policy: str,
             create_time: Any, fixity: str, verified_at: Any) -> str:
        """The instance's JSON text; ``name_json`` is the file's name already encoded."""
        repeated = self._repeated
        return (f'{{"file": {name_json}, "store": {repeated(store_name)}, '
                f'"path": {_text(path)}, "full_path": {_text(_full_path(store_root, path))}, '
                f'"available": {"true" if available and store_available else "false"}, '
                f'"store_kind": {repeated(store_kind)}, '
                f'"deletion_policy": {repeated(deletion_policy)}, '
                f'"create_time": {_time(create_time)}, "fixity": {repeated(fixity)}, '
                f'"verified_at": {_time(verified_at)}}}')


def file_text(name_json: str, type_: str, size: int, is_directory: Any, checksums: Any,
              create_time: Any, obsid: Any, source: str, meta: Any, *,
              instances: Sequence[str]) -> str:
    """``json.dumps`` of ``serialize.file_json`` of a file with these values (``search``'s
    ``FILE_COLUMNS`` after id and name, in that order) with ``"instances"`` (their texts);
    ``name_json`` is the file's name already encoded."""
    return (f'{{"name": {name_json}, "type": {_text(type_)}, "size": {_int(size)}, '
            f'"is_directory": {_bool(is_directory)}, '
            f'"checksums": {_decoded(checksums if type(checksums) is dict else dict(checksums))}, '
            f'"create_time": {_time(create_time)}, '
            f'"obsid": {"null" if obsid is None else _int(obsid)}, '
            f'"source": {_text(source)}, "metadata": {_decoded(meta)}, '
            f'"instances": [{", ".join(instances)}]}}')


def name_text(name: Any) -> str:
    return _text(name)


def reply_text(kind: str, results: Sequence[str], next_cursor: str | None, total: int | None,
               search: Any) -> str:
    """``json.dumps`` of the reply ``{"kind", "results", "next_cursor", "total", "search"}``
    with each result already JSON text."""
    return (f'{{"kind": {_text(kind)}, "results": [{", ".join(results)}], '
            f'"next_cursor": {_encode(next_cursor)}, "total": {_encode(total)}, '
            f'"search": {_encode(search)}}}')
