"""A fake MySQL server on a loopback port, speaking just enough of the protocol to play a rogue server (or a man in
the middle): the handshake (optionally upgraded to TLS), then it answers each query either with OK or with a
LOAD DATA LOCAL request for a file of its choosing, and records every byte of file content the client sends."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pymysql.constants import CLIENT

COM_QUIT, COM_QUERY = 0x01, 0x03
SERVER_STATUS_AUTOCOMMIT = 0x0002
OK_PAYLOAD = b"\x00\x00\x00" + struct.pack("<HH", SERVER_STATUS_AUTOCOMMIT, 0)
SALT = b"abcdefgh" + b"ijklmnopqrst"  # 8 + 12 bytes, as mysql_native_password has it
# What the server answers a query with: None for OK, or the name of the local file it asks the client for.
Responder = Callable[[bytes], bytes | None]


@dataclass
class FakeMysqlServer:
    respond: Responder
    tls: ssl.SSLContext | None = None  # offer TLS (CLIENT_SSL) with this server context
    queries: list[bytes] = field(default_factory=list)
    file_bytes: list[bytes] = field(default_factory=list)  # the content of every local file the client sent
    tls_established: bool = False
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fake-mysql", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve_one, args=(client,), name="fake-mysql-session", daemon=True).start()

    def _serve_one(self, client: socket.socket) -> None:
        with client:
            try:
                self._session(client)
            except (OSError, ConnectionError, ssl.SSLError) as error:
                self.errors.append(error)

    def _session(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        capabilities = CLIENT.CAPABILITIES | CLIENT.LOCAL_FILES | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_WITH_DB
        if self.tls is not None:
            capabilities |= CLIENT.SSL
        _send(sock, 0, b"\x0a" + b"8.0.99-fake\x00" + struct.pack("<I", 1) + SALT[:8] + b"\x00"
              + struct.pack("<HBHHB", capabilities & 0xFFFF, 45, SERVER_STATUS_AUTOCOMMIT, capabilities >> 16, 21)
              + b"\x00" * 10 + SALT[8:] + b"\x00" + b"mysql_native_password\x00")
        seq, response = _recv(sock)
        if self.tls is not None and len(response) == 32:  # an SSL request: upgrade, then the real response
            sock = self.tls.wrap_socket(sock, server_side=True)
            self.tls_established = True
            seq, response = _recv(sock)
        _send(sock, seq + 1, OK_PAYLOAD)
        while True:
            seq, command = _recv(sock)
            if not command or command[0] == COM_QUIT:
                return
            self.queries.append(command[1:])
            wanted = self.respond(command[1:]) if command[0] == COM_QUERY else None
            if wanted is None:
                _send(sock, 1, OK_PAYLOAD)
                continue
            _send(sock, 1, b"\xfb" + wanted)  # LOAD DATA LOCAL: "send me this file"
            content, seq = b"", 1
            while True:
                seq, chunk = _recv(sock)
                if not chunk:
                    break  # the empty packet ends the file
                content += chunk
            self.file_bytes.append(content)
            _send(sock, seq + 1, OK_PAYLOAD)


def _send(sock: socket.socket, seq: int, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    return data


def _recv(sock: socket.socket) -> tuple[int, bytes]:
    header = _recv_exact(sock, 4)
    return header[3], _recv_exact(sock, int.from_bytes(header[:3], "little"))
