"""Named points where tests inject faults: a lost acknowledgement, a crash, a pause.

Production never installs a hook, so a point costs one dictionary lookup. A test installs
one with `injected(name, hook)`; the hook gets the point's context as keyword arguments
and may raise (a fault), block (a pause) or record. Every point is listed in `POINTS`,
and `docs/testing.md` says what each is for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Hook = Callable[..., None]

POINTS = {
    "cycle.committed": "a scheduler pass's transaction (outcomes and claims) has committed; "
    "raising here is an acknowledgement lost after the commit",
    "requeue.before_write": "an attempt is about to be put back to QUEUED (shutdown, or a "
    "claim whose acknowledgement was lost)",
    "prune.chunk": "a prune chunk has chosen its rows and holds them, before deleting",
    "prune.chunk_committed": "a prune chunk has committed; the next one has not begun",
    "schedule.firing": "a firing's tasks are stored; the schedule is not yet moved on",
    "thread.started": "a handler thread has started, before the handler is called",
    "heartbeat.before_write": "an instance is about to prove itself alive",
    "notify.announce": "a transaction announces ready work (a NOTIFY sent at its commit)",
    "database.commit": "a write transaction is about to commit; the hook gets the "
    "`transaction` and may commit it itself before raising: a connection lost with the "
    "COMMIT in flight",
}

_hooks: dict[str, Hook] = {}


def point(name: str, **context: Any) -> None:
    """Run the hook installed at `name`, if any."""
    hook = _hooks.get(name)
    if hook is not None:
        hook(**context)


@contextmanager
def injected(name: str, hook: Hook) -> Iterator[None]:
    """Install `hook` at the point `name` for the duration of the block."""
    if name not in POINTS:
        raise KeyError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
    previous = _hooks.get(name)
    _hooks[name] = hook
    try:
        yield
    finally:
        if previous is None:
            _hooks.pop(name, None)
        else:
            _hooks[name] = previous
