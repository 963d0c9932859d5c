"""The MySQL client sends no file the server asks for, except the ingest's own LOAD DATA buffer; TLS settings are
enforced (issue 12, item 8). A fake server on a loopback port plays the rogue server / man in the middle."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from yoyo import get_backend

from infra.stack import LOCALSTACK_COMMUNITY_PARAMETERS
from infra.template_checks import load_template
from tests.fake_mysql import FakeMysqlServer, Responder
from tickstream.codec import TickBatch
from tickstream.db import connect, tls_arguments
from tickstream.migrate import backend_url
from tickstream.settings import DatabaseSettings, database_settings
from tickstream.tick_store import LOAD_DATA_SQL, LoadDataFile
from tickstream.ticks import Tick

T0 = 1_750_000_000_000_000


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "credentials"
    path.write_bytes(b"AWS_SECRET_ACCESS_KEY=canary-not-for-the-server\n")
    return path


@pytest.fixture
def fake_server() -> Iterator[list[FakeMysqlServer]]:
    servers: list[FakeMysqlServer] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[FakeMysqlServer], respond: Responder, tls: ssl.SSLContext | None = None) -> FakeMysqlServer:
    servers.append(FakeMysqlServer(respond, tls))
    return servers[-1]


def settings_for(server: FakeMysqlServer, **tls: object) -> DatabaseSettings:
    return DatabaseSettings("127.0.0.1", server.port, "ticks", "pw", "market", **tls)  # type: ignore[arg-type]


def ask_on_first_query(name: bytes) -> Responder:
    """Ask for `name` in reply to the first query whose answer pymysql reads as a result. (pymysql reads the answer
    to its own SET NAMES as a bare packet, so a request there would go unanswered either way.)"""
    asked = []

    def respond(sql: bytes) -> bytes | None:
        if asked or sql.startswith(b"SET NAMES"):
            return None
        asked.append(sql)
        return name
    return respond


@pytest.mark.parametrize("kind", ["plain", "writer"])
@pytest.mark.parametrize("target", ["secret_file", "/proc/self/environ"])
def test_no_connection_sends_a_file_the_server_asks_for_on_the_first_query(
        fake_server: list[FakeMysqlServer], secret_file: Path, kind: str, target: str) -> None:
    """The API's, the producer's and the migrations' connections (plain), and the ingest's writer outside its own
    LOAD DATA: the first query (the session's init command) is answered with a request for a local file."""
    name = str(secret_file) if target == "secret_file" else target
    server = start(fake_server, ask_on_first_query(name.encode()))

    with pytest.raises(pymysql.err.Error, match="refused"):
        connect(settings_for(server), local_infile=kind == "writer").close()

    assert server.queries[-1] == b"SET time_zone = '+00:00'"  # the session's first own query
    assert server.file_bytes == [b""]  # the protocol's empty answer: not one byte of the file


def test_the_writer_sends_its_own_buffer_and_nothing_else(fake_server: list[FakeMysqlServer],
                                                          secret_file: Path) -> None:
    """Inside its LOAD DATA, the writer sends the buffer it is loading; a server (or man in the middle) that names
    another file gets nothing, and the session stays usable."""
    wanted: list[bytes] = []
    server = start(fake_server, lambda sql: wanted.pop() if b"LOAD DATA LOCAL INFILE" in sql and wanted else None)
    conn = connect(settings_for(server), local_infile=True)
    buffer = LoadDataFile()
    batch = TickBatch.from_ticks([Tick(1, 7, "1.5", "2", True, T0, T0, T0)])
    try:
        wanted.append(buffer.path.encode())
        assert buffer.insert(conn, batch).inserted == 0  # the fake answers OK, 0 rows
        assert server.file_bytes == [batch.rows]

        wanted.append(str(secret_file).encode())  # the reply names another file
        with pytest.raises(pymysql.err.Error, match="refused"):
            buffer.insert(conn, batch)
        assert server.file_bytes[1:] == [b""]

        with conn.cursor() as cursor:  # the session is still in step
            cursor.execute("SELECT 1")
        with pytest.raises(pymysql.err.Error):  # no LOAD DATA on a connection opened without local_infile
            buffer.insert(connect(settings_for(server)), batch)
    finally:
        buffer.close()
        conn.close()
    assert LOAD_DATA_SQL.startswith("LOAD DATA LOCAL INFILE %s")


# --- TLS -------------------------------------------------------------------------------------------------------

def test_tls_settings_are_read_and_reach_pymysql(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    monkeypatch.setenv("DB_SSL_CA", str(ca))
    monkeypatch.setenv("DB_SSL_VERIFY_IDENTITY", "true")
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)
    db = database_settings()
    assert (db.ssl_ca, db.ssl_verify_identity) == (str(ca), True)
    assert tls_arguments(db) == {"ssl_ca": str(ca), "ssl_verify_cert": True, "ssl_verify_identity": True}

    monkeypatch.setenv("DB_SSL_CA", str(tmp_path / "missing.pem"))  # a bundle missing from the layer: loud
    with pytest.raises(ValueError, match="DB_SSL_CA"):
        database_settings()
    monkeypatch.delenv("DB_SSL_CA")
    with pytest.raises(ValueError, match="DB_SSL_VERIFY_IDENTITY needs DB_SSL_CA"):  # no half-verified TLS
        database_settings()
    monkeypatch.setenv("DB_SSL_VERIFY_IDENTITY", "maybe")
    with pytest.raises(ValueError, match="DB_SSL_VERIFY_IDENTITY"):
        database_settings()
    monkeypatch.delenv("DB_SSL_VERIFY_IDENTITY")
    assert tls_arguments(database_settings()) == {}  # local stacks: pymysql's default (TLS if offered)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and one for another name, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    for name, san in (("loopback", "IP:127.0.0.1"), ("elsewhere", "DNS:db.elsewhere.internal")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (root / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {path.stem: path for path in root.iterdir()}


def server_tls(pki: dict[str, Path], cert: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[cert].with_suffix(".pem"), pki[cert].with_suffix(".key"))
    return context


def test_verified_tls_to_the_right_host_connects(fake_server: list[FakeMysqlServer], pki: dict[str, Path]) -> None:
    server = start(fake_server, lambda sql: None, tls=server_tls(pki, "loopback"))
    connect(settings_for(server, ssl_ca=str(pki["ca"].with_suffix(".pem")), ssl_verify_identity=True)).close()
    assert server.tls_established


@pytest.mark.parametrize(("cert", "ca", "verify_identity"), [
    pytest.param("elsewhere", "ca", True, id="certificate-for-another-host"),
    pytest.param("loopback", "other-ca", False, id="certificate-of-another-ca"),
    pytest.param(None, "ca", False, id="server-without-tls"),
])
def test_tls_refuses_a_server_it_cannot_verify(fake_server: list[FakeMysqlServer], pki: dict[str, Path],
                                               cert: str | None, ca: str, verify_identity: bool) -> None:
    server = start(fake_server, lambda sql: None, tls=server_tls(pki, cert) if cert else None)
    with pytest.raises(pymysql.err.OperationalError):
        connect(settings_for(server, ssl_ca=str(pki[ca].with_suffix(".pem")), ssl_verify_identity=verify_identity))
    assert not server.queries  # not one query (nor the password's hash, on a verified channel) reached it


def test_the_migrations_use_the_same_tls(fake_server: list[FakeMysqlServer], pki: dict[str, Path]) -> None:
    """yoyo opens its own connection (from a URL): it must refuse the same servers."""
    server = start(fake_server, lambda sql: None, tls=server_tls(pki, "elsewhere"))
    db = settings_for(server, ssl_ca=str(pki["ca"].with_suffix(".pem")), ssl_verify_identity=True)
    with pytest.raises(pymysql.err.OperationalError):
        get_backend(backend_url(db))
    assert not server.queries


def test_the_template_turns_verified_tls_on_for_aws_and_local_stacks_off() -> None:
    template = load_template()
    assert template["Parameters"]["DbTls"]["Default"] == "verify-identity"
    assert template["Parameters"]["DbSslCa"]["Default"] == "/opt/rds-ca/global-bundle.pem"
    assert {"DB_SSL_CA", "DB_SSL_VERIFY_IDENTITY"} <= set(template["Globals"]["Function"]["Environment"]["Variables"])
    producer = template["Resources"]["ProducerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert {"DB_SSL_CA", "DB_SSL_VERIFY_IDENTITY"} <= {item["Name"] for item in producer["Environment"]}
    assert LOCALSTACK_COMMUNITY_PARAMETERS["DbTls"] == "off"  # a local MariaDB has no certificate to verify
