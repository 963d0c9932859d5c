"""Exchange endpoints are an allowlist (issue 12, item 9): one rule (tickstream.exchange_endpoints), enforced by the
API (422 with the reason) and again by the producer (brokers skipped, every REST call and WebSocket connect checked,
no redirects followed, REST bodies read with a size cap). Servers here are real sockets on loopback addresses."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from infra.template_checks import load_template
from producer_service import rest
from producer_service.catalog_targets import load_targets_for
from producer_service.connection import ConnectionLimits, StreamConnection
from producer_service.exchanges.binance import ADAPTER as BINANCE
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient, RestError
from tests.api_fixtures import InProcessApi, reset_api_state
from tests.conftest import SIMULATOR_HOSTS
from tests.producer_harness import wait_for
from tickstream import catalog
from tickstream.exchange_endpoints import EndpointRefused, endpoint_problem, parse_host_allowlist

pytest_plugins = ["tests.api_fixtures"]
EXTRA = frozenset({"127.0.0.1", "md.example.net", "10.0.0.5"})


# --- the rule ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "kind", "allowed", "ok"), [
    ("wss://stream.binance.com:9443", "ws", frozenset(), True),
    ("wss://data-stream.binance.vision", "ws", frozenset(), True),
    ("https://api.binance.com", "rest", frozenset(), True),
    ("https://API.Binance.com/", "rest", frozenset(), True),  # host names are case-insensitive
    ("ws://stream.binance.com:9443", "ws", frozenset(), False),  # plain text even to the venue
    ("http://api.binance.com", "rest", frozenset(), False),
    ("wss://api.binance.com", "ws", frozenset(), False),  # a REST host is not a WebSocket host
    ("https://169.254.169.254/latest/meta-data", "rest", frozenset(), False),  # instance metadata
    ("wss://169.254.169.254", "ws", EXTRA, False),
    ("https://internal.corp.example", "rest", frozenset(), False),
    ("https://api.binance.com.evil.example", "rest", frozenset(), False),  # no suffix matching
    ("https://api.binance.com.", "rest", frozenset(), False),  # nor a trailing dot
    ("https://user:pw@api.binance.com", "rest", frozenset(), False),
    ("https://api.binance.com/?redirect=x", "rest", frozenset(), False),
    ("http://127.0.0.1:9001", "rest", frozenset(), False),  # the simulator only when the setting names it
    ("http://127.0.0.1:9001", "rest", EXTRA, True),
    ("ws://127.0.0.1:9000", "ws", EXTRA, True),
    ("http://localhost:9001", "rest", EXTRA, False),  # exact names: localhost is not listed
    ("https://md.example.net", "rest", EXTRA, True),
    ("http://md.example.net", "rest", EXTRA, False),  # plain text only to loopback
    ("ws://10.0.0.5:9000", "ws", EXTRA, False),
    ("wss://10.0.0.5:9000", "ws", EXTRA, True),
    ("wss://[::1]:9443", "ws", frozenset(), False),
    ("https://api.binance.com:99999", "rest", frozenset(), False),
])
def test_the_allowlist_rule(url: str, kind: Any, allowed: frozenset[str], ok: bool) -> None:
    problem = endpoint_problem(url, kind, allowed)
    assert (problem is None) == ok, problem


def test_official_hosts_are_the_brokers_venues_own() -> None:
    """A venue's official hosts are allowed for it alone; EXCHANGE_HOST_ALLOWLIST applies to every venue."""
    from tickstream.venues import VENUES

    for venue in VENUES.values():
        assert endpoint_problem(venue.ws_url, "ws", frozenset(), venue) is None
        assert endpoint_problem(venue.rest_url, "rest", frozenset(), venue) is None
        assert endpoint_problem("ws://127.0.0.1:9000", "ws", EXTRA, venue) is None
        for other in VENUES.values():
            if not other.ws_hosts & venue.ws_hosts:
                problem = endpoint_problem(other.ws_url, "ws", frozenset(), venue)
                assert problem and venue.title in problem and min(venue.ws_hosts) in problem, problem
            if not other.rest_hosts & venue.rest_hosts:
                assert endpoint_problem(other.rest_url, "rest", frozenset(), venue)
    assert endpoint_problem("wss://ws.okx.com:8443", "ws", frozenset()), "naming no venue is Binance spot, not all"


