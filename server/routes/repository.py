"""Triton's model repository extension: list the repository, load and unload models.

The index is read-only and always on. Load and unload change what the server serves, so they
answer 403 unless the server runs with `--model-control explicit`, and then demand the
`X-Admin-Key` header when `--admin-key` is set (401 when missing, 403 when wrong).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from batchserve.server.errors import V2_HANDLERS
from batchserve.server.request_input import read_body
from batchserve.server.state import AppState
from batchserve.server.v2.wire import RepositoryActionRequest, RepositoryIndexRequest, decode_json
from batchserve.serving.errors import Forbidden, InvalidRequest, Unauthorized
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.repository")
ADMIN_HEADER = "x-admin-key"


def authorize_model_control(request: Request, app_state: AppState) -> None:
    config = app_state.config.control
    if config.model_control != "explicit":
        raise Forbidden("model control is disabled; start with --model-control explicit")
    if config.admin_key is None:
        return
    given = request.headers.get(ADMIN_HEADER)
    if not given:
        raise Unauthorized("model control needs the X-Admin-Key header", headers={"WWW-Authenticate": "X-Admin-Key"})
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), config.admin_key.encode("utf-8")):
        raise Forbidden("the X-Admin-Key header does not match the server's admin key")


async def _optional_body(request: Request, into: type, what: str) -> Any:
    """Triton allows an empty body on every repository route."""
    body = await read_body(request)
    return into() if not body.strip() else decode_json(body, into, what)


def _summary(name: str, models: list[LoadedModel]) -> dict[str, Any]:
    return {"name": name, "versions": [str(m.version) for m in models], "state": "READY"}


class RepositoryController(Controller):
    path = "/v2/repository"
    tags = ["v2", "model control"]
    exception_handlers = V2_HANDLERS

    @post("/index", status_code=200, summary="Every model in the repository, loaded or not")
    async def index(self, request: Request, app_state: NamedDependency[AppState]) -> list[dict[str, Any]]:
        query = await _optional_body(request, RepositoryIndexRequest, "repository index request")
        rows = app_state.serving.registry.repository_index()
        return [row for row in rows if row["state"] == "READY"] if query.ready else rows

    @post("/models/{name:str}/load", status_code=200, summary="Load or reload a model (explicit model control)")
    async def load(self, request: Request, app_state: NamedDependency[AppState], name: FromPath[str]) -> dict[str, Any]:
        authorize_model_control(request, app_state)
        action = await _optional_body(request, RepositoryActionRequest, "load request")
        if "config" in action.parameters:
            raise InvalidRequest(
                "the 'config' parameter is not supported: edit the model's config.toml in the repository and load again"
            )
        app_state.refuse_if_draining()
        log.info("loading %s (model control)", name)
        loaded = await app_state.serving.registry.load(name)
        return _summary(name, loaded)

    @post("/models/{name:str}/unload", status_code=200, summary="Unload a model (explicit model control)")
    async def unload(
        self, request: Request, app_state: NamedDependency[AppState], name: FromPath[str]
    ) -> dict[str, Any]:
        authorize_model_control(request, app_state)
        await _optional_body(request, RepositoryActionRequest, "unload request")
        log.info("unloading %s (model control)", name)
        await app_state.serving.registry.unload(name)
        return {"name": name, "versions": [], "state": "UNAVAILABLE"}
