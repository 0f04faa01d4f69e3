"""The REST API as an OpenAPI 3.1 document, built from the endpoints themselves (what
each one takes and answers, as `server.contract` types), and a browsable page of it at
`/docs` (Swagger UI, shipped by the swagger-ui-bundle package: no CDN).

Refusals are documented per status with the codes an endpoint may answer with; every
one has the body `ErrorBody` ({code, message}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from server import contract

REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")


class Described(Protocol):
    """What the document needs to know of an endpoint (`server.api.Endpoint`)."""

    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    tag: str
    status: int
    media_type: str
    answer: type[Any] | None
    body_type: Any
    query_type: Any
    needs_user: bool
    refuses: tuple[str, ...]


def _version() -> str:
    try:
        return metadata.version("giftstream")
    except metadata.PackageNotFoundError:
        return "0"


def _refusal_codes(endpoint: Described) -> list[str]:
    codes: list[str] = []
    if endpoint.body_type is not None or endpoint.query_type is not None:
        codes.append("bad_request")
    if endpoint.body_type is not None:
        codes.append("too_large")
    if endpoint.needs_user:
        codes.append("unauthorized")
    codes += endpoint.refuses
    codes.append("unavailable")
    return codes


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the `null` of an optional field: a query
    string can only leave it out."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    rest = [option for option in options if option != {"type": "null"}]
    if len(rest) != 1:
        return schema
    only: dict[str, Any] = rest[0]
    return {k: v for k, v in schema.items() if k not in ("anyOf", "default")} | only


def document(
    endpoints: Sequence[Described], status_by_code: Mapping[str, int], *, max_body: int
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`; `status_by_code` maps refusal codes to
    their HTTP statuses."""
    types: list[Any] = [contract.ErrorBody]
    for endpoint in endpoints:
        types += [t for t in (endpoint.answer, endpoint.body_type, endpoint.query_type) if t]
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=REF)
    schema_of = dict(zip(unique, schemas, strict=True))
    query_names = {endpoint.query_type.__name__ for endpoint in endpoints if endpoint.query_type}
    query_components = {name: components.pop(name) for name in query_names}

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
        }
        if endpoint.description:
            operation["description"] = endpoint.description
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(endpoint.path)
        ]
        if endpoint.query_type is not None:
            query = query_components[endpoint.query_type.__name__]
            required = set(query.get("required", []))
            for name, schema in query["properties"].items():
                schema = _not_null(schema)
                parameter = {"name": name, "in": "query", "required": name in required}
                if "description" in schema:
                    parameter["description"] = schema["description"]
                parameters.append({**parameter, "schema": schema})
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body_type is not None:
            operation["requestBody"] = {
                "required": True,
                "description": f"JSON, at most {max_body} bytes",
                "content": {"application/json": {"schema": schema_of[endpoint.body_type]}},
            }
        if endpoint.needs_user:
            operation["security"] = [{"bearer": []}]
        success: dict[str, Any] = {"description": "OK"}
        if endpoint.answer is not None:
            success["content"] = {endpoint.media_type: {"schema": schema_of[endpoint.answer]}}
        else:
            success["content"] = {endpoint.media_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(endpoint.status): success}
        by_status: dict[int, list[str]] = {}
        for code in _refusal_codes(endpoint):
            by_status.setdefault(status_by_code[code], []).append(code)
        for status, codes in sorted(by_status.items()):
            responses[str(status)] = {
                "description": "Refused: " + ", ".join(f"`{code}`" for code in codes),
                "content": {
                    "application/json": {
                        "schema": {
                            "allOf": [{"$ref": REF.format(name="ErrorBody")}],
                            "properties": {"code": {"enum": codes}},
                        }
                    }
                },
            }
        operation["responses"] = responses
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "giftstream",
            "version": _version(),
            "summary": "A simulated live-stream gifting server",
            "description": (
                "Viewers buy coins and send gifts in creators' live rooms; creators are "
                "credited in diamonds and cash out. Every amount is an integer. Every "
                "refusal is `{code, message}` with a stable `code`. Live rooms themselves "
                "are WebSockets (`GET /ws/rooms/{room_id}`), described by the AsyncAPI "
                "document in the repository (docs/asyncapi.yaml)."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "users", "description": "Sign-up, profile, identity, payout method"},
            {"name": "catalog", "description": "Gifts and coin packages"},
            {"name": "wallet", "description": "Coins, diamonds, history, cash-outs"},
            {"name": "rooms", "description": "Live rooms"},
            {"name": "operations", "description": "Health and metrics"},
        ],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from POST /api/users",
                }
            },
        },
    }


_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>giftstream API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
                                 deepLinking: true, tryItOutEnabled: false});
  </script>
</body>
</html>
"""


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_DOCS_PAGE)


def docs_routes() -> list[BaseRoute]:
    """`/docs`, the browsable page, and `/docs/assets/…`, Swagger UI's own files."""
    return [
        Route("/docs", docs_page, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets"),
    ]
