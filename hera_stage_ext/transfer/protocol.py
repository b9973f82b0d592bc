"""The site-to-site protocol: messages and the HTTP client both sides use.

All under ``<base_url>/hera-stage/peer/``, authenticated with ``Authorization: HeraPeer
<site>:<secret>`` (``peers.py``):

``POST announce``  sender -> receiver. ``{"transfer": id, "files": [offer, ...]}``, an offer being
    ``{"name", "size", "checksums", "path" (relative, kept as the layout on the receiving store),
    "is_directory", "obsid", "create_time", "source", "meta", "observation"}``. The receiver
    records every offer it accepts (table ``transfer_item``) and answers per file
    ``{"name", "answer", "message"}`` with answer ``send`` (it will pull the bytes), ``have`` (it
    holds the same content: nothing moves), ``conflict`` (the name is known with other content,
    or the path holds another file), ``no-space`` or ``refused`` (e.g. a directory data set: not
    transferred yet). Announcing again is harmless: a file being received keeps going, a failed
    one is tried again, a committed one is ``have``. Every offer is checked entirely first
    (``check_offer``: the path canonical and outside the receiver's own folders, every field as
    the catalogue will store it): one malformed offer, or two names at one path, refuses the
    whole announce with 400 naming the file and the field, and nothing of it is recorded. (Per
    file answers are for what the receiver decides; a malformed offer is a sender that does not
    speak the protocol, and its other files wait for a correct announce.)
``POST status``  sender -> receiver. ``{"names": [...], "wait": seconds}`` -> ``{"files":
    [{"name", "state", "bytes", "attempts", "error"}]}``; state ``queued``, ``receiving``,
    ``committed``, ``failed`` or ``unknown``. With ``wait`` (at most ``MAX_STATUS_WAIT``) the
    receiver answers as soon as one more of the names is committed or failed, or when the wait
    is over (a long poll: the sender learns of a commit at once, without polling fast). With
    ``"finished_only": true`` the answer lists only the names committed, failed or unknown, and a
    long poll whose first look finds any answers at once. The sender asks until every file is
    committed or failed.
``GET files/<name>/content``  receiver -> sender, with ``Range: bytes=<offset>-``: the bytes (the
    receiver PULLS: tornado serves fast and receives slowly). It resumes a broken pull from the
    bytes already received. Used for files larger than ``BATCH_FILE_MAX`` and directories.
``POST files/batch``  receiver -> sender. ``{"names": [...]}`` (at most ``BATCH_MAX_FILES`` flat
    files) -> one ``application/octet-stream`` of framed members, in the order asked: per member
    a 4-byte big-endian header length, the header (JSON ``{"name", "size"}``, or ``{"name",
    "error"}`` when the sender cannot serve that file: no bytes follow), then ``size`` bytes;
    a header length of 0 ends the stream. A receiver that asks with ``"framing": "sizes"`` gets,
    from a sender that knows it, the compact framing instead, with no header to encode or parse
    per member: ``0xFFFFFFFD`` first (no header length is that large: the stream itself says
    how it is framed, whatever a proxy does to the reply's headers), then per member in the
    order asked its 4-byte size and its bytes, or ``0xFFFFFFFF``, a 4-byte length and the UTF-8
    message of why the sender cannot serve it; ``0xFFFFFFFE`` after the last member ends the
    stream. A sender that does not know it ignores the field and answers with JSON headers
    (the receiver reads whichever the first word says); a receiver that does not ask gets JSON
    headers. The sender reads one file at a time (constant memory);
    the receiver verifies every member on its own against its announced size and checksum, so
    one damaged member is pulled again without the others. Small files move this way: one
    request, one sync of the file system and one catalogue transaction per batch instead of
    one of each per file. A broken batch stream is pulled again from its first unverified member.
``POST push``  sender -> receiver, small flat files WITH their bytes in one request (no pull,
    no status polls for them). The body (``application/octet-stream``): the decimal length of
    an announce's JSON and a newline, that JSON (``{"transfer": id, "files": [offer, ...]}``,
    offers as for ``announce``, every one checked the same way), then each offer's bytes
    concatenated in the order of ``files``, each exactly its offer's ``size`` (no framing per
    member: the sizes are in the offers). At most ``PUSH_MAX_FILES`` offers, each a flat file
    of at most ``PUSH_FILE_MAX`` bytes, the whole body at most ``PUSH_MAX_BYTES`` (a
    ``Content-Length`` over it: 413 before anything is read; none, or no number: 411; a
    receiver that holds as many pushes as it takes, 8: 503, before the body is read, and the
    sender announces those files, as after any 5xx, which fails none). A malformed body
    (the length line, the JSON, an offer, data shorter or longer than the sizes add up to, a
    directory or a file over the limit) gets a 400 and nothing of it is stored. The reply
    is an announce's (``{"transfer", "site", "files": [{"name", "answer", "message"}]}``) with
    two more answers: ``committed`` (verified, synced, under its final name and registered
    there: done) and ``retry`` (it failed verification, or its write or sync failed: send it
    again by ``announce``, so the receiver's attempts and backoff apply). ``have``,
    ``conflict``, ``no-space`` and ``refused`` are as an announce answers them, and ``send``
    too: a name the receiver is already pulling for this peer (an earlier announce) keeps
    its pull, or one whose final path holds a file already, which the receiver then checks
    as a pull does (registered only if it is exactly what was offered); the sender follows
    those with ``status``. A receiver that takes pushes says so in its ``ping`` reply and in
    every announce reply, ``"push": {"max_file", "max_bytes", "max_files"}``; a sender pings
    once before a stream's first claim and pushes from that claim on only to a peer whose reply
    said so (an older receiver's says nothing: it never sees a push; an older sender never
    pushes), and stops pushing to one that answers a push 404 (a proxy in front that passes on
    only the older routes). A sender that throttles a peer (``max_bytes_per_s``: the throttle
    lives in its server's pull handlers) never pushes to it.
``GET ping``  -> ``{"site": <answering site>, "peer": <the caller as authenticated>, "push":
    {"max_file", "max_bytes", "max_files"}}`` (``push``: what it takes in a push, as an
    announce reply says; none from a receiver that takes no pushes).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import math
import mmap
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import requests
import urllib3

from ..catalogue import checksums as ck
from ..catalogue.catalogue import FileSpec
from ..catalogue.naming import ObservationInfo, validate_name
from ..errors import InvalidRequest, StagingError, Unauthorized, Unavailable
from ..jsonbody import load_json
from ..paths import CONTROL_CHARACTERS, check_canonical
from .peers import Peer

#: What a stream fills: a plain buffer, or one of ``directio``'s aligned ones.
WritableBuffer = bytearray | memoryview | mmap.mmap

PEER_PREFIX = "hera-stage/peer/"

SEND, HAVE, CONFLICT, NO_SPACE, REFUSED = "send", "have", "conflict", "no-space", "refused"
ANSWERS = (SEND, HAVE, CONFLICT, NO_SPACE, REFUSED)
#: ``push``'s answers beyond an announce's (see the module's docstring).
COMMITTED, RETRY = "committed", "retry"
#: ``status``'s state for a name the receiver holds no item of (the others: a
#: ``states.TransferItemState``).
UNKNOWN = "unknown"
#: Most offers in one announce (keeps its body well under the 1 MiB limit).
MAX_OFFERS = 500
#: Bytes per read of a single-file pull (large reads: fewer trips through urllib3 and the GIL).
CHUNK = 4 << 20
#: Files up to this size are pulled in batches (``POST files/batch``); larger ones alone.
BATCH_FILE_MAX = 4 << 20
#: Most files, and about the most bytes, in one batch pull.
BATCH_MAX_FILES = 1000
BATCH_MAX_BYTES = 64 << 20
#: ``POST push``: the largest file pushed (larger ones are announced and pulled), the largest
#: body, the most files in one, and the largest announce JSON at its head.
PUSH_FILE_MAX = 256 << 10
PUSH_MAX_BYTES = 16 << 20
PUSH_MAX_FILES = MAX_OFFERS
PUSH_HEAD_MAX = 1 << 20
#: Digits of a push body's first line at most (the head's length).
_PUSH_LENGTH_DIGITS = len(str(PUSH_HEAD_MAX))
#: Longest long poll of ``POST status`` (seconds).
MAX_STATUS_WAIT = 10.0
_HEADER = struct.Struct(">I")
#: ``POST files/batch``'s compact framing: asked for with ``"framing": SIZES`` in the request,
#: used when the reply's first word is ``_COMPACT_START`` (see the module's docstring).
SIZES = "sizes"
#: The compact framing's words that are no size: its first (no JSON header is that long), a
#: member the sender cannot serve (its message follows), and the end of the stream.
_COMPACT_START = 0xFFFFFFFD
_ERROR_MEMBER = 0xFFFFFFFF
_END_MEMBERS = 0xFFFFFFFE
#: Bytes read from the socket at a time while parsing a batch stream.
_READ_AHEAD = 1 << 20
#: Longest member header accepted (a name and a size, or an error message).
_MAX_HEADER = 64 << 10

_OBSERVATION_FIELDS = ("obsid", "start_time_jd", "stop_time_jd", "start_lst_hr", "session_id")
_OBSERVATION_KEYS = frozenset(_OBSERVATION_FIELDS)


#: Largest integer the catalogue stores (sizes, obsids, sessions: signed 64 bits).
_INT64_MAX = 2**63 - 1
#: Longest ``source`` the catalogue stores.
_MAX_SOURCE = 256


def _int64(value: Any, low: int = -_INT64_MAX - 1) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= _INT64_MAX


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value)


def _no_nul(value: Any) -> bool:
    """No NUL in any string of a JSON value, keys included (PostgreSQL's jsonb takes none).
    Walked with a stack: the body's depth limit bounds it, but nothing here recurses."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
        elif isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return True


def _create_time(value: Any) -> str | None:
    """An offer's ``create_time`` as the receiver stores it: naive UTC in ISO form (a time
    with an offset converted); ValueError if it is none."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("must be an ISO 8601 date and time, e.g. 2026-01-31T12:00:00Z")
    when = dt.datetime.fromisoformat(value[:-1] if value.endswith("Z") else value)
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when.isoformat()


def _observation(obs: Any) -> str | None:
    """Why an offer's ``observation`` cannot be registered, or None."""
    if not isinstance(obs, dict) or obs.keys() != _OBSERVATION_KEYS:
        return f"must be an object of exactly {', '.join(_OBSERVATION_FIELDS)}"
    for key in ("obsid", "session_id"):
        if not _int64(obs[key]):
            return f"{key} must be an integer of at most 64 bits, got {obs[key]!r:.40}"
    for key in ("start_time_jd", "stop_time_jd", "start_lst_hr"):
        if not _finite(obs[key]):
            return f"{key} must be a finite number, got {obs[key]!r:.40}"
    if obs["start_time_jd"] > obs["stop_time_jd"]:
        return "start_time_jd is after stop_time_jd"
    if not 0 <= obs["start_lst_hr"] <= 24:
        return "start_lst_hr must be from 0 to 24 hours"
    return None


def check_offer(offer: Any, reserved: Sequence[str] = (), reserved_suffix: str = ""
                ) -> dict[str, Any]:
    """Validate one offer from a peer entirely, every field as the catalogue will store it, so
    that nothing found wrong after its bytes arrived can stop its registration; the offer with
    its checksums, path and ``create_time`` normalised. InvalidRequest names the file, the
    field and the problem. The path must be canonical (``paths.check_canonical``: one spelling
    per file) and stay out of the receiver's own folders: no component in ``reserved``, none
    ending in ``reserved_suffix``. (An announce checks hundreds: each check is made once, and
    the messages only for an offer that fails one.)"""
    if not isinstance(offer, dict):
        raise InvalidRequest("each offer must be an object")
    name = validate_name(offer.get("name"))
    get = offer.get
    size = get("size")
    if not _int64(size, 0):
        raise _bad(name, "size", "must be a non-negative integer of at most 64 bits")
    checksums = get("checksums")
    if not isinstance(checksums, dict) or not checksums:
        raise _bad(name, "checksums", "are required (an object of algorithm to hex digest)")
    try:
        checksums = ck.normalise(checksums)
    except InvalidRequest as exc:
        raise _bad(name, "checksums", f"are malformed: {exc.message}") from None
    try:
        path = check_canonical(get("path", name), "path")
    except InvalidRequest as exc:
        raise InvalidRequest(f"offer of {name!r}: {exc.message}", name=name,
                             field="path") from None
    if reserved or reserved_suffix:
        # The path is canonical: its components are what lies between two slashes of
        # ``/<path>/`` (a reserved name or the suffix holds no slash).
        framed = f"/{path}/"
        if reserved and any(f"/{part}/" in framed for part in reserved):
            raise _bad(name, "path", f"{path!r} is inside a folder the receiver keeps for "
                       f"itself ({', '.join(reserved)})")
        if reserved_suffix and f"{reserved_suffix}/" in framed:
            raise _bad(name, "path", f"{path!r} ends a component in {reserved_suffix!r}, which "
                       "the receiver keeps for files being written")
    if get("is_directory", False).__class__ is not bool:
        raise _bad(name, "is_directory", "must be true or false")
    obsid = get("obsid")
    if obsid is not None and not _int64(obsid):
        raise _bad(name, "obsid", f"must be an integer of at most 64 bits or null, got "
                   f"{obsid!r:.40}")
    try:
        created = _create_time(get("create_time"))
    except ValueError as exc:
        raise _bad(name, "create_time", f"{get('create_time')!r:.60} is no date and time: "
                   f"{exc}") from None
    source = get("source", "")
    if not isinstance(source, str) or len(source) > _MAX_SOURCE \
            or (source and CONTROL_CHARACTERS.search(source)):
        raise _bad(name, "source", f"must be a string of at most {_MAX_SOURCE} characters "
                   "without control characters")
    meta = get("meta", {})
    if not isinstance(meta, dict) or (meta and not _no_nul(meta)):
        raise _bad(name, "meta", "must be an object whose strings hold no NUL")
    obs = get("observation")
    if obs is not None:
        if (problem := _observation(obs)) is not None:
            raise _bad(name, "observation", problem)
        if obsid is not None and obsid != obs["obsid"]:
            raise _bad(name, "obsid", f"{obsid} is not its observation's ({obs['obsid']})")
    elif obsid is not None:
        raise _bad(name, "observation", f"is missing: obsid {obsid} needs its observation")
    checked = offer.copy()
    checked["path"], checked["checksums"], checked["create_time"] = path, checksums, created
    return checked


def _bad(name: str, field: str, problem: str) -> InvalidRequest:
    """The error of an offer's ``field``."""
    return InvalidRequest(f"offer of {name!r}: {field} {problem}", name=name, field=field)


#: What a receiver keeps of an offer beyond its name, size, checksums and path (columns of
#: their own): the rest of the file's metadata, for its registration.
SPEC_FIELDS = ("is_directory", "obsid", "create_time", "source", "meta", "observation")


def spec_of(offer: dict[str, Any]) -> dict[str, Any]:
    """The part of a checked offer a receiver keeps for registering the file."""
    return {k: offer[k] for k in SPEC_FIELDS if k in offer}


def spec_json(spec: dict[str, Any]) -> str:
    """``json.dumps(spec)`` of a checked offer's ``spec_of``, the same text: put together from
    its fields when it has all of them in the usual types (numbers as ``json`` writes finite
    ones, their ``repr``: ``check_offer`` lets no other through), else by ``json.dumps``. A receiver writes one per file announced."""
    if len(spec) != len(SPEC_FIELDS) or tuple(spec) != SPEC_FIELDS:
        return json.dumps(spec)
    is_directory, obsid, created, source, meta, obs = spec.values()
    if is_directory.__class__ is not bool or (obsid is not None and obsid.__class__ is not int) \
            or (created is not None and created.__class__ is not str) \
            or source.__class__ is not str or meta.__class__ is not dict \
            or (obs is not None and (obs.__class__ is not dict
                                     or tuple(obs) != _OBSERVATION_FIELDS
                                     or any(v.__class__ not in (int, float)
                                            for v in obs.values()))):
        return json.dumps(spec)
    observation = "null" if obs is None else (
        '{"obsid": %r, "start_time_jd": %r, "stop_time_jd": %r, "start_lst_hr": %r, '
        '"session_id": %r}' % tuple(obs.values()))
    return (f'{{"is_directory": {"true" if is_directory else "false"}, '
            f'"obsid": {"null" if obsid is None else obsid}, '
            f'"create_time": {"null" if created is None else _json_string(created)}, '
            f'"source": {_json_string(source)}, "meta": {json.dumps(meta) if meta else "{}"}, '
            f'"observation": {observation}}}')


#: JSON text of a string, as ``json.dumps`` writes it.
_json_string = json.encoder.encode_basestring_ascii


def file_spec(item: Any, peer: str) -> FileSpec:
    """The FileSpec of a received file: ``item``'s name, size and checksums (as announced and
    verified) and the metadata kept in its ``spec`` (``spec_of``; items recorded by earlier
    versions keep the whole offer, a superset)."""
    get = item.spec.get
    created = get("create_time")
    obs = get("observation")
    # The item's own values, not copies: an item is registered once (a batch of thousands).
    return FileSpec(
        item.name, item.size, item.checksums, bool(get("is_directory")),
        get("source") or f"peer:{peer}", get("obsid"),
        dt.datetime.fromisoformat(created.rstrip("Z")) if created else None,
        get("meta") or {}, ObservationInfo(**obs) if obs else None,
    )


def push_capability() -> dict[str, int]:
    """What a receiver that takes pushes says in every announce reply (under ``"push"``)."""
    return {"max_file": PUSH_FILE_MAX, "max_bytes": PUSH_MAX_BYTES, "max_files": PUSH_MAX_FILES}


class PushLimits(NamedTuple):
    """What a peer's announce reply said it takes in a push."""

    max_file: int
    max_bytes: int
    max_files: int

    @classmethod
    def of(cls, reply: dict[str, Any]) -> PushLimits | None:
        """The limits an announce reply states, each at most this version's own (a sender
        holds a push in memory), or None (an older receiver, or a reply that is not
        understood: no push then)."""
        said = reply.get("push")
        if not isinstance(said, dict):
            return None
        values: list[Any] = [said.get(key) for key in cls._fields]
        if not all(_int64(value, 1) for value in values):
            return None
        own = (PUSH_FILE_MAX, PUSH_MAX_BYTES, PUSH_MAX_FILES)
        return cls(*(min(value, limit) for value, limit in zip(values, own)))


def push_body(transfer: str, offers: Sequence[dict[str, Any]], data: Sequence[bytes]) -> bytes:
    """The body of a ``POST push`` of ``offers`` with their bytes ``data`` (each exactly its
    offer's size)."""
    # (no check for circular references: offers are trees of plain values, and the check
    # costs the sender about a tenth of the encoding, which is a fifth of its CPU a file)
    head = json.dumps({"transfer": transfer, "files": list(offers)},
                      check_circular=False).encode()
    return b"".join([b"%d\n" % len(head), head, *data])


def split_push(body: bytes) -> tuple[dict[str, Any], memoryview]:
    """The announce JSON at the head of a ``POST push`` body and the bytes after it
    (InvalidRequest if the head is malformed; the bytes are checked against the offers'
    sizes by the receiver, once the offers are)."""
    newline = body.find(b"\n", 0, _PUSH_LENGTH_DIGITS + 1)
    digits = body[:newline]
    if newline < 1 or not digits.isdigit() or int(digits) > PUSH_HEAD_MAX \
            or newline + 1 + int(digits) > len(body):
        raise InvalidRequest(f"a push body begins with the length in bytes of its announce "
                             f"JSON (at most {PUSH_HEAD_MAX}) and a newline, then that JSON")
    end = newline + 1 + int(digits)
    head = load_json(body[newline + 1:end], "a push's announce JSON", max_bytes=PUSH_HEAD_MAX)
    if not isinstance(head, dict):
        raise InvalidRequest("a push's announce must be a JSON object")
    return head, memoryview(body)[end:]


class PeerClient:
    """One site's HTTP client to one peer (a keep-alive session; secrets stay in headers)."""

    def __init__(self, peer: Peer, site_name: str, timeout: float = 30) -> None:
        self.peer = peer
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = peer.authorization(site_name)

    def close(self) -> None:
        self.session.close()

    def _url(self, path: str) -> str:
        return self.peer.url + PEER_PREFIX + path

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        try:
            reply = self.session.request(method, self._url(path), json=body,
                                         timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"peer {self.peer.name!r} at {self.peer.url} is unreachable: "
                              f"{type(exc).__name__}") from None
        return _checked(self.peer.name, reply).json()

    def ping(self) -> dict[str, Any]:
        return self._json("GET", "ping")

    def announce(self, transfer: str, offers: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self._json("POST", "announce", {"transfer": transfer, "files": list(offers)})

    def push(self, transfer: str, offers: Sequence[dict[str, Any]], data: Sequence[bytes]
             ) -> dict[str, Any]:
        """``POST push`` of ``offers`` with their bytes (``push_body``)."""
        try:
            reply = self.session.post(self._url("push"), data=push_body(transfer, offers, data),
                                      headers={"Content-Type": "application/octet-stream"},
                                      timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"peer {self.peer.name!r} at {self.peer.url} is unreachable: "
                              f"{type(exc).__name__}") from None
        return _checked(self.peer.name, reply).json()

    def status(self, names: Sequence[str], wait: float = 0.0,
               finished_only: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"names": list(names)}
        if wait:
            body["wait"] = wait
        if finished_only:
            body["finished_only"] = True
        return self._json("POST", "status", body)

    def batch(self, names: Sequence[str]) -> Iterator[tuple[str, bytes, str]]:
        """The members of one ``POST files/batch``: (name, its bytes, why the sender cannot
        serve it or "") each, in the order asked. A member is at most ``BATCH_FILE_MAX``
        bytes (the sender frames a larger file as an error), so one is read whole: memory
        stays bounded, and a small file costs one slice of the stream's buffer instead of a
        reader object and chunks. The compact framing is asked for; a sender that answers with
        JSON headers (its first word a header's length, not ``_COMPACT_START``) is read as
        such."""
        names = list(names)
        try:
            reply = self.session.post(self._url("files/batch"),
                                      json={"names": names, "framing": SIZES},
                                      stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"peer {self.peer.name!r} is unreachable: "
                              f"{type(exc).__name__}") from None
        _checked(self.peer.name, reply)
        stream = _RawReader(reply, self.peer.name)
        try:
            (first,) = _HEADER.unpack(stream.exactly(_HEADER.size))
            if first == _COMPACT_START:
                yield from self._sized_members(stream, names)
            else:
                yield from self._json_members(stream, first)
            # Read to the body's end (nothing is left but the chunked encoding's last chunk):
            # only then does urllib3 hand the connection back to the session's pool, for the
            # next batch of this client to reuse. Anything more is ignored, as before, and
            # the connection closed with the response (a response read short is not reused).
            stream.read(1)
        finally:
            reply.close()

    def _sized_members(self, stream: _RawReader, names: list[str]
                       ) -> Iterator[tuple[str, bytes, str]]:
        """The members of a batch stream in the compact framing (one per name asked)."""
        unpack, size_of_word, exactly = _HEADER.unpack, _HEADER.size, stream.exactly
        for name in names:
            (size,) = unpack(exactly(size_of_word))
            if size <= BATCH_FILE_MAX:
                yield name, exactly(size), ""
                continue
            if size != _ERROR_MEMBER:
                raise Unavailable(f"batch pull from {self.peer.name!r}: a member of {size} "
                                  f"bytes (at most {BATCH_FILE_MAX})")
            (length,) = unpack(exactly(size_of_word))
            if length > _MAX_HEADER:
                raise Unavailable(f"batch pull from {self.peer.name!r}: an error message of "
                                  f"{length} bytes (not this protocol)")
            yield name, b"", exactly(length).decode("utf-8", "replace") or "no reason given"
        if unpack(exactly(size_of_word))[0] != _END_MEMBERS:
            raise Unavailable(f"batch pull from {self.peer.name!r}: more members than asked for")

    def _json_members(self, stream: _RawReader, length: int
                      ) -> Iterator[tuple[str, bytes, str]]:
        """The members of a batch stream with JSON headers (what senders before the compact
        framing answer), ``length`` the first header's (already read)."""
        while True:
            if length == 0:
                return
            if length > _MAX_HEADER:
                raise Unavailable(f"batch pull from {self.peer.name!r}: a member header "
                                  f"of {length} bytes (not this protocol)")
            try:
                header = json.loads(stream.exactly(length))
            except ValueError:  # not JSON (nor UTF-8): not this protocol
                header = None
            if not isinstance(header, dict) or not isinstance(header.get("name"), str):
                raise Unavailable(f"batch pull from {self.peer.name!r}: a malformed header")
            if "error" in header:
                yield header["name"], b"", str(header["error"]) or "no reason given"
            else:
                size = header.get("size", 0)
                if isinstance(size, bool) or not isinstance(size, int) \
                        or not 0 <= size <= BATCH_FILE_MAX:
                    raise Unavailable(f"batch pull from {self.peer.name!r}: a member of "
                                      f"{size!r} bytes (at most {BATCH_FILE_MAX})")
                yield header["name"], stream.exactly(size), ""
            (length,) = _HEADER.unpack(stream.exactly(_HEADER.size))

    def content(self, name: str, offset: int = 0) -> _RawReader:
        """The bytes of ``name`` from ``offset`` on, as a stream to ``fill`` buffers from
        (``close`` it after)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            reply = self.session.get(self._url(f"files/{quote(name)}/content"),
                                     headers=headers, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"peer {self.peer.name!r} is unreachable: "
                              f"{type(exc).__name__}") from None
        _checked(self.peer.name, reply)
        if offset and reply.status_code != 206:
            reply.close()
            raise Unavailable(f"peer {self.peer.name!r} ignored the Range of {name!r}")
        return _RawReader(reply, self.peer.name)

    def chunks(self, name: str) -> Iterator[memoryview]:
        """The bytes of ``name`` in chunks (views of one reused buffer, each valid until the
        next is asked for)."""
        stream = self.content(name)
        buffer = bytearray(CHUNK)
        try:
            with memoryview(buffer) as view:
                while n := stream.fill(buffer):
                    yield view[:n]
        finally:
            stream.close()


class _RawReader:
    """Reads of an HTTP response's body straight from urllib3 (no iter_content generator per
    chunk), through a buffer so the many small reads of a batch stream cost one large read;
    network errors as Unavailable."""

    def __init__(self, reply: requests.Response, peer: str) -> None:
        self._reply = reply
        self._raw = reply.raw
        self._peer = peer
        self._buffer = b""
        self._at = 0

    def _fill(self, n: int) -> bytes:
        try:
            return self._raw.read(n, decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError,
                http.client.HTTPException, OSError) as exc:
            raise Unavailable(f"pull from {self._peer!r} broke: {type(exc).__name__}") from None

    def readinto(self, buffer: WritableBuffer) -> int:
        """Read into ``buffer`` from the stream (0 at its end). Straight from the socket into
        the buffer through http.client when nothing has to be decoded: one copy less than
        ``read``, which matters at hundreds of MB/s."""
        fp = getattr(self._raw, "_fp", None)
        if fp is None or self._raw.headers.get("Content-Encoding") or self._at < len(self._buffer):
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        try:
            n = fp.readinto(buffer)
        except (http.client.HTTPException, OSError, ValueError) as exc:
            raise Unavailable(f"pull from {self._peer!r} broke: {type(exc).__name__}") from None
        if not n and fp.length and len(buffer):
            # http.client reports a connection closed before the announced length (a sender
            # killed mid-body) as the end of the body: a break, to resume, not a short file.
            raise Unavailable(f"pull from {self._peer!r} broke: the stream ended early")
        return n

    def fill(self, buffer: WritableBuffer) -> int:
        """Fill ``buffer`` (fewer bytes only at the end of the stream)."""
        got = 0
        with memoryview(buffer) as view:
            while got < len(view) and (n := self.readinto(view[got:])):
                got += n
        return got

    def close(self) -> None:
        self._reply.close()

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        if self._at < len(self._buffer):
            out = self._buffer[self._at:self._at + n]
            self._at += len(out)
            return out
        return self._fill(n)

    def exactly(self, n: int) -> bytes:
        """``n`` bytes; Unavailable if the stream ends first (a broken pull)."""
        while len(self._buffer) - self._at < n:
            more = self._fill(max(n, _READ_AHEAD))
            if not more:
                raise Unavailable(f"pull from {self._peer!r} broke: the stream ended early")
            self._buffer = self._buffer[self._at:] + more
            self._at = 0
        out = self._buffer[self._at:self._at + n]
        self._at += n
        return out


class BatchFraming:
    """How a sender frames the members of one ``POST files/batch`` reply: with JSON headers,
    or compact (``compact``: the receiver asked for ``SIZES``)."""

    def __init__(self, compact: bool) -> None:
        self.compact = compact

    def start(self) -> bytes:
        """What begins the stream (the compact framing's word that says it is)."""
        return _HEADER.pack(_COMPACT_START) if self.compact else b""

    def member(self, out: bytearray, name: str, data: bytes) -> None:
        """Append the member ``name`` holding ``data`` to ``out``."""
        if self.compact:
            out += _HEADER.pack(len(data))
        else:
            header = json.dumps({"name": name, "size": len(data)}).encode()
            out += _HEADER.pack(len(header))
            out += header
        out += data

    def error(self, out: bytearray, name: str, message: str) -> None:
        """Append the member ``name`` that cannot be served, and why, to ``out``."""
        if self.compact:
            text = message.encode("utf-8", "replace")[:_MAX_HEADER]
            out += _HEADER.pack(_ERROR_MEMBER)
            out += _HEADER.pack(len(text))
            out += text
        else:
            header = json.dumps({"name": name, "error": message}).encode()
            out += _HEADER.pack(len(header))
            out += header

    def end(self) -> bytes:
        """What ends the stream."""
        return _HEADER.pack(_END_MEMBERS if self.compact else 0)


def _checked(peer: str, reply: requests.Response) -> requests.Response:
    if reply.ok:
        return reply
    try:
        message = reply.json().get("message", reply.reason)
    except ValueError:
        message = reply.reason
    error: type[StagingError] = Unauthorized if reply.status_code == 401 else StagingError
    exc = error(f"peer {peer!r} answered {reply.status_code}: {message}")
    if error is StagingError:
        exc.status = reply.status_code if 400 <= reply.status_code < 600 else 502
    reply.close()
    raise exc
