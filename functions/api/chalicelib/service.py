"""What each route does, free of HTTP: validated models in, response models out, `ApiError` for refusals.

Data access is `tickstream.catalog` (shared with the producer) and `tickstream.queues`; this module only maps
their results and errors onto the API's vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from chalicelib.database import Database
from chalicelib.errors import ApiError, conflict, field_errors, invalid, not_found, unavailable
from chalicelib.models import (
    BrokerCreate,
    BrokerList,
    BrokerOut,
    BrokerPatch,
    Deleted,
    HealthOut,
    RedriveOut,
    RedriveRequest,
    ScriptCreate,
    ScriptList,
    ScriptMarket,
    ScriptOut,
    ScriptPatch,
    ScriptsQuery,
    TickOut,
    TickPage,
    TicksQuery,
)
from tickstream import catalog, queues
from tickstream.exchange_endpoints import EndpointKind, endpoint_problem
from tickstream.settings import load_settings
from tickstream.venues import UnknownVenue, Venue, venue

log = logging.getLogger(__name__)
database = Database()


@contextlib.contextmanager
def _catalog_errors(subject: str) -> Iterator[None]:
    try:
        yield
    except catalog.Duplicate:
        raise conflict("duplicate", f"{subject} already exists") from None
    except catalog.UnknownBroker:
        raise invalid([{"field": "broker_id", "message": "no broker with this id"}]) from None
    except catalog.IdentityLocked as error:
        raise conflict("script_has_ticks", f"{error}: stored trade ids belong to the current market. Create a new"
                                           " script (or broker) for the new one (and deactivate the old one,"
                                           " is_active: false)") from None
    except UnknownVenue as error:  # a stored type no venue speaks
        raise invalid([{"field": "type", "message": str(error)}]) from None
    except catalog.InUse as error:
        raise conflict("in_use", f"{error}: deactivate it (is_active: false) to stop collecting, or delete with"
                                 " ?purge=true to delete the data too") from None


# --- health --------------------------------------------------------------------------------------------------

def health() -> tuple[int, HealthOut]:
    try:
        with database.connection() as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
    except ApiError:
        return 503, HealthOut(status="unavailable", database="unreachable")
    return 200, HealthOut(status="ok", database="reachable")


# --- brokers -------------------------------------------------------------------------------------------------

def _broker_out(broker: catalog.Broker) -> BrokerOut:
    return BrokerOut(**dataclasses.asdict(broker))


def list_brokers() -> BrokerList:
    with database.connection() as conn:
        return BrokerList(brokers=[_broker_out(b) for b in catalog.list_brokers(conn)])


def get_broker(broker_id: int) -> BrokerOut:
    with database.connection() as conn:
        broker = catalog.get_broker(conn, broker_id)
    if broker is None:
        raise not_found(f"no broker with id {broker_id}")
    return _broker_out(broker)


def _check_endpoints(broker_venue: Venue, api_config: Mapping[str, Any]) -> None:
    """The exchange URLs must pass the allowlist for the broker's venue (tickstream.exchange_endpoints); 422 naming
    each one that does not. The producer applies the same rule again before it connects."""
    allowed = load_settings().exchange_host_allowlist
    kinds: dict[str, EndpointKind] = {"ws_url": "ws", "rest_url": "rest"}
    refused = [{"field": f"api_config.{name}", "message": problem} for name, kind in kinds.items()
               if (url := api_config.get(name)) is not None
               and (problem := endpoint_problem(url, kind, allowed, broker_venue))]
    if refused:
        raise invalid(refused)


def create_broker(body: BrokerCreate) -> BrokerOut:
    broker = body.root
    api_config = broker.api_config.model_dump(exclude_unset=True)
    _check_endpoints(venue(broker.type), api_config)
    with database.connection() as conn, _catalog_errors(f"a broker named {broker.name!r}"):
        created = catalog.create_broker(conn, name=broker.name, type=broker.type, api_config=api_config,
                                        is_active=broker.is_active)
    return _broker_out(created)


def _check_broker(broker: catalog.Broker, scripts: list[catalog.Script]) -> None:
    """A broker as it will be after a change of type or api_config: its endpoints for its venue (422), and, for a
    new type, every script's symbol and stream in the new venue's format (409: the scripts are what conflicts)."""
    broker_venue = venue(broker.type)
    _check_endpoints(broker_venue, broker.api_config)
    misfits = [f"script {script.id} ({script.trading_symbol}): {field['field']} {field['message']}"
               for script in scripts for field in _market_problems(broker, script.trading_symbol,
                                                                   script.additional_data)]
    if misfits:
        raise conflict("scripts_do_not_fit", f"broker {broker.id} cannot become {broker.type}: {len(misfits)} of its"
                                             f" scripts do not fit {broker_venue.title}: " + "; ".join(misfits[:5]))


def update_broker(broker_id: int, body: BrokerPatch) -> BrokerOut:
    changes = _changes(body, json_fields=("api_config",))
    with database.connection() as conn, _catalog_errors(f"a broker named {changes.get('name')!r}"):
        broker = catalog.update_broker(conn, broker_id, changes, check=_check_broker)
    if broker is None:
        raise not_found(f"no broker with id {broker_id}")
    return _broker_out(broker)


def delete_broker(broker_id: int, purge: bool) -> Deleted:
    with database.connection() as conn, _catalog_errors("broker"):
        result = catalog.delete_broker(conn, broker_id, purge=purge)
    if result is None:
        raise not_found(f"no broker with id {broker_id}")
    return Deleted(id=broker_id, scripts_deleted=result.scripts_deleted, ticks_deleted=result.ticks_deleted)


def _changes(body: BrokerPatch | ScriptPatch, json_fields: tuple[str, ...]) -> dict[str, Any]:
    """The fields the client sent, nested objects as the plain dicts to store."""
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    for name in json_fields:
        if name in changes:
            changes[name] = changes[name].model_dump(exclude_unset=True)
    return changes


# --- scripts -------------------------------------------------------------------------------------------------

def _script_out(script: catalog.Script) -> ScriptOut:
    return ScriptOut(**dataclasses.asdict(script))


def list_scripts(query: ScriptsQuery) -> ScriptList:
    with database.connection() as conn:
        return ScriptList(scripts=[_script_out(s) for s in catalog.list_scripts(conn, query.broker_id)])


def _market_problems(broker: catalog.Broker, trading_symbol: str,
                     additional_data: Mapping[str, Any]) -> list[dict[str, str]]:
    """What is wrong with a script's symbol and stream for `broker`'s venue (models.ScriptMarket), as fields."""
    try:
        ScriptMarket.model_validate({"type": broker.type, "trading_symbol": trading_symbol,
                                     "additional_data": dict(additional_data)})
    except ValidationError as error:
        return field_errors(error, ScriptMarket.DISCRIMINATOR)
    return []


def _check_market(broker: catalog.Broker, trading_symbol: str, additional_data: Mapping[str, Any]) -> None:
    """422 naming trading_symbol or additional_data.* unless they fit the script's broker's venue."""
    problems = _market_problems(broker, trading_symbol, additional_data)
    if problems:
        raise invalid([{**problem, "message": f"{problem['message']} (broker {broker.id} is {broker.type})"}
                       for problem in problems])


def create_script(body: ScriptCreate) -> ScriptOut:
    subject = f"a script with trading symbol {body.trading_symbol!r} on broker {body.broker_id}"
    with database.connection() as conn, _catalog_errors(subject):
        script = catalog.create_script(conn, broker_id=body.broker_id, name=body.name,
                                       trading_symbol=body.trading_symbol,
                                       additional_data=body.additional_data.model_dump(exclude_unset=True),
                                       is_active=body.is_active, check=_check_market)
    return _script_out(script)


def update_script(script_id: int, body: ScriptPatch) -> ScriptOut:
    changes = _changes(body, json_fields=("additional_data",))
    with database.connection() as conn, _catalog_errors("a script with this trading symbol on this broker"):
        script = catalog.update_script(conn, script_id, changes, check=_check_market)
    if script is None:
        raise not_found(f"no script with id {script_id}")
    return _script_out(script)


def delete_script(script_id: int, purge: bool) -> Deleted:
    with database.connection() as conn, _catalog_errors("script"):
        result = catalog.delete_script(conn, script_id, purge=purge)
    if result is None:
        raise not_found(f"no script with id {script_id}")
    return Deleted(id=script_id, scripts_deleted=result.scripts_deleted, ticks_deleted=result.ticks_deleted)


# --- ticks ---------------------------------------------------------------------------------------------------

def read_ticks(script_id: int, query: TicksQuery) -> TickPage:
    with database.connection() as conn:
        if catalog.get_script(conn, script_id) is None:
            raise not_found(f"no script with id {script_id}")
        page = catalog.read_ticks(conn, script_id, start=query.from_, end=query.to,
                                  after=None if query.cursor is None else int(query.cursor), limit=query.limit,
                                  descending=query.order == "desc")
    return TickPage(
        script_id=script_id, order=query.order, limit=query.limit,
        ticks=[TickOut(**dataclasses.asdict(tick)) for tick in page.ticks],
        next_cursor=None if page.next_cursor is None else str(page.next_cursor),
    )


# --- queues ----------------------------------------------------------------------------------------------------

def redrive(body: RedriveRequest) -> RedriveOut:
    try:
        result = queues.redrive(method=body.method, max_messages=body.max_messages)
    except queues.RedriveInProgress as error:
        raise conflict("redrive_in_progress", str(error)) from None
    except queues.RedriveError as error:
        raise unavailable("queue_unavailable", str(error)) from None
    except Exception as error:  # botocore: endpoint down, throttled, no permission
        if not _is_aws_error(error):
            raise
        # What AWS says names accounts, roles and ARNs: the log gets it, the client a generic answer.
        log.warning("redrive failed: %s: %s", type(error).__name__, error)
        raise unavailable("queue_unavailable", "SQS refused or did not answer; try again (details are in the "
                                               "API's log)") from None
    return RedriveOut(**dataclasses.asdict(result))


def _is_aws_error(error: Exception) -> bool:
    return type(error).__module__.startswith(("botocore", "boto3"))

