"""Triton's model repository extension: list the repository, load and unload models.

The index is read-only and always on. Load and unload change what the server serves, so they
answer 403 unless the server runs with `--model-control explicit` (which needs `--admin-key`),
and then demand an API key with the admin scope whatever `--auth` says: the bootstrap admin key
or a key made with `batchserve keys create --scopes admin`, sent as `Authorization: Bearer`,
`X-API-Key` or `X-Admin-Key` (401 without a valid key, 403 without the scope). Keys travel in
headers, which a cross-site form cannot send, so another site cannot drive these routes through
a browser. Any body Triton's clients send (none, `{}`, `{"parameters": ...}`) is accepted.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from batchserve.server.auth.guard import require_scope
from batchserve.server.errors import V2_HANDLERS
from batchserve.server.request_input import read_body
from batchserve.server.state import AppState
from batchserve.server.v2.wire import RepositoryActionRequest, RepositoryIndexRequest, decode_json
from batchserve.serving.errors import Forbidden, InvalidRequest
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.repository")


def authorize_model_control(request: Request, app_state: AppState) -> str:
    """The name of the admin key asking, or the error that refuses it."""
    if app_state.config.control.model_control != "explicit":
        raise Forbidden("model control is disabled; start with --model-control explicit")
    return require_scope(request.scope, "admin").name


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
        who = authorize_model_control(request, app_state)
        action = await _optional_body(request, RepositoryActionRequest, "load request")
        if "config" in action.parameters:
            raise InvalidRequest(
                "the 'config' parameter is not supported: edit the model's config.toml in the repository and load again"
            )
        app_state.refuse_if_draining()
        log.info("loading %s (model control, key %s)", name, who)
        loaded = await app_state.serving.registry.load(name)
        return _summary(name, loaded)

    @post("/models/{name:str}/unload", status_code=200, summary="Unload a model (explicit model control)")
    async def unload(
        self, request: Request, app_state: NamedDependency[AppState], name: FromPath[str]
    ) -> dict[str, Any]:
        who = authorize_model_control(request, app_state)
        await _optional_body(request, RepositoryActionRequest, "unload request")
        log.info("unloading %s (model control, key %s)", name, who)
        await app_state.serving.registry.unload(name)
        return {"name": name, "versions": [], "state": "UNAVAILABLE"}
