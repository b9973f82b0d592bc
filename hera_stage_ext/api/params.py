"""Fields of request bodies that several REST handler modules read alike: a true/false flag and
the files a request names (``names``, ``search`` or ``query``)."""

from __future__ import annotations

from typing import Any

from ..catalogue.query_text import parse_query_text
from ..catalogue.search_parse import parse_search
from ..errors import InvalidRequest


def flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false")
    return value


def file_selection(body: dict[str, Any]) -> dict[str, Any]:
    """The files a job request names: exactly one of names, search (JSON) or query (text)."""
    given = [key for key in ("names", "search", "query") if key in body]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of 'names', 'search' (JSON) or 'query' (text)")
    names = body.get("names")
    if names is not None and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
    ):
        raise InvalidRequest("'names' must be a non-empty list of file names")
    search = None
    if "search" in body:
        search = parse_search(body["search"])
    elif "query" in body:
        if not isinstance(body["query"], str):
            raise InvalidRequest("'query' must be a string")
        search = parse_query_text(body["query"])
    return {"names": names, "search": search}
