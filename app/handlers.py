"""The task-type registry and the built-in simulated handler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SIMULATE = "simulate"


class HandlerFailed(Exception):
    """Raised by a handler to fail its attempt with a message for the task's `error`."""


@dataclass
class TaskContext:
    """What a handler receives: the task, its attempt, and the cancel event to honour."""

    id: str
    type: str
    duration_ms: int
    payload: dict[str, Any]
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)


Handler = Callable[[TaskContext], Any]


def simulate(ctx: TaskContext) -> Any:
    """Sleep `duration_ms` (waking at once on cancel); fail when `payload.fail` is true."""
    if ctx.cancel.wait(ctx.duration_ms / 1000):
        raise HandlerFailed("The task was asked to stop before it finished.")
    if ctx.payload.get("fail") is True:
        raise HandlerFailed("The simulated handler failed because payload.fail is true.")
    return None


class Registry:
    """Maps task types to handlers; with none registered, every type simulates."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, task_type: str, handler: Handler) -> None:
        """Make `handler` run every task of `task_type`."""
        self._handlers[task_type] = handler

    def resolve(self, task_type: str) -> Handler:
        """Return the handler for `task_type`, the simulated one when none is registered."""
        return self._handlers.get(task_type, simulate)
