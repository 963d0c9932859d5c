"""tickstream management API (Chalice): routes only. Each reads its input into a model, calls the logic in
`chalicelib.service` and returns. Authentication and the error shape live in the http middleware
(`chalicelib.http`); the OpenAPI document is built from this route table (`chalicelib.openapi`).
"""

from __future__ import annotations

from chalice import Chalice, Response
from chalicelib import background, completeness, console, http, market_data, openapi, service
from chalicelib.http import ANY_CONTENT, JSON_CONTENT, json_body, path_id, query, respond
from chalicelib.models import (
    BrokerCreate,
    BrokerPatch,
    CoverageQuery,
    DeleteQuery,
    GapsQuery,
    RedriveRequest,
    ScriptCreate,
    ScriptPatch,
    ScriptsQuery,
    TicksQuery,
)

app = Chalice(app_name="tickstream-api")
app.register_middleware(http.Middleware(app.routes), "http")


@app.route("/health", methods=["GET"], content_types=ANY_CONTENT)
def health() -> Response:
    status, result = service.health()
    return respond(result, status)


@app.route("/openapi.json", methods=["GET"], content_types=ANY_CONTENT)
def openapi_document() -> Response:
    return Response(body=openapi.build(app.routes), headers={"Content-Type": "application/json"})


@app.route("/brokers", methods=["GET"], content_types=ANY_CONTENT)
def list_brokers() -> Response:
    return respond(service.list_brokers())


@app.route("/brokers", methods=["POST"], content_types=JSON_CONTENT)
def create_broker() -> Response:
    broker = service.create_broker(json_body(app.current_request, BrokerCreate))
    return respond(broker, 201, {"Location": f"/brokers/{broker.id}"})


@app.route("/brokers/{broker_id}", methods=["GET"], content_types=ANY_CONTENT)
def get_broker(broker_id: str) -> Response:
    return respond(service.get_broker(path_id(broker_id, "broker")))


@app.route("/brokers/{broker_id}", methods=["PATCH"], content_types=JSON_CONTENT)
def update_broker(broker_id: str) -> Response:
    broker = path_id(broker_id, "broker")
    return respond(service.update_broker(broker, json_body(app.current_request, BrokerPatch)))


@app.route("/brokers/{broker_id}", methods=["DELETE"], content_types=ANY_CONTENT)
def delete_broker(broker_id: str) -> Response:
    broker = path_id(broker_id, "broker")
    if not query(app.current_request, DeleteQuery).purge:
        return respond(service.delete_broker(broker))
    status, result = background.purge_broker(broker)
    return respond(result, status, {"Location": f"/jobs/{result.id}"} if status == 202 else None)


@app.route("/scripts", methods=["GET"], content_types=ANY_CONTENT)
def list_scripts() -> Response:
    return respond(service.list_scripts(query(app.current_request, ScriptsQuery)))


@app.route("/scripts", methods=["POST"], content_types=JSON_CONTENT)
def create_script() -> Response:
    script = service.create_script(json_body(app.current_request, ScriptCreate))
    return respond(script, 201, {"Location": f"/scripts/{script.id}"})


@app.route("/scripts/{script_id}", methods=["GET"], content_types=ANY_CONTENT)
def get_script(script_id: str) -> Response:
    return respond(completeness.get_script(path_id(script_id, "script")))


@app.route("/scripts/{script_id}", methods=["PATCH"], content_types=JSON_CONTENT)
def update_script(script_id: str) -> Response:
    script = path_id(script_id, "script")
    return respond(service.update_script(script, json_body(app.current_request, ScriptPatch)))


@app.route("/scripts/{script_id}", methods=["DELETE"], content_types=ANY_CONTENT)
def delete_script(script_id: str) -> Response:
    script = path_id(script_id, "script")
    if not query(app.current_request, DeleteQuery).purge:
        return respond(service.delete_script(script))
    status, result = background.purge_script(script)
    return respond(result, status, {"Location": f"/jobs/{result.id}"} if status == 202 else None)


@app.route("/jobs/{job_id}", methods=["GET"], content_types=ANY_CONTENT)
def get_job(job_id: str) -> Response:
    return respond(background.get_job(path_id(job_id, "job")))


@app.route("/scripts/{script_id}/ticks", methods=["GET"], content_types=ANY_CONTENT)
def list_ticks(script_id: str) -> Response:
    script = path_id(script_id, "script")
    return respond(service.read_ticks(script, query(app.current_request, TicksQuery)))


@app.route("/scripts/{script_id}/coverage", methods=["GET"], content_types=ANY_CONTENT)
def script_coverage(script_id: str) -> Response:
    script = path_id(script_id, "script")
    return respond(completeness.script_coverage(script, query(app.current_request, CoverageQuery)))


@app.route("/gaps", methods=["GET"], content_types=ANY_CONTENT)
def list_gaps() -> Response:
    return respond(completeness.list_gaps(query(app.current_request, GapsQuery)))


@app.route("/stats", methods=["GET"], content_types=ANY_CONTENT)
def stats() -> Response:
    return respond(completeness.stats())


@app.route("/dlq/redrive", methods=["POST"], content_types=JSON_CONTENT)
def redrive_dlq() -> Response:
    return respond(service.redrive(json_body(app.current_request, RedriveRequest, optional=True)))


@app.route("/scripts/{script_id}/candles", methods=["GET"], content_types=ANY_CONTENT)
def candles(script_id: str) -> Response:
    script = path_id(script_id, "script")
    return respond(market_data.candles(script, query(app.current_request, market_data.CandlesQuery)))


@app.route("/scripts/{script_id}/ticks.csv", methods=["GET"], content_types=ANY_CONTENT)
def ticks_csv(script_id: str) -> Response:
    script = path_id(script_id, "script")
    body, headers = market_data.ticks_csv(script, query(app.current_request, market_data.TicksCsvQuery))
    return Response(body=body, headers=headers)


@app.route(console.SHELL_ROUTE, methods=["GET"], content_types=ANY_CONTENT)
def console_shell() -> Response:
    return console.asset(console.SHELL)


@app.route(console.ASSET_ROUTE, methods=["GET"], content_types=ANY_CONTENT)
def console_asset(asset: str) -> Response:
    return console.asset(asset)
