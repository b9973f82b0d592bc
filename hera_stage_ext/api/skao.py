"""The SKAO staging service's interface, so its clients work against this server unchanged.

``POST <base_url>/hera-stage/skao/stage_data?method=M&username=U`` with a JSON body
``{"local_path_on_storage": ..., "relative_path": ...}``: the source is a path inside a configured
store (it must be a catalogued instance), the destination a folder inside the user's area (the
server's root directory). Methods map onto the one staging engine and its checks:

=================  ==============================================================
SKAO method        here
=================  ==============================================================
``local_copy``     a staging job, method ``copy`` (verified, read-only)
``symlink_copy``   a staging job, method ``hardlink`` (what the SKAO service did)
``jupyter_copy``   a staging job, method ``contents`` (through the server's contents
                   manager, in chunks, verified; ``relative_path`` is a contents path)
``direct_download`` a link to ``files/<name>/content`` (HTTP Range supported)
=================  ==============================================================

``username`` must be the server's owner.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web

from ..errors import Forbidden, InvalidRequest
from .base import BaseHandler

SKAO_METHODS = {"local_copy": "copy", "symlink_copy": "hardlink", "jupyter_copy": "contents"}
DOWNLOAD = "direct_download"


class SkaoStageHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()
        method = self.get_query_argument("method", "")
        username = self.get_query_argument("username", "")
        source = body.get("local_path_on_storage")
        relative = body.get("relative_path")

        def run() -> dict[str, Any]:
            if method not in (*SKAO_METHODS, DOWNLOAD):
                raise InvalidRequest(
                    f"method {method!r} is not available here; use one of "
                    f"{', '.join([*SKAO_METHODS, DOWNLOAD])}"
                )
            if not isinstance(source, str) or not source:
                raise InvalidRequest("'local_path_on_storage' must be a path inside a store")
            if username != self.core.owner:
                raise Forbidden(f"this server stages for {self.core.owner!r} only")
            name = self.core.catalogue.file_at(source)
            if method == DOWNLOAD:
                quoted = urllib.parse.quote(name, safe="")
                return {"status": "ready", "download_url": url_path_join(
                    self.base_url, "hera-stage/api/files", quoted, "content")}
            if not isinstance(relative, str) or not relative:
                raise InvalidRequest("'relative_path' must be a folder inside your area")
            job = self.core.stage(relative, names=[name], method=SKAO_METHODS[method],
                                  via="skao", for_user=username)
            return {"status": "accepted", "job": job}

        result = await self.call(run)
        self.reply(result, status=200 if method == DOWNLOAD else 202)
