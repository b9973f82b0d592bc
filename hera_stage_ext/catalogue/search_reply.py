"""The reply of ``POST search`` as JSON text, written straight from a files page's rows.

``json.dumps`` of the dicts of ``serialize.file_json`` and ``serialize.instance_fields`` is the
reply's definition; building those dicts and encoding them was a third of a search's CPU. Here
each file and instance is formatted once into its JSON text with the same keys in the same
order and the same spacing (``json.dumps``'s defaults: ``", "``, ``": "``, ASCII only). Every
value goes through ``json``'s own encoders, a fast path for the exact types the columns hold
(``str``, ``int``, ``bool``, ``datetime``) and ``json.dumps``'s encoder for anything else, so
the text is the same byte for byte whatever a row holds (``tests/test_search_reply_text.py``
checks it against ``json.dumps`` of the dicts). ``PageWriter`` writes a page's files and
instances from the driver's rows, encoding once what a page repeats (its time values, a
store's parts of an instance's text): the conversions and formatting per value were half of a
page's Python CPU.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from .db import loads_json_column
from .serialize import iso_of_stored

#: ``json.dumps(value)`` with its defaults (it is what ``json.dumps`` itself calls).
_encode = json.JSONEncoder().encode

# json.dumps makes its C encoder anew on every call (3 us, as long as encoding a checksums dict
# itself); this one is made once. Without the circular-reference check, which changes nothing
# for a value decoded from a JSON column (it cannot refer to itself).
_c_encoder = None if c_make_encoder is None else c_make_encoder(
    None, json.JSONEncoder().default, encode_basestring_ascii, None, ": ", ", ", False, False,
    True)


def json_text(value: Any) -> str:
    """``json.dumps`` of a value decoded from a JSON column."""
    if type(value) is dict and not value:
        return "{}"
    if _c_encoder is None:
        return _encode(value)
    return "".join(_c_encoder(value, 0))


#: A string ``json.dumps`` writes as it is: printable ASCII but a quote or a backslash.
_PLAIN_STRING = r'"[ !#-\[\]-~]*"'
#: An object of such strings as ``json.dumps`` spaces it (and PostgreSQL writes a JSONB
#: object), ``{"md5": "...", "xxh3-128": "..."}``: decoding it and encoding the dict again
#: gives the same text when no key comes twice.
_PLAIN_OBJECT = re.compile(
    rf'\{{(?:{_PLAIN_STRING}: {_PLAIN_STRING}(?:, {_PLAIN_STRING}: {_PLAIN_STRING})*)?\}}')


def _json_column_text(text: str, as_dict: bool = False) -> str:
    """``json_text`` of the value of a JSON column given as its JSON text (of ``dict`` of the
    value with ``as_dict``): an object of plain strings without a key twice (a checksums
    object: every search reply's) is its own text, anything else is decoded and encoded
    again."""
    if _PLAIN_OBJECT.fullmatch(text):
        # Its strings hold no quote, so splitting at the quotes gives key, ": ", value, ", "
        # in turn: every fourth piece from the second is a key.
        keys = text[1:-1].split('"')[1::4]
        if len(keys) < 2 or len(set(keys)) == len(keys):
            return text
    value = loads_json_column(text)
    return json_text(dict(value) if as_dict and type(value) is not dict else value)


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
    if type(value) is dt.datetime:
        return f'"{value.isoformat()}Z"'
    return _text(value.isoformat() + "Z")


#: SQLAlchemy's own form of a time in SQLite, the only one ``PageWriter.time`` writes without
#: parsing it into a datetime.


def _full_path(root: str, path: str) -> str:
    """``os.path.join(root, path)`` for two texts, without its generic checks."""
    if type(root) is not str or type(path) is not str:
        return os.path.join(root, path)
    if path.startswith("/"):
        return path
    if not root or root.endswith("/"):
        return root + path
    return root + "/" + path


class PageWriter:
    """The JSON texts of one page's files and instances. What a page repeats is encoded once:
    each time value (the files and copies of one ingest share theirs) and, per combination of
    store, deletion policy, fixity state and availability, the fixed parts of an instance's
    text. ``parse_time``: the time columns' SQLAlchemy result processor where the driver gives
    times as text (SQLite), None where it gives datetimes; ``json_as_text``: the files' JSON
    columns come as their JSON text (``search.SearchPage.json_as_text``), which is written as
    it is when it is what ``json.dumps`` of its value would write."""

    def __init__(self, parse_time: Callable[[Any], Any] | None = None,
                 json_as_text: bool = False) -> None:
        self._parse_time = parse_time
        self._json_as_text = json_as_text
        # By the driver's value (None: a time never set, so that one is a look-up too).
        self._times: dict[Any, str] = {None: "null"}
        self._converted_times: dict[dt.datetime, str] = {}  # by SQLAlchemy's
        # (store name, root, kind, deletion policy, fixity, available) -> the text around the
        # instance's own values (empty: a value that is not a text, written the long way).
        self._fixed: dict[tuple[Any, ...], tuple[str, ...]] = {}

    def time(self, value: Any) -> str:
        """``_time`` of a time column's value as the driver gave it, converted as SQLAlchemy
        would."""
        kind = type(value)
        if kind is not str and kind is not dt.datetime:
            return "null" if value is None else _time(self._parsed(value))
        found = self._times.get(value)
        if found is None:
            found = self._time_text(value)
            # An aware datetime equals others at the same instant written differently.
            if kind is str or value.tzinfo is None:
                self._times[value] = found
        return found

    def converted_time(self, value: Any) -> str:
        """``_time`` of a time as SQLAlchemy converted it (a naive datetime, or None)."""
        if type(value) is not dt.datetime or value.tzinfo is not None:
            return _time(value)
        found = self._converted_times.get(value)
        if found is None:
            found = self._converted_times[value] = _time(value)
        return found

    def _parsed(self, value: Any) -> Any:
        # Only text is parsed (SQLite's form); a datetime a driver gave is used as it is.
        return value if self._parse_time is None or type(value) is not str \
            else self._parse_time(value)

    def _time_text(self, value: Any) -> str:
        if type(value) is str and self._parse_time is not None:
            text = iso_of_stored(value)
            if text is not None:
                return f'"{text}"'
        return _time(self._parsed(value))

    def instance(self, name_json: str, row: Sequence[Any]) -> str:
        """``json.dumps(serialize.instance_fields(...))`` of an instance row (``search_rows``'
        columns: file id, then ``serialize.INSTANCE_COLUMNS``' values as the driver gave them;
        a boolean as SQLite's integer is read for its truth, as ``bool`` of it would be);
        ``name_json`` is the file's name already encoded."""
        (_file_id, store_name, store_root, store_kind, store_available, path, available,
         deletion_policy, create_time, fixity, verified_at) = row
        key = (store_name, store_root, store_kind, deletion_policy, fixity,
               True if available and store_available else False)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fixed[key] = _fixed_parts(*key)
        if not fixed:
            return self._instance_long(name_json, row)
        head, root_json, middle, tail = fixed
        if type(path) is str and not path.startswith("/"):
            # Escaping is per character: the root's text and the path's joined are the text of
            # the joined path.
            path_json = encode_basestring_ascii(path)
            full_json = root_json + path_json[1:]
        else:
            path_json = _text(path)
            full_json = _text(_full_path(store_root, path))
        # A time seen before (most of a page's) is a dict look-up, not a call of ``time``.
        times = self._times
        return (f'{{"file": {name_json}{head}{path_json}, "full_path": {full_json}{middle}'
                f'{times.get(create_time) or self.time(create_time)}{tail}'
                f'{times.get(verified_at) or self.time(verified_at)}}}')

    def _instance_long(self, name_json: str, row: Sequence[Any]) -> str:
        (_file_id, store_name, store_root, store_kind, store_available, path, available,
         deletion_policy, create_time, fixity, verified_at) = row
        return (f'{{"file": {name_json}, "store": {_text(store_name)}, '
                f'"path": {_text(path)}, "full_path": {_text(_full_path(store_root, path))}, '
                f'"available": {"true" if available and store_available else "false"}, '
                f'"store_kind": {_text(store_kind)}, '
                f'"deletion_policy": {_text(deletion_policy)}, '
                f'"create_time": {self.time(create_time)}, "fixity": {_text(fixity)}, '
                f'"verified_at": {self.time(verified_at)}}}')

    def file(self, name_json: str, type_: str, size: int, is_directory: Any, checksums: Any,
             create_time: Any, obsid: Any, source: str, meta: Any, *,
             instances: Sequence[str]) -> str:
        """``json.dumps`` of ``serialize.file_json`` of a file with these values
        (``search``'s ``FILE_COLUMNS`` after id and name, in that order, converted as
        SQLAlchemy does) with ``"instances"`` (their texts); ``name_json`` is the file's name
        already encoded."""
        if self._json_as_text and type(checksums) is str:
            checksums_json = _json_column_text(checksums, as_dict=True)
        else:
            checksums_json = json_text(checksums if type(checksums) is dict else dict(checksums))
        meta_json = (_json_column_text(meta) if self._json_as_text and type(meta) is str
                     else json_text(meta))
        return (f'{{"name": {name_json}, "type": {_text(type_)}, "size": {_int(size)}, '
                f'"is_directory": {_bool(is_directory)}, "checksums": {checksums_json}, '
                f'"create_time": {self.converted_time(create_time)}, '
                f'"obsid": {"null" if obsid is None else _int(obsid)}, '
                f'"source": {_text(source)}, "metadata": {meta_json}, '
                f'"instances": [{", ".join(instances)}]}}')


def _fixed_parts(store_name: Any, store_root: Any, store_kind: Any, deletion_policy: Any,
                 fixity: Any, available: bool) -> tuple[str, ...]:
    """An instance text's parts around its path and times: the text after the file's name up
    to the path's, the full path's text without its closing quote up to where the path goes,
    the text between the full path's and the creation time's, and that between the creation
    time's and the time of its check. Empty when a value is not a text."""
    if not all(type(v) is str for v in (store_name, store_root, store_kind, deletion_policy,
                                         fixity)):
        return ()
    root = store_root if not store_root or store_root.endswith("/") else store_root + "/"
    return (f', "store": {_text(store_name)}, "path": ',
            _text(root)[:-1],
            f', "available": {"true" if available else "false"}, '
            f'"store_kind": {_text(store_kind)}, "deletion_policy": {_text(deletion_policy)}, '
            '"create_time": ',
            f', "fixity": {_text(fixity)}, "verified_at": ')


def name_text(name: Any) -> str:
    return _text(name)


def reply_text(kind: str, results: Sequence[str], next_cursor: str | None, total: int | None,
               search: Any) -> str:
    """``json.dumps`` of the reply ``{"kind", "results", "next_cursor", "total", "search"}``
    with each result already JSON text."""
    return (f'{{"kind": {_text(kind)}, "results": [{", ".join(results)}], '
            f'"next_cursor": {_encode(next_cursor)}, "total": {_encode(total)}, '
            f'"search": {_encode(search)}}}')
