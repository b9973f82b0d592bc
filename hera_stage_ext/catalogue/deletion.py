"""Deleting instances so that no data can be lost, and offloading a store onto another.

The rule, in one place (``_may_delete``): an instance is deleted only when its deletion policy
is ``allowed`` and at least ``min_copies`` *other* verified copies of its file remain: instances
at this site whose last fixity check found them ``ok`` (and that are available), and copies at
peers that confirmed their checksum within ``peer_max_age`` (``remote_instance.time``). A file's
last copy is never deleted, whatever the settings (``min_copies`` is at least 1). The check and
the instance's removal from service happen in one transaction that locks the file's row, so two
deletions of a file's two copies cannot each count the other.

Order of a deletion: the instance is made unavailable (committed), its bytes are removed, then
its row goes with an ``instance-deleted`` event. If removing the bytes fails the instance is
made available again and counted as an error; nothing else changed.

Offload (v1's ``initiate_offload``): every instance of a source store is copied to a
destination store at the same path, verified (``replicate.copy_verified``), registered there as
an ``ok`` instance, and the source instance is then deleted under the same rule (its policy is
set to ``allowed`` first, as v1 did, with an event).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from ..errors import Conflict, InvalidRequest, NotFound, StagingError
from ..states import BAD_FIXITY_STATES, FixityState
from ..transfer.models import RemoteInstance
from .db import Database
from .fixity import instance_location, verify_instance
from .catalogue import Catalogue
from .models import File, Instance, Store, utcnow
from .replicate import copy_verified, remove_path

log = logging.getLogger("hera_stage_ext")

DELETION_POLICIES = ("allowed", "disallowed")


@dataclass
class DeletionRule:
    """How many other verified copies must remain, and how recent a peer's confirmation must be
    for its copy to count."""

    min_copies: int = 1
    peer_max_age: dt.timedelta = dt.timedelta(days=1)

    def __post_init__(self) -> None:
        self.min_copies = max(1, int(self.min_copies))  # the last copy is never deleted


def check_policy(policy: object) -> str:
    if policy not in DELETION_POLICIES:
        raise InvalidRequest(f"unknown deletion policy {policy!r}; use 'allowed' or "
                             "'disallowed'")
    return str(policy)


def _store_id(s: Any, store: str | None) -> int | None:
    if store is None:
        return None
    store_id = s.scalar(select(Store.id).where(Store.name == store))
    if store_id is None:
        raise NotFound(f"no store named {store!r}")
    return store_id


def set_policy(db: Database, name: str, policy: str, *, store: str | None = None,
               all_instances: bool = False, context: str = "") -> list[dict[str, Any]]:
    """Set the deletion policy of one instance of ``name`` (the first, on ``store`` if given;
    v1 changed one only, as a guard), or of every instance with ``all_instances``."""
    policy = check_policy(policy)
    with db.write() as s:
        file_id = s.scalar(select(File.id).where(File.name == name))
        if file_id is None:
            raise NotFound(f"no file named {name!r}")
        store_id = _store_id(s, store)
        query = select(Instance).where(Instance.file_id == file_id).order_by(Instance.id)
        if store_id is not None:
            query = query.where(Instance.store_id == store_id)
        instances = list(s.scalars(query))
        if not instances:
            raise NotFound(f"no instances of file {name!r}"
                           + (f" on store {store!r}" if store else "") + " on this site")
        changed = []
        for inst in instances if all_instances else instances[:1]:
            Catalogue(db).update_instances([(inst.id, {"deletion_policy": policy})], within=s)
            store_name = s.scalar(select(Store.name).where(Store.id == inst.store_id))
            payload = {"store": store_name, "path": inst.path, "new_policy": policy}
            if context:
                payload["context"] = context
            Catalogue(db).add_events(
                [(file_id, "instance-deletion-policy-changed", payload)], within=s)
            changed.append({"store": store_name, "path": inst.path, "deletion_policy": policy})
        return changed


def _other_verified_copies(s: Any, inst: Instance, rule: DeletionRule, now: dt.datetime
                           ) -> tuple[int, int]:
    local = s.scalar(
        select(func.count()).select_from(Instance).join(Store, Instance.store_id == Store.id)
        .where(Instance.file_id == inst.file_id, Instance.id != inst.id,
               Instance.fixity == FixityState.OK, Instance.available, Store.available)) or 0
    remote = s.scalar(
        select(func.count()).select_from(RemoteInstance)
        .where(RemoteInstance.file_id == inst.file_id,
               RemoteInstance.time >= now - rule.peer_max_age)) or 0
    return local, remote


def _may_delete(s: Any, inst: Instance, rule: DeletionRule, now: dt.datetime) -> str:
    """Why ``inst`` must be kept, or "" when it may be deleted (the one deletion rule)."""
    if inst.deletion_policy != "allowed":
        return f"its deletion policy is {inst.deletion_policy!r}"
    local, remote = _other_verified_copies(s, inst, rule, now)
    if local + remote < rule.min_copies:
        return (f"only {local} other verified copy(ies) here and {remote} confirmed at peers "
                f"within {rule.peer_max_age}; {rule.min_copies} needed")
    return ""


def delete_instances(db: Database, name: str, rule: DeletionRule, *,
                     store: str | None = None, dry_run: bool = False,
                     context: str = "") -> dict[str, Any]:
    """Delete the instances of ``name`` (those on ``store`` only, if given) that the rule
    allows. Returns v1's counts (``n_deleted``, ``n_kept``, ``n_error``) and, per instance,
    what happened and why (``instances``). ``dry_run``: decide, change nothing."""
    with db.read() as s:
        file_id = s.scalar(select(File.id).where(File.name == name))
        if file_id is None:
            raise NotFound(f"no file named {name!r}")
        store_id = _store_id(s, store)
        ids = list(s.scalars(select(Instance.id).where(Instance.file_id == file_id)
                             .order_by(Instance.id)))
    out: dict[str, Any] = {"n_deleted": 0, "n_kept": 0, "n_error": 0, "instances": []}
    for instance_id in ids:
        result = _delete_one(db, instance_id, store_id, rule, dry_run, context)
        if result is None:
            continue
        out["instances"].append(result)
        key = {"deleted": "n_deleted", "would-delete": "n_deleted", "kept": "n_kept"}
        out[key.get(result["outcome"], "n_error")] += 1
    return out


def _delete_one(db: Database, instance_id: int, store_id: int | None, rule: DeletionRule,
                dry_run: bool, context: str) -> dict[str, Any] | None:
    now = utcnow()
    with db.write() as s:
        inst = s.get(Instance, instance_id)
        if inst is None:
            return None
        # Lock the file's row: deletions of the same file's copies run one after the other.
        s.execute(select(File.id).where(File.id == inst.file_id).with_for_update())
        s.refresh(inst)
        store = s.get(Store, inst.store_id)
        assert store is not None  # an instance's store is never deleted (foreign key)
        where = {"store": store.name, "path": inst.path}
        if store_id is not None and inst.store_id != store_id:
            return {**where, "outcome": "kept", "reason": "on another store"}
        if store.kind != "online":
            return {**where, "outcome": "kept", "reason": "copies on cold stores are not "
                    "deleted from here"}
        reason = _may_delete(s, inst, rule, now)
        if reason:
            return {**where, "outcome": "kept", "reason": reason}
        if dry_run:
            return {**where, "outcome": "would-delete", "reason": ""}
        was_available = inst.available
        Catalogue(db).update_instances([(instance_id, {"available": False})], within=s)
        root, path, file_id = store.path, inst.path, inst.file_id
    try:
        remove_path(instance_location(root, path))
    except FileNotFoundError:
        pass  # already gone: the row goes all the same
    except (OSError, StagingError) as exc:
        detail = getattr(exc, "message", None) or str(exc)
        log.warning("deletion of %s:%s failed: %s", where["store"], path, detail)
        Catalogue(db).update_instances([(instance_id, {"available": was_available})])
        return {**where, "outcome": "error", "reason": detail}
    payload = {**where}
    if context:
        payload["context"] = context
    with db.write() as s:
        if not Catalogue(db).remove_instance(instance_id, ("instance-deleted", payload),
                                             within=s):
            Catalogue(db).add_events([(file_id, "instance-deleted", payload)], within=s)
    log.info("deleted instance %s:%s", where["store"], path)
    return {**where, "outcome": "deleted", "reason": ""}


class Offloader:
    """Offloads run one at a time, in a thread of the server (v1's ``initiate_offload``
    returned at once too); ``last`` is what the latest one did."""

    def __init__(self, db: Database, rule: DeletionRule) -> None:
        self.db, self.rule = db, rule
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None

    def launch(self, source: str, dest: str, batch: int = 200) -> dict[str, Any]:
        """v1's reply: ``{"outcome": "task-launched", "instance-count": n}``, or
        ``{"outcome": "store-shut-down"}`` when the source holds nothing more (it is then made
        unavailable, as v1 did)."""
        pending = pending_offload(self.db, source, dest, batch)
        if not pending:
            with self.db.write() as s:
                store = s.scalar(select(Store).where(Store.name == source))
                assert store is not None
                store.available = False
            return {"outcome": "store-shut-down"}
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise Conflict("an offload is running already; try again when it has finished")
            self._thread = threading.Thread(
                target=self._run, args=(source, dest, batch), name="hera-stage offload",
                daemon=True)
            self._thread.start()
        return {"outcome": "task-launched", "instance-count": len(pending)}

    def _run(self, source: str, dest: str, batch: int) -> None:
        try:
            self.last = offload(self.db, source, dest, self.rule, batch=batch)
        except Exception as exc:  # a background task must report, never vanish
            log.exception("offload %s -> %s failed", source, dest)
            self.last = {"source": source, "dest": dest, "error": str(exc)}

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def pending_offload(db: Database, source: str, dest: str, limit: int) -> list[int]:
    """Instances of ``source`` to offload: all of them (up to ``limit``), oldest first."""
    if source == dest:
        raise InvalidRequest("an offload needs two different stores")
    with db.read() as s:
        stores = {st.name: st for st in s.scalars(select(Store).where(
            Store.name.in_([source, dest])))}
        for name in (source, dest):
            if name not in stores:
                raise NotFound(f"no store named {name!r}")
        if stores[dest].kind != "online" or not stores[dest].available:
            raise InvalidRequest(f"store {dest!r} is not an available online store")
        if stores[source].kind != "online":
            raise InvalidRequest(f"store {source!r} is not an online store")
        return list(s.scalars(select(Instance.id).where(Instance.store_id == stores[source].id)
                              .order_by(Instance.id).limit(limit)))


def offload(db: Database, source: str, dest: str, rule: DeletionRule, *,
            batch: int = 200) -> dict[str, Any]:
    """Move up to ``batch`` instances of ``source`` onto ``dest``: each is copied (unless
    ``dest`` holds a verified copy already), verified, registered, and its source copy deleted
    under the deletion rule. Returns what happened to each."""
    moved, kept, failed = [], [], []
    pending = pending_offload(db, source, dest, batch)  # checks both stores first
    with db.read() as s:
        dest_id, dest_root = s.execute(select(Store.id, Store.path)
                                       .where(Store.name == dest)).one()
    for instance_id in pending:
        with db.read() as s:
            row = s.execute(
                select(File.id, File.name, File.size, File.checksums, Instance.path,
                       Instance.deletion_policy, Instance.fixity, Store.path)
                .join(Instance, Instance.file_id == File.id)
                .join(Store, Instance.store_id == Store.id)
                .where(Instance.id == instance_id)).first()
            if row is None:
                continue
            file_id, name, size, sums, path, policy, fixity, root = row
            there = s.scalar(select(Instance.id).where(Instance.file_id == file_id,
                                                       Instance.store_id == dest_id))
        try:
            if fixity in BAD_FIXITY_STATES:
                raise Conflict(f"the copy on {source!r} is {fixity}; repair it first")
            if there is not None:
                # A copy there already: it counts once it checks ok now.
                if verify_instance(db, there, context="offload").state != FixityState.OK:
                    raise Conflict(f"the copy on {dest!r} is bad; repair it first")
            else:
                if _path_taken(db, dest_id, path):
                    raise Conflict(f"{dest}:{path} holds another file")
                final = instance_location(dest_root, path)
                copy_verified(instance_location(root, path), final, size, dict(sums))
                _register_copy(db, file_id, dest_id, dest, path, policy)
        except (OSError, StagingError) as exc:
            failed.append({"name": name, "reason": getattr(exc, "message", None) or str(exc)})
            continue
        set_policy(db, name, "allowed", store=source, context="offload")
        result = delete_instances(db, name, rule, store=source, context="offload")
        if result["n_deleted"]:
            moved.append(name)
        else:
            kept.append({"name": name, "reason": "; ".join(
                i["reason"] for i in result["instances"] if i["store"] == source)})
    log.info("offload %s -> %s: %d moved, %d kept, %d failed", source, dest, len(moved),
             len(kept), len(failed))
    return {"source": source, "dest": dest, "moved": moved, "kept": kept, "failed": failed}


def _path_taken(db: Database, store_id: int, path: str) -> bool:
    with db.read() as s:
        return s.scalar(select(Instance.id).where(Instance.store_id == store_id,
                                                  Instance.path == path)) is not None


def _register_copy(db: Database, file_id: int, store_id: int, store: str, path: str,
                   policy: str) -> None:
    """Record a verified copy made by an offload."""
    Catalogue(db).add_instance(
        file_id, store_id, path, deletion_policy=policy, fixity=FixityState.OK,
        verified_at=utcnow(), fixity_detail="verified when copied by an offload",
        event=("instance-added", {"store": store, "path": path, "context": "offload"}))
