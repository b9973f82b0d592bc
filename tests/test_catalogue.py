"""The core catalogue without a server: checksums, names, registration rules, confinement."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from hera_stage_ext.catalogue.catalogue import Catalogue, FileSpec
from hera_stage_ext.catalogue.checksums import compare, hash_path, normalise
from hera_stage_ext.catalogue.naming import ObservationNamer, jd_to_gps, validate_name
from hera_stage_ext.errors import Conflict, Forbidden, InvalidRequest
from hera_stage_ext.paths import confine


def test_file_checksums(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    digest = hash_path(tmp_path / "f")
    assert digest.size == len(data)
    assert digest.checksums["md5"] == hashlib.md5(data).hexdigest()
    assert len(digest.checksums["xxh3-128"]) == 32


def test_directory_md5_matches_the_librarian_shell_recipe(tmp_path):
    d = tmp_path / "zen.2457644.1.xx.HH.uv"
    (d / "sub").mkdir(parents=True)
    for name, content in [("header", b"h"), ("visdata", os.urandom(5000)), ("B", b"upper"),
                          ("sub/flags", b"f" * 10), ("a b", b"space")]:
        (d / name).write_bytes(content)
    shell = subprocess.run(
        "find . ! -type d -exec md5sum {} \\; | LC_ALL=C sort -k 2 | md5sum", shell=True,
        cwd=d, capture_output=True, text=True, check=True,
    ).stdout.split()[0]
    digest = hash_path(d)
    assert digest.is_directory and digest.checksums["md5"] == shell
    assert digest.size == 1 + 5000 + 5 + 10 + 5


def test_checksum_rules():
    assert normalise({"md5": "md5:::" + "A" * 32}) == {"md5": "a" * 32}
    with pytest.raises(InvalidRequest, match="32 hex digits"):
        normalise({"md5": "abc"})
    with pytest.raises(InvalidRequest, match="unknown checksum algorithm"):
        normalise({"crc": "0"})
    with pytest.raises(InvalidRequest, match="different algorithms"):
        compare({"md5": "a" * 32}, {"xxh3-128": "b" * 32})
    assert compare({"md5": "a" * 32, "xxh3-128": "c" * 32}, {"md5": "a" * 32})


def test_normalised_checksums_are_checked_once_and_never_changed():
    """Checksums ``normalise`` made (a peer's offer, checked before its registration) pass it
    again as they are; nothing may change them after the check (it would skip the next one),
    and a copy of them is a plain mapping, checked again wherever it goes."""
    checked = normalise({"md5": "A" * 32})
    assert normalise(checked) is checked and checked == {"md5": "a" * 32}
    for change in (lambda: checked.__setitem__("md5", "zz"), lambda: checked.update(md5="zz"),
                   lambda: checked.setdefault("crc", "0"), lambda: checked.pop("md5"),
                   checked.clear, checked.popitem, lambda: checked.__delitem__("md5")):
        with pytest.raises(TypeError, match="not to be changed"):
            change()
    assert checked == {"md5": "a" * 32}
    copied = copy.deepcopy(checked)
    assert type(copied) is dict and copied == checked
    copied["md5"] = "zz"
    with pytest.raises(InvalidRequest, match="32 hex digits"):
        normalise(copied)


@pytest.mark.parametrize(
    ("name", "words"),
    [("", "empty"), (".", "empty"), ("a/b", "'/'"), ("a\x00b", "NUL"), ("..", "'..'"),
     ("x..y", "'..'"), ("x" * 257, "256"), ("tab\there", "control"), (3, "string")],
)
def test_bad_names(name, words):
    with pytest.raises(InvalidRequest, match=words):
        validate_name(name)


def test_hera_names_give_their_observation():
    namer = ObservationNamer()
    obs = namer.observation_of("zen.2457644.12345.xx.HH.uvc")
    assert obs is not None
    assert obs.obsid == jd_to_gps(2457644.12345) == 1157727483
    assert obs.session_id == 2457644
    assert 0 <= obs.start_lst_hr < 24 and obs.stop_time_jd > obs.start_time_jd
    assert namer.observation_of("cal.phases.hdf") is None
    custom = ObservationNamer(r"^obs(?P<obsid>\d+)_")
    assert custom.observation_of("obs1157727483_x.fits").obsid == 1157727483


def spec(name: str, size: int = 10, md5: str = "a" * 32) -> FileSpec:
    return FileSpec(name=name, size=size, checksums={"md5": md5})


def test_registration_is_immutable(database, tmp_path):
    catalogue = Catalogue(database)
    catalogue.sync_stores({"s": {"path": str(tmp_path)}})
    first = catalogue.register([spec("zen.2457644.10000.xx.HH.uvh5")], "s", ["d/f"])
    assert first[0].created and first[0].instance_added
    again = catalogue.register([spec("zen.2457644.10000.xx.HH.uvh5")], "s", ["d/f"])
    assert not again[0].created and not again[0].instance_added
    before = catalogue.file_detail("zen.2457644.10000.xx.HH.uvh5")
    for bad in (spec("zen.2457644.10000.xx.HH.uvh5", size=11),
                spec("zen.2457644.10000.xx.HH.uvh5", md5="b" * 32)):
        with pytest.raises(Conflict, match="other content"):
            # The whole batch is refused: the good new file beside it is not registered.
            catalogue.register([spec("new-file"), bad])
    with pytest.raises(Conflict, match="another file"):
        catalogue.register([spec("other")], "s", ["d/f"])
    assert catalogue.file_detail("zen.2457644.10000.xx.HH.uvh5") == before
    assert catalogue.counts()["files"] == 1


def test_confine(tmp_path):
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link-out").symlink_to(tmp_path / "outside")
    (root / "link-in").symlink_to(root / "inside")
    assert confine("inside/x", [root]) == (root / "inside" / "x").resolve()
    assert confine("link-in", [root]) == (root / "inside").resolve()
    for bad in ("../outside", "/etc", "link-out/x", "inside/../../outside", "link-out"):
        with pytest.raises(Forbidden, match="outside the allowed roots"):
            confine(bad, [root])
    with pytest.raises(InvalidRequest, match="NUL"):
        confine("a\x00b", [root])
    # A prefix that is not a parent is outside: /x/root-evil is not in /x/root.
    (tmp_path / "root-evil").mkdir()
    with pytest.raises(Forbidden):
        confine(str(tmp_path / "root-evil"), [root])
