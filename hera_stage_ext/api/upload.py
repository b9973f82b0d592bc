"""REST for bulk upload: ``POST upload`` (``models.UploadRequest``), a thin handler over
``Core.upload``.

The answer is the job (202), followed like a staging job through the ``jobs`` routes; its
``options.manifest`` names the manifest file the job keeps.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import BaseHandler
from .models import UploadRequest


class UploadHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(UploadRequest)
        options = request.model_dump(exclude={"directory", "glob"})
        self.reply(await self.call(self.core.upload, request.directory, request.glob, **options),
                   status=202)
