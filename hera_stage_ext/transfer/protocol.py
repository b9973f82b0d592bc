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
    one is tried again, a committed one is ``have``.
``POST status``  sender -> receiver. ``{"names": [...]}`` -> ``{"files": [{"name", "state",
    "bytes", "attempts", "error"}]}``; state ``queued``, ``receiving``, ``committed``, ``failed``
    or ``unknown``. The sender polls until every file is committed or failed.
``GET files/<name>/content``  receiver -> sender, with ``Range: bytes=<offset>-``: the bytes (the
    receiver PULLS: tornado serves fast and receives slowly). It resumes a broken pull from the
    bytes already received.
``GET ping``  -> ``{"site": <answering site>, "peer": <the caller as authenticated>}``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import requests

from ..catalogue import checksums as ck
from ..catalogue.catalogue import FileSpec
from ..catalogue.naming import ObservationInfo, validate_name
from ..errors import InvalidRequest, StagingError, Unauthorized, Unavailable
from ..paths import check_text
from .peers import Peer

PEER_PREFIX = "hera-stage/peer/"

SEND, HAVE, CONFLICT, NO_SPACE, REFUSED = "send", "have", "conflict", "no-space", "refused"
ANSWERS = (SEND, HAVE, CONFLICT, NO_SPACE, REFUSED)
#: Most offers in one announce (keeps its body well under the 1 MiB limit).
MAX_OFFERS = 500
CHUNK = 1 << 20

_OBSERVATION_FIELDS = ("obsid", "start_time_jd", "stop_time_jd", "start_lst_hr", "session_id")


def offer_from_detail(detail: dict[str, Any], path: str) -> dict[str, Any]:
    """An announce offer from ``Catalogue.file_detail`` and the instance's store path."""
    obs = detail.get("observation")
    return {
        "name": detail["name"], "size": detail["size"], "checksums": detail["checksums"],
        "path": path, "is_directory": detail["is_directory"], "obsid": detail["obsid"],
        "create_time": detail["create_time"], "source": detail.get("source", ""),
        "meta": detail.get("metadata") or {},
        "observation": {k: obs[k] for k in _OBSERVATION_FIELDS} if obs else None,
    }


def check_offer(offer: Any) -> dict[str, Any]:
    """Validate one offer from a peer (InvalidRequest naming the problem)."""
    if not isinstance(offer, dict):
        raise InvalidRequest("each offer must be an object")
    validate_name(offer.get("name"))
    size = offer.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"{offer['name']}: size must be a non-negative integer")
    if not isinstance(offer.get("checksums"), dict) or not offer["checksums"]:
        raise InvalidRequest(f"{offer['name']}: checksums are required")
    checksums = ck.normalise(offer["checksums"])
    path = check_text(offer.get("path", offer["name"]), "path")
    if path.startswith("/") or ".." in path.split("/"):
        raise InvalidRequest(f"{offer['name']}: path must be relative, without '..'")
    if not isinstance(offer.get("meta", {}), dict):
        raise InvalidRequest(f"{offer['name']}: meta must be an object")
    obs = offer.get("observation")
    if obs is not None and (not isinstance(obs, dict) or set(obs) != set(_OBSERVATION_FIELDS)):
        raise InvalidRequest(f"{offer['name']}: observation needs {_OBSERVATION_FIELDS}")
    return {**offer, "path": path, "checksums": checksums}


def spec_from_offer(offer: dict[str, Any], peer: str) -> FileSpec:
    created = offer.get("create_time")
    obs = offer.get("observation")
    return FileSpec(
        name=offer["name"], size=offer["size"], checksums=dict(offer["checksums"]),
        is_directory=bool(offer.get("is_directory")),
        source=offer.get("source") or f"peer:{peer}",
        obsid=offer.get("obsid"),
        create_time=dt.datetime.fromisoformat(created.rstrip("Z")) if created else None,
        meta=dict(offer.get("meta") or {}),
        observation=ObservationInfo(**obs) if obs else None,
    )


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

    def status(self, names: Sequence[str]) -> dict[str, Any]:
        return self._json("POST", "status", {"names": list(names)})

    def content(self, name: str, offset: int) -> Iterator[bytes]:
        """The bytes of ``name`` from ``offset`` on, streamed in chunks."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            reply = self.session.get(self._url(f"files/{requests.utils.quote(name)}/content"),
                                     headers=headers, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"peer {self.peer.name!r} is unreachable: "
                              f"{type(exc).__name__}") from None
        _checked(self.peer.name, reply)
        if offset and reply.status_code != 206:
            reply.close()
            raise Unavailable(f"peer {self.peer.name!r} ignored the Range of {name!r}")
        try:
            yield from reply.iter_content(CHUNK)
        except requests.RequestException as exc:
            raise Unavailable(f"pull of {name!r} from {self.peer.name!r} broke: "
                              f"{type(exc).__name__}") from None
        finally:
            reply.close()


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
