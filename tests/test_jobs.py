"""Background purge and retention (tickstream.jobs) against real MariaDB: chunked, exact, restartable after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import jobs, time_index
from tickstream.settings import DatabaseSettings

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)


def add_ticks(conn: pymysql.Connection, script_id: int, first_id: int, count: int, start: datetime,
              interval_us: int) -> None:
    """`count` ticks with ids first_id.. and trade times start + i × interval, made by the server."""
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at,"
            " received_at_producer) SELECT %s, %s + seq, 1.5, 2, seq MOD 2, t, t, t FROM"
            f" (SELECT seq, %s + INTERVAL (seq * %s) MICROSECOND AS t FROM seq_0_to_{count - 1}) s",
            (script_id, first_id, start.replace(tzinfo=None), interval_us))
        time_index.index_id_range(cursor, script_id, first_id, first_id + count - 1)  # as the ingest would


def scalar(conn: pymysql.Connection, sql: str, args: tuple = ()) -> object:
    with conn.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchone()[0]


def inactive_script(conn: pymysql.Connection, broker_id: int, symbol: str) -> int:
    script_id = make_script(conn, broker_id, symbol)
    with conn.cursor() as cursor:
        cursor.execute("UPDATE scripts SET is_active = FALSE WHERE id = %s", (script_id,))
    return script_id


def inactive_broker(conn: pymysql.Connection, name: str) -> int:
    broker_id = make_broker(conn, name)
    with conn.cursor() as cursor:
        cursor.execute("UPDATE brokers SET is_active = FALSE WHERE id = %s", (broker_id,))
    return broker_id


def add_side_rows(conn: pymysql.Connection, script_id: int, day: date, state: str = "filled",
                  finished: datetime = NOW) -> None:
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id,"
                       " first_traded_at, last_traded_at) VALUES (%s, %s, 1, 1, 1, %s, %s)",
                       (script_id, day, day, day))
        cursor.execute("INSERT IGNORE INTO tick_lags (script_id, bucket_us, minute, in_minute) VALUES (%s, 1000, 0, 1)",
                       (script_id,))
        cursor.execute("INSERT INTO gaps (script_id, first_trade_id, last_trade_id, next_trade_id, cause, state,"
                       " filled_at, updated_at) VALUES (%s, %s, %s, %s, 'audit', %s, %s, %s)",
                       (script_id, hash(day) % 10**9, 1, 1, state, finished.replace(tzinfo=None),
                        finished.replace(tzinfo=None)))


# --- purge ---------------------------------------------------------------------------------------------------

def test_purge_deletes_the_script_and_its_rows_in_chunks_and_nothing_else(db: pymysql.Connection) -> None:
    broker = make_broker(db)
    doomed, kept = inactive_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    add_ticks(db, doomed, 1, 25_000, NOW, 1000)
    add_ticks(db, kept, 1, 3_000, NOW, 1000)
    add_side_rows(db, doomed, NOW.date())
    add_side_rows(db, kept, NOW.date())
    job = jobs.create_purge_job(db, doomed)
    assert (job.kind, job.state, job.script_id) == ("purge_script", "queued", doomed)
    assert jobs.create_purge_job(db, doomed).id == job.id  # asked twice: the same job

    result = jobs.run_job(db, job.id, chunk_rows=1_000)
    assert (result.done, result.rows_deleted) == (True, 25_000)
    done = jobs.get_job(db, job.id)
    assert (done.state, done.rows_deleted, done.finished_at is not None) == ("done", 25_000, True)
    for table, column in (("ticks", "script_id"), ("tick_coverage", "script_id"), ("tick_lags", "script_id"),
                          ("gaps", "script_id"), ("scripts", "id")):
        assert scalar(db, f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", (doomed,)) == 0
        assert scalar(db, f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", (kept,)) > 0
    assert scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (kept,)) == 3_000


def test_purge_of_an_active_script_is_refused(db: pymysql.Connection) -> None:
    script_id = make_script(db, make_broker(db), "BTCUSDT")
    add_ticks(db, script_id, 1, 10, NOW, 1000)
    with pytest.raises(jobs.NotInactive):
        jobs.create_purge_job(db, script_id)
    assert scalar(db, "SELECT COUNT(*) FROM jobs") == 0
    assert jobs.create_purge_job(db, 987_654) is None


def test_purge_sweeps_ticks_stored_below_the_cursor_meanwhile(db: pymysql.Connection) -> None:
    """A tick in flight when the script was deactivated may land below the cursor: the purge still gets it."""
    script_id = inactive_script(db, make_broker(db), "BTCUSDT")
    add_ticks(db, script_id, 1_000, 5_000, NOW, 1000)
    job = jobs.create_purge_job(db, script_id)
    jobs.run_job(db, job.id, chunk_rows=1_000, should_stop=iter([False, False, True]).__next__)
    assert jobs.get_job(db, job.id).cursor_trade_id == 3_000
    add_ticks(db, script_id, 10, 5, NOW, 1000)  # late arrivals, ids far below the cursor
    assert jobs.run_job(db, job.id, chunk_rows=1_000).done
    assert scalar(db, "SELECT COUNT(*) FROM ticks") == 0
    assert jobs.get_job(db, job.id).rows_deleted == 5_005


def test_broker_purge_deletes_its_scripts_one_after_another_then_the_broker(db: pymysql.Connection) -> None:
    doomed, kept = inactive_broker(db, "doomed"), make_broker(db, "kept")
    # The scripts stay active: an inactive broker is what stops the producer collecting them.
    scripts = [make_script(db, doomed, symbol) for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    other = make_script(db, kept, "BTCUSDT")
    for number, script_id in enumerate(scripts[:2]):  # the third has no ticks, only coverage and a gap
        add_ticks(db, script_id, 1, 2_500 * (number + 1), NOW, 1000)
    add_ticks(db, other, 1, 3_000, NOW, 1000)
    for script_id in (*scripts, other):
        add_side_rows(db, script_id, NOW.date())
    job = jobs.create_broker_purge_job(db, doomed)
    assert (job.kind, job.state, job.broker_id, job.script_id) == ("purge_broker", "queued", doomed, None)
    assert jobs.create_broker_purge_job(db, doomed).id == job.id  # asked twice: the same job

    on: list[int | None] = []  # the script the job is on, before each chunk

    def watch() -> bool:
        on.append(jobs.get_job(db, job.id).script_id)
        return False

    result = jobs.run_job(db, job.id, chunk_rows=1_000, should_stop=watch)
    assert (result.done, result.rows_deleted) == (True, 7_500)
    assert [script_id for script_id in dict.fromkeys(on) if script_id is not None] == scripts  # one after another
    done = jobs.get_job(db, job.id)
    assert (done.state, done.rows_deleted, done.broker_id) == ("done", 7_500, doomed)
    for table, column in (("ticks", "script_id"), ("tick_coverage", "script_id"), ("gaps", "script_id")):
        assert scalar(db, f"SELECT COUNT(*) FROM {table} WHERE {column} IN %s", (scripts,)) == 0
        assert scalar(db, f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", (other,)) > 0
    assert scalar(db, "SELECT COUNT(*) FROM scripts WHERE broker_id = %s", (doomed,)) == 0
    assert scalar(db, "SELECT COUNT(*) FROM brokers WHERE id = %s", (doomed,)) == 0
    assert scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (other,)) == 3_000


def test_broker_purge_of_an_active_broker_is_refused(db: pymysql.Connection) -> None:
    broker_id = make_broker(db)
    make_script(db, broker_id, "BTCUSDT")
    with pytest.raises(jobs.NotInactive):
        jobs.create_broker_purge_job(db, broker_id)
    assert scalar(db, "SELECT COUNT(*) FROM jobs") == 0
    assert jobs.create_broker_purge_job(db, 987_654) is None


_WORKER = textwrap.dedent("""
    import sys, time
    from tickstream import jobs, time_index
    from tickstream.db import connect
    from tickstream.settings import DatabaseSettings
    db = DatabaseSettings(*sys.argv[1:6])
    conn = connect(DatabaseSettings(db.host, int(db.port), db.user, db.password, db.name), autocommit=True)
    def slow() -> bool:
        time.sleep(0.02)
        return False
    jobs.run_job(conn, int(sys.argv[6]), chunk_rows=500, should_stop=slow)
