"""The heartbeat: proof that this instance lives, and whether it may judge others' silence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from app.runtime.metrics import Metrics
from app.storage.store import Store


class Contact:
    """Whether this instance has been in touch with the database long enough to judge.

    Another instance's silence proves its death only if it could have spoken. While the
    database is down (restarting, unreachable, out of connections) every heartbeat fails,
    the live ones included: the silence is everyone's. So an instance takes another's
    silence for a death only once its own heartbeats have gone through, without a failure
    and without a gap (this process paused), for a whole lease, its own and the silent
    one's, counted from its start: a process started as the database came back has seen
    no one's heartbeats yet. (An instance of this host whose process has exited needs no
    such wait.)
    """

    def __init__(self, clock: Callable[[], float], lease_s: float) -> None:
        self.clock = clock
        self.lease_s = lease_s
        # Heartbeats come every lease/3: a gap of two periods means this process stalled
        # (or was paused), not that one heartbeat was slow.
        self.gap_s = 2 * lease_s / 3
        self._since: float | None = None
        self._last_ok = clock()

    def reached(self) -> None:
        """Note a write that went through (a heartbeat, a registration)."""
        now = self.clock()
        if self._since is None or now - self._last_ok > self.gap_s:
            self._since = now  # back after a failure, or after a pause of this process
        self._last_ok = now

    def lost(self) -> None:
        """Note a heartbeat (or registration) the database did not take."""
        self._since = None

    def in_touch_s(self) -> float:
        """Return how long this instance has been in touch without a failure or a gap (0
        when it is not): it may take the silence of an instance whose lease is at most
        that long for a death."""
        now = self.clock()
        if self._since is None or now - self._last_ok > self.gap_s:
            return 0.0
        return now - self._since


class Heartbeat:
    """Proves the instance alive; tells the scheduler when it was declared dead."""

    def __init__(
        self,
        store: Store,
        contact: Contact,
        metrics: Metrics,
        me: Callable[[], str | None],
        declared_dead: Callable[[str], None],
    ) -> None:
        self.store = store
        self.contact = contact
        self.metrics = metrics
        self.me = me
        # Told when the database no longer knows this instance: another declared it dead.
        self.declared_dead = declared_dead

    def run_once(self, now: datetime | None = None) -> bool:
        """Heartbeat once; False when the instance's identity is gone (declared dead)."""
        instance = self.me()
        if instance is None:
            return False
        try:
            alive = self.store.heartbeat(instance, now)
        except Exception:
            self.contact.lost()
            raise
        if alive:
            self.contact.reached()
            self.metrics.heartbeat()
        else:
            self.declared_dead(instance)
        return alive
