"""Bad input at every door: malformed exchange frames, poison SQS bodies, hostile API requests, and secrets.

Fast (seconds each, the poison-body test ~30 s for SQS's five deliveries), so not marked `drills`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.api_fixtures import TOKEN, load_api_app
from tests.conftest import make_broker, make_script
from tests.producer_harness import QueueReader, fresh_queue, running_producer, sqs, wait_for
from tickstream.codec import V2_PREFIX
from tickstream.settings import DatabaseSettings
from tickstream.venues import VENUES

pytest_plugins = ["tests.api_fixtures"]
REPO_ROOT = Path(__file__).resolve().parent.parent
T0_MS = 1_760_000_000_000


# --- malformed WebSocket frames ---------------------------------------------------------------------------------

class ScriptedExchange:
    """Just enough of Binance's combined-stream endpoint to send the producer exactly the frames a test chooses: it
    acknowledges SUBSCRIBE and relays `send()`'s frames verbatim (text, or bytes as binary frames)."""

    def __init__(self) -> None:
        self.connections = 0
        self.subscribed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._clients: set[ServerConnection] = set()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), name="scripted-exchange", daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        async def listen() -> Any:
            return await serve(self._serve, "127.0.0.1", 0, max_size=None)

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(listen())
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _serve(self, ws: ServerConnection) -> None:
        self.connections += 1
        self._clients.add(ws)
        try:
            async for message in ws:
                request = orjson.loads(message)
                await ws.send(orjson.dumps({"result": None, "id": request.get("id")}).decode())
                if request.get("method") == "SUBSCRIBE":
                    self.subscribed.set()
        finally:
            self._clients.discard(ws)

    def send(self, frames: list[str | bytes]) -> None:
        async def relay() -> None:
            for ws in list(self._clients):
                for frame in frames:
                    await ws.send(frame)

        asyncio.run_coroutine_threadsafe(relay(), self._loop).result(timeout=30)

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def agg_trade(trade_id: int, **overrides: Any) -> dict[str, Any]:
    event = {"e": "aggTrade", "E": T0_MS + trade_id, "s": "BTCUSDT", "a": trade_id, "p": "95000.12000000",
             "q": "0.00100000", "f": trade_id, "l": trade_id, "T": T0_MS + trade_id, "m": True, "M": True}
    return {**event, **overrides}


def envelope(data: Any, stream: str = "btcusdt@aggTrade") -> str:
    return json.dumps({"stream": stream, "data": data})  # not orjson: it refuses ints beyond 64 bits


MEGABYTE = 1024 * 1024
# Every kind of frame the producer must count, log with a sample and skip, keeping the connection.
MALFORMED_FRAMES: dict[str, str | bytes] = {  # the first 10 are logged (then every 1000th): huge ones first
    "huge non-JSON (1 MB)": "x" * MEGABYTE,
    "huge JSON, unknown event (1 MB)": envelope({"e": "mysteryEvent", "pad": "x" * MEGABYTE}),
    "huge price (1 MB of digits)": envelope(agg_trade(5, p="9" * MEGABYTE)),
    "huge event type (1 MB)": envelope({"e": "x" * MEGABYTE}),
    "not JSON": "<<garbage>>",
    "truncated JSON": '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","a":',
    "JSON array": "[1, 2, 3]",
    "envelope whose data is a list": envelope([1, 2, 3]),
    "unknown event type": envelope({"e": "mysteryEvent", "E": T0_MS, "s": "BTCUSDT", "x": 0.5}),
    "absurd numbers": envelope(agg_trade(-5, p="-42.00000000", q="1e999", T=2**70, E=-1, m="maybe")),
    "id beyond 64 bits": envelope(agg_trade(2**70)),
    "non-numeric price": envelope(agg_trade(7, p="NaN")),
    "price in Arabic-Indic digits": envelope(agg_trade(8, p="١٢٣.٤")),  # `\d` takes it; the ingest never would
    "quantity in fullwidth digits": envelope(agg_trade(9, q="０.５")),
    "empty": "",
    "JSON null": "null",
    "object that is no envelope": '{"unexpected": true}',
    "binary, invalid UTF-8": b"\xff\xfe\x00garbage\x80",
}


@pytest.fixture
def scripted_exchange() -> Iterator[ScriptedExchange]:
    exchange = ScriptedExchange()
    yield exchange
    exchange.close()


