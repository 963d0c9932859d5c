"""The API's one error shape, `{"error": {"code", "message", "fields"?}}`, for our errors and Chalice's own.

`ApiError` subclasses `ChaliceUnhandledError` on purpose: Chalice turns any other exception raised in a view into
its own 500 response before middleware sees it; this one propagates to the http middleware, which renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chalice import ChaliceUnhandledError, Response
from pydantic import BaseModel, ValidationError

JSON_HEADERS = {"Content-Type": "application/json"}
# Chalice's built-in error codes (405, 415, its 500) in our vocabulary.
_CHALICE_CODES = {
    "MethodNotAllowedError": "method_not_allowed",
    "UnsupportedMediaType": "unsupported_media_type",
    "BadRequestError": "bad_request",
    "BadRequest": "bad_request",
    "InternalServerError": "internal_error",
}


class ApiError(ChaliceUnhandledError):
    def __init__(self, status: int, code: str, message: str, *,
                 fields: Sequence[Mapping[str, str]] | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields) if fields else None
        self.headers = dict(headers or {})

    def to_response(self) -> Response:
        return error_response(self.status, self.code, self.message, fields=self.fields, headers=self.headers)


def error_response(status: int, code: str, message: str, *, fields: Sequence[Mapping[str, str]] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = list(fields)
    return Response(body={"error": error}, headers={**JSON_HEADERS, **(headers or {})}, status_code=status)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def invalid(fields: Sequence[Mapping[str, str]]) -> ApiError:
    names = ", ".join(dict.fromkeys(field["field"] for field in fields))
    return ApiError(422, "invalid_fields", f"invalid fields: {names}", fields=fields)


_TAG_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found"})


def field_errors(error: ValidationError, discriminator: str | None = None) -> list[dict[str, str]]:
    """Pydantic's errors as `{"field", "message"}`, fields dotted (`api_config.ws_url`). For a discriminated union
    (`discriminator` names its tag field), the chosen model that pydantic puts first in each location is dropped and
    an unknown tag is an error of the tag field."""
    fields = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        location = item["loc"]
        if discriminator is not None:
            location = (discriminator,) if item["type"] in _TAG_ERRORS else location[1:]
        fields.append({"field": ".".join(str(part) for part in location) or "body",
                       "message": item["msg"].removeprefix("Value error, ")})
    return fields


def validated[M: BaseModel](model: type[M], data: Any) -> M:
    """`data` as `model`, or a 422 naming each invalid field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise invalid(field_errors(error, getattr(model, "DISCRIMINATOR", None))) from None


def unavailable(code: str, message: str) -> ApiError:
    return ApiError(503, code, message)


def normalise(response: Response) -> Response:
    """Rewrite Chalice's own error bodies (`{"Code", "Message"}`) into ours; make every JSON body say so."""
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and set(body) == {"Code", "Message"}:
        code = _CHALICE_CODES.get(body["Code"], "error")
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
        return error_response(response.status_code, code, str(body["Message"]), headers=headers)
    if isinstance(body, (dict, list)) and not any(k.lower() == "content-type" for k in response.headers):
        response.headers = {**response.headers, **JSON_HEADERS}
    return response
