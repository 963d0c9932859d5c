"""The real `sam build` and `sam local invoke` of the three functions, in containers, against MariaDB.

A dockerd is started for this module and stopped by its pid afterwards (infra/sam_local/engine.py): no bridge, no
iptables, every container on the host network, so nothing ever addresses anything beyond 127.0.0.0/8. The Lambda
Python 3.12 base image is the locally built stand-in (infra/sam_local/base_image.py, cached per machine), and SAM
runs through infra/sam_local/sam_launcher.py, which puts its Lambda containers on the host network; the functions
reach the session's throw-away database on 127.0.0.1:3306 as they would reach RDS. docker.io and debootstrap are
apt-installed when missing (root); the module is skipped, saying why, only where Docker cannot run at all.
Cold (nothing installed or cached): ~3 min; warm: ~1 min.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pymysql
import pytest

from events import generate
from infra import stack, template_checks
from infra.localstack_config import settings_from_env
from infra.sam_local import base_image, engine
from infra.sam_local.sam_launcher import UnsupportedSam, free_loopback_port, host_network_kwargs, with_skip_pull
from tickstream.codec import decode_message
from tickstream.db import connect
from tickstream.migrate import migration_ids
from tickstream.settings import DatabaseSettings

from .conftest import make_broker, stored_ticks

pytestmark = pytest.mark.sam_local

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "infra" / "sam_local" / "sam_launcher.py"
EVENTS = REPO_ROOT / "events"
# MariaDB here has no TLS; on AWS the template verifies the RDS certificate (README: Security).
LOCAL_PARAMETERS = "DbTls=off"
INVOKE_TIMEOUT_SECONDS = 180
DOCKER_INTERFACE = re.compile(r"^(docker\d*|veth\w*|br-\w+)$")


# --- what needs no Docker ------------------------------------------------------------------------------------------

def test_committed_events_are_what_the_generator_writes() -> None:
    """events/ is written by `make events` from tickstream.codec; an edited or stale file fails here."""
    assert generate.stale_files() == [], "run `make events` and commit events/"
    for name in ("ingest.json", "ingest-poison.json"):
        bodies = [record["body"] for record in json.loads((EVENTS / name).read_text())["Records"]]
        assert decode_message(bodies[0]).count > 0  # the first message of each is valid


def test_the_poison_event_really_is_poison() -> None:
    records = json.loads((EVENTS / "ingest-poison.json").read_text())["Records"]
    with pytest.raises(ValueError, match="not zlib data"):
        decode_message(records[1]["body"])


def test_launcher_puts_lambda_containers_on_the_host_network() -> None:
    sam_kwargs = {"labels": {"sam.cli.container.type": "lambda"}, "ports": {"8080": ("127.0.0.1", 5123)},
                  "entrypoint": ["/var/rapid/aws-lambda-rie", "--log-level", "error"], "environment": {"A": "1"}}
    changed = host_network_kwargs(sam_kwargs, runtime_api_port=6001)
    assert changed["network_mode"] == "host" and "ports" not in changed
    assert changed["entrypoint"] == ["/var/rapid/aws-lambda-rie", "--log-level", "error",
                                     "--runtime-interface-emulator-address", "127.0.0.1:5123",
                                     "--runtime-api-address", "127.0.0.1:6001"]
    # an AWS call the function might make goes to a closed loopback port, never to AWS's endpoints
    assert changed["environment"] == {"A": "1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    given = host_network_kwargs({**sam_kwargs, "environment": {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}}, 6001)
    assert given["environment"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}


@pytest.mark.parametrize("sam_kwargs", [
    {"labels": {}, "ports": {"8080": ("127.0.0.1", 5123)}, "entrypoint": ["/var/rapid/aws-lambda-rie"]},
    {"labels": {"sam.cli.container.type": "lambda"}, "ports": {"8080": ("127.0.0.1", 1), "5858": ("127.0.0.1", 2)},
     "entrypoint": ["/var/rapid/aws-lambda-rie"]},
    {"labels": {"sam.cli.container.type": "lambda"}, "ports": {"8080": ("127.0.0.1", 1)}, "entrypoint": ["/bin/sh"]},
], ids=["not-a-lambda-container", "debug-ports", "not-the-emulator"])
def test_launcher_refuses_what_it_does_not_know(sam_kwargs: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSam):
        host_network_kwargs(sam_kwargs, runtime_api_port=6001)


def test_launcher_never_lets_sam_pull() -> None:
    assert with_skip_pull(["local", "invoke", "F"]) == ["local", "invoke", "F", "--skip-pull-image"]
    assert with_skip_pull(["build"]) == ["build"]


def test_launcher_matches_the_pinned_sam_internals() -> None:
    """The SAM and docker-py internals the launcher changes are still where it expects them (pinned versions)."""
    tools = template_checks.tools_from_env()
    result = subprocess.run([str(tools.python), "-c", "import sam_launcher; sam_launcher.check_internals()"],
                            cwd=LAUNCHER.parent, capture_output=True, text=True, timeout=60,
                            env=template_checks.tool_environment())
    assert result.returncode == 0, result.stderr


def test_debian_mirror_is_read_from_both_source_formats(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n"
                      "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n")
    other = tmp_path / "other.list"
    other.write_text("deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    assert base_image.debian_mirror([other, deb822]) == "http://deb.debian.org/debian"
    assert base_image.debian_mirror([one_line]) == "http://mirror.example/debian"
    with pytest.raises(engine.SetupFailed):
        base_image.debian_mirror([other])


def test_stand_in_is_rebuilt_when_an_input_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image tags are hashes of their inputs: same inputs → same tag (cached), any change → a new build."""
    stand_in = tmp_path / "stand_in"
    shutil.copytree(base_image.STAND_IN_DIR, stand_in)
    monkeypatch.setattr(base_image, "STAND_IN_DIR", stand_in)
    inputs = base_image.StandInInputs("http://deb.debian.org/debian", Path("/opt/python3.12"), "3.12.1")
    assert base_image.StandInInputs("http://deb.debian.org/debian", Path("/opt/python3.12"),
                                    "3.12.1").stand_in_image == inputs.stand_in_image
    before = inputs.stand_in_key()
    requirements = stand_in / "requirements.txt"
    requirements.write_text(requirements.read_text().replace("awslambdaric==", "awslambdaric>="))
    assert inputs.stand_in_key() != before
    assert base_image.StandInInputs("http://mirror.example/debian", Path("/opt/python3.12"),
                                    "3.12.1").debian_image != inputs.debian_image
    assert base_image.StandInInputs("http://deb.debian.org/debian", Path("/opt/python3.12"),
                                    "3.12.2").debian_image == inputs.debian_image  # Debian does not depend on it