@pytest.mark.localstack
def test_malformed_frames_are_logged_counted_and_skipped(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, scripted_exchange: ScriptedExchange,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each bad frame sits between two valid trades. Afterwards: every valid trade reached SQS once, every bad frame
    was counted and (up to the first 10, then every 1000th) logged with a bounded sample, and the one connection
    the producer opened is still the only one. An absurd jump in ids is held as suspect, never forwarded."""
    api_config = orjson.dumps({"ws_url": scripted_exchange.ws_url, "rest_url": "http://127.0.0.1:9"}).decode()
    script_id = make_script(db, make_broker(db, "Scripted exchange", api_config), "BTCUSDT")
    client = sqs(localstack.endpoint_url)
    queue_url = fresh_queue(client)
    caplog.set_level(logging.WARNING, logger="producer_service")
    try:
        with running_producer(db_settings, localstack.endpoint_url, queue_url, tmp_path) as producer:
            assert scripted_exchange.subscribed.wait(15), "the producer subscribed"
            frames: list[str | bytes] = [envelope(agg_trade(1))]
            next_id = 2
            jump = envelope(agg_trade(10**15, E=T0_MS, T=T0_MS))  # a valid shape, an absurd jump in ids
            for bad in [*MALFORMED_FRAMES.values(), jump]:
                frames += [bad, envelope(agg_trade(next_id))]
                next_id += 1
            scripted_exchange.send(frames)
            reader = QueueReader(client, queue_url)
            valid = set(range(1, next_id))
            assert reader.wait_for(lambda: reader.ids(script_id) >= valid, timeout=20)
            reader.wait_for(lambda: False, timeout=1.0)  # anything extra would arrive now
            feed = next(iter(producer.service.feeds.values()))
            assert reader.ids(script_id) == valid, "every valid trade, and nothing else"
            assert reader.duplicates() == []
            assert feed.malformed == len(MALFORMED_FRAMES)
            assert producer.service.sequencer.suspects == 1, "the far-off id was held, not forwarded"
            assert scripted_exchange.connections == 1, "bad frames never cost the connection"
    finally:
        client.delete_queue(QueueUrl=queue_url)
    samples = [r.getMessage() for r in caplog.records if "skipped malformed frame" in r.getMessage()]
    assert len(samples) == min(10, len(MALFORMED_FRAMES))
    assert all(len(sample) < 1000 for sample in samples), "samples and reasons are bounded, even for 1 MB frames"
    assert any("<<garbage>>" in sample for sample in samples)
    assert any("skipped trade id 1000000000000000" in r.getMessage() for r in caplog.records), "the suspect id"
    assert not [r for r in caplog.records if "connection lost" in r.getMessage()]


# --- poison SQS bodies -----------------------------------------------------------------------------------------

T0_US = T0_MS * 1000


def tick_row(script_id: int, trade_id: int, **changes: Any) -> list[Any]:
    row = {"script_id": script_id, "trade_id": trade_id, "price": "95000.12", "quantity": "0.001", "maker": 1,
           "traded": T0_US + trade_id, "event": T0_US + trade_id, "received": T0_US + trade_id, **changes}
    return list(row.values())


def v1(*rows: list[Any]) -> str:
    return orjson.dumps({"v": 1, "ticks": list(rows)}).decode()


def v2(*rows: list[Any], raw: bytes | None = None) -> str:
    text = "".join("\t".join(str(field) for field in row) + "\n" for row in rows).encode()
    return V2_PREFIX + base64.b64encode(zlib.compress(text if raw is None else raw)).decode()


def poison_bodies(script_id: int) -> dict[str, str]:
    """Every way a body can be wrong as a whole; each is one record that must fail alone and end in the DLQ."""
    return {
        "not JSON": "this is not JSON {",
        "JSON, not an object": "[1, 2, 3]",
        "wrong version": orjson.dumps({"v": 2, "ticks": [tick_row(script_id, 1)]}).decode(),
        "no version": orjson.dumps({"ticks": [tick_row(script_id, 2)]}).decode(),
        "no ticks": '{"v": 1}',
        "v2: not base64": V2_PREFIX + "%%%",
        "v2: not zlib": V2_PREFIX + base64.b64encode(b"plain text").decode(),
        "v2: truncated": v2(tick_row(script_id, 14))[:-8],
        "v2: zip bomb": v2(raw=b"1" * (40 * 1024 * 1024)),
    }


def bad_row_bodies(script_id: int) -> dict[str, str]:
    """Valid bodies with invalid rows; each must store its valid rows and dead-letter only its invalid ones."""
    return {
        "row missing fields": v1(tick_row(script_id, 3)[:7]),
        "negative trade id": v1(tick_row(script_id, -4)),
        "negative script id": v1(tick_row(-script_id, 5)),
        "non-numeric price": v1(tick_row(script_id, 6, price="12,5 EUR")),
        "price as a float": v1(tick_row(script_id, 7, price=95000.12)),
        "time out of range": v1(tick_row(script_id, 8, traded=-1)),
        "valid rows, then one bad": v1(tick_row(script_id, 9), tick_row(script_id, 10, quantity="-1")),
        "oversized (200 KB)": v1(tick_row(script_id, 11, price="9" * 200_000)),  # 256 KiB: some queues' limit
        "v2: valid rows, then one bad": v2(tick_row(script_id, 12), tick_row(script_id, 13, price="1e5")),
        "v2: unterminated last row": v2(raw=b"\t".join(str(field).encode() for field in tick_row(script_id, 16))),
        "v2: Arabic-Indic digits": v2(tick_row(script_id, 17, price="١٢٣.٤"), tick_row(script_id, 18)),
    }
VALID_ROWS_OF_BAD_ROW_BODIES = {9, 12, 18}


def send_all(client: Any, queue_url: str, bodies: list[str]) -> dict[str, str]:
    """{body: message id}; one by one: a batch request is capped at 1 MiB in total."""
    return {body: client.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"] for body in bodies}


def drain(client: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message in the queue, deleted as read."""
    messages: list[dict[str, Any]] = []
    while batch := client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                          AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", []):
        messages += batch
        client.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
    return messages


def arrived(collected: list[dict[str, Any]], client: Any, queue_url: str, bodies: set[str]) -> bool:
    """Drain the queue into `collected` (it may hold other tests' messages too); True once all `bodies` are in."""
    collected += drain(client, queue_url)
    return bodies <= {message["Body"] for message in collected}


def stored_count(conn: pymysql.Connection, script_id: int) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM ticks WHERE script_id = %s", (script_id,))
        return cursor.fetchone()[0]


def function_log_lines(aws: Any, stack_name: str, logical_id: str, since_ms: int) -> list[str]:
    resources = aws("cloudformation").describe_stack_resources(StackName=stack_name)["StackResources"]
    name = next(r["PhysicalResourceId"] for r in resources if r["LogicalResourceId"] == logical_id)
    pages = aws("logs").get_paginator("filter_log_events").paginate(logGroupName=f"/aws/lambda/{name}",
                                                                     startTime=since_ms)
    return [event["message"] for page in pages for event in page["events"]]


@pytest.mark.localstack
def test_poison_bodies_fail_alone_and_land_in_the_dlq(aws: Any, tickstream_stack: dict[str, str],
                                                      db: pymysql.Connection) -> None:
    """Poison bodies sent between good ones through the deployed queue: the good ones are stored, each poison one
    is reported failed by itself, retried, and moved to the DLQ after maxReceiveCount; the function logged why, with
    the message id and a bounded sample of the body. A body with invalid rows succeeds at once: its valid rows are
    stored, and the DLQ gets a message of its own holding only the invalid rows, named (row, field)."""
    from tickstream.codec import pack_ticks, split_message
    from tickstream.dead_letters import INVALID_ROWS, SOURCE_MESSAGE_ID
    from tickstream.ticks import Tick

    script_id = make_script(db, make_broker(db, "Poison test"), "BTCUSDT")
    good = list(pack_ticks([Tick(script_id, i, "1.5", "2", i % 2 == 0, T0_US + i, T0_US + i, T0_US + i)
                            for i in range(1000, 4000)], max_bytes=8 * 1024))
    poison, bad_rows = poison_bodies(script_id), bad_row_bodies(script_id)
    started_ms = int(time.time() * 1000)
    client = aws("sqs")
    interleaved = [body for pair in itertools.zip_longest(good, [*poison.values(), *bad_rows.values()])
                   for body in pair if body is not None]
    dlq = tickstream_stack["TicksDeadLetterQueueUrl"]
    dead: list[dict[str, Any]] = []
    try:
        sent = send_all(client, tickstream_stack["TicksQueueUrl"], interleaved)
        expected_stored = 3000 + len(VALID_ROWS_OF_BAD_ROW_BODIES)
        assert wait_for(lambda: stored_count(db, script_id) == expected_stored, timeout=60), "every valid tick"
        assert wait_for(lambda: arrived(dead, client, dlq, set(poison.values())), timeout=120), "poison in the DLQ"
    finally:
        dead += drain(client, dlq)
    mine = [m for m in dead if m["Body"] in set(poison.values())]
    assert sorted(m["Body"] for m in mine) == sorted(poison.values()), "each poison body once"
    assert all(int(m["Attributes"]["ApproximateReceiveCount"]) >= 5 for m in mine)
    assert stored_count(db, script_id) == expected_stored, "no tick of a poison body, every valid row of the others"
    letters = {m["MessageAttributes"][SOURCE_MESSAGE_ID]["StringValue"]: m for m in dead if m.get("MessageAttributes")}
    for name, body in bad_rows.items():
        split = split_message(body)
        letter = letters[sent[body]]
        assert letter["Body"] == split.body_of(split.invalid), f"{name}: only its invalid rows, as they were"
        assert orjson.loads(letter["MessageAttributes"][INVALID_ROWS]["StringValue"]) == [
            [row.index, row.field] for row in split.invalid], name
    assert len([m for m in dead if m.get("MessageAttributes")]) == len(bad_rows), "one dead letter per such body"
    lines = function_log_lines(aws, "tickstream-test", "IngestFunction", started_ms)
    rejections = [line for line in lines if "rejected SQS record" in line]
    logged_ids = {orjson.loads(line[line.index("{"):])["message_id"] for line in rejections}
    assert {m["MessageId"] for m in mine} <= logged_ids, "each poison message logged with its id"
    assert all(len(line) < 3000 for line in rejections), "reasons and samples are bounded, even for a 200 KB body"
    dead_lettered = [line for line in lines if "sent invalid rows to the DLQ" in line]
    assert {orjson.loads(line[line.index("{"):])["message_id"] for line in dead_lettered} == {
        sent[body] for body in bad_rows.values()}, "each body with invalid rows logged once, with its id"
    assert all(len(line) < 3000 for line in dead_lettered)


# --- secrets in the repository -----------------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\W{1,4}[A-Za-z0-9/+=]{40}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:[^\s:/@'\"]{3,}@"),
}
# `name = value` / `name: value` where the name ends in a secret's word; the value must be empty, a dummy, a flag
# or a reference.
SECRET_ASSIGNMENT = re.compile(r"""(?ix)\b([\w.-]*(?:password|passwd|secret|token|api[_-]?key))["']?
                                   [ \t]*[:=][ \t]*["']?([^"'\s,;)}\]\#]*)""")
