"""The job-status cache behind ``GET jobs/<id>``: polls of a job share reads, failures are not
kept, and this server's own changes to a job show at once."""

from __future__ import annotations

import asyncio

import pytest

from hera_stage_ext.api.job_status import JobStatusCache


async def test_polls_share_one_read_and_a_later_poll_reads_again() -> None:
    cache, reads = JobStatusCache(reuse_s=0.2), []

    async def read() -> str:
        reads.append(1)
        await asyncio.sleep(0.05)
        return f'{{"reads": {len(reads)}}}'

    # Fifty polls at once: one database read answers all of them.
    replies = await asyncio.gather(*(cache.get(7, read) for _ in range(50)))
    assert set(replies) == {'{"reads": 1}'} and len(reads) == 1
    await asyncio.sleep(0.25)  # older than reuse_s: read again
    assert await cache.get(7, read) == '{"reads": 2}'
    cache.forget(7)  # e.g. after a cancel through this server
    assert await cache.get(7, read) == '{"reads": 3}'
    assert await cache.get(8, read) == '{"reads": 4}'  # per job


async def test_a_failed_read_is_not_kept() -> None:
    cache, outcomes = JobStatusCache(reuse_s=60), [KeyError("no job 7"), '{"id": 7}']

    async def read() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(KeyError):
        await cache.get(7, read)
    assert await cache.get(7, read) == '{"id": 7}'