# --- the engine, the image, the build ------------------------------------------------------------------------------

def docker_interfaces() -> set[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.count(":") >= 2}
    return {name for name in names if DOCKER_INTERFACE.match(name)}


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[engine.EnginePaths]:
    """dockerd for this module, stopped by its pid afterwards; the stand-in image built if its inputs changed."""
    run_dir = Path(tempfile.mkdtemp(prefix="tsd-", dir="/tmp"))  # short: unix socket paths
    paths = engine.EnginePaths(engine.machine_cache_dir(), run_dir)
    paths.cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (paths.cache_dir / "last-setup.log").open("w") as log:  # apt, debootstrap, image builds, timings
            try:
                engine.ensure_packages(log)
            except engine.EngineUnavailable as error:
                pytest.skip(f"Docker cannot run here: {error}")
            with engine.cache_lock(paths):
                try:
                    pid = engine.start(paths)
                except engine.EngineUnavailable as error:
                    pytest.skip(f"Docker cannot run here: dockerd does not start: {error}")
                try:
                    base_image.ensure_stand_in(paths, log=log)
                    yield paths
                finally:
                    engine.stop(paths, pid)
        assert not engine.ping(paths), "dockerd still answers after stop"
        assert engine.mounts_under(run_dir) == [], "mounts left under the run directory"
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        pytest.fail(f"dockerd pid {pid} is still alive")
    assert docker_interfaces() == set(), "Docker left network interfaces behind"


@pytest.fixture(scope="module")
def built_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deploys' build of template.yaml (infra.stack.sam_build: reused from its cache when the tree is unchanged)."""
    return stack.sam_build(settings_from_env(), stack.DEFAULT_TEMPLATE, tmp_path_factory.mktemp("sam"))


