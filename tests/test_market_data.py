"""Candles and the aggTrades CSV export over real HTTP (`chalice local` against MariaDB), checked against sums
computed here with Decimal from the same ticks; and the console's page and files as the API serves them."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pymysql
import pytest
import yaml

from tests.api_fixtures import REPO_ROOT, HttpApi, load_api_app
from tickstream import jobs
from tickstream.tick_store import insert_ticks_ignore
from tickstream.ticks import Tick

pytest_plugins = ["tests.api_fixtures"]

APP = load_api_app().app
from chalicelib import console, market_data  # noqa: E402 - importable once load_api_app put it on sys.path

T0_US = 1_709_294_400_000_000  # 2024-03-01T12:00:00Z
VENDOR_DIR = console.ASSETS_DIR / "vendor"


def new_script(http_api: HttpApi, symbol: str = "BTCUSDT", stream: str = "aggTrade") -> int:
    brokers = http_api.get("/brokers").json()["brokers"]
    broker_id = brokers[0]["id"] if brokers else http_api.post("/brokers", json={"name": "B"}).json()["id"]
    reply = http_api.post("/scripts", json={"broker_id": broker_id, "name": symbol, "trading_symbol": symbol,
                                            "additional_data": {"stream": stream}})
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def random_ticks(script_id: int, count: int, span_us: int, seed: int = 7) -> list[Tick]:
    """Ticks over [T0, T0 + span) with 8-decimal prices and quantities; ids are NOT in time order within a
    second (so open/close must follow the ids, not the times)."""
    rng = random.Random(seed)
    ticks = []
    for trade_id in range(1, count + 1):
        jitter = rng.randrange(0, 900_000)
        traded = T0_US + (trade_id * span_us // count) // 1_000_000 * 1_000_000 + jitter
        price = f"{rng.randrange(9_000_000_000_000, 9_100_000_000_000) / 10**8:.8f}"
        quantity = f"{rng.randrange(1, 10**9) / 10**8:.8f}"
        ticks.append(Tick(script_id, trade_id, price, quantity, rng.random() < 0.5, traded, traded, traded))
    return ticks


def expected_candles(ticks: list[Tick], step_s: int) -> list[dict[str, Any]]:
    bars: dict[int, list[Tick]] = defaultdict(list)
    for tick in ticks:
        bars[tick.traded_at_us // 1_000_000 // step_s].append(tick)
    result = []
    for bucket in sorted(bars):
        members = sorted(bars[bucket], key=lambda t: t.trade_id)
        prices = [Decimal(t.price) for t in members]
        result.append({
            "open": members[0].price, "close": members[-1].price, "high": str(max(prices)), "low": str(min(prices)),
            "volume": sum(Decimal(t.quantity) for t in members),
            "quote_volume": sum(Decimal(t.price) * Decimal(t.quantity) for t in members),
            "trades": len(members), "first_trade_id": members[0].trade_id, "last_trade_id": members[-1].trade_id,
            "open_time_s": bucket * step_s,
        })
    return result


def comparable(bar: dict[str, Any]) -> dict[str, Any]:
    """An API bar with decimals as Decimal (the API strips trailing zeros) and its time as epoch seconds."""
    from datetime import datetime

    return {
        "open": Decimal(bar["open"]), "close": Decimal(bar["close"]), "high": Decimal(bar["high"]),
        "low": Decimal(bar["low"]), "volume": Decimal(bar["volume"]), "quote_volume": Decimal(bar["quote_volume"]),
        "trades": bar["trades"], "first_trade_id": bar["first_trade_id"], "last_trade_id": bar["last_trade_id"],
        "open_time_s": int(datetime.fromisoformat(bar["open_time"]).timestamp()),
    }


def as_decimals(bar: dict[str, Any]) -> dict[str, Any]:
    return {k: Decimal(v) if k in ("open", "close", "high", "low") else v for k, v in bar.items()}


@pytest.mark.parametrize("interval", ["1s", "1m", "5m", "1h", "1d"])
def test_candles_are_exact_for_every_interval(http_api: HttpApi, db: pymysql.Connection, interval: str) -> None:
    script_id = new_script(http_api)
    ticks = random_ticks(script_id, 3000, span_us=2 * 3600 * 1_000_000)  # two hours, ~0.4 trades/s
    insert_ticks_ignore(db, ticks)
    step = market_data.INTERVAL_SECONDS[interval]
    window = {"interval": interval, "from": str(T0_US // 1000), "to": str(T0_US // 1000 + 2 * 3600 * 1000)}
    if interval == "1s":  # 7,200 one-second bars: more than one call's limit, so page with next_from
        window["to"] = str(T0_US // 1000 + 1800 * 1000)
    window_end_s = -(-int(window["to"]) // 1000 // step) * step  # `to` rounded up to a bar end
    in_window = [t for t in ticks if t.traded_at_us < window_end_s * 1_000_000]
    want = [as_decimals(bar) for bar in expected_candles(in_window, step)]
    for _ in ("computed", "again, from the sealed minutes"):
        # Bars are aligned to the epoch: the 1h and 1d bars start before T0 and cover it whole.
        assert [comparable(bar) for bar in all_candles(http_api, script_id, window)] == want
    if step >= 60:  # sealed: every minute of the 121 but the first (no trade before it) and the last (none after)
        assert len(expected_candles(ticks, 60)) == 121
        assert table_rows(db, "candles_1m", script_id) == 119


def all_candles(http_api: HttpApi, script_id: int, window: dict[str, str]) -> list[dict[str, Any]]:
    bars: list[dict[str, Any]] = []
    params = dict(window)
    for _ in range(10):
        reply = http_api.get(f"/scripts/{script_id}/candles", params=params)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        assert len(page["candles"]) <= market_data.MAX_BARS
        bars.extend(page["candles"])
        if page["next_from"] is None:
            return bars
        params["from"] = page["next_from"]
    raise AssertionError("more pages than expected")


def table_rows(db: pymysql.Connection, table: str, script_id: int) -> int:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE script_id = %s", (script_id,))  # a literal table name
        return cursor.fetchone()[0]


def test_a_minute_with_a_hole_is_not_cached_so_a_backfill_shows(http_api: HttpApi, db: pymysql.Connection) -> None:
    """Ten trades a minute for ten minutes (ids 1–100), trades 45 (inside minute 4) and 70 (the last of minute 6)
    missing, as gaps the producer backfills later: the minutes that could still receive them are computed on every
    call until they are filled, so a late tick is never hidden by a stale cached bar."""
    script_id = new_script(http_api)
    ticks = [Tick(script_id, i, f"{100 + i}.5", "1", False, T0_US + (i - 1) * 6_000_000, T0_US, T0_US)
             for i in range(1, 101)]
    insert_ticks_ignore(db, [t for t in ticks if t.trade_id not in (45, 70)])
    window = {"interval": "5m", "from": str(T0_US // 1000), "to": str(T0_US // 1000 + 600_000)}
    first = all_candles(http_api, script_id, window)
    assert [bar["trades"] for bar in first] == [49, 49]
    # Never minutes 0 (no trade before it) and 9 (none after it); not yet 4 (45), 6 and 7 (70 between them).
    assert sealed_minutes(db, script_id) == [1, 2, 3, 5, 8]
    insert_ticks_ignore(db, [ticks[44], ticks[69]])  # the backfill
    after = all_candles(http_api, script_id, window)
    assert [comparable(bar) for bar in after] == [as_decimals(bar) for bar in expected_candles(ticks, 300)]
    assert sealed_minutes(db, script_id) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert http_api.request("PATCH", f"/scripts/{script_id}", json={"is_active": False}).status_code == 200
    purge = http_api.request("DELETE", f"/scripts/{script_id}?purge=true")
    assert purge.status_code == 202
    assert jobs.run_job(db, purge.json()["id"]).done  # the maintenance function's work
    assert table_rows(db, "candles_1m", script_id) == 0  # the purge takes the cache with the ticks


def sealed_minutes(db: pymysql.Connection, script_id: int) -> list[int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT minute FROM candles_1m WHERE script_id = %s ORDER BY minute", (script_id,))
        return [row[0] - T0_US // 60_000_000 for row in cursor.fetchall()]


def test_candle_range_is_aligned_cut_at_limit_and_continued(http_api: HttpApi, db: pymysql.Connection) -> None:
    script_id = new_script(http_api)
    insert_ticks_ignore(db, [Tick(script_id, i, "1.00000000", "2.50000000", False, T0_US + i * 60_000_000,
                                  T0_US, T0_US) for i in range(10)])  # one trade a minute
    from_ms = T0_US // 1000 + 30_000  # 12:00:30 → rounded down to 12:00
    page = http_api.get(f"/scripts/{script_id}/candles",
                        params={"interval": "1m", "from": str(from_ms), "limit": "4",
                                "to": "2024-03-01T12:09:10Z"}).json()
    assert page["start"] == "2024-03-01T12:00:00Z" and page["end"] == "2024-03-01T12:04:00Z"
    assert [bar["open_time"] for bar in page["candles"]] == [f"2024-03-01T12:0{i}:00Z" for i in range(4)]
    assert page["next_from"] == "2024-03-01T12:04:00Z"
    assert page["candles"][0] == {"open_time": "2024-03-01T12:00:00Z", "open": "1", "high": "1", "low": "1",
                                  "close": "1", "volume": "2.5", "quote_volume": "2.5", "trades": 1,
                                  "first_trade_id": 0, "last_trade_id": 0}
    last = http_api.get(f"/scripts/{script_id}/candles",
                        params={"interval": "1m", "from": page["next_from"], "to": "2024-03-01T12:09:10Z"}).json()
    assert last["end"] == "2024-03-01T12:10:00Z" and last["next_from"] is None  # `to` rounded up to a bar end
    assert len(last["candles"]) == 6


def test_candle_errors(http_api: HttpApi) -> None:
    script_id = new_script(http_api)
    assert http_api.get("/scripts/999999/candles?interval=1m").status_code == 404
    for query in ("", "interval=2m", "interval=1m&limit=0", f"interval=1m&limit={market_data.MAX_BARS + 1}",
                  "interval=1m&from=2024-03-02&to=2024-03-01", "interval=1m&from=yesterday"):
        reply = http_api.get(f"/scripts/{script_id}/candles?{query}")
        assert reply.status_code == 422, (query, reply.text)
    far = http_api.get(f"/scripts/{script_id}/candles?interval=1d&from=0&to=9999-12-31T23:59:59Z")
    assert far.status_code == 200 and far.json()["candles"] == []


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_ticks_csv_has_binance_aggtrades_columns_and_pages_by_cursor(http_api: HttpApi,
                                                                     db: pymysql.Connection) -> None:
    script_id = new_script(http_api, "ETHUSDT")
    ticks = [Tick(script_id, 1000 + i, "3456.78000000", "0.01000000", i % 3 == 0, T0_US + i * 1500, T0_US, T0_US)
             for i in range(250)]
    insert_ticks_ignore(db, ticks)
    params = {"from": "2024-03-01T12:00:00Z", "to": "2024-03-01T12:00:00.300Z", "limit": "60"}
    rows: list[list[str]] = []
    pages = 0
    while pages < 10:
        pages += 1
        reply = http_api.get(f"/scripts/{script_id}/ticks.csv", params=params)
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("text/csv")
        assert reply.headers["Content-Disposition"] == \
            'attachment; filename="ETHUSDT-aggTrades-20240301T120000Z-20240301T120000Z.csv"'
        header, *body = read_csv(reply.text)
        assert header == list(market_data.CSV_COLUMNS)
        assert len(body) <= 60
        rows.extend(body)
        if "X-Next-Cursor" not in reply.headers:
            break
        params["cursor"] = reply.headers["X-Next-Cursor"]
    in_range = [t for t in ticks if t.traded_at_us < T0_US + 300_000]  # to is exclusive: 200 ticks
    assert pages == 4 and len(rows) == len(in_range) == 200
    assert rows == [[str(t.trade_id), "3456.78", "0.01", "", "", str(t.traded_at_us // 1000),
                     "true" if t.is_buyer_maker else "false"] for t in in_range]


def test_ticks_csv_of_a_trade_stream_names_each_trade_its_own_aggregate(http_api: HttpApi,
                                                                        db: pymysql.Connection) -> None:
    script_id = new_script(http_api, "PEPEUSDT", stream="trade")
    insert_ticks_ignore(db, [Tick(script_id, 77, "0.00000712", "1000000", True, T0_US + 123_456, T0_US, T0_US)])
    reply = http_api.get(f"/scripts/{script_id}/ticks.csv")
    assert read_csv(reply.text)[1:] == [["77", "0.00000712", "1000000", "77", "77", str(T0_US // 1000 + 123),
                                         "true"]]
    assert 'filename="PEPEUSDT-aggTrades-start-end.csv"' in reply.headers["Content-Disposition"]
    assert "X-Next-Cursor" not in reply.headers
    assert http_api.get("/scripts/999999/ticks.csv").status_code == 404
    assert http_api.get(f"/scripts/{script_id}/ticks.csv?limit=50001").status_code == 422
    assert http_api.get(f"/scripts/{script_id}/ticks.csv?cursor=x").status_code == 422
    assert http_api.get(f"/scripts/{script_id}/ticks.csv", token=None).status_code == 401


def test_candle_query_reads_only_the_range_not_the_table(db: pymysql.Connection, http_api: HttpApi) -> None:
    """Scale: a script with 25 days of ticks (50,000); one day's candles read about one day's rows (2,000), a few
    times over (index span, the pass over the rows, the grouping's temporary table, open/close lookups), never
    the script's whole history."""
    script_id = new_script(http_api)
    day_us = 86_400_000_000
    ticks = [Tick(script_id, i, "1.5", "1", False, T0_US + i * (day_us // 2000), T0_US, T0_US) for i in range(50_000)]
    insert_ticks_ignore(db, ticks)

    def rows_read() -> int:
        with db.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_key',"
                           " 'Handler_read_rnd_next', 'Handler_read_first', 'Handler_read_prev')")
            return sum(int(value) for _, value in cursor.fetchall())

    from datetime import UTC, datetime, timedelta

    start = datetime.fromtimestamp(T0_US / 1e6, UTC) + timedelta(days=3)
    before = rows_read()
    bars = market_data.market_data.candles(db, script_id, start, start + timedelta(days=1), 60)
    read = rows_read() - before
    assert sum(bar.trades for bar in bars) == 2000
    assert read < 20_000, read


# --- the console's page and files -----------------------------------------------------------------------------

def test_console_shell_and_files_are_public_with_a_strict_csp(http_api: HttpApi) -> None:
    shell = http_api.get("/console", token=None)
    assert shell.status_code == 200 and shell.headers["Content-Type"].startswith("text/html")
    csp = shell.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert shell.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in shell.text and " on" not in shell.text.lower().replace("\n", " ").split("<body")[0]
    for name in console.ASSETS:
        reply = http_api.get(f"/console/{name}", token=None)
        assert reply.status_code == 200 and reply.headers["Content-Security-Policy"] == csp
    for name in ("nope.js", "..%2Fapp.py", "%2E%2E"):
        assert http_api.get(f"/console/{name}", token=None).status_code == 404
    assert http_api.get("/stats", token=None).status_code == 401  # the page is public; the data is not


def test_vendored_libraries_match_their_recorded_checksums_and_carry_licences() -> None:
    manifest = json.loads((VENDOR_DIR / "manifest.json").read_text())
    assert manifest, "no vendored library recorded"
    for entry in manifest:
        data = (VENDOR_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert (VENDOR_DIR / entry["licence_file"]).is_file()
        assert entry["version"] in entry["file"]
    assert {p.name for p in VENDOR_DIR.glob("*.js")} == {entry["file"] for entry in manifest}


def test_console_routes_have_api_events_in_the_template() -> None:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((REPO_ROOT / "template.yaml").read_text(), Loader=Loader)
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"].values()
    declared = {event["Properties"]["Path"] for event in events}
    assert declared >= console.ROUTES
