"""Every route of /schema/openapi.json, fuzzed from the schema itself against a real server process.

Schemathesis generates requests from what the schema says each operation accepts (parameters,
bodies, media types) and checks the answers: never a 5xx other than a JSON 503 (overloaded, queue
full, draining) or a JSON 504 (the request's own deadline passed, e.g. `timeout_ms=5e-324`), and,
on the classification and model routes, a status and a body the schema declares. The number of
cases is bounded so the whole fuzz stays within the normal test run.

The schema is generated at collection time by the same application the server process runs (the
cases must exist before any fixture does), and a test checks that the server serves exactly it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, Response, checks

from batchserve.client.http import request_json
from batchserve.loadtest.server_process import ServerProcess
from batchserve.server.app import create_app
from batchserve.server.options import build_config
from tests.conftest import MODEL_REPO

EXAMPLES_PER_OPERATION = 25
# The routes whose every answer /schema describes; the others are checked for server errors only.
CONFORMING_PREFIXES = ("/v1/classify", "/v1/models", "/v2/models", "/v2/health")


def openapi_document() -> dict[str, Any]:
    config = build_config({"model_repo": MODEL_REPO, "models": ("tiny",), "events": False})
    return create_app(config).openapi_schema.to_schema()


schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def fuzzed_server(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cwd = tmp_path_factory.mktemp("fuzzed-server")
    with ServerProcess("--model-repo", str(built_models), "--models", "tiny", "--events-flush-interval-ms", "50",
                       cwd=cwd) as server:
        yield server


def test_the_server_serves_the_fuzzed_schema(fuzzed_server: ServerProcess) -> None:
    assert request_json(f"{fuzzed_server.url}/schema/openapi.json") == openapi_document()


def parameters(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p["schema"] for p in operation.get("parameters", [])}


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_the_schema_states_parameter_bounds_bodies_and_error_shapes() -> None:
    document = openapi_document()
    paths = document["paths"]
    classify = paths["/v1/classify"]["post"]
    query = parameters(classify)
    assert query["version"] == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1,
                                "description": query["version"]["description"]}
    assert query["top_k"]["type"] == "integer" and query["top_k"]["minimum"] == 1
    assert query["timeout_ms"]["type"] == "number" and query["timeout_ms"]["exclusiveMinimum"] == 0
    assert query["x-request-timeout-ms"]["exclusiveMinimum"] == 0
    assert {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "application/octet-stream",
            "multipart/form-data"} == set(classify["requestBody"]["content"])
    v1_error = resolve(document, classify["responses"]["422"]["content"]["application/json"]["schema"])
    assert resolve(document, v1_error["properties"]["error"])["required"] == ["code", "message"]

    infer = paths["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert parameters(infer)["version"]["pattern"] == "^[1-9][0-9]{0,9}$"
    assert parameters(infer)["inference-header-content-length"]["pattern"] == "^[0-9]{1,20}$"
    body = infer["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    shape = body["application/json"]["schema"]["properties"]["inputs"]["items"]["properties"]["shape"]
    assert shape["maxItems"] == 8 and shape["items"]["minimum"] == 0
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    for status in ("400", "404", "413", "415", "422", "503", "504"):
        v2_error = resolve(document, infer["responses"][status]["content"]["application/json"]["schema"])
        assert v2_error["properties"]["error"]["type"] == "string", status


ANSWERS_NOT_FAILURES = (503, 504)  # the server's load and the client's own deadline, as JSON errors


def assert_no_server_error(case: Case, response: Response) -> None:
    where = f"{case.method} {case.formatted_path}"
    status, body = response.status_code, response.content
    if status in ANSWERS_NOT_FAILURES:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), where
        assert b'"error"' in body, where
    else:
        assert status < 500, f"{where} answered {status}: {body[:300]!r}\n{case.as_curl_command()}"


# Schemathesis has no generator for image/bmp bodies; the other image types cover the raw upload.
@pytest.mark.filterwarnings("ignore:Skipped test cases with unsupported payload media types")
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_no_route_answers_a_server_error_and_answers_match_the_schema(case: Case, fuzzed_server: ServerProcess) -> None:
    response = case.call(base_url=fuzzed_server.url, timeout=30)
    assert_no_server_error(case, response)
    if case.operation.path.startswith(CONFORMING_PREFIXES):
        case.validate_response(response, checks=[
            checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance,
        ])
