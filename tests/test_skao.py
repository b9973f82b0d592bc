"""The SKAO staging service's ``stage_data`` interface, mapped onto the staging engine."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from .api_fixtures import *  # noqa: F403
from .job_fixtures import give_stores_away
from .test_stage_api import wait_for

NAME = "zen.2457646.10000.xx.HH.uvh5"


@pytest.fixture
def staging_config(tmp_path) -> dict[str, Any]:
    return {"owner": "astro", "job_log_dir": str(tmp_path / "logs"),
            "worker_idle_exit_seconds": 5.0}


@pytest.fixture
def skao(http_server_client, jp_base_url, jp_auth_header):
    async def call(method: str, body: dict[str, Any], username: str = "astro"):
        query = urllib.parse.urlencode({"method": method, "username": username})
        response = await http_server_client.fetch(
            f"{jp_base_url}hera-stage/skao/stage_data?{query}", method="POST",
            body=json.dumps(body), headers=jp_auth_header, raise_error=False)
        return response.code, json.loads(response.body)

    return call


def source(archive) -> str:
    return str(Path(archive.stores["onsite"]["path"]) / "2457646" / NAME)


async def test_local_copy_and_symlink_copy(skao, api, ingested, archive, jp_root_dir):
    code, reply = await skao("local_copy", {"local_path_on_storage": source(archive),
                                            "relative_path": "skao/a"})
    assert code == 202, reply
    job = await wait_for(api, reply["job"]["id"])
    assert job["state"] == "succeeded"
    staged = Path(jp_root_dir) / "skao/a/2457646" / NAME
    assert staged.read_bytes() == Path(source(archive)).read_bytes()
    # symlink_copy is a hard link: refused while this account could write the store's file.
    code, reply = await skao("symlink_copy", {"local_path_on_storage": source(archive),
                                              "relative_path": "skao/b"})
    assert code == 400 and "'reflink' or 'copy'" in reply["message"], reply
    give_stores_away(archive.stores)
    code, reply = await skao("symlink_copy", {"local_path_on_storage": source(archive),
                                              "relative_path": "skao/b"})
    assert code == 202
    await wait_for(api, reply["job"]["id"])
    assert (Path(jp_root_dir) / "skao/b/2457646" / NAME).stat().st_nlink == 2


async def test_jupyter_copy_goes_through_the_contents_manager(skao, api, ingested, archive,
                                                              jp_root_dir, jp_serverapp):
    code, reply = await skao("jupyter_copy", {"local_path_on_storage": source(archive),
                                              "relative_path": "skao/c"})
    assert code == 202, reply
    assert reply["job"]["method"] == "contents"
    assert reply["job"]["options"]["contents"]["class"].endswith(
        type(jp_serverapp.contents_manager).__name__)
    job = await wait_for(api, reply["job"]["id"])
    assert job["state"] == "succeeded", job
    dest = Path(jp_root_dir) / "skao/c"
    assert (dest / "2457646" / NAME).read_bytes() == Path(source(archive)).read_bytes()
    assert (dest / "STAGING-SUCCEEDED").exists()


async def test_direct_download_gives_a_working_link(skao, ingested, archive, http_server_client,
                                                    jp_auth_header):
    code, reply = await skao("direct_download", {"local_path_on_storage": source(archive)})
    assert code == 200 and reply["download_url"].endswith(f"/files/{NAME}/content")
    response = await http_server_client.fetch(reply["download_url"], headers=jp_auth_header)
    assert response.body == Path(source(archive)).read_bytes()


@pytest.mark.parametrize(
    ("method", "body", "user", "code", "words"),
    [
        ("local_copy", {"local_path_on_storage": "/etc/passwd", "relative_path": "x"}, "astro",
         404, "not a file of any available store"),
        ("local_copy", {"relative_path": "x"}, "astro", 400, "local_path_on_storage"),
        ("local_copy", {"local_path_on_storage": "SOURCE", "relative_path": "../../x"}, "astro",
         403, "outside the allowed roots"),
        ("local_copy", {"local_path_on_storage": "SOURCE", "relative_path": "x"}, "eve", 403,
         "stages for 'astro' only"),
        ("jupyter_copy", {"local_path_on_storage": "SOURCE", "relative_path": "../../x"},
         "astro", 403, "outside the allowed roots"),
        ("jupyter_copy", {"local_path_on_storage": "/etc/passwd", "relative_path": "x"},
         "astro", 404, "not a file of any available store"),
        ("rsync", {"local_path_on_storage": "SOURCE", "relative_path": "x"}, "astro", 400,
         "not available here"),
    ],
)
async def test_refusals(skao, ingested, archive, jp_root_dir, method, body, user, code, words):
    body = {k: (source(archive) if v == "SOURCE" else v) for k, v in body.items()}
    got, reply = await skao(method, body, username=user)
    assert got == code, reply
    assert words in reply["message"]
    assert not (Path(jp_root_dir) / "x").exists()


async def test_uncatalogued_file_in_a_store(skao, ingested, archive):
    stray = Path(archive.stores["onsite"]["path"]) / "stray.dat"
    stray.write_bytes(b"not ingested")
    code, reply = await skao("local_copy", {"local_path_on_storage": str(stray),
                                            "relative_path": "x"})
    assert code == 404 and "not a file of any available store" in reply["message"]
