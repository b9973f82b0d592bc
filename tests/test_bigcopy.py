"""Large files (``jobs/bigcopy.py``, ``directio.py``): a durable copy goes to the disk past the
page cache and is checked byte for byte; a cancelled copy gives back what it held; a full disk
is reported as full."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
from pathlib import Path

import pytest

from hera_stage_ext import directio
from hera_stage_ext.catalogue import checksums as ck
from hera_stage_ext.jobs import bigcopy

from .job_fixtures import small_filesystem
from .test_writeback import cached_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="O_DIRECT and mincore are Linux's")

ALGORITHM = ck.XXH3_128
#: Not a whole number of blocks: the last partial block takes the ordinary way.
SIZE = 3 * directio.CHUNK + 5000


def source(tmp_path: Path, size: int = SIZE) -> Path:
    path = tmp_path / "source.uvh5"
    path.write_bytes(os.urandom(size))
    return path


def copy(src: Path, dst: Path, durable: bool, check=lambda n: None) -> ck.Digest | None:
    fin = os.open(src, os.O_RDONLY)
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o444)  # read-only, as staged
    try:
        digest = bigcopy.copy(fin, fd, ALGORITHM, 1 << 20, check, bytearray(1 << 20),
                              durable=durable)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT, "the descriptor is as given"
        os.fsync(fd)
        return digest
    finally:
        os.close(fd)
        os.close(fin)


def test_a_durable_copy_is_exact_checked_and_leaves_no_copy_in_memory(tmp_path: Path) -> None:
    src = source(tmp_path)
    expected = ck.hash_file(src, [ALGORITHM])
    direct = copy(src, tmp_path / "direct", durable=True)
    kernel = copy(src, tmp_path / "kernel", durable=False)
    # Copied in the page cache, a file stays there (the probe works here) ...
    assert cached_bytes(tmp_path / "kernel") > SIZE // 2
    # ... written directly, only the last partial block went through it.
    assert cached_bytes(tmp_path / "direct") <= 2 * os.sysconf("SC_PAGE_SIZE")
    for name, digest in (("direct", direct), ("kernel", kernel)):
        assert digest is not None and digest.size == SIZE
        assert digest.checksums == expected.checksums, name
        assert (tmp_path / name).read_bytes() == src.read_bytes(), name


def test_the_checksum_is_of_the_bytes_written(tmp_path: Path) -> None:
    # A source changed after ingest: the digest returned is the copy's, so the caller's
    # comparison with the catalogue's checksum sees the change.
    src = source(tmp_path)
    before = ck.hash_file(src, [ALGORITHM])
    with open(src, "r+b") as f:
        f.seek(2 * directio.CHUNK + 7)
        f.write(b"\x00")
    digest = copy(src, tmp_path / "copy", durable=True)
    assert digest is not None
    assert digest.checksums == ck.hash_file(tmp_path / "copy", [ALGORITHM]).checksums
    assert digest.checksums != before.checksums


class Stop(Exception):
    pass


def test_cancelled_copies_give_their_buffers_back(tmp_path: Path) -> None:
    src = source(tmp_path)

    def stop_after_two(n: int, seen: list[int] = []) -> None:  # noqa: B006 (per test)
        seen.append(n)
        if len(seen) % 2 == 0:
            raise Stop

    # More cancelled copies than the worker has buffers: a buffer kept by one would hang the
    # next copy.
    for k in range(3 * directio.BUFFERS):
        with pytest.raises(Stop):
            copy(src, tmp_path / f"cancelled-{k}", durable=True, check=stop_after_two)
    done: list[ck.Digest | None] = []
    finisher = threading.Thread(target=lambda: done.append(
        copy(src, tmp_path / "complete", durable=True)), daemon=True)
    finisher.start()
    finisher.join(60)
    assert done and done[0] is not None and done[0].size == SIZE, "a copy after cancels hung"


def test_read_errors_give_their_buffers_back(tmp_path: Path) -> None:
    src = source(tmp_path)
    errors: list[str] = []
    done: list[ck.Digest | None] = []

    def fail_then_copy() -> None:
        unreadable = os.open(tmp_path, os.O_RDONLY)  # a folder: every read fails (EISDIR)
        try:
            # More failures than the worker has buffers: a buffer kept by one would hang the
            # next copy.
            for k in range(3 * directio.BUFFERS):
                fd = os.open(tmp_path / f"failed-{k}", os.O_RDWR | os.O_CREAT | os.O_EXCL)
                try:
                    bigcopy.copy(unreadable, fd, ALGORITHM, 1 << 20, lambda n: None,
                                 bytearray(1 << 20), durable=True)
                except IsADirectoryError as exc:
                    errors.append(exc.strerror)
                finally:
                    os.close(fd)
        finally:
            os.close(unreadable)
        done.append(copy(src, tmp_path / "complete", durable=True))

    runner = threading.Thread(target=fail_then_copy, daemon=True)
    runner.start()
    runner.join(60)
    assert errors == ["Is a directory"] * (3 * directio.BUFFERS)
    assert done and done[0] is not None and done[0].size == SIZE, "a copy after errors hung"


def test_streams_sharing_the_buffers_all_finish(tmp_path: Path) -> None:
    # More streams than the buffers allow at full depth: they wait for each other's buffers.
    src = source(tmp_path)
    expected = ck.hash_file(src, [ALGORITHM]).checksums
    results: list[dict[str, str]] = []
    streams = [threading.Thread(target=lambda k=k: results.append(
        copy(src, tmp_path / f"stream-{k}", durable=True).checksums), daemon=True)
        for k in range(6)]
    for stream in streams:
        stream.start()
    for stream in streams:
        stream.join(120)
    assert results == [expected] * 6


def test_a_full_disk_is_reported_as_such(tmp_path: Path) -> None:
    src = source(tmp_path)
    with small_filesystem(tmp_path / "small", size_mib=16):
        with pytest.raises(OSError) as info:
            copy(src, tmp_path / "small" / "copy", durable=True)
        assert info.value.errno == errno.ENOSPC
        # Nothing held: the same disk takes a copy that fits once the failed one is gone.
        os.unlink(tmp_path / "small" / "copy")
        (tmp_path / "fits").mkdir()
        small = source(tmp_path / "fits", size=directio.CHUNK + 1)
        digest = copy(small, tmp_path / "small" / "fits", durable=True)
        assert digest is not None and digest.size == directio.CHUNK + 1
