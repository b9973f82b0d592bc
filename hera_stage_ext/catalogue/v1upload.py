"""The Librarian v1 upload pair, ``initiate_upload`` / ``complete_upload``, on this catalogue.

v1's client asks for a staging folder (``initiate_upload``: the store with the most free space,
or the one named; the folder is relative to the store's root), copies the file there itself
(rsync over ssh: not ours), then asks the server to finish (``complete_upload``): the staged
file is checksummed, registered (``meta_mode`` "direct": the file records sent with
``initiate_upload`` must match; "infer": from the bytes and the name), moved to its place in the
store without overwriting anything, and recorded as a copy verified now, with the deletion policy
asked for.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from typing import Any

from sqlalchemy import select

from ..errors import Conflict, InvalidRequest, NotFound
from ..states import FixityState
from . import checksums as ck
from .catalogue import Catalogue, FileSpec
from .deletion import check_policy
from .fixity import instance_location
from .models import Instance, Store, utcnow
from .naming import ObservationInfo

#: Folder (in a store's root) of the staging folders uploads are copied into.
STAGING_FOLDER = ".hera-stage-uploads"


def _store_roots(catalogue: Catalogue) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in catalogue.stores() if s["available"] and s["kind"] == "online"}


def initiate(catalogue: Catalogue, request: dict[str, Any], source: str) -> dict[str, Any]:
    size = request.get("upload_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidRequest('"upload_size" must be a non-negative integer')
    known_store, known_subdir = request.get("known_staging_store"), \
        request.get("known_staging_subdir")
    if (known_store is None) != (known_subdir is None):
        raise InvalidRequest('if "known_staging_store" is specified, so must '
                             '"known_staging_subdir", and vice versa')
    stores = _store_roots(catalogue)
    if known_store is not None:
        if known_store not in stores:
            raise NotFound(f"no available online store named {known_store!r}")
        chosen: dict[str, Any] | None = stores[known_store]
    elif stores:
        chosen = max(stores.values(), key=lambda st: shutil.disk_usage(st["path"]).free)
    else:
        chosen = None
    if chosen is None:
        raise InvalidRequest("this site has no available online store")
    free = shutil.disk_usage(chosen["path"]).free
    if free < size:
        raise InvalidRequest(f"unable to find a store able to hold {size} bytes")
    if known_subdir is not None:
        instance_location(chosen["path"], str(known_subdir))  # confined to the store
        staging_dir = str(known_subdir)
    else:
        parent = os.path.join(chosen["path"], STAGING_FOLDER)
        os.makedirs(parent, exist_ok=True)
        staging_dir = os.path.relpath(tempfile.mkdtemp(prefix="staging-", dir=parent),
                                      chosen["path"])
    _create_records(catalogue, request, source)
    return {"name": chosen["name"], "ssh_host": chosen["ssh_host"],
            "path_prefix": chosen["path"], "available": free, "staging_dir": staging_dir}


def _create_records(catalogue: Catalogue, request: dict[str, Any], source: str) -> None:
    """Register the file records a v1 client sends (``files``, with their ``observations``
    and ``sessions``), as v1's ``create_records`` did."""
    files = request.get("files") or {}
    if not files:
        return
    if not isinstance(files, dict):
        raise InvalidRequest('"files" must be an object of file records')
    observations = request.get("observations") or {}
    sessions = request.get("sessions") or {}
    specs = []
    for info in files.values():
        try:
            obs = observations.get(str(info.get("obsid"))) if info.get("obsid") else None
            observation = None
            if obs is not None:
                observation = ObservationInfo(
                    int(obs["obsid"]), float(obs["start_time_jd"]), float(obs["stop_time_jd"]),
                    float(obs["start_lst_hr"]), int(obs.get("session_id") or obs["obsid"]))
                if str(observation.session_id) not in sessions and obs.get("session_id"):
                    raise InvalidRequest(f"session {observation.session_id} is not described")
            specs.append(FileSpec(
                name=str(info["name"]), size=int(info["size"]), checksums={"md5": info["md5"]},
                source=source, obsid=observation.obsid if observation else None,
                create_time=dt.datetime.fromtimestamp(int(info["create_time"]), dt.timezone.utc)
                .replace(tzinfo=None), observation=observation))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequest(f"malformed file record: {exc!r}") from None
    catalogue.register(specs)


def _required_text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f'"{key}" is required')
    return value


def complete(catalogue: Catalogue, request: dict[str, Any], source: str) -> dict[str, Any]:
    store_name, staging_dir, dest = (_required_text(request, key)
                                     for key in ("store_name", "staging_dir", "dest_store_path"))
    meta_mode = request.get("meta_mode")
    if meta_mode not in ("direct", "infer"):
        raise InvalidRequest('"meta_mode" must be "direct" or "infer"')
    policy = request.get("deletion_policy", "disallowed")
    try:
        policy = check_policy(policy)
    except InvalidRequest:
        policy = "disallowed"  # v1: the bytes are here already; the safe choice, not an error
    stores = _store_roots(catalogue)
    if store_name not in stores:
        raise NotFound(f"no available online store named {store_name!r}")
    root = stores[store_name]["path"]
    name = os.path.basename(dest)
    staged = instance_location(root, os.path.join(staging_dir, name))
    final = instance_location(root, dest)
    if not os.path.lexists(staged):
        raise NotFound(f"nothing was uploaded at {staging_dir}/{name}")
    if os.path.lexists(final):
        raise Conflict(f"{store_name}:{dest} exists already")
    digest = ck.hash_path(staged)
    if meta_mode == "direct":
        catalogue.file_detail(name)  # NotFound: the records were not sent
    spec = FileSpec(name=name, size=digest.size, checksums=digest.checksums,
                    is_directory=digest.is_directory, source=source)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(staged, final)
    try:
        catalogue.register([spec], store=store_name, paths=[dest])
    except Exception:
        os.rename(final, staged)  # nothing registered: the upload stays where it was
        raise
    with catalogue.db.write() as s:
        store_id = s.scalar(select(Store.id).where(Store.name == store_name))
        instance_id = s.scalar(select(Instance.id).where(Instance.store_id == store_id,
                                                         Instance.path == dest))
        if instance_id is not None:
            catalogue.update_instances([(instance_id, {
                "deletion_policy": policy, "fixity": FixityState.OK, "verified_at": utcnow(),
                "fixity_detail": "verified when the upload completed"})], within=s)
    if not request.get("staging_was_known"):
        _remove_staging(root, staging_dir)
    return {}


def _remove_staging(root: str, staging_dir: str) -> None:
    """Remove a staging folder this module made: only ever one directly inside the store's
    staging area (a request naming any other folder removes nothing)."""
    area = os.path.realpath(os.path.join(root, STAGING_FOLDER))
    folder = os.path.realpath(os.path.join(root, staging_dir))
    if os.path.dirname(folder) == area and os.path.basename(folder).startswith("staging-"):
        shutil.rmtree(folder, ignore_errors=True)
