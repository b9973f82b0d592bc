"""Stewardship against a real server: fixity (a flipped byte is found, never staged, repaired),
deletion that cannot lose data, offload between stores, ``hera-stage fsck``, and the metrics on
Jupyter's ``/metrics``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hera_stage_ext.catalogue.models import File, utcnow
from hera_stage_ext.transfer.models import RemoteInstance

from .api_fixtures import *  # noqa: F403
from .test_cli import cli  # noqa: F401  (fixture)
from .test_stage_api import wait_for

NAME = "zen.2457644.10000.xx.HH.uvh5"  # on both stores
OTHER = "zen.2457645.10000.xx.HH.uvh5"  # on both stores


@pytest.fixture
def staging_config(tmp_path, archive) -> dict[str, Any]:
    spare = tmp_path / "spare"
    spare.mkdir()
    return {"job_log_dir": str(tmp_path / "job-logs"), "worker_idle_exit_seconds": 5.0,
            "stores": {**archive.stores, "spare": {"path": str(spare)}},
            # The audit runs when a test asks (POST fixity/audit), with budget to spare.
            "fixity_check_seconds": 3600.0, "fixity_bytes_per_hour": 1e13}


def store_path(archive, store: str, name: str) -> Path:
    night = name.split(".")[1]
    return Path(archive.stores[store]["path"]) / night / name


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def instance(api, name: str, store: str) -> dict[str, Any]:
    code, detail = await api("GET", f"files/{name}")
    assert code == 200
    return next(i for i in detail["instances"] if i["store"] == store)


async def events(api, name: str) -> list[str]:
    return [e["type"] for e in (await api("GET", f"files/{name}"))[1]["events"]]


async def test_flipped_byte_is_found_never_staged_and_repaired(api, ingested, archive,
                                                               jp_root_dir):
    bad = store_path(archive, "offsite", NAME)  # offsite sorts first: staging would pick it
    good_bytes = store_path(archive, "onsite", NAME).read_bytes()
    flip_byte(bad)
    code, report = await api("POST", "fixity/audit")
    assert code == 200, report
    assert {(r["store"], r["name"]): r["state"] for r in report["instances"]}[
        ("offsite", NAME)] == "bad"
    code, found = await api("GET", "fixity")
    assert [(r["store"], r["name"], r["state"]) for r in found["instances"]] == [
        ("offsite", NAME, "bad")]
    assert found["summary"]["bad"] == 1 and found["summary"]["ok"] > 30
    assert "expected" in found["instances"][0]["detail"]
    # Queryable: the one-line syntax and the JSON language, files and instances.
    _, hits = await api("POST", "search", {"query": "bad>0"})
    assert [r["name"] for r in hits["results"]] == [NAME]
    _, hits = await api("POST", "search", {"kind": "instances",
                                           "search": {"fixity-is-exactly": "bad"}})
    assert [(r["file"], r["store"]) for r in hits["results"]] == [(NAME, "offsite")]
    copy = await instance(api, NAME, "offsite")
    assert copy["fixity"] == "bad" and copy["available"] is False
    assert "fixity-bad" in await events(api, NAME)

    # Never staged: the job takes the good copy.
    code, job = await api("POST", "stage", {"names": [NAME], "destination": "fixity-out"})
    assert code == 202, job
    job = await wait_for(api, job["id"])
    assert job["state"] == "succeeded", job
    staged = Path(jp_root_dir) / "fixity-out" / "2457644" / NAME
    assert staged.read_bytes() == good_bytes

    # Repaired from the other store, re-verified, every step an event.
    code, result = await api("POST", f"files/{NAME}/repair", {})
    assert code == 200, result
    assert result["repaired"] == [{"store": "offsite", "path": f"2457644/{NAME}",
                                   "source": "onsite"}] and result["failed"] == []
    assert bad.read_bytes() == good_bytes
    copy = await instance(api, NAME, "offsite")
    assert copy["fixity"] == "ok" and copy["available"] is True
    kinds = await events(api, NAME)
    tail = kinds[kinds.index("repair-started"):]
    assert tail == ["repair-started", "repair-copied", "fixity-restored", "repair-verified"]
    code, again = await api("POST", f"files/{NAME}/repair", {})
    assert code == 409 and "no bad or missing copy" in again["message"]


async def test_missing_copy_without_a_good_one_fails_to_repair(api, ingested, archive):
    only = "zen.2457646.10000.xx.HH.uvh5"  # on onsite alone
    store_path(archive, "onsite", only).unlink()
    code, result = await api("POST", f"files/{only}/fixity", {})
    assert code == 200 and [r["state"] for r in result["instances"]] == ["missing"]
    code, result = await api("POST", f"files/{only}/repair", {})
    assert code == 200 and result["repaired"] == []
    assert "no good copy" in result["failed"][0]["reason"]
    assert (await events(api, only))[-2:] == ["repair-started", "repair-failed"]


def _on(result: dict[str, Any], store: str) -> dict[str, Any]:
    return next(i for i in result["instances"] if i["store"] == store)


def _server_db(jp_serverapp):
    return jp_serverapp.web_app.settings["hera_stage"].catalogue.db


async def test_deletion_cannot_lose_data(api, ingested, archive, jp_serverapp):
    onsite, offsite = store_path(archive, "onsite", OTHER), store_path(archive, "offsite", OTHER)

    async def delete(store: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"names": [OTHER], "dry_run": dry_run}
        if store:
            body["store"] = store
        code, reply = await api("POST", "delete-instances", body)
        assert code == 200, reply
        return reply["files"][OTHER]

    result = await delete()
    assert result["n_deleted"] == 0 and result["n_kept"] == 2
    assert all("'disallowed'" in i["reason"] for i in result["instances"])
    code, _ = await api("POST", f"files/{OTHER}/deletion-policy",
                        {"policy": "allowed", "store": "onsite"})
    assert code == 200
    # The copy offsite was never verified: it does not count.
    result = await delete("onsite")
    assert result["n_deleted"] == 0 and onsite.exists()
    assert "only 0 other verified" in _on(result, "onsite")["reason"]
    # A peer's copy counts only when its confirmation is recent.
    db = _server_db(jp_serverapp)
    with db.write() as s:
        file_id = s.scalar(select(File.id).where(File.name == OTHER))
        s.add(RemoteInstance(file_id=file_id, site="far", time=utcnow() - dt.timedelta(days=9)))
    assert (await delete("onsite"))["n_deleted"] == 0
    with db.write() as s:
        s.scalar(select(RemoteInstance).where(RemoteInstance.site == "far")).time = utcnow()
    result = await delete("onsite", dry_run=True)
    assert result["n_deleted"] == 1 and _on(result, "onsite")["outcome"] == "would-delete"
    assert onsite.exists()
    with db.write() as s:
        s.delete(s.scalar(select(RemoteInstance).where(RemoteInstance.site == "far")))
    # Verified here: the copy onsite goes, with an event.
    code, checked = await api("POST", f"files/{OTHER}/fixity", {"store": "offsite"})
    assert [i["state"] for i in checked["instances"]] == ["ok"]
    result = await delete("onsite")
    assert result["n_deleted"] == 1 and not onsite.exists() and offsite.exists()
    assert "instance-deleted" in await events(api, OTHER)
    # The last copy is never deleted, whatever its policy.
    await api("POST", f"files/{OTHER}/deletion-policy", {"policy": "allowed", "all": True})
    result = await delete()
    assert result["n_deleted"] == 0 and offsite.exists()
    assert "only 0 other verified" in _on(result, "offsite")["reason"]


async def test_offload_moves_a_store_and_keeps_a_verified_copy_of_everything(
        api, ingested, archive):
    code, before = await api("POST", "search", {"kind": "instances",
                                                "search": {"store-name-is-exactly": "offsite"}})
    names = sorted(r["file"] for r in before["results"])
    assert len(names) == 18
    code, result = await api("POST", "offload", {"source": "offsite", "dest": "spare",
                                                 "wait": True})
    assert code == 200, result
    assert sorted(result["moved"]) == names and result["failed"] == [] and result["kept"] == []
    for name in names:
        code, detail = await api("GET", f"files/{name}")
        stores = {i["store"]: i for i in detail["instances"]}
        assert "offsite" not in stores and stores["spare"]["fixity"] == "ok"
        assert Path(stores["spare"]["full_path"]).read_bytes() == store_path(
            archive, "onsite", name).read_bytes()
    assert not any(p.is_file() for p in Path(archive.stores["offsite"]["path"]).rglob("*"))
    code, again = await api("POST", "offload", {"source": "offsite", "dest": "spare"})
    assert again == {"outcome": "store-shut-down"}


async def test_fsck_cli_and_metrics(api, ingested, archive, cli, http_server_client,  # noqa: F811
                                    jp_base_url, jp_auth_header):
    flip_byte(store_path(archive, "onsite", OTHER))
    code, out, err = await cli("fsck", "--check", OTHER)
    assert code == 1, err
    assert out.startswith(f"BAD\tonsite:2457645/{OTHER}\t{OTHER}")
    code, out, _ = await cli("fsck")
    assert code == 1 and "1 bad" in out.splitlines()[-1]
    code, out, _ = await cli("fsck", "--repair", OTHER)
    assert code == 0 and out.startswith("REPAIRED\tonsite:")
    code, out, _ = await cli("delete", OTHER, "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "0 copies would be deleted, 2 kept, 0 error(s)"
    code, reply = await api("GET", "fixity?state=nonsense")
    assert code == 400 and "unknown fixity state" in reply["message"]

    response = await http_server_client.fetch(f"{jp_base_url}metrics", headers=jp_auth_header)
    text = response.body.decode()
    site = json.loads((await http_server_client.fetch(
        f"{jp_base_url}hera-stage/api/status", headers=jp_auth_header)).body)["site_name"]
    assert f'hera_stage_instances_by_fixity{{site="{site}",state="ok"}}' in text
    assert f'hera_stage_jobs' in text and "hera_stage_fixity_audit_read_bytes_total" in text
