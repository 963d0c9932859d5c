"""`make up` / `make demo`: the whole pipeline on this machine, in the foreground; Ctrl-C stops everything.

MariaDB (checked, database created, migrated) → host LocalStack with `template.yaml` deployed (queue, DLQ, ingest
function) → the API (`chalice local`) on 127.0.0.1:8000 → the producer for all active brokers. With `--demo`, the
exchange simulator stands in for every venue the producer speaks (one process, each venue on its own port from
SIMULATOR_PORT on, in the registry's order), a demo broker of each type with BTCUSDT, ETHUSDT and PEPEUSDT (in the
venue's spelling) is created through the API, and a live per-symbol tick count is printed (the seed's "Check Tick
Count by Symbol"), each symbol under its broker's type.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from infra.localstack import start_localstack, stop_localstack
from infra.localstack_config import REPO_ROOT, settings_from_env
from infra.stack import deploy_stack, environment_parameters
from producer_service.exchanges.registry import ADAPTERS
from producer_service.rest import RestClient
from tickstream.migrate import migrate
from tickstream.settings import database_settings

API_PORT = int(os.environ.get("API_PORT", "8000"))
SIMULATOR_PORT = int(os.environ.get("SIMULATOR_PORT", "9443"))  # the first venue's; the next ones count up
SIMULATOR_HOST = "127.0.0.1"  # where the simulator listens; named in EXCHANGE_HOST_ALLOWLIST for --demo
DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT", "PEPEUSDT")


def say(message: str) -> None:
    print(f"[tickstream] {message}", flush=True)


class Processes:
    """Child processes, stopped in reverse order with SIGTERM (then SIGKILL after a grace period)."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT,
              log: Path | None = None) -> None:
        """Output goes to the terminal, or to `log` for chatty children (the API's access log)."""
        output = log.open("ab") if log else None
        self.children.append((name, subprocess.Popen(args, env=env, cwd=cwd, stdout=output, stderr=output)))

    def dead(self) -> str | None:
        return next((name for name, child in self.children if child.poll() is not None), None)

    def stop(self) -> None:
        for name, child in reversed(self.children):
            if child.poll() is None:
                say(f"stopping {name}")
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()


