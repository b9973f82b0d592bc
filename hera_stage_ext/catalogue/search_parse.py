"""Reading a search: the kinds one can search for, the limits of the language, JSON text (or an
already parsed value) to a search (``parse_search``), and the checks of a clause's payload
(``check_str``, ``check_int``, ``check_num``, ``check_range``). Every error is a ``SearchError``
that says what was wrong and where (``at_path``).

Limits: a search text of at most ``MAX_SEARCH_BYTES`` bytes, objects nested at most ``MAX_DEPTH``
deep, at most ``MAX_CLAUSES`` clauses (each key counts, and each object of a list), strings of at
most ``MAX_STRING_LENGTH`` characters, integers within signed 64 bits, finite numbers. A key
repeated within one JSON object is an error (v1 silently kept the last one): use a list of
objects.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import SearchError
from ..jsonbody import MAX_JSON_DEPTH, json_depth

#: The kinds of things one can search for.
KINDS = ("files", "instances", "observations", "sessions")
#: Deepest nesting of objects (the top-level object is depth 1).
MAX_DEPTH = 16
#: Most clauses in one search (every key counts, and every object of a list).
MAX_CLAUSES = 256
#: Longest search text, in UTF-8 bytes.
MAX_SEARCH_BYTES = 64 * 1024
#: Longest string payload, in characters (file names are at most 256).
MAX_STRING_LENGTH = 1024

INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _reject_constant(name: str) -> Any:
    raise SearchError(f"invalid JSON: {name} is not a number JSON allows")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SearchError(
                f"clause {key!r} appears twice in one object; to repeat a clause use a list of "
                f'objects, e.g. {{"or": [{{{json.dumps(key)}: ...}}, {{{json.dumps(key)}: ...}}]}}'
            )
        result[key] = value
    return result


def parse_search(value: str | bytes | dict | list) -> dict | list:
    """A search as a JSON object (or list of objects), from JSON text or an already parsed value.

    Raises ``SearchError`` for text over ``MAX_SEARCH_BYTES``, invalid JSON (naming the line and
    column), a key repeated in one object, NaN/Infinity, or a top level that is not an object or
    a list of objects. No comment stripping: ``#`` is an ordinary character.
    """
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_SEARCH_BYTES:
            raise SearchError(f"search text is larger than {MAX_SEARCH_BYTES} bytes")
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SearchError(f"search text is not valid UTF-8 (byte {exc.start})") from None
    if isinstance(value, str):
        if len(value) > MAX_SEARCH_BYTES or (
            len(value.encode("utf-8", "surrogatepass")) > MAX_SEARCH_BYTES
        ):
            raise SearchError(f"search text is larger than {MAX_SEARCH_BYTES} bytes")
        if json_depth(value) > MAX_JSON_DEPTH:
            raise SearchError(f"search is nested deeper than {MAX_DEPTH} levels")
        try:
            parsed = json.loads(
                value, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
            )
        except json.JSONDecodeError as exc:
            raise SearchError(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                line=exc.lineno,
                column=exc.colno,
            ) from None
        except RecursionError:  # not reached within MAX_JSON_DEPTH; no text may cause a 500
            raise SearchError(f"search is nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # e.g. an integer literal with too many digits
            raise SearchError(f"invalid JSON: {exc}") from None
    elif isinstance(value, (dict, list)):
        parsed = value
    else:
        raise SearchError(
            f"a search must be JSON text, an object or a list of objects, got {describe(value)}"
        )
    if isinstance(parsed, list):
        for i, item in enumerate(parsed):
            if not isinstance(item, dict):
                raise SearchError(
                    f"a search list must hold objects of clauses; item {i} is {describe(item)}"
                )
    elif not isinstance(parsed, dict):
        raise SearchError(
            f"a search must be a JSON object of clauses (or a list of objects), "
            f"got {describe(parsed)}"
        )
    return parsed


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}" if abs(value) < 10**30 else "a very large integer"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def at_path(path: str) -> str:
    return f" (at {path})" if "/" in path else ""


def payload_error(name: str, path: str, expected: str, payload: Any) -> SearchError:
    return SearchError(
        f"clause {name!r}{at_path(path)} expects {expected}, got {describe(payload)}",
        clause=name,
        path=path,
    )


def check_str(name: str, path: str, payload: Any) -> str:
    if not isinstance(payload, str):
        raise payload_error(name, path, "a string", payload)
    if len(payload) > MAX_STRING_LENGTH:
        raise SearchError(
            f"clause {name!r}{at_path(path)}: string longer than {MAX_STRING_LENGTH} characters"
        )
    if "\x00" in payload:
        raise SearchError(f"clause {name!r}{at_path(path)}: string contains a NUL character")
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError:
        raise SearchError(
            f"clause {name!r}{at_path(path)}: string contains an unpaired surrogate"
        ) from None
    return payload


def check_int(name: str, path: str, payload: Any, what: str = "an integer") -> int:
    if isinstance(payload, bool) or not isinstance(payload, int):
        if isinstance(payload, float):
            raise SearchError(
                f"clause {name!r}{at_path(path)} expects {what}, got the number {payload!r} "
                "(write integers without a decimal point or exponent)",
                clause=name,
                path=path,
            )
        raise payload_error(name, path, what, payload)
    if not INT_MIN <= payload <= INT_MAX:
        raise SearchError(
            f"clause {name!r}{at_path(path)}: the integer is outside the signed 64-bit range",
            clause=name,
            path=path,
        )
    return payload


def check_num(name: str, path: str, payload: Any, what: str = "a number") -> float:
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        raise payload_error(name, path, what, payload)
    try:
        value = float(payload)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise SearchError(f"clause {name!r}{at_path(path)} expects a finite number")
    return value


def check_range(name: str, path: str, payload: Any, integer: bool) -> tuple[Any, Any]:
    expected = "a list of two integers" if integer else "a list of two numbers"
    if not isinstance(payload, list) or len(payload) != 2:
        raise payload_error(name, path, f"{expected} [low, high]", payload)
    check = check_int if integer else check_num
    low, high = (check(name, path, item, expected) for item in payload)
    return (low, high) if low <= high else (high, low)


def check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise SearchError(
            f"unknown search kind {kind!r}; expected one of {', '.join(KINDS)}", kind=str(kind)
        )
