"""The OpenAPI 3.1 document, built from Chalice's own route table and the pydantic models.

Each route in `app.routes` must have an entry in OPERATIONS (its models, success status and the errors it can
answer); a route without one, or an entry without a route, makes building the document fail, so the document
cannot silently drift from the app. Schemas come from the same models that validate requests and shape responses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chalicelib import console, market_data, models
from chalicelib.auth import PUBLIC_ROUTES

REF = "#/components/schemas/{model}"
BODY_ERRORS = (400, 413, 415, 422)
_ERROR_TEXT = {
    400: "Malformed JSON",
    401: "Missing or wrong bearer token",
    404: "No such resource",
    409: "Conflict: duplicate name or symbol, data that a delete would lose, a script's broker, trading symbol or"
         " stream changed while it has ticks (code script_has_ticks), a redrive already running",
    413: "Body too large",
    415: "Body is not application/json",
    422: "Invalid fields (named in error.fields)",
    503: "Database, queue or token secret unavailable, or no API token configured",
    504: "A database statement ran past the statement timeout and was stopped",
}


@dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    response: type[BaseModel] | None  # None: a free-form object (the OpenAPI document itself)
    status: int = 200
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"  # of the success response; a non-JSON one is a string
    headers: tuple[tuple[str, str], ...] = ()  # (name, description) of success response headers
    also: tuple[tuple[int, type[BaseModel], str], ...] = ()  # other successes: (status, model, description)


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/health", "GET"): Operation("health", "Liveness and database reachability (no auth)", models.HealthOut),
    ("/openapi.json", "GET"): Operation("openapi", "This document", None),
    ("/brokers", "GET"): Operation("listBrokers", "All brokers", models.BrokerList),
    ("/brokers", "POST"): Operation("createBroker", "Add a broker", models.BrokerOut, 201,
                                    body=models.BrokerCreate, errors=(*BODY_ERRORS, 409)),
    ("/brokers/{broker_id}", "GET"): Operation("getBroker", "One broker", models.BrokerOut, errors=(404,)),
    ("/brokers/{broker_id}", "PATCH"): Operation("updateBroker", "Change a broker's fields", models.BrokerOut,
                                                 body=models.BrokerPatch, errors=(*BODY_ERRORS, 404, 409)),
    ("/brokers/{broker_id}", "DELETE"): Operation(
        "deleteBroker", "Delete a broker (409 if it has scripts, unless ?purge=true)", models.Deleted,
        query=models.DeleteQuery, errors=(404, 409, 422)),
    ("/scripts", "GET"): Operation("listScripts", "Scripts, optionally of one broker", models.ScriptList,
                                   query=models.ScriptsQuery, errors=(422,)),
    ("/scripts", "POST"): Operation("createScript", "Add a script (trading symbol) to a broker", models.ScriptOut,
                                    201, body=models.ScriptCreate, errors=(*BODY_ERRORS, 409)),
    ("/scripts/{script_id}", "GET"): Operation(
        "getScript", "One script, with its stored-tick totals (from coverage) and the producer's status",
        models.ScriptDetailOut, errors=(404,)),
    ("/scripts/{script_id}", "PATCH"): Operation(
        "updateScript", "Change a script's fields (broker_id, trading_symbol and stream only while it has no ticks)",
        models.ScriptOut, body=models.ScriptPatch, errors=(*BODY_ERRORS, 404, 409)),
    ("/scripts/{script_id}", "DELETE"): Operation(
        "deleteScript", "Delete a script (409 if it has ticks, unless ?purge=true: then, if inactive, 202 and a job"
        " that deletes its ticks in the background; 409 while it is active)", models.Deleted,
        query=models.DeleteQuery, errors=(404, 409, 422),
        also=((202, models.JobOut, "Accepted: the purge runs in the background; poll GET /jobs/{id}"),)),
    ("/jobs/{job_id}", "GET"): Operation("getJob", "A background job (a script's purge, retention)", models.JobOut,
                                         errors=(404,)),
    ("/scripts/{script_id}/ticks", "GET"): Operation(
        "listTicks", "A script's ticks in a time range, keyset-paginated by trade id", models.TickPage,
        query=models.TicksQuery, errors=(404, 422)),
    ("/scripts/{script_id}/candles", "GET"): Operation(
        "listCandles", "OHLC bars with volume, quote volume, trade count and first/last trade id, exact decimals",
        market_data.CandlesOut, query=market_data.CandlesQuery, errors=(404, 422)),
    ("/scripts/{script_id}/ticks.csv", "GET"): Operation(
        "exportTicksCsv", "A script's ticks as Binance aggTrades CSV, ascending, a page per call", None,
        query=market_data.TicksCsvQuery, errors=(404, 422), media_type="text/csv",
        headers=(("Content-Disposition", "attachment; filename=<SYMBOL>-aggTrades-<from>-<to>.csv"),
                 (market_data.NEXT_CURSOR_HEADER, "present when more rows follow: pass as cursor"))),
    ("/scripts/{script_id}/coverage", "GET"): Operation(
        "scriptCoverage", "Per UTC day: stored, expected and missing trades, with the gaps of the ledger",
        models.CoverageOut, query=models.CoverageQuery, errors=(404, 422)),
    ("/gaps", "GET"): Operation("listGaps", "The gap ledger, keyset-paginated by gap id", models.GapPage,
                                query=models.GapsQuery, errors=(422,)),
    ("/stats", "GET"): Operation("stats", "Per-script counts (from coverage), lag and producer status; queue and DLQ"
                                          " depth", models.StatsOut),
    ("/dlq/redrive", "POST"): Operation("redriveDlq", "Move DLQ messages back to the ticks queue", models.RedriveOut,
                                        body=models.RedriveRequest, body_required=False,
                                        errors=(*BODY_ERRORS, 409)),
}

ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": models.MAX_ID}


def chalice_routes(routes: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    """The API's routes: all but the console's page and files, which are not API operations."""
    return {(path, method) for path, methods in routes.items() for method in methods if path not in console.ROUTES}


def build(routes: dict[str, dict[str, Any]], title: str = "tickstream API", version: str = "1.0.0") -> dict[str, Any]:
    """The document for Chalice's `app.routes`."""
    registered = chalice_routes(routes)
    if registered != set(OPERATIONS):
        raise RuntimeError(f"routes and OPERATIONS differ: routes only {sorted(registered - set(OPERATIONS))},"
                           f" OPERATIONS only {sorted(set(OPERATIONS) - registered)}")
    schemas, refs = _component_schemas()
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in sorted(OPERATIONS.items()):
        paths.setdefault(path, {})[method.lower()] = _operation(path, operation, refs, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Brokers, scripts and ticks of tickstream. Every route but /health needs "
                                "`Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}`."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearerAuth": []}],
    }


