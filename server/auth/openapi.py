"""What `/schema` says about authentication, from the same rules the guard applies.

Two security schemes (`Authorization: Bearer KEY` and `X-API-Key: KEY`); each operation lists
them as required (`--auth required`, and model control always), optional (`--auth off`: a key
only names the caller and applies its rate limit) or not at all (public routes), and documents
the 401/403/429 answers it can give, so generated clients and fuzzers agree with the server.
"""

from __future__ import annotations

from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)

from batchserve.server.auth.policy import Access, AccessPolicy

BEARER, API_KEY = "bearerAuth", "apiKeyHeader"
SCHEMES = {
    BEARER: SecurityScheme(type="http", scheme="bearer", description="An API key: `Authorization: Bearer bsk_...`"),
    API_KEY: SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header",
                            description="An API key: `X-API-Key: bsk_...` (`X-Admin-Key` is an alias)"),
}
KEY_REQUIRED: list[dict[str, list[str]]] = [{BEARER: []}, {API_KEY: []}]
KEY_OPTIONAL: list[dict[str, list[str]]] = [{}, *KEY_REQUIRED]

_STRING = Schema(type=OpenAPIType.STRING)
_V1_ERROR = Schema(
    type=OpenAPIType.OBJECT, required=["error"],
    properties={"error": Schema(type=OpenAPIType.OBJECT, required=["code", "message"],
                                properties={"code": _STRING, "message": _STRING})},
)
_V2_ERROR = Schema(type=OpenAPIType.OBJECT, required=["error"], properties={"error": _STRING})
_INTEGER_HEADER = OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER))


def _error(description: str, path: str, headers: dict[str, OpenAPIHeader | Reference] | None = None,
           ) -> OpenAPIResponse:
    schema = _V2_ERROR if path == "/v2" or path.startswith("/v2/") else _V1_ERROR
    return OpenAPIResponse(description=description, headers=headers,
                           content={"application/json": OpenAPIMediaType(schema=schema)})


def _operations(openapi: OpenAPI) -> list[tuple[str, Operation]]:
    found = []
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                found.append((path, operation))
    return found


def document_auth(openapi: OpenAPI, policy: AccessPolicy, *, required: bool) -> None:
    """Adds the schemes, and each operation's security and refusals, to the generated schema."""
    components = openapi.components if openapi.components is not None else Components()
    components.security_schemes = {**(components.security_schemes or {}), **SCHEMES}
    openapi.components = components
    for path, operation in _operations(openapi):
        access = policy.for_template(path)
        if access is Access.PUBLIC:
            operation.security = []
            continue
        key_needed = required or access is Access.ADMIN
        operation.security = list(KEY_REQUIRED if key_needed else KEY_OPTIONAL)
        responses = operation.responses if operation.responses is not None else {}
        if key_needed:
            challenge: dict[str, OpenAPIHeader | Reference] = {"WWW-Authenticate": OpenAPIHeader(schema=_STRING)}
            responses.setdefault("401", _error("No valid API key (missing, unknown, revoked or expired)", path,
                                               challenge))
            responses.setdefault("403", _error("The API key lacks the scope this route needs", path))
        responses.setdefault("429", _error("The API key is over its rate limit", path, {
            "Retry-After": _INTEGER_HEADER, "X-RateLimit-Limit": _INTEGER_HEADER,
            "X-RateLimit-Remaining": _INTEGER_HEADER,
        }))
        operation.responses = responses
