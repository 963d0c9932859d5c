"""The SQS message format: packing, size bounds, validation, and the version 1 bodies still accepted."""

from __future__ import annotations

import base64
import itertools
import random
import re
import subprocess
import sys
import zlib
from pathlib import Path

import orjson
import pytest

from tickstream.codec import (
    MAX_ROWS_BYTES,
    V2_PREFIX,
    InvalidMessage,
    MessagePacker,
    TickBatch,
    decode_message,
    integer_pattern,
    pack_ticks,
    split_message,
)
from tickstream.ticks import MAX_SCRIPT_ID, MAX_TIME_US, MAX_TRADE_ID, MIN_TIME_US, Tick

T0 = 1_700_000_000_000_000


def sample(count: int, script_id: int = 3) -> list[Tick]:
    return [Tick(script_id, i, "0.00000712", "12345.10000000", i % 3 == 0, T0 + i, T0 + i + 1, T0 + i + 2)
            for i in range(count)]


def body_of_rows(rows: bytes) -> str:
    return V2_PREFIX + base64.b64encode(zlib.compress(rows)).decode()


def test_round_trip_keeps_every_tick_grouped_by_script_in_arrival_order() -> None:
    ticks = [tick for trio in zip(sample(3000, 3), sample(3000, 11), sample(3000, 7), strict=True) for tick in trio]
    bodies = list(pack_ticks(ticks, max_bytes=16 * 1024))
    decoded = [decode_message(body).ticks() for body in bodies]
    assert sorted(tick for ticks_ in decoded for tick in ticks_) == sorted(ticks)
    for message in decoded:  # each script's rows form one block, in arrival order
        blocks = [script for script, _ in itertools.groupby(tick.script_id for tick in message)]
        assert len(blocks) == len(set(blocks))
        assert all(a.trade_id < b.trade_id for a, b in itertools.pairwise(message) if a.script_id == b.script_id)


def test_rows_in_any_order_are_valid() -> None:
    """Grouping is the producer's courtesy (fast validation), not a rule: interleaved rows decode the same."""
    ticks = [tick for pair in zip(sample(50, 3), sample(50, 30), strict=True) for tick in pair]
    batch = decode_message(body_of_rows(TickBatch.from_ticks(ticks).rows))
    assert (batch.ticks(), batch.script_ids) == (ticks, {3, 30})


def test_messages_respect_the_size_bound_and_fill_it() -> None:
    """Every body fits its bound (one 64 KiB SQS billing unit by default) and all but the last are nearly full."""
    rng = random.Random(7)
    ticks = [Tick(1 + i % 5, i, f"{rng.randrange(10**6)}.{rng.randrange(10**8):08d}", f"0.{rng.randrange(10**8):08d}",
                  rng.random() < 0.5, T0 + i * 997, T0 + i * 997 + 5, T0 + i * 997 + 9) for i in range(40_000)]
    for max_bytes in (8 * 1024, 64 * 1024):
        bodies = list(pack_ticks(ticks, max_bytes=max_bytes))
        sizes = [len(body.encode()) for body in bodies]
        assert max(sizes) <= max_bytes
        assert sum(sizes[:-1]) / len(sizes[:-1]) >= 0.8 * max_bytes, sizes  # the first may be split in two
        assert sum(len(decode_message(body)) for body in bodies) == len(ticks)


def test_a_body_that_comes_out_too_big_is_split() -> None:
    """Incompressible rows after compressible ones: the budget overshoots, and the packer splits, never exceeds."""
    packer = MessagePacker(4096)
    bodies = [body for tick in sample(3000) for body in packer.add(tick)]
    rng = random.Random(1)
    noisy = [Tick(1, i, f"{rng.randrange(10**17)}.{rng.randrange(10**17)}", f"{rng.randrange(10**17)}", False,
                  T0 + rng.randrange(10**12), T0, T0) for i in range(3000)]
    bodies += [body for tick in noisy for body in packer.add(tick)] + packer.flush()
    assert max(len(body) for body in bodies) <= 4096
    assert sum(len(decode_message(body)) for body in bodies) == 6000


def test_the_body_is_one_line_of_text() -> None:
    """The producer's journal stores one body per line."""
    (body,) = pack_ticks(sample(100))
    assert body.startswith(V2_PREFIX)
    assert "\n" not in body and body.isascii()


@pytest.mark.parametrize(("low", "high"), [(1, MAX_SCRIPT_ID), (0, MAX_TRADE_ID), (MIN_TIME_US, MAX_TIME_US),
                                           (0, 9), (10, 99), (123, 4567), (7, 7), (7, 100)])
def test_integer_pattern_matches_exactly_the_range(low: int, high: int) -> None:
    rng = random.Random(low ^ high)
    pattern = re.compile(integer_pattern(low, high))
    candidates = [low, high, low - 1, high + 1, *(rng.randint(max(0, low - 100), high + 100) for _ in range(2000)),
                  *(rng.randrange(10 ** rng.randint(1, 21)) for _ in range(2000))]
    for value in (value for value in candidates if value >= 0):
        assert bool(pattern.fullmatch(str(value))) == (low <= value <= high), value
    assert not pattern.fullmatch("0" + str(high))  # no leading zeros
    assert not pattern.fullmatch("+" + str(high)) and not pattern.fullmatch(str(high) + " ")


