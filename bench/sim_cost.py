"""The exchange simulator's own CPU cost per emitted trade frame, with one cheap combined-stream client.

`python -m bench.sim_cost [--rates 30000,60000] [--seconds 10]` starts the simulator in its own process (as the
pipeline bench does, through bench.sim_process), subscribes ONE raw-socket WebSocket reader to the `trade`
streams of the bench's four symbols, and for each total rate prints the frames/s the reader received, what the
simulator emitted, and the simulator process's CPU (user + system, from /proc/<pid>/stat) per received frame.
The reader only splits frames and counts them, so its own cost hardly competes with the simulator's.
"""

from __future__ import annotations

import argparse
import base64
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from bench.sim_process import SimulatorProcess

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")  # as bench.common.SYMBOLS (not imported: it needs MySQL)
KIND = "trade"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READ_CHUNK = 1 << 20
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class FrameCounter:
    """A minimal WebSocket client on a raw socket: counts text frames, answers pings, nothing else."""

    def __init__(self, ws_url: str, streams: list[str]) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.frames = 0
        self.closed = False
        self._buffer = self._handshake(parts.netloc, "/stream?streams=" + "/".join(streams))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-counter", daemon=True)
        self._thread.start()

    def _handshake(self, host: str, path: str) -> bytearray:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the simulator closed the connection during the handshake")
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
        return bytearray(rest)

    def _run(self) -> None:
        self.sock.settimeout(None)
        while not self._stop.is_set() and not self.closed:
            if not select.select([self.sock], [], [], 0.2)[0]:
                continue
            chunk = self.sock.recv(READ_CHUNK)
            if not chunk:
                self.closed = True
                return
            self._buffer += chunk
            self._parse()

    def _parse(self) -> None:
        """Consume every complete frame in the buffer (server frames are never masked)."""
        buf, pos, end, frames = self._buffer, 0, len(self._buffer), 0
        while end - pos >= 2:
            opcode, length, header = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 4]), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 10]), 10
            if end - pos < header + length:
                break
            if opcode == OP_TEXT:
                frames += 1
            elif opcode == OP_PING:
                self._pong(bytes(buf[pos + header:pos + header + length]))
            elif opcode == OP_CLOSE:
                self.closed = True
            pos += header + length
        del buf[:pos]
        self.frames += frames

    def _pong(self, payload: bytes) -> None:
        # Client frames must be masked; an all-zero mask leaves the payload as it is.
        self.sock.sendall(bytes([0x80 | OP_PONG, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Cpu(NamedTuple):
    user: float
    system: float

    def minus(self, earlier: Cpu) -> Cpu:
        return Cpu(self.user - earlier.user, self.system - earlier.system)

    @property
    def total(self) -> float:
        return self.user + self.system


def cpu_seconds(pid: int) -> Cpu:
    """User and system CPU time of process `pid` (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return Cpu(int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)  # fields 14, 15: utime, stime


@dataclass(frozen=True)
class Result:
    rate: float
    seconds: float
    received: int
    emitted: int
    cpu: Cpu

    def line(self) -> str:
        per_frame = 1e6 / self.received if self.received else float("nan")
        return (f"rate {self.rate:>8,.0f}/s  received {self.received / self.seconds:>8,.0f} frames/s  "
                f"emitted {self.emitted / self.seconds:>8,.0f}/s  simulator CPU {self.cpu.total / self.seconds:6.1%} "
                f"of a core  {self.cpu.total * per_frame:6.2f} µs/frame "
                f"(user {self.cpu.user * per_frame:.2f} + system {self.cpu.system * per_frame:.2f})")


def emitted_total(sim: SimulatorProcess) -> int:
    return sum(len(sim.emitted(symbol, KIND)) for symbol in SYMBOLS)


def measure(sim: SimulatorProcess, reader: FrameCounter, rate: float, warmup: float, seconds: float) -> Result:
    sim.set_rate(rate / len(SYMBOLS))
    time.sleep(warmup)
    pid = sim.process.pid
    frames0, emitted0, cpu0, t0 = reader.frames, emitted_total(sim), cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    frames1, emitted1, cpu1, t1 = reader.frames, emitted_total(sim), cpu_seconds(pid), time.monotonic()
    sim.set_rate(0)
    if reader.closed:
        raise ConnectionError("the simulator closed the reader's connection (too far behind?)")
    return Result(rate, t1 - t0, frames1 - frames0, emitted1 - emitted0, cpu1.minus(cpu0))


def idle_cpu(sim: SimulatorProcess, seconds: float) -> float:
    """The simulator's CPU share with rate 0 (tick loop and stdin only), for reference."""
    pid = sim.process.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return cpu_seconds(pid).minus(cpu0).total / (time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="30000,60000", help="total trades/s over the 4 symbols, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at each rate before measuring")
    args = parser.parse_args()
    sim = SimulatorProcess(SYMBOLS)
    try:
        reader = FrameCounter(sim.ws_url, [f"{s.lower()}@{KIND}" for s in SYMBOLS])
        try:
            print(f"simulator pid {sim.process.pid}, idle: {idle_cpu(sim, 2.0):.1%} of a core", flush=True)
            for rate in (float(r) for r in args.rates.split(",")):
                print(measure(sim, reader, rate, args.warmup, args.seconds).line(), flush=True)
                time.sleep(1.0)  # let the reader drain before the next rate
        finally:
            reader.close()
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