def sam_environment(paths: engine.EnginePaths) -> dict[str, str]:
    tools = template_checks.tools_from_env()
    return {**template_checks.tool_environment([tools.bin_dir]), "DOCKER_HOST": paths.docker_host,
            # SAM hands credentials to the container; dummies keep it from looking for real ones (IMDS included).
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


def sam_local_invoke(paths: engine.EnginePaths, template: Path, function: str, event: Path,
                     env_vars: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """The real `sam local invoke`, through the launcher; returns the function's response."""
    env_file = work_dir / f"{function}-env.json"
    env_file.write_text(json.dumps(env_vars))
    tools = template_checks.tools_from_env()
    result = subprocess.run(
        [str(tools.python), str(LAUNCHER), "local", "invoke", function, "--template", str(template),
         "--event", str(event), "--env-vars", str(env_file), "--container-host", "127.0.0.1",
         "--parameter-overrides", LOCAL_PARAMETERS],
        cwd=work_dir, env=sam_environment(paths), capture_output=True, text=True, timeout=INVOKE_TIMEOUT_SECONDS)
    assert result.returncode == 0, f"sam local invoke {function} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def invoke(docker_engine: engine.EnginePaths, built_template: Path, db_env: dict[str, str],
           tmp_path: Path):  # -> a function that invokes one function with one event
    """The session's throw-away database, reached on 127.0.0.1:3306 from the host-network container."""
    def run(function: str, event: Path, api_token: str = generate.EXAMPLE_API_TOKEN,
            db_name: str | None = None) -> dict[str, Any]:
        env_vars = {"Parameters": {**db_env, "DB_NAME": db_name or db_env["DB_NAME"]},
                    "ApiFunction": {"API_TOKEN": api_token}}
        return sam_local_invoke(docker_engine, built_template, function, event, env_vars, tmp_path)
    return run


def add_script(conn: pymysql.Connection, script_id: int, broker_id: int, symbol: str) -> None:
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO scripts (id, broker_id, name, trading_symbol, additional_data)"
                       " VALUES (%s, %s, %s, %s, '{}')", (script_id, broker_id, symbol, symbol))


def as_datetime(us: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=us)


def event_ticks(name: str, record: int) -> list:
    return list(decode_message(json.loads((EVENTS / name).read_text())["Records"][record]["body"]))


# --- the functions, invoked for real -------------------------------------------------------------------------------

def test_ingest_function_stores_the_sample_batch_exactly(invoke, db: pymysql.Connection) -> None:
    broker = make_broker(db)
    add_script(db, generate.BTC, broker, "BTCUSDT")
    add_script(db, generate.PEPE, broker, "PEPEUSDT")
    assert invoke("IngestFunction", EVENTS / "ingest.json") == {"batchItemFailures": []}
    for record, script_id in enumerate((generate.BTC, generate.PEPE)):
        expected = [(t.trade_id, Decimal(t.price), Decimal(t.quantity), int(t.is_buyer_maker),
                     as_datetime(t.traded_at_us), as_datetime(t.event_at_us), as_datetime(t.received_at_us))
                    for t in event_ticks("ingest.json", record)]
        stored = [(trade_id, Decimal(price), Decimal(quantity), maker, traded, event, received)
                  for trade_id, price, quantity, maker, traded, event, received in stored_ticks(db, script_id)]
        assert stored == expected
    assert stored_ticks(db, generate.BTC)[0][1] == "95234.560000010000000000"  # exact: no float on the way
    assert stored_ticks(db, generate.PEPE)[0][1] == "0.000007120000000000"


def test_ingest_function_reports_only_the_poison_record(invoke, db: pymysql.Connection) -> None:
    add_script(db, generate.BTC, make_broker(db), "BTCUSDT")
    records = json.loads((EVENTS / "ingest-poison.json").read_text())["Records"]
    response = invoke("IngestFunction", EVENTS / "ingest-poison.json")
    assert response == {"batchItemFailures": [{"itemIdentifier": records[1]["messageId"]}]}
    assert [row[0] for row in stored_ticks(db, generate.BTC)] == [t.trade_id for t in event_ticks(
        "ingest-poison.json", 0)]


def test_api_function_answers_health_with_the_database_reachable(invoke, db: pymysql.Connection) -> None:
    response = invoke("ApiFunction", EVENTS / "api-health.json")
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]) == {"status": "ok", "database": "reachable"}


def test_api_function_creates_a_broker_with_the_token(invoke, db: pymysql.Connection) -> None:
    response = invoke("ApiFunction", EVENTS / "api-create-broker.json")
    assert response["statusCode"] == 201, response
    created = json.loads(response["body"])
    with db.cursor() as cursor:
        cursor.execute("SELECT id, type, name FROM brokers")
        assert cursor.fetchall() == ((created["id"], "binance", "Binance (sam local)"),)


