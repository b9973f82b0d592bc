"""The REST additions the JupyterLab panel uses: a data set's members (its page in the main
area) and the stage preview's ``already_there`` and allowed roots. SQLite only: nothing here
depends on the database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hera_stage_ext.demo import MIRIAD_NAME, DemoArchive

from .api_fixtures import *  # noqa: F403

FLAT_FILE = "zen.2457644.10000.xx.HH.uvh5"


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalogue.sqlite'}"


async def test_a_data_sets_members(api, ingested, archive: DemoArchive, tmp_path: Path) -> None:
    dataset = Path(archive.stores["onsite"]["path"]) / "2457646" / MIRIAD_NAME
    # A link inside the data set is listed as a link, never followed out of it.
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "private.txt").write_text("not the archive's")
    os.symlink(secret, dataset / "escape")
    code, reply = await api("GET", f"files/{MIRIAD_NAME}/members")
    assert code == 200, reply
    members = {m["path"]: m for m in reply["members"]}
    assert set(members) == {"flags", "header", "vartable", "visdata", "escape"}
    assert members["visdata"] == {"path": "visdata", "size": 48 * 1024, "type": "file"}
    assert members["escape"]["type"] == "link" and members["escape"]["size"] is None
    assert reply["truncated"] is False and reply["name"] == MIRIAD_NAME

    code, reply = await api("GET", f"files/{FLAT_FILE}/members")
    assert code == 400 and "not a data set folder" in reply["message"]
    code, reply = await api("GET", "files/no.such.file/members")
    assert code == 404


async def test_the_preview_counts_files_already_there_and_names_the_roots(
        api, ingested, archive: DemoArchive, jp_root_dir: Path) -> None:
    request = {"names": [FLAT_FILE, MIRIAD_NAME], "destination": "night", "dry_run": True}
    code, plan = await api("POST", "stage", request)
    assert code == 200 and plan["already_there"] == 0
    staged = Path(plan["destination"])
    assert staged == Path(os.path.realpath(jp_root_dir)) / "night"
    (staged / "2457644").mkdir(parents=True)
    source = Path(archive.stores["onsite"]["path"]) / "2457644" / FLAT_FILE
    (staged / "2457644" / FLAT_FILE).write_bytes(source.read_bytes())
    # An empty folder where the data set goes is in the way, not there: the job compares
    # the whole data set (its checksum), as it does for a file.
    (staged / "2457646" / MIRIAD_NAME).mkdir(parents=True)
    code, plan = await api("POST", "stage", request)
    assert plan["already_there"] == 1 and plan["conflicts"] == 1
    (staged / "2457646" / MIRIAD_NAME).rmdir()
    shutil.copytree(Path(archive.stores["onsite"]["path"]) / "2457646" / MIRIAD_NAME,
                    staged / "2457646" / MIRIAD_NAME)
    code, plan = await api("POST", "stage", request)
    assert plan["already_there"] == 2 and plan["conflicts"] == 0
    # Other bytes are not "there": the job would refuse to overwrite them, not skip them.
    (staged / "2457644" / FLAT_FILE).write_bytes(b"other")
    code, plan = await api("POST", "stage", request)
    assert plan["already_there"] == 1 and plan["conflicts"] == 1

    code, reply = await api("POST", "stage", {**request, "destination": "/tmp/elsewhere"})
    assert code == 403
    assert "outside the allowed roots" in reply["message"]
    assert os.path.realpath(jp_root_dir) in reply["message"]
