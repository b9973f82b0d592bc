"""A short one-line query syntax for people, translated to the JSON search language.

``parse_query_text("zen.2457644.* size>1000000 -type:uvc")`` returns
``{"name-matches": "zen.2457644.%", "size-greater-than": 1000000,
"none-of": [{"type-is-exactly": "uvc"}]}``, which ``search.run_search`` runs like any search.

=================================  =========================================================
Query text                         JSON search
=================================  =========================================================
``zen.2457644.*``                  a bare word with wildcards: ``name-matches``, ``*`` -> ``%``,
                                   ``?`` -> ``_`` (``%`` and ``_`` keep their LIKE meaning)
``zen.2457644.12345.xx.HH.uvc``    a bare word without ``*`` or ``?``: ``name-is-exactly``
``"a name with spaces"``           quotes group a value (``\\"`` and ``\\\\`` inside); a quoted
                                   ``*`` or ``?`` is a literal character
``name:zen.*``                     the same as the bare word
``type:uvc`` ``source:rtp``        ``type-is-exactly`` / ``source-is-exactly``
                                   (``-matches`` when the value has wildcards)
``obsid:1157000000``               ``obsid-is-exactly``
``obsid:1157000000..1157010000``   ``obsid-in-range`` (inclusive)
``obsid>N`` ``obsid<N``            ``obsid-greater-than`` / ``obsid-less-than`` (strict)
``obsid:null``                     ``obsid-is-null``
``size>1000000`` ``size<5e6``      ``size-greater-than`` / ``size-less-than`` (integers;
                                   ``5e6`` is accepted because it is a whole number)
``size>10k`` ``size<=1.5GiB``      sizes take units: k, M, G, T, P (powers of 1000) and KiB,
``size:1k..2MiB``                  MiB, GiB, TiB, PiB (powers of 1024); case-insensitive, the
                                   ``B`` optional (``10kb`` = ``10K`` = 10000, ``1Ki`` = 1024)
``obsid>=N`` ``size<=N``           whole-number fields only: ``x>=N`` is ``x-greater-than``
                                   N-1, ``x<=N`` is ``x-less-than`` N+1
``session:2457644``                ``session-id-is-exactly`` (also ``A..B``, ``>``, ``<``)
``jd:2457644.1..2457644.5``        ``start-time-jd-in-range`` (also ``jd>X``, ``jd<X``)
``lst:1.5..3``                     ``start-lst-hr-in-range`` (also ``>``, ``<``)
``instances>1``                    ``num-instances-greater-than`` (also ``:N``, ``A..B``, ``<``)
``bad>0``                          ``num-bad-instances-greater-than``: files with a copy whose
                                   last fixity check found it bad or missing
``newer:7``                        ``not-older-than`` 7 (days)
``older:30``                       ``not-newer-than`` 30 (days)
``-TERM``                          ``{"none-of": [TERM]}``
``A OR B``                         ``{"or": [A, B]}`` (OR binds tighter than AND)
``A B``                            A and B
``( ... )``                        grouping, e.g. ``-(type:uv OR type:uvc)``
``{...}`` or ``[...]``             JSON, passed through ``parse_search`` unchanged
=================================  =========================================================

More fields, per kind of search (the second argument): instances also take ``store:NAME``
(``store-name``), ``policy:P`` (``deletion-policy``) and ``fixity:bad`` (``fixity``);
observations take ``obsid``, ``session``,
``jd``, ``lst``, ``duration``, ``files`` (``num-files``), ``size`` (``total-size``); sessions take
``session``, ``jd``, ``duration``, ``obs`` (``num-obs``), ``files`` (``num-files``), ``age``.
Every attribute name of the JSON language is also a field (``stop-time-jd>2457644.5``,
``num-files:0``, ``store-name:pot1``). Float fields take ranges and ``>`` / ``<`` only. Field names
are case-insensitive; ``OR`` must be upper case. Errors raise ``SearchError`` naming the token
and its column (1-based).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

from ..errors import SearchError
from .search_compile import validate_search
from .search_parse import KINDS, parse_search

__all__ = ["parse_query_text"]

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
#: Most '(' and '-' around one term (the search they make is checked for depth after).
_MAX_NESTING = 64

# attribute -> type: "s" string, "i" integer, "f" float, "d" days
_FILE_ATTRS = {
    "name": "s",
    "type": "s",
    "source": "s",
    "size": "i",
    "obsid": "i",
    "num-instances": "i",
    "num-bad-instances": "i",
    "start-time-jd": "f",
    "stop-time-jd": "f",
    "start-lst-hr": "f",
    "session-id": "i",
    "not-older-than": "d",
    "not-newer-than": "d",
}
_ATTRS: dict[str, dict[str, str]] = {
    "files": _FILE_ATTRS,
    "instances": {**_FILE_ATTRS, "store-name": "s", "deletion-policy": "s", "fixity": "s"},
    "observations": {
        "obsid": "i",
        "start-time-jd": "f",
        "stop-time-jd": "f",
        "start-lst-hr": "f",
        "session-id": "i",
        "duration": "f",
        "num-files": "i",
        "total-size": "i",
    },
    "sessions": {
        "session-id": "i",
        "start-time-jd": "f",
        "stop-time-jd": "f",
        "duration": "f",
        "num-obs": "i",
        "num-files": "i",
        "age": "f",
    },
}
_FILE_SHORT = {
    "session": "session-id",
    "jd": "start-time-jd",
    "lst": "start-lst-hr",
    "instances": "num-instances",
    "bad": "num-bad-instances",
    "newer": "not-older-than",
    "older": "not-newer-than",
}
_SHORT: dict[str, dict[str, str]] = {
    "files": _FILE_SHORT,
    "instances": {**_FILE_SHORT, "store": "store-name", "policy": "deletion-policy"},
    "observations": {
        "session": "session-id",
        "jd": "start-time-jd",
        "lst": "start-lst-hr",
        "files": "num-files",
        "size": "total-size",
    },
    "sessions": {
        "session": "session-id",
        "id": "session-id",
        "jd": "start-time-jd",
        "obs": "num-obs",
        "files": "num-files",
    },
}

_FIELD = re.compile(r"([A-Za-z][A-Za-z_-]*)(>=|<=|:|>|<)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

#: Attributes counted in bytes: their values take units.
_BYTE_ATTRS = frozenset({"size", "total-size"})
#: Size units, case-insensitive: decimal (k = K = 1000) and binary (an ``i``: KiB = 1024), the
#: ``B`` optional. Case carries no meaning because nobody sizes files in bits or millibytes.
_SIZE_UNITS = {"b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS.update({_letter: 1000**_power, f"{_letter}b": 1000**_power,
                        f"{_letter}i": 1024**_power, f"{_letter}ib": 1024**_power})
_UNITS_HELP = ("use k, M, G, T, P (powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of "
               "1024); case does not matter and the B is optional")
_SIZE = re.compile(rf"(?P<number>{_NUMBER.pattern})(?P<unit>[A-Za-z]*)")
#: Comparison -> (clause suffix, rounding of a value between two whole numbers, shift): the
#: strict clauses express the inclusive ones on whole numbers (``x>=5`` is ``x>4``).
_COMPARISONS = {
    ">": ("greater-than", ROUND_FLOOR, 0),
    "<": ("less-than", ROUND_CEILING, 0),
    ">=": ("greater-than", ROUND_CEILING, -1),
    "<=": ("less-than", ROUND_FLOOR, 1),
}


@dataclass
class _Word:
    segments: list[tuple[str, bool]]  # (text, quoted)
    column: int
    raw: str

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


@dataclass
class _Symbol:
    kind: str  # "(" | ")" | "-" | "OR"
    column: int
    raw: str


def _error(problem: str, column: int, token: str) -> SearchError:
    return SearchError(
        f"query text, column {column}: {problem} (in {token!r})", column=column, token=token
    )


def _tokenize(text: str) -> list[_Word | _Symbol]:
    tokens: list[_Word | _Symbol] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Symbol(char, i + 1, char))
            i += 1
        elif char == "-" and i + 1 < n and not text[i + 1].isspace():
            tokens.append(_Symbol("-", i + 1, "-"))
            i += 1
        elif char == "-":
            raise _error("a lone '-' (write -TERM to exclude a term)", i + 1, "-")
        else:
            start, segments = i, []
            while i < n and not text[i].isspace() and text[i] not in "()":
                if text[i] == '"':
                    j, quoted = i + 1, []
                    while j < n and text[j] != '"':
                        if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\':
                            j += 1
                        quoted.append(text[j])
                        j += 1
                    if j >= n:
                        raise _error("unterminated quote", i + 1, text[i:])
                    segments.append(("".join(quoted), True))
                    i = j + 1
                else:
                    segments.append((text[i], False))
                    i += 1
            raw = text[start:i]
            if raw == "OR":
                tokens.append(_Symbol("OR", start + 1, raw))
            else:
                tokens.append(_Word(segments, start + 1, raw))
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Word | _Symbol], kind: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.kind = kind
        self.depth = 0  # open parentheses and '-' around the term being read

    def nested(self, token: _Symbol) -> None:
        """One level deeper; refused past what a search may nest (the parser recurses per
        level: thousands of '(' must be a clear error, not a RecursionError)."""
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _error(f"nested deeper than {_MAX_NESTING} levels", token.column, token.raw)

    def peek(self) -> _Word | _Symbol | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Word | _Symbol:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def conjunction(self) -> list[dict]:
        terms = []
        while (token := self.peek()) is not None and not (
            isinstance(token, _Symbol) and token.kind == ")"
        ):
            terms.append(self.disjunction())
        return terms

    def disjunction(self) -> dict:
        items = [self.unary()]
        while isinstance(token := self.peek(), _Symbol) and token.kind == "OR":
            self.take()
            if self.peek() is None:
                raise _error("OR needs a term after it", token.column, token.raw)
            items.append(self.unary())
        return items[0] if len(items) == 1 else {"or": items}

    def unary(self) -> dict:
        token = self.take()
        if isinstance(token, _Word):
            return self.term(token)
        if token.kind == "-":
            if self.peek() is None:
                raise _error("'-' needs a term after it", token.column, token.raw)
            self.nested(token)
            negated = {"none-of": [self.unary()]}
            self.depth -= 1
            return negated
        if token.kind == "(":
            self.nested(token)
            terms = self.conjunction()
            closing = self.peek()
            if closing is None:
                raise _error("unclosed parenthesis", token.column, token.raw)
            self.take()
            self.depth -= 1
            return _combine(terms)
        if token.kind == "OR":
            raise _error("OR needs a term before it", token.column, token.raw)
        raise _error("unmatched closing parenthesis", token.column, token.raw)

    # --- terms

    def term(self, word: _Word) -> dict:
        # Unquoted characters are one segment each, so the field's length counts segments.
        leading = "".join(text for text, _ in _unquoted_prefix(word.segments))
        match = _FIELD.match(leading)
        if match is None:
            return self.string_clause("name", word.segments, word)
        field, op = match.group(1).lower(), match.group(2)
        attr = self.attribute(field, word)
        rest = word.segments[match.end() :]
        value_column = word.column + match.end()
        if not rest:
            raise _error(f"missing value after '{field}{op}'", word.column, word.raw)
        kind = _ATTRS[self.kind][attr]
        if op in (">=", "<=") and kind != "i":
            raise _error(
                f"'{op}' is for whole numbers: use {field}:A..B (inclusive) or '{op[0]}'",
                word.column,
                word.raw,
            )
        if kind == "s":
            if op != ":":
                raise _error(f"'{field}' is text: use {field}:VALUE", word.column, word.raw)
            return self.string_clause(attr, rest, word)
        value = "".join(text for text, _ in rest)
        if kind == "d":
            if op != ":":
                raise _error(f"use {field}:DAYS", word.column, word.raw)
            return {attr: _float(value, value_column, word)}
        number: Callable[[str, int, _Word, str | None], float]
        if attr in _BYTE_ATTRS:
            number = _bytes
        else:
            number = _int if kind == "i" else _float
        if op in _COMPARISONS:
            name, rounding, shift = _COMPARISONS[op]
            bound = number(value, value_column, word, rounding) + shift
            if shift and not _INT_MIN <= bound <= _INT_MAX:
                raise _error(f"{value!r} is out of range", value_column, word.raw)
            return {f"{attr}-{name}": bound}
        if value.lower() == "null" and not rest[0][1]:
            if self.kind in ("files", "instances") and attr == "obsid":
                return {"obsid-is-null": True}
            raise _error(f"'{field}' cannot be null", value_column, word.raw)
        if ".." in value:
            low, _, high = value.partition("..")
            if not low or not high:
                raise _error("a range needs both ends, A..B", value_column, word.raw)
            return {
                f"{attr}-in-range": [
                    number(low, value_column, word, ROUND_CEILING),
                    number(high, value_column + len(low) + 2, word, ROUND_FLOOR),
                ]
            }
        if kind == "f":
            raise _error(
                f"'{field}' is a float: use {field}:A..B, {field}>X or {field}<X",
                word.column,
                word.raw,
            )
        return {f"{attr}-is-exactly": number(value, value_column, word)}

    def attribute(self, field: str, word: _Word) -> str:
        attrs = _ATTRS[self.kind]
        attr = _SHORT[self.kind].get(field, field)
        if attr not in attrs:
            known = sorted({*_SHORT[self.kind], *attrs})
            raise _error(
                f"unknown field '{field}' for {self.kind} (known: {', '.join(known)}; quote a "
                "name that contains ':', '<' or '>')",
                word.column,
                word.raw,
            )
        return attr

    def string_clause(self, attr: str, segments: list[tuple[str, bool]], word: _Word) -> dict:
        if attr not in _ATTRS[self.kind]:
            raise _error(
                f"bare words search file names, which {self.kind} do not have: use FIELD:VALUE",
                word.column,
                word.raw,
            )
        wildcard = any(text in "*?" and not quoted for text, quoted in segments)
        if not wildcard:
            return {f"{attr}-is-exactly": "".join(text for text, _ in segments)}
        pattern = "".join(
            ("%" if text == "*" else "_") if not quoted and text in "*?" else text
            for text, quoted in segments
        )
        return {f"{attr}-matches": pattern}


def _unquoted_prefix(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    prefix: list[tuple[str, bool]] = []
    for text, quoted in segments:
        if quoted:
            break
        prefix.append((text, quoted))
    return prefix


def _int(text: str, column: int, word: _Word, rounding: str | None = None) -> int:
    if not _NUMBER.fullmatch(text):
        raise _error(f"{text!r} is not an integer", column, word.raw)
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex guards this
        raise _error(f"{text!r} is not an integer", column, word.raw) from None
    if abs(value.adjusted()) > 30 or value != value.to_integral_value():
        raise _error(f"{text!r} is not an integer", column, word.raw)
    number = int(value)
    if not _INT_MIN <= number <= _INT_MAX:
        raise _error(f"{text!r} is out of range", column, word.raw)
    return number


def _bytes(text: str, column: int, word: _Word, rounding: str | None = None) -> int:
    """A size: a whole number of bytes, or a number with a unit (``10k``, ``1.5GiB``). A
    value with a unit that falls between two whole bytes is rounded the way that keeps the
    comparison exact (``rounding``: ``size>1.1KiB`` is ``size>1126``); an exact size must be
    whole."""
    match = _SIZE.fullmatch(text)
    if match is None or not match["unit"]:
        return _int(text, column, word)
    number, unit = match["number"], match["unit"]
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise _error(f"unknown size unit {unit!r}: {_UNITS_HELP}", column + len(number),
                     word.raw)
    value = Decimal(number) * factor
    if abs(value.adjusted()) > 30:
        raise _error(f"{text!r} is out of range", column, word.raw)
    if rounding is None and value != value.to_integral_value():
        raise _error(f"{text!r} is {value.normalize():f} bytes, not a whole number", column,
                     word.raw)
    whole = int(value.to_integral_value(rounding or ROUND_FLOOR))
    if not _INT_MIN <= whole <= _INT_MAX:
        raise _error(f"{text!r} is out of range", column, word.raw)
    return whole


def _float(text: str, column: int, word: _Word, rounding: str | None = None) -> float | int:
    if not _NUMBER.fullmatch(text):
        raise _error(f"{text!r} is not a number", column, word.raw)
    value = float(text)
    if not math.isfinite(value):
        raise _error(f"{text!r} is out of range", column, word.raw)
    if re.fullmatch(r"[+-]?\d+", text) and _INT_MIN <= int(text) <= _INT_MAX:
        return int(text)
    return value


def _combine(terms: list[dict]) -> dict:
    """Terms ANDed: one object when their clause names are distinct, else an ``and`` list."""
    if len(terms) == 1:
        return terms[0]
    names = [name for term in terms for name in term]
    if len(names) == len(set(names)):
        return {name: payload for term in terms for name, payload in term.items()}
    return {"and": terms}


def parse_query_text(text: str, kind: str = "files") -> dict | list:
    """Translate a one-line query (see the module's table) into a JSON search of ``kind``.

    Text starting with ``{`` or ``[`` is JSON and goes through ``parse_search`` unchanged (a
    list of objects stays a list). An empty text is ``{}`` (everything). Raises ``SearchError``
    naming the offending token and its column.
    """
    if kind not in KINDS:
        raise SearchError(f"unknown search kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(text, str):
        raise SearchError(f"query text must be a string, got {type(text).__name__}")
    if text.lstrip().startswith(("{", "[")):
        return parse_search(text)
    parser = _Parser(_tokenize(text), kind)
    terms = parser.conjunction()
    if (token := parser.peek()) is not None:
        raise _error("unmatched closing parenthesis", token.column, token.raw)
    search = _combine(terms) if terms else {}
    validate_search(kind, search)
    return search
