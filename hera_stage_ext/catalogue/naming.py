"""What a file name may be, and what it tells: its type and, for HERA-style names, its observation.

A name is a single path component (the Librarian's rule): no ``/``, no NUL, no ``..``, not empty,
at most ``MAX_NAME_LENGTH`` characters, no control characters or line separators, valid Unicode.
Every name from outside is checked so (a name to stage that the catalogue does not hold too,
before it reaches a job's log, a marker or a reply). ``zen.2457644.12345.xx.HH.uvc`` carries
the Julian date of its observation's start; a configurable regular expression with a named
group ``jd`` (or ``obsid``, GPS seconds) extracts it, and the observation's obsid, LST and
session follow.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from typing import NamedTuple

from ..errors import InvalidRequest
from ..paths import CONTROL_CHARACTERS
from .models import MAX_NAME_LENGTH

#: Matches HERA's raw-data names: ``zen.<JD with 5 decimals>.<anything>``.
DEFAULT_OBSID_PATTERN = r"^zen\.(?P<jd>\d{7}\.\d{5})\."
#: HERA's longitude (degrees east), for the local sidereal time of an observation's start.
DEFAULT_LONGITUDE_DEG = 21.4283
#: Length of one HERA raw-data observation, in seconds (0.00745 day).
DEFAULT_OBSERVATION_SECONDS = 643.968

UNIX_EPOCH_JD = 2440587.5
GPS_EPOCH_UNIX = 315964800
# (first unix second it applies from, GPS - UTC in seconds), newest first.
_LEAP_SECONDS = (
    (1483228800, 18), (1435708800, 17), (1341100800, 16), (1230768000, 15),
    (1136073600, 14), (915148800, 13), (867715200, 12), (820454400, 11),
)


def shown(name: str, limit: int = 80) -> str:
    """``name`` as an error message shows it: quoted with its control characters escaped (a
    line break in a name never starts a line of a log or a marker), cut at ``limit``."""
    return repr(name[:limit]) + ("..." if len(name) > limit else "")


def validate_name(name: object) -> str:
    """Return ``name`` if the catalogue accepts it, else raise InvalidRequest saying why (the
    name shown escaped: ``shown``)."""
    if not isinstance(name, str):
        raise InvalidRequest(f"a file name must be a string, got {type(name).__name__}")
    if not name or name == ".":
        raise InvalidRequest("a file name must not be empty or '.'")
    if "\x00" in name:
        raise InvalidRequest("a file name must not contain NUL")
    if "/" in name or "\\" in name:
        raise InvalidRequest(f"a file name must not contain '/' or '\\\\': {shown(name)}")
    if ".." in name:
        raise InvalidRequest(f"a file name must not contain '..': {shown(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"a file name must be at most {MAX_NAME_LENGTH} characters: "
                             f"{shown(name)}")
    if CONTROL_CHARACTERS.search(name):
        raise InvalidRequest(f"a file name must not contain control characters: {shown(name)}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"a file name must be valid Unicode (no lone surrogates): "
                             f"{shown(name)}") from None
    return name


def file_type(name: str) -> str:
    """The Librarian's type: the text after the last '.', or '' when there is none."""
    return name.rsplit(".", 1)[1] if "." in name else ""


def jd_to_unix(jd: float) -> float:
    return (jd - UNIX_EPOCH_JD) * 86400.0


def unix_to_jd(unix: float) -> float:
    return unix / 86400.0 + UNIX_EPOCH_JD


def datetime_to_jd(when: dt.datetime) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return unix_to_jd(when.timestamp())


def _leap(unix: float) -> int:
    for since, offset in _LEAP_SECONDS:
        if unix >= since:
            return offset
    return 10


def jd_to_gps(jd: float) -> int:
    """GPS seconds of a UTC Julian date: HERA's obsid of an observation starting then."""
    unix = jd_to_unix(jd)
    return int(math.floor(unix - GPS_EPOCH_UNIX + _leap(unix) + 1e-6))


def gps_to_jd(gps: int) -> float:
    unix = gps + GPS_EPOCH_UNIX
    return unix_to_jd(unix - _leap(unix - _leap(unix)))


def lst_hours(jd: float, longitude_deg: float) -> float:
    """Local mean sidereal time in hours at ``jd`` (UT) and east longitude (IAU 1982 GMST)."""
    gmst = 18.697374558 + 24.06570982441908 * (jd - 2451545.0)
    return (gmst + longitude_deg / 15.0) % 24.0


class ObservationInfo(NamedTuple):
    """A file's observation, as its name or its sender says it (immutable; a tuple: one is
    made a registered file, and a frozen dataclass cost twice as much to make)."""

    obsid: int
    start_time_jd: float
    stop_time_jd: float
    start_lst_hr: float
    session_id: int


class ObservationNamer:
    """Derives a file's observation from its name with a configurable pattern."""

    def __init__(
        self,
        pattern: str = DEFAULT_OBSID_PATTERN,
        longitude_deg: float = DEFAULT_LONGITUDE_DEG,
        observation_seconds: float = DEFAULT_OBSERVATION_SECONDS,
    ) -> None:
        self.regex = re.compile(pattern)
        if not {"jd", "obsid"} & set(self.regex.groupindex):
            raise ValueError("the observation pattern needs a named group 'jd' or 'obsid'")
        self.longitude_deg = longitude_deg
        self.observation_days = observation_seconds / 86400.0
        # The files of one observation (its polarisations, its products) share the text the
        # observation comes from: registering a batch works each one out once.
        self._observation = functools.lru_cache(maxsize=4096)(self._observation_from)

    def observation_of(self, name: str) -> ObservationInfo | None:
        match = self.regex.search(name)
        if match is None:
            return None
        groups = match.groupdict()
        return self._observation(groups.get("jd"), groups.get("obsid"))

    def _observation_from(self, jd_text: str | None,
                          obsid_text: str | None) -> ObservationInfo | None:
        if jd_text:
            jd = float(jd_text)
            obsid = jd_to_gps(jd)
        elif obsid_text:
            obsid = int(obsid_text)
            jd = gps_to_jd(obsid)
        else:
            return None
        return ObservationInfo(
            obsid=obsid,
            start_time_jd=jd,
            stop_time_jd=jd + self.observation_days,
            start_lst_hr=lst_hours(jd, self.longitude_deg),
            # A HERA night never crosses noon UTC, where the Julian day turns: the integer JD
            # names the night.
            session_id=int(math.floor(jd)),
        )
