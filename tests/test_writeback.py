"""A large file written through ``writeback.WriteBehind`` (staging's large-file copy, the
transfer receiver) does not stay in memory: what is on disk leaves the page cache as the
writing goes on, so a multi-gigabyte stage does not push the user's other files out."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hera_stage_ext.writeback import DEPTH, STEP, WriteBehind

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="sync_file_range and mincore are Linux's")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


def cached_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache now (mincore of a mapping, which reads
    nothing in)."""
    size, page = path.stat().st_size, os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec) * page
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def write(path: Path, size: int, behind: bool) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb", buffering=0) as f:
        follower = WriteBehind(f.fileno()) if behind else None
        written = 0
        while written < size:
            written += f.write(chunk)
            if follower is not None:
                follower.advance(written)
        os.fsync(f.fileno())


def test_a_large_file_leaves_the_page_cache_as_it_is_written(tmp_path: Path) -> None:
    size = 3 * DEPTH * STEP
    write(tmp_path / "plain", size, behind=False)
    write(tmp_path / "behind", size, behind=True)
    # Written the usual way, the file stays cached (the comparison shows the probe works here).
    assert cached_bytes(tmp_path / "plain") > size // 2
    # Written behind, at most the last DEPTH steps (and the unfinished one) are still cached.
    assert cached_bytes(tmp_path / "behind") <= (DEPTH + 1) * STEP + (1 << 20)
    assert (tmp_path / "behind").stat().st_size == size


def test_a_resumed_file_keeps_its_earlier_bytes(tmp_path: Path) -> None:
    path = tmp_path / "part"
    head = os.urandom(3 * STEP + 12345)  # a partial file from an earlier attempt
    path.write_bytes(head)
    tail = os.urandom((DEPTH + 4) * STEP)
    with open(path, "ab", buffering=0) as f:
        follower = WriteBehind(f.fileno(), start=len(head))
        for k in range(0, len(tail), 1 << 20):
            f.write(tail[k:k + (1 << 20)])
            follower.advance(len(head) + min(k + (1 << 20), len(tail)))
        os.fsync(f.fileno())
    assert path.read_bytes() == head + tail


def test_a_file_without_sync_file_range_is_written_all_the_same() -> None:
    """A pipe refuses sync_file_range (ESPIPE): the writing goes on, nothing is raised."""
    read_end, write_end = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(iter_pipe(read_end)))
    reader.start()
    chunk = os.urandom(1 << 20)
    follower = WriteBehind(write_end)
    written = 0
    for _ in range((DEPTH + 2) * STEP // len(chunk)):
        written += os.write(write_end, chunk)
        follower.advance(written)
    follower.finish(written)
    os.close(write_end)
    reader.join()
    os.close(read_end)
    assert sum(map(len, received)) == written


def iter_pipe(fd: int) -> Iterator[bytes]:
    while data := os.read(fd, 1 << 20):
        yield data
