"""Reading JSON that comes from outside (a request body, the Librarian RPC's form field, a
search's text): bounded in size and in nesting depth before it is parsed.

Python's json parser recurses once per level of nesting, so a body nested a few thousand deep
raises RecursionError (a 500, and a stack walk per level before it). ``load_json`` measures the
depth first without recursing (``json_depth``: the strings cut out by one regular expression,
the brackets left counted by C-level iteration) and refuses deeper text with an
``InvalidRequest`` (or the error class the caller names) that says the limit. NaN and Infinity
(Python's extension of JSON) are refused, and so are strings holding a lone surrogate (valid
JSON text, but no Unicode: no database or file system takes them).

Both checks have a fast path for the usual body (a site's announce carries hundreds of offers,
a worker's item call thousands of log lines, and the regular expression costs several times the
parse): the UTF-8 bytes, their escapes removed (``bytes.replace``), reduced by one
``bytes.translate`` to their quotes and brackets, where strings without a bracket are adjacent
quote pairs that one ``replace`` removes (anything else takes the exact path); and a lone
surrogate needs a ``\\u`` escape of one in text decoded from bytes (a strict decoder never yields
one), so text without such an escape is not walked again.
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
_STEP_BYTE = {ord(k): v for k, v in _STEP.items()}
#: Every byte but a quote, a backslash and the four brackets (deleted by ``bytes.translate``).
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"\\[]{}')
#: Every byte but a quote and the four brackets.
_NOT_QUOTE_OR_BRACKET = bytes(b for b in range(256) if b not in b'"[]{}')
# An escape that may stand for half of a surrogate pair (JSON's \\u is lower case).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_depth(text: str) -> int:
    """How deep the objects and lists of the JSON ``text`` nest (0: a scalar). Text that is no
    JSON gets a number too (never smaller than what a parser would reach before failing)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _utf8_depth(data: bytes) -> int | None:
    """``json_depth`` of UTF-8 JSON ``data`` whose strings hold no bracket, in C-level passes;
    None for any other text (the exact path then)."""
    reduced = data.translate(None, _NOT_STRUCTURE)
    if b"\\" in reduced:
        # Escapes (a job's log lines end in ``\n``): a run of backslashes is pairs (escaped
        # backslashes: removed) and at most one more, which escapes the next character. An
        # escaped quote goes with it; any other escaped character is no structure (``\u``'s
        # hex digits neither), so only its backslash goes (an escaped bracket, which is no
        # JSON, then counts: never less deep than a parser would go).
        reduced = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(
            None, _NOT_QUOTE_OR_BRACKET)
    # Left to right, adjacent pairs: every quote goes only if each string is a pair with
    # nothing between (a bracket in the first string keeps its opening quote, and so on).
    brackets = reduced.replace(b'""', b"")
    if b'"' in brackets:
        return None
    return max(accumulate(map(_STEP_BYTE.__getitem__, brackets)), default=0)


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
    utf8: bytes | None = None  # the text in UTF-8, when it is at hand
    if isinstance(data, (bytes, bytearray)):
        encoding = json.detect_encoding(data)
        try:
            text = bytes(data).decode(encoding)
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8") from None
        if encoding == "utf-8":
            utf8 = bytes(data)
    else:
        text = data
    if utf8 is None:
        utf8 = text.encode("utf-8", "surrogatepass")
        if max_bytes is not None and len(utf8) > max_bytes:
            raise PayloadTooLarge(f"{what} is larger than {max_bytes} bytes")
    depth = _utf8_depth(utf8)
    if depth is None:
        check_depth(text, what, max_depth, error)
    elif depth > max_depth:
        raise error(f"{what} is nested {depth} levels deep; at most {max_depth} are accepted")
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
    # Bytes decode strictly (no lone surrogate comes out); text may hold one as it is.
    if not isinstance(data, (bytes, bytearray)) or ("\\u" in text
                                                   and _SURROGATE_ESCAPE.search(text)):
        check_unicode(value, what)
    return value
