"""The firer: fires the schedules that are due, on a thread of its own beside the loop.

Every instance runs one; the database decides which of them fires each instant (the
fence in storage/schedules.advance), so running several never fires an instant twice.
The firing itself (what is due, what catch-up and overlap allow, the tasks it stores) is
the service's (services/schedules.fire_due); this job calls it, logs and counts what it
did, and wakes the scheduler when it created tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from app.runtime.metrics import Metrics

if TYPE_CHECKING:
    from app.services.schedules import Fired

# Named as the other state changes' logger, so that one filter shows them all.
log = logging.getLogger("app.schedules")

# How often each instance looks for due schedules: instants are whole seconds.
FIRE_EVERY_S = 1.0


class Firer:
    """Fires what is due, once per call."""

    def __init__(
        self,
        fire: Callable[[datetime | None], Fired],
        metrics: Metrics,
        wake: Callable[[], None],
    ) -> None:
        self.fire = fire
        self.metrics = metrics
        self.wake = wake

    def run_once(self, now: datetime | None = None) -> Fired:
        """Fire the schedules due at `now` (None: the database's time)."""
        report = self.fire(now)
        for schedule_id, instant, created in report.fired:
            log.info("schedule %s fired at %s: %d task(s)", schedule_id, _at(instant), created)
        for schedule_id, instant in report.skipped:
            log.info(
                "schedule %s skipped %s: its previous firing is unfinished (overlap: skip)",
                schedule_id,
                _at(instant),
            )
        for schedule_id, count in report.missed:
            log.warning("schedule %s missed %d firing(s) (catch_up)", schedule_id, count)
        for schedule_id, instant, code in report.failed:
            log.warning(
                "schedule %s could not fire at %s: %s; it fires again at its next instant",
                schedule_id,
                _at(instant),
                code,
            )
        self.metrics.schedule_firings(
            len(report.fired),
            len(report.skipped),
            sum(n for _, n in report.missed),
            len(report.failed),
        )
        if report.created:
            self.wake()
        return report


def _at(instant: datetime) -> str:
    return instant.isoformat() + "Z"
