"""The HTTP edge: reading path ids, query strings and JSON bodies into models; writing responses; the middleware
that authenticates and renders every error as `{"error": {...}}`.

Bodies are parsed from the raw bytes, not Chalice's `json_body`, which silently returns None when the client sent
no Content-Type (Chalice's own 415 check lets that through as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from chalice.app import Request, Response
from pydantic import BaseModel

from chalicelib.auth import PUBLIC_ROUTES, TokenSource, authenticate
from chalicelib.errors import JSON_HEADERS, ApiError, bad_request, invalid, normalise, not_found, validated
from chalicelib.models import MAX_ID

MAX_BODY_BYTES = 1024 * 1024  # far above any real request; keeps a 10 MB API Gateway body from costing memory
JSON_CONTENT = ["application/json"]
ANY_CONTENT = ["*/*"]  # routes without a body do not care what a client claims to send

tokens = TokenSource()


class Middleware:
    """Registered for 'http' events: authentication first, then the route; errors rendered in one shape.

    `routes` is the app's live route table. A resource the app does not know (an API Gateway catch-all such as
    `/{proxy+}` sending everything else here) is a JSON 404, where Chalice itself would fail with a 500.
    """

    def __init__(self, routes: Mapping[str, Any]) -> None:
        self._routes = routes

    def __call__(self, request: Request, get_response: Callable[[Request], Response]) -> Response:
        if request is None:  # not an API Gateway proxy event: Chalice answers it itself
            return get_response(request)
        try:
            if request.path not in self._routes:
                raise not_found("no such resource")
            if request.path not in PUBLIC_ROUTES:
                authenticate(request.headers, tokens)
            response = get_response(request)
        except ApiError as error:
            response = error.to_response()
        return normalise(response)


def respond(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """The model as the JSON body, serialised by pydantic-core (in Rust: a /stats of hundreds of scripts would
    otherwise be dumped to dicts and then to text by Python's json)."""
    return Response(body=model.model_dump_json(), headers={**JSON_HEADERS, **(headers or {})},
                    status_code=status)


def path_id(value: str, what: str) -> int:
    """A path id; anything that cannot be an id names no resource, so 404 rather than 422."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_ID:
        raise not_found(f"no {what} with id {value[:40]!r}")
    return int(value)


def query[M: BaseModel](request: Request, model: type[M]) -> M:
    """The query string as `model`; empty values count as absent (`?from=&to=` is a common template)."""
    params = request.query_params or {}
    return validated(model, {name: params[name] for name in params if params[name] != ""})


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def json_body[M: BaseModel](request: Request, model: type[M], *, optional: bool = False) -> M:
    """The body as `model`: 400 if it is not JSON, 413 if too large, 422 if it is not the object `model` wants."""
    raw = request.raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if optional:
            return validated(model, {})
        raise bad_request("the body is empty; send a JSON object")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError too
        raise bad_request(f"the body is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise invalid([{"field": "body", "message": "must be a JSON object"}])
    return validated(model, data)
