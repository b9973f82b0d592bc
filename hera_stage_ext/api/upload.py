"""REST for bulk upload: ``POST upload``, a thin handler over ``Core.upload``.

The answer is the job (202), followed like a staging job through the ``jobs`` routes; its
``options.manifest`` names the manifest file the job keeps.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..transfer.upload import check_request
from .base import BaseHandler


class UploadHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()

        def run() -> dict[str, Any]:
            request = check_request(body)
            return self.core.upload(request.pop("directory"), request.pop("glob"), **request)

        self.reply(await self.call(run), status=202)