HARMLESS_VALUES = re.compile(r"""(?ix)^(|test|none|null|false|true|on|off|yes|no|x+|\*+|\.\.\.|<[^>]*>
                                 |\$\{?[\w:.-]*\}?|!\w+|arn:[\w:/.*-]+)$""")
# Documented local-only examples (events/env-vars.example.json): each with the reason it is not a secret.
EXAMPLE_VALUES = {"tickstream": "docker-compose.localstack.yml's default password of its own throw-away MySQL",
                  "local-example-token-not-a-secret": "the example API token of events/, for sam local only"}
CONFIG_SUFFIXES = (".env", ".example", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".json", ".conf", "Makefile")
HIGH_ENTROPY_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
# Random-looking but public: each with the reason it is not a secret.
PUBLIC_TOKENS = {"AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a": "receipt handle of AWS's documented sample SQS event",
                 "AWS_EXECUTION_ENV=AWS_Lambda_python3": "the Lambda runtime's documented execution environment",
                 "bench/results/": "a committed benchmark result's path (a stage name and a UTC timestamp)"}
# Compressed tick messages (events/ingest.json) are random-looking by nature; they are data, decoded by the test
# of that fixture, so they are taken out before the entropy scan (nothing else after the prefix is).
TICK_MESSAGE = re.compile(re.escape(V2_PREFIX) + r"[A-Za-z0-9+/]+=*")