def test_the_allowlist_setting_is_host_names_or_ip_literals() -> None:
    assert parse_host_allowlist(" 127.0.0.1, MD.example.net ,,::1") == {"127.0.0.1", "md.example.net", "::1"}
    assert parse_host_allowlist(None) == frozenset()
    for bad in ("http://127.0.0.1", "127.0.0.1:9000", "host/path"):
        with pytest.raises(ValueError, match="EXCHANGE_HOST_ALLOWLIST"):
            parse_host_allowlist(bad)


# --- the API ---------------------------------------------------------------------------------------------------

def test_the_api_refuses_endpoints_outside_the_allowlist_with_a_422(api: InProcessApi,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reply = api.post("/brokers", {"name": "metadata", "api_config": {"ws_url": "wss://169.254.169.254",
                                                                      "rest_url": "http://10.1.2.3"}})
    assert (reply.status, reply.error_code) == (422, "invalid_fields")
    fields = {field["field"]: field["message"] for field in reply.json()["error"]["fields"]}
    assert set(fields) == {"api_config.ws_url", "api_config.rest_url"}
    assert "EXCHANGE_HOST_ALLOWLIST" in fields["api_config.ws_url"]

    simulator = api.post("/brokers", {"name": "sim", "api_config": {"ws_url": "ws://127.0.0.1:9000",
                                                                     "rest_url": "http://127.0.0.1:9001"}})
    assert simulator.status == 201, simulator.body  # the tests' setting names 127.0.0.1
    patched = api.patch(f"/brokers/{simulator.json()['id']}", {"api_config": {"rest_url": "https://internal.example"}})
    assert (patched.status, patched.json()["error"]["fields"][0]["field"]) == (422, "api_config.rest_url")
    assert api.get(f"/brokers/{simulator.json()['id']}").json()["api_config"]["rest_url"] == "http://127.0.0.1:9001"

    monkeypatch.delenv("EXCHANGE_HOST_ALLOWLIST")  # the default: the venues' official hosts only
    reset_api_state()
    assert api.post("/brokers", {"name": "sim2", "api_config": {"ws_url": "ws://127.0.0.1:9000"}}).status == 422
    official = api.post("/brokers", {"name": "binance", "api_config": {"ws_url": "wss://stream.binance.com:9443",
                                                                        "rest_url": "https://api.binance.com"}})
    assert official.status == 201, official.body


def test_the_template_passes_the_allowlist_to_the_api_and_the_producer() -> None:
    template = load_template()
    assert template["Parameters"]["ExchangeHostAllowlist"]["Default"] == ""  # AWS: the official hosts only
    api = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    producer = template["Resources"]["ProducerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert "EXCHANGE_HOST_ALLOWLIST" in api
    assert "EXCHANGE_HOST_ALLOWLIST" in {item["Name"] for item in producer["Environment"]}


# --- the producer: which brokers it collects -------------------------------------------------------------------

def active(script_id: int, broker_id: int, ws_url: str | None, rest_url: str | None = None) -> catalog.ActiveScript:
    return catalog.ActiveScript(script_id, broker_id, "BTCUSDT", "aggTrade", ws_url, rest_url)


def test_the_producer_skips_brokers_whose_endpoints_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    rows = [active(1, 1, None), active(2, 2, "wss://169.254.169.254"), active(3, 3, "ws://127.0.0.1:9000",
                                                                             "http://127.0.0.1:9001"),
            active(4, 4, None, "http://api.binance.com")]
    monkeypatch.setattr(catalog, "active_scripts", lambda _conn, _ids: rows)  # the rows as a catalog holds them
    load = load_targets_for(None, SIMULATOR_HOSTS)
    caplog.set_level(logging.ERROR, logger="producer_service")

    assert [broker.broker_id for broker in load(None)] == [1, 3]  # type: ignore[arg-type]
    assert [broker.broker_id for broker in load(None)] == [1, 3]  # type: ignore[arg-type]
    refused = [record.getMessage() for record in caplog.records]
    assert len(refused) == 2, refused  # once per refused endpoint, not on every refresh
    assert "169.254.169.254" in refused[0] and "http://api.binance.com" in refused[1]
    assert [broker.broker_id for broker in load_targets_for(None)(None)] == [1]  # type: ignore[arg-type]


# --- the producer's REST client --------------------------------------------------------------------------------

class Http:
    """A loopback HTTP server answering every GET with `answer(path) -> (status, headers, body)`."""

    def __init__(self, answer: Callable[[str], tuple[int, dict[str, str], bytes]], host: str = "127.0.0.1") -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.handle_error = lambda *_: None  # type: ignore[method-assign] # a client that hung up early
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server in started:
        server.close()


def test_rest_does_not_follow_a_redirect(servers: list[Any]) -> None:
    target = Http(lambda _path: (200, {}, b'{"symbols": []}'))
    redirector = Http(lambda path: (302, {"Location": target.url + path, "Content-Length": "0"}, b""))
    servers += [target, redirector]
    client = RestClient(redirector.url, allowed_hosts=SIMULATOR_HOSTS)

    with pytest.raises(RestError, match="redirect"):
        BINANCE.trading_symbols(client)
    assert redirector.paths and target.paths == []


@pytest.mark.parametrize("shape", ["declared", "undeclared", "gzip-bomb"])
def test_rest_reads_a_body_only_up_to_the_cap(servers: list[Any], monkeypatch: pytest.MonkeyPatch,
                                              shape: str) -> None:
    monkeypatch.setattr(rest, "MAX_RESPONSE_BYTES", 64 * 1024)
    huge = b'{"symbols": [' + b'{"symbol": "BTCUSDT", "status": "TRADING"},' * 100_000 + b'{}]}'  # ~4 MiB
    headers = {"Content-Length": str(len(huge))} if shape == "declared" else {}
    body = huge
    if shape == "gzip-bomb":  # 4 MiB that travel as a few KiB
        body = gzip.compress(huge)
        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(body))}
    server = Http(lambda _path: (200, headers, body))
    servers.append(server)

    with pytest.raises(RestError, match="refused"):
        BINANCE.trading_symbols(RestClient(server.url, allowed_hosts=SIMULATOR_HOSTS))


