"""One validation contract from frame to row: what the producer accepts, the ingest accepts with the same values;
what the producer rejects is a malformed frame (counted, skipped) and never reaches a message.

Property-based (hypothesis) over arbitrary trade payloads, through the producer's real frame path
(`Feed._on_frames` with the Binance adapter), the real packer and the ingest's real decoder.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from producer_service.backfill import BackfillJob
from producer_service.config import ProducerSettings
from producer_service.exchanges.base import script_target
from producer_service.exchanges.binance import ADAPTER as BINANCE
from producer_service.feed import Feed
from producer_service.ledger import GapLedger
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient
from producer_service.sequencer import Gap, Sequencer
from tickstream.codec import pack_ticks, split_message
from tickstream.ticks import DECIMAL_PATTERN, MAX_TIME_US, MIN_TIME_US, Tick

STREAM = "btcusdt@trade"
SCRIPT_ID = 7
RECEIVED_US = 1_700_000_000_500_000
NON_ASCII_DIGITS = "٠١٢٣٤٥٦٧٨٩" "०१२३४५६७८९" "０１２３４５６７８９" "߀߁߂"  # Arabic-Indic, Devanagari, fullwidth, NKo


class RecordingSink:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []

    def put(self, tick: Tick) -> None:
        self.ticks.append(tick)


@pytest.fixture(scope="module")
def feed() -> Iterator[tuple[Feed, RecordingSink]]:
    stop = threading.Event()
    sink = RecordingSink()
    feed = Feed("contract", "ws://127.0.0.1:9", BINANCE, RestClient("http://127.0.0.1:9", stop=stop),
                ProducerSettings(), sink, Sequencer(), RateLimiter(10, 1.0), stop,  # type: ignore[arg-type]
                GapLedger(lambda: pytest.fail("the ledger is not used here")))
    feed.backfiller.request = lambda job: None  # type: ignore[method-assign]  # gaps are not this test's subject
    target = script_target(BINANCE, SCRIPT_ID, "BTCUSDT", "trade")
    feed.by_stream[target.stream] = target
    yield feed, sink
    stop.set()


def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` four times in five: a payload with seven fields is then accepted often enough to test both sides."""
    return st.integers(0, 4).flatmap(lambda n: odd if n == 4 else valid)


def json_values() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))


def decimals() -> st.SearchStrategy[Any]:
    """Decimal strings, and strings near them: non-ASCII digits, signs, exponents, blanks; or any JSON value."""
    near = st.text(alphabet=st.sampled_from(f"0123456789{NON_ASCII_DIGITS}.-+eE \t\n_,"), min_size=0, max_size=40)
    return mostly(st.from_regex(f"\\A{DECIMAL_PATTERN}\\Z"), st.one_of(near, near, st.text(max_size=40), json_values()))


