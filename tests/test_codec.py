"""The SQS message format: packing, size bounds and validation."""

from __future__ import annotations

import orjson
import pytest

from tickstream.codec import InvalidMessage, decode_message, pack_ticks
from tickstream.ticks import Tick

T0 = 1_700_000_000_000_000


def sample(count: int) -> list[Tick]:
    return [Tick(3, i, "0.00000712", "12345.10000000", i % 3 == 0, T0 + i, T0 + i + 1, T0 + i + 2)
            for i in range(count)]


def test_round_trip_keeps_every_tick_in_order() -> None:
    ticks = sample(5000)
    decoded = [tick for body in pack_ticks(ticks) for tick in decode_message(body)]
    assert decoded == ticks


def test_messages_respect_the_size_bound() -> None:
    bodies = list(pack_ticks(sample(5000), max_bytes=8 * 1024))
    assert len(bodies) > 5
    assert all(len(body.encode()) <= 8 * 1024 for body in bodies)
    assert sum(len(decode_message(body)) for body in bodies) == 5000


def test_version_is_checked() -> None:
    (body,) = pack_ticks(sample(1))
    assert orjson.loads(body)["v"] == 1
    with pytest.raises(InvalidMessage, match="version"):
        decode_message(body.replace('"v":1', '"v":2'))


@pytest.mark.parametrize(
    "row, problem",
    [
        ([0, 1, "1.0", "1.0", 0, T0, T0, T0], "script_id"),
        ([1, -1, "1.0", "1.0", 0, T0, T0, T0], "trade_id"),
        ([1, 1, "-1.0", "1.0", 0, T0, T0, T0], "price"),
        ([1, 1, "1.0", "NaN", 0, T0, T0, T0], "quantity"),
        ([1, 1, "1.0", "1.0", 2, T0, T0, T0], "is_buyer_maker"),
        ([1, 1, "1.0", "1.0", 0, T0, T0, "soon"], "received_at_us"),
        ([1, 1, "1" * 19, "1.0", 0, T0, T0, T0], "price"),
    ],
)
def test_bad_fields_are_named(row: list, problem: str) -> None:
    with pytest.raises(InvalidMessage, match=f"tick 0: {problem}"):
        decode_message(orjson.dumps({"v": 1, "ticks": [row]}))
