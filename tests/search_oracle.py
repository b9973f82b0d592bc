"""A plain-Python evaluator of the search language: the oracle of the property tests.

Written independently of ``hera_stage_ext.catalogue.search`` and its ``search_*`` modules (it
shares no code with them) from the language's definition: clauses of an object are ANDed,
``and``/``or``/``none-of`` take an object or a list of objects, a positive comparison never
matches a missing value, ``-is-not`` and ``-not-in-range`` are the exact negations of
``-is-exactly`` and ``-in-range``, ``-matches`` is a case-sensitive LIKE without an escape
character.

Also builds random catalogues (``random_catalogue``) and loads them with the ORM (``load``).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass, field
from typing import Any

from hera_stage_ext.catalogue.models import Event, File, Instance, Observation, Session, Store

_SUFFIXES = (
    "-is-exactly",
    "-is-not",
    "-matches",
    "-greater-than",
    "-less-than",
    "-not-in-range",
    "-in-range",
)


def jd(when: dt.datetime) -> float:
    return (when - dt.datetime(1970, 1, 1)).total_seconds() / 86400.0 + 2440587.5


@dataclass
class Catalogue:
    sessions: list[dict] = field(default_factory=list)  # id, start_time_jd, stop_time_jd
    observations: list[dict] = field(default_factory=list)  # obsid, start/stop_time_jd, ...
    stores: list[dict] = field(default_factory=list)  # id, name
    files: list[dict] = field(default_factory=list)  # id, name, type, source, size, obsid, ...
    instances: list[dict] = field(default_factory=list)  # id, file_id, store_id, ...
    events: list[dict] = field(default_factory=list)  # id, file_id, type

    def __post_init__(self) -> None:
        self.index()

    def index(self) -> None:
        self.obs_by_id = {o["obsid"]: o for o in self.observations}
        self.file_by_id = {f["id"]: f for f in self.files}
        self.store_by_id = {s["id"]: s for s in self.stores}

    def rows(self, kind: str) -> list[dict]:
        return {
            "files": self.files,
            "instances": self.instances,
            "observations": self.observations,
            "sessions": self.sessions,
        }[kind]


KEY = {"files": "name", "instances": "id", "observations": "obsid", "sessions": "id"}


def like(value: str, pattern: str) -> bool:
    regex = "".join(
        ".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern
    )
    return re.fullmatch(regex, value, re.DOTALL) is not None


class Oracle:
    def __init__(self, cat: Catalogue, now: dt.datetime) -> None:
        self.cat = cat
        self.now = now
        cat.index()

    # --- attribute values (None when missing)

    def _file_value(self, f: dict, attr: str) -> Any:
        cat = self.cat
        if attr in ("name", "type", "source", "size", "obsid"):
            return f[attr]
        if attr == "num-instances":
            return sum(1 for i in cat.instances if i["file_id"] == f["id"])
        if attr == "num-bad-instances":
            return sum(1 for i in cat.instances if i["file_id"] == f["id"]
                       and i.get("fixity", "unchecked") in ("bad", "missing"))
        obs = cat.obs_by_id.get(f["obsid"]) if f["obsid"] is not None else None
        if obs is None:
            return None
        return self._obs_value(obs, attr)

    def _obs_value(self, o: dict, attr: str) -> Any:
        files = [f for f in self.cat.files if f["obsid"] == o["obsid"]]
        return {
            "obsid": lambda: o["obsid"],
            "start-time-jd": lambda: o["start_time_jd"],
            "stop-time-jd": lambda: o["stop_time_jd"],
            "start-lst-hr": lambda: o["start_lst_hr"],
            "session-id": lambda: o["session_id"],
            "duration": lambda: o["stop_time_jd"] - o["start_time_jd"],
            "num-files": lambda: len(files),
            "total-size": lambda: sum(f["size"] for f in files),
        }[attr]()

    def _session_value(self, s: dict, attr: str) -> Any:
        obs = [o for o in self.cat.observations if o["session_id"] == s["id"]]
        obsids = {o["obsid"] for o in obs}
        return {
            "session-id": lambda: s["id"],
            "start-time-jd": lambda: s["start_time_jd"],
            "stop-time-jd": lambda: s["stop_time_jd"],
            "duration": lambda: s["stop_time_jd"] - s["start_time_jd"],
            "num-obs": lambda: len(obs),
            "num-files": lambda: sum(1 for f in self.cat.files if f["obsid"] in obsids),
            "age": lambda: jd(self.now) - s["stop_time_jd"],
        }[attr]()

    FLOAT_ATTRS = frozenset({"start-time-jd", "stop-time-jd", "start-lst-hr", "duration", "age"})

    # --- evaluation

    def matches(self, kind: str, search: Any, row: dict) -> bool:
        if isinstance(search, list):
            return all(self.matches(kind, item, row) for item in search)
        return all(self.clause(kind, name, payload, row) for name, payload in search.items())

    def select(self, kind: str, search: Any) -> list[Any]:
        key = KEY[kind]
        return [row[key] for row in self.cat.rows(kind) if self.matches(kind, search, row)]

    def _items(self, kind: str, payload: Any, row: dict) -> list[bool]:
        if isinstance(payload, dict):
            return [self.clause(kind, n, p, row) for n, p in payload.items()]
        return [self.matches(kind, item, row) for item in payload]

    def clause(self, kind: str, name: str, payload: Any, row: dict) -> bool:
        if name == "and":
            return all(self._items(kind, payload, row))
        if name == "or":
            return any(self._items(kind, payload, row))
        if name == "none-of":
            return not any(self._items(kind, payload, row))
        if name == "always-true":
            return True
        if name == "always-false":
            return False
        if kind == "instances":
            if name.startswith(("store-name-", "deletion-policy-", "fixity-")):
                attr = next(a for a in ("store-name", "deletion-policy", "fixity")
                            if name.startswith(a + "-"))
                value = {
                    "store-name": lambda: self.cat.store_by_id[row["store_id"]]["name"],
                    "deletion-policy": lambda: row["deletion_policy"],
                    "fixity": lambda: row.get("fixity", "unchecked"),
                }[attr]()
                return self.compare(name[len(attr):], value, payload, False)
            return self.clause("files", name, payload, self.cat.file_by_id[row["file_id"]])
        if kind == "files":
            if name == "name-like":
                name = "name-matches"
            if name == "source-is":
                name = "source-is-exactly"
            if name == "obsid-is-null":
                return row["obsid"] is None
            if name == "obs-matches":
                obs = self.cat.obs_by_id.get(row["obsid"]) if row["obsid"] is not None else None
                return obs is not None and self.matches("observations", payload, obs)
            if name in ("not-older-than", "not-newer-than"):
                try:
                    cutoff = self.now - dt.timedelta(days=payload)
                except OverflowError:  # further than any representable time
                    return (payload > 0) == (name == "not-older-than")
                if name == "not-older-than":
                    return row["create_time"] > cutoff
                return row["create_time"] < cutoff
        if kind == "sessions" and name == "no-file-has-event":
            obsids = {o["obsid"] for o in self.cat.observations if o["session_id"] == row["id"]}
            file_ids = {f["id"] for f in self.cat.files if f["obsid"] in obsids}
            return not any(
                e["file_id"] in file_ids and e["type"] == payload for e in self.cat.events
            )
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                attr = name[: -len(suffix)]
                break
        else:
            raise KeyError(name)
        getter = {
            "files": self._file_value,
            "observations": self._obs_value,
            "sessions": self._session_value,
        }[kind]
        return self.compare(suffix, getter(row, attr), payload, attr in self.FLOAT_ATTRS)

    @staticmethod
    def compare(suffix: str, value: Any, payload: Any, is_float: bool) -> bool:
        def num(x: Any) -> Any:
            return float(x) if is_float else x

        if suffix == "-is-exactly":
            return value is not None and value == payload
        if suffix == "-is-not":
            return not (value is not None and value == payload)
        if suffix == "-matches":
            return value is not None and like(value, payload)
        if suffix == "-greater-than":
            return value is not None and value > num(payload)
        if suffix == "-less-than":
            return value is not None and value < num(payload)
        low, high = sorted(num(p) for p in payload)
        inside = value is not None and low <= value <= high
        return inside if suffix == "-in-range" else not inside


# --------------------------------------------------------------------------------------------
# Random catalogues

NAME_ODDITIES = [
    "Zen.2457644.5.xx.HH.uv",
    "zen_a%b.txt",
    "zen.2457644.1.xx.HH.uvc",
    "maint#1.pgdump",
    "back\\slash.uv",
    "caf\u00e9.uv",
    "ZEN.2457645.2.yy.HH.uv",
    "a",
    "zen.",
    "zen.2457644.1.xx.HH.uv",
]


def random_catalogue(seed: int, now: dt.datetime, n_files: int = 40) -> Catalogue:
    rnd = random.Random(seed)
    cat = Catalogue()
    for k in range(4):
        start = 2457640.0 + k + rnd.choice([0.0, 0.125, 0.25])
        cat.sessions.append(
            {"id": 2457640 + k, "start_time_jd": start,
             "stop_time_jd": start + rnd.choice([0.25, 0.5, 0.375])}
        )
    for k in range(10):
        session = rnd.choice([*cat.sessions, None])
        base = session["start_time_jd"] if session else 2457650.0 + k
        start = base + rnd.choice([0.0, 0.0625, 0.125])
        cat.observations.append(
            {
                "obsid": 1157000000 + 100 * k,
                "start_time_jd": start,
                "stop_time_jd": start + rnd.choice([0.0078125, 0.015625, 0.03125]),
                "start_lst_hr": rnd.choice([0.5, 1.25, 3.0, 6.5, 12.0, 23.75]),
                "session_id": session["id"] if session else None,
            }
        )
    cat.stores = [{"id": 1, "name": "pot1"}, {"id": 2, "name": "pot2"}, {"id": 3, "name": "Cold"}]
    names = set(NAME_ODDITIES)
    while len(names) < n_files:
        names.add(
            f"{rnd.choice(['zen', 'zen', 'Zen'])}.{rnd.choice([2457640, 2457641, 2457644])}."
            f"{rnd.randrange(10, 40)}.{rnd.choice(['xx', 'yy', 'xy'])}.HH."
            f"{rnd.choice(['uv', 'uvc', 'uvh5'])}"
        )
    instance_id = 0
    for file_id, name in enumerate(sorted(names), start=1):
        obs = rnd.choice([*cat.observations, None, None])
        days = rnd.choice([0.5, 1, 1, 2, 3.5, 7, 10, 30])
        cat.files.append(
            {
                "id": file_id,
                "name": name,
                "type": name.rsplit(".", 1)[-1] if "." in name else "",
                "source": rnd.choice(["correlator", "Correlator", "rtp", "admin"]),
                "size": rnd.choice([0, 1, 10, 100, 100, 1000, 5_000_000_000]),
                "obsid": obs["obsid"] if obs else None,
                "create_time": now - dt.timedelta(days=days),
            }
        )
        for k in range(rnd.choice([0, 0, 1, 1, 2, 3])):
            instance_id += 1
            cat.instances.append(
                {
                    "id": instance_id,
                    "file_id": file_id,
                    "store_id": rnd.choice([1, 2, 3]),
                    "path": f"{name}.{k}",
                    "deletion_policy": rnd.choice(["allowed", "disallowed"]),
                    # Not drawn from rnd: the rest of the catalogue stays as it was.
                    "fixity": ("unchecked", "ok", "ok", "bad", "missing")[instance_id % 5],
                }
            )
    for event_id, f in enumerate(rnd.sample(cat.files, len(cat.files) // 2), start=1):
        cat.events.append(
            {"id": event_id, "file_id": f["id"],
             "type": rnd.choice(["create_instance", "staged", "x"])}
        )
    cat.index()
    return cat


def load(session: Any, cat: Catalogue) -> None:
    """Insert ``cat`` with the ORM (inside ``database.write()``)."""
    session.add_all(Session(**s) for s in cat.sessions)
    session.flush()
    session.add_all(Observation(**o) for o in cat.observations)
    session.add_all(Store(id=s["id"], name=s["name"], path=f"/{s['name']}") for s in cat.stores)
    session.flush()
    session.add_all(File(**f) for f in cat.files)
    session.flush()
    session.add_all(Instance(**i) for i in cat.instances)
    session.add_all(Event(**e) for e in cat.events)