def test_batch_knows_its_scripts_and_filters_by_them() -> None:
    ticks = sample(10, script_id=3) + sample(5, script_id=8)
    (body,) = pack_ticks(ticks)
    batch = decode_message(body)
    assert (batch.count, batch.script_ids) == (15, {3, 8})
    only = batch.for_scripts({8, 99})
    assert (only.count, only.script_ids, only.ticks()) == (5, {8}, ticks[10:])
    assert batch.for_scripts({3, 8}) is batch
    joined = TickBatch.join([batch, only])
    assert (joined.count, joined.script_ids, joined.ticks()) == (20, {3, 8}, ticks + ticks[10:])


ROW = b"1\t5\t1.5\t2\t0\t1700000000000000\t1700000000000001\t1700000000000002\n"


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (ROW.replace(b"1\t5", b"0\t5", 1), "tick 0: script_id '0'"),
        (ROW + ROW.replace(b"\t5\t", b"\t-5\t"), "tick 1: trade_id '-5'"),
        (ROW.replace(b"1.5", b"1e5"), "tick 0: price '1e5'"),
        (ROW.replace(b"\t2\t", b"\tNaN\t"), "tick 0: quantity 'NaN'"),
        (ROW.replace(b"\t0\t", b"\t2\t"), "tick 0: is_buyer_maker '2'"),
        (ROW.replace(b"1700000000000002", b"1700000000000"), "tick 0: received_at_us '1700000000000'"),
        (ROW.replace(b"1.5", b"1" * 19), "tick 0: price"),
        (ROW.replace(b"\t5\t", b"\t05\t"), "tick 0: trade_id '05'"),
        (ROW.replace(b"\t2\t", b"\t2\t9\t"), "tick 0: expected 8 tab-separated fields, found 9"),
        (ROW + ROW[:-1], "tick 1: the last row does not end with a line feed"),
        (ROW + b"\n", "tick 1: expected 8"),
        (ROW.replace(b"\t", b" "), "tick 0: expected 8"),
    ],
)
def test_bad_rows_are_named(rows: bytes, problem: str) -> None:
    with pytest.raises(InvalidMessage, match=re.escape(problem)):
        decode_message(body_of_rows(rows))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("hello", "unknown body format"),
        ("", "unknown body format"),
        (V2_PREFIX + "not base64!", "not base64"),
        (V2_PREFIX + base64.b64encode(b"not zlib").decode(), "not zlib"),
        (V2_PREFIX + base64.b64encode(zlib.compress(ROW * 100)[:-8]).decode(), "truncated"),
        (V2_PREFIX + base64.b64encode(zlib.compress(b"")).decode(), "holds no ticks"),
        (V2_PREFIX + base64.b64encode(zlib.compress(b"\x00" * (MAX_ROWS_BYTES + 1), 9)).decode(), "inflates beyond"),
    ],
)
def test_bad_bodies_are_rejected_with_a_reason(body: str, problem: str) -> None:
    with pytest.raises(InvalidMessage, match=problem):
        decode_message(body)


# --- version 1 (JSON), still accepted --------------------------------------------------------------------------

def v1_body(ticks: list[Tick]) -> str:
    rows = [[t.script_id, t.trade_id, t.price, t.quantity, int(t.is_buyer_maker), t.traded_at_us, t.event_at_us,
             t.received_at_us] for t in ticks]
    return orjson.dumps({"v": 1, "ticks": rows}).decode()


def test_version_1_bodies_decode_to_the_same_batch() -> None:
    ticks = sample(300)
    (v2,) = pack_ticks(ticks)
    assert decode_message(v1_body(ticks)) == decode_message(v2)


def test_unknown_json_version_is_rejected() -> None:
    with pytest.raises(InvalidMessage, match="version 2 bodies start with"):
        decode_message(v1_body(sample(1)).replace('"v":1', '"v":2'))


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
def test_bad_version_1_fields_are_named(row: list, problem: str) -> None:
    with pytest.raises(InvalidMessage, match=f"tick 0: {problem}"):
        decode_message(orjson.dumps({"v": 1, "ticks": [row]}))


# --- a bad row costs that row, never its neighbours --------------------------------------------------------------

BAD_ROWS = {  # a bad row → the field named for it
    ROW.replace(b"1\t5", b"0\t5", 1): "script_id",
    ROW.replace(b"\t5\t", b"\t-5\t"): "trade_id",
    ROW.replace(b"1.5", "١٢٣.٤".encode()): "price",
    ROW.replace(b"\t2\t", b"\tNaN\t"): "quantity",
    ROW.replace(b"\t0\t", b"\t2\t"): "is_buyer_maker",
    ROW.replace(b"1700000000000002", b"1700000000000"): "received_at_us",
    ROW.replace(b"\t2\t", b"\t2\t9\t"): "row",
    b"\n": "row",
}


