"""Checksums of files and directories: MD5 (Librarian compatibility) and xxh3-128 (fast).

The one checksum module of the project. Files are read once, in fixed-size chunks into a reused
buffer, so memory stays constant whatever the size. A directory (a MIRIAD data set) gets the
Librarian's directory digest: the digest of the lines ``<hex>  ./<relative path>\\n`` of every file
inside, sorted by path bytewise (the C locale), which for MD5 is what
``find . ! -type d -exec md5sum {} \\; | sort -k 2 | md5sum`` prints inside the directory.

Checksums travel as ``{"md5": hex, "xxh3-128": hex}``; ``compare`` only compares algorithms both
sides have, and refuses to compare when they share none.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

import xxhash

from ..errors import InvalidRequest
from .. import safefs
from ..paths import is_within

MD5 = "md5"
XXH3_128 = "xxh3-128"
#: Every algorithm the catalogue knows, fastest first (the one verification prefers).
ALGORITHMS = (XXH3_128, MD5)
CHUNK_SIZE = 1 << 20


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


_FACTORIES: dict[str, Callable[[], _Hasher]] = {
    MD5: hashlib.md5,
    XXH3_128: xxhash.xxh3_128,
}
#: Hex digits in a digest of each algorithm.
_HEX_DIGITS = {name: 2 * factory().digest_size  # type: ignore[attr-defined]
               for name, factory in _FACTORIES.items()}
_HEX = re.compile("[0-9a-f]*")


def new_hashers(algorithms: Iterable[str] = ALGORITHMS) -> dict[str, _Hasher]:
    try:
        return {name: _FACTORIES[name]() for name in algorithms}
    except KeyError as exc:
        raise InvalidRequest(f"unknown checksum algorithm {exc.args[0]!r}") from None


@dataclass(frozen=True)
class Digest:
    """What checksumming a path found: its size in bytes and its checksums."""

    size: int
    checksums: dict[str, str]
    is_directory: bool


def hash_file(path: str | os.PathLike[str], algorithms: Iterable[str] = ALGORITHMS) -> Digest:
    hashers = new_hashers(algorithms)
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            chunk = view[:n]
            for h in hashers.values():
                h.update(chunk)
            size += n
    return Digest(size, {name: h.hexdigest() for name, h in hashers.items()}, False)


def _raise(error: OSError) -> None:
    raise error


def directory_members(path: Path) -> list[str]:
    """Relative paths (``a/b.dat``) of every non-directory entry below ``path``, C-sorted."""
    members = []
    # An unreadable or vanished folder is an error, never a silently smaller data set.
    for root, dirs, files in os.walk(path, onerror=_raise):
        dirs.sort()
        rel_root = os.path.relpath(root, path)
        for name in files:
            members.append(name if rel_root == "." else f"{rel_root}/{name}")
    # `sort -k 2` in the C locale orders the "./path" field bytewise.
    members.sort(key=lambda m: m.encode("utf-8", "surrogateescape"))
    return members


def contained_members(path: Path) -> list[str]:
    """``directory_members``, refusing (PermissionError) a data set with a member that is a
    symlink leading out of it: its outside bytes would be read, and copied by every staging."""
    members = directory_members(path)
    for member in members:
        if not is_within(path / member, path):
            raise PermissionError(errno.EPERM, "a member is a symlink leading outside the "
                                  "directory", str(path / member))
    return members


def hash_directory(path: str | os.PathLike[str], algorithms: Iterable[str] = ALGORITHMS) -> Digest:
    root = Path(path)
    algorithms = tuple(algorithms)
    members = contained_members(root)
    return manifest_digest(
        ((member, hash_file(root / member, algorithms)) for member in members),
        algorithms,
    )


def hash_bytes(data: bytes | memoryview, algorithms: Iterable[str] = ALGORITHMS) -> Digest:
    """Checksums of bytes held in memory (a small file read whole)."""
    hashers = new_hashers(algorithms)
    for h in hashers.values():
        h.update(data)
    return Digest(len(data), {name: h.hexdigest() for name, h in hashers.items()}, False)


#: One call from bytes to a hex digest (no hasher object kept), per algorithm.
_ONE_SHOT: dict[str, Callable[[bytes | memoryview], str]] = {
    MD5: lambda data: hashlib.md5(data).hexdigest(),
    XXH3_128: xxhash.xxh3_128_hexdigest,
}


def hex_digest(data: bytes | memoryview, algorithm: str) -> str:
    """The ``algorithm`` checksum of bytes held in memory, in one call (a small file read whole,
    per file of a job: no ``Digest``, no hasher object)."""
    return _ONE_SHOT[algorithm](data)


class StreamHasher:
    """Incremental checksums of a byte stream fed chunk by chunk (e.g. while copying it)."""

    def __init__(self, algorithms: Iterable[str] = ALGORITHMS) -> None:
        self._hashers = new_hashers(algorithms)
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        for h in self._hashers.values():
            h.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(self.size, {n: h.hexdigest() for n, h in self._hashers.items()}, False)


def manifest_digest(
    members: Iterable[tuple[str, Digest]], algorithms: Iterable[str] = ALGORITHMS
) -> Digest:
    """The Librarian directory digest from each member's relative path and digest; ``members``
    must come in ``directory_members`` order (C-sorted relative paths)."""
    manifests = new_hashers(algorithms)
    size = 0
    for member, digest in members:
        size += digest.size
        for name, h in manifests.items():
            h.update(f"{digest.checksums[name]}  ./{member}\n".encode("utf-8", "surrogateescape"))
    return Digest(size, {name: h.hexdigest() for name, h in manifests.items()}, True)


def hash_path(path: str | os.PathLike[str], algorithms: Iterable[str] = ALGORITHMS) -> Digest:
    """Checksums of a file, or the Librarian directory digest of a directory."""
    if os.path.isdir(path):
        return hash_directory(path, algorithms)
    return hash_file(path, algorithms)


def hash_fd(fd: int, algorithms: Iterable[str] = ALGORITHMS) -> Digest:
    """Checksums of an open file, read from its start (the descriptor is left open)."""
    hashers = new_hashers(algorithms)
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    while n := os.preadv(fd, [buffer], size):
        chunk = view[:n]
        for h in hashers.values():
            h.update(chunk)
        size += n
    return Digest(size, {name: h.hexdigest() for name, h in hashers.items()}, False)


def hash_at(fd: int, algorithms: Iterable[str] = ALGORITHMS) -> Digest:
    """``hash_path`` of what the open descriptor ``fd`` is: a file, or a folder whose members
    are opened below it (``safefs``: never outside it, whatever is swapped meanwhile)."""
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        return hash_fd(fd, algorithms)
    algorithms = tuple(algorithms)
    _folders, members = safefs.tree(fd)

    def member(rel: str) -> Digest:
        mfd = safefs.open_beneath(fd, rel, os.O_RDONLY | os.O_CLOEXEC, inner_links=True)
        try:
            return hash_fd(mfd, algorithms)
        finally:
            os.close(mfd)

    return manifest_digest(((rel, member(rel)) for rel in members), algorithms)


class Checksums(dict[str, str]):
    """Checksums ``normalise`` made (known algorithm names, lower-case hex digests of their
    length): ``normalise`` gives one back as it is, so a mapping checked once (a peer's offer,
    by ``transfer.protocol.check_offer``) is not checked again where it is registered. Not to
    be changed (each change refused: it would skip the check). A copy or pickle of it is a
    plain dict (checked again wherever it goes)."""

    __slots__ = ()

    def _refuse(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise TypeError("normalised checksums are not to be changed")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = \
        _refuse

    def __reduce__(self) -> tuple[type[dict[str, str]], tuple[dict[str, str]]]:
        return dict, (dict(self),)


def checksums_json(checksums: dict[str, str]) -> str:
    """``json.dumps`` of checksums ``normalise`` passed (known algorithm names, hex digits:
    nothing to escape), without the JSON encoder's set-up per call."""
    return "{" + ", ".join(f'"{name}": "{digest}"' for name, digest in checksums.items()) + "}"


