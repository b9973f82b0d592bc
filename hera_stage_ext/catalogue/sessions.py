"""Observing sessions after the fact, as the Librarian v1 RPC offered them.

``assign_sessions``: observations without a session join an existing session that contains
them, and the rest are grouped into new sessions wherever the gap between consecutive starts
exceeds 20 times the first gap of the group (kept between one minute and half a day), v1's
rule; a new session is named after its first obsid, as in v1.

``describe_session_without_event``: the files of one session (from ``source``) of which some
file lacks an event of ``event_type``: what HERA's real-time pipeline asked to learn of new
nights. Only available copies are described.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from sqlalchemy import exists, select

from . import file_events
from .db import Database
from .models import Event, File, Instance, Observation, Session, Store

GAP_TOLERANCE = 20
MIN_GAP_DAYS, MAX_GAP_DAYS = 1.0 / 1440, 0.5
_POL = re.compile(r"\.([xy][xy])\.")


def assign_sessions(db: Database, minimum_start_jd: float | None = None,
                    maximum_start_jd: float | None = None) -> list[dict[str, Any]]:
    """Give every observation without a session one; returns the sessions created."""
    created: list[dict[str, Any]] = []
    with db.write() as s:
        sessions = list(s.scalars(select(Session)))
        query = select(Observation).where(Observation.session_id.is_(None))
        if minimum_start_jd is not None:
            query = query.where(Observation.start_time_jd >= minimum_start_jd)
        if maximum_start_jd is not None:
            query = query.where(Observation.start_time_jd <= maximum_start_jd)
        left = []
        for obs in s.scalars(query.order_by(Observation.start_time_jd, Observation.obsid)):
            home = next((x for x in sessions if x.start_time_jd <= obs.start_time_jd
                         and obs.stop_time_jd <= x.stop_time_jd), None)
            if home is not None:
                obs.session_id = home.id
            else:
                left.append(obs)
        i0 = 0
        while i0 < len(left):
            i1 = i0 + 1
            if i1 < len(left):
                gap = (left[i1].start_time_jd - left[i0].start_time_jd) * GAP_TOLERANCE
                gap = min(max(gap, MIN_GAP_DAYS), MAX_GAP_DAYS)
                while i1 < len(left) and left[i1].start_time_jd - left[i1 - 1].start_time_jd < gap:
                    i1 += 1
            group = left[i0:i1]
            session_id = group[0].obsid
            if s.get(Session, session_id) is None:
                s.add(Session(id=session_id, start_time_jd=group[0].start_time_jd,
                              stop_time_jd=max(o.stop_time_jd for o in group)))
                s.flush()
            for obs in group:
                obs.session_id = session_id
            created.append({"id": session_id, "start_time_jd": group[0].start_time_jd,
                            "stop_time_jd": max(o.stop_time_jd for o in group),
                            "n_obs": len(group)})
            i0 = i1
    return created


def describe_session_without_event(db: Database, source: str, event_type: str
                                   ) -> dict[str, Any]:
    """v1's reply: ``{"any_matching": false}``, or the session's id and, per file of ``source``
    in it (one copy each, in order of start), its date, polarization, path in its store, the
    store's root and host, and the observation's length in days."""
    with db.read() as s:
        no_event = ~exists().where(Event.file_id == File.id,
                                   Event.type.in_(file_events.stored_types(event_type)))
        session_id = s.scalar(
            select(Observation.session_id).join(File, File.obsid == Observation.obsid)
            .where(Observation.session_id.is_not(None), File.source == source, no_event)
            .order_by(Observation.start_time_jd, File.name).limit(1))
        if session_id is None:
            return {"any_matching": False}
        rows = s.execute(
            select(File.name, Observation.start_time_jd, Observation.stop_time_jd,
                   Instance.path, Store.path, Store.ssh_host)
            .join(Observation, File.obsid == Observation.obsid)
            .join(Instance, Instance.file_id == File.id)
            .join(Store, Instance.store_id == Store.id)
            .where(Observation.session_id == session_id, File.source == source,
                   Instance.available, Store.available)
            .order_by(Observation.start_time_jd, File.name, Store.name)).all()
    starts = sorted({row[1] for row in rows})
    typical = statistics.median([b - a for a, b in zip(starts, starts[1:])]) \
        if len(starts) > 1 else 0.0
    info, seen = [], set()
    for name, start, stop, path, root, host in rows:
        if name in seen:
            continue
        seen.add(name)
        pols = _POL.findall(name)
        info.append({"date": start, "pol": pols[-1] if pols else None, "store_path": path,
                     "path_prefix": root, "host": host,
                     "length": (stop - start) if stop is not None else typical})
    return {"any_matching": True, "info": info, "session_id": session_id}
