"""The web console in a real headless Chromium (Debian's, driven by Playwright; `make browser` installs it), served by
a real `chalice local` against MariaDB and, for the redrive button, LocalStack's SQS.

Every test fails on any browser console error or uncaught page error except the HTTP statuses it provokes on
purpose (a wrong token's 401, a form's 422). TICKSTREAM_CONSOLE_SCREENSHOTS=<dir> also saves a screenshot of each
page there (how docs/console-*.png are made).
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pytest
import requests

from tests.api_fixtures import TOKEN, LocalServer, start_chalice_local, stop_chalice_local
from tickstream import coverage, jobs
from tickstream.tick_store import insert_ticks_ignore
from tickstream.ticks import Tick
from tickstream.venues import VENUES

pytest_plugins = ["tests.api_fixtures"]
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("TICKSTREAM_CHROMIUM", "/usr/bin/chromium")
# Offline and quiet: no first-run, sync, component updates or background fetches (the network rule).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = os.environ.get("TICKSTREAM_CONSOLE_SCREENSHOTS")
XSS_NAME = "<img src=x onerror=alert(1)>"
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def queues(request: pytest.FixtureRequest) -> dict[str, str]:
    """A ticks queue and DLQ on the session's LocalStack (empty if the LocalStack fixtures are not loaded)."""
    try:
        localstack = request.getfixturevalue("localstack")
        sqs = request.getfixturevalue("aws")("sqs")
    except pytest.FixtureLookupError:
        return {}
    name = f"console-{uuid.uuid4().hex[:8]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=name, Attributes={
        "RedrivePolicy": f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "5"}}'})["QueueUrl"]
    return {"AWS_ENDPOINT_URL": localstack.endpoint_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "TICKS_QUEUE_URL": queue_url, "TICKS_DLQ_URL": dlq_url}