def api_token() -> str:
    token = os.environ.get("API_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        say(f"API_TOKEN was not set; this run uses a random one: {token}")
    return token


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def demo_venues() -> dict[str, int]:
    """Every broker type the producer has an adapter for → the simulator port that speaks it."""
    return {broker_type: SIMULATOR_PORT + n for n, broker_type in enumerate(ADAPTERS)}


def start_simulator(children: Processes, env: dict[str, str], ports: dict[str, int]) -> None:
    """One simulator process serving every venue, each on its own port (WebSocket and REST)."""
    venues = [arg for broker_type, port in ports.items() for arg in ("--venue", f"{broker_type}={port}")]
    children.start("exchange simulator", [sys.executable, "-m", "simulator", *venues, "--symbols",
                                          ",".join(DEMO_SYMBOLS), "--rate", "20", "--log-level", "WARNING"], env)
    for port in ports.values():
        wait_for_http(f"http://{SIMULATOR_HOST}:{port}/")  # any answer (a 404 too) means it listens


def create_demo_broker(api: str, token: str, broker_type: str, port: int) -> None:
    """A demo broker of `broker_type` on the simulator's `port`, and a script for each symbol it lists (spelled the
    venue's way, as its adapter reads them), all through the API."""
    ws_url, rest_url = f"ws://{SIMULATOR_HOST}:{port}", f"http://{SIMULATOR_HOST}:{port}"
    adapter = ADAPTERS[broker_type]
    name = f"Demo {adapter.venue.title} (exchange simulator)"
    headers = {"Authorization": f"Bearer {token}"}
    brokers = requests.get(f"{api}/brokers", headers=headers, timeout=5).json()["brokers"]
    demo = next((b for b in brokers if b["name"] == name), None)
    if demo is None:
        response = requests.post(f"{api}/brokers", headers=headers, timeout=5, json={
            "type": broker_type, "name": name, "api_config": {"ws_url": ws_url, "rest_url": rest_url}})
        response.raise_for_status()
        demo = response.json()
        say(f"created {broker_type} broker {demo['id']} through the API")
    scripts = requests.get(f"{api}/scripts", params={"broker_id": demo["id"]}, headers=headers, timeout=5).json()
    have = {s["trading_symbol"] for s in scripts["scripts"]}
    rest = RestClient(rest_url, adapter.rest_limits, allowed_hosts=frozenset({SIMULATOR_HOST}), venue=adapter.venue)
    for symbol in sorted(adapter.trading_symbols(rest) - have):
        requests.post(f"{api}/scripts", headers=headers, timeout=5, json={
            "broker_id": demo["id"], "name": symbol, "trading_symbol": symbol}).raise_for_status()
        say(f"created {broker_type} script {symbol} through the API")


def print_counts(api: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    types = {b["id"]: b["type"] for b in requests.get(f"{api}/brokers", headers=headers, timeout=5).json()["brokers"]}
    stats = requests.get(f"{api}/stats", headers=headers, timeout=5).json()
    rows = [f"{types.get(s['broker_id'], '?')} {s['trading_symbol']}: {s['tick_count']:,} ticks "
            f"({s['ticks_last_minute']:,} in the last minute)" for s in stats["scripts"] if s["is_active"]]
    queues = stats["queues"]
    say("tick count by symbol — " + "; ".join(rows) + f" | queue {queues['queue']['approximate_messages']}, "
        f"DLQ {queues['dlq']['approximate_messages']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.up", description=__doc__.split("\n")[0])
    parser.add_argument("--demo", action="store_true", help="use the exchange simulator and create demo scripts")
    args = parser.parse_args(argv)
    if args.demo:  # the simulator is on loopback: the API and the producer must allow it (README: Security)
        listed = [host for host in os.environ.get("EXCHANGE_HOST_ALLOWLIST", "").split(",") if host.strip()]
        os.environ["EXCHANGE_HOST_ALLOWLIST"] = ",".join(dict.fromkeys([*listed, SIMULATOR_HOST]))
    db = database_settings()
    say(f"MySQL {db.host}:{db.port}/{db.name}: applied {len(migrate(db))} migration(s)")
    localstack = settings_from_env()
    start_localstack(localstack)
    say(f"LocalStack healthy at {localstack.endpoint_url}; deploying template.yaml")
    outputs = deploy_stack(environment_parameters(), settings=localstack)
    token = api_token()
    env = {**os.environ, "AWS_ENDPOINT_URL": localstack.endpoint_url, "TICKS_QUEUE_URL": outputs["TicksQueueUrl"],
           "TICKS_DLQ_URL": outputs["TicksDeadLetterQueueUrl"], "API_TOKEN": token,
           "JOBS_QUEUE_URL": outputs["JobsQueueUrl"],
           "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
           "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
           "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"), "PYTHONPATH": str(REPO_ROOT)}
    children = Processes()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        api = f"http://127.0.0.1:{API_PORT}"
        chalice = str(Path(sys.executable).parent / "chalice")
        api_command = [chalice, "local", "--host", "127.0.0.1", "--port", str(API_PORT), "--no-autoreload"]
        api_log = localstack.state_dir / "api.log"
        children.start("API", api_command, env, cwd=REPO_ROOT / "functions" / "api", log=api_log)
        wait_for_http(f"{api}/health")
        say(f"API on {api}, its log in {api_log} (try: curl -H \"Authorization: Bearer $API_TOKEN\" {api}/stats)")
        wait_for_http(f"{api}/console")
        say(f"web console on {api}/console (sign in with the API token)")
        if args.demo:
            ports = demo_venues()
            start_simulator(children, env, ports)
            for broker_type, port in ports.items():
                create_demo_broker(api, token, broker_type, port)
        children.start("producer", [sys.executable, "-m", "producer_service"], env)
        say("pipeline running; Ctrl-C stops everything")
        while not stop["now"] and not (dead := children.dead()):
            time.sleep(2 if args.demo else 1)
            if args.demo:
                with contextlib.suppress(requests.RequestException, KeyError, ValueError):
                    print_counts(api, token)
        if not stop["now"]:
            say(f"{dead} exited; stopping the rest")
    except KeyboardInterrupt:
        pass
    finally:
        children.stop()
        say("stopping LocalStack")
        stop_localstack(localstack)


if __name__ == "__main__":
    main()
