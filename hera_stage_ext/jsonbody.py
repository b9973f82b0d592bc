"""Reading JSON that comes from outside (a request body, the Librarian RPC's form field, a
search's text): bounded in size and in nesting depth before it is parsed.

Python's json parser recurses once per level of nesting, so a body nested a few thousand deep
raises RecursionError (a 500, and a stack walk per level before it). ``load_json`` measures the
depth first without recursing (``json_depth``: the strings cut out by one regular expression,
the brackets left counted by C-level iteration) and refuses deeper text with an
``InvalidRequest`` (or the error class the caller names) that says the limit. NaN and Infinity
(Python's extension of JSON) are refused, and so are strings holding a lone surrogate (valid
JSON text, but no Unicode: no database or file system takes them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from .errors import InvalidRequest, PayloadTooLarge

#: Deepest nesting of objects and lists accepted in any JSON from outside (the top level is 1).
#: A search is nested at most ``search_parse.MAX_DEPTH`` objects deep (with a list between
#: two of them at most): its own check says that more precisely, within this bound.
MAX_JSON_DEPTH = 64

# A JSON string (escapes included); what is left outside strings is structure and scalars.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deep the objects and lists of the JSON ``text`` nest (0: a scalar). Text that is no
    JSON gets a number too (never smaller than what a parser would reach before failing)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_depth(text: str, what: str = "request body", max_depth: int = MAX_JSON_DEPTH,
                error: type[InvalidRequest] = InvalidRequest) -> None:
    """Refuse JSON text nested deeper than ``max_depth`` (``error`` naming ``what``), before
    any parser recurses into it."""
    if (depth := json_depth(text)) > max_depth:
        raise error(f"{what} is nested {depth} levels deep; at most {max_depth} are accepted")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def check_unicode(value: Any, what: str = "the request") -> None:
    """Refuse a parsed value whose strings hold a lone surrogate (an escape such as
    ``"\\ud800"``)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{what} holds a string with a lone surrogate (not valid Unicode)") from None


def load_json(data: str | bytes, what: str = "request body", *,
              max_bytes: int | None = None, max_depth: int = MAX_JSON_DEPTH,
              error: type[InvalidRequest] = InvalidRequest,
              object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """The value of the JSON text ``data`` (bytes in UTF-8, -16 or -32, as ``json.loads``
    reads them), or ``error`` (``PayloadTooLarge`` for size) naming ``what`` and the problem:
    larger than ``max_bytes``, nested deeper than ``max_depth``, not UTF-8, not JSON (line and
    column), NaN/Infinity, a lone surrogate."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} is larger than {max_bytes} bytes")
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode(json.detect_encoding(data))
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8") from None
    else:
        text = data
    if max_bytes is not None and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise PayloadTooLarge(f"{what} is larger than {max_bytes} bytes")
    check_depth(text, what, max_depth, error)
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook,
                           parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                    f"{exc.colno}", line=exc.lineno, column=exc.colno) from None
    except RecursionError:  # not reached within max_depth; kept so no text can cause a 500
        raise error(f"{what} is nested too deep") from None
    except ValueError as exc:  # NaN/Infinity, an integer literal with too many digits
        raise error(f"{what} is not valid JSON: {exc}") from None
    check_unicode(value, what)
    return value