@pytest.fixture
def local_api(docker_engine: engine.EnginePaths, built_template: Path, db_env: dict[str, str],
              tmp_path: Path) -> Iterator[str]:
    """`sam local start-api` on a free loopback port, warm containers; stopped with Ctrl-C (SIGINT) by its pid."""
    port = free_loopback_port()
    env_file = tmp_path / "api-env.json"
    env_file.write_text(json.dumps({"Parameters": db_env,
                                    "ApiFunction": {"API_TOKEN": generate.EXAMPLE_API_TOKEN}}))
    tools = template_checks.tools_from_env()
    with (tmp_path / "start-api.log").open("w") as log:
        server = subprocess.Popen(
            [str(tools.python), str(LAUNCHER), "local", "start-api", "--template", str(built_template),
             "--env-vars", str(env_file), "--container-host", "127.0.0.1", "--host", "127.0.0.1",
             "--parameter-overrides", LOCAL_PARAMETERS,
             "--port", str(port), "--warm-containers", "LAZY"],
            cwd=tmp_path, env=sam_environment(docker_engine), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + INVOKE_TIMEOUT_SECONDS
        while http_get(f"{base}/openapi.json")[0] is None:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "start-api.log").read_text()
            time.sleep(0.5)
        yield base
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def http_get(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int | None, bytes]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""


def test_start_api_serves_the_api_and_refuses_wrong_tokens(local_api: str, db: pymysql.Connection) -> None:
    status, body = http_get(f"{local_api}/health")
    assert (status, json.loads(body)) == (200, {"status": "ok", "database": "reachable"})
    broker = json.dumps({"type": "binance", "name": "via start-api", "api_config": {}}).encode()
    assert http_get(f"{local_api}/brokers", data=broker)[0] == 401
    assert http_get(f"{local_api}/brokers", token="a-different-token", data=broker)[0] == 401
    assert http_get(f"{local_api}/brokers", token="a-different-token")[0] == 401
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM brokers")
        assert cursor.fetchone() == (0,)
    status, body = http_get(f"{local_api}/brokers", token=generate.EXAMPLE_API_TOKEN, data=broker)
    assert status == 201, body
    status, body = http_get(f"{local_api}/brokers", token=generate.EXAMPLE_API_TOKEN)
    assert status == 200 and [b["name"] for b in json.loads(body)["brokers"]] == ["via start-api"]


class _ResponseRecorder(http.server.BaseHTTPRequestHandler):
    """Stands in for CloudFormation's pre-signed ResponseURL: records the custom resource's PUT."""

    received: ClassVar[list[dict[str, Any]]] = []  # each fixture use gets its own list (a subclass)

    def do_PUT(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ResponseRecorder)
    received: ClassVar[list[dict[str, Any]]] = []  # each fixture use gets its own list (a subclass)
    server.RequestHandlerClass = type("Recorder", (_ResponseRecorder,), {"received": received})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cloudformation-response", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def empty_database(db_settings: DatabaseSettings) -> Iterator[DatabaseSettings]:
    """A second throw-away database, not yet created: the migration must create and fill it."""
    settings = DatabaseSettings(db_settings.host, db_settings.port, db_settings.user, db_settings.password,
                                f"{db_settings.name}_m")
    yield settings
    conn = connect(settings, database=False, autocommit=True)
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{settings.name}`")
    conn.close()


def test_migrate_function_applies_the_migrations_and_answers_cloudformation(
        invoke, response_url: tuple[str, list[dict[str, Any]]], empty_database: DatabaseSettings,
        tmp_path: Path) -> None:
    url, received = response_url
    event = tmp_path / "migrate-create.json"
    event.write_text(generate.render(generate.migrate_create_event(url)))
    invoke("MigrateFunction", event, db_name=empty_database.name)
    assert len(received) == 1, received
    answer = received[0]
    assert answer["Status"] == "SUCCESS", answer
    assert answer["LogicalResourceId"] == "SchemaMigration" and answer["RequestId"].endswith("0000000000bb")
    applied = answer["Data"]["Applied"].split(",")
    assert applied == sorted(migration_ids())
    conn = connect(empty_database, autocommit=True)
    with conn.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        tables = {row[0] for row in cursor.fetchall()}
    conn.close()
    assert {"brokers", "scripts", "ticks"} <= tables
