"""Task types for the benchmarks: `TASK_HANDLERS=bench.noop_handlers`.

The built-in `simulate` handler sleeps `duration_ms` (at least 1 ms, the API's minimum);
`noop` returns at once, so a run measures the scheduler, not a sleep. `stamp` returns the
moment its handler was called, so a lag can be measured to the real start of the work and
not only to the `started_at` the claim recorded.
"""

from __future__ import annotations

import time

from app.handlers import Registry, TaskContext

NOOP = "noop"
STAMP = "stamp"


def register(registry: Registry) -> None:
    """Register the `noop` and `stamp` types."""
    registry.register(NOOP, noop)
    registry.register(STAMP, stamp)


def noop(ctx: TaskContext) -> None:
    """Do nothing and succeed."""
    return None


def stamp(ctx: TaskContext) -> dict[str, float]:
    """Return when the handler was called, in seconds since the epoch."""
    return {"called_at": time.time()}