def test_split_keeps_every_valid_row_and_names_each_invalid_one() -> None:
    """Valid rows of two scripts around every kind of bad row (and an unterminated last one): the valid rows are
    kept in order, each bad row is named (row, field) and kept as it was, and a body of just the bad rows (the dead
    letter) holds exactly them again."""
    good = [TickBatch.from_ticks([tick]).rows for tick in sample(40, 3) + sample(40, 8)]
    rows, expected = list(good[:30]), []
    for line, field in BAD_ROWS.items():
        expected.append((len(rows), field, line))
        rows += [line, *good[30 + 5 * len(expected):35 + 5 * len(expected)]]
    rows += [*good[75:], ROW[:-1]]
    expected.append((len(rows) - 1, "row", ROW[:-1]))
    split = split_message(body_of_rows(b"".join(rows)))
    assert [(row.index, row.field, row.line) for row in split.invalid] == expected
    valid = [line for line in rows if line not in BAD_ROWS and line != ROW[:-1]]
    assert split.valid.rows == b"".join(valid)
    assert (split.valid.count, split.valid.script_ids) == (len(valid), {3, 8})
    assert "price '١٢٣.٤' is not valid" in split.invalid[2].reason
    letter = split_message(split.body_of(split.invalid))
    assert [row.line for row in letter.invalid] == [line for _, _, line in expected]
    assert letter.valid.count == 0


def test_split_of_a_version_1_body_names_invalid_rows_and_keeps_them_as_json() -> None:
    valid = sample(3)
    rows = [[t.script_id, t.trade_id, t.price, t.quantity, int(t.is_buyer_maker), t.traded_at_us, t.event_at_us,
             t.received_at_us] for t in valid]
    bad = [[1, 1, "1.0", "NaN", 0, T0, T0, T0], [1, 2, "1.0"], "x", [1, 3, "1.0", "1.0", 1, T0, T0, "soon"]]
    body = orjson.dumps({"v": 1, "ticks": [rows[0], bad[0], bad[1], rows[1], bad[2], bad[3], rows[2]]})
    split = split_message(body)
    assert split.valid.ticks() == valid
    assert [(row.index, row.field) for row in split.invalid] == [(1, "quantity"), (2, "row"), (4, "row"),
                                                                 (5, "received_at_us")]
    assert orjson.loads(split.body_of(split.invalid)) == {"v": 1, "ticks": bad}


# --- bounded memory ----------------------------------------------------------------------------------------------

FUNCTION_MEMORY_MIB = 256  # template.yaml's MemorySize for the ingest function
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (the pytest process) at fork and survives exec.
MEASURE_SCRIPT = r"""
import re, sys
from tickstream.codec import split_message

def peak_kib():
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))

body = open(sys.argv[1]).read()
before = peak_kib()
split = split_message(body)
after = peak_kib()
print(split.valid.count, len(split.invalid), before // 1024, (after - before) // 1024)
"""


def largest_accepted_body(price: bytes) -> str:
    """The most rows the ingest accepts: short rows, up to its inflated cap."""
    row = b"1\t%d\t" + price + b"\t2\t0\t1700000000000000\t1700000000000001\t1700000000000002\n"
    return body_of_rows(b"".join(row % (10**6 + i) for i in range(MAX_ROWS_BYTES // len(row % 10**6))))


@pytest.mark.parametrize("price", [b"1.5", b"1e5"], ids=["every row valid", "every row invalid"])
def test_the_largest_accepted_body_is_validated_in_constant_memory(price: bytes, tmp_path: Path) -> None:
    """In a fresh interpreter (its own peak memory): the largest body the ingest accepts, every row checked. The
    validation adds little more than the inflated rows (and, on the failure path, each invalid row's record), far
    below the function's memory; the greedy block regex kept ~1.7 KB per row (+698 MiB for a 32 MiB body)."""
    path = tmp_path / "body.txt"
    path.write_text(largest_accepted_body(price))
    result = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, str(path)], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    rows, invalid, base_mib, added_mib = map(int, result.stdout.split())
    assert rows + invalid > 100_000 and (rows if price == b"1e5" else invalid) == 0
    assert added_mib < FUNCTION_MEMORY_MIB / 4, f"validation added {added_mib} MiB"  # 16 MiB valid, 45 invalid
    assert base_mib + added_mib < FUNCTION_MEMORY_MIB / 3, f"peak {base_mib + added_mib} MiB"


def test_the_packer_never_packs_more_rows_than_the_ingest_inflates() -> None:
    """Rows that compress far better than real ones, in SQS's largest (1 MiB) messages: each message's rows still
    stay within MAX_ROWS_BYTES, so every body the producer sends is one the ingest accepts."""
    ticks = [Tick(1, i, "1.5", "2", False, T0, T0, T0) for i in range(200_000)]
    bodies = list(pack_ticks(ticks, max_bytes=1024 * 1024))
    sizes = [len(decode_message(body).rows) for body in bodies]
    assert max(sizes) <= MAX_ROWS_BYTES
    assert sum(len(decode_message(body)) for body in bodies) == len(ticks)