def _component_schemas() -> tuple[dict[str, Any], dict[tuple[type[BaseModel], str], dict[str, str]]]:
    # ScriptMarket is no body of its own: it shows, per broker type, the symbol format and streams a script's body
    # must have (the service checks it once the broker is known).
    wanted: list[tuple[type[BaseModel], str]] = [(models.ErrorOut, "serialization"),
                                                 (models.ScriptMarket, "validation")]
    for operation in OPERATIONS.values():
        if operation.response:
            wanted.append((operation.response, "serialization"))
        if operation.body:
            wanted.append((operation.body, "validation"))
        wanted.extend((model, "serialization") for _, model, _ in operation.also)
    keyed, document = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    return document.get("$defs", {}), keyed


def _operation(path: str, operation: Operation, refs: dict[Any, dict[str, str]],
               schemas: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary}
    parameters = [{"name": name, "in": "path", "required": True, "schema": ID_SCHEMA}
                  for name in re.findall(r"{(\w+)}", path)]
    if operation.query:
        parameters.extend(_query_parameters(operation.query, schemas))
    if parameters:
        spec["parameters"] = parameters
    if operation.body:
        spec["requestBody"] = {"required": operation.body_required, "content": {
            "application/json": {"schema": refs[(operation.body, "validation")]}}}
    spec["responses"] = _responses(path, operation, refs)
    if path in PUBLIC_ROUTES:
        spec["security"] = []
    return spec


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, mode="validation", by_alias=True)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _not_null(prop)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if name not in required:
            parameter["allowEmptyValue"] = True  # `?from=&to=` means "not given" (http.parse_query)
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a string, never JSON null: drop pydantic's `None` alternative and default."""
    schema = {key: value for key, value in schema.items() if not (key == "default" and value is None)}
    options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
    if "anyOf" in schema and len(options) == 1:
        del schema["anyOf"]
        schema = {**options[0], **schema}
    return schema


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(path: str, operation: Operation, refs: dict[Any, dict[str, str]]) -> dict[str, Any]:
    success = refs[(operation.response, "serialization")] if operation.response else {"type": "object"}
    if operation.media_type != "application/json":
        success = {"type": "string"}
    ok: dict[str, Any] = {"description": "OK", "content": {operation.media_type: {"schema": success}}}
    if operation.headers:
        ok["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in operation.headers}
    responses: dict[str, Any] = {str(operation.status): ok}
    for status, model, description in operation.also:
        responses[str(status)] = {"description": description, "content": _json(refs[(model, "serialization")])}
    error = _json(refs[(models.ErrorOut, "serialization")])
    codes = set(operation.errors) | {503, 504}
    if path not in PUBLIC_ROUTES:
        codes.add(401)
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERROR_TEXT[code], "content": error}
    if path == "/health":  # it reports an unreachable database in its own shape
        responses["503"] = {"description": "The database is unreachable", "content": _json(success)}
    return responses
