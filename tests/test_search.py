"""The search language: every clause on a hand-made catalogue, bad input, keyset pagination, and
property tests against a plain-Python oracle (``search_oracle.py``), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hera_stage_ext.catalogue import search_clauses, search_compile
from hera_stage_ext.catalogue.db import Database
from hera_stage_ext.catalogue.models import File, Instance
from hera_stage_ext.catalogue.naming import datetime_to_jd
from hera_stage_ext.catalogue.search import SearchPage, run_search, search_select
from hera_stage_ext.catalogue.search_clauses import clause_names
from hera_stage_ext.catalogue.search_compile import validate_search
from hera_stage_ext.catalogue.search_cursor import SORTS
from hera_stage_ext.catalogue.search_parse import (
    KINDS,
    MAX_CLAUSES,
    MAX_DEPTH,
    MAX_SEARCH_BYTES,
    MAX_STRING_LENGTH,
    parse_search,
)
from hera_stage_ext.errors import SearchError

from .conftest import BACKENDS
from .search_oracle import KEY, Catalogue, Oracle, load, random_catalogue

# The strategies' reprs are large (pools of values): hypothesis warns when it builds them.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

NOW = dt.datetime(2026, 1, 1)  # JD 2461041.5


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


# --------------------------------------------------------------------------------------------
# The hand-made catalogue

F1 = "zen.2457644.10000.xx.HH.uv"
F2 = "zen.2457644.10000.yy.HH.uvc"
F3 = "zen.2457644.30000.xx.HH.uv"
F4 = "Zen.2457645.10000.xx.HH.uv"
F5 = "maintenance#1.pgdump"
F6 = "zen_a%b.txt"
F7 = "back\\slash.uv"
ALL_FILES = {F1, F2, F3, F4, F5, F6, F7}


def _file(id_, name, size, obsid, days, source):
    return {
        "id": id_, "name": name, "type": name.rsplit(".", 1)[-1], "source": source,
        "size": size, "obsid": obsid, "create_time": ago(days),
    }


HAND = Catalogue(
    sessions=[
        {"id": 1, "start_time_jd": 2457644.0, "stop_time_jd": 2457644.5},
        {"id": 2, "start_time_jd": 2457645.0, "stop_time_jd": 2457645.25},
        {"id": 3, "start_time_jd": 2457646.0, "stop_time_jd": 2457646.75},
    ],
    observations=[
        {"obsid": 1000, "start_time_jd": 2457644.1, "stop_time_jd": 2457644.2,
         "start_lst_hr": 1.5, "session_id": 1},
        {"obsid": 2000, "start_time_jd": 2457644.3, "stop_time_jd": 2457644.5,
         "start_lst_hr": 3.0, "session_id": 1},
        {"obsid": 3000, "start_time_jd": 2457645.1, "stop_time_jd": 2457645.15,
         "start_lst_hr": 6.0, "session_id": 2},
        {"obsid": 4000, "start_time_jd": 2457647.0, "stop_time_jd": 2457647.5,
         "start_lst_hr": 9.0, "session_id": None},
    ],
    stores=[{"id": 1, "name": "pot1"}, {"id": 2, "name": "pot2"}, {"id": 3, "name": "tape"}],
    files=[
        _file(1, F1, 100, 1000, 1, "correlator"),
        _file(2, F2, 200, 1000, 2, "correlator"),
        _file(3, F3, 400, 2000, 10, "rtp"),
        _file(4, F4, 300, 3000, 20, "Correlator"),
        _file(5, F5, 50, None, 30, "admin"),
        _file(6, F6, 0, None, 3, "admin"),
        _file(7, F7, 1000, None, 5, "admin"),
    ],
    instances=[
        {"id": 1, "file_id": 1, "store_id": 1, "path": "a/1", "deletion_policy": "allowed",
         "fixity": "ok"},
        {"id": 2, "file_id": 1, "store_id": 2, "path": "a/1", "deletion_policy": "disallowed",
         "fixity": "bad"},
        {"id": 3, "file_id": 2, "store_id": 1, "path": "a/2", "deletion_policy": "disallowed"},
        {"id": 4, "file_id": 4, "store_id": 2, "path": "a/4", "deletion_policy": "allowed"},
        {"id": 5, "file_id": 5, "store_id": 1, "path": "a/5", "deletion_policy": "disallowed"},
        {"id": 6, "file_id": 7, "store_id": 1, "path": "a/7", "deletion_policy": "disallowed"},
        {"id": 7, "file_id": 7, "store_id": 2, "path": "a/7", "deletion_policy": "disallowed"},
        {"id": 8, "file_id": 7, "store_id": 3, "path": "a/7", "deletion_policy": "disallowed",
         "fixity": "missing"},
    ],
    events=[
        {"id": 1, "file_id": 1, "type": "create_instance"},
        {"id": 2, "file_id": 3, "type": "staged"},
        {"id": 3, "file_id": 4, "type": "create_instance"},
        {"id": 4, "file_id": 6, "type": "x"},
    ],
)


def _make_db(request: pytest.FixtureRequest, tmp_path_factory, cat: Catalogue
             ) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('search') / 'catalogue.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    db = Database(url)
    db.upgrade()
    with db.write() as session:
        load(session, cat)
    yield db
    db.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def hand_db(request, tmp_path_factory) -> Iterator[Database]:
    """The hand-made catalogue, once per backend (the tests only read it)."""
    yield from _make_db(request, tmp_path_factory, HAND)


def keys(db: Database, kind: str, search, **kwargs) -> set:
    with db.read() as session:
        page = run_search(session, kind, search, limit=10_000, now=NOW, **kwargs)
        assert page.next_cursor is None
        return {getattr(row, "name" if kind == "files" else KEY[kind]) for row in page.rows}


def _case(kind: str, search, expected):
    return pytest.param(kind, search, set(expected), id=f"{kind}:{json.dumps(search)}"[:90])


def files(search, *expected):
    return _case("files", search, expected)


def instances(search, *expected):
    return _case("instances", search, expected)


def observations(search, *expected):
    return _case("observations", search, expected)


def sessions(search, *expected):
    return _case("sessions", search, expected)


def but(*names):
    return ALL_FILES - set(names)


CASES = [
    # --- generic
    files({}, *ALL_FILES),
    files({"always-true": None}, *ALL_FILES),
    files({"always-true": [1, {"x": 2}]}, *ALL_FILES),
    files({"always-false": []}),
    files({"always-false": "anything", "always-true": 0}),
    files({"none-of": {"always-true": []}}),
    files({"and": {}}, *ALL_FILES),
    files({"and": []}, *ALL_FILES),
    files({"or": {}}),
    files({"or": []}),
    files({"none-of": {}}, *ALL_FILES),
    files({"none-of": []}, *ALL_FILES),
    files({"and": {"type-is-exactly": "uv", "size-greater-than": 300}}, F3, F7),
    # a list repeats a key, which one object cannot
    files({"and": [{"name-matches": "%.uv"}, {"name-matches": "zen%"}]}, F1, F3),
    files({"or": [{"name-matches": "%.uvc"}, {"name-matches": "%.pgdump"}]}, F2, F5),
    files({"or": {"size-greater-than": 500, "name-is-exactly": F1}}, F1, F7),
    files({"or": [{"type-is-exactly": "uv", "size-less-than": 200}, {"size-is-exactly": 0}]},
          F1, F6),
    # none-of is NOT (a OR b), with an object as with a list
    files({"none-of": {"type-is-exactly": "uv", "size-less-than": 100}}, F2),
    files({"none-of": [{"type-is-exactly": "uv"}, {"size-less-than": 100}]}, F2),
    files({"none-of": [{"type-is-exactly": "uv", "size-less-than": 200}]}, *but(F1)),
    files([{"type-is-exactly": "uv"}, {"size-greater-than": 300}], F3, F7),
    files([], *ALL_FILES),
    files({"or": [{"and": [{"none-of": {"obsid-is-null": 1}}, {"size-less-than": 150}]},
                  {"name-is-exactly": F6}]}, F1, F6),
    # --- string attributes: name, type, source
    files({"name-is-exactly": F1}, F1),
    files({"name-is-exactly": "zen.2457644.10000.XX.HH.uv"}),
    files({"name-is-exactly": F5}, F5),
    files({"name-is-not": F1}, *but(F1)),
    files({"name-matches": "zen.%"}, F1, F2, F3),
    files({"name-matches": "Zen.%"}, F4),
    files({"name-matches": "ZEN.%"}),
    files({"name-matches": "zen_%"}, F1, F2, F3, F6),
    files({"name-matches": "zen.2457644.1000_.__.HH.uv%"}, F1, F2),
    files({"name-matches": "zen.2457644.1000_.__.HH.uv_"}, F2),
    files({"name-matches": "%.uv"}, F1, F3, F4, F7),
    files({"name-matches": "%#%"}, F5),
    files({"name-matches": "maintenance#1%"}, F5),
    files({"name-matches": "back\\slash.uv"}, F7),
    files({"name-matches": "back\\s%"}, F7),
    files({"name-matches": "zen_a%b.txt"}, F6),
    files({"name-matches": "zen.2457644.10000.xx.HH.uv"}, F1),
    files({"name-matches": "%"}, *ALL_FILES),
    files({"name-matches": ""}),
    files({"name-like": "%.uvc"}, F2),
    files({"name-like": "zen.%.xx.%"}, F1, F3),
    files({"type-is-exactly": "uv"}, F1, F3, F4, F7),
    files({"type-is-not": "uv"}, F2, F5, F6),
    files({"type-matches": "uv_"}, F2),
    files({"type-matches": "UV"}),
    files({"source-is-exactly": "correlator"}, F1, F2),
    files({"source-is": "correlator"}, F1, F2),
    files({"source-is-not": "admin"}, F1, F2, F3, F4),
    files({"source-matches": "%orrelator"}, F1, F2, F4),
    files({"source-matches": "C%"}, F4),
    # --- integer attributes: size, obsid, num-instances
    files({"size-is-exactly": 300}, F4),
    files({"size-is-not": 300}, *but(F4)),
    files({"size-greater-than": 400}, F7),
    files({"size-less-than": 100}, F5, F6),
    files({"size-in-range": [100, 400]}, F1, F2, F3, F4),
    files({"size-in-range": [400, 100]}, F1, F2, F3, F4),
    files({"size-in-range": [300, 300]}, F4),
    files({"size-not-in-range": [100, 400]}, F5, F6, F7),
    files({"size-not-in-range": [400, 100]}, F5, F6, F7),
    files({"obsid-is-exactly": 1000}, F1, F2),
    files({"obsid-is-not": 1000}, F3, F4, F5, F6, F7),
    files({"obsid-greater-than": 1000}, F3, F4),
    files({"obsid-less-than": 3000}, F1, F2, F3),
    files({"obsid-in-range": [2000, 3000]}, F3, F4),
    files({"obsid-not-in-range": [2000, 3000]}, F1, F2, F5, F6, F7),
    files({"obsid-is-null": ""}, F5, F6, F7),
    files({"obsid-is-null": None}, F5, F6, F7),
    files({"obsid-is-null": False}, F5, F6, F7),
    files({"none-of": {"obsid-is-null": {}}}, F1, F2, F3, F4),
    files({"none-of": {"obsid-is-exactly": 1000}}, F3, F4, F5, F6, F7),
    files({"none-of": {"obsid-greater-than": 1000}}, F1, F2, F5, F6, F7),
    files({"none-of": {"obsid-is-not": 1000}}, F1, F2),
    files({"none-of": {"obsid-not-in-range": [2000, 3000]}}, F3, F4),
    files({"num-instances-is-exactly": 0}, F3, F6),
    files({"num-instances-is-not": 0}, F1, F2, F4, F5, F7),
    files({"num-instances-greater-than": 1}, F1, F7),
    files({"num-instances-less-than": 1}, F3, F6),
    files({"num-instances-in-range": [1, 2]}, F1, F2, F4, F5),
    files({"num-instances-not-in-range": [2, 1]}, F3, F6, F7),
    files({"num-bad-instances-greater-than": 0}, F1, F7),
    files({"num-bad-instances-is-exactly": 0}, F2, F3, F4, F5, F6),
    files({"num-bad-instances-is-not": 1}, F2, F3, F4, F5, F6),
    files({"num-bad-instances-less-than": 1}, F2, F3, F4, F5, F6),
    files({"num-bad-instances-in-range": [1, 1]}, F1, F7),
    files({"num-bad-instances-not-in-range": [0, 0]}, F1, F7),
    # --- through the observation (files without one never match a positive clause)
    files({"start-time-jd-greater-than": 2457644.1}, F3, F4),
    files({"start-time-jd-less-than": 2457645.1}, F1, F2, F3),
    files({"start-time-jd-less-than": 2457645}, F1, F2, F3),
    files({"start-time-jd-in-range": [2457644.1, 2457644.3]}, F1, F2, F3),
    files({"start-time-jd-in-range": [2457644.3, 2457644.1]}, F1, F2, F3),
    files({"start-time-jd-not-in-range": [2457644.1, 2457644.3]}, F4, F5, F6, F7),
    files({"stop-time-jd-greater-than": 2457644.2}, F3, F4),
    files({"stop-time-jd-less-than": 2457644.5}, F1, F2),
    files({"stop-time-jd-in-range": [2457644.5, 2457645.15]}, F3, F4),
    files({"stop-time-jd-not-in-range": [2457644.5, 2457645.15]}, F1, F2, F5, F6, F7),
    files({"start-lst-hr-greater-than": 3}, F4),
    files({"start-lst-hr-less-than": 3.0}, F1, F2),
    files({"start-lst-hr-in-range": [3, 6]}, F3, F4),
    files({"start-lst-hr-not-in-range": [3, 6]}, F1, F2, F5, F6, F7),
    files({"session-id-is-exactly": 1}, F1, F2, F3),
    files({"session-id-is-not": 1}, F4, F5, F6, F7),
    files({"session-id-greater-than": 1}, F4),
    files({"session-id-less-than": 2}, F1, F2, F3),
    files({"session-id-in-range": [5, 2]}, F4),
    files({"session-id-not-in-range": [2, 5]}, F1, F2, F3, F5, F6, F7),
    files({"obs-matches": {}}, F1, F2, F3, F4),
    files({"obs-matches": {"session-id-is-exactly": 2}}, F4),
    files({"obs-matches": {"num-files-greater-than": 1}}, F1, F2),
    files({"obs-matches": {"total-size-is-exactly": 400, "obsid-is-not": 1000}}, F3),
    files({"obs-matches": [{"obsid-in-range": [1000, 2000]}, {"num-files-is-exactly": 1}]}, F3),
    files({"obs-matches": {"or": [{"obsid-is-exactly": 1000}, {"obsid-is-exactly": 3000}]}},
          F1, F2, F4),
    files({"none-of": {"obs-matches": {"session-id-is-exactly": 1}}}, F4, F5, F6, F7),
    # --- times relative to now (strict, as in v1)
    files({"not-older-than": 2}, F1),
    files({"not-older-than": 2.5}, F1, F2),
    files({"not-older-than": 0.5}),
    files({"not-newer-than": 10}, F4, F5),
    files({"not-newer-than": 9.5}, F3, F4, F5),
    files({"not-newer-than": 3, "not-older-than": 20}, F3, F7),
    files({"not-newer-than": -1}, *ALL_FILES),
    files({"not-older-than": 1e12}, *ALL_FILES),
    # --- instances: every file clause applies to the instance's file
    instances({}, 1, 2, 3, 4, 5, 6, 7, 8),
    instances({"always-false": 1}),
    instances({"and": [{"store-name-matches": "pot%"}, {"store-name-is-not": "pot1"}]}, 2, 4, 7),
    instances({"store-name-is-exactly": "pot1"}, 1, 3, 5, 6),
    instances({"store-name-is-not": "pot1"}, 2, 4, 7, 8),
    instances({"store-name-matches": "pot_"}, 1, 2, 3, 4, 5, 6, 7),
    instances({"store-name-matches": "POT%"}),
    instances({"store-name-matches": "%e"}, 8),
    instances({"deletion-policy-is-exactly": "allowed"}, 1, 4),
    instances({"deletion-policy-is-not": "allowed"}, 2, 3, 5, 6, 7, 8),
    instances({"deletion-policy-matches": "dis%"}, 2, 3, 5, 6, 7, 8),
    instances({"name-matches": "zen.%"}, 1, 2, 3),
    instances({"name-is-exactly": F7, "store-name-is-not": "tape"}, 6, 7),
    instances({"num-instances-greater-than": 1}, 1, 2, 6, 7, 8),
    instances({"fixity-is-exactly": "bad"}, 2),
    instances({"fixity-is-not": "unchecked"}, 1, 2, 8),
    instances({"fixity-matches": "%ss%"}, 8),
    instances({"obsid-is-null": 1}, 5, 6, 7, 8),
    instances({"obsid-is-not": 1000}, 4, 5, 6, 7, 8),
    instances({"session-id-is-exactly": 1}, 1, 2, 3),
    instances({"start-lst-hr-in-range": [1, 6]}, 1, 2, 3, 4),
    instances({"obs-matches": {"obsid-is-exactly": 3000}}, 4),
    instances({"not-older-than": 1.5}, 1, 2),
    instances({"not-newer-than": 25}, 5),
    instances({"none-of": {"store-name-is-exactly": "pot2", "type-is-exactly": "uvc"}}, 1, 5, 6, 8),
    instances({"or": [{"store-name-is-exactly": "tape"}, {"source-is": "Correlator"}]}, 4, 8),
    # --- observations
    observations({}, 1000, 2000, 3000, 4000),
    observations({"always-true": 1}, 1000, 2000, 3000, 4000),
    observations({"always-false": 1}),
    observations({"and": [{"obsid-greater-than": 1000}, {"obsid-less-than": 4000}]}, 2000, 3000),
    observations({"or": {"obsid-is-exactly": 1000, "num-files-is-exactly": 0}}, 1000, 4000),
    observations({"obsid-is-exactly": 2000}, 2000),
    observations({"obsid-is-not": 2000}, 1000, 3000, 4000),
    observations({"obsid-greater-than": 2000}, 3000, 4000),
    observations({"obsid-less-than": 2000}, 1000),
    observations({"obsid-in-range": [3000, 1000]}, 1000, 2000, 3000),
    observations({"obsid-not-in-range": [1000, 3000]}, 4000),
    observations({"start-time-jd-greater-than": 2457644.3}, 3000, 4000),
    observations({"start-time-jd-less-than": 2457644.3}, 1000),
    observations({"start-time-jd-in-range": [2457644.3, 2457645.1]}, 2000, 3000),
    observations({"start-time-jd-not-in-range": [2457644.3, 2457645.1]}, 1000, 4000),
    observations({"stop-time-jd-less-than": 2457644.5}, 1000),
    observations({"stop-time-jd-greater-than": 2457644.5}, 3000, 4000),
    observations({"stop-time-jd-in-range": [2457644.2, 2457644.5]}, 1000, 2000),
    observations({"stop-time-jd-not-in-range": [2457644.2, 2457644.5]}, 3000, 4000),
    observations({"start-lst-hr-in-range": [1.5, 6]}, 1000, 2000, 3000),
    observations({"start-lst-hr-not-in-range": [1.5, 6]}, 4000),
    observations({"start-lst-hr-greater-than": 6}, 4000),
    observations({"start-lst-hr-less-than": 1.5}),
    observations({"session-id-is-exactly": 1}, 1000, 2000),
    observations({"session-id-is-not": 1}, 3000, 4000),
    observations({"session-id-greater-than": 0}, 1000, 2000, 3000),
    observations({"session-id-less-than": 2}, 1000, 2000),
    observations({"session-id-in-range": [1, 2]}, 1000, 2000, 3000),
    observations({"session-id-not-in-range": [1, 1]}, 3000, 4000),
    observations({"none-of": {"session-id-less-than": 2}}, 3000, 4000),
    observations({"duration-greater-than": 0.15}, 2000, 4000),
    observations({"duration-greater-than": 0.5}),
    observations({"duration-less-than": 0.075}, 3000),
    observations({"duration-in-range": [0.09, 0.21]}, 1000, 2000),
    observations({"duration-in-range": [0.5, 0.5]}, 4000),
    observations({"duration-not-in-range": [0.09, 0.21]}, 3000, 4000),
    observations({"num-files-is-exactly": 1}, 2000, 3000),
    observations({"num-files-is-not": 1}, 1000, 4000),
    observations({"num-files-greater-than": 1}, 1000),
    observations({"num-files-less-than": 1}, 4000),
    observations({"num-files-in-range": [0, 1]}, 2000, 3000, 4000),
    observations({"num-files-not-in-range": [0, 1]}, 1000),
    observations({"total-size-is-exactly": 0}, 4000),
    observations({"total-size-is-exactly": 300}, 1000, 3000),
    observations({"total-size-is-not": 300}, 2000, 4000),
    observations({"total-size-greater-than": 300}, 2000),
    observations({"total-size-less-than": 300}, 4000),
    observations({"total-size-in-range": [300, 400]}, 1000, 2000, 3000),
    observations({"total-size-not-in-range": [1, 1000]}, 4000),
    # --- sessions (ages: 3397.0, 3396.25, 3395.75 days at NOW)
    sessions({}, 1, 2, 3),
    sessions({"always-true": {}}, 1, 2, 3),
    sessions({"always-false": {}}),
    sessions({"and": {"num-obs-greater-than": 0, "duration-less-than": 0.5}}, 2),
    sessions({"or": [{"session-id-is-exactly": 1}, {"session-id-is-exactly": 3}]}, 1, 3),
    sessions({"session-id-is-exactly": 2}, 2),
    sessions({"session-id-is-not": 2}, 1, 3),
    sessions({"session-id-greater-than": 1}, 2, 3),
    sessions({"session-id-less-than": 3}, 1, 2),
    sessions({"session-id-in-range": [3, 1]}, 1, 2, 3),
    sessions({"session-id-not-in-range": [2, 3]}, 1),
    sessions({"start-time-jd-greater-than": 2457644.0}, 2, 3),
    sessions({"start-time-jd-less-than": 2457645.0}, 1),
    sessions({"start-time-jd-in-range": [2457644, 2457645]}, 1, 2),
    sessions({"start-time-jd-not-in-range": [2457644, 2457645]}, 3),
    sessions({"stop-time-jd-greater-than": 2457645.25}, 3),
    sessions({"stop-time-jd-less-than": 2457645.25}, 1),
    sessions({"stop-time-jd-in-range": [2457644.5, 2457645.25]}, 1, 2),
    sessions({"stop-time-jd-not-in-range": [2457644.5, 2457645.25]}, 3),
    sessions({"duration-greater-than": 0.5}, 3),
    sessions({"duration-less-than": 0.5}, 2),
    sessions({"duration-in-range": [0.25, 0.5]}, 1, 2),
    sessions({"duration-not-in-range": [0.25, 0.5]}, 3),
    sessions({"num-obs-is-exactly": 0}, 3),
    sessions({"num-obs-is-not": 0}, 1, 2),
    sessions({"num-obs-greater-than": 1}, 1),
    sessions({"num-obs-less-than": 2}, 2, 3),
    sessions({"num-obs-in-range": [1, 2]}, 1, 2),
    sessions({"num-obs-not-in-range": [1, 1]}, 1, 3),
    sessions({"num-files-is-exactly": 3}, 1),
    sessions({"num-files-is-not": 3}, 2, 3),
    sessions({"num-files-greater-than": 1}, 1),
    sessions({"num-files-less-than": 1}, 3),
    sessions({"num-files-in-range": [1, 3]}, 1, 2),
    sessions({"num-files-not-in-range": [1, 2]}, 1, 3),
    sessions({"age-less-than": 3396.25}, 3),
    sessions({"age-greater-than": 3396.25}, 1),
    sessions({"age-in-range": [3396, 3397]}, 1, 2),
    sessions({"age-not-in-range": [3396, 3397]}, 3),
    sessions({"no-file-has-event": "create_instance"}, 3),
    sessions({"no-file-has-event": "staged"}, 2, 3),
    sessions({"no-file-has-event": "x"}, 1, 2, 3),
    sessions({"none-of": {"no-file-has-event": "staged"}}, 1),
]


@pytest.mark.parametrize(("kind", "search", "expected"), CASES)
def test_clause(hand_db: Database, kind: str, search, expected: set) -> None:
    # The oracle of the property tests must agree with the hand-written expectation too.
    assert set(Oracle(HAND, NOW).select(kind, search)) == expected
    assert keys(hand_db, kind, search) == expected
    # As JSON text too, and its count.
    with hand_db.read() as session:
        page = run_search(session, kind, json.dumps(search), count=True, now=NOW)
        assert page.total == len(expected) == len(page.rows)


def test_every_clause_has_a_case() -> None:
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}

    def walk(kind, search):
        for obj in search if isinstance(search, list) else [search]:
            for name, payload in obj.items():
                used[kind].add(name)
                if name in ("and", "or", "none-of"):
                    walk(kind, payload)
                elif name == "obs-matches":
                    walk("observations", payload)

    for case in CASES:
        kind, search, _ = case.values
        walk(kind, search)
    for kind in KINDS:
        missing = set(clause_names(kind)) - used[kind]
        if kind == "instances":
            missing -= used["files"]
        assert not missing, f"clauses of {kind} without a test case: {sorted(missing)}"


def test_hash_in_a_name_is_not_a_comment(hand_db: Database) -> None:
    text_search = '{\n  "name-is-exactly": "maintenance#1.pgdump"\n}'
    assert keys(hand_db, "files", text_search) == {F5}
    assert keys(hand_db, "files", '{"name-matches": "%#%"}') == {F5}


def test_now_defaults_to_the_current_time(hand_db: Database) -> None:
    with hand_db.read() as session:
        # The hand catalogue is dated before 2026-01-01: nothing is newer than a day from now.
        assert run_search(session, "files", {"not-older-than": 1}).rows == []
        page = run_search(session, "sessions", {"age-greater-than": 3396})
        assert {s.id for s in page.rows} == {1, 2, 3}
    # A timezone-aware now is taken as the same instant.
    aware = dt.datetime(2026, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert keys_at(hand_db, aware, {"not-older-than": 2}) == {F1}


def keys_at(db, now, search):
    with db.read() as session:
        return {f.name for f in run_search(session, "files", search, now=now).rows}


def test_julian_date() -> None:
    assert datetime_to_jd(dt.datetime(1970, 1, 1)) == 2440587.5
    assert datetime_to_jd(NOW) == 2461041.5
    assert datetime_to_jd(dt.datetime(2000, 1, 1, 12)) == 2451545.0


def test_instances_come_with_file_and_store(hand_db: Database) -> None:
    with hand_db.read() as session:
        page = run_search(session, "instances", {"store-name-is-exactly": "tape"}, now=NOW)
        (instance,) = page.rows
        assert isinstance(instance, Instance)
        assert instance.file.name == F7 and instance.store.name == "tape"


def test_search_select_returns_every_match(hand_db: Database) -> None:
    with hand_db.read() as session:
        stmt = search_select(session, "files", {"type-is-exactly": "uv"}, now=NOW)
        assert {f.name for f in session.scalars(stmt)} == {F1, F3, F4, F7}


# --------------------------------------------------------------------------------------------
# Index use


def test_prefix_upper_bound() -> None:
    upper = search_clauses._prefix_upper
    assert upper("zen.2457644.") == "zen.2457644/"
    assert upper("a\U0010ffff") == "b"
    assert upper("\U0010ffff\U0010ffff") is None
    assert upper("x\ud7ff") == "x\ue000"  # surrogates are not characters: skip them
    assert search_clauses._literal_prefix("zen.%.uv") == "zen."
    assert search_clauses._literal_prefix("ab_c%") == "ab"
    assert search_clauses._literal_prefix("%ab") == ""


def test_prefix_range_with_odd_characters(hand_db_extra) -> None:
    db, names = hand_db_extra
    for prefix in ["a\U0010ffff", "a\ud7ff", "\u00e9", "a\x7f", "a~"]:
        expected = {n for n in names if n.startswith(prefix)}
        assert expected
        assert keys(db, "files", {"name-matches": prefix + "%"}) == expected


@pytest.fixture
def hand_db_extra(database: Database):
    names = [
        "a", "a\U0010ffff", "a\U0010ffffz", "b", "a\ud7ff", "a\ud7ffq", "a\ue000", "\u00e9t\u00e9",
        "\u00e9", "a\x7f", "a\x7fz", "a\x80", "a~", "a~~", "a\u007f",
    ]
    names = sorted(set(names))
    with database.write() as session:
        session.add_all(File(name=n, size=1) for n in names)
    return database, names


def test_name_matches_uses_the_name_index(hand_db: Database) -> None:
    search = {"name-matches": "zen.2457644.%.uv"}
    with hand_db.read() as session:
        stmt = search_select(session, "files", search).order_by(File.name).limit(100)
        sql = str(stmt.compile(dialect=session.get_bind().dialect))
        assert "file.name >=" in sql and "file.name <" in sql and "LIKE" in sql
        compiled = stmt.compile(dialect=session.get_bind().dialect)
        connection = session.connection()
        if hand_db.backend == "sqlite":
            params = tuple(compiled.params[p] for p in compiled.positiontup)
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.string}", params)
            detail = " ".join(row[-1] for row in plan)
            assert "INDEX" in detail and "name>? AND name<?" in detail, detail
        else:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = connection.exec_driver_sql(f"EXPLAIN {compiled.string}", compiled.params)
            detail = "\n".join(row[0] for row in plan)
            assert "Index Cond" in detail and "name)::text >=" in detail, detail
        assert {f.name for f in session.scalars(stmt)} == {F1, F3}


def test_observation_clauses_choose_a_plan(hand_db: Database, monkeypatch) -> None:
    probe = search_compile._observation_probe
    assert probe({"name-matches": "x%"}) == []
    assert probe({"session-id-is-not": 1, "or": [{"session-id-is-exactly": 1}]}) == []
    nested = [{"session-id-is-exactly": 1}, {"and": {"obs-matches": {"obsid-is-exactly": 2}}}]
    assert probe(nested) == [{"session-id-is-exactly": 1}, {"and": {"obsid-is-exactly": 2}}]
    search = {"start-lst-hr-in-range": [1, 6], "size-greater-than": 0}  # 3 observations
    with hand_db.read() as session:
        ctx = search_clauses.Ctx(now=NOW, postgresql=hand_db.backend == "postgresql")
        assert search_compile.choose_obs_mode(session, ctx, {"size-greater-than": 0}) is None
        assert search_compile.choose_obs_mode(session, ctx, search) == "drive"
        monkeypatch.setattr(search_compile, "DRIVE_MAX_OBSERVATIONS", 2)
        assert search_compile.choose_obs_mode(session, ctx, search) == "scan"
        assert {f.name for f in run_search(session, "files", search, now=NOW).rows} == {
            F1, F2, F3, F4
        }
        ctx.obs_mode = "scan"
        sql = str(search_select(session, "files", search).compile(
            dialect=session.get_bind().dialect))
        scan = str(search_compile.compile_search(ctx, "files", search, 1, "").compile(
            dialect=session.get_bind().dialect))
        ctx.obs_mode = "drive"
        drive = str(search_compile.compile_search(ctx, "files", search, 1, "").compile(
            dialect=session.get_bind().dialect))
        if hand_db.backend == "sqlite":
            assert "file.obsid + " in scan and "file.obsid + " not in drive
        else:
            assert "ANY (array((SELECT" in drive and "ANY" not in scan
        assert "ANY" not in sql and "file.obsid + " not in sql  # search_select: plain IN


def test_like_has_no_escape_character(hand_db: Database) -> None:
    # On PostgreSQL, LIKE's default escape is a backslash: "back\slash" would need "back\\slash".
    assert keys(hand_db, "files", {"name-matches": "back\\slash.uv"}) == {F7}
    assert keys(hand_db, "files", {"name-matches": "back\\\\slash.uv"}) == set()
    assert keys(hand_db, "files", {"name-matches": "zen\\_%"}) == set()


# --------------------------------------------------------------------------------------------
# Bad input


def raises(match: str):
    return pytest.raises(SearchError, match=match)


def nested(depth: int) -> dict:
    search: dict = {"size-greater-than": 1}
    for _ in range(depth - 1):
        search = {"and": search}
    return search


@pytest.mark.parametrize(
    ("search", "match"),
    [
        ('{"name-is-exactly": "x",\n  "size-greater-than": }',
         r"invalid JSON at line 2, column 24"),
        ('{"size-greater-than": 1} x', r"invalid JSON at line 1, column 26: Extra data"),
        ('{"name-matches": "a%"  # a v1 comment\n}', r"invalid JSON at line 1, column 24"),
        ("", r"invalid JSON at line 1, column 1"),
        ('{"size-greater-than": NaN}', r"NaN"),
        ('{"start-time-jd-greater-than": 1e400}', r"expects a finite number"),
        ('{"size-greater-than": 1e400}', r"expects an integer, got the number inf"),
        ('{"name-matches": "a%", "name-matches": "b%"}', r"'name-matches' appears twice.*list"),
        ("[1]", r"item 0 is the integer 1"),
        ('"name"', r"must be a JSON object.*the string"),
        ("5", r"must be a JSON object"),
        (5, r"must be JSON text"),
        (None, r"must be JSON text"),
        ({"name-maches": "a"}, r"unknown clause 'name-maches'.*did you mean 'name-matches'"),
        ({"or": [{"bogus": 1}]}, r"unknown clause 'bogus' \(at or/0/bogus\) in a search for files"),
        ({"size-greater-than": "12"},
         r"'size-greater-than' expects an integer, got the string \"12\""),
        ({"size-greater-than": True},
         r"'size-greater-than' expects an integer, got the boolean true"),
        ({"size-is-exactly": 1.5}, r"'size-is-exactly' expects an integer, got the number 1.5"),
        ({"size-is-exactly": 5.0}, r"'size-is-exactly' expects an integer, got the number 5.0"),
        ({"obsid-is-not": None}, r"'obsid-is-not' expects an integer, got null"),
        ({"size-is-exactly": 2**63}, r"outside the signed 64-bit range"),
        ({"size-in-range": 5}, r"'size-in-range' expects a list of two integers"),
        ({"size-in-range": [1, 2, 3]}, r"'size-in-range' expects a list of two integers .*3 items"),
        ({"size-in-range": [1]}, r"'size-in-range' expects a list of two integers"),
        ({"size-in-range": [1, "2"]}, r"'size-in-range' expects a list of two integers"),
        ({"size-not-in-range": [1, 2.5]}, r"'size-not-in-range' expects a list of two integers"),
        ({"start-time-jd-in-range": [1, True]}, r"expects a list of two numbers"),
        ({"start-time-jd-greater-than": "1"}, r"expects a number, got the string"),
        ({"start-time-jd-is-exactly": 1.0}, r"unknown clause 'start-time-jd-is-exactly'"),
        ({"not-older-than": "7"}, r"'not-older-than' expects a number"),
        ({"name-matches": 5}, r"'name-matches' expects a string, got the integer 5"),
        ({"name-is-exactly": ["a"]}, r"expects a string, got a list of 1 item"),
        ({"name-is-exactly": "a\x00b"}, r"NUL"),
        ({"name-is-exactly": "x" * 5000}, r"longer than"),
        ({"and": 5}, r"'and' expects an object of clauses or a list of objects"),
        ({"or": "x"}, r"'or' expects an object of clauses or a list of objects"),
        ({"none-of": [{"always-true": 1}, 2]}, r"'none-of' expects a list of objects.*item 1"),
        ({"obs-matches": 5}, r"'obs-matches' expects an observation search"),
        ({"obs-matches": {"name-matches": "x"}}, r"unknown clause 'name-matches'.*observations"),
        ({"no-file-has-event": "x"}, r"unknown clause 'no-file-has-event'.*files"),
        ({1: 2}, r"clause names must be strings"),
        (nested(MAX_DEPTH + 1), rf"nested deeper than {MAX_DEPTH} levels"),
        ({"or": [nested(MAX_DEPTH)]}, rf"nested deeper than {MAX_DEPTH} levels"),
        ({"obs-matches": nested(MAX_DEPTH)}, rf"nested deeper than {MAX_DEPTH} levels"),
        ("[" * 20000 + "]" * 20000, r"nested deeper|must be a JSON object|item 0"),
        ('{"and": ' * 5000 + "{}" + "}" * 5000, rf"nested deeper than {MAX_DEPTH} levels"),
        ({"or": [{"size-is-exactly": i} for i in range(128)]}, rf"more than {MAX_CLAUSES} clauses"),
        ({"and": [{}] * 300}, rf"more than {MAX_CLAUSES} clauses"),
        ('{"name-is-exactly": "' + "a" * MAX_SEARCH_BYTES + '"}', r"larger than 65536 bytes"),
        ('{"name-is-exactly": "' + "\u00e9" * 33000 + '"}', r"larger than 65536 bytes"),
    ],
    ids=lambda v: None if not isinstance(v, str) else v[:40],
)
def test_invalid_searches(search, match: str) -> None:
    with raises(match):
        validate_search("files", search)


def test_limits_are_inclusive() -> None:
    validate_search("files", nested(MAX_DEPTH))
    validate_search("files", {"or": [{"size-is-exactly": i} for i in range(127)]})  # 255 clauses
    validate_search("files", {"size-is-exactly": 2**63 - 1, "size-greater-than": -(2**63)})
    validate_search("files", '{"always-true": "' + "a" * (MAX_SEARCH_BYTES - 30) + '"}')
    validate_search("files", {"name-is-exactly": "a" * MAX_STRING_LENGTH})


def test_unknown_kind() -> None:
    with raises(r"unknown search kind 'file'; expected one of files, instances"):
        validate_search("file", {})


def test_parse_search() -> None:
    assert parse_search('{"a": 1}') == {"a": 1}
    assert parse_search(b'[{"a": 1}, {}]') == [{"a": 1}, {}]
    assert parse_search({"a": "#"}) == {"a": "#"}
    with raises(r"not valid UTF-8"):
        parse_search(b'{"a": "\xff"}')
    with raises(r"invalid JSON at line 3, column 1"):
        parse_search('{\n"a": 1,\n}')


@pytest.mark.parametrize("limit", [0, 10_001, -1, True, "5", 2.0])
def test_bad_limit(hand_db: Database, limit) -> None:
    with hand_db.read() as session, raises(r"limit must be an integer from 1 to 10000"):
        run_search(session, "files", {}, limit=limit)


def test_limit_bounds_accepted(hand_db: Database) -> None:
    with hand_db.read() as session:
        assert len(run_search(session, "files", {}, limit=1).rows) == 1
        assert len(run_search(session, "files", {}, limit=10_000).rows) == 7


@pytest.mark.parametrize(
    ("kind", "sort"), [("files", "bogus"), ("files", "-"), ("observations", "name"), ("files", 3)]
)
def test_bad_sort(hand_db: Database, kind, sort) -> None:
    with hand_db.read() as session, raises(r"unknown sort|sort must be a string"):
        run_search(session, kind, {}, sort=sort)


def _cursor(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_bad_cursors(hand_db: Database) -> None:
    with hand_db.read() as session:
        first = run_search(session, "files", {"type-is-exactly": "uv"}, limit=2, sort="size")
        cursor = first.next_cursor
        assert cursor
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        bad = [
            ("garbage!!", r"invalid cursor: not a cursor"),
            ("", r"invalid cursor: not a cursor"),
            (_cursor({"x": 1}), r"invalid cursor: not a cursor"),
            (_cursor([1, 2]), r"invalid cursor: not a cursor"),
            ("x" * 5000, r"invalid cursor"),
            (_cursor({**data, "k": ["a", "b"]}), r"invalid cursor: bad sort value"),
            (_cursor({**data, "k": [1]}), r"invalid cursor: wrong number"),
            (_cursor({**data, "k": [None, "x"]}), r"invalid cursor: missing sort value"),
            (_cursor({**data, "k": [True, "x"]}), r"invalid cursor: bad sort value"),
            (_cursor({**data, "k": [1, "\ud800"]}), r"invalid cursor: bad sort value"),
            (_cursor({**data, "k": [1, "a\x00"]}), r"invalid cursor: bad sort value"),
            (_cursor({**data, "k": [2**63, "x"]}), r"invalid cursor: bad sort value"),
        ]
        for cursor_text, match in bad:
            with raises(match):
                run_search(
                    session, "files", {"type-is-exactly": "uv"}, limit=2, sort="size",
                    cursor=cursor_text,
                )
        # A cursor of another search, sort or kind.
        with raises(r"invalid cursor: it belongs to another search"):
            run_search(session, "files", {"type-is-exactly": "uvc"}, sort="size", cursor=cursor)
        with raises(r"invalid cursor: it belongs to the sort 'size', not '-size'"):
            run_search(session, "files", {"type-is-exactly": "uv"}, sort="-size", cursor=cursor)
        with raises(r"invalid cursor: it belongs to another search"):
            run_search(session, "instances", {"type-is-exactly": "uv"}, sort="id", cursor=cursor)
        # The right one works, also with the search as text.
        page = run_search(
            session, "files", '{"type-is-exactly":"uv"}', limit=2, sort="size", cursor=cursor
        )
        assert [f.name for f in first.rows + page.rows] == [F1, F4, F3, F7]
        assert page.next_cursor is None


# --------------------------------------------------------------------------------------------
# Pagination


def _pagination_catalogue() -> Catalogue:
    cat = Catalogue(
        sessions=[
            {"id": i, "start_time_jd": 2457640.0 + i % 3, "stop_time_jd": 2457641.0 + i % 2}
            for i in range(1, 8)
        ],
        observations=[
            {"obsid": 1000 + k, "start_time_jd": 2457640.5 + (k % 4) * 0.25,
             "stop_time_jd": 2457641.0 + (k % 3) * 0.5, "start_lst_hr": float(k % 5),
             "session_id": None if k % 3 == 0 else 1 + k % 4}
            for k in range(12)
        ],
        stores=[{"id": 1, "name": "b-store"}, {"id": 2, "name": "a-store"}, {"id": 3, "name": "B"}],
    )
    names = [
        "zen.1.uv", "zen.2.uv", "Zen.3.uv", "a#b", "a_b", "a%b", "ZZZ", "zen.10.uvc", "zen.9.uvh5",
        "\u00e9t\u00e9.uv", "x", "y.uv", "zen.11.uv", "zen.12.uv", "zen.13.uvc", "b.UV", "b.uv",
        "c.tar", "zen.0.uv", "q.q", "r.r", "s.s", "t.t",
    ]
    for i, name in enumerate(names, start=1):
        cat.files.append(
            {"id": i, "name": name, "type": name.rsplit(".", 1)[-1], "source": "s",
             "size": [5, 1, 3, 5, 0][i % 5], "obsid": None if i % 4 == 0 else 1000 + i % 12,
             "create_time": ago([1, 2, 2, 3][i % 4])}
        )
    iid = 0
    for f in cat.files:
        for store in range(1, 1 + f["id"] % 4):
            iid += 1
            cat.instances.append(
                {"id": iid, "file_id": f["id"], "store_id": store, "path": f["name"],
                 "deletion_policy": "allowed", "create_time": ago(iid % 3)}
            )
    cat.index()
    return cat


PAGINATION = _pagination_catalogue()


def _expected_order(cat: Catalogue, kind: str, rows: list, sort: str) -> list:
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    unique = next(iter(SORTS[kind]))

    def value(row, key):
        if kind == "instances" and key == "name":
            return cat.file_by_id[row["file_id"]]["name"]
        if kind == "instances" and key == "store_name":
            return cat.store_by_id[row["store_id"]]["name"]
        return row[key]

    def sort_key(row):
        v = value(row, name)
        return (v is None, v if v is not None else 0, value(row, unique))

    ordered = sorted(rows, key=sort_key)
    return ordered[::-1] if descending else ordered


def _walk(session, kind, search, sort, limit, now=NOW) -> tuple[list, list[int]]:
    seen, totals, cursor = [], [], None
    for _ in range(1000):
        page = run_search(
            session, kind, search, limit=limit, cursor=cursor, sort=sort, count=True, now=now
        )
        assert isinstance(page, SearchPage)
        assert len(page.rows) <= limit
        assert (page.next_cursor is None) or len(page.rows) == limit
        seen.extend(page.rows)
        totals.append(page.total)
        cursor = page.next_cursor
        if cursor is None:
            return seen, totals
    raise AssertionError("pagination does not end")


@pytest.mark.parametrize("kind", KINDS)
def test_pagination_walks_every_row_once_in_order(database: Database, kind: str) -> None:
    with database.write() as session:
        load(session, PAGINATION)
    key = KEY[kind]
    rows = PAGINATION.rows(kind)
    with database.read() as session:
        for sort_name in SORTS[kind]:
            for sort in (sort_name, "-" + sort_name):
                expected = [r[key] for r in _expected_order(PAGINATION, kind, rows, sort)]
                for limit in (1, 3, 7, 100):
                    got, totals = _walk(session, kind, {}, sort, limit)
                    got_keys = [getattr(r, "name" if kind == "files" else key) for r in got]
                    assert got_keys == expected, (sort, limit)
                    assert set(totals) == {len(rows)}
        # A default sort, and a filtered walk.
        got, _ = _walk(session, kind, {}, None, 4)
        default = next(iter(SORTS[kind]))
        assert [getattr(r, "name" if kind == "files" else key) for r in got] == [
            r[key] for r in _expected_order(PAGINATION, kind, rows, default)
        ]
    if kind == "files":
        search = {"or": [{"name-matches": "zen.%"}, {"obsid-is-null": 1}]}
        oracle = Oracle(PAGINATION, NOW)
        matching = [f for f in PAGINATION.files if oracle.matches("files", search, f)]
        with database.read() as session:
            for sort in ("-obsid", "obsid", "create_time", "-type"):
                got, totals = _walk(session, "files", search, sort, 2)
                expected = [f["name"] for f in _expected_order(PAGINATION, "files", matching, sort)]
                assert [f.name for f in got] == expected
                assert set(totals) == {len(matching)}


def test_empty_result_page(hand_db: Database) -> None:
    with hand_db.read() as session:
        page = run_search(session, "files", {"always-false": 1}, count=True)
        assert page == SearchPage([], None, 0)
        page = run_search(session, "files", {}, limit=7)
        assert len(page.rows) == 7 and page.next_cursor is None and page.total is None


# --------------------------------------------------------------------------------------------
# Property tests: SQL == the Python oracle on random searches over a random catalogue

RANDOM_NOW = NOW
RANDOM = random_catalogue(seed=20240917, now=RANDOM_NOW)
ORACLE = Oracle(RANDOM, RANDOM_NOW)


@pytest.fixture(scope="module", params=BACKENDS)
def random_db(request, tmp_path_factory) -> Iterator[Database]:
    yield from _make_db(request, tmp_path_factory, RANDOM)


def _pool(values, *extra):
    values = sorted({v for v in [*values, *extra] if v is not None}, key=repr)
    return st.sampled_from(values)


def _int_pool(values):
    base = {v for v in values if v is not None}
    near = {x + d for x in base for d in (-1, 1)} - base
    return st.one_of(_pool(base), _pool(base), _pool(near, 0))


def _float_pool(values):
    base = sorted({float(v) for v in values if v is not None})
    mids = [(a + b) / 2 for a, b in itertools.pairwise(base)]
    return st.one_of(_pool(base), _pool(mids), st.sampled_from([int(base[0]), int(base[-1]) + 1]))


def _attribute_values() -> dict[str, dict[str, st.SearchStrategy]]:
    cat, oracle = RANDOM, ORACLE
    names = [f["name"] for f in cat.files]
    patterns = ["%", "zen.%", "Zen.%", "zen_%", "%.uv", "%.uv_", "%#%", "back\\s%", "%\\%",
                "zen.2457644.%.xx.HH.uv", "%\u00e9%", "caf_.uv", "", "a", "zen.", "ZEN%"]
    string_pools = {
        "name": (names + ["zen.2457644.1.XX.HH.uv"], patterns + names[:5]),
        "type": ([f["type"] for f in cat.files] + ["UV"], ["uv%", "uv_", "%v%", "U%"]),
        "source": ([f["source"] for f in cat.files], ["%orrelator", "C%", "%"]),
        "store-name": (["pot1", "pot2", "Cold", "cold"], ["pot_", "%o%", "C%"]),
        "deletion-policy": (["allowed", "disallowed"], ["dis%", "%allowed"]),
        "fixity": (["unchecked", "ok", "bad", "missing"], ["%s%", "o_"]),
    }
    text = st.text(alphabet="zZen.%_#\\uvcH\u00e9x24", max_size=7)
    values: dict[str, dict[str, st.SearchStrategy]] = {}
    for attr, (exact, like) in string_pools.items():
        patterns_ = _pool(like + exact)
        values[attr] = {"s": _pool(exact), "like": st.one_of(patterns_, patterns_, text)}

    def obs_values(attr):
        return [oracle._obs_value(o, attr) for o in cat.observations]

    def session_values(attr):
        return [oracle._session_value(s, attr) for s in cat.sessions]

    file_ints = {
        "size": [f["size"] for f in cat.files],
        "obsid": [o["obsid"] for o in cat.observations],
        "num-instances": [0, 1, 2, 3],
        "num-bad-instances": [0, 1, 2],
    }
    for attr, vals in file_ints.items():
        values[attr] = {"i": _int_pool(vals)}
    for attr in ("start-time-jd", "stop-time-jd", "start-lst-hr", "duration"):
        values["obs:" + attr] = {"f": _float_pool(obs_values(attr))}
    for attr in ("obsid", "session-id", "num-files", "total-size"):
        values["obs:" + attr] = {"i": _int_pool(obs_values(attr))}
    for attr in ("start-time-jd", "stop-time-jd", "duration", "age"):
        values["session:" + attr] = {"f": _float_pool(session_values(attr))}
    for attr in ("session-id", "num-obs", "num-files"):
        values["session:" + attr] = {"i": _int_pool(session_values(attr))}
    return values


VALUES = _attribute_values()

ATTRIBUTES = {
    "files": [("name", "s"), ("type", "s"), ("source", "s"), ("size", "i"), ("obsid", "i"),
              ("num-instances", "i"), ("num-bad-instances", "i"), ("obs:start-time-jd", "f"), ("obs:stop-time-jd", "f"),
              ("obs:start-lst-hr", "f"), ("obs:session-id", "i")],
    "observations": [("obs:obsid", "i"), ("obs:start-time-jd", "f"), ("obs:stop-time-jd", "f"),
                     ("obs:start-lst-hr", "f"), ("obs:session-id", "i"), ("obs:duration", "f"),
                     ("obs:num-files", "i"), ("obs:total-size", "i")],
    "sessions": [("session:session-id", "i"), ("session:start-time-jd", "f"),
                 ("session:stop-time-jd", "f"), ("session:duration", "f"),
                 ("session:num-obs", "i"), ("session:num-files", "i"), ("session:age", "f")],
}
ATTRIBUTES["instances"] = [*ATTRIBUTES["files"], ("store-name", "s"), ("deletion-policy", "s"),
                           ("fixity", "s")]


def _leaf(kind: str, depth: int = 0) -> st.SearchStrategy:
    options = [st.tuples(st.sampled_from(["always-true", "always-false"]), st.none())]
    for pooled, typ in ATTRIBUTES[kind]:
        attr = pooled.split(":")[-1]
        pool = VALUES[pooled]
        if typ == "s":
            options += [
                st.tuples(st.sampled_from([f"{attr}-is-exactly", f"{attr}-is-not"]), pool["s"]),
                st.tuples(st.just(f"{attr}-matches"), pool["like"]),
            ]
            continue
        value = pool[typ]
        names = [f"{attr}-greater-than", f"{attr}-less-than"]
        if typ == "i":
            names += [f"{attr}-is-exactly", f"{attr}-is-not"]
        options += [
            st.tuples(st.sampled_from(names), value),
            st.tuples(
                st.sampled_from([f"{attr}-in-range", f"{attr}-not-in-range"]),
                st.lists(value, min_size=2, max_size=2),
            ),
        ]
    if kind in ("files", "instances"):
        days = st.sampled_from([0, 0.5, 1, 1.5, 2, 3.5, 7, 10, 30, -1])
        options += [
            st.tuples(st.just("obsid-is-null"), st.sampled_from([None, "", 1])),
            st.tuples(st.sampled_from(["not-older-than", "not-newer-than"]), days),
            st.tuples(st.just("name-like"), VALUES["name"]["like"]),
            st.tuples(st.just("source-is"), VALUES["source"]["s"]),
        ]
        if depth == 0:
            options.append(st.tuples(st.just("obs-matches"), searches("observations", depth + 1)))
    if kind == "sessions":
        options.append(
            st.tuples(st.just("no-file-has-event"),
                      st.sampled_from(["create_instance", "staged", "x", "none"]))
        )
    return st.one_of(options)


def _objects(clause: st.SearchStrategy, min_size: int = 1) -> st.SearchStrategy:
    return st.lists(clause, min_size=min_size, max_size=2, unique_by=lambda c: c[0]).map(dict)


def searches(kind: str, depth: int = 0) -> st.SearchStrategy:
    clause = st.recursive(
        _leaf(kind, depth),
        lambda inner: st.tuples(
            st.sampled_from(["and", "or", "none-of"]),
            st.one_of(
                _objects(inner),
                _objects(inner),
                st.lists(_objects(inner), min_size=1, max_size=3),
                st.lists(_objects(inner), min_size=1, max_size=3),
                st.sampled_from([{}, []]),  # empty: and = true, or = false, none-of = true
            ),
        ),
        max_leaves=8 if depth == 0 else 4,
    )
    return st.one_of(
        _objects(clause), _objects(clause), st.lists(_objects(clause, 0), min_size=1, max_size=2)
    )


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize(
    ("kind", "drive_max"),
    [("instances", 0), ("instances", 10_000), ("observations", None), ("sessions", None)],
)
def test_random_searches_match_the_oracle(
    random_db: Database, kind: str, drive_max: int | None, monkeypatch
) -> None:
    """drive_max 0 compiles a file's observation clauses for a scan, 10_000 for driving from
    the observations: both forms must mean the same."""
    if drive_max is not None:
        monkeypatch.setattr(search_compile, "DRIVE_MAX_OBSERVATIONS", drive_max)
    @PROPERTY
    @given(search=searches(kind))
    def check(search) -> None:
        expected = sorted(ORACLE.select(kind, search))
        with random_db.read() as session:
            page = run_search(session, kind, search, limit=10_000, count=True, now=RANDOM_NOW)
            got = [getattr(row, KEY[kind]) for row in page.rows]
            assert got == expected
            assert page.total == len(expected)
            # none-of is the exact complement.
            page = run_search(
                session, kind, {"none-of": [{"and": search}]}, limit=10_000, now=RANDOM_NOW
            )
            complement = {getattr(row, KEY[kind]) for row in page.rows}
        everything = {row[KEY[kind]] for row in RANDOM.rows(kind)}
        assert complement == everything - set(expected)

    check()


FILE_SORTS = [s for name in SORTS["files"] for s in (name, "-" + name)]


@pytest.mark.parametrize("drive_max", [0, 10_000])
def test_random_file_searches_match_the_oracle(
    random_db: Database, drive_max: int, monkeypatch
) -> None:
    """Files, paged with a random sort and limit: the concatenated pages are the oracle's
    matches in the oracle's order (with both plans for the observation clauses)."""
    monkeypatch.setattr(search_compile, "DRIVE_MAX_OBSERVATIONS", drive_max)

    @PROPERTY
    @given(search=searches("files"), sort=st.sampled_from(FILE_SORTS),
           limit=st.sampled_from([4, 9, 10_000]))
    def check(search, sort, limit) -> None:
        matching = [f for f in RANDOM.files if ORACLE.matches("files", search, f)]
        expected = [f["name"] for f in _expected_order(RANDOM, "files", matching, sort)]
        with random_db.read() as session:
            got, totals = _walk(session, "files", search, sort, limit, now=RANDOM_NOW)
            assert [f.name for f in got] == expected
        assert set(totals) == {len(expected)}

    check()


def test_random_catalogue_is_varied() -> None:
    """The property tests mean something only if the catalogue has NULLs, empty counts, etc."""
    assert any(f["obsid"] is None for f in RANDOM.files)
    assert any(o["session_id"] is None for o in RANDOM.observations)
    assert any(ORACLE._obs_value(o, "num-files") == 0 for o in RANDOM.observations)
    assert any(ORACLE._file_value(f, "num-instances") == 0 for f in RANDOM.files)
    assert any(ORACLE._file_value(f, "num-instances") > 1 for f in RANDOM.files)
