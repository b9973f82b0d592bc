"""The replies of the native REST API as pydantic models, for the OpenAPI document (and, through
it, the panel's TypeScript types). The core builds its replies as plain JSON; these classes
say what they hold (``tests/test_auth.py`` checks real replies against the document). A reply
may hold more fields than a model names; a field with a default here may be absent (the
document states no default for replies).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

StoreKind = Literal["online", "cold"]
# ``states.py``'s states spelt out, so the document shows them in place (as the panel's types
# expect); tests/test_openapi_models.py keeps them equal to the enums.
FixityState = Literal["unchecked", "ok", "bad", "missing"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobMarker = Literal["STAGING-IN-PROGRESS", "STAGING-SUCCEEDED", "STAGING-ERRORS"]


class Reply(BaseModel):
    """A reply: its fields as documented; more may come."""


class Error(Reply):
    """Every 4xx and 5xx of the API: 'error' (its kind) and a 'message' for people."""

    error: str = ""
    message: str


class Instance(Reply):
    file: str
    store: str
    path: str = Field(description="Relative to the store's root.")
    full_path: str
    available: bool
    store_kind: StoreKind = "online"
    deletion_policy: Literal["allowed", "disallowed"]
    create_time: datetime | None = None
    fixity: FixityState = Field("unchecked", description="What the copy's last fixity check "
                                "found; a bad or missing copy is unavailable.")
    verified_at: datetime | None = None


class File(Reply):
    name: str
    type: str
    size: int
    is_directory: bool = False
    checksums: dict[str, str] = Field(description="Algorithm ('md5', 'xxh3-128') to lowercase "
                                      "hex digest.")
    create_time: datetime
    obsid: int | None
    source: str = ""
    metadata: dict[str, Any] = {}
    instances: list[Instance] = []


class Observation(Reply):
    obsid: int
    start_time_jd: float
    stop_time_jd: float
    start_lst_hr: float
    session_id: int | None


class Session(Reply):
    id: int
    start_time_jd: float
    stop_time_jd: float


class Event(Reply):
    type: str
    time: datetime
    payload: dict[str, Any]


class FileDetail(File):
    instances: list[Instance]
    observation: Observation | None
    events: list[Event]


class Store(Reply):
    name: str
    path: str
    kind: StoreKind
    available: bool
    ssh_host: str = ""
    options: dict[str, Any] = Field({}, description="A cold store's buffer, buffer_bytes and "
                                    "volume_key.")
    instances: int = 0


class StoreList(Reply):
    stores: list[Store]


class Status(Reply):
    version: str
    site_name: str
    database: Literal["sqlite", "postgresql"]
    counts: dict[str, int]
    allow_ingest: bool
    user: str | None = None


class SearchReply(Reply):
    kind: str
    results: list[dict[str, Any]] = Field(description="File, Instance, Observation or "
                                          "Session rows, by kind.")
    next_cursor: str | None
    total: int | None = Field(description="The number of matches (null unless 'count').")
    search: Any = Field(description="The JSON search that ran (a 'query' translated).")


class IngestReply(Reply):
    matched: int = 0
    unchanged: int = 0
    registered: int = 0
    instances_added: int = 0
    store: str = ""
    todo: list[str] = []
    errors: list[dict[str, Any]]


class DryRun(Reply):
    destination: str
    method: str
    files: int
    bytes: int
    missing: list[str]
    bytes_needed: int = 0
    free_bytes: int | None = Field(description="null: not a local file system (method "
                                   "contents with a manager that is not file-based), free space "
                                   "unknown.")
    fits: bool
    already_there: int | None = Field(None, description="Files whose final name already "
                                      "holds them (same size and checksum): the job skips them. "
                                      "null: the destination cannot be looked at from here.")
    already_there_bytes: int | None = None
    conflicts: int | None = Field(None, description="Final names holding something else: "
                                  "those files fail (nothing is overwritten).")
    not_checked: int = Field(0, description="Files not looked at (the preview's work is "
                             "bounded: 10,000 names, 256 MiB hashed); the job still skips or "
                             "refuses each as it comes.")
    busy_job: int | None = Field(None, description="An unfinished job already staging into "
                                 "this folder: a launch is refused until it ends (or is "
                                 "cancelled).")


class Job(Reply):
    id: int
    owner: str
    kind: str
    state: JobState
    destination: str
    method: str
    search: Any = None
    files_total: int
    bytes_total: int
    files_done: int
    bytes_done: int
    bytes_moving: int = Field(0, description="Bytes written (or received by the peer) and not "
                              "yet committed: progress inside files, never counted in "
                              "bytes_done; 0 unless the job is running. Progress in bytes is "
                              "bytes_done + bytes_moving (rate_bytes_per_s and eta_s use it).")
    files_failed: int
    files_skipped: int
    missing: list[str]
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    rate_bytes_per_s: float | None = None
    eta_s: float | None = None
    marker: JobMarker | None = Field(None, description="The marker file in the destination now "
                                     "(GET jobs and jobs/{job_id} only); null: none.")


class JobList(Reply):
    jobs: list[Job]


class JobDeleted(Reply):
    deleted: int = Field(description="The id of the job forgotten.")


class JobLog(Reply):
    text: str
    next_offset: int


class Member(Reply):
    path: str
    size: int | None
    type: Literal["file", "folder", "link"]


class Members(Reply):
    name: str
    members: list[Member] = Field(description="At most 10,000.")
    truncated: bool


class Peer(Reply):
    name: str
    url: str | None = Field(description="null: a site that only sends here, or an rclone peer.")
    reachable: bool | None = Field(description="An authenticated ping answered (null: not "
                                   "pinged).")
    site: str | None = Field(description="The site name it answered with.")
    error: str
    accepts_from: bool = Field(description="This site accepts transfers from it.")
    type: Literal["rclone"] = Field("rclone", description="Only on a peer reached with rclone.")
    remote: str = Field("", description="An rclone peer's remote and path.")


class PeerList(Reply):
    peers: list[Peer]


class StandingOrder(Reply):
    name: str
    owner: str
    peer: str
    search: dict[str, Any] | list[Any] = Field(description="The JSON search it runs.")
    query: str = Field(description="The one-line text it was given as ('' when given as JSON).")
    paused: bool
    created_at: str
    last_evaluated_at: str | None
    last_launched_at: str | None
    last_job_id: int | None = Field(description="The transfer job its last launch created.")
    last_files: int = Field(description="Files that job sends.")
    last_message: str = Field(description="What the last evaluation did.")


class StandingOrderList(Reply):
    standing_orders: list[StandingOrder]


class OrderDeleted(Reply):
    deleted: str = Field(description="The name of the order deleted.")


class FixityFinding(Reply):
    name: str
    store: str
    path: str
    state: FixityState
    detail: str
    verified_at: datetime | None = None


class FixityReport(Reply):
    instances: list[FixityFinding]
    summary: dict[str, int]
    oldest_check: datetime | None


class FixityChecks(Reply):
    instances: list[FixityFinding]


class PathReason(Reply):
    path: str
    reason: str


class StagedFolder(Reply):
    """A staged folder of yours and what it holds of what was staged."""

    destination: str = Field(description="Absolute path on the server.")
    jobs: list[int] = Field(description="The stage jobs that staged into it.")
    files: int
    bytes: int
    expires_at: str | None = Field(description="null: never.")
    expired: bool
    created_at: str | None
    finished_at: str | None
    made: bool = Field(description="The engine made the folder (then it goes once empty).")
    state: Literal["intact", "changed", "gone", "moved", "busy", "unchecked"] = Field(
        description="intact: every staged entry there by name, kind and size, nothing else; "
        "changed: entries missing or changed, or other files beside them; gone: no folder; "
        "moved: the path leads elsewhere now (nothing is read through it); busy: a job still "
        "stages into it; unchecked: a site service's view (its records only).")
    reason: str = Field("", description="Why it is gone, moved or busy.")
    present_files: int = 0
    present_bytes: int = 0
    missing: list[str] = Field([], description="The first of the staged entries not there.")
    missing_count: int = 0
    changed: list[PathReason] = Field([], description="The first of the entries changed.")
    changed_count: int = 0
    foreign: list[str] = Field([], description="The first of what was not staged (kept, "
                               "always); folders end in '/'.")
    foreign_count: int = 0
    verified: bool = Field(False, description="Checked by checksum (a clean), not only by "
                           "name, kind and size.")


class StagedListing(Reply):
    """Your staged folders and how much staged data you hold where, with your quota."""

    folders: list[StagedFolder]
    total_bytes: int
    expired_bytes: int = 0
    unexpired_bytes: int = Field(description="What a quota counts: unexpired staged bytes, "
                                 "plus what unfinished jobs will stage.")
    quota_bytes: int | None
    by_root: dict[str, int] = Field({}, description="Bytes per allowed root (absolute path).")


class CleanedFolder(StagedFolder):
    """A folder of a clean's report: what was (or would be) removed, what stays and why."""

    would_remove_files: int = Field(0, description="A dry run's.")
    would_remove_bytes: int = Field(0, description="A dry run's.")
    removed_files: int = 0
    removed_bytes: int = 0
    folder_removed: bool = False
    errors: list[PathReason] = []


class CleanReport(Reply):
    dry_run: bool
    folders: list[CleanedFolder]
    removed_files: int
    removed_bytes: int
    cleaned_jobs: list[int] = Field(description="The jobs whose folders are clean now (no "
                                    "longer listed).")


#: Every reply, for the OpenAPI document.
REPLY_MODELS: tuple[type[Reply], ...] = (
    Error, Instance, File, Observation, Session, Event, FileDetail, Store, StoreList, Status,
    SearchReply, IngestReply, DryRun, Job, JobList, JobDeleted, JobLog, Member, Members, Peer,
    PeerList, StandingOrder, StandingOrderList, OrderDeleted, FixityFinding, FixityReport,
    FixityChecks, PathReason, StagedFolder, StagedListing, CleanedFolder, CleanReport,
)
