"""StagingApp: the Jupyter server extension. Owns configuration (traitlets) and wiring.

Every setting is a trait on ``StagingApp`` (``c.StagingApp.db_url = ...`` in
``jupyter_server_config.py`` or ``jupyter_hera_stage_ext_config.py``). ``initialize_settings``
opens the catalogue and hands the core objects to the handlers through tornado settings;
the handlers themselves live in ``api/``. With ``site_url`` set (site mode, a user's server at
a site) it opens nothing of the site's and forwards the REST API to the site service instead
(``api/forward.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, default, validate

from . import metrics
from .api.events import JOB_PROGRESS_SCHEMA, JobProgressNotifier, SiteJobs
from .api.forward import (ANSWER_TIMEOUT_S, SITE_KEY, SiteClient, SiteConfigError,
                          check_forbidden, forward_handlers, site_token)
from .api.orders import ORDERS_KEY
from .api.routes import handlers as api_handlers
from .api.ticker import Ticker
from .catalogue.catalogue import Catalogue
from .catalogue.cold import check_stores as check_cold_stores
from .catalogue.db import Database, default_sqlite_url
from .catalogue.deletion import DeletionRule
from .catalogue.fixity import Auditor
from .catalogue.ingest import Ingester
from .catalogue.naming import (
    DEFAULT_LONGITUDE_DEG,
    DEFAULT_OBSERVATION_SECONDS,
    DEFAULT_OBSID_PATTERN,
    ObservationNamer,
)
from .catalogue.search import MAX_LIMIT
from .core import Core
from .jobs.joblog import prepare_log_dir
from .jobs.launcher import WorkerLauncher
from .jobs.worker import quiet_garbage_collector
from .standard_kinds import standard_kinds
from .stewardship import Stewardship
from .transfer.orders import StandingOrders
from .transfer.peer_config import parse_peers, peers_env
from .transfer.peers import PeerRegistry, check_secret_hashes
from .transfer.receiver import Receiver
from .transfer.repair import PeerRepairSource
from .version import __version__

if TYPE_CHECKING:
    from jupyter_events import EventLogger
    from jupyter_server.serverapp import ServerApp

SETTINGS_KEY = "hera_stage"


def drop_unwritten_debug(log: logging.Logger) -> None:
    """Let ``log`` drop a debug message at once when none of its handlers would write it.

    Jupyter's application logger is at DEBUG with its handler at the server's log level
    (traitlets' logging set-up), and jupyter_server logs every reply below 300 at debug: each
    request's access line was made into a record (caller, thread, process, time) only for the
    handler to drop it, about 2% of a search's CPU. Its own level is raised to its handlers'
    lowest, which writes exactly what was written before, and only when nothing else could
    write a debug record: the logger does not propagate, every handler has a level, and no
    logger below it has handlers of its own (its level would reach theirs)."""
    if log.level != logging.DEBUG or log.propagate or not log.handlers:
        return
    lowest = min(handler.level for handler in log.handlers)
    if lowest <= logging.DEBUG:
        return
    prefix = log.name + "."
    for name, below in list(log.manager.loggerDict.items()):
        if name.startswith(prefix) and isinstance(below, logging.Logger) and below.handlers:
            return
    log.setLevel(lowest)


class StagingApp(ExtensionApp):
    name = "hera_stage_ext"
    description = "Search a HERA-style archive, stage its files, move them between sites."
    load_other_extensions = True

    mode = Enum(
        ["user", "site"], default_value="user",
        help="""user: this server is one user's (single-user mode, the default). site: this
        server is the site service (``hera-stage site`` sets it): every request is one
        authenticated user's, stage jobs are recorded for the users' own workers, and the
        service's worker runs only the site's jobs (transfers, uploads, recalls from cold
        stores).""",
    ).tag(config=True)

    db_url = Unicode(
        help="""SQLAlchemy URL of the catalogue database. Default: a SQLite file in the Jupyter
        data directory (local disk; do not put SQLite on NFS). Shared sites use PostgreSQL:
        postgresql+psycopg://user@host/dbname""",
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self) -> str:
        return default_sqlite_url(Path(jupyter_data_dir()) / "hera_stage_ext")

    stores = Dict(
        help="""Stores by name: {"name": {"path": "/data/store1", "kind": "online" | "cold",
        "available": true, "ssh_host": ""}}. Stores dropped from this setting become
        unavailable; their instances stay in the catalogue. A cold store also names its
        "buffer" (an online store its files are recalled into before a job uses them), and
        may set "buffer_bytes" (cap on recalled bytes not yet used, default 10 GiB) and
        "volume_key" (regular expression on the instance path whose first group is the tape
        and optional second group the file's position on it, a number or text; default
        "^([^/]+)/", the first path component).""",
    ).tag(config=True)

    site_url = Unicode(
        "",
        help="""Site mode: the site service this server forwards its REST API to, e.g.
        "http://127.0.0.1:8000/services/hera-stage/" (through JupyterHub's proxy) or the
        service's own address. This server then opens no database and holds no site secret
        (db_url, peers, peer_secrets and librarian_authenticators are refused here: they are
        the service's); it authenticates to the service with the user's token (see
        site_token_file) and checks staging destinations against allowed_roots before
        forwarding them. The user's worker claims the user's jobs from the service. Empty:
        single-user mode, everything in this server.""",
    ).tag(config=True)

    @validate("site_url")
    def _check_site_url(self, proposal: dict[str, Any]) -> str:
        url = proposal["value"].strip()
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"site_url must be an http(s) URL, not {url!r}")
        return url and url.rstrip("/") + "/"

    site_token_file = Unicode(
        "",
        help="""Site mode without JupyterHub: a file holding the user's token for the site
        service (what `hera-stage site-token issue` printed). It must be a regular file of
        this user with mode 0600; the server refuses to start otherwise. Used only when
        neither $JUPYTERHUB_API_TOKEN (under a hub) nor $HERA_STAGE_SITE_TOKEN is set.""",
    ).tag(config=True)

    site_request_timeout = Float(
        ANSWER_TIMEOUT_S,
        help="""Site mode: seconds a request forwarded to the site service may wait for its
        answer; a service that does not answer in time gives the user a 504 with a message.
        Calls whose work grows with the data (ingest, offload, a fixity audit, deleting
        instances, a repair) wait up to an hour; a file's contents must begin within this
        time and then never pause longer, however long the whole download takes. Keep it
        under the notebook client's 60 s, so that the CLI shows the service's message.""",
    ).tag(config=True)

    @validate("site_request_timeout")
    def _check_site_request_timeout(self, proposal: dict[str, Any]) -> float:
        if not proposal["value"] > 0:
            raise ValueError("site_request_timeout must be a number of seconds above 0")
        return float(proposal["value"])

    allowed_roots = List(
        Unicode(),
        help="""Folders staging may write into (after resolving symlinks). Default: the Jupyter
        server's root directory.""",
    ).tag(config=True)

    librarian_authenticators = Dict(
        value_trait=Unicode(),
        help="""Authenticator strings accepted by the Librarian-compatible RPC
        (librarian/api/<op>), each mapped to the source name it acts as.""",
    ).tag(config=True)

    allow_ingest = Bool(
        True,
        help="""Whether users of this server may register files (POST ingest). Turn off on
        shared sites whose users must not change the catalogue.""",
    ).tag(config=True)

    site_name = Unicode(
        help="Name of this site in events and in other sites' remote-instance records."
    ).tag(config=True)

    @default("site_name")
    def _default_site_name(self) -> str:
        return os.uname().nodename

    obsid_pattern = Unicode(
        DEFAULT_OBSID_PATTERN,
        help="""Regular expression that finds a file's observation in its name, with a named
        group 'jd' (Julian date of the start) or 'obsid' (GPS seconds).""",
    ).tag(config=True)

    site_longitude_deg = Float(
        DEFAULT_LONGITUDE_DEG, help="East longitude of the telescope, for LST of observations."
    ).tag(config=True)

    observation_seconds = Float(
        DEFAULT_OBSERVATION_SECONDS, help="Length of one observation, for its stop time."
    ).tag(config=True)

    checksum_workers = Int(
        4, help="Threads computing checksums in parallel during ingest."
    ).tag(config=True)

    max_search_limit = Int(
        MAX_LIMIT, help="Largest page a search may ask for (the REST API's OpenAPI document "
        "states it)."
    ).tag(config=True)

    max_rpc_results = Int(
        100_000, help="Most rows one Librarian RPC search may list (it has no pagination)."
    ).tag(config=True)

    search_timeout_seconds = Float(
        10.0,
        help="""Longest one search may run before it is cancelled and answered 503 with a
        message (0: no limit), so one costly search cannot hold the database for everyone.
        PostgreSQL: each statement's statement_timeout; SQLite: the whole search.""",
    ).tag(config=True)

    start_worker = Bool(
        True,
        help="""Start a worker process for staging jobs when there is work. Turn off where
        workers are run as services of their own (python -m hera_stage_ext.jobs.worker).""",
    ).tag(config=True)

    worker_streams = Int(4, help="Files a worker copies in parallel within one job.").tag(
        config=True
    )

    worker_jobs = Int(
        4, help="Jobs a worker runs at once (each with worker_streams streams): a transfer "
        "waiting for its peer's hours, or one large job, does not hold up the others.",
    ).tag(config=True)
    worker_copy_processes = Int(
        0,
        help="Helper processes of a worker that copy small files (the per-file work of many "
        "small files then runs on every core); 0 means one per CPU core of the machine.",
    ).tag(config=True)
    worker_nice = Int(
        10,
        help="How far the server's worker lowers its CPU priority (nice, 0-19), it and its "
        "copy helpers: when the CPU is short, the server's requests and the user's kernels go "
        "first and a staging job takes what is left (its disk I/O is not affected). 0 keeps "
        "the server's priority.",
    ).tag(config=True)
    worker_idle_exit_seconds = Float(
        120.0, help="A server-started worker exits after this long without a job."
    ).tag(config=True)
    worker_fsync = Bool(
        True,
        help="Make every copy of the user's worker durable before it takes its final name "
        "(its data synced to disk). False (the worker's --no-fsync): its copies go through "
        "the page cache and the kernel writes them back when it will, as `cp` does, and a "
        "power cut may lose them; stage jobs, and in single-user mode its uploads and recalls "
        "too (a site service's own worker always syncs). Every byte is verified either way.",
    ).tag(config=True)

    job_log_dir = Unicode(
        help="Folder of the per-job logs and the worker's own log. Default: in the Jupyter "
        "data directory."
    ).tag(config=True)

    @default("job_log_dir")
    def _default_job_log_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "hera_stage_ext" / "logs")

    job_log_group = Unicode(
        "", help="A group allowed to read the job logs (e.g. the site's operators): the log "
        "folder is then 2750 in that group and each log 0640. Empty: logs are private to the "
        "user (folder 0700, logs 0600). Logs name the user's paths.",
    ).tag(config=True)

    staged_read_only = Bool(
        True, help="Make staged files read-only (they are immutable archive data)."
    ).tag(config=True)

    staged_expiry_days = Float(
        0.0, help="""Default expiry of a staged folder, in days after launch, when the request
        gives none (expires_in / expires_at); `hera-stage clean --expired` removes expired
        folders. 0: staged folders do not expire unless asked.""",
    ).tag(config=True)

    staging_quota_bytes = Int(
        0, help="""Most bytes of unexpired staged data each user may hold (their finished
        jobs' staged bytes not cleaned yet, and what their queued and running jobs will stage);
        a launch past it is refused with a 403 naming the quota, the use and the request's
        size. 0: no quota.""",
    ).tag(config=True)

    service_log_file = Unicode(
        help="""The service log: every staging request (accepted or refused) and what the
        extension does. Default: service.log in job_log_dir. Empty string: no file."""
    ).tag(config=True)

    @default("service_log_file")
    def _default_service_log_file(self) -> str:
        return str(Path(self.job_log_dir) / "service.log")

    service_log_level = Enum(
        ["DEBUG", "INFO", "WARNING", "ERROR"], default_value="INFO",
        help="Lowest level written to the service log.",
    ).tag(config=True)

    owner = Unicode(
        help="""Who this server's staging jobs belong to. Default: $JUPYTERHUB_USER, else the
        system user running the server. Users sharing one catalogue see only their own jobs."""
    ).tag(config=True)

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    progress_interval_seconds = Float(
        1.0, help="How often job progress is read and pushed on the event bus."
    ).tag(config=True)

    max_stage_files = Int(
        1_000_000, help="Most files one staging job may take (a search resolved at launch)."
    ).tag(config=True)

    peers = Dict(
        help="""Sites this one sends to, by name (their site_name): {"karoo": {"url":
        "https://karoo.example/", "secret": "...", "max_bytes_per_s": 0, "max_in_flight": 0,
        "hours": "", "retry_max_s": 300}}. url: the peer server's base URL; secret: what this
        site presents there (the peer stores its hash in its peer_secrets). A receiving site
        needs the sender here too: it pulls the bytes from the sender with this secret.
        max_bytes_per_s: limit on serving that peer's pulls, all of them together (0: none);
        max_in_flight: most files announced to it and not yet through, across all transfer
        jobs (0: no limit); hours: when transfer jobs may announce to it, local time, e.g.
        "20-06" (empty: any time); retry_max_s: cap of the backoff while it is unreachable.
        The server's worker gets this setting in its environment (restart the server to
        change it). A site without hera_stage_ext: {"type": "rclone", "remote":
        "myremote:bucket/path", "config": "/path/rclone.conf", "env": {"RCLONE_...": "..."},
        "verify": "auto"} (copied with rclone and verified there; see the admin guide).""",
    ).tag(config=True)

    peer_secrets = Dict(
        value_trait=Unicode(),
        help="""Sites this one accepts site-to-site requests from, each with the hash of the
        secret it presents: {"nrao": "sha256$<hex>"} (python -m
        hera_stage_ext.transfer.peers hash-secret).""",
    ).tag(config=True)

    receive_store = Unicode(
        "",
        help="""The store (a name in stores) that files sent by peers are written into,
        keeping the sender's sub-folder layout. Empty: this site accepts no transfers.""",
    ).tag(config=True)

    receive_streams = Int(
        2, help="Pulls from peers in parallel: one large file, or one batch of small files, "
        "each.").tag(config=True)

    receive_reserve_bytes = Int(
        0, help="Free space kept on the receiving store: offers that would eat into it are "
        "answered no-space."
    ).tag(config=True)

    receive_max_attempts = Int(
        5, help="Pulls of one file (after network errors or checksum mismatches) before it "
        "is reported failed; the sender announcing it again starts over."
    ).tag(config=True)

    receive_lease_seconds = Float(
        30.0, min=1.0, help="How long a pull's lease on its item runs (renewed six times a "
        "lease while the file is pulled): replicas of a site sharing one catalogue and store "
        "never pull one item at once, and one takes over the pulls of a replica that died "
        "once their leases ran out."
    ).tag(config=True)

    upload_store = Unicode(
        "",
        help="""The store (a name in stores) that bulk uploads to a peer (hera-stage upload
        --peer) copy and register the files in first, under a folder named after the uploaded
        directory, before a transfer job sends them. Empty: uploads to a peer are refused.""",
    ).tag(config=True)

    standing_order_interval_seconds = Float(
        300.0,
        help="""How often every active standing order is evaluated even when nothing new was
        ingested (files available again, failed sends retried). Orders are also evaluated
        when new instances are registered on this site (seen within
        standing_order_check_seconds) and right after one is created or resumed.""",
    ).tag(config=True)

    standing_order_check_seconds = Float(
        10.0,
        help="""How often the server looks for newly registered instances (one indexed read)
        and for due standing orders; 0: this server evaluates none of its user's orders.""",
    ).tag(config=True)

    fixity_bytes_per_hour = Float(
        20 * 2**30,
        help="""How many bytes of stored copies the fixity audit re-hashes per hour, on average
        (oldest check first, every online store). 0: no periodic audit (hera-stage fsck
        --check still checks a file on demand).""",
    ).tag(config=True)

    fixity_check_seconds = Float(
        60.0, help="How often the fixity audit runs (each run reads what its budget allows)."
    ).tag(config=True)

    fixity_pause_while_jobs = Bool(
        False, help="Whether the fixity audit waits while staging or transfer jobs run."
    ).tag(config=True)

    deletion_min_copies = Int(
        1,
        help="""Other verified copies a file must keep for one of its instances to be deleted
        (instances here whose last fixity check was ok, and copies at peers confirmed within
        deletion_peer_max_age_seconds). At least 1: a file's last copy is never deleted.""",
    ).tag(config=True)

    deletion_peer_max_age_seconds = Float(
        86400.0,
        help="How recent a peer's confirmation of its copy's checksum must be for that copy "
        "to count towards deletion_min_copies.",
    ).tag(config=True)

    @validate("peers")
    def _check_peers(self, proposal: dict[str, Any]) -> dict[str, Any]:
        parse_peers(proposal["value"])
        return proposal["value"]

    @validate("peer_secrets")
    def _check_peer_secrets(self, proposal: dict[str, Any]) -> dict[str, Any]:
        return check_secret_hashes(proposal["value"])

    @validate("stores")
    def _check_stores(self, proposal: dict[str, Any]) -> dict[str, Any]:
        for name, spec in proposal["value"].items():
            if not isinstance(spec, dict) or "path" not in spec:
                raise ValueError(f"store {name!r} needs a 'path'")
            if spec.get("kind", "online") not in ("online", "cold"):
                raise ValueError(f"store {name!r}: kind must be 'online' or 'cold'")
        check_cold_stores(proposal["value"])
        return proposal["value"]

    def _open_service_log(self) -> None:
        self._service_log_handler: logging.Handler | None = None
        if not self.service_log_file:
            return
        Path(self.service_log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.service_log_file)
        handler.setLevel(self.service_log_level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("hera_stage_ext")
        logger.setLevel(min(logger.level or logging.INFO, handler.level))
        logger.addHandler(handler)
        self._service_log_handler = handler

    @property
    def server(self) -> ServerApp:
        """The Jupyter server this extension runs in (linked before any hook below runs)."""
        if self.serverapp is None:
            raise RuntimeError("hera_stage_ext is not linked to a Jupyter server yet")
        return self.serverapp

    @property
    def event_logger(self) -> EventLogger:
        """The server's event bus (the panel's job progress); jupyter_server makes it when it
        starts, before the extensions' hooks."""
        if self.server.event_logger is None:
            raise RuntimeError("the Jupyter server has no event logger")
        return self.server.event_logger

    def initialize_settings(self) -> None:
        self.event_logger.register_event_schema(JOB_PROGRESS_SCHEMA)
        prepare_log_dir(self.job_log_dir, self.job_log_group)
        self._open_service_log()
        if isinstance(self.server.log, logging.Logger):
            drop_unwritten_debug(self.server.log)
        self.site: SiteClient | None = None
        if self.site_url:
            self._initialize_site_mode()
            return
        db = Database(self.db_url)
        db.upgrade()
        namer = ObservationNamer(self.obsid_pattern, self.site_longitude_deg,
                                 self.observation_seconds)
        catalogue = Catalogue(db, namer, search_timeout_s=self.search_timeout_seconds,
                              max_search_limit=self.max_search_limit)
        catalogue.sync_stores(self.stores)
        roots = self.allowed_roots or [self.server.root_dir]
        log_dir = Path(self.job_log_dir)
        launcher = None
        site = self.mode == "site"
        if self.start_worker:
            launcher = WorkerLauncher(
                self.db_url, streams=self.worker_streams,
                copy_processes=self.worker_copy_processes,
                # The site's worker runs every user's transfers and uploads, and no stage job:
                # those write into users' folders, as the users, through their own workers.
                owner=None if site else self.owner,
                kinds=("transfer", "upload", "recall") if site else (),
                jobs=self.worker_jobs, nice=self.worker_nice,
                # The site's own worker writes only into the archive: always durable.
                fsync=self.worker_fsync or site,
                idle_exit_seconds=self.worker_idle_exit_seconds, log_file=log_dir / "worker.log",
                env=peers_env(self.site_name, self.peers) if self.peers else None,
                allowed_roots=[os.path.realpath(r) for r in roots],
            )
        if self.upload_store and self.upload_store not in self.stores:
            raise ValueError(f"upload_store {self.upload_store!r} is not one of the stores")
        if self.receive_store and self.receive_store not in self.stores:
            raise ValueError(f"receive_store {self.receive_store!r} is not one of the stores")
        peers = PeerRegistry(self.site_name, parse_peers(self.peers), dict(self.peer_secrets))
        receiver = Receiver(catalogue, peers, self.receive_store or None,
                            streams=self.receive_streams,
                            reserve_bytes=self.receive_reserve_bytes,
                            max_attempts=self.receive_max_attempts,
                            lease_s=self.receive_lease_seconds)
        self.core = Core(
            version=__version__,
            site_name=self.site_name,
            catalogue=catalogue,
            ingester=Ingester(catalogue, workers=self.checksum_workers),
            allowed_roots=[os.path.realpath(r) for r in roots],
            allow_ingest=self.allow_ingest,
            librarian_authenticators=dict(self.librarian_authenticators),
            max_rpc_results=self.max_rpc_results,
            root_dir=os.path.realpath(self.server.root_dir),
            job_log_dir=log_dir,
            staged_read_only=self.staged_read_only,
            staged_expiry_seconds=self.staged_expiry_days * 86400.0,
            staging_quota_bytes=self.staging_quota_bytes,
            max_stage_files=self.max_stage_files,
            launcher=launcher,
            contents_manager=self.server.contents_manager,
            owner=self.owner,
            peers=peers,
            receiver=receiver,
            upload_store=self.upload_store,
            site_mode=site,
            kinds=standard_kinds(),
        )
        self.core.stewardship = Stewardship(
            catalogue,
            DeletionRule(self.deletion_min_copies,
                         dt.timedelta(seconds=self.deletion_peer_max_age_seconds)),
            auditor=Auditor(db, self.fixity_bytes_per_hour,
                            pause_while_jobs=self.fixity_pause_while_jobs)
            if self.fixity_bytes_per_hour > 0 else None,
            allow_changes=self.allow_ingest, max_matching=self.max_rpc_results,
            peers=PeerRepairSource(db, peers, receiver) if peers.peers else None)
        metrics.watch(self.core)
        self.settings[SETTINGS_KEY] = self.core
        if site:
            # Tornado's own XSRF check runs before the user is known, so a hub token (whose
            # check is patched in by HubOAuth) would always fail it; jupyter_server checks
            # XSRF again after authentication, as jupyterhub's own single-user servers do.
            self.settings["xsrf_cookies"] = False
        self.orders = StandingOrders(self.core, self.standing_order_interval_seconds)
        self.settings[ORDERS_KEY] = self.orders
        self.log.info(
            "hera_stage_ext %s: catalogue on %s, %d store(s)", __version__, db.backend,
            len(self.stores),
        )

    def _initialize_site_mode(self) -> None:
        """A user's server at a site: forwards to the service, holds none of its powers. A
        setting that would put the site's powers here, or no token, stops the server."""
        try:
            if self.mode == "site":
                raise SiteConfigError("site_url is for a user's server; the site service "
                                      "(mode = 'site') is what it points at")
            check_forbidden(dict(self.config.get(type(self).__name__, {})))
            token = site_token(self.site_token_file)
        except SiteConfigError as exc:
            self.log.critical("hera_stage_ext: %s", exc)
            raise SystemExit(f"hera_stage_ext: {exc}") from None
        roots = [os.path.realpath(r) for r in self.allowed_roots or [self.server.root_dir]]
        launcher = None
        if self.start_worker:
            launcher = WorkerLauncher(
                site_url=self.site_url, site_token=token, allowed_roots=roots,
                streams=self.worker_streams, copy_processes=self.worker_copy_processes,
                jobs=self.worker_jobs, nice=self.worker_nice, fsync=self.worker_fsync,
                idle_exit_seconds=self.worker_idle_exit_seconds,
                log_file=Path(self.job_log_dir) / "worker.log")
        self.site = SiteClient(self.site_url, token, roots,
                               os.path.realpath(self.server.root_dir),
                               contents_manager=self.server.contents_manager,
                               answer_timeout_s=self.site_request_timeout)
        self.site_jobs = SiteJobs(self.site, launcher)

        def launched() -> None:
            self.site_jobs.wake()
            if launcher is not None:
                asyncio.get_running_loop().run_in_executor(None, launcher.ensure_running)

        self.site.on_launch = launched
        self.settings[SITE_KEY] = self.site
        self.log.info("hera_stage_ext %s: site mode, forwarding to %s", __version__,
                      self.site_url)

    async def _start_site_mode(self) -> None:
        self.notifier = JobProgressNotifier(None, self.event_logger,
                                            self.progress_interval_seconds,
                                            site_jobs=self.site_jobs)
        self.notifier.start()

    async def _start_jupyter_server_extension(self, serverapp: ServerApp) -> None:
        # What the server holds by now lives as long as it does: kept off the cyclic collector,
        # which runs less often too (as in the worker). A receiver of 10,000 small files spent
        # about 1 s in each full collection, twice per transfer, and in the site service a
        # claim of thousands of items now and then took 5x longer (benchmarks/README.md).
        quiet_garbage_collector()
        if self.site is not None:
            await self._start_site_mode()
            return
        self.notifier = JobProgressNotifier(self.core, self.event_logger,
                                            self.progress_interval_seconds)
        self.notifier.start()
        self.order_timer = None
        if self.standing_order_check_seconds > 0:
            self.order_timer = Ticker("standing orders", self.standing_order_check_seconds,
                                      self.orders.tick)
            self.order_timer.start()
        self.fixity_timer = None
        if self.core.stewardship.auditor is not None:
            self.fixity_timer = Ticker("fixity audit", self.fixity_check_seconds,
                                       self.core.stewardship.auditor.tick)
            self.fixity_timer.start()
        resumed = self.core.resume_jobs()
        if resumed:
            self.log.info("hera_stage_ext: unfinished staging jobs %s are being resumed", resumed)
        if self.core.receiver is not None:
            items = await asyncio.get_running_loop().run_in_executor(
                None, self.core.receiver.resume)
            if items:
                self.log.info("hera_stage_ext: %d unfinished incoming transfer(s) resumed",
                              len(items))

    def initialize_handlers(self) -> None:
        self.handlers.extend(forward_handlers() if self.site_url
                             else api_handlers(site=self.mode == "site"))

    async def stop_extension(self) -> None:
        notifier = getattr(self, "notifier", None)
        if notifier is not None:
            notifier.stop()
        order_timer = getattr(self, "order_timer", None)
        if order_timer is not None:
            order_timer.stop()
        fixity_timer = getattr(self, "fixity_timer", None)
        if fixity_timer is not None:
            fixity_timer.stop()
        core = getattr(self, "core", None)
        if core is not None:
            metrics.unwatch(core)
            core.close()
        site = getattr(self, "site", None)
        if site is not None:
            await site.aclose()
        handler = getattr(self, "_service_log_handler", None)
        if handler is not None:
            logging.getLogger("hera_stage_ext").removeHandler(handler)
            handler.close()