def repository_files() -> list[Path]:
    """What is or would be committed: tracked files plus untracked ones .gitignore does not exclude."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [REPO_ROOT / name for name in listed if name and (REPO_ROOT / name).is_file()]


def shannon_bits(text: str) -> float:
    counts = {char: text.count(char) for char in set(text)}
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(token: str) -> bool:
    """A random key or token (not a word, path, hex digest or identifier): mixed classes and high entropy."""
    classes = sum(bool(re.search(pattern, token)) for pattern in (r"[a-z]", r"[A-Z]", r"\d"))
    return classes == 3 and shannon_bits(token) > 4.5 and not re.fullmatch(r"[A-Za-z_]+\d*", token)


def secret_findings(path: Path, text: str) -> list[str]:
    findings = [f"{path.name}: {kind}" for kind, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    if path.name.endswith(CONFIG_SUFFIXES) or path.name.startswith(".env"):
        findings += [f"{path.name}: {name} = {value[:4]}..." for name, value in SECRET_ASSIGNMENT.findall(text)
                     if not HARMLESS_VALUES.match(value) and value not in EXAMPLE_VALUES]
    findings += [f"{path.name}: random-looking {token[:6]}..."
                 for token in HIGH_ENTROPY_TOKEN.findall(TICK_MESSAGE.sub("", text))
                 if looks_random(token) and not token.startswith(tuple(PUBLIC_TOKENS))]
    return findings


def test_no_credential_or_token_is_committed() -> None:
    """Scans every file git would commit for AWS keys, private keys, tokens, passwords set in config files, and
    random-looking strings (the shape of API tokens and generated passwords)."""
    findings = []
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        findings += [f"{path.relative_to(REPO_ROOT).parent}/{finding}"
                     for finding in secret_findings(path, data.decode(errors="replace"))]
    assert findings == []


def test_the_secret_scan_finds_what_it_should() -> None:
    """The scanner itself, on planted examples (so a green scan means something)."""
    planted = {  # assembled at run time, so that this file itself passes the scan
        ".env": "DB_PASSWORD=" + "hunter2hunter2\n",
        "config.json": '{"api_token": ' + '"a-real-token-value"}',
        "app.py": 'KEY = "AKIA' + 'IOSFODNN7EXAMPLE"\nurl = "mysql://root:' + 's3cret@db:3306/x"\n',
        "notes.md": "token Zq8XkP2vR9tY4wL7" + "mN3bV6cH1jF5dS0a\n",
        "deploy.yaml": "-----BEGIN RSA " + "PRIVATE KEY-----\n",
    }
    for name, text in planted.items():
        assert secret_findings(Path(name), text), name
    harmless = {".env.example": "DB_PASSWORD=\nAPI_TOKEN=\nAWS_SECRET_ACCESS_KEY=test\n",
                "template.yaml": "DbPassword:\n  NoEcho: true\n  Default: \"\"\nPassword: !Ref DbPassword\n",
                "app.py": "token = settings.api_token\n"
                          "sha = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'"}
    for name, text in harmless.items():
        assert secret_findings(Path(name), text) == [], name


# --- hostile API requests -----------------------------------------------------------------------------------------

INJECTIONS = ["' OR '1'='1", "1; DROP TABLE ticks; --", "Robert'); DELETE FROM brokers;--", "%' UNION SELECT 1,2--",
              "1 OR 1=1", "\\'; SELECT SLEEP(5); --", "0x31", "${jndi:ldap://x}", "\0", "١٢"]
WRONG_AUTH = {"none": None, "wrong token": "Bearer not-the-token", "injection": "Bearer ' OR '1'='1",
              "basic scheme": "Basic dXNlcjpwYXNz", "empty bearer": "Bearer ", "huge": "Bearer " + "A" * 16_000}
WRONG_CONTENT_TYPES = ["text/plain", "application/xml", "application/x-www-form-urlencoded",
                       "multipart/form-data; boundary=x", "application/octet-stream"]


def checksum(conn: pymysql.Connection) -> dict[str, int]:
    """CHECKSUM TABLE over what the API may change: any changed, added or removed row changes it. A purge deletes
    nothing in the request but queues a job, so a purge that slipped through shows in `jobs`."""
    with conn.cursor() as cursor:
        cursor.execute("CHECKSUM TABLE brokers, scripts, ticks, jobs")
        return {table.rsplit(".", 1)[1]: value for table, value in cursor.fetchall()}


@pytest.fixture
def seeded(http_api: Any, db: pymysql.Connection) -> dict[str, int]:
    """One broker with one script and 49 ticks (id 20 missing, in the gap ledger), and a finished job, so that every
    id in a path names something real and the completeness routes have something to show; and a broker of each
    venue type with one script (`<type>_broker_id`, `<type>_script_id`). The first broker is inactive: a purge of it
    that got through would queue a job (202), which the checksum sees."""
    from tickstream.coverage import rebuild
    from tickstream.tick_store import insert_ticks_ignore
    from tickstream.ticks import Tick

    broker_id = make_broker(db, "Seeded")
    script_id = make_script(db, broker_id, "BTCUSDT")
    insert_ticks_ignore(db, [Tick(script_id, i, "1.5", "2", False, T0_US + i, T0_US + i, T0_US + i)
                             for i in range(1, 51) if i != 20])
    rebuild(db, [script_id])  # a day of coverage with a hole, a gap in the ledger and a producer status to show
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO gaps (script_id, first_trade_id, last_trade_id, next_trade_id, cause)"
                       " VALUES (%s, 20, 20, 20, 'stream_jump')", (script_id,))
        cursor.execute("INSERT INTO producer_status (script_id, broker_id, state, reported_at)"
                       " VALUES (%s, %s, 'subscribed', UTC_TIMESTAMP(6))", (script_id, broker_id))
        cursor.execute("UPDATE brokers SET is_active = FALSE WHERE id = %s", (broker_id,))
        cursor.execute("INSERT INTO jobs (kind, state) VALUES ('retention', 'done')")  # for GET /jobs/{job_id}
        job_id = cursor.lastrowid
    ids = {"broker_id": broker_id, "script_id": script_id, "job_id": job_id}
    for venue in VENUES.values():
        with db.cursor() as cursor:
            cursor.execute("INSERT INTO brokers (type, name, api_config) VALUES (%s, %s, '{}')",
                           (venue.type, f"Seeded {venue.title}"))
            ids[f"{venue.type}_broker_id"] = cursor.lastrowid
        ids[f"{venue.type}_script_id"] = make_script(db, ids[f"{venue.type}_broker_id"], venue.symbol_example,
                                                     venue.streams[0])
    return ids


def operations(http_api: Any, token: str = TOKEN) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) from the API's own OpenAPI document: new routes are covered without an edit."""
    document = http_api.get("/openapi.json", token=token).json()
    return [(method.upper(), path, operation) for path, methods in document["paths"].items()
            for method, operation in methods.items()]