""")


@pytest.mark.parametrize("kind", ["script", "broker"])
def test_purge_killed_mid_way_resumes_from_its_cursor(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                      kind: str) -> None:
    """A script's purge, or a broker's (two scripts of 30,000 ticks: the kill lands in the first, the resumed run
    goes on into the second)."""
    if kind == "script":
        script_id = inactive_script(db, make_broker(db), "BTCUSDT")
        add_ticks(db, script_id, 1, 60_000, NOW, 1000)
        job = jobs.create_purge_job(db, script_id)
    else:
        broker_id = inactive_broker(db, "doomed")
        script_id, second = make_script(db, broker_id, "BTCUSDT"), make_script(db, broker_id, "ETHUSDT")
        add_ticks(db, script_id, 1, 30_000, NOW, 1000)
        add_ticks(db, second, 1, 30_000, NOW, 1000)
        job = jobs.create_broker_purge_job(db, broker_id)
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, db_settings.host, str(db_settings.port),
                               db_settings.user, db_settings.password, db_settings.name, str(job.id)],
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 60
    while (jobs.get_job(db, job.id).rows_deleted < 5_000) and time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed"
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    killed = jobs.get_job(db, job.id)
    left = scalar(db, "SELECT COUNT(*) FROM ticks")
    assert killed.state == "running" and 5_000 <= killed.rows_deleted < 30_000 and killed.script_id == script_id
    assert left == 60_000 - killed.rows_deleted  # what the job says it deleted is exactly what is gone …
    assert scalar(db, "SELECT MIN(trade_id) FROM ticks WHERE script_id = %s", (script_id,)) == \
        killed.cursor_trade_id  # … and it is everything below the cursor

    assert jobs.run_job(db, job.id, chunk_rows=500).done
    finished = jobs.get_job(db, job.id)
    assert (finished.state, finished.rows_deleted) == ("done", 60_000)
    assert scalar(db, "SELECT COUNT(*) FROM ticks") == 0
    assert scalar(db, "SELECT COUNT(*) FROM scripts") == 0
    assert scalar(db, "SELECT COUNT(*) FROM brokers") == (0 if kind == "broker" else 1)


# --- retention -----------------------------------------------------------------------------------------------

def test_retention_removes_exactly_the_days_older_than_the_window(db: pymysql.Connection) -> None:
    broker = make_broker(db)
    scripts = [make_script(db, broker, symbol) for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    first_day = NOW.date() - timedelta(days=4)
    for number, script_id in enumerate(scripts):
        # Five days of ticks, one every 8.64 s × (number + 1): ids contiguous across midnights.
        per_day = 10_000 // (number + 1)
        start = datetime.combine(first_day, datetime.min.time(), UTC)
        add_ticks(db, script_id, 100, per_day * 5, start, 86_400_000_000 // per_day)
        for offset in range(5):
            add_side_rows(db, script_id, first_day + timedelta(days=offset),
                          finished=start + timedelta(days=offset, hours=1))
    with db.cursor() as cursor:  # an old gap still being worked on is kept, whatever its age
        cursor.execute("UPDATE gaps SET state = 'pending', filled_at = NULL WHERE script_id = %s"
                       " AND filled_at < %s", (scripts[0], (start + timedelta(days=1)).replace(tzinfo=None)))
    cutoff = jobs.retention_cutoff(3, NOW)
    assert cutoff == datetime.combine(NOW.date() - timedelta(days=2), datetime.min.time(), UTC)
    expected = {s: scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s AND traded_at >= %s",
                          (s, cutoff.replace(tzinfo=None))) for s in scripts}
    doomed = scalar(db, "SELECT COUNT(*) FROM ticks") - sum(expected.values())
    assert doomed > 0 and all(expected.values())

    result = jobs.run_retention(db, 3, now=NOW, chunk_rows=700)
    assert result.done
    for script_id in scripts:
        assert scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (script_id,)) == expected[script_id]
        assert scalar(db, "SELECT MIN(day) FROM tick_coverage WHERE script_id = %s", (script_id,)) == cutoff.date()
        assert scalar(db, "SELECT COUNT(*) FROM tick_coverage WHERE script_id = %s", (script_id,)) == 3
    assert scalar(db, "SELECT COUNT(*) FROM gaps WHERE state = 'filled'") == 3 * 3
    assert scalar(db, "SELECT COUNT(*) FROM gaps WHERE state = 'pending'") == 1
    job = jobs.get_job(db, result.job_id)
    assert (job.kind, job.state, job.rows_deleted) == ("retention", "done", doomed)


def test_retention_stopped_mid_way_resumes_with_the_same_window(db: pymysql.Connection) -> None:
    broker = make_broker(db)
    scripts = [make_script(db, broker, symbol) for symbol in ("BTCUSDT", "ETHUSDT")]
    start = datetime.combine(NOW.date() - timedelta(days=3), datetime.min.time(), UTC)
    for script_id in scripts:
        add_ticks(db, script_id, 1, 4 * 2_000, start, 86_400_000_000 // 2_000)
    stops = iter([False] * 3 + [True])
    first = jobs.run_retention(db, 2, now=NOW, chunk_rows=1_000, should_stop=stops.__next__)
    assert not first.done and first.rows_deleted == 3_000
    # Resumed a day later: the job keeps the window it was created with (one more day is not swept now).
    second = jobs.run_retention(db, 2, now=NOW + timedelta(days=1), chunk_rows=1_000)
    assert second.done and second.job_id == first.job_id
    for script_id in scripts:
        assert scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (script_id,)) == 2 * 2_000
    assert jobs.get_job(db, first.job_id).rows_deleted == 2 * 2 * 2_000
    # The next run is a new job with the later window.
    third = jobs.run_retention(db, 2, now=NOW + timedelta(days=1), chunk_rows=1_000)
    assert third.done and third.job_id != first.job_id and third.rows_deleted == 2 * 2_000


def test_retention_days_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from tickstream.settings import load_settings

    for value, expected in (("", None), ("0", None), ("30", 30)):
        monkeypatch.setenv("TICK_RETENTION_DAYS", value)
        assert load_settings.__wrapped__().tick_retention_days == expected
    for bad in ("-1", "thirty", "1.5"):
        monkeypatch.setenv("TICK_RETENTION_DAYS", bad)
        with pytest.raises(ValueError, match="TICK_RETENTION_DAYS"):
            load_settings.__wrapped__()
