"""``hera-stage`` against a real server: the CLI runs in a thread while the server's loop runs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import pytest

from hera_stage_ext.cli import main

from .api_fixtures import *  # noqa: F403


@pytest.fixture
def cli(http_server_client, jp_base_url, jp_auth_header):
    url = http_server_client.get_url(jp_base_url)
    token = jp_auth_header["Authorization"].split()[1]

    async def run(*args: str, token_: str | None = token) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()

        def call() -> int:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return main(["--url", url, "--token", token_ or "", *args])

        code = await asyncio.to_thread(call)
        return code, out.getvalue(), err.getvalue()

    return run


async def test_ingest_search_info_locate(cli, archive):
    code, out, err = await cli("ingest", "onsite", "*/*", "--quiet")
    assert code == 0, err
    assert out.startswith("30 file(s) registered, 30 instance(s) added, 0 unchanged, 0 error(s)")
    code, out, _ = await cli("ingest", "onsite", "*/*", "--quiet")
    assert "0 file(s) registered" in out and "30 unchanged" in out

    code, out, err = await cli("search", "zen.2457645.*")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "SIZE", "OBSID", "STORES"]
    assert len(lines) == 9 and all(line.startswith("zen.2457645.") for line in lines)
    code, out, _ = await cli("search", '{"obsid-is-null": true}', "--json")
    assert sorted(r["name"] for r in json.loads(out)) == [
        "antenna-positions.csv", "observing-log.txt"]
    code, out, err = await cli("search", "zen.*", "--limit", "5")
    assert len(out.splitlines()) == 1 + 5 and "5 of 28 shown" in err

    code, out, _ = await cli("info", "zen.2457645.10000.xx.HH.uvh5")
    assert code == 0 and "instance   onsite:" in out and "md5" in out
    code, out, _ = await cli("locate", "zen.2457645.10000.xx.HH.uvh5")
    assert code == 0 and out.strip().endswith("onsite/2457645/zen.2457645.10000.xx.HH.uvh5")
    code, out, _ = await cli("stores", "--json")
    assert {s["name"] for s in json.loads(out)} == {"onsite", "offsite"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("info", "no-such-file"), "no file named 'no-such-file'"),
        (("search", '{"bogus-clause": 1}'), "bogus-clause"),
        (("ingest", "nowhere"), "no store named 'nowhere'"),
        (("locate", "zen..x"), "'..'"),
    ],
)
async def test_errors_are_one_line_and_exit_1(cli, archive, args, words):
    code, out, err = await cli(*args)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("hera-stage: error: ") and words in err


async def test_wrong_token(cli, archive):
    code, _, err = await cli("stores", token_="wrong")
    assert code == 1 and "wrong or missing token" in err


def test_unreachable_server(capsys):
    assert main(["--url", "http://127.0.0.1:9/", "stores"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hera-stage: error: cannot reach the Jupyter server")


# ----- the --wait progress bar: rate and ETA from the bytes the server reports ------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_meter_shows_no_rate_until_bytes_move_and_no_burst_after_a_stall():
    from hera_stage_ext.client import RateMeter

    clock = Clock()
    meter = RateMeter(window_s=10.0, clock=clock)
    for _ in range(25):  # 12 s at 0 bytes (a big file's first chunk not through yet)
        meter.add(0, 1000_000)
        clock.now += 0.5
    assert (meter.rate, meter.rate_text(), meter.eta_text()) == (None, "—", "—")
    meter.add(660_000, 1000_000)  # then 66 % at once
    # The average over the window (10 s), not 660 kB in the last half second.
    assert meter.rate == pytest.approx(660_000 / 10)
    assert meter.eta_s == pytest.approx(340_000 / 66_000)
    for _ in range(30):  # stalled again for 15 s: nothing measured in the window
        clock.now += 0.5
        meter.add(660_000, 1000_000)
    assert meter.rate is None and meter.rate_text() == "—"
    clock.now += 1.0
    meter.add(100, 1000_000)  # counted again from less (a retry): no negative rate
    assert meter.rate is None


def test_wait_bar_shows_the_meters_rate_and_eta():
    import io

    from hera_stage_ext import cli

    clock = Clock()
    out = io.StringIO()
    bar = cli.job_bar({"id": 7, "bytes_total": 2**20}, file=out, disable=False, mininterval=0)
    bar.meter.clock = clock
    for _ in range(5):
        bar.show({"bytes_done": 0, "bytes_total": 2**20})
        clock.now += 1.0
    assert out.getvalue().rstrip().endswith("0 B/1.0 MiB [—, ETA —]")
    bar.show({"bytes_done": 2**19, "bytes_total": 2**20})
    bar.close()
    last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    # 512 KiB over the 5 s since the first sample: 102.4 KiB/s, 5 s to go.
    assert last.startswith("job 7:  50%") and last.endswith(
        "512.0 KiB/1.0 MiB [102.4 KiB/s, ETA 0:05]")
