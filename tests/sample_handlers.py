"""A handler module for the tests: `TASK_HANDLERS=tests.sample_handlers`."""

from __future__ import annotations

from app.handlers import Registry, TaskContext


def double(ctx: TaskContext) -> dict[str, int]:
    """Return twice `payload.n`."""
    return {"n": 2 * int(ctx.payload.get("n", 0))}


def register(registry: Registry) -> None:
    """Register the `double` type."""
    registry.register("double", double)
