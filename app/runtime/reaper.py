"""The reaper: ends the attempts that dead instances left running."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from app.runtime import identity
from app.runtime.metrics import Metrics
from app.storage import dbfaults
from app.storage.store import Store

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.maintenance")


class Reaper:
    """Ends the attempts of dead instances, each as an interrupted attempt."""

    def __init__(
        self,
        store: Store,
        lease_s: float,
        host: str,
        me: Callable[[], str | None],
        metrics: Metrics,
        wake: Callable[[], None] | None = None,
        in_touch: Callable[[], float] = lambda: float("inf"),
        lost: Callable[[], None] = lambda: None,
        beat: Callable[[], object] | None = None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.host = host
        self.me = me
        self.metrics = metrics
        # Wakes this instance's loop: what it recovered may be ready now. (Other
        # instances hear of it through the recovery's NOTIFY, on PostgreSQL.)
        self.wake = wake
        # How long this instance has been in touch with the database (see Contact): the
        # silence of an instance may be judged once that is a lease, its own and the
        # other's. An exited process always may.
        self.in_touch = in_touch
        # Told when this reaper's own reads or writes fail: out of touch, as a failed
        # heartbeat says. A long lease heartbeats seldom, and an outage can begin and end
        # between two of its heartbeats while the others' fail: its reaper notices.
        self.lost = lost
        # This instance's heartbeat, run by the first run after a failed one: the touch
        # lost then is regained at once, not at the next heartbeat (a lease/3 later), so
        # that the lease in touch a judgement needs starts as the database comes back.
        self.beat = beat
        self._out_of_touch = False
        # How often it runs, and when its last run ended: a run that comes long after it
        # (this process stalled) may have missed an outage whole, as a heartbeat's gap may.
        self.every_s = every_s
        self.clock = clock
        self._idle_since: float | None = None
        self._shortest_lease = lease_s  # of the instances it saw last

    def run_once(self, now: datetime | None = None) -> int:
        """Recover what every dead instance left; return how many attempts were ended."""
        if self._idle_since is not None and self.clock() - self._idle_since > self._unwatched_s():
            # An outage may have come and gone meanwhile, unseen, and the silence it
            # caused be taken for deaths: out of touch, as after a failure.
            self._out_of_touch = True
            self.lost()
        try:
            if self._out_of_touch and self.beat is not None:
                self.beat()  # raises as the heartbeat does while the database is out
            self._out_of_touch = False
            return self._run(now)
        except Exception as exc:
            if dbfaults.from_database(exc):
                self._out_of_touch = True
                self.lost()
            raise
        finally:
            self._idle_since = self.clock()

    def _unwatched_s(self) -> float:
        """The longest this reaper may go without running and still vouch for what it did
        not see: a third of the shortest lease it judges (an outage that long already
        costs a silent instance a heartbeat), or two of its own intervals if those are
        longer, for it must judge at all."""
        return max(self._shortest_lease / 3, 2 * self.every_s)

    def _run(self, now: datetime | None) -> int:
        at = now or self.store.database_now()
        in_touch = self.in_touch()
        recovered = 0
        others = self.store.instances()
        self._shortest_lease = min([self.lease_s, *(o.lease_s or self.lease_s for o in others)])
        for other in others:
            death = self._death(other, at, in_touch)
            if death is not None:
                reason, fence = death
                reaped = self.store.reap(other.id, reason, now=now, **fence)
                recovered += self._count(reaped, other.id, reason)
        for worker in self.store.orphan_workers():
            if worker == self.me():
                continue  # declared dead a moment ago: the heartbeat will say so
            reason = f"scheduler {worker} is no longer registered"
            recovered += self._count(self.store.reap(worker, reason, now=now), worker, reason)
        if recovered and self.wake is not None:
            self.wake()
        return recovered

    def _count(self, reaped: list[str], worker: str, reason: str) -> int:
        self.metrics.recovered(len(reaped))
        if reaped:
            log.warning("recovered %d task(s) of %s: %s", len(reaped), worker, reason)
        return len(reaped)

    def _death(
        self, other: Any, at: datetime, in_touch: float
    ) -> tuple[str, dict[str, Any]] | None:
        """Say why `other` is dead, and the heartbeat it must still be behind, if it is.

        Silence is judged by `other`'s own lease: it heartbeats every third of it (an
        instance registered before its lease was stored, by this one's).
        """
        if other.id == self.me():
            return None
        lease_s = other.lease_s or self.lease_s
        judge_silence = in_touch >= max(lease_s, self.lease_s)
        silent = f"scheduler {other.id} stopped heartbeating for over {lease_s:g} s"
        if other.hostname == self.host:
            if not identity.is_alive(other.pid, other.process_start):
                return f"scheduler {other.id} (pid {other.pid}) exited while running it", {}
            if not judge_silence:
                return None
            if other.heartbeat_monotonic is not None:
                # A live process of this host (this boot): judged on the monotonic clock
                # both share, which no step of the wall clock (NTP, a VM resumed) moves.
                limit = self.store.monotonic() - lease_s
                if other.heartbeat_monotonic < limit:
                    return silent, {"stale_monotonic_before": limit}
                return None
        stale = at - timedelta(seconds=lease_s)
        if judge_silence and other.heartbeat_at < stale:
            return silent, {"stale_before": stale}
        return None
