"""The task-type registry, handler modules, and the built-in simulated handler."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.config import ConfigError
from app.errors import UnknownTaskType

SIMULATE = "simulate"


class HandlerFailed(Exception):
    """Raised by a handler to fail its attempt with a message for the task's `error`."""


def _ignore_progress(percent: int) -> None:
    return None


@dataclass
class TaskContext:
    """What a handler receives: the task, its attempt, a cancel event, a progress hook."""

    id: str
    type: str
    duration_ms: int
    payload: dict[str, Any]
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    # Report 0..100; the scheduler records it as the task's `progress`.
    progress: Callable[[int], None] = _ignore_progress


Handler = Callable[[TaskContext], Any]


def simulate(ctx: TaskContext) -> Any:
    """Sleep `duration_ms` (waking at once on cancel); fail when `payload.fail` is true."""
    if ctx.cancel.wait(ctx.duration_ms / 1000):
        raise HandlerFailed("The task was asked to stop before it finished.")
    if ctx.payload.get("fail") is True:
        raise HandlerFailed("The simulated handler failed because payload.fail is true.")
    return None


class Registry:
    """Maps task types to handlers.

    With none registered (and not strict) every type runs the simulated handler, as the
    original service did. Once a handler is registered, or with STRICT_TASK_TYPES, only
    registered types and `simulate` are accepted, so real work is never silently replaced
    by a sleep.
    """

    def __init__(self, strict: bool = False) -> None:
        self._handlers: dict[str, Handler] = {}
        self._strict = strict

    def register(self, task_type: str, handler: Handler) -> None:
        """Make `handler` run every task of `task_type`."""
        self._handlers[task_type] = handler

    @property
    def strict(self) -> bool:
        """Tell whether unknown types are refused."""
        return self._strict or bool(self._handlers)

    def types(self) -> list[str]:
        """Return the accepted types, or an empty list when every type is accepted."""
        return sorted({*self._handlers, SIMULATE}) if self.strict else []

    def check(self, task_types: list[str]) -> None:
        """Raise `unknown_task_type` for types no handler runs."""
        if not self.strict:
            return
        unknown = sorted({t for t in task_types if t not in self._handlers and t != SIMULATE})
        if unknown:
            raise UnknownTaskType(
                f"No handler runs the task type {unknown[0]!r}; accepted types: "
                + ", ".join(self.types())
                + ".",
                {"unknown": unknown, "accepted": self.types()},
            )

    def resolve(self, task_type: str) -> Handler:
        """Return the handler for `task_type`, the simulated one when none is registered."""
        return self._handlers.get(task_type, simulate)


def load_modules(registry: Registry, modules: str) -> None:
    """Import each module named in `modules` (comma-separated) and let it register.

    Modules are looked for on the import path, then in the working directory.
    """
    names = [m.strip() for m in modules.split(",") if m.strip()]
    if names:
        _search_working_directory()
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            message = (
                f"TASK_HANDLERS names {name!r}, which cannot be imported ({exc}): put the "
                "module in the directory the service starts from, on PYTHONPATH, or in an "
                "installed package, and list module paths comma-separated"
            )
            raise ConfigError(message) from None
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(
                f"TASK_HANDLERS module {name!r} has no register(registry) function: "
                "add one, or leave the module out of TASK_HANDLERS"
            )
        register(registry)


def _search_working_directory() -> None:
    """Let a handler module beside the service import, whichever command started it.

    gunicorn and `flask --app <module>` put the directory they start from on the import
    path; `flask --app path/to/wsgi.py` puts the file's directory instead. Appended, the
    working directory never hides an installed module of the same name.
    """
    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path):
        sys.path.append(here)
