"""The Python client: server discovery, typed results and their reprs, errors; and a round trip
through a real server (the in-process one of pytest-jupyter, on SQLite)."""

from __future__ import annotations

import asyncio

import pytest

from hera_stage_ext import client as client_module
from hera_stage_ext.client import (
    ApiError, Client, ClientError, FileInfo, Job, JobFailed, JobList, SearchPage, SearchResults,
    StagePlan, discover_server,
)

from .api_fixtures import *  # noqa: F403

FILE = {"name": "zen.2457644.10000.xx.HH.uvh5", "size": 20480, "obsid": 1157000000,
        "create_time": "2024-01-01T00:00:00Z", "checksums": {"md5": "ab" * 16},
        "instances": [
            {"store": "offsite", "store_kind": "offline", "available": True,
             "full_path": "/tape/zen.2457644.10000.xx.HH.uvh5"},
            {"store": "onsite", "store_kind": "online", "available": True,
             "full_path": "/data/2457644/zen.2457644.10000.xx.HH.uvh5"},
            {"store": "broken", "store_kind": "online", "available": False,
             "full_path": "/gone/zen"}]}
JOB = {"id": 7, "state": "running", "files_done": 1, "files_total": 4, "bytes_done": 1024,
       "bytes_total": 4096, "files_failed": 0, "files_skipped": 0, "method": "copy",
       "destination": "night1", "error": "", "missing": [], "rate_bytes_per_s": 2048.0,
       "eta_s": 1.5, "created_at": "2024-01-01T00:00:00Z"}


@pytest.fixture
def db_url(tmp_path) -> str:  # this module's round trip needs one database, not both
    return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"


@pytest.fixture
def staging_config(tmp_path) -> dict:
    return {"job_log_dir": str(tmp_path / "job-logs"), "worker_idle_exit_seconds": 5.0}


# ----- discovery ------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    for name in ("HERA_STAGE_URL", "HERA_STAGE_TOKEN", "JUPYTERHUB_API_TOKEN",
                 "JUPYTERHUB_SERVICE_URL", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    servers = [
        {"pid": 100, "url": "http://127.0.0.1:8001/", "token": "t1", "root_dir": "/"},
        {"pid": 200, "url": "http://127.0.0.1:8002/base/", "token": "t2", "root_dir": "/srv"},
    ]
    monkeypatch.setattr(client_module, "_running_servers", lambda: servers)
    return monkeypatch


def test_discovery_order(clean_env, tmp_path):
    mp = clean_env
    mp.chdir(tmp_path)
    # No hint: the server whose root holds the current directory (here only "/").
    assert discover_server() == client_module.ServerInfo("http://127.0.0.1:8001/", "t1", "cwd")
    # A kernel: its parent server, whatever the current directory.
    mp.setenv("JPY_PARENT_PID", "200")
    info = discover_server()
    assert (info.url, info.token, info.source) == ("http://127.0.0.1:8002/base/", "t2", "parent")
    assert discover_server(token="mine").token == "mine"  # an explicit token wins
    # JupyterHub's environment comes before the parent.
    mp.setenv("JUPYTERHUB_API_TOKEN", "hub")
    mp.setenv("JUPYTERHUB_SERVICE_URL", "http://0.0.0.0:9000/user/ann/")
    assert discover_server() == client_module.ServerInfo(
        "http://127.0.0.1:9000/user/ann/", "hub", "jupyterhub")
    # The environment variables, then explicit arguments, come first.
    mp.setenv("HERA_STAGE_URL", "http://h:1")
    mp.setenv("HERA_STAGE_TOKEN", "env")
    assert discover_server() == client_module.ServerInfo("http://h:1/", "env", "environment")
    assert discover_server("http://x:2/", "arg") == client_module.ServerInfo(
        "http://x:2/", "arg", "explicit")
    assert "arg" not in repr(discover_server("http://x:2/", "arg"))  # the token is not shown


def test_parent_under_jupyterhub_uses_the_hub_token(clean_env):
    clean_env.setattr(client_module, "_running_servers",
                      lambda: [{"pid": 5, "url": "http://127.0.0.1:8888/user/ann/", "token": ""}])
    clean_env.setenv("JPY_PARENT_PID", "5")
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "hub")
    assert discover_server().token == "hub"


def test_no_server_is_a_one_line_error(clean_env):
    clean_env.setattr(client_module, "_running_servers", lambda: [])
    with pytest.raises(ClientError, match="no running Jupyter server found") as info:
        Client()
    assert len(info.value._render_traceback_()) == 1


# ----- typed results --------------------------------------------------------------------------
def test_file_info():
    f = FileInfo(FILE)
    assert f["name"] == f.name and f.size == 20480
    assert f.stores == ["offsite", "onsite"]
    assert f.path == "/data/2457644/zen.2457644.10000.xx.HH.uvh5"  # online first
    assert repr(f) == ("FileInfo('zen.2457644.10000.xx.HH.uvh5', 20.0 KiB, obsid 1157000000, "
                       "on offsite,onsite)")
    html = f._repr_html_()
    assert "<table" in html and "/gone/zen (unavailable)" in html and "md5" in html
    with pytest.raises(AttributeError):
        f.nothing  # noqa: B018


