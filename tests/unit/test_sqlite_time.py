"""The text a time is stored as on SQLite, made once per moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from app.storage.database import sqlite_time


def test_a_time_is_written_with_four_digit_years_and_microseconds() -> None:
    assert sqlite_time(datetime(999, 1, 2, 3, 4, 5)) == "0999-01-02 03:04:05.000000"
    assert sqlite_time(datetime(2026, 12, 5, 19, 0, 1, 7)) == "2026-12-05 19:00:01.000007"


def test_equal_moments_in_two_zones_keep_their_own_text() -> None:
    # Equal as datetimes, so a cache keyed by the value alone would answer the first
    # one's text for the second; only naive times are cached.
    utc = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    paris = datetime(2026, 1, 1, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    assert utc == paris
    assert sqlite_time(utc) == "2026-01-01 10:00:00.000000"
    assert sqlite_time(paris) == "2026-01-01 11:00:00.000000"
    assert sqlite_time(datetime(2026, 1, 1, 10, 0)) == "2026-01-01 10:00:00.000000"
