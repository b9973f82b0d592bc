"""The Librarian v1 RPC (``librarian/api/<op>``), as the stock HERA client calls it."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.demo import LIBRARIAN_AUTHENTICATOR

from .api_fixtures import *  # noqa: F403

NIGHT1_FILE = "zen.2457644.10000.xx.HH.uvh5"


@pytest.fixture
def rpc(http_server_client, jp_base_url):
    """POST a form like hera_librarian's client: no Jupyter token, no cookie."""

    async def call(op: str, request: dict[str, Any] | str | None) -> tuple[int, dict[str, Any]]:
        form = {}
        if request is not None:
            form["request"] = request if isinstance(request, str) else json.dumps(request)
        response = await http_server_client.fetch(
            f"{jp_base_url}hera-stage/librarian/api/{op}", method="POST",
            body=urllib.parse.urlencode(form), raise_error=False,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return response.code, json.loads(response.body)

    return call


def req(**fields: Any) -> dict[str, Any]:
    return {"authenticator": LIBRARIAN_AUTHENTICATOR, **fields}


async def test_ping(rpc, ingested):
    code, reply = await rpc("ping", req())
    assert code == 200 and reply["success"] is True


async def test_search_listings(rpc, ingested):
    search = json.dumps({"name-matches": "zen.2457644.1%.xx.HH.uvh5"})
    code, files = await rpc("search", req(search=search, output_format="file-listing-json"))
    assert code == 200 and files["success"]
    assert len(files["results"]) == 6
    row = files["results"][0]
    assert set(row) == {"name", "type", "create_time", "obsid", "size", "md5"}
    assert isinstance(row["create_time"], int) and len(row["md5"]) == 32

    code, inst = await rpc("search", req(search=search, output_format="instance-listing-json"))
    assert len(inst["results"]) == 12  # on both stores
    row = next(r for r in inst["results"] if r["name"] == NIGHT1_FILE and r["store_name"] == "onsite")
    assert row["parent_dirs"] == "2457644"
    assert row["full_path_on_store"].endswith(f"onsite/2457644/{NIGHT1_FILE}")
    assert set(row) == {"store_name", "store_ssh_host", "parent_dirs", "name", "deletion_policy",
                        "full_path_on_store"}

    obs_search = json.dumps({"session-id-is-exactly": 2457644})
    code, obs = await rpc("search", req(search=obs_search, output_format="obs-listing-json"))
    assert len(obs["results"]) == 6 and set(obs["results"][0]) == {
        "obsid", "start_time_jd", "stop_time_jd", "start_lst_hr", "session_id"}
    code, sessions = await rpc("search", req(search='{"always-true": 1}',
                                             output_format="session-listing-json"))
    assert sorted(s["id"] for s in sessions["results"]) == [2457644, 2457645, 2457646]


async def test_names_with_hash_are_not_comments(rpc, ingested):
    # v1 stripped '#' to the end of the line even inside strings, breaking this search.
    code, reply = await rpc("search", req(search='{"name-matches": "#%"}'))
    assert code == 200 and reply == {"success": True, "results": []}
    # Outside strings, v1's comments are accepted.
    code, reply = await rpc("search", req(search='# files of one night\n'
                                                 '{"name-matches": "zen.2457644.1%"  # xx too\n}'))
    assert code == 200 and len(reply["results"]) == 9


async def test_locate_file_instance(rpc, ingested, archive):
    code, reply = await rpc("locate_file_instance", req(file_name=NIGHT1_FILE))
    assert code == 200 and reply["success"]
    assert reply["store_name"] == "offsite"  # the first available store by name
    assert reply["store_path"] == f"2457644/{NIGHT1_FILE}"  # v1: the path within the store
    assert reply["full_path_on_store"].endswith(f"/offsite/2457644/{NIGHT1_FILE}")
    code, reply = await rpc("locate_file_instance", req(file_name="nope"))
    assert code == 404 and reply["success"] is False and "nope" in reply["message"]


@pytest.mark.parametrize(
    ("op", "request_", "code", "words"),
    [
        # 400, as v1: the Python 2 client crashes on a 401 before reading the message.
        ("ping", {"authenticator": "wrong"}, 400, "authentication failed: unknown authenticator"),
        ("ping", {}, 400, "no authenticator"),
        ("ping", None, 400, "'request' is missing"),
        ("ping", "{bad json", 400, "not valid JSON"),
        ("ping", "[]", 400, "JSON object"),
        ("frobnicate", req(), 404, "unknown operation"),
        ("search", req(search='{"size-bigger": 3}'), 400, "size-bigger"),
        ("search", req(search="{}", output_format="csv"), 400, "output_format"),
    ],
)
async def test_bad_requests(rpc, ingested, op, request_, code, words):
    got, reply = await rpc(op, request_)
    assert got == code
    assert reply["success"] is False and words in reply["message"]


@pytest.fixture
def staging_config(tmp_path) -> dict[str, Any]:
    return {"owner": "hera", "job_log_dir": str(tmp_path / "logs"),
            "worker_idle_exit_seconds": 5.0}


async def test_stage_the_files_as_the_stock_script_does(rpc, ingested, jp_root_dir):
    search = json.dumps({"name-matches": "zen.2457645.1%.xx.HH.uvh5"})
    code, reply = await rpc("search", req(search=search, output_format="stage-the-files-json",
                                          stage_user="hera", stage_dest="from-librarian"))
    assert code == 200 and reply["success"], reply
    dest = Path(reply["destination"])
    assert dest == Path(jp_root_dir).resolve() / "from-librarian"
    assert reply["n_instances"] == 6 and reply["n_bytes"] > 0
    # librarian_stage_files.py --wait: poll until the in-progress marker goes away.
    deadline = time.monotonic() + 60
    while (dest / "STAGING-IN-PROGRESS").exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert (dest / "STAGING-SUCCEEDED").exists() and not (dest / "STAGING-ERRORS").exists()
    assert len(list((dest / "2457645").iterdir())) == 6


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"stage_user": "mallory", "stage_dest": "x"}, 403, "stages for 'hera' only"),
        ({"stage_user": "hera", "stage_dest": "../../tmp"}, 403, "outside the allowed roots"),
        ({"stage_dest": "x"}, 400, "stage_user"),
    ],
)
async def test_stage_refusals(rpc, ingested, jp_root_dir, fields, code, words):
    got, reply = await rpc("search", req(search='{"always-true": 1}',
                                         output_format="stage-the-files-json", **fields))
    assert got == code and reply["success"] is False and words in reply["message"]
    assert not (Path(jp_root_dir) / "x").exists()
