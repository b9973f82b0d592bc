"""The native REST API against a real Jupyter server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.catalogue.checksums import hash_path
from hera_stage_ext.demo import MIRIAD_NAME, DemoArchive

from .api_fixtures import *  # noqa: F403

NIGHT1_FILE = "zen.2457644.10000.xx.HH.uvh5"  # on both stores
NIGHT3_FILE = "zen.2457646.10745.xx.HH.uvh5"  # onsite only
DEMO_FILES = 30  # 3 nights x 9 files, the MIRIAD set, 2 notes
DEMO_INSTANCES = 48  # + 18 copies of the first two nights offsite


async def test_status_and_stores(api, ingested):
    code, status = await api("GET", "status")
    assert code == 200
    assert status["counts"]["files"] == DEMO_FILES
    assert status["counts"]["instances"] == DEMO_INSTANCES
    assert status["counts"]["observations"] == 3 * 6 + 1  # xx and yy share one
    assert status["counts"]["sessions"] == 3
    assert status["allow_ingest"] is True
    assert status["database"] in ("sqlite", "postgresql")
    code, stores = await api("GET", "stores")
    assert code == 200
    by_name = {s["name"]: s for s in stores["stores"]}
    assert by_name["onsite"]["instances"] == DEMO_FILES
    assert by_name["offsite"]["instances"] == 18
    assert by_name["offsite"]["kind"] == "online"


async def test_ingest_is_idempotent(api, ingested, archive: DemoArchive):
    assert ingested["onsite"]["registered"] == DEMO_FILES
    assert ingested["offsite"]["registered"] == 0  # same names, same content: new instances only
    assert ingested["offsite"]["instances_added"] == 18
    assert ingested["onsite"]["errors"] == ingested["offsite"]["errors"] == []
    code, again = await api("POST", "ingest", {"store": "onsite", "globs": ["*/*"]})
    assert code == 200
    assert again["registered"] == again["instances_added"] == 0
    assert again["unchanged"] == DEMO_FILES
    code, detail = await api("GET", f"files/{NIGHT1_FILE}")
    assert [e["type"] for e in detail["events"]].count("instance-added") == 2


async def test_ingest_plan_and_paths(api, archive: DemoArchive):
    code, plan = await api("POST", "ingest", {"store": "onsite", "globs": ["2457644/*xx*"],
                                              "plan": True})
    assert code == 200
    assert len(plan["todo"]) == 6 and all(p.startswith("2457644/") for p in plan["todo"])
    code, report = await api("POST", "ingest", {"store": "onsite", "paths": plan["todo"][:2]})
    assert (code, report["registered"]) == (200, 2)
    code, plan2 = await api("POST", "ingest", {"store": "onsite", "globs": ["2457644/*xx*"],
                                               "plan": True})
    assert len(plan2["todo"]) == 4 and plan2["unchanged"] == 2


async def test_directory_is_one_file_with_librarian_md5(api, ingested, archive: DemoArchive):
    code, detail = await api("GET", f"files/{MIRIAD_NAME}")
    assert code == 200
    assert detail["is_directory"] is True
    on_disk = Path(archive.stores["onsite"]["path"]) / "2457646" / MIRIAD_NAME
    assert detail["checksums"] == hash_path(on_disk).checksums
    assert detail["size"] == sum(p.stat().st_size for p in on_disk.iterdir())
    code, found = await api("POST", "search", {"query": "header"})
    assert found["results"] == []  # members of the data set are not files of their own


async def test_conflicting_content_is_refused_and_changes_nothing(api, ingested, archive):
    offsite = Path(archive.stores["offsite"]["path"])
    (offsite / "extra").mkdir()
    (offsite / "extra" / NIGHT3_FILE).write_bytes(b"not the same bytes")
    _, before = await api("GET", f"files/{NIGHT3_FILE}")
    code, reply = await api("POST", "ingest", {"store": "offsite", "globs": ["extra/*"]})
    assert code == 409
    assert "already registered with other content" in reply["errors"][0]["message"]
    _, after = await api("GET", f"files/{NIGHT3_FILE}")
    assert after == before
    _, status = await api("GET", "status")
    assert status["counts"]["instances"] == DEMO_INSTANCES


async def test_file_detail(api, ingested):
    code, detail = await api("GET", f"files/{NIGHT1_FILE}")
    assert code == 200
    assert {i["store"] for i in detail["instances"]} == {"onsite", "offsite"}
    assert detail["instances"][0]["path"] == f"2457644/{NIGHT1_FILE}"
    assert set(detail["checksums"]) == {"md5", "xxh3-128"}
    assert detail["observation"]["session_id"] == 2457644
    assert detail["observation"]["obsid"] == detail["obsid"]
    assert detail["type"] == "uvh5"
    assert [e["type"] for e in detail["events"]][0] == "file-registered"
    code, notes = await api("GET", "files/observing-log.txt")
    assert notes["obsid"] is None and notes["observation"] is None


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("no-such-file.uvh5", 404, "no file named"),
        ("a..b", 400, "'..'"),
        ("a%00b", 400, "NUL"),
        ("a%2Fb", 400, "'/'"),
        ("x" * 300, 400, "at most 256"),
    ],
)
async def test_file_detail_bad_names(api, ingested, name, code, words):
    got, reply = await api("GET", f"files/{name}")
    assert got == code
    assert words in reply["message"]


async def test_download_whole_and_range(api, ingested, archive):
    data = (Path(archive.stores["onsite"]["path"]) / "2457644" / NIGHT1_FILE).read_bytes()
    code, body = await api("GET", f"files/{NIGHT1_FILE}/content")
    assert code == 200 and body == data
    code, body = await api("GET", f"files/{NIGHT1_FILE}/content",
                           headers={"Range": "bytes=100-199"})
    assert code == 206 and body == data[100:200]
    code, body = await api("GET", f"files/{NIGHT1_FILE}/content", headers={"Range": "bytes=-10"})
    assert code == 206 and body == data[-10:]
    code, _ = await api("GET", f"files/{NIGHT1_FILE}/content",
                        headers={"Range": f"bytes={len(data)}-"})
    assert code == 416
    code, reply = await api("GET", f"files/{NIGHT1_FILE}/content",
                            headers={"Range": "lines=1-2"})
    assert code == 400 and "Range" in reply["message"]


async def test_download_directory_as_tar(api, ingested, archive):
    code, body = await api("GET", f"files/{MIRIAD_NAME}/content")
    assert code == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        on_disk = Path(archive.stores["onsite"]["path"]) / "2457646" / MIRIAD_NAME
        assert {f"{MIRIAD_NAME}/{p.name}" for p in on_disk.iterdir()} <= set(members)
        visdata = tar.extractfile(members[f"{MIRIAD_NAME}/visdata"])
        assert visdata is not None and visdata.read() == (on_disk / "visdata").read_bytes()


async def test_search_query_and_json_agree(api, ingested):
    code, by_text = await api("POST", "search", {"query": "zen.2457644.*", "count": True})
    assert code == 200
    assert by_text["total"] == 9
    assert all(r["name"].startswith("zen.2457644.") for r in by_text["results"])
    code, by_json = await api("POST", "search", {
        "search": {"name-matches": "zen.2457644.%"}, "count": True})
    assert [r["name"] for r in by_json["results"]] == [r["name"] for r in by_text["results"]]
    assert by_text["search"] == {"name-matches": "zen.2457644.%"}
    # JSON given as text, as the Librarian's clients send it, works too.
    code, as_text = await api("POST", "search", {"search": '{"name-matches": "zen.2457644.%"}'})
    assert len(as_text["results"]) == 9
    first = by_text["results"][0]
    assert {i["store"] for i in first["instances"]} == {"onsite", "offsite"}


async def test_search_pagination_walks_every_row_once(api, ingested):
    seen: list[str] = []
    cursor = None
    while True:
        body: dict[str, Any] = {"search": {"always-true": None}, "limit": 7}
        if cursor:
            body["cursor"] = cursor
        code, page = await api("POST", "search", body)
        assert code == 200
        seen += [r["name"] for r in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == DEMO_FILES == len(set(seen))
    assert seen == sorted(seen, key=lambda n: n.encode())


async def test_search_other_kinds(api, ingested):
    code, obs = await api("POST", "search", {"kind": "observations",
                                             "search": {"session-id-is-exactly": 2457645}})
    assert code == 200 and len(obs["results"]) == 6
    code, sessions = await api("POST", "search", {"kind": "sessions",
                                                  "search": {"num-files-greater-than": 9}})
    assert [s["id"] for s in sessions["results"]] == [2457646]  # 9 + the MIRIAD set
    code, inst = await api("POST", "search", {"kind": "instances", "search": {
        "and": [{"name-is-exactly": NIGHT1_FILE}, {"store-name-is-exactly": "offsite"}]}})
    assert [i["store"] for i in inst["results"]] == ["offsite"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"search": '{"name-matches": "zen.%",\n "size-greater-than": }'}, "line 2"),
        ({"search": {"name-smells-like": "zen"}}, "name-smells-like"),
        ({"search": {"size-greater-than": "big"}}, "size-greater-than"),
        ({"search": {"obsid-in-range": [1, 2, 3]}}, "obsid-in-range"),
        ({"search": json.loads('{"and":' * 40 + "{}" + "}" * 40)}, "deep"),
        ({"query": "obsid:abc..def"}, "obsid"),
        ({"search": {"always-true": 1}, "kind": "planets"}, "kind"),
        ({"search": {"always-true": 1}, "limit": 0}, "limit"),
        ({"search": {"always-true": 1}, "limit": "ten"}, "limit"),
        ({"search": {"always-true": 1}, "cursor": "garbage!"}, "cursor"),
        ({}, "exactly one of"),
        ({"search": {"always-true": 1}, "query": "x"}, "exactly one of"),
    ],
)
async def test_search_bad_input_is_a_clear_400(api, ingested, body, words):
    code, reply = await api("POST", "search", body)
    assert code == 400, reply
    assert words in reply["message"]


async def test_malformed_body(api):
    code, reply = await api("POST", "search", raw_body="{not json")
    assert code == 400 and "not valid JSON" in reply["message"]
    code, reply = await api("POST", "search", raw_body="[1, 2]")
    assert code == 400 and "JSON object" in reply["message"]
    code, reply = await api("POST", "search", raw_body="x" * (2 << 20))
    assert code == 413


async def test_ingest_bad_input(api, archive):
    for body, code, words in [
        ({"store": "nowhere", "globs": ["*"]}, 404, "no store named"),
        ({"globs": ["*"]}, 400, "store"),
        ({"store": "onsite", "globs": ["../../etc/*"]}, 400, ".."),
        ({"store": "onsite", "globs": ["/etc/*"]}, 400, "relative"),
        ({"store": "onsite", "globs": "*"}, 400, "list"),
        ({"store": "onsite", "globs": ["."]}, 400, "matches no file"),
        ({"store": "onsite", "globs": ["./"]}, 400, "matches no file"),
        ({"store": "onsite", "globs": [""]}, 400, "glob"),
        ({"store": "onsite", "globs": ["2457644/**a"]}, 400, "whole path component"),
        ({"store": "onsite", "paths": ["../../../etc/passwd"]}, 200, "outside"),
    ]:
        got, reply = await api("POST", "ingest", body)
        assert got == code, (body, reply)
        text = reply["errors"][0]["message"] if got == 200 else reply["message"]
        assert words in text, (body, reply)
    _, status = await api("GET", "status")
    assert status["counts"]["files"] == 0


async def test_ingest_does_not_follow_symlinks_out_of_the_store(api, archive, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "zen.2457700.10000.xx.HH.uvh5").write_bytes(b"secret")
    (Path(archive.stores["onsite"]["path"]) / "escape").symlink_to(outside)
    code, report = await api("POST", "ingest", {"store": "onsite", "globs": ["escape/*"]})
    assert code == 200
    assert report["errors"] and "outside" in report["errors"][0]["message"]
    _, status = await api("GET", "status")
    assert status["counts"]["files"] == 0
