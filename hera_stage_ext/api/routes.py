"""The handler table: every route the extension serves, relative to the server's base_url.

Native routes are written as OpenAPI path templates (``/files/{name}``) so the OpenAPI document
and its test can compare against exactly this table.
"""

from __future__ import annotations

import re

from tornado.web import RequestHandler

from .content import FileContentHandler
from .handlers import (
    FileHandler,
    IngestHandler,
    OpenAPIHandler,
    SearchHandler,
    StatusHandler,
    StoresHandler,
)
from .jobs import (
    JobCancelHandler,
    JobHandler,
    JobLogHandler,
    JobRetryHandler,
    JobsHandler,
    StageHandler,
    TransfersHandler,
)
from .librarian import LibrarianRPCHandler
from .members import FileMembersHandler
from .orders import (
    StandingOrderHandler,
    StandingOrderPauseHandler,
    StandingOrderResumeHandler,
    StandingOrdersHandler,
)
from .peer import (
    PeerAnnounceHandler,
    PeerBatchHandler,
    PeerFileContentHandler,
    PeerPingHandler,
    PeerPushHandler,
    PeersHandler,
    PeerStatusHandler,
)
from .skao import SkaoStageHandler
from .staged import (
    StagedCleanedHandler,
    StagedCleanHandler,
    StagedHandler,
    StagedRecordsHandler,
)
from .stewardship import (
    DeleteInstancesHandler,
    DeletionPolicyHandler,
    FileFixityHandler,
    FileRepairHandler,
    FixityAuditHandler,
    FixityHandler,
    OffloadHandler,
)
from .upload import UploadHandler
from .worker import worker_handlers

API_PREFIX = "/hera-stage/api"
LIBRARIAN_PREFIX = "/hera-stage/librarian/api"
SKAO_PREFIX = "/hera-stage/skao"
#: Site-to-site endpoints (authenticated by the peer secret; see transfer/protocol.py).
PEER_PREFIX = "/hera-stage/peer"

#: OpenAPI path template -> handler, under API_PREFIX.
NATIVE_ROUTES: dict[str, type[RequestHandler]] = {
    "/status": StatusHandler,
    "/stores": StoresHandler,
    "/search": SearchHandler,
    "/files/{name}": FileHandler,
    "/files/{name}/content": FileContentHandler,
    "/files/{name}/members": FileMembersHandler,
    "/ingest": IngestHandler,
    "/stage": StageHandler,
    "/jobs": JobsHandler,
    "/jobs/{job_id}": JobHandler,
    "/jobs/{job_id}/cancel": JobCancelHandler,
    "/jobs/{job_id}/retry": JobRetryHandler,
    "/jobs/{job_id}/log": JobLogHandler,
    "/peers": PeersHandler,
    "/transfers": TransfersHandler,
    "/upload": UploadHandler,
    "/standing-orders": StandingOrdersHandler,
    "/standing-orders/{name}": StandingOrderHandler,
    "/standing-orders/{name}/pause": StandingOrderPauseHandler,
    "/standing-orders/{name}/resume": StandingOrderResumeHandler,
    "/fixity": FixityHandler,
    "/fixity/audit": FixityAuditHandler,
    "/files/{name}/fixity": FileFixityHandler,
    "/files/{name}/repair": FileRepairHandler,
    "/files/{name}/deletion-policy": DeletionPolicyHandler,
    "/delete-instances": DeleteInstancesHandler,
    "/offload": OffloadHandler,
    "/staged": StagedHandler,
    "/staged/clean": StagedCleanHandler,
    "/staged/records": StagedRecordsHandler,
    "/staged/records/cleaned": StagedCleanedHandler,
    "/openapi.json": OpenAPIHandler,
}

#: Site-to-site routes under PEER_PREFIX (not in the OpenAPI document of the user API).
PEER_ROUTES: dict[str, type[RequestHandler]] = {
    "/ping": PeerPingHandler,
    "/announce": PeerAnnounceHandler,
    "/push": PeerPushHandler,
    "/status": PeerStatusHandler,
    "/files/{name}/content": PeerFileContentHandler,
    "/files/batch": PeerBatchHandler,
}


def template_to_regex(template: str) -> str:
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))


def handlers(site: bool = False) -> list[tuple[str, type[RequestHandler]]]:
    """The routes; ``site``: a site service's, with the worker API of users' workers."""
    table = [(API_PREFIX + template_to_regex(t) + "$", h) for t, h in NATIVE_ROUTES.items()]
    if site:
        table += worker_handlers(API_PREFIX)
    table.append((LIBRARIAN_PREFIX + r"/(?P<operation>[^/]+)$", LibrarianRPCHandler))
    table += [(PEER_PREFIX + template_to_regex(t) + "$", h) for t, h in PEER_ROUTES.items()]
    table.append((SKAO_PREFIX + r"/stage_data$", SkaoStageHandler))
    return table
