"""When a schedule fires: instants after and before a moment, across clock changes."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from app.errors import ValidationFailed
from app.services.schedules import Timing, parse_new

ANCHOR = datetime(2026, 1, 1)


def cron(expression: str, zone: str) -> Timing:
    return Timing(expression, None, zone, ANCHOR)


@pytest.mark.parametrize(
    ("zone", "expression", "repeated_hour_utc"),
    [
        # 2026-10-25: Paris goes from 03:00 CEST back to 02:00 CET; 02:xx happens twice.
        ("Europe/Paris", "15 2 * * *", datetime(2026, 10, 25, 0, 0)),
        # 2026-11-01: New York goes from 02:00 EDT back to 01:00 EST; 01:xx happens twice.
        ("America/New_York", "30 1 * * *", datetime(2026, 11, 1, 5, 0)),
    ],
)
def test_in_the_repeated_hour_next_is_ahead_and_last_is_behind(
    zone: str, expression: str, repeated_hour_utc: datetime
) -> None:
    timing = cron(expression, zone)
    # Every minute through the two passes of the repeated hour, and around them.
    for minutes in range(-90, 210):
        moment = repeated_hour_utc + timedelta(minutes=minutes)
        following = timing.after(moment)
        assert following > moment, (moment, following)
        assert following - moment <= timedelta(days=1, hours=1), (moment, following)
        latest = timing.latest(moment)
        assert latest is not None and latest <= moment, (moment, latest)
        assert moment - latest <= timedelta(days=1, hours=1), (moment, latest)
        # Nothing lies between the last match and the next one.
        assert timing.after(latest) == following, moment


def test_a_day_with_a_repeated_hour_fires_once_and_the_next_day_at_the_same_local_time() -> None:
    timing = cron("15 2 * * *", "Europe/Paris")
    fired = timing.upcoming(timing.after(datetime(2026, 10, 24)), 3)
    assert fired == [
        datetime(2026, 10, 24, 0, 15),  # 02:15 CEST
        datetime(2026, 10, 25, 0, 15),  # 02:15 CEST, the first pass
        datetime(2026, 10, 26, 1, 15),  # 02:15 CET
    ]


def test_a_skipped_hour_fires_once_after_the_jump() -> None:
    # 2026-03-29: Paris jumps from 02:00 to 03:00; 02:30 does not exist that day.
    timing = cron("30 2 * * *", "Europe/Paris")
    fired = timing.upcoming(timing.after(datetime(2026, 3, 28)), 3)
    assert fired == [
        datetime(2026, 3, 28, 1, 30),  # 02:30 CET
        datetime(2026, 3, 29, 1, 0),  # 03:00 CEST, as cronsim reads a missing time
        datetime(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


@pytest.mark.parametrize("expression", ["0 0 */20 * 1L", "0 0 */40 * MON#2"])
def test_a_cron_expression_that_never_matches_is_refused(expression: str) -> None:
    body = {"id": "never", "cron": expression, "task": {"type": "t", "duration_ms": 1}}
    with pytest.raises(ValidationFailed) as refused:
        parse_new(body)
    assert refused.value.details == {"cron": "This cron expression never matches a date."}