def valid_body(method: str, path: str, ids: dict[str, int]) -> dict[str, Any] | None:
    """A body the route would accept (so that only the hostile part can be why it is refused)."""
    bodies = {("POST", "/brokers"): {"name": "Fresh broker"}, ("PATCH", "/brokers/{broker_id}"): {"name": "Renamed"},
              ("POST", "/scripts"): {"broker_id": ids["broker_id"], "name": "ETH", "trading_symbol": "ETHUSDT"},
              ("PATCH", "/scripts/{script_id}"): {"name": "Renamed"}, ("POST", "/dlq/redrive"): {}}
    return bodies.get((method, path))


def concrete_path(path: str, ids: dict[str, int], value: str | None = None) -> str:
    return re.sub(r"{(\w+)}", lambda match: value if value is not None else str(ids[match.group(1)]), path)


def assert_refused_without_change(http_api: Any, db: pymysql.Connection, method: str, path: str,
                                  expected: tuple[int, ...] = (), **kwargs: Any) -> int:
    before = checksum(db)
    reply = http_api.request(method, path, **kwargs)
    what = f"{method} {path[:80]} {str(kwargs)[:200]}"
    assert reply.status_code < 500, f"{what}: {reply.status_code} {reply.text[:300]}"
    assert reply.status_code >= 400, f"{what}: accepted with {reply.status_code}"
    assert not expected or reply.status_code in expected, f"{what}: {reply.status_code} {reply.text[:300]}"
    assert checksum(db) == before, f"{what}: a refused request changed rows"
    return reply.status_code