@pytest.fixture(scope="module")
def server(db_env: dict[str, str], queues: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log_path = tmp_path_factory.mktemp("console") / "chalice-local.log"
    local = start_chalice_local({**db_env, **queues, "API_TOKEN": TOKEN}, log_path)
    yield local
    stop_chalice_local(local)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Console:
    """A browser page on the console, recording console errors and page errors."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("dialog", self._dialog)
        page.set_default_timeout(WAIT_MS)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base_url}/console{fragment}")

    def sign_in(self, token: str = TOKEN) -> None:
        self.open()
        self.page.fill("#f-token", token)
        self.page.click("form.signin button[type=submit]")
        self.page.wait_for_selector("header nav")

    def go(self, page: str) -> None:
        self.page.click(f"header nav a[href='#/{page}']")
        self.page.wait_for_selector(f"header nav a.active[href='#/{page}']")

    def expect_http_errors(self, status: int) -> None:
        """Drop the console lines Chromium logs for responses of `status` the test asked for; nothing else."""
        pattern = re.compile(rf"status of {status}\b")
        self.errors = [error for error in self.errors if not pattern.search(error)]

    def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.wait_for_timeout(300)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"console-{name}.png"), full_page=True)


@pytest.fixture
def console(browser: Any, server: LocalServer, db: pymysql.Connection) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = Console(context.new_page(), server.url)
    yield page
    errors, dialogs = page.errors, page.dialogs
    context.close()
    assert errors == [], errors
    assert dialogs == [], dialogs  # alert(), confirm(): the XSS payload, or a page that uses native dialogs


def api(server: LocalServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    reply = requests.request(method, server.url + path, headers={"Authorization": f"Bearer {TOKEN}",
                                                                 "Connection": "close"}, timeout=10, **kwargs)
    assert reply.status_code < 400, reply.text
    return reply


def new_script(server: LocalServer, symbol: str, broker_name: str = "Binance") -> int:
    brokers = {b["name"]: b["id"] for b in api(server, "GET", "/brokers").json()["brokers"]}
    broker_id = brokers.get(broker_name) or api(server, "POST", "/brokers", json={"name": broker_name}).json()["id"]
    return api(server, "POST", "/scripts", json={"broker_id": broker_id, "name": symbol,
                                                 "trading_symbol": symbol}).json()["id"]


def recent_ticks(script_id: int, count: int, first_id: int = 1, seconds_apart: float = 1.0) -> list[Tick]:
    """Ticks ending about now (the chart's default range), prices walking up and down."""
    now_us = int(time.time() * 1_000_000)
    start = now_us - int(count * seconds_apart * 1_000_000)
    ticks = []
    for i in range(count):
        traded = start + int(i * seconds_apart * 1_000_000)
        received = max(traded, now_us - 20_000 - i % 13 * 1_000)  # as if the producer had just sent them
        ticks.append(Tick(script_id, first_id + i, f"{100 + (i * 37 % 23) - (i % 7):.8f}", f"{1 + i % 5}.25000000",
                          i % 2 == 0, traded, traded, received))
    return ticks


def store_ticks(db: pymysql.Connection, ticks: list[Tick]) -> None:
    """Ticks and their tick_coverage, as the ingest leaves them (the console's counts come from the coverage)."""
    insert_ticks_ignore(db, ticks)
    coverage.rebuild(db, sorted({tick.script_id for tick in ticks}))


# --- tests ---------------------------------------------------------------------------------------------------------

def test_sign_in_with_a_wrong_then_the_right_token_and_sign_out(console: Console) -> None:
    page = console.page
    console.open()
    assert page.locator("header nav").count() == 0  # the shell is public; nothing loads without a token
    page.fill("#f-token", "not-the-token")
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("text=That token was not accepted.")
    console.expect_http_errors(401)
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#f-token", TOKEN)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("h1:text('Overview')")
    assert page.evaluate("sessionStorage.getItem('tickstream.token')") == TOKEN
    assert TOKEN not in page.url
    page.reload()  # the tab keeps its session
    page.wait_for_selector("h1:text('Overview')")
    page.click("[data-action=sign-out]")
    page.wait_for_selector("form.signin")
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    page.wait_for_selector("form.signin")


def test_broker_and_script_through_the_forms_with_422s_inline_and_names_as_text(console: Console,
                                                                              server: LocalServer) -> None:
    page = console.page
    console.sign_in()
    console.go("brokers")
    form = page.locator("form[data-form=broker]")
    form.locator("#f-name").fill(XSS_NAME)
    form.locator("#f-ws_url").fill("http://not-a-websocket.test")
    form.locator("button[type=submit]").click()
    error = form.locator("[data-field-error=ws_url]")
    error.wait_for()
    assert "ws" in error.inner_text()
    console.expect_http_errors(422)
    assert api(server, "GET", "/brokers").json()["brokers"] == []  # refused: nothing stored
    form.locator("#f-ws_url").fill("ws://127.0.0.1:9/")
    form.locator("button[type=submit]").click()
    row = page.locator("table[data-table=brokers] tbody tr")
    row.first.wait_for()
    assert row.first.locator("[data-col=name]").inner_text() == XSS_NAME  # shown as text
    assert page.locator("img").count() == 0  # and not parsed as markup
    console.screenshot("brokers")

    console.go("scripts")
    form = page.locator("form[data-form=script]")
    form.locator("#f-broker_id option").filter(has_text=XSS_NAME).wait_for(state="attached")
    form.locator("#f-broker_id").select_option(label=XSS_NAME)
    form.locator("#f-name").fill("Bitcoin")
    form.locator("#f-trading_symbol").fill("BTC-USDT")
    form.locator("button[type=submit]").click()
    form.locator("[data-field-error=trading_symbol]").wait_for()
    console.expect_http_errors(422)
    form.locator("#f-trading_symbol").fill("btcusdt")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("table[data-table=scripts] [data-col=symbol]:text('BTCUSDT')")
    assert form.locator("[data-field-error]").count() == 0
    scripts = api(server, "GET", "/scripts").json()["scripts"]
    assert [(s["trading_symbol"], s["name"]) for s in scripts] == [("BTCUSDT", "Bitcoin")]
    assert page.locator("img").count() == 0
    console.go("overview")
    page.wait_for_selector("table[data-table=overview] tbody tr")
    assert XSS_NAME in page.locator("table[data-table=overview]").inner_text()
    assert page.locator("img").count() == 0
    assert page.evaluate("typeof window.alert") == "function" and console.dialogs == []


def test_the_forms_offer_every_venue_and_each_brokers_own_streams(console: Console, server: LocalServer) -> None:
    """The broker type is a select of tickstream.venues' types, its default endpoints as placeholders; a script's
    stream select offers its broker's venue's streams, and a symbol in another venue's format is refused inline."""
    page = console.page
    console.sign_in()
    console.go("brokers")
    form = page.locator("form[data-form=broker]")
    form.locator("#f-type option[value=okx]").wait_for(state="attached")
    assert form.locator("#f-type option").evaluate_all("options => options.map(o => o.value)") == list(VENUES)
    form.locator("#f-name").fill("OKX main")
    form.locator("#f-type").select_option("okx")
    assert form.locator("#f-ws_url").get_attribute("placeholder") == VENUES["okx"].ws_url
    form.locator("#f-ws_url").fill("wss://stream.binance.com:9443")  # a Binance host, for an OKX broker
    form.locator("button[type=submit]").click()
    error = form.locator("[data-field-error=ws_url]")
    error.wait_for()
    assert "OKX" in error.inner_text()
    console.expect_http_errors(422)
    form.locator("#f-ws_url").fill("")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("table[data-table=brokers] [data-col=name]:text('OKX main')")
    assert [(b["name"], b["type"]) for b in api(server, "GET", "/brokers").json()["brokers"]] == [("OKX main", "okx")]

    console.go("scripts")
    form = page.locator("form[data-form=script]")
    form.locator("#f-broker_id option").filter(has_text="OKX main").wait_for(state="attached")
    form.locator("#f-broker_id").select_option(label="OKX main")
    assert form.locator("#f-stream option").evaluate_all("options => options.map(o => o.value)") == ["", "trades-all"]
    assert form.locator("#f-trading_symbol").get_attribute("placeholder") == "BTC-USDT"
    form.locator("#f-name").fill("Bitcoin")
    form.locator("#f-trading_symbol").fill("BTCUSDT")  # Binance's format
    form.locator("button[type=submit]").click()
    assert "okx" in form.locator("[data-field-error=trading_symbol]").inner_text()
    console.expect_http_errors(422)
    form.locator("#f-trading_symbol").fill("btc-usdt-swap")
    form.locator("#f-stream").select_option("trades-all")
    form.locator("button[type=submit]").click()
    row = page.locator("table[data-table=scripts] tr", has=page.locator("[data-col=symbol]:text('BTC-USDT-SWAP')"))
    row.wait_for()
    assert "trades-all" in row.inner_text()
    scripts = api(server, "GET", "/scripts").json()["scripts"]
    assert [(s["trading_symbol"], s["additional_data"]) for s in scripts] == [
        ("BTC-USDT-SWAP", {"stream": "trades-all"})]


def test_scripts_filter_sort_page_and_bulk_deactivate(console: Console, server: LocalServer) -> None:
    symbols = [f"SYM{i:02d}USDT" for i in range(30)]
    for symbol in symbols:
        new_script(server, symbol)
    new_script(server, "OTHERUSDT", broker_name="Other")
    page = console.page
    console.sign_in()
    console.go("scripts")
    table = page.locator("table[data-table=scripts]")
    page.wait_for_selector("text=31 script(s)")
    page.fill("[data-filter=search]", "sym")
    page.wait_for_selector("text=30 script(s)")
    page.click("th[data-sort=trading_symbol]")
    page.click("th[data-sort=trading_symbol]")  # descending
    assert table.locator("[data-col=symbol]").first.inner_text() == "SYM29USDT"
    assert table.locator("tbody tr").count() == 25
    page.click("[data-action=next-page]")
    page.wait_for_selector("text=Page 2 of 2")
    assert table.locator("[data-col=symbol]").all_inner_texts() == [f"SYM{i:02d}USDT" for i in range(4, -1, -1)]
    console.screenshot("scripts")
    page.click("thead input[type=checkbox]")  # the page's five
    page.click("[data-action=deactivate]")
    page.wait_for_selector("text=5 script(s) deactivated.")
    active = {s["trading_symbol"]: s["is_active"] for s in api(server, "GET", "/scripts").json()["scripts"]}
    assert [symbol for symbol, is_active in active.items() if not is_active] == symbols[:5]
    page.select_option("[data-filter=active]", "false")
    page.wait_for_selector("text=5 script(s)")
    assert table.locator("[data-col=active]").all_inner_texts() == ["no"] * 5


def test_ticks_appear_page_and_download_as_the_apis_csv(console: Console, server: LocalServer,
                                                        db: pymysql.Connection, tmp_path: Path) -> None:
    script_id = new_script(server, "ETHUSDT")
    store_ticks(db, recent_ticks(script_id, 120))
    page = console.page
    console.sign_in()
    console.open(f"#/ticks?script={script_id}")
    page.select_option("[data-filter=limit]", "50")
    ids = page.locator("table[data-table=ticks] [data-col=trade_id]")
    playwright_api.expect(ids.first).to_have_text("120")
    assert ids.all_inner_texts() == [str(i) for i in range(120, 70, -1)]
    console.screenshot("ticks")
    page.click("[data-action=older]")
    playwright_api.expect(ids.first).to_have_text("70")
    assert page.locator("text=Page 2 · newest first").count() == 1
    assert ids.all_inner_texts() == [str(i) for i in range(70, 20, -1)]
    page.click("[data-action=older]")
    playwright_api.expect(ids.first).to_have_text("20")
    assert ids.all_inner_texts() == [str(i) for i in range(20, 0, -1)]
    assert page.locator("[data-action=older]").is_disabled()
    page.click("[data-action=newer]")
    page.click("[data-action=newer]")
    store_ticks(db, recent_ticks(script_id, 5, first_id=121))  # new ticks arrive
    page.click("button:text('Refresh')")
    playwright_api.expect(ids.first).to_have_text("125")

    with page.expect_download() as download_info:
        page.click("[data-action=csv]")
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert download.suggested_filename == "ETHUSDT-aggTrades-start-end.csv"
    from_api = api(server, "GET", f"/scripts/{script_id}/ticks.csv").text
    assert saved.read_text() == from_api
    rows = list(csv.reader(io.StringIO(from_api)))
    assert rows[0][0] == "agg_trade_id" and [row[0] for row in rows[1:]] == [str(i) for i in range(1, 126)]
    page.wait_for_selector("text=125 rows")


def test_chart_draws_candles_and_volume(console: Console, server: LocalServer, db: pymysql.Connection) -> None:
    script_id = new_script(server, "BTCUSDT")
    store_ticks(db, recent_ticks(script_id, 3000, seconds_apart=1.0))  # ~50 one-minute bars
    page = console.page
    console.sign_in()
    console.open(f"#/chart?script={script_id}")
    page.wait_for_selector("[data-chart-summary]:text-matches('[0-9]+ bars, 3,000 trades')")
    page.wait_for_timeout(500)  # the chart paints on the next animation frame
    # Pixels in the candle colours (up #1a7f37, down #cf222e) on the chart's canvases: not blank.
    coloured = page.evaluate("""() => {
        let n = 0;
        for (const canvas of document.querySelectorAll('#chart canvas')) {
            const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
            for (let i = 0; i < data.length; i += 4) {
                const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
                if ((Math.abs(r - 26) < 30 && Math.abs(g - 127) < 30 && Math.abs(b - 55) < 30)
                    || (Math.abs(r - 207) < 30 && Math.abs(g - 34) < 30 && Math.abs(b - 46) < 30)) n += 1;
            }
        }
        return n;
    }""")
    assert coloured > 500, coloured
    console.screenshot("chart")
    page.select_option("[data-filter=interval]", "5m")
    page.wait_for_selector("[data-chart-summary]:text-matches('[0-9]+ bars, 3,000 trades')")


def test_overview_redrive_button_moves_the_dlq_back(console: Console, server: LocalServer, queues: dict[str, str],
                                                    db: pymysql.Connection, request: pytest.FixtureRequest) -> None:
    if not queues:
        pytest.skip("needs the LocalStack fixtures (tests/localstack_fixtures.py)")
    sqs = request.getfixturevalue("aws")("sqs")
    for i in range(3):
        sqs.send_message(QueueUrl=queues["TICKS_DLQ_URL"], MessageBody=f"dead letter {i}")
    for symbol in ("BTCUSDT", "ETHUSDT"):
        store_ticks(db, recent_ticks(new_script(server, symbol), 90))
    page = console.page
    console.sign_in()
    page.wait_for_selector("[data-queue='Dead-letter queue'] .big:text('3')")
    console.screenshot("overview")
    page.click("[data-action=redrive]")
    dialog = page.locator("[role=dialog]")
    dialog.wait_for()
    assert "3 message(s)" in dialog.inner_text()
    page.click("[role=dialog] button:text('Cancel')")  # nothing moves without the confirmation
    assert page.locator("[role=dialog]").count() == 0
    page.click("[data-action=redrive]")
    page.click("[role=dialog] [data-confirm]")
    page.wait_for_selector("text=3 moved, 0 failed")
    page.wait_for_selector("[data-queue='Dead-letter queue'] .big:text('0')")
    attributes = sqs.get_queue_attributes(QueueUrl=queues["TICKS_QUEUE_URL"],
                                          AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "3"



def seed_coverage(db: pymysql.Connection, script_id: int, day: date, first_id: int, last_id: int, stored: int) -> None:
    """A tick_coverage row and the script's totals as the ingest keeps them (the page reads only these and the
    ledger, not ticks)."""
    start = datetime.combine(day, datetime.min.time())
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id,"
                       " first_traded_at, last_traded_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                       (script_id, day, stored, first_id, last_id, start + timedelta(seconds=1),
                        start + timedelta(hours=23, minutes=59)))
    coverage.recount_totals(db, [script_id])


def seed_gap(db: pymysql.Connection, script_id: int, first_id: int, last_id: int, state: str, attempts: int,
             last_error: str | None) -> None:
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO gaps (script_id, first_trade_id, last_trade_id, next_trade_id, cause, state,"
                       " attempts, last_error, trades_filled) VALUES (%s, %s, %s, %s, 'reconnect', %s, %s, %s, %s)",
                       (script_id, first_id, last_id, first_id, state, attempts, last_error,
                        last_id - first_id + 1 if state == "filled" else 0))


def seed_status(db: pymysql.Connection, script_id: int, state: str, *, done: int | None = None,
                total: int | None = None, age_s: int = 0) -> None:
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO producer_status (script_id, broker_id, state, detail, backfill_done,"
                       " backfill_total, reported_at) SELECT id, broker_id, %s, %s, %s, %s,"
                       " UTC_TIMESTAMP(6) - INTERVAL %s SECOND FROM scripts WHERE id = %s",
                       (state, f"detail of {state}", done, total, age_s, script_id))


def test_coverage_page_shows_each_day_and_its_gaps_as_text(console: Console, server: LocalServer,
                                                           db: pymysql.Connection) -> None:
    script_id = new_script(server, "SOLUSDT")
    today = datetime.now(UTC).date()
    yesterday, old = today - timedelta(days=1), today - timedelta(days=40)
    seed_coverage(db, script_id, old, 1, 100, 100)  # outside the default 31 days
    seed_coverage(db, script_id, yesterday, 1001, 2000, 1000)
    seed_coverage(db, script_id, today, 2001, 3000, 950)  # 50 missing: 2101-2140 and 2501-2510
    seed_gap(db, script_id, 2101, 2140, "unrecoverable", 5, XSS_NAME)
    seed_gap(db, script_id, 2501, 2510, "filling", 2, None)
    seed_gap(db, script_id, 1500, 1509, "filled", 1, None)  # filled yesterday: shown, yet the day is complete
    page = console.page
    console.sign_in()
    console.go("scripts")
    page.click(f"tr[data-script='{script_id}'] a:text('Coverage')")
    page.wait_for_selector("header nav a.active[href='#/coverage']")
    table = page.locator("table[data-table=coverage]")
    table.locator(f"tr[data-day='{today}']").wait_for()
    summary = page.locator("[data-coverage-summary]").inner_text()
    assert summary == f"{today - timedelta(days=30)} to {today}: 2 day(s) with ticks, 1 incomplete, 50 trade(s)" \
        " missing."
    assert table.locator("tr[data-day]").evaluate_all("rows => rows.map(r => r.dataset.day)") == \
        [str(yesterday), str(today)]
    row = table.locator(f"tr[data-day='{today}']")
    cells = {col: row.locator(f"[data-col={col}]").inner_text()
             for col in ("complete", "stored", "expected", "missing", "first_trade_id", "last_trade_id")}
    assert cells == {"complete": "incomplete", "stored": "950", "expected": "1,000", "missing": "50",
                     "first_trade_id": "2001", "last_trade_id": "3000"}
    assert table.locator(f"tr[data-day='{yesterday}'] [data-col=complete]").inner_text() == "complete"
    gaps = page.locator("table[data-table=gaps] tr[data-gap]")
    assert [(g.locator("[data-col=state]").inner_text(), g.locator("[data-col=attempts]").inner_text(),
             g.locator("[data-col=last_error]").inner_text()) for g in gaps.all()] == [
        ("filled", "1", "–"), ("unrecoverable", "5", XSS_NAME), ("filling", "2", "–")]
    assert "2101" in gaps.nth(1).inner_text() and "2140" in gaps.nth(1).inner_text()
    assert page.locator("img").count() == 0  # the error text is text
    console.screenshot("coverage")
    page.fill("[data-filter=from]", str(old))
    page.wait_for_selector(f"tr[data-day='{old}']")
    assert "3 day(s) with ticks" in page.locator("[data-coverage-summary]").inner_text()


def test_overview_status_from_the_producer_and_missing_trades_per_symbol(console: Console, server: LocalServer,
                                                                        db: pymysql.Connection) -> None:
    today = datetime.now(UTC).date()
    ids = {symbol: new_script(server, symbol) for symbol in
           ("BTCUSDT", "NOPEUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT")}
    seed_status(db, ids["BTCUSDT"], "subscribed")
    seed_status(db, ids["NOPEUSDT"], "unknown_symbol")
    seed_status(db, ids["ETHUSDT"], "backfilling", done=250, total=1000)
    seed_status(db, ids["SOLUSDT"], "lagging")
    seed_status(db, ids["XRPUSDT"], "subscribed", age_s=600)  # the producer stopped reporting
    seed_coverage(db, ids["ETHUSDT"], today - timedelta(days=1), 1, 1000, 990)
    seed_coverage(db, ids["ETHUSDT"], today, 1001, 2000, 1000)
    page = console.page
    console.sign_in()
    table = page.locator("table[data-table=overview]")
    table.locator(f"tr[data-script='{ids['ADAUSDT']}']").wait_for()

    def cell(symbol: str, col: str) -> str:
        return table.locator(f"tr[data-script='{ids[symbol]}'] [data-col={col}]").inner_text()

    assert {symbol: cell(symbol, "status") for symbol in ids} == {
        "BTCUSDT": "subscribed", "NOPEUSDT": "unknown symbol", "ETHUSDT": "backfilling 250 / 1,000 (25%)",
        "SOLUSDT": "lagging", "XRPUSDT": "subscribed · reported 10 min ago",
        "ADAUSDT": "no ticks yet"}  # no producer status: what /stats tells
    assert (cell("ETHUSDT", "incomplete_days"), cell("ETHUSDT", "missing_trades"), cell("ETHUSDT", "stored")) == \
        ("1", "10", "1,990")
    assert (cell("BTCUSDT", "incomplete_days"), cell("BTCUSDT", "missing_trades")) == ("0", "0")
    page.click(f"tr[data-script='{ids['ETHUSDT']}'] a:text('Coverage')")
    page.wait_for_selector("[data-coverage-summary]:text-matches('1 incomplete, 10 trade')")


def test_delete_asks_for_the_purge_and_says_what_it_deleted(console: Console, server: LocalServer,
                                                            db: pymysql.Connection) -> None:
    script_id = new_script(server, "PEPEUSDT")
    store_ticks(db, recent_ticks(script_id, 10))
    page = console.page
    console.sign_in()
    console.go("scripts")
    page.click(f"tr[data-script='{script_id}'] button:text('Delete…')")
    assert "10 stored tick(s)" in page.locator("[role=dialog]").inner_text()
    page.click("[role=dialog] [data-confirm]")
    page.wait_for_selector("text=is active: deactivate it first")  # a purge runs only once collecting stopped
    console.expect_http_errors(409)
    api(server, "PATCH", f"/scripts/{script_id}", json={"is_active": False})
    console.go("scripts")
    page.click(f"tr[data-script='{script_id}'] button:text('Delete…')")
    page.click("[role=dialog] [data-confirm]")
    page.wait_for_selector("text=in the background (job")  # 202: the console follows the job
    with db.cursor() as cursor:
        cursor.execute("SELECT id FROM jobs WHERE script_id = %s", (script_id,))
        (job_id,) = cursor.fetchone()
    assert jobs.run_job(db, job_id).done  # what the maintenance function does with the jobs queue's message
    page.wait_for_selector("text=Script PEPEUSDT deleted with 10 tick(s).")

    doomed = new_script(server, "DOGEUSDT", broker_name="Doomed")  # a broker with a script that has ticks
    store_ticks(db, recent_ticks(doomed, 7))
    broker_id = api(server, "GET", f"/scripts/{doomed}").json()["broker_id"]
    console.go("brokers")
    page.click(f"tr[data-broker='{broker_id}'] button:text('Delete…')")
    assert "It has 1 script(s)" in page.locator("[role=dialog]").inner_text()
    page.click("[role=dialog] [data-confirm]")
    page.wait_for_selector("text=is active: deactivate it first")
    console.expect_http_errors(409)
    api(server, "PATCH", f"/brokers/{broker_id}", json={"is_active": False})
    console.go("brokers")
    page.click(f"tr[data-broker='{broker_id}'] button:text('Delete…')")
    page.click("[role=dialog] [data-confirm]")
    page.wait_for_selector("text=in the background (job")  # 202: the console follows the broker's job too
    with db.cursor() as cursor:
        cursor.execute("SELECT id FROM jobs WHERE broker_id = %s", (broker_id,))
        (job_id,) = cursor.fetchone()
    assert jobs.run_job(db, job_id).done
    page.wait_for_selector("text=Broker “Doomed” deleted with 1 script(s) and 7 tick(s).")
    assert doomed not in [s["id"] for s in api(server, "GET", "/scripts").json()["scripts"]]

    console.go("brokers")
    page.click("table[data-table=brokers] button:text('Delete…')")
    assert "no scripts" in page.locator("[role=dialog]").inner_text()
    page.click("[role=dialog] [data-confirm]")
    page.wait_for_selector("text=deleted with 0 script(s) and 0 tick(s)")
    assert api(server, "GET", "/brokers").json()["brokers"] == []


@pytest.mark.localstack
def test_console_works_behind_api_gateway_under_its_stage_prefix(browser: Any, request: pytest.FixtureRequest,
                                                                 db: pymysql.Connection) -> None:
    """The template deployed on LocalStack: the page, its files and its data calls all under
    /_aws/execute-api/<id>/api/, through API Gateway and the packaged function (sam build), as on AWS."""
    try:
        localstack = request.getfixturevalue("localstack")
        stack = request.getfixturevalue("tickstream_stack")
    except pytest.FixtureLookupError:
        pytest.skip("needs the LocalStack fixtures (tests/localstack_fixtures.py)")
    from tests.localstack_fixtures import TEST_API_TOKEN

    base = f"{localstack.endpoint_url}/_aws/execute-api/{stack['ApiId']}/api"
    created = requests.post(f"{base}/brokers", json={"name": "via API Gateway"}, timeout=30,
                            headers={"Authorization": f"Bearer {TEST_API_TOKEN}"})
    assert created.status_code == 201, created.text
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = Console(context.new_page(), base)
    page.page.set_default_timeout(60_000)  # every file is a function invocation through the emulator
    try:
        page.sign_in(TEST_API_TOKEN)
        page.go("brokers")
        page.page.wait_for_selector("table[data-table=brokers] [data-col=name]:text('via API Gateway')")
        assert page.page.evaluate("document.styleSheets.length") == 1  # console/style.css under the prefix
    finally:
        errors = page.errors
        context.close()
    assert errors == [], errors
