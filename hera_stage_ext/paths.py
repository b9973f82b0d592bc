"""The one check that a path coming from outside stays inside an allowed root.

Every path that enters through a request (a staging destination, an ingest glob, a store-relative
path, an upload directory) goes through ``confine`` before anything is read or written. The check
is real containment after resolving symlinks (``os.path.realpath``), never a string-prefix test.
A path that names a place inside a store by its text (a peer's offer) must also be canonical
(``check_canonical``): one spelling per place, so no second name for a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import Forbidden, InvalidRequest

#: Longest path accepted from a request, in bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Longest component of a path, in bytes (Linux's NAME_MAX): longer ones fail every system call.
MAX_NAME_BYTES = 255


def check_text(path: object, what: str = "path") -> str:
    """Reject what no file system path may be: non-strings, NUL, over-long."""
    if not isinstance(path, str):
        raise InvalidRequest(f"{what} must be a string, got {type(path).__name__}")
    if not path:
        raise InvalidRequest(f"{what} must not be empty")
    if "\x00" in path:
        raise InvalidRequest(f"{what} must not contain NUL")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800", or an undecodable name): no file system path.
        raise InvalidRequest(f"{what} must be valid Unicode (no lone surrogates)") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidRequest(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if len(encoded) > MAX_NAME_BYTES and max(map(len, encoded.split(b"/"))) > MAX_NAME_BYTES:
        raise InvalidRequest(f"{what} has a component longer than {MAX_NAME_BYTES} bytes")
    return path


#: C0 and C1 control characters and the Unicode line and paragraph separators: what no name
#: from outside may hold (a reader of lines, Python's splitlines among them, may end a line there).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_canonical(path: object, what: str = "path") -> str:
    """Return ``path`` if it is a canonical relative path, else raise InvalidRequest naming it
    and the problem: ``check_text``'s limits, no control characters, no leading or trailing
    ``/``, no empty (``//``), ``.`` or ``..`` component. Such a path has exactly one spelling:
    ``os.path.normpath`` leaves it as it is."""
    if not isinstance(path, str):
        check_text(path, what)  # says what it is instead
    text = str(path)
    try:
        check_text(text, what)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what} {_shown(text)}: "
                             f"{exc.message.removeprefix(what + ' ')}") from None
    if CONTROL_CHARACTERS.search(text):
        raise InvalidRequest(f"{what} {_shown(text)} holds a control character")
    if text.startswith("/"):
        raise InvalidRequest(f"{what} {_shown(text)} must be relative (no leading '/')")
    if text.endswith("/"):
        raise InvalidRequest(f"{what} {_shown(text)} must name a file (no trailing '/')")
    framed = f"/{text}/"  # a component is what lies between two of its slashes
    if "//" in framed or "/./" in framed or "/../" in framed:
        for part in text.split("/"):  # the first such component, for the message
            if part in ("", ".", ".."):
                problem = "an empty component ('//')" if not part else f"a {part!r} component"
                raise InvalidRequest(f"{what} {_shown(text)} is not canonical: it has "
                                     f"{problem}")
    return text


def _shown(text: str) -> str:
    """``text`` as an error message shows it (quoted, cut after 120 characters): made only
    for an error (a receiver checks thousands of paths an announce)."""
    return repr(text[:120]) + ("..." if len(text) > 120 else "")


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` is ``root`` or below it, both resolved through symlinks."""
    real_path = os.path.realpath(path)
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_path, real_root]) == real_root


def confine(
    path: str, roots: Iterable[str | os.PathLike[str]], *, base: str | os.PathLike[str] | None = None,
    what: str = "path", name_roots: bool = False,
) -> Path:
    """Resolve ``path`` (relative to ``base``, or to the first root) and return it if it lies
    inside one of ``roots`` after every symlink is followed; raise Forbidden otherwise.

    The returned path is the resolved one, so a caller acts on exactly what was checked.
    ``name_roots``: the refusal names the roots (for the user's own destinations, never for a
    path from a peer, whose reader must not learn them).
    """
    check_text(path, what)
    configured = list(roots)
    shown = [os.fspath(r) for r in configured]  # as configured, for the refusal
    real_roots = [Path(os.path.realpath(r)) for r in configured]
    if not real_roots:
        raise Forbidden(f"no allowed root is configured for {what}")
    anchor = Path(base) if base is not None else real_roots[0]
    resolved = Path(os.path.realpath(anchor / path))
    if len(os.fsencode(resolved)) > MAX_PATH_BYTES:  # the root's length plus the path's
        raise InvalidRequest(f"{what} {path!r} resolves to more than {MAX_PATH_BYTES} bytes")
    for root in real_roots:
        if resolved == root or root in resolved.parents:
            return resolved
    if not name_roots:
        raise Forbidden(f"{what} {path!r} resolves outside the allowed roots")
    raise Forbidden(f"{what} {path!r} resolves outside the allowed roots (allowed: "
                    f"{', '.join(shown)})", allowed_roots=shown)