def test_the_checksum_sees_a_purge_that_got_through(http_api: Any, db: pymysql.Connection,
                                                    seeded: dict[str, int]) -> None:
    """The guard of the tests below: with the token, the seeded broker's purge is accepted (a job, nothing deleted
    yet) and the checksum changes; so a hostile request that did the same could not pass unseen."""
    before = checksum(db)
    reply = http_api.request("DELETE", f"/brokers/{seeded['broker_id']}?purge=true")
    assert (reply.status_code, reply.json()["kind"]) == (202, "purge_broker"), reply.text
    assert checksum(db) != before


def test_no_or_wrong_token_is_refused_on_every_route(http_api: Any, db: pymysql.Connection,
                                                     seeded: dict[str, int]) -> None:
    """Every route but /health, every way of not having the token, with a body the route would accept: 401, and no
    row changes (a DELETE or POST that slipped through would)."""
    load_api_app()
    from chalicelib import auth

    for method, path, _ in operations(http_api):
        if path in auth.PUBLIC_ROUTES:
            continue
        for header in WRONG_AUTH.values():
            headers = {} if header is None else {"Authorization": header}
            assert_refused_without_change(http_api, db, method, concrete_path(path, seeded), (401,), token=None,
                                          headers=headers, json=valid_body(method, path, seeded))


def test_wrong_content_types_huge_and_malformed_bodies_are_refused(http_api: Any, db: pymysql.Connection,
                                                                   seeded: dict[str, int]) -> None:
    """Every route taking a JSON body: valid JSON under a wrong content type (415), bodies of 2 MB and 6 MB, a
    100,000-deep nesting, bodies that are not JSON or not an object: all 4xx, no row changed."""
    megabyte = 1024 * 1024
    hostile_bodies = [b"{", b"not json", b"[]", b'"x"', b"null", b"NaN", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
                      orjson.dumps({"name": "x" * 2 * megabyte}), b"{" + b" " * 6 * megabyte + b"}"]
    json_routes = [(m, p) for m, p, op in operations(http_api) if "application/json" in op.get("requestBody", {})
                   .get("content", {})]
    assert json_routes and all(valid_body(m, p, seeded) is not None for m, p in json_routes), "a body for each"
    for method, path in json_routes:
        url = concrete_path(path, seeded)
        body = orjson.dumps(valid_body(method, path, seeded))
        for content_type in WRONG_CONTENT_TYPES:
            assert_refused_without_change(http_api, db, method, url, (415,), data=body,
                                          headers={"Content-Type": content_type})
        for hostile in hostile_bodies:
            assert_refused_without_change(http_api, db, method, url, data=hostile,
                                          headers={"Content-Type": "application/json"})


def test_sql_injection_in_path_and_query_parameters_changes_nothing(http_api: Any, db: pymysql.Connection,
                                                                    seeded: dict[str, int]) -> None:
    """Injection strings as every path id (GET, PATCH, DELETE alike) and as every query parameter: never a 5xx,
    never a changed row; an id that is not a number is a 404, a query value that is not valid a 422."""
    for method, path, operation in operations(http_api):
        body = valid_body(method, path, seeded)
        parameters = operation.get("parameters", [])
        for injection in INJECTIONS:
            if any(p["in"] == "path" for p in parameters):
                assert_refused_without_change(http_api, db, method, concrete_path(path, seeded, quote(injection)),
                                              (404, 422), json=body)
            for parameter in (p for p in parameters if p["in"] == "query"):
                url = concrete_path(path, seeded) + f"?{parameter['name']}={quote(injection)}"
                if method == "GET":  # a GET may answer 200 (a free-form value); it must still change nothing
                    before = checksum(db)
                    reply = http_api.request(method, url)
                    assert reply.status_code < 500 and checksum(db) == before, (url, reply.status_code, reply.text)
                else:
                    assert_refused_without_change(http_api, db, method, url, (422,), json=body)


