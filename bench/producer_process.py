"""The real producer (`producer_service.build_service`) in its own process, for the end-to-end stages.

Configured like `python -m producer_service` (DB_*, TICKS_QUEUE_URL, AWS_ENDPOINT_URL, PRODUCER_*). Prints
`subscribed` once every connection has heard from the exchange, stops on a `stop` line (or EOF) on stdin, then
prints one JSON line of counts: what the producer's SqsSender reports, plus the payload bytes of every
SendMessageBatch (SQS bills each 64 KiB of a request as one request).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

import producer_service.service as service_module
from producer_service.config import ProducerSettings
from tickstream.settings import load_settings

BILLING_CHUNK_BYTES = 64 * 1024


class CountingClient:
    """The boto3 SQS client, counting SendMessageBatch payload bytes and 64 KiB billing units."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.payload_bytes = 0
        self.billed_units = 0

    def send_message_batch(self, **request: Any) -> Any:
        size = sum(len(entry["MessageBody"].encode()) for entry in request["Entries"])
        self.payload_bytes += size
        self.billed_units += max(1, math.ceil(size / BILLING_CHUNK_BYTES))
        return self._client.send_message_batch(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    counting: list[CountingClient] = []
    real_client = service_module.sqs_client

    def counted_client(settings: Any) -> CountingClient:
        counting.append(CountingClient(real_client(settings)))
        return counting[-1]

    service_module.sqs_client = counted_client
    service = service_module.build_service(load_settings(), ProducerSettings.from_env(), None)
    runner = threading.Thread(target=service.run, name="producer", daemon=True)
    runner.start()
    threading.Thread(target=_announce_subscribed, args=(service,), daemon=True).start()
    sys.stdin.readline()
    service.stop()
    runner.join(timeout=30)
    service.close()
    print(orjson.dumps(_counts(service, counting[0])).decode(), flush=True)


def _announce_subscribed(service: service_module.ProducerService) -> None:
    while True:
        connections = [conn for feed in list(service.feeds.values()) for conn in feed.connections]
        if connections and all(conn.frames > 0 for conn in connections):
            print("subscribed", flush=True)
            return
        time.sleep(0.05)


def _counts(service: service_module.ProducerService, client: CountingClient) -> dict[str, Any]:
    feeds = list(service.feeds.values())
    return {
        "ticks_in": service.sink.ticks_in,
        "send_requests": service.sink.sender.requests,
        "messages_sent": service.sink.sender.messages,
        "payload_bytes": client.payload_bytes,
        "billed_send_units": client.billed_units,
        "frames": sum(conn.frames for feed in feeds for conn in feed.connections),
        "malformed": sum(feed.malformed for feed in feeds),
        "backfilled": sum(feed.backfiller.filled for feed in feeds),
        "sequencer_duplicates": service.sequencer.duplicates,
        "journal_pending": service.sink.journal.pending(),
    }


class ProducerProcess:
    """Starts `python -m bench.producer_process` with `env`; `stop()` returns its counts."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._log = log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "bench.producer_process"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, bufsize=1)

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive() or not lines or lines[0].strip() != "subscribed":
            raise TimeoutError(f"the producer did not subscribe within {timeout:.0f} s (see its log)")

    def kill(self) -> None:
        """SIGKILL, as a crash ends it (no counts)."""
        self.process.kill()
        self.process.communicate()
        self._log.close()

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        finally:
            self._log.close()
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        return orjson.loads(lines[-1]) if lines else {}


if __name__ == "__main__":
    main()
