"""The stock ``hera-librarian`` 0.1.6 client from PyPI, unchanged, under the Python 2.7 it was
written for, against a real server: every script of it that makes an RPC call.

The client is installed into a throwaway prefix for the test session (``pip install --prefix``
with the 2.7 interpreter's own pip, from the package registry). Skipped, with the reason, where
no pyenv 2.7 exists or the install fails. ``upload_to_librarian.py`` copies with rsync over ssh,
which this machine has no server for: its two RPC calls are made through the same client object
(``LibrarianClient._do_http_post``) with the local copy in between, which is what rsync does.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hera_stage_ext.demo import LIBRARIAN_AUTHENTICATOR

from .api_fixtures import *  # noqa: F403

NAME = "zen.2457644.10000.xx.HH.uvh5"
CLIENT = "hera-librarian==0.1.6"


def _python27() -> str | None:
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = os.path.expanduser("~/.pyenv")
    path = os.path.join(root, "versions", "2.7.18", "bin", "python")
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(scope="session")
def py2_client(tmp_path_factory) -> tuple[str, Path]:
    """(python2.7, the prefix holding the stock client and its scripts)."""
    python = _python27()
    if python is None:
        pytest.skip("no Python 2.7 (pyenv versions/2.7.18) on this machine")
    prefix = tmp_path_factory.mktemp("hera-librarian-0.1.6")
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--no-warn-script-location", "--prefix", str(prefix), CLIENT],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"could not install {CLIENT} under Python 2.7: {done.stderr[-500:]}")
    return python, prefix


@pytest.fixture
def staging_config(tmp_path, archive) -> dict[str, Any]:
    spare = tmp_path / "spare"
    spare.mkdir()
    return {"owner": getpass.getuser(),  # librarian_stage_files.py stages as the caller
            "job_log_dir": str(tmp_path / "logs"), "worker_idle_exit_seconds": 5.0,
            "stores": {**archive.stores, "spare": {"path": str(spare)}},
            "peers": {"far": {"url": "http://127.0.0.1:9/", "secret": "s" * 43}},
            "fixity_check_seconds": 3600.0}


@pytest.fixture
def v1(py2_client, tmp_path, http_server_client, jp_base_url):
    """Run one of the client's scripts (or ``-c CODE``) with ~/.hl_client.cfg naming this
    server as ``ours`` and, with a wrong authenticator, as ``wrong``."""
    python, prefix = py2_client
    home = tmp_path / "librarian-client-home"
    home.mkdir()
    url = http_server_client.get_url(f"{jp_base_url}hera-stage/librarian/")
    (home / ".hl_client.cfg").write_text(json.dumps({"connections": {
        "ours": {"url": url, "authenticator": LIBRARIAN_AUTHENTICATOR},
        "wrong": {"url": url, "authenticator": "not-it"},
    }}))
    site = next(prefix.glob("lib/python2.7/site-packages"))
    env = {"HOME": str(home), "PYTHONPATH": str(site), "PATH": os.environ.get("PATH", "")}

    async def run(script: str, *args: str) -> tuple[int, str, str]:
        argv = [python, "-c", args[0]] if script == "-c" else [
            python, str(prefix / "bin" / script), *args]
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode, out.decode(), err.decode()

    return run


async def detail(api, name: str) -> dict[str, Any]:
    code, value = await api("GET", f"files/{name}")
    assert code == 200, value
    return value


async def test_every_rpc_script_of_the_stock_client(v1, api, ingested, archive, jp_root_dir):
    # Locate, and a wrong authenticator printing the server's message (no traceback).
    code, out, err = await v1("librarian_locate_file.py", "ours", NAME)
    assert code == 0, err
    assert out.strip() == ":" + str(Path(archive.stores["offsite"]["path"]) / "2457644" / NAME)
    code, out, err = await v1("librarian_locate_file.py", "wrong", NAME)
    assert code == 1 and "Traceback" not in err
    assert "authentication failed: unknown authenticator" in err and err.startswith("error:")

    # Staging with --wait.
    dest = Path(jp_root_dir) / "v1-staged"
    code, out, err = await v1("librarian_stage_files.py", "--wait", "ours", str(dest),
                              '{"name-matches": "zen.2457645.1%"}  # a v1 comment')
    assert code == 0, err
    assert "Staging completed successfully" in out
    assert len(list((dest / "2457645").iterdir())) == 9  # 6 xx, 3 yy

    # Events, sessions, the RTP's question.
    code, out, err = await v1("add_librarian_file_event.py", "ours", NAME, "rtp_seen",
                              "n=1", 'who="rtp"')
    assert code == 0, err
    event = (await detail(api, NAME))["events"][-1]
    assert event == {**event, "type": "rtp_seen", "payload": {"n": 1, "who": "rtp"}}
    code, out, err = await v1("librarian_assign_sessions.py", "ours")
    assert code == 0 and out.strip() == "No new sessions created.", err
    code, out, err = await v1("-c", (
        "import hera_librarian, json; c = hera_librarian.LibrarianClient('ours');"
        "print(json.dumps(c.describe_session_without_event('ingest', 'rtp_seen')))"))
    assert code == 0, err
    reply = json.loads(out)
    assert reply["any_matching"] is True and reply["session_id"] == 2457644
    assert {r["store_path"] for r in reply["info"]} >= {f"2457644/zen.2457644.10745.xx.HH.uvh5"}
    assert all(r["pol"] in ("xx", "yy") and r["length"] > 0 for r in reply["info"])

    # add_obs_librarian.py: a file that appeared on a store.
    onsite = Path(archive.stores["onsite"]["path"])
    new = onsite / "2457646" / "zen.2457646.99999.xx.HH.uvh5"
    new.write_bytes(os.urandom(4096))
    code, out, err = await v1("add_obs_librarian.py", "ours", "onsite", str(new))
    assert code == 0, err
    assert [i["store"] for i in (await detail(api, new.name))["instances"]] == ["onsite"]

    # Deletion policy and deletion (no-op, then for real once the rule allows it).
    code, out, err = await v1("librarian_set_file_deletion_policy.py", "--store", "onsite",
                              "ours", NAME, "allowed")
    assert code == 0, err
    search = '{"name-is-exactly": "%s"}' % NAME
    code, out, err = await v1("librarian_delete_files.py", "-n", "--store", "onsite", "ours",
                              search)
    assert code == 0, err  # kept: the copy offsite is not verified yet
    assert "1 files were matched, 1 had instances; 0 instances would have been deleted" in out
    code, _ = (await api("POST", f"files/{NAME}/fixity", {}))
    code, out, err = await v1("librarian_delete_files.py", "--store", "onsite", "ours", search)
    assert code == 0, err
    assert f"{NAME}: deleted=1 kept=1 error=0" in out
    assert not (onsite / "2457644" / NAME).exists()

    # A copy to a peer: a transfer job.
    code, out, err = await v1("launch_librarian_copy.py", "ours", "far", NAME)
    assert code == 0, err
    _, jobs = await api("GET", "jobs")
    transfer = next(j for j in jobs["jobs"] if j["kind"] == "transfer")
    await api("POST", f"jobs/{transfer['id']}/cancel", {})
    code, out, err = await v1("launch_librarian_copy.py", "ours", "nowhere", NAME)
    assert code == 1 and "launch failed" in err and "nowhere" in err

    # Offload a store onto another.
    code, out, err = await v1("librarian_initiate_offload.py", "ours", "offsite", "spare")
    assert code == 0, err
    assert "Task launched, intending to offload 18 instances." in out
    deadline = time.monotonic() + 60
    while any(Path(archive.stores["offsite"]["path"]).rglob("*.uvh5")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    code, out, err = await v1("librarian_initiate_offload.py", "ours", "offsite", "spare")
    assert code == 0 and "placed offline" in out, err


async def test_upload_pair_through_the_stock_client(v1, api, ingested, archive, tmp_path):
    local = tmp_path / "zen.2457647.10000.xx.HH.uvh5"
    local.write_bytes(os.urandom(10000))
    code, out, err = await v1("-c", (
        "import hera_librarian, json, os, shutil, sys\n"
        "c = hera_librarian.LibrarianClient('ours')\n"
        "info = c._do_http_post('initiate_upload', upload_size=10000)\n"
        f"src = {str(local)!r}\n"
        "staged = os.path.join(info['path_prefix'], info['staging_dir'], os.path.basename(src))\n"
        "shutil.copy(src, staged)  # what rsync over ssh does\n"
        "c._do_http_post('complete_upload', store_name=info['name'],\n"
        "    staging_dir=info['staging_dir'], dest_store_path='2457647/' + os.path.basename(src),\n"
        "    meta_mode='infer', deletion_policy='allowed', staging_was_known=False)\n"
        "print(json.dumps(info))\n"))
    assert code == 0, err
    info = json.loads(out)
    got = await detail(api, local.name)
    [copy] = got["instances"]
    assert copy["store"] == info["name"] and copy["deletion_policy"] == "allowed"
    assert copy["fixity"] == "ok" and Path(copy["full_path"]).read_bytes() == local.read_bytes()
    assert not (Path(info["path_prefix"]) / info["staging_dir"]).exists()