def test_job():
    job = Job(JOB)
    assert job.id == job["id"] == 7 and not job.finished and job.percent == 25.0
    assert repr(job) == "<Job 7 running: 1/4 files, 1.0 KiB/4.0 KiB (25%), copy into night1>"
    assert "2.0 KiB/s" in job._repr_html_()
    done = Job({**JOB, "state": "failed", "files_failed": 1, "error": "1 file failed"})
    assert done.finished and not done.succeeded
    assert repr(done).endswith(", 1 failed: 1 file failed>")
    assert Job({**JOB, "bytes_total": 0, "files_done": 2}).fraction == 0.5
    jobs = JobList([job, done])
    assert repr(jobs).count("\n") == 1 and jobs._repr_html_().count("<tr>") == 3
    import json

    assert json.loads(json.dumps(job)) == JOB  # still plain JSON for the CLI


def test_stage_plan_repr():
    plan = StagePlan({"files": 3, "bytes": 3072, "destination": "/r/n1", "method": "copy",
                      "free_bytes": 1 << 30, "fits": True, "missing": ["x"]})
    assert repr(plan) == ("<StagePlan 3 file(s), 3.0 KiB into /r/n1 by copy; 1.0 GiB free; "
                          "1 missing>")


def test_search_results_and_dataframe():
    page = SearchResults("files", [FILE, {**FILE, "name": "b", "obsid": None,
                                          "instances": []}], "cursor", 5, {"q": 1})
    assert SearchPage is SearchResults
    assert len(page) == 2 and isinstance(page[0], FileInfo) and page.names == [FILE["name"], "b"]
    assert repr(page).splitlines()[0] == "<SearchResults 2 of 5 files>"
    html = page._repr_html_()
    assert "<b>2 of 5 files</b>" in html and "(no instance)" in html
    other = SearchResults("sessions", [{"id": 1, "start_time_jd": 2.0}])
    assert "start_time_jd" in other._repr_html_() and type(other[0]).__name__ == "Record"
    pd = pytest.importorskip("pandas")
    df = page.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df["name"]) == [FILE["name"], "b"]
    assert list(df["stores"]) == ["offsite,onsite", ""]
    assert "instances" not in df.columns and df["size"].sum() == 2 * 20480


def test_errors_render_as_one_line():
    error = ApiError(404, "no job 9")
    assert str(error) == "no job 9 (HTTP 404)" and error.message == "no job 9"
    assert error._render_traceback_() == ["\x1b[0;31mApiError\x1b[0m: no job 9 (HTTP 404)"]
    failed = JobFailed(Job({**JOB, "state": "failed", "error": "2 file(s) failed"}),
                       [f"FAILED /x/{i}: exists" for i in range(12)])
    lines = failed._render_traceback_()
    assert lines[0].endswith("job 7 failed: 2 file(s) failed")
    assert len(lines) == 12 and "2 more" in lines[-1]


# ----- against a real server ------------------------------------------------------------------
async def test_round_trip(http_server_client, jp_base_url, jp_auth_header, ingested):
    url = http_server_client.get_url(jp_base_url)
    token = jp_auth_header["Authorization"].split()[1]

    def scenario() -> dict:
        c = Client(url, token)
        out: dict = {"copy": c.copy().server == c.server}
        out["page"] = c.search("zen.2457645.*", limit=4, count=True)
        out["all"] = c.search_all("zen.2457645.*")
        out["info"] = c.info("zen.2457645.10000.xx.HH.uvh5")
        out["plan"] = c.stage("n1", "zen.2457645.10000.*", dry_run=True)
        job = c.stage("n1", "zen.2457645.10000.*")
        out["job"] = job
        out["final"] = c.wait(job, timeout=60, check=True)
        out["jobs"] = c.jobs()
        out["log"] = c.log_text(job.id)
        with pytest.raises(ApiError, match="no job 999") as info:
            c.job(999)
        out["status"] = info.value.status
        with pytest.raises(ApiError, match="nothing to retry"):
            c.retry(job.id)
        with pytest.raises(ClientError, match="a job id is a number"):
            c.job("x")
        return out

    out = await asyncio.to_thread(scenario)
    assert out["copy"]
    assert isinstance(out["page"], SearchResults) and len(out["page"]) == 4
    assert out["page"].total == 9 and out["page"].next_cursor
    assert len(out["all"]) == 9 and out["all"].next_cursor is None
    assert isinstance(out["info"], FileInfo) and out["info"].path.endswith(
        "2457645/zen.2457645.10000.xx.HH.uvh5")
    assert isinstance(out["plan"], StagePlan) and out["plan"].files == 2
    assert isinstance(out["job"], Job) and out["job"].state == "queued"
    assert out["final"].succeeded and out["final"].percent == 100.0
    assert isinstance(out["jobs"], JobList) and [j.id for j in out["jobs"]] == [out["job"].id]
    assert "zen.2457645.10000" in out["log"]
    assert out["status"] == 404