def quote(value: str) -> str:
    from urllib.parse import quote as url_quote

    return url_quote(value, safe="")


def venue_body(method: str, path: str, type_: str, ids: dict[str, int]) -> dict[str, Any]:
    """A body the route would accept for a broker (or a script of a broker) of venue `type_`."""
    symbol = "ETH-USDT" if type_ == "okx" else "ETHUSDT"
    bodies = {("POST", "/brokers"): {"name": "Fresh broker", "type": type_},
              ("PATCH", "/brokers/{broker_id}"): {"name": "Renamed", "type": type_},
              ("POST", "/scripts"): {"broker_id": ids[f"{type_}_broker_id"], "name": "ETH", "trading_symbol": symbol},
              ("PATCH", "/scripts/{script_id}"): {"name": "Renamed"}}
    return bodies[(method, path)]


@pytest.mark.parametrize("type_", list(VENUES))
def test_sql_injection_in_text_fields_is_refused_or_stored_verbatim(http_api: Any, db: pymysql.Connection,
                                                                    seeded: dict[str, int], type_: str) -> None:
    """Injection strings in every string field of every JSON body (top level and nested objects), for brokers and
    scripts of each venue type: either refused with a 4xx and no row changed, or accepted and stored exactly as
    sent, with no other row touched."""
    ids = {**seeded, "broker_id": seeded[f"{type_}_broker_id"], "script_id": seeded[f"{type_}_script_id"]}
    for method, path in [("POST", "/brokers"), ("PATCH", "/brokers/{broker_id}"), ("POST", "/scripts"),
                         ("PATCH", "/scripts/{script_id}")]:
        for field in ("name", "type", "trading_symbol", "api_config.ws_url", "api_config.rest_url", "api_config.note",
                      "additional_data.stream", "additional_data.note"):
            for injection in INJECTIONS:
                body = with_field(venue_body(method, path, type_, ids), field, injection)
                before = checksum(db)
                reply = http_api.request(method, concrete_path(path, ids), json=body)
                assert reply.status_code < 500, (method, path, field, injection, reply.text[:300])
                if reply.status_code >= 400:
                    assert checksum(db) == before, (method, path, field, injection)
                    continue
                stored = http_api.get(f"{path.split('/{')[0]}/{reply.json()['id']}").json()
                sent = injection.upper() if field == "trading_symbol" else injection  # symbols are upper-cased
                assert dig(stored, field) == sent, (field, injection, stored)
                undo(db, method, path, reply.json()["id"], before)


def with_field(body: dict[str, Any], dotted: str, value: str) -> dict[str, Any]:
    outer, _, inner = dotted.partition(".")
    return {**body, outer: {inner: value}} if inner else {**body, outer: value}


def dig(document: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        document = (document or {}).get(part)  # type: ignore[assignment]
    return document


def undo(db: pymysql.Connection, method: str, path: str, row_id: int, before: dict[str, int]) -> None:
    """Put back what an accepted request changed, checking it touched nothing else."""
    table = path.strip("/").split("/")[0]
    with db.cursor() as cursor:
        if method == "POST":
            cursor.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))  # table: a literal of this test
    after = checksum(db)
    untouched = {name: value for name, value in before.items() if not (method == "PATCH" and name == table)}
    assert {name: after[name] for name in untouched} == untouched, f"{method} {path} changed other rows"


# Schemathesis with a larger budget than the API's own regular tests, a fixed seed (override to explore) so a failure
# reproduces. Its time goes into generating cases (one core), not into the API: the operations are split into groups,
# one schemathesis process each, run side by side.
BAD_INPUT_FUZZ_EXAMPLES = int(os.environ.get("TICKSTREAM_BAD_INPUT_FUZZ_EXAMPLES", "200"))
FUZZ_SEED = os.environ.get("TICKSTREAM_FUZZ_SEED", "20260301")
FUZZ_CONFIG = """
[phases.coverage]
# TRACE and QUERY never reach the app behind API Gateway; chalice local's http.server answers them with its own 501.
unexpected-methods = ["get", "put", "post", "delete", "options", "patch"]
"""
FUZZ_GROUPS = (("--include-path-regex", "^/scripts"), ("--exclude-path-regex", "^/scripts"))


@dataclass(frozen=True)
class FuzzRun:
    outputs: list[str]  # stdout + stderr tail of each failed process
    generated: int
    tested: set[str]  # "METHOD /path" of every operation schemathesis tested


