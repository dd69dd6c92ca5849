"""A handler module for the tests: `TASK_HANDLERS=tests.support.sample_handlers`."""

from __future__ import annotations

import time

from app.handlers import Registry, TaskContext


def double(ctx: TaskContext) -> dict[str, int]:
    """Return twice `payload.n`."""
    return {"n": 2 * int(ctx.payload.get("n", 0))}


def stubborn(ctx: TaskContext) -> None:
    """Sleep `duration_ms` whatever happens: a handler that ignores its cancel event."""
    time.sleep(ctx.duration_ms / 1000)


def register(registry: Registry) -> None:
    """Register the `double` and `stubborn` types."""
    registry.register("double", double)
    registry.register("stubborn", stubborn)