def normalise(checksums: dict[str, str]) -> Checksums:
    """Validate a checksum mapping from outside; accepts v2's ``algorithm:::hex`` values too.
    ``Checksums`` (normalised already) come back as they are."""
    if checksums.__class__ is Checksums:
        return checksums
    if not isinstance(checksums, dict):
        raise InvalidRequest("checksums must be an object of algorithm to hex digest")
    out: dict[str, str] = {}
    for algorithm, value in checksums.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"checksum {algorithm!r} must be a hex string")
        if ":::" in value:
            prefix, value = value.split(":::", 1)
            if prefix != algorithm:
                raise InvalidRequest(f"checksum {algorithm!r} is labelled {prefix!r}")
        if algorithm not in _FACTORIES:
            raise InvalidRequest(f"unknown checksum algorithm {algorithm!r}")
        value = value.lower()
        digits = _HEX_DIGITS[algorithm]
        if len(value) != digits or _HEX.fullmatch(value) is None:
            raise InvalidRequest(
                f"checksum {algorithm!r} must be {digits} hex digits, got {value!r}"
            )
        out[algorithm] = value
    return Checksums(out)


def compare(a: dict[str, str], b: dict[str, str]) -> bool:
    """True when every algorithm both mappings have agrees; an error when they share none."""
    common = [name for name in ALGORITHMS if name in a and name in b]
    if not common:
        raise InvalidRequest(
            f"cannot compare checksums of different algorithms ({sorted(a)} vs {sorted(b)})"
        )
    return all(a[name] == b[name] for name in common)


def preferred_algorithm(checksums: dict[str, str]) -> str:
    """The fastest algorithm the mapping has: what verification should compute."""
    for name in ALGORITHMS:
        if name in checksums:
            return name
    raise InvalidRequest("no known checksum to verify against")
