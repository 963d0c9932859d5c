"""tickstream.db reads DATETIME values with the C parser: the same values pymysql's own converter gives."""

from __future__ import annotations

from datetime import datetime

import pymysql
import pymysql.converters


def test_datetimes_read_as_pymysql_reads_them(db: pymysql.Connection) -> None:
    texts = ["2026-12-02 07:33:15.624306", "2026-12-02 07:33:15", "1970-01-01 00:00:00.000001",
             "9999-12-31 23:59:59.999999"]
    with db.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(["CAST(%s AS DATETIME(6))"] * len(texts)) + ", CAST(%s AS DATETIME),"
                       " CAST(%s AS DATETIME(3))", [*texts, texts[1], "2026-12-02 07:33:15.5"])
        values = cursor.fetchone()
        cursor.execute("SET SESSION sql_mode = ''")
        cursor.execute("SELECT TIMESTAMP'0000-00-00 00:00:00'")  # a zero date: pymysql's answer, a string
        (zero,) = cursor.fetchone()
    assert list(values) == [pymysql.converters.convert_datetime(text) for text in texts] + [
        datetime(2026, 12, 2, 7, 33, 15), datetime(2026, 12, 2, 7, 33, 15, 500000)]
    assert zero == pymysql.converters.convert_datetime("0000-00-00 00:00:00") == "0000-00-00 00:00:00"