def test_rest_never_calls_a_host_outside_the_allowlist(servers: list[Any]) -> None:
    elsewhere = Http(lambda _path: (200, {}, b"{}"), host="127.0.0.2")  # loopback, but not named in the setting
    servers.append(elsewhere)
    with pytest.raises(EndpointRefused, match=r"127\.0\.0\.2"):
        BINANCE.trading_symbols(RestClient(elsewhere.url, allowed_hosts=SIMULATOR_HOSTS))
    assert elsewhere.paths == []


# --- the producer's WebSocket connect --------------------------------------------------------------------------

class Listener:
    """A loopback TCP server that counts connections and answers each with `reply` (or nothing) and closes."""

    def __init__(self, reply: Callable[[], bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.accepted = 0
        self._socket = socket.create_server((host, 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"ws://{host}:{self.port}"
        self._reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return
            self.accepted += 1
            with client:
                client.settimeout(5)
                try:
                    client.recv(65536)  # the client's upgrade request
                    if self._reply:
                        client.sendall(self._reply())
                except OSError:
                    pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


def connection(url: str) -> StreamConnection:
    conn = StreamConnection("test", url, BINANCE, ConnectionLimits(3.0, 10.0, 0.2), RateLimiter(100, 1.0),
                            lambda *_: None, lambda _conn: None, SIMULATOR_HOSTS)
    conn.start({"btcusdt@aggTrade"})
    return conn


def test_the_websocket_does_not_follow_a_redirect(servers: list[Any]) -> None:
    target = Listener()
    redirector = Listener(lambda: f"HTTP/1.1 301 Moved Permanently\r\nLocation: {target.url}/stream\r\n"
                                  "Content-Length: 0\r\n\r\n".encode())
    servers += [target, redirector]
    conn = connection(redirector.url)
    try:
        assert wait_for(lambda: redirector.accepted >= 2, timeout=10), "it tried (and retried) the endpoint"
    finally:
        conn.close()
    assert target.accepted == 0


def test_the_websocket_never_connects_outside_the_allowlist(servers: list[Any]) -> None:
    elsewhere = Listener(host="127.0.0.2")
    servers.append(elsewhere)
    conn = connection(elsewhere.url)
    try:
        assert not wait_for(lambda: elsewhere.accepted > 0, timeout=1.5)
    finally:
        conn.close()