def schemathesis(http_api: Any, token: str, checks: str, tmp_path: Path, *extra: str,
                 max_examples: int = BAD_INPUT_FUZZ_EXAMPLES) -> FuzzRun:
    """The schemathesis CLI on the API's own schema (fetched with the right token), requests sent with `token`,
    one process per FUZZ_GROUPS entry at once."""
    config, schema = tmp_path / "schemathesis.toml", tmp_path / "openapi.json"
    config.write_text(FUZZ_CONFIG)
    schema.write_bytes(http_api.get("/openapi.json").content)
    runs = []
    for index, group in enumerate(FUZZ_GROUPS):
        junit = tmp_path / f"junit-{index}.xml"
        command = [
            str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run", str(schema),
            "--url", http_api.base_url, "--header", f"Authorization: Bearer {token}", "--header", "Connection: close",
            "--request-retries", "2", "--checks", checks, "--mode", "all", "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(max_examples), "--seed", FUZZ_SEED, "--request-timeout", "10",
            "--workers", "2", *group, *extra, "--report", "junit", "--report-junit-path", str(junit),
        ]
        runs.append((junit, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             cwd=tmp_path)))
    failed, generated, tested = [], 0, set()
    for junit, process in runs:
        stdout, stderr = process.communicate(timeout=600)
        if process.returncode != 0:
            failed.append(stdout[-6000:] + stderr[-2000:])
        found = re.search(r"(\d+) generated", stdout)
        generated += int(found.group(1)) if found else 0
        if junit.is_file():
            tested |= {case.get("name") for case in ET.parse(junit).getroot().iter("testcase")}
    return FuzzRun(failed, generated, tested)


def fuzzed_operations(*excluded: str) -> set[str]:
    """Every route as schemathesis names it ("GET /brokers"), less `excluded` paths."""
    app = load_api_app().app
    from chalicelib import openapi  # importable once load_api_app put it on sys.path

    routes = openapi.chalice_routes(app.routes)
    return {f"{method} {path}" for path, method in routes if path not in excluded}


def test_schemathesis_with_a_larger_budget_finds_no_server_error(http_api: Any, seeded: dict[str, int],
                                                                 tmp_path: Path) -> None:
    """Valid and invalid requests generated from the API's schema (`--mode all`), 200 per operation: no 5xx, every
    answer as documented, every operation tested. (/dlq/redrive needs queues: tests/test_api_queues.py and the
    drills cover it.)"""
    checks = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
    result = schemathesis(http_api, TOKEN, checks, tmp_path, "--exclude-path", "/dlq/redrive")
    assert result.outputs == [], "\n".join(result.outputs)
    assert result.tested == fuzzed_operations("/dlq/redrive"), result.tested
    assert result.generated >= 1000, result.generated


def test_schemathesis_with_a_wrong_token_changes_no_row(http_api: Any, db: pymysql.Connection,
                                                        seeded: dict[str, int], tmp_path: Path) -> None:
    """Generated requests on every route with a wrong token: no 5xx, and not one row changed. (A smaller budget:
    all of them stop at the same check.)"""
    before = checksum(db)
    result = schemathesis(http_api, "wrong-" + TOKEN, "not_a_server_error", tmp_path, max_examples=50)
    assert result.outputs == [], "\n".join(result.outputs)
    assert result.tested == fuzzed_operations(), result.tested
    assert checksum(db) == before


# --- secrets in API answers and logs ------------------------------------------------------------------------------

def test_api_errors_and_log_name_no_secret(db_settings: DatabaseSettings, seeded: dict[str, int],
                                           tmp_path: Path) -> None:
    """The API with a random token, connecting as a MariaDB user with a random password through a TCP proxy: every
    route is called with the right token, a wrong one and none, first with the database reachable, then with the
    proxy cut. No 5xx but 503, and neither secret appears in any answer or in the API's log."""
    import secrets as random_secrets

    from tests.api_fixtures import HttpApi, start_chalice_local, stop_chalice_local
    from tests.drill_harness import create_db_user, drop_db_user
    from tests.tcp_proxy import TcpProxy

    token, user = random_secrets.token_urlsafe(24), create_db_user(db_settings)
    proxy = TcpProxy(db_settings.host, db_settings.port)
    env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port), "DB_USER": user.user, "DB_PASSWORD": user.password,
           "DB_NAME": user.name, "API_TOKEN": token}
    server = start_chalice_local(env, tmp_path / "api.log")
    answers = []
    try:
        http_api = HttpApi(server.url)
        routes = operations(http_api, token)
        for reachable in (True, False):
            if not reachable:
                proxy.cut()
            answers += [http_api.request(method, concrete_path(path, seeded), token=sent,
                                         json=valid_body(method, path, seeded))
                        for method, path, _ in routes for sent in (token, "wrong", None)]
    finally:
        stop_chalice_local(server)
        proxy.close()
        drop_db_user(db_settings, user)
    assert all(reply.status_code < 500 or reply.status_code == 503 for reply in answers), \
        [(r.status_code, r.text[:200]) for r in answers if r.status_code >= 500]
    assert any(reply.status_code == 503 for reply in answers), "the outage was seen"
    for text in [reply.text for reply in answers] + [server.log()]:
        assert token not in text and user.password not in text
