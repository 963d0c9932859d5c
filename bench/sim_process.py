"""The exchange simulator in its own process (its own core and GIL), driven over stdin/stdout.

`python -m bench.sim_process SYMBOL,...` prints one JSON line with the endpoints, then answers one line per
command: `rate <trades/s per symbol>`, `emitted <SYMBOL> <kind>` (→ "<first> <next>"), `streams` (subscribed
streams over all clients), `quit`. `SimulatorProcess` is the bench's side of it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import orjson

from simulator.harness import ExchangeSimulator

START_TIMEOUT = 20.0


def serve(symbols: tuple[str, ...]) -> None:
    sim = ExchangeSimulator(symbols=symbols, rate=0.0, max_client_queue=2_000_000)
    sim.start()
    print(orjson.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url}).decode(), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "quit":
            break
        print(answer(sim, command, args), flush=True)
    sim.stop()


def answer(sim: ExchangeSimulator, command: str, args: list[str]) -> str:
    if command == "rate":
        sim.config.rate = float(args[0])
        return "ok"
    if command == "emitted":
        ids = sim.emitted_ids(args[0], args[1])
        return f"{ids.start} {ids.stop}"
    if command == "streams":
        return str(sim._call(lambda: sum(len(client.session.streams) for client in sim.core.clients)))
    return f"error unknown command {command!r}"


class SimulatorProcess:
    """Starts `python -m bench.sim_process`; `stop()` ends it (by `quit`, else by terminate)."""

    def __init__(self, symbols: tuple[str, ...]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.sim_process", ",".join(symbols)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        endpoints = orjson.loads(self._line())
        self.ws_url: str = endpoints["ws_url"]
        self.rest_url: str = endpoints["rest_url"]

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator process exited ({self.process.poll()})")
        return line.strip()

    def ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._line()

    def set_rate(self, per_symbol: float) -> None:
        self.ask(f"rate {per_symbol}")

    def emitted(self, symbol: str, kind: str = "trade") -> range:
        first, stop = self.ask(f"emitted {symbol} {kind}").split()
        return range(int(first), int(stop))

    def subscribed_streams(self) -> int:
        return int(self.ask("streams"))

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):  # it has gone already
                self.ask("quit")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(timeout=10)


if __name__ == "__main__":
    serve(tuple(sys.argv[1].split(",")))
