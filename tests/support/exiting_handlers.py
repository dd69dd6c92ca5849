"""A handler module for the tests whose `quits` type calls sys.exit() in its attempt's
thread: `TASK_HANDLERS=tests.support.exiting_handlers`."""

from __future__ import annotations

import sys

from app.handlers import Registry, TaskContext


def quits(ctx: TaskContext) -> None:
    """Call sys.exit(), as a script turned into a handler may (argparse's errors do)."""
    sys.exit(1)


def register(registry: Registry) -> None:
    """Register the `quits` type."""
    registry.register("quits", quits)
