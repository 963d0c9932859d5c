"""The SQS message format: many ticks per message.

SQS cost and the emulator's throughput are per message, not per tick, so the producer packs ticks into compact
messages and the ingest function unpacks them. This module is the one definition of the format.

Version 1 body (JSON, UTF-8)::

    {"v": 1, "ticks": [[script_id, trade_id, "price", "quantity", is_buyer_maker, traded_at_us, event_at_us,
                        received_at_us], ...]}

- rows are positional arrays (field names would double the size); order is `Tick`'s field order;
- price and quantity are decimal strings (never floats); is_buyer_maker is 0/1 or a JSON boolean;
- times are integer microseconds since the Unix epoch, UTC.

A consumer must reject a body whose `v` it does not know rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson

from tickstream.ticks import Tick, sample, tick_problem

FORMAT_VERSION = 1
# SQS allows 1 MiB per message (and per SendMessageBatch); 96 KiB bodies keep a 10-entry batch under 1 MiB and
# let the ingest function take ~40 messages per invocation within Lambda's 6 MB payload limit.
DEFAULT_MAX_MESSAGE_BYTES = 96 * 1024
_HEADER = b'{"v":1,"ticks":['
_FOOTER = b"]}"


class InvalidMessage(ValueError):
    """An SQS body that is not a valid tickstream message."""


def encode_tick(tick: Tick) -> bytes:
    return orjson.dumps(
        (
            tick.script_id,
            tick.trade_id,
            tick.price,
            tick.quantity,
            1 if tick.is_buyer_maker else 0,
            tick.traded_at_us,
            tick.event_at_us,
            tick.received_at_us,
        )
    )


def encode_message(encoded_ticks: Iterable[bytes]) -> str:
    return (_HEADER + b",".join(encoded_ticks) + _FOOTER).decode()


def pack_ticks(ticks: Iterable[Tick], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Iterator[str]:
    """Bodies of at most `max_bytes`, holding every tick once, in order."""
    packer = MessagePacker(max_bytes)
    for tick in ticks:
        yield from packer.add(encode_tick(tick))
    yield from packer.flush()


class MessagePacker:
    """Accumulates encoded ticks and hands out full message bodies."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._rows: list[bytes] = []
        self._size = len(_HEADER) + len(_FOOTER)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, encoded_tick: bytes) -> list[str]:
        """Add one encoded tick; returns the message it completed, if any."""
        row_size = len(encoded_tick) + 1
        full = self.flush() if self._rows and self._size + row_size > self.max_bytes else []
        self._rows.append(encoded_tick)
        self._size += row_size
        return full

    def flush(self) -> list[str]:
        if not self._rows:
            return []
        body = encode_message(self._rows)
        self._rows = []
        self._size = len(_HEADER) + len(_FOOTER)
        return [body]


def decode_message(body: str | bytes) -> list[Tick]:
    """Every tick of a message body, validated; raises InvalidMessage naming the first problem."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidMessage(f"body is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise InvalidMessage("body is not a JSON object")
    if message.get("v") != FORMAT_VERSION:
        raise InvalidMessage(f"unsupported format version {sample(message.get('v'))} (expected {FORMAT_VERSION})")
    rows = message.get("ticks")
    if not isinstance(rows, list):
        raise InvalidMessage("'ticks' is missing or not a list")
    return _rows_to_ticks(rows)


def _rows_to_ticks(rows: list[object]) -> list[Tick]:
    # The hot loop of the ingest function (~1,000 rows per message): locals, `Tick._make` (C) instead of the
    # generated `Tick.__new__`, and `tick_problem` directly. orjson builds only plain lists, ints and bools, so
    # the `type(...) is` tests below accept exactly what `isinstance` and `in (0, 1)` would.
    ticks: list[Tick] = []
    append, make, problem_of, width = ticks.append, Tick._make, tick_problem, len(Tick._fields)
    for index, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            raise InvalidMessage(f"tick {index}: expected an array of {width} fields")
        maker = row[4]
        if type(maker) is int and (maker == 0 or maker == 1):
            row[4] = maker == 1
        tick = make(row)
        problem = problem_of(tick)
        if problem is not None:
            raise InvalidMessage(f"tick {index}: {problem}")
        append(tick)
    return ticks
