"""The SQS message format: many ticks per message, compressed.

SQS bills every started 64 KiB of payload as one request, and the emulator's and the ingest function's costs are
per byte as much as per message, so the producer packs ~2,000–4,500 ticks into one compressed body of at most
64 KiB and the ingest function hands the rows to MySQL nearly as they arrive. This module is the one definition
of the format.

Version 2 body (what the producer sends)::

    tickstream/2 <base64 of zlib-compressed rows>

- one row per tick: `script_id TAB trade_id TAB price TAB quantity TAB is_buyer_maker TAB traded_at_us TAB
  event_at_us TAB received_at_us LF` — `Tick`'s field order, integers in decimal without leading zeros, prices
  and quantities as decimal strings (never floats), is_buyer_maker 0/1, times in integer microseconds (UTC);
- the rows are exactly what the ingest function's `LOAD DATA` reads, so a valid body is checked by regular
  expressions (one match per script's block of rows, in constant memory) and stored without being parsed into
  Python objects (~0.7 µs per tick instead of ~4 µs); the producer groups rows by script, any order is valid;
- every field is ASCII (`tickstream.ticks`' grammar, the same patterns on both ends); at most `MAX_ROWS_BYTES` of
  rows per message (the producer never packs more; the ingest rejects more);
- base64 because SQS bodies are text; zlib level 1 (~4×, ~0.7 µs per tick to compress).

Version 1 bodies (JSON: `{"v": 1, "ticks": [[script_id, trade_id, "price", "quantity", 0|1, traded_at_us,
event_at_us, received_at_us], ...]}`) are still accepted, so messages queued or journaled by an older producer are
stored after an upgrade. A consumer must reject a body whose version it does not know rather than guess.

A body whose rows are partly invalid is not rejected whole: `split_message` returns its valid rows and names each
invalid one (row number, field); the ingest stores the former and dead-letters the latter (see functions/ingest).
`decode_message` is the strict form, for bodies that must be valid as a whole (the producer's journal).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from tickstream.ticks import (
    DECIMAL_PATTERN,
    DIGIT,
    MAX_SCRIPT_ID,
    MAX_TIME_US,
    MAX_TRADE_ID,
    MIN_TIME_US,
    Tick,
    sample,
    tick_field_problem,
    tick_problem,
)

V2_PREFIX = "tickstream/2 "  # one line, no newline: the producer's journal keeps one body per line
# One SQS billing unit. SQS itself allows 1 MiB per message and per SendMessageBatch.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
# Rows per message, uncompressed: the packer never puts more into one message, the ingest inflates no more (a zip
# bomb is rejected, not inflated into the function's memory). A body is at most 1 MiB (SQS's limit), and rows
# compress ~3-5x, so even SQS_MESSAGE_MAX_BYTES=1 MiB stays below this; a 64 KiB body holds ~0.2-0.35 MiB.
MAX_ROWS_BYTES = 8 * 1024 * 1024
# The longest valid row: 10 + 19 + 37 + 37 + 1 + 3 x 16 digits, 7 tabs and a line feed.
MAX_ROW_BYTES = 160
_ZLIB_LEVEL = 1
_ROW_FORMAT = "%d\t%d\t%s\t%s\t%d\t%d\t%d\t%d\n"  # `%d` writes is_buyer_maker as 1 or 0


class InvalidMessage(ValueError):
    """An SQS body that is not a valid tickstream message."""


# --- the row grammar ----------------------------------------------------------------------------------------------

def _digits_between(low: str, high: str) -> str:
    """A pattern for the integers low..high written with the same number of digits (low <= high)."""
    if low == high:
        return low
    if low.strip("0") == "" and high.strip("9") == "":
        return f"{DIGIT}{{{len(low)}}}"
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return low[0] + _digits_between(low[1:], high[1:])
    rest = len(low) - 1
    parts = [low[0] + _group(_digits_between(low[1:], "9" * rest))]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}]{DIGIT}{{{rest}}}")
    parts.append(high[0] + _group(_digits_between("0" * rest, high[1:])))
    return _group("|".join(parts))


def _group(pattern: str) -> str:
    return f"(?:{pattern})"


def integer_pattern(low: int, high: int) -> str:
    """A regular expression matching exactly the decimal integers low..high (no sign, no leading zeros)."""
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first, last = max(low, 10 ** (digits - 1) if digits > 1 else 0), min(high, 10**digits - 1)
        if first <= last:
            parts.append(_digits_between(str(first), str(last)))
    return _group("|".join(parts))


_TIME = integer_pattern(MIN_TIME_US, MAX_TIME_US)
_FIELD_PATTERNS = (integer_pattern(1, MAX_SCRIPT_ID), integer_pattern(0, MAX_TRADE_ID), DECIMAL_PATTERN,
                   DECIMAL_PATTERN, "[01]", _TIME, _TIME, _TIME)  # in Tick's field order
_ROW_AFTER_SCRIPT = "\t".join(_FIELD_PATTERNS[1:]) + "\n"
# One script's consecutive rows: the first names the script id, the rest repeat it (a backreference). Matching a
# message block by block validates every row and yields its script ids in one pass (a separate findall of the ids
# would cost as much again). The producer groups rows by script, so a message is a few blocks; rows in any order
# are still valid, just slower (one block per row). The repeat is possessive (`*+`): a greedy `*` keeps ~1.7 KB of
# backtracking state per row (a 32 MiB body: +700 MiB), a possessive one none; a block never needs to give a row
# back (rows cannot overlap), so the matches are the same.
_SCRIPT_BLOCK = re.compile(
    f"({_FIELD_PATTERNS[0]})\t{_ROW_AFTER_SCRIPT}(?:\\1\t{_ROW_AFTER_SCRIPT})*+".encode()).match


# --- encoding (the producer) --------------------------------------------------------------------------------------

def encode_rows(rows: Sequence[bytes]) -> str:
    return V2_PREFIX + base64.b64encode(zlib.compress(b"".join(rows), _ZLIB_LEVEL)).decode()


def pack_ticks(ticks: Iterable[Tick], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Iterator[str]:
    """Bodies of at most `max_bytes`, holding every tick once."""
    packer = MessagePacker(max_bytes)
    for tick in ticks:
        yield from packer.add(tick)
    yield from packer.flush()


class MessagePacker:
    """Accumulates ticks and hands out full message bodies, each at most `max_bytes`.

    Rows are grouped by script within a message (each script's in arrival order): the ingest function validates a
    script's rows as one block. The compressed size is known only after compressing, so the packer closes a message
    when the raw rows reach a budget derived from the last compression ratio (aiming at ~93 % of `max_bytes`); a
    body that still comes out too big is split in two (rare: it costs one more compression).
    """

    FILL = 0.93
    INITIAL_RATIO = 2.5  # raw bytes per body byte, until the first message tells

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._groups: dict[int, list[bytes]] = {}
        self._count = 0
        self._size = 0
        self._budget = self._raw_budget(self.INITIAL_RATIO)

    def __len__(self) -> int:
        return self._count

    def add(self, tick: Tick) -> list[str]:
        """Add one tick; returns the message(s) it completed, if any."""
        row = (_ROW_FORMAT % tick).encode()
        group = self._groups.get(tick[0])
        if group is None:
            self._groups[tick[0]] = [row]
        else:
            group.append(row)
        self._count += 1
        self._size += len(row)
        return self.flush() if self._size >= self._budget else []

    def flush(self) -> list[str]:
        if not self._count:
            return []
        rows = list(itertools.chain.from_iterable(self._groups.values()))
        raw_size = self._size
        self._groups, self._count, self._size = {}, 0, 0
        bodies = self._bodies(rows)
        ratio = raw_size / sum(len(body) for body in bodies)
        self._budget = self._raw_budget(ratio)
        return bodies

    def _raw_budget(self, ratio: float) -> int:
        """Raw row bytes after which a message closes; never beyond what the ingest inflates (MAX_ROWS_BYTES)."""
        return max(1, min(int(self.max_bytes * self.FILL * ratio), MAX_ROWS_BYTES - MAX_ROW_BYTES))

    def _bodies(self, rows: list[bytes]) -> list[str]:
        body = encode_rows(rows)
        if len(body) <= self.max_bytes:
            return [body]
        if len(rows) == 1:
            raise ValueError(f"one tick does not fit in {self.max_bytes} bytes")
        half = len(rows) // 2
        return self._bodies(rows[:half]) + self._bodies(rows[half:])


# --- decoding (the ingest function) -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TickBatch:
    """Validated ticks in row form: `rows` is what `LOAD DATA` reads; `ticks()` parses them when needed."""

    rows: bytes
    count: int
    script_ids: frozenset[int]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Tick]:
        return iter(self.ticks())

    @classmethod
    def from_ticks(cls, ticks: Sequence[Tick]) -> TickBatch:
        """Rows of ticks that are already valid (`tick_problem` is None for each)."""
        rows = "".join([_ROW_FORMAT % tick for tick in ticks]).encode()
        return cls(rows, len(ticks), frozenset(tick.script_id for tick in ticks))

    def ticks(self) -> list[Tick]:
        return [_row_to_tick(line) for line in self.rows.splitlines()]

    def first_traded_us(self) -> int | None:
        """The first row's trade time: rows are in arrival order, so close to the oldest (a metric, not a rule)."""
        if not self.count:
            return None
        return int(self.rows.split(b"\t", 6)[5])

    def for_scripts(self, keep: set[int] | frozenset[int]) -> TickBatch:
        """Only the rows of scripts in `keep` (the slow path: a batch naming a script that does not exist)."""
        if self.script_ids <= keep:
            return self
        lines = [line for line in self.rows.splitlines(keepends=True) if int(line.split(b"\t", 1)[0]) in keep]
        return TickBatch(b"".join(lines), len(lines), self.script_ids & frozenset(keep))

    @classmethod
    def join(cls, batches: Sequence[TickBatch]) -> TickBatch:
        if len(batches) == 1:
            return batches[0]
        return cls(b"".join(batch.rows for batch in batches), sum(batch.count for batch in batches),
                   frozenset().union(*(batch.script_ids for batch in batches)))


def _row_to_tick(line: bytes) -> Tick:
    script_id, trade_id, price, quantity, maker, traded, event, received = line.split(b"\t")
    return Tick(int(script_id), int(trade_id), price.decode(), quantity.decode(), maker == b"1", int(traded),
                int(event), int(received))


class InvalidRow(NamedTuple):
    """One row of a body that cannot be stored: where it was, which field is wrong, and the row as it was."""

    index: int  # the row's position in the body, from 0
    field: str  # the first invalid field (a Tick field name), or "row" for a row of the wrong shape
    reason: str  # for people: "price '1e5' is not …" (bounded)
    line: bytes  # v2: the row's text (with its line feed, if it had one); v1: the row's JSON


@dataclass(frozen=True, slots=True)
class SplitMessage:
    """A body's valid rows (`valid`, ready to store) and its invalid ones, in their order in the body."""

    valid: TickBatch
    invalid: tuple[InvalidRow, ...]
    version: int

    def body_of(self, rows: Sequence[InvalidRow]) -> str:
        """A body of the same version holding `rows` as they were (a dead letter that a redrive can retry)."""
        if self.version == 1:
            return (b'{"v":1,"ticks":[' + b",".join(row.line for row in rows) + b"]}").decode()
        return encode_rows([row.line for row in rows])


def decode_message(body: str | bytes) -> TickBatch:
    """Every tick of a message body, validated; raises InvalidMessage naming the first problem."""
    split = split_message(body)
    if split.invalid:
        first = split.invalid[0]
        raise InvalidMessage(f"tick {first.index}: {first.reason}")
    return split.valid


def split_message(body: str | bytes) -> SplitMessage:
    """The valid and the invalid rows of a body; raises InvalidMessage only when the body as a whole is invalid
    (unknown format, not base64/zlib/JSON, too large when inflated, no rows)."""
    text = body if isinstance(body, str) else body.decode(errors="replace")
    if text.startswith(V2_PREFIX):
        return _decode_v2(text[len(V2_PREFIX):])
    if text.startswith("{"):
        return _decode_v1(body)
    raise InvalidMessage(f"unknown body format {sample(text[:20])} (expected {V2_PREFIX.strip()!r} or JSON v1)")


def _decode_v2(payload: str) -> SplitMessage:
    try:
        compressed = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidMessage(f"version 2 payload is not base64: {error}") from None
    rows = _inflate(compressed)
    if not rows:
        raise InvalidMessage("version 2 message holds no ticks")
    return _split_rows(rows)


def _split_rows(rows: bytes) -> SplitMessage:
    """The fast path: one match per script block; the first block that fails hands over to `_salvage_rows`."""
    ids: set[bytes] = set()
    position, end, match_block = 0, len(rows), _SCRIPT_BLOCK
    while position < end:
        block = match_block(rows, position)
        if block is None:
            return _salvage_rows(rows, position, ids)
        ids.add(block.group(1))
        position = block.end()
    return SplitMessage(TickBatch(rows, rows.count(b"\n"), frozenset(map(int, ids))), (), 2)


def _salvage_rows(rows: bytes, position: int, ids: set[bytes]) -> SplitMessage:
    """The failure path, from the first invalid row on: a block match fails only on its first row, so each failure
    is one invalid row, skipped row by row; the valid rows around it are still matched block by block."""
    valid, invalid = [rows[:position]], []
    index, counted_to, end, match_block = 0, 0, len(rows), _SCRIPT_BLOCK
    while position < end:
        block = match_block(rows, position)
        if block is not None:
            ids.add(block.group(1))
            valid.append(rows[position:block.end()])
            position = block.end()
            continue
        index += rows.count(b"\n", counted_to, position)
        counted_to = position
        line_end = rows.find(b"\n", position) + 1 or end
        field, reason = _row_problem(rows[position:line_end])
        invalid.append(InvalidRow(index, field, reason, rows[position:line_end]))
        position = line_end
    stored = b"".join(valid)
    return SplitMessage(TickBatch(stored, stored.count(b"\n"), frozenset(map(int, ids))), tuple(invalid), 2)


def _inflate(compressed: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        rows = inflater.decompress(compressed, MAX_ROWS_BYTES)
    except zlib.error as error:
        raise InvalidMessage(f"version 2 payload is not zlib data: {error}") from None
    if inflater.unconsumed_tail:
        raise InvalidMessage(f"version 2 payload inflates beyond {MAX_ROWS_BYTES:,} bytes")
    if not inflater.eof:
        raise InvalidMessage("version 2 payload is truncated zlib data")
    return rows


def _row_problem(line: bytes) -> tuple[str, str]:
    """(field, reason) for a row that failed the block pattern (the error path only)."""
    if not line.endswith(b"\n"):
        return "row", "the last row does not end with a line feed"
    fields = line[:-1].split(b"\t")
    if len(fields) != len(_FIELD_PATTERNS):
        return "row", f"expected {len(_FIELD_PATTERNS)} tab-separated fields, found {len(fields)}"
    for name, pattern, value in zip(Tick._fields, _FIELD_PATTERNS, fields, strict=True):
        if re.fullmatch(pattern.encode(), value) is None:
            return name, f"{name} {sample(value.decode(errors='replace'))} is not valid"
    return "row", "invalid row"


def _decode_v1(body: str | bytes) -> SplitMessage:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidMessage(f"body is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise InvalidMessage("body is not a JSON object")
    if message.get("v") != 1:
        raise InvalidMessage(f"unsupported format version {sample(message.get('v'))} (JSON bodies are version 1;"
                             f" version 2 bodies start with {V2_PREFIX!r})")
    rows = message.get("ticks")
    if not isinstance(rows, list):
        raise InvalidMessage("'ticks' is missing or not a list")
    ticks, invalid = _rows_to_ticks(rows)
    return SplitMessage(TickBatch.from_ticks(ticks), tuple(invalid), 1)


def _rows_to_ticks(rows: list[object]) -> tuple[list[Tick], list[InvalidRow]]:
    ticks: list[Tick] = []
    invalid: list[InvalidRow] = []
    width = len(Tick._fields)
    for index, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            invalid.append(InvalidRow(index, "row", f"expected an array of {width} fields", orjson.dumps(row)))
            continue
        original = row[4]
        if type(original) is int and (original == 0 or original == 1):
            row[4] = original == 1
        tick = Tick._make(row)
        if tick_problem(tick) is None:
            ticks.append(tick)
            continue
        row[4] = original
        field, reason = tick_field_problem(tick) or ("row", "invalid row")
        invalid.append(InvalidRow(index, field, reason, orjson.dumps(row)))
    return ticks, invalid