def times_ms() -> st.SearchStrategy[Any]:
    return mostly(st.integers(MIN_TIME_US // 1000, MAX_TIME_US // 1000),
                  st.one_of(st.integers(MIN_TIME_US // 1000 - 2, MAX_TIME_US // 1000 + 2), json_values()))


@st.composite
def trade_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A `trade` or `aggTrade` event as a stream might send it: every field valid, odd or absent."""
    kind = draw(mostly(st.sampled_from(["trade", "aggTrade"]), st.sampled_from(["tradе", "mystery", 5, None])))
    event: dict[str, Any] = {
        "e": kind, "E": draw(times_ms()), "s": "BTCUSDT",
        "a" if kind == "aggTrade" else "t": draw(mostly(st.integers(0, 2**63 - 1), st.one_of(
            st.integers(-5, 2**64 + 5), json_values()))),
        "p": draw(decimals()), "q": draw(decimals()), "T": draw(times_ms()),
        "m": draw(mostly(st.booleans(), json_values())), "M": True,
    }
    if draw(st.integers(0, 9)) == 9:
        event.pop(draw(st.sampled_from(sorted(event))))
    return event


def frame(event: dict[str, Any]) -> bytes:
    return json.dumps({"stream": STREAM, "data": event}).encode()  # json: orjson refuses ints beyond 64 bits


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=trade_payloads())
@example(payload={"e": "trade", "E": 1_700_000_000_123, "s": "BTCUSDT", "t": 42, "p": "١٢٣.٤", "q": "1.5",
                "T": 1_700_000_000_120, "m": True, "M": True})
@example(payload={"e": "trade", "E": 1_700_000_000_123, "s": "BTCUSDT", "t": 42, "p": "123.4", "q": "１",
                "T": 1_700_000_000_120, "m": False, "M": True})
@example(payload={"e": "trade", "E": 1_700_000_000_123, "s": "BTCUSDT", "t": 43, "p": "95234.56000000",
                "q": "0.00100000", "T": 1_700_000_000_120, "m": False, "M": True})
def test_what_the_producer_accepts_the_ingest_decodes_to_the_same_values(
        feed: tuple[Feed, RecordingSink], payload: dict[str, Any]) -> None:
    producer, sink = feed
    producer.sequencer = Sequencer()  # each payload on its own: no duplicate or jump verdicts between examples
    sink.ticks.clear()
    malformed = producer.malformed
    producer._on_frames(None, [frame(payload)], RECEIVED_US)  # type: ignore[arg-type]
    if not sink.ticks:  # rejected: a malformed frame, counted, and nothing to send
        event("rejected")
        assert producer.malformed == malformed + 1
        return
    event("accepted")
    (tick,) = sink.ticks
    assert producer.malformed == malformed
    trade_id = payload["t"] if payload["e"] == "trade" else payload["a"]
    assert tick == Tick(SCRIPT_ID, trade_id, payload["p"], payload["q"], payload["m"], payload["T"] * 1000,
                        payload["E"] * 1000, RECEIVED_US)
    (body,) = pack_ticks([tick])
    split = split_message(body)
    assert split.invalid == ()
    assert split.valid.ticks() == [tick]


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS)
def test_a_price_with_non_ascii_digits_is_a_malformed_frame(feed: tuple[Feed, RecordingSink],
                                                            digit: str) -> None:
    """`\\d` would take these; the ingest's bytes patterns never do, so the producer must not either."""
    producer, sink = feed
    producer.sequencer = Sequencer()
    sink.ticks.clear()
    malformed = producer.malformed
    event = {"e": "trade", "E": 1_700_000_000_123, "s": "BTCUSDT", "t": 9, "p": f"12{digit}.5", "q": "1",
             "T": 1_700_000_000_120, "m": True, "M": True}
    producer._on_frames(None, [frame(event)], RECEIVED_US)  # type: ignore[arg-type]
    assert (sink.ticks, producer.malformed) == ([], malformed + 1)


def test_the_id_of_a_rejected_trade_becomes_a_gap_for_rest(feed: tuple[Feed, RecordingSink]) -> None:
    """Trades 1, 2 (a fullwidth price) and 3: 1 and 3 are sent, and 2 is asked of REST, which has the right one."""
    producer, sink = feed
    producer.sequencer = Sequencer()
    sink.ticks.clear()
    jobs: list[BackfillJob] = []
    producer.backfiller.request = jobs.append  # type: ignore[method-assign]
    prices = {1: "1.5", 2: "１.5", 3: "1.5"}
    trades = [{"e": "trade", "E": 1_700_000_000_123, "s": "BTCUSDT", "t": trade_id, "p": price, "q": "1",
               "T": 1_700_000_000_120, "m": True, "M": True} for trade_id, price in prices.items()]
    producer._on_frames(None, [frame(trade) for trade in trades], RECEIVED_US)  # type: ignore[arg-type]
    assert [tick.trade_id for tick in sink.ticks] == [1, 3]
    assert jobs == [BackfillJob(Gap(SCRIPT_ID, 2, 2), "BTCUSDT", "trade")]
